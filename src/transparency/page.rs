//! The public transparency page (`GET /.well-known/tamis`): what this proxy does with a
//! visitor's requests, route by route, as HTML (or JSON for `Accept: application/json` or
//! `?format=json`). Built from the same [`Disclosure`](crate::transparency) data `tamis check` prints,
//! from the running config, once per (re)load. It names no secret: no keys, salts, file paths
//! or listener addresses. The JSON adds each route's counters since start, from the metrics, so
//! the published policy and what actually happened can be compared; the page links to the
//! dry-run probe when it is on (see [`crate::transparency::probe`]).

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use serde::Serialize;

use crate::body::{self, ProxyBody};
use crate::config::Config;
use crate::metrics::{Metrics, RouteTotals};
use crate::routes::Router;
use crate::transparency::{self as report, RouteDisclosure};

/// The published document.
#[derive(Serialize)]
struct Document<'a> {
    service: &'static str,
    version: &'static str,
    /// Which config is running (as `tamis check` and the metrics name it).
    config_hash: &'a str,
    /// What tamis's own log keeps.
    log: &'static str,
    /// Where to check what leaves for a given request (`None`: the probe is off).
    probe: Option<ProbeLink>,
    /// What every route does.
    routes: &'a [RouteDisclosure],
}

/// The dry-run probe, as the page announces it.
#[derive(Serialize)]
struct ProbeLink {
    /// `POST` a request here.
    path: String,
    /// A request to try, on one of this site's routes.
    example: String,
}

/// The counters the JSON adds at each request.
#[derive(Serialize)]
struct Counters<'a> {
    /// What the numbers count.
    note: &'static str,
    routes: &'a [RouteTotals],
}

/// The rendered page, ready to serve.
#[derive(Debug)]
pub struct Page {
    pub path: String,
    html: Bytes,
    /// The JSON document without its counters, which are read at each request.
    json: serde_json::Map<String, serde_json::Value>,
    html_etag: HeaderValue,
    /// Route names, once each, in config order: the counters' rows.
    names: Vec<String>,
}

impl Page {
    /// Renders the page for a config and its routes; `None` when the config turns it off.
    pub fn new(config: &Config, router: &Router) -> Option<Page> {
        let t = config.transparency.as_ref()?;
        let routes = report::disclose(router, &config.cache);
        let probe = t.probe.then(|| ProbeLink {
            path: crate::transparency::probe::probe_path(&t.path),
            example: example_request(router),
        });
        let doc = Document {
            service: "tamis",
            version: env!("CARGO_PKG_VERSION"),
            config_hash: &config.hash,
            log: report::log_line(config),
            probe,
            routes: &routes,
        };
        let serde_json::Value::Object(json) = serde_json::to_value(&doc).ok()? else {
            return None;
        };
        let html = Bytes::from(html(&doc));
        let mut names: Vec<String> = Vec::new();
        for r in router.routes() {
            if !names.contains(&r.config.name) {
                names.push(r.config.name.clone());
            }
        }
        Some(Page {
            path: t.path.clone(),
            html_etag: crate::cache::content_etag(&html),
            html,
            json,
            names,
        })
    }

    /// The JSON document with each route's counters as they are now.
    fn json_now(&self, metrics: &Metrics) -> Bytes {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let totals = metrics.route_totals(&names);
        let mut doc = self.json.clone();
        let counters = Counters {
            note: "since tamis started (reloads keep them): requests answered, requests forwarded upstream, analytics parameters by what the scrub did",
            routes: &totals,
        };
        if let Ok(v) = serde_json::to_value(&counters) {
            doc.insert("counters".to_owned(), v);
        }
        Bytes::from(serde_json::to_vec_pretty(&doc).unwrap_or_default())
    }

    /// Answers a request for the page; the JSON's counters come from `metrics`.
    pub fn answer(
        &self,
        method: &Method,
        query: Option<&str>,
        headers: &HeaderMap,
        metrics: &Metrics,
    ) -> Response<ProxyBody> {
        if method != Method::GET && method != Method::HEAD {
            return crate::refusal::Refusal::MethodNotAllowed("GET, HEAD").response();
        }
        let json = query.is_some_and(|q| q.split('&').any(|p| p == "format=json"))
            || headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/json"));
        let (bytes, etag, content_type) = if json {
            let bytes = self.json_now(metrics);
            let etag = crate::cache::content_etag(&bytes);
            (bytes, etag, "application/json")
        } else {
            (
                self.html.clone(),
                self.html_etag.clone(),
                "text/html; charset=utf-8",
            )
        };
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == etag.as_bytes());
        let mut r = if not_modified || method == Method::HEAD {
            Response::new(body::full(Bytes::new()))
        } else {
            Response::new(body::full(bytes.clone()))
        };
        if not_modified {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
        }
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if !not_modified {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        h.insert(header::ETAG, etag);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
        // Anyone may check it, from any page or tool.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    }
}

/// Escapes text for HTML content and attribute values.
/// Text made safe to put in HTML.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(doc: &Document<'_>) -> String {
    let mut o = String::with_capacity(32 * 1024);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>What this site's proxy sends to third parties</title>\n<style>\n\
         body{{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\n\
         table{{border-collapse:collapse;width:100%;margin:.5rem 0}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}}\n\
         code{{font-size:90%}}.warn{{color:#a00;font-weight:bold}}section{{border-top:2px solid #444;margin-top:2rem}}\n\
         </style>\n</head>\n<body>\n\
         <h1>What this site's proxy sends to third parties</h1>\n\
         <p>This site serves fonts, map tiles, scripts and analytics from its own domain through \
         tamis {version}, so your browser does not contact \
         these providers. This page is generated from the proxy's running configuration \
         (<code>{hash}</code>); the same data is available as <a href=\"?format=json\">JSON</a>.</p>\n\
         <p>The proxy's own log: {log}.</p>\n",
        version = esc(doc.version),
        hash = esc(doc.config_hash),
        log = esc(doc.log),
    );
    if let Some(p) = &doc.probe {
        let _ = write!(
            o,
            "<h2>Check it yourself</h2>\n<p>Send this proxy a request as your browser would send it, \
             and it answers with the exact request it would send to the provider, and which rule \
             removed or changed each header and parameter. Nothing is sent: the probe never \
             contacts a provider, and its pseudonyms come from a key used once. \
             Per-route counters since start are in the <a href=\"?format=json\">JSON</a>.</p>\n\
             <pre>curl -s -X POST --data-binary '{example}' https://THIS-SITE{path}</pre>\n\
             <p>The request may also be raw HTTP/1.1 text. Operators can run the same check \
             offline: <code>tamis probe --config tamis.toml request.json</code>.</p>\n",
            example = esc(&p.example),
            path = esc(&p.path),
        );
    }
    for r in doc.routes {
        route_html(&mut o, r);
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// A probe request for the first route that is not a tracking endpoint (theirs are narrower):
/// its prefix, a browser's User-Agent, a cookie and a referrer.
fn example_request(router: &Router) -> String {
    let routes = router.routes();
    let path = routes
        .iter()
        .find(|r| !matches!(r.role, crate::routes::Role::Analytics(_)))
        .or(routes.first())
        .map_or("/".to_owned(), |r| format!("{}example", r.prefix));
    serde_json::json!({
        "method": "GET",
        "path": path,
        "headers": [
            ["User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"],
            ["Cookie", "session=1234"],
            ["Referer", "https://this-site.example/account"],
        ],
    })
    .to_string()
}

fn route_html(o: &mut String, r: &RouteDisclosure) {
    let part = r.part.map(|p| format!(", {p}")).unwrap_or_default();
    let _ = write!(
        o,
        "<section id=\"route-{id}\">\n<h2>{prefix} &rarr; {host}</h2>\n\
         <p>Route <b>{name}</b> ({kind}{part}). Requests under <code>{prefix}</code> on this site \
         go to <code>{upstream}</code>. Jurisdiction: <b>{jur}</b>: {jur_note}.</p>\n<ul>\n",
        id = esc(&r.name),
        prefix = esc(&r.prefix),
        host = esc(&r.upstream_host),
        name = esc(&r.name),
        kind = esc(r.kind),
        part = esc(&part),
        upstream = esc(&r.upstream),
        jur = esc(r.jurisdiction),
        jur_note = esc(r.jurisdiction_note),
    );
    if let Some(why) = &r.eu_reason {
        let _ = writeln!(
            o,
            "<li>Why this provider is under EU law, in the operator's words: {}</li>",
            esc(why)
        );
    }
    for h in &r.handling {
        let _ = writeln!(
            o,
            "<li>{}</li>",
            esc(h.split_whitespace().collect::<Vec<_>>().join(" ").as_str())
        );
    }
    let _ = writeln!(o, "<li>Query string: {}</li>", esc(r.query));
    let _ = writeln!(o, "<li>Cache: {}</li>", esc(&r.cache));
    if let Some(rate) = &r.rate_limit {
        let _ = writeln!(o, "<li>Rate limit: {}</li>", esc(rate));
    }
    if let Some(n) = r.max_upstream_connections {
        let _ = writeln!(o, "<li>At most {n} requests at once to the provider</li>");
    }
    o.push_str("</ul>\n");
    if r.pass_through {
        let _ = writeln!(
            o,
            "<p class=\"warn\">Pass-through: every request header (cookies and logins included) \
             and body goes to {} as your browser sent it. Allowed only for providers under EU law.</p>",
            esc(&r.upstream_host)
        );
    } else {
        o.push_str(
            "<h3>Sent to the provider</h3>\n<table><tr><th>Header</th><th>Value</th></tr>\n",
        );
        for row in &r.sent {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(&row.header),
                esc(&row.value)
            );
        }
        o.push_str("</table>\n<h3>Never sent</h3>\n");
        groups_html(o, &r.removed);
    }
    if let Some(a) = &r.analytics {
        let _ = writeln!(
            o,
            "<h3>Tracking requests</h3>\n<p>Only {} ({}) is forwarded; bodies up to {} bytes; never cached. \
             Pseudonyms: {}. Your address: {}. Your location: {}.</p>",
            esc(&a.endpoints.join(", ")),
            esc(a.methods),
            a.max_body,
            esc(&a.pseudonyms),
            esc(&a.client_address),
            esc(&a.location)
        );
        let _ = writeln!(o, "<p>What links your requests: {}.</p>", esc(a.linkage));
        groups_html(o, &a.parameters);
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                esc(&v.join(", "))
            }
        };
        let _ = writeln!(
            o,
            "<p>Custom fields kept: {}. Page URL parameters kept: {}.</p>",
            list(&a.custom_fields_kept),
            list(&a.url_params_kept)
        );
        if !a.answer_removed.is_empty() {
            let _ = writeln!(
                o,
                "<p>Removed from the provider's answer: {}.</p>",
                esc(&a.answer_removed.join(", "))
            );
        }
    }
    if r.pass_through {
        o.push_str("<h3>Withheld from your browser (response headers)</h3>\n");
    } else {
        o.push_str(
            "<h3>Passed to your browser (response headers), nothing else</h3>\n<table><tr><th>Header</th><th>Why</th></tr>\n",
        );
        for row in &r.response_allowed {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(&row.header),
                esc(&row.value)
            );
        }
        o.push_str("</table>\n<h3>Withheld from your browser (response headers): every other one, among them</h3>\n");
    }
    groups_html(o, &r.response_removed);
    o.push_str("<ul>\n");
    for n in &r.response_notes {
        let _ = writeln!(o, "<li>{}</li>", esc(n));
    }
    o.push_str("</ul>\n</section>\n");
}

fn groups_html(o: &mut String, groups: &[report::Group]) {
    o.push_str("<table><tr><th>Why</th><th>What</th></tr>\n");
    for g in groups {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&g.reason),
            esc(&g.names.join(", "))
        );
    }
    o.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_prints_the_operators_eu_reason() {
        let text =
            "[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"f\"\nkind = \"static\"\n\
                    prefix = \"/f/\"\nupstream = \"https://fonts.googleapis.com/\"\n\
                    jurisdiction = \"eu\"\neu_reason = \"EU-only <endpoint>, DPA of 2026\"\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let page = Page::new(&config, &Router::new(&config)).unwrap();
        let html = String::from_utf8_lossy(&page.html).into_owned();
        assert!(
            html.contains("in the operator's words: EU-only &lt;endpoint&gt;, DPA of 2026"),
            "{html}"
        );
        assert_eq!(
            page.json["routes"][0]["eu_reason"],
            "EU-only <endpoint>, DPA of 2026"
        );
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}

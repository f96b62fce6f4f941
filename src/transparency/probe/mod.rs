//! The dry-run probe: anyone may ask the running instance what it would send upstream for a
//! request, and check that against the published policy. `POST /.well-known/tamis/probe` (when
//! `transparency.probe = true`) and `tamis probe --config PATH REQUEST_FILE` share this engine.
//!
//! The request runs through `crate::egress::dry_run`, the real path's own checks and builders
//! (routing, confinement, header policy, analytics scrub), up to the point of sending. Nothing
//! is sent, the cache is not read, no live counter moves, and analytics pseudonyms come from a
//! key drawn for that one probe, so they can never be matched with live ones. The visitor's
//! address is always [`PROBE_CLIENT`], a documentation address: the answer says nothing about
//! the prober or anyone else.

use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use serde::Serialize;

use crate::analytics::{self, Outcome, Protocol, Tally};
use crate::body::{self, ProxyBody};
use crate::config::{Config, RateLimit};
use crate::egress::{self, DryRun, Visit};
use crate::policy::{self, Allowed, UserAgent, REQUEST_ALLOWLIST};
use crate::refusal::Refusal;
use crate::routes::ratelimit::RateLimiter;
use crate::routes::{Role, Route, Router};
use crate::upstream::{self, Http1Request};

mod input;

pub use input::{parse, InputError, ProbeRequest};

/// The largest probe request accepted (head and body together).
pub const MAX_INPUT_BYTES: usize = 256 * 1024;

/// The visitor address every probe runs with (RFC 5737 TEST-NET-1): a probe shows what happens
/// to an address (truncated, or never sent) without revealing the prober's or anyone's.
pub const PROBE_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// Probes per client: a burst of 30 (a CI job checking each of a site's routes), then one
/// every 2 seconds. A probe costs a scrub, never an upstream request, but it is public.
pub const PROBE_RATE: RateLimit = RateLimit {
    period: std::time::Duration::from_secs(2),
    burst: 30,
};

/// The probe's answer.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always says that nothing was sent.
    pub probe: &'static str,
    /// The route that took the request, if one did.
    pub route: Option<RouteInfo>,
    /// Whether tamis would send a request upstream (`true`) or answer itself.
    pub would_send: bool,
    /// The status tamis itself would answer with, when it sends nothing.
    pub status: Option<u16>,
    pub message: Option<String>,
    /// What would go upstream.
    pub upstream: Option<UpstreamView>,
    /// What happened to each of the visitor's headers, and what tamis added.
    pub header_changes: Vec<Change>,
    /// Analytics: what the protocol's rule table says about each parameter the visitor sent.
    pub parameter_changes: Vec<Change>,
    /// Analytics: what the scrub did, counted as the metrics count live requests.
    pub tally: Option<TallyView>,
    pub notes: Vec<&'static str>,
}

/// Which route, and which part of it.
#[derive(Debug, Serialize)]
pub struct RouteInfo {
    pub name: String,
    pub kind: &'static str,
    pub part: Option<&'static str>,
    pub prefix: String,
}

/// The request tamis would send.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub method: String,
    /// The full URL.
    pub url: String,
    /// The HTTP/1.1 request target.
    pub target: String,
    /// As written on an HTTP/1.1 connection, in order, `Host` and `Content-Length` included.
    pub headers: Vec<(String, String)>,
    /// The body as text when it is UTF-8, else in `body_base64`.
    pub body: Option<String>,
    pub body_base64: Option<String>,
    /// The whole request as the bytes written on an HTTP/1.1 connection (text when UTF-8,
    /// else in `http1_base64`).
    pub http1: Option<String>,
    pub http1_base64: Option<String>,
}

/// What happened to one field.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Change {
    /// The header's name, or `query: name` / `body: name` for a parameter.
    pub field: String,
    /// kept, removed, replaced, normalised, generalised, pseudonymised, dropped or added.
    pub change: &'static str,
    /// The rule that did it, as the policy tables word it.
    pub rule: String,
}

/// [`Tally`] by name.
#[derive(Debug, Serialize)]
pub struct TallyView {
    pub kept: u64,
    pub pseudonymised: u64,
    pub generalised: u64,
    pub dropped: u64,
}

impl From<&Tally> for TallyView {
    fn from(t: &Tally) -> TallyView {
        TallyView {
            kept: t.get(Outcome::Kept),
            pseudonymised: t.get(Outcome::Pseudonymised),
            generalised: t.get(Outcome::Generalised),
            dropped: t.get(Outcome::Dropped),
        }
    }
}

const NOTHING_SENT: &str = "dry run: nothing was sent to any upstream, the cache was not read";

/// Runs a probe against a config's routes. `own_paths` are the paths tamis answers itself
/// ahead of the routes (transparency page, probe).
pub fn run(config: &Config, router: &Router, own_paths: &[&str], req: &ProbeRequest) -> Report {
    let visit = Visit {
        method: &req.method,
        uri: &req.uri,
        headers: &req.headers,
        body: &req.body,
        client: PROBE_CLIENT,
    };
    match egress::dry_run(config, router, own_paths, &visit, SystemTime::now()) {
        DryRun::Answered { route, refused } => Report {
            probe: NOTHING_SENT,
            route: route.as_deref().map(route_info),
            would_send: false,
            status: Some(refused.status().as_u16()),
            message: Some(refused.message().trim_end().to_owned()),
            upstream: None,
            header_changes: Vec::new(),
            parameter_changes: Vec::new(),
            tally: None,
            notes: Vec::new(),
        },
        DryRun::Sent { route, up, tally } => {
            let wire = upstream::as_http1(&up.parts, &up.body);
            let mut notes = vec![
                "headers as written on an HTTP/1.1 connection; over HTTP/2 the same fields go with :authority instead of Host",
                "the visitor's address is 192.0.2.1 (a documentation address) in every probe",
                "the route's per-client rate limit is not applied: a real request over it gets 429",
            ];
            let parameter_changes = match route.role {
                Role::Analytics(p) => {
                    notes.push("pseudonyms computed with a key drawn for this probe alone: they differ from live ones and from one probe to the next");
                    let allowed = route
                        .analytics
                        .as_ref()
                        .map_or(&[][..], |rt| &rt.settings.allow_event_params[..]);
                    let mut changes = parameter_changes(p, &req.uri, &req.body, allowed);
                    if let Some(added) = secret_added(&route, &wire) {
                        notes.push("the operator's secrets are shown as placeholders such as <operator token_auth>: the real request has the secret in that place, and its Content-Length counts the secret instead");
                        changes.push(added);
                    }
                    changes
                }
                _ => Vec::new(),
            };
            if !matches!(route.role, Role::Analytics(_))
                && route.config.cache.enabled
                && matches!(req.method, Method::GET | Method::HEAD)
            {
                notes.push("the request a cache miss sends; a fresh stored copy is answered without any upstream request");
            }
            Report {
                probe: NOTHING_SENT,
                route: Some(route_info(&route)),
                would_send: true,
                status: None,
                message: None,
                header_changes: header_changes(&route, &req.headers, &wire),
                upstream: Some(view(&up.parts.uri, &wire)),
                parameter_changes,
                tally: tally.as_ref().map(TallyView::from),
                notes,
            }
        }
    }
}

fn route_info(r: &Route) -> RouteInfo {
    RouteInfo {
        name: r.config.name.clone(),
        kind: r.config.kind.as_str(),
        part: match r.role {
            Role::FontCss => Some("css"),
            Role::FontFiles => Some("files"),
            _ => None,
        },
        prefix: r.prefix.clone(),
    }
}

/// Text when the bytes are UTF-8, else base64.
fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn view(uri: &Uri, wire: &Http1Request) -> UpstreamView {
    let (body, body_base64) = if wire.body.is_empty() {
        (None, None)
    } else {
        text_or_base64(&wire.body)
    };
    let (http1, http1_base64) = text_or_base64(&wire.to_bytes());
    UpstreamView {
        method: wire.method.clone(),
        url: uri.to_string(),
        target: wire.target.clone(),
        headers: wire
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        body_base64,
        http1,
        http1_base64,
    }
}

/// What happened to each visitor header (in the order sent), then what tamis added, worded
/// from the policy tables.
fn header_changes(route: &Route, visitor: &HeaderMap, wire: &Http1Request) -> Vec<Change> {
    let sent = |name: &HeaderName, value: &HeaderValue| {
        wire.headers.iter().any(|(n, v)| n == name && v == value)
    };
    let sent_name = |name: &HeaderName| wire.headers.iter().any(|(n, _)| n == name);
    let p = &route.policy;
    let mut out = Vec::new();
    for (name, value) in visitor {
        let (change, rule): (&'static str, String) = if *name == header::USER_AGENT {
            match &p.user_agent {
                UserAgent::Fixed(_) if route.role == Role::FontCss => (
                    "replaced",
                    "a fixed browser User-Agent for the font CSS API".to_owned(),
                ),
                UserAgent::Fixed(_) => (
                    "replaced",
                    "a fixed User-Agent (upstream.user_agent or the route's)".to_owned(),
                ),
                UserAgent::Generalised => (
                    "generalised",
                    "browser family and major version only".to_owned(),
                ),
                UserAgent::Visitor => ("kept", "the visitor's own (EU route)".to_owned()),
            }
        } else if sent(name, value) {
            let why = REQUEST_ALLOWLIST
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, why)| (*why).to_owned());
            let rule = match why {
                Some(w) => format!("allowlist: {w}"),
                None if p.pass_through => "pass-through route (EU): sent as is".to_owned(),
                None => "forward_headers (EU route)".to_owned(),
            };
            ("kept", rule)
        } else if let Some((_, Allowed::Normalized, why)) =
            REQUEST_ALLOWLIST.iter().find(|(n, _, _)| n == name)
        {
            let rule = if route.role == Role::FontCss {
                "identity: the stylesheet is rewritten, so it is asked for uncompressed".to_owned()
            } else {
                (*why).to_owned()
            };
            ("normalised", rule)
        } else if p.forwards(name) && sent_name(name) {
            ("replaced", "the route sends its own value".to_owned())
        } else if p.forwards(name) {
            (
                "removed",
                "a cache fill asks for the whole, unconditional representation; the browser's range and conditionals are answered from the stored copy".to_owned(),
            )
        } else if *name == header::REFERER && p.referer.is_some() {
            (
                "replaced",
                "the route's fixed Referer (the site's origin, never the visitor's page)"
                    .to_owned(),
            )
        } else {
            let why =
                policy::removal_reason(name.as_str()).unwrap_or(policy::Removed::NotAllowlisted);
            ("removed", why.reason().to_owned())
        };
        out.push(Change {
            field: name.as_str().to_owned(),
            change,
            rule,
        });
    }
    for (name, _) in &wire.headers {
        // Added: tamis's own value, whatever became of a visitor header of the same name (the
        // visitor's Host or X-Forwarded-For is removed, and tamis sends its own).
        let accounted = out
            .iter()
            .any(|c| c.field == name.as_str() && c.change != "removed");
        if accounted {
            continue;
        }
        let rule = match name.as_str() {
            "host" => "the upstream's host, from the config (HTTP/1.1)",
            "content-length" => "the length of the body tamis forwards",
            "user-agent" => "the route's User-Agent rule",
            "referer" => "the route's fixed Referer (the site's origin)",
            "accept-encoding" if route.role == Role::FontCss => {
                "identity: the stylesheet is rewritten, so it is asked for uncompressed"
            }
            "accept-encoding" => "normalised: the codings tamis itself accepts",
            "x-forwarded-for" => {
                "the visitor's address truncated (IPv4 /24, IPv6 /48): EU route with client_ip = \"truncated\""
            }
            _ => "added by the route",
        };
        out.push(Change {
            field: name.as_str().to_owned(),
            change: "added",
            rule: rule.to_owned(),
        });
    }
    out
}

/// The operator's Matomo token, when the request shown carries it: the dry run wrote its
/// placeholder (never the token, see [`egress::Secrets`]) where the real path writes the token.
fn secret_added(route: &Route, wire: &Http1Request) -> Option<Change> {
    let token = route.config.analytics.as_ref()?.token.as_ref()?;
    let shown = token.placeholder();
    let shown = shown.expose();
    wire.body.windows(shown.len()).any(|w| w == shown).then(|| Change {
        field: "body: token_auth".to_owned(),
        change: "added",
        rule: format!(
            "{token}: the operator's token from token_file, which Matomo requires before it takes cip, country or region"
        ),
    })
}

/// The rule table of a protocol.
fn rules(protocol: Protocol) -> &'static [(&'static str, Outcome, &'static str)] {
    match protocol {
        Protocol::Ga4 => analytics::ga4::RULES,
        Protocol::Matomo => analytics::matomo::RULES,
        Protocol::Plausible => analytics::plausible::RULES,
        Protocol::Umami => analytics::umami::RULES,
    }
}

/// The table's rule for a parameter: the entry naming it (an entry may name several, `a, b`),
/// else the family its prefix belongs to (`ep.*`), else the catch-all (`*`).
fn rule_for(
    protocol: Protocol,
    name: &str,
) -> Option<&'static (&'static str, Outcome, &'static str)> {
    let table = rules(protocol);
    let names = |entry: &'static str| entry.split(", ").map(str::trim);
    table
        .iter()
        .find(|(n, _, _)| names(n).any(|item| item == name))
        .or_else(|| {
            table.iter().find(|(n, _, _)| {
                names(n).any(|family| {
                    family
                        .strip_suffix('*')
                        .is_some_and(|p| !p.is_empty() && name.starts_with(p))
                })
            })
        })
        .or_else(|| table.iter().find(|(n, _, _)| *n == "*"))
}

/// What the protocol's table says about each parameter the visitor sent (query, then body); a
/// custom field the route lists in `allow_event_params` is kept by that setting.
fn parameter_changes(
    protocol: Protocol,
    uri: &Uri,
    body: &[u8],
    allow_event_params: &[String],
) -> Vec<Change> {
    let mut names: Vec<(&'static str, String)> = Vec::new();
    let mut add = |place: &'static str, name: String| {
        if !names.iter().any(|(p, n)| *p == place && *n == name) {
            names.push((place, name));
        }
    };
    if let Some(q) = uri.query() {
        for (k, _) in form_urlencoded::parse(q.as_bytes()) {
            add("query", k.into_owned());
        }
    }
    let text = String::from_utf8_lossy(body);
    let json: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text).ok();
    match (protocol, json) {
        (Protocol::Matomo, Some(obj)) => {
            // Bulk tracking: {"requests": ["?idsite=1&...", ...]}.
            let lines = obj
                .get("requests")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default();
            for line in lines.iter().filter_map(|l| l.as_str()) {
                for (k, _) in form_urlencoded::parse(line.trim_start_matches('?').as_bytes()) {
                    add("body", k.into_owned());
                }
            }
        }
        (_, Some(obj)) => {
            for (k, v) in &obj {
                add("body", k.clone());
                // Umami: {"type": ..., "payload": {...}}.
                if let (Protocol::Umami, Some(inner)) = (protocol, v.as_object()) {
                    for k in inner.keys() {
                        add("body", k.clone());
                    }
                }
            }
        }
        (Protocol::Ga4 | Protocol::Matomo, None) => {
            // GA4 batches: one query string per line; Matomo: a form body.
            for line in text.lines() {
                for (k, _) in form_urlencoded::parse(line.as_bytes()) {
                    add("body", k.into_owned());
                }
            }
        }
        _ => {}
    }
    names
        .into_iter()
        .map(|(place, name)| {
            let listed = allow_event_params.contains(&name);
            let (change, rule) = match rule_for(protocol, &name) {
                Some((_, Outcome::Dropped, _)) if listed => (
                    Outcome::Kept.as_str(),
                    "listed in the route's allow_event_params".to_owned(),
                ),
                Some((n, o, note)) => (
                    o.as_str(),
                    match (*n, note.is_empty()) {
                        (n, true) => n.to_owned(),
                        (n, false) => format!("{n}: {note}"),
                    },
                ),
                None => ("dropped", "not in the table".to_owned()),
            };
            Change {
                field: format!("{place}: {name}"),
                change,
                rule,
            }
        })
        .collect()
}

/// The public probe endpoint (`<transparency.path>/probe`), with its own rate limit.
pub struct Endpoint {
    pub path: String,
    limiter: RateLimiter,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.path)
            .finish()
    }
}

impl Endpoint {
    /// The endpoint a config turns on, if it does.
    pub fn new(config: &Config) -> Option<Endpoint> {
        let t = config.transparency.as_ref().filter(|t| t.probe)?;
        Some(Endpoint {
            path: probe_path(&t.path),
            limiter: RateLimiter::new(PROBE_RATE),
        })
    }

    /// Answers one probe: POST only, rate limited per client, body capped.
    pub async fn answer(
        &self,
        config: &Config,
        router: &Router,
        own_paths: &[&str],
        req: Request<Incoming>,
        client: IpAddr,
    ) -> Response<ProxyBody> {
        if req.method() != Method::POST {
            return Refusal::MethodNotAllowed("POST").response();
        }
        if let Err(wait) = self.limiter.check(client) {
            let mut r = Refusal::TooManyProbes.response();
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            return r;
        }
        let input = match body::read_limited(req.into_body(), MAX_INPUT_BYTES).await {
            Ok(b) => b,
            Err(body::ReadError::TooLarge(_)) => return Refusal::ProbeTooLarge.response(),
            Err(body::ReadError::Failed(_)) => return Refusal::ProbeUnreadable.response(),
        };
        let probe = match parse(&input) {
            Ok(p) => p,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let report = run(config, router, own_paths, &probe);
        match serde_json::to_vec_pretty(&report) {
            Ok(json) => {
                let mut r = Response::new(body::full(Bytes::from(json)));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                no_store(h);
                r
            }
            Err(_) => Refusal::ProbeFailed.response(),
        }
    }
}

/// `tamis probe`: the report as JSON and the exit code: 0 when the request would be sent
/// upstream, 1 when tamis would answer it itself (404, 400, 405, ...), 2 when the request file
/// cannot be read as a request.
pub fn command(config: &Config, input: &[u8]) -> (String, u8) {
    let probe = match parse(input) {
        Ok(p) => p,
        Err(e) => return (format!("error: {e}\n"), 2),
    };
    let router = Router::new(config);
    let page = config.transparency.as_ref();
    let probe_at = page.filter(|t| t.probe).map(|t| probe_path(&t.path));
    let own: Vec<&str> = page
        .map(|t| t.path.as_str())
        .into_iter()
        .chain(probe_at.as_deref())
        .collect();
    let report = run(config, &router, &own, &probe);
    let code = if report.would_send { 0 } else { 1 };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => (json + "\n", code),
        Err(e) => (format!("error: {e}\n"), 2),
    }
}

/// The probe's path under the transparency page's.
pub fn probe_path(transparency: &str) -> String {
    format!("{}/probe", transparency.trim_end_matches('/'))
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// A plain-text answer with a message built at run time.
fn text(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(Bytes::from(message)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_store(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_requests() {
        let p = parse(
            br#"{"method":"POST","path":"/a/g/collect?v=2&cid=1.2","headers":[["User-Agent","UA"],["Cookie","a=1"],["cookie","b=2"]],"body":"en=x"}"#,
        )
        .unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.uri.path(), "/a/g/collect");
        assert_eq!(p.uri.query(), Some("v=2&cid=1.2"));
        assert_eq!(p.headers.get_all("cookie").iter().count(), 2);
        assert_eq!(p.headers["user-agent"], "UA");
        assert_eq!(&p.body[..], b"en=x");
        // The method defaults to GET; a binary body comes as base64.
        let p = parse(br#" {"path":"/x","body_base64":"AAEC"}"#).unwrap();
        assert_eq!(p.method, Method::GET);
        assert_eq!(&p.body[..], &[0, 1, 2]);
    }

    #[test]
    fn reads_raw_http1_requests() {
        let p = parse(
            b"POST /api/event HTTP/1.1\r\nHost: site.example\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello, and more",
        )
        .unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.uri, "/api/event");
        assert_eq!(p.headers["host"], "site.example");
        assert_eq!(&p.body[..], b"hello");
        // Bare line feeds, as a hand-written file has them; no length: the rest is the body.
        let p = parse(b"GET /fonts/css2?family=Roboto HTTP/1.1\nAccept: text/css\n\n").unwrap();
        assert_eq!(p.uri.query(), Some("family=Roboto"));
        assert!(p.body.is_empty());
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"{\"path\": 3}", "not valid JSON"),
            (b"{\"path\":\"/x\",\"extra\":1}", "unknown field"),
            (b"{\"path\":\"https://evil.example/\"}", "must be a path"),
            (b"{\"path\":\"x\"}", "must be a path"),
            (
                b"GET http://evil.example/ HTTP/1.1\r\n\r\n",
                "must be a path",
            ),
            (
                b"{\"path\":\"/x\",\"headers\":[[\"bad name\",\"v\"]]}",
                "invalid header",
            ),
            (
                b"{\"path\":\"/x\",\"body\":\"a\",\"body_base64\":\"YQ==\"}",
                "not both",
            ),
            (b"{\"path\":\"/x\",\"body_base64\":\"***\"}", "base64"),
            (b"{\"method\":\"G T\",\"path\":\"/x\"}", "invalid method"),
            (b"GET /x HTTP/1.1\r\nAccept: a\r\n", "blank line"),
            (b"GET /x HTTP/1.1\r\nContent-Length: 9\r\n\r\nab", "shorter"),
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "chunked",
            ),
            (b"\x00\x01garbage\r\n\r\n", "not a valid HTTP/1.1"),
        ];
        for (input, want) in cases {
            let e = parse(input).expect_err(&String::from_utf8_lossy(input));
            assert!(
                e.to_string().contains(want),
                "{:?}: {e} (wanted {want:?})",
                String::from_utf8_lossy(input)
            );
        }
        let big = vec![b' '; MAX_INPUT_BYTES + 1];
        assert!(matches!(parse(&big), Err(InputError::TooLarge)));
    }

    #[test]
    fn parameters_are_named_by_their_table_rule() {
        let uri: Uri = "/g/collect?v=2&cid=1.2&ep.plan=x&zz=1&ep.kept=y"
            .parse()
            .unwrap();
        let changes = parameter_changes(Protocol::Ga4, &uri, b"", &["ep.kept".to_owned()]);
        let by = |f: &str| changes.iter().find(|c| c.field == f).unwrap();
        assert_eq!(by("query: v").change, "kept");
        assert_eq!(by("query: cid").change, "pseudonymised");
        assert!(by("query: ep.plan").rule.starts_with("ep.*"));
        assert_eq!(by("query: ep.plan").change, "dropped");
        assert!(by("query: zz").rule.starts_with('*'));
        assert_eq!(by("query: ep.kept").change, "kept");
        // An entry naming several parameters names each of them.
        let uri: Uri = "/matomo.php?url=https%3A%2F%2Fa.example%2F&pf_srv=3"
            .parse()
            .unwrap();
        let changes = parameter_changes(Protocol::Matomo, &uri, b"", &[]);
        assert_eq!(changes[0].change, "generalised");
        assert_eq!(changes[1].change, "kept");
    }
}

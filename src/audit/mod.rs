//! `tamis audit`: which third-party resources an HTML page loads, and whether a route covers
//! each (with the first-party URL to use instead) or not (with a suggested route).
//!
//! The pipeline is pure except for reading the page: [`scan`] lists every absolute URL the page
//! makes the browser contact, [`classify`] keeps the third-party ones and matches them against
//! the routes, [`suggest`] writes `[[route]]` blocks for the rest and [`render`] prints it all.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

use crate::config::Config;
use crate::routes::analytics::Protocol;
use crate::routes::{css, fonts, tiles, Role, Route, Router};

/// Largest page fetched for an audit.
pub const MAX_PAGE_BYTES: usize = 10 * 1024 * 1024;

/// Redirects followed on the page's own host before giving up.
const MAX_REDIRECTS: usize = 5;

/// Why an audit could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The page file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The page URL or `--site` is not an http(s) URL.
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    /// The page could not be fetched (connection, status, redirect elsewhere, size, time).
    #[error("cannot fetch {url}: {why}")]
    Fetch { url: String, why: String },
    /// The HTML rewriter gave up on the page.
    #[error("cannot parse the page: {0}")]
    Html(String),
}

/// How the browser reaches a URL the page names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// A connection hint (`preconnect`, `dns-prefetch`): nothing is fetched, but the browser
    /// still connects to the host, so it must go.
    Hint,
    /// Not in the markup: a tracker script sends its hits there.
    Implied,
    /// Fetched by the browser (or by a script the page runs).
    Resource,
}

/// One absolute URL found in the page, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Canonical form: lowercase scheme and host, `\` read as `/`, no fragment; `//host/…` when
    /// written scheme-relative.
    pub url: String,
    /// Where it was found, e.g. `<script src>` or `inline <style> @import`.
    pub place: String,
    /// Fetched, implied or only connected to.
    pub load: Load,
}

/// Whether, and how, a third-party URL is served first-party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// A route serves it at `first_party`.
    Covered {
        /// The route's name.
        route: String,
        /// The path to use instead, on the site's own origin.
        first_party: String,
        /// What else to change for it to work (e.g. gtag's `server_container_url`).
        note: Option<String>,
    },
    /// A connection hint: remove it; `serving` names a route that mirrors its host, if any.
    Hint { serving: Option<String> },
    /// No route serves it.
    NotCovered,
}

/// A deduplicated third-party URL with its coverage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The canonical URL (see [`Found::url`]).
    pub url: String,
    /// Every place it was found, in page order, without repeats.
    pub places: Vec<String>,
    /// The strongest of its loads (a URL both preloaded and hinted is a resource).
    pub load: Load,
    /// Whether a route serves it.
    pub coverage: Coverage,
}

impl Finding {
    /// Whether a route serves it.
    pub fn covered(&self) -> bool {
        matches!(self.coverage, Coverage::Covered { .. })
    }
}

/// A `[[route]]` block to add for URLs no route covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// The route name, unused in the config.
    pub name: String,
    /// The block, with comments, ready to append to the config.
    pub toml: String,
    /// (third-party URL, first-party URL once the route is added).
    pub serves: Vec<(String, String)>,
}

/// Runs the audit of `page` (a file, or a URL on the site) and prints the report; returns the
/// process exit code: 0 when everything is covered, 1 when something is not, 2 on error.
pub fn command(config: &Config, page: &str, site: Option<&str>) -> u8 {
    match audit(config, page, site) {
        Ok((report, uncovered)) => {
            print!("{report}");
            if uncovered == 0 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// The whole audit: reads or fetches the page, and returns the report and how many URLs no
/// route covers.
pub fn audit(
    config: &Config,
    page: &str,
    site: Option<&str>,
) -> Result<(String, usize), AuditError> {
    let mut site = site.map(parse_site).transpose()?;
    let html = if is_url(page) {
        let (body, final_url) = fetch(config, page)?;
        if site.is_none() {
            site = Some(parse_site(&final_url)?);
        }
        body
    } else if page.contains("://") {
        return Err(AuditError::InvalidUrl {
            url: page.to_owned(),
            why: "only http:// and https:// pages can be fetched".into(),
        });
    } else {
        std::fs::read(page).map_err(|source| AuditError::Read {
            path: page.to_owned(),
            source,
        })?
    };
    let mut label = site.as_ref().map(|s| s.host.clone());
    if site.is_none() {
        // A saved page usually names its own address; without it every absolute URL, the
        // site's own included, would count as third-party.
        site = canonical_site(&html).and_then(|u| parse_site(&u).ok());
        label = site.as_ref().map(|s| {
            format!(
                "{}, from the page's canonical URL; --site to change",
                s.host
            )
        });
    }
    let found = scan(&html)?;
    let router = Router::new(config);
    let site_host = site.as_ref().map(|s| s.host.as_str());
    let findings = classify(&found, site_host, &router);
    let origin = site.as_ref().map(|s| s.origin.as_str());
    let suggestions = suggest(&findings, config, origin);
    let uncovered = findings.iter().filter(|f| !f.covered()).count();
    Ok((
        render(page, label.as_deref(), &findings, &suggestions),
        uncovered,
    ))
}

/// The page's own absolute URL: `<link rel="canonical">`, else `<meta property="og:url">`.
pub fn canonical_site(html: &[u8]) -> Option<String> {
    use lol_html::{element, HtmlRewriter, Settings};

    let found: Rc<RefCell<(Option<String>, Option<String>)>> = Rc::default();
    let (f1, f2) = (found.clone(), found.clone());
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: vec![
                element!("link[rel][href]", move |el| {
                    let rel = el.get_attribute("rel").unwrap_or_default();
                    if rel
                        .split_ascii_whitespace()
                        .any(|t| t.eq_ignore_ascii_case("canonical"))
                    {
                        let mut f = f1.borrow_mut();
                        if f.0.is_none() {
                            f.0 = el
                                .get_attribute("href")
                                .map(|h| decode_entities(&h).into_owned());
                        }
                    }
                    Ok(())
                }),
                element!("meta[property][content]", move |el| {
                    let og = el
                        .get_attribute("property")
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("og:url"));
                    let mut f = f2.borrow_mut();
                    if og && f.1.is_none() {
                        f.1 = el
                            .get_attribute("content")
                            .map(|c| decode_entities(&c).into_owned());
                    }
                    Ok(())
                }),
            ],
            strict: false,
            ..Settings::new()
        },
        |_: &[u8]| {},
    );
    rewriter.write(html).and_then(|()| rewriter.end()).ok()?;
    let (canonical, og) = found.take();
    [canonical, og]
        .into_iter()
        .flatten()
        .find_map(|u| absolute(&u).filter(|a| !a.starts_with("//")))
}

/// The site an audit is about: its host (what counts as first-party) and origin.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Site {
    host: String,
    origin: String,
}

/// `https://site.example`, `https://site.example/page`, or a bare `site.example`.
fn parse_site(s: &str) -> Result<Site, AuditError> {
    let invalid = |why: &str| AuditError::InvalidUrl {
        url: s.to_owned(),
        why: why.to_owned(),
    };
    let with_scheme = if s.contains("://") {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("https://{s}"))
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => s,
        _ => return Err(invalid("not an http:// or https:// URL")),
    };
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    let host = normal_host(authority.host());
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(Site {
        host,
        origin: format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            authority.as_str().to_ascii_lowercase()
        ),
    })
}

fn is_url(page: &str) -> bool {
    let lower = page.get(..8).unwrap_or(page).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Fetches a page on the operator's site: GET, same-host redirects only, body capped at
/// [`MAX_PAGE_BYTES`], the config's upstream timeouts. Returns the body and the final URL.
fn fetch(config: &Config, url: &str) -> Result<(Vec<u8>, String), AuditError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuditError::Fetch {
            url: url.to_owned(),
            why: format!("cannot start the async runtime: {e}"),
        })?;
    runtime.block_on(fetch_async(config, url))
}

async fn fetch_async(config: &Config, start: &str) -> Result<(Vec<u8>, String), AuditError> {
    use http_body_util::BodyExt;

    let fail = |url: &str, why: String| AuditError::Fetch {
        url: url.to_owned(),
        why,
    };
    let client =
        crate::upstream::Upstream::new(&config.upstream).map_err(|e| fail(start, e.to_string()))?;
    let mut url = start.to_owned();
    let first_host = uri_of(&url)?.authority().map(|a| normal_host(a.host()));
    for _ in 0..=MAX_REDIRECTS {
        let uri = uri_of(&url)?;
        let mut req = http::Request::get(uri)
            .header(http::header::USER_AGENT, config.upstream.user_agent.clone())
            .header(http::header::ACCEPT, "text/html,application/xhtml+xml")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|e| fail(&url, e.to_string()))?;
        let resp = client
            .send(&mut req)
            .await
            .map_err(|e| fail(&url, e.to_string()))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| fail(&url, format!("answered {status} without a Location")))?;
            let next = absolute(location)
                .map(|u| {
                    if u.starts_with("//") {
                        format!("{}:{u}", scheme_of(&url))
                    } else {
                        u
                    }
                })
                .or_else(|| resolve(&url, location))
                .ok_or_else(|| fail(&url, format!("redirects to {location:?}")))?;
            // The audit fetches the operator's own page and nothing else.
            if host_of(&next).map(normal_host) != first_host {
                return Err(fail(
                    &url,
                    format!("redirects to another host ({next}); audit that URL directly"),
                ));
            }
            url = next;
            continue;
        }
        if !status.is_success() {
            return Err(fail(&url, format!("answered {status}")));
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| crate::upstream::error_chain(&e))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > MAX_PAGE_BYTES {
                        return Err(format!("the page is larger than {MAX_PAGE_BYTES} bytes"));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(config.upstream.timeout, read).await {
            Err(_) => {
                return Err(fail(
                    &url,
                    format!("no complete page within {:?}", config.upstream.timeout),
                ))
            }
            Ok(Err(why)) => return Err(fail(&url, why)),
            Ok(Ok(())) => return Ok((out, url)),
        }
    }
    Err(fail(start, format!("more than {MAX_REDIRECTS} redirects")))
}

fn uri_of(url: &str) -> Result<http::Uri, AuditError> {
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| AuditError::InvalidUrl {
                url: url.to_owned(),
                why: e.to_string(),
            })?;
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(AuditError::InvalidUrl {
            url: url.to_owned(),
            why: "no host".into(),
        });
    }
    Ok(uri)
}

// ---------------------------------------------------------------------------------------------
// Scanning

/// `<link rel>` values that make the browser fetch the `href`.
const LOADING_RELS: &[&str] = &[
    "stylesheet",
    "preload",
    "modulepreload",
    "prefetch",
    "prerender",
    "icon",
    "apple-touch-icon",
    "apple-touch-icon-precomposed",
    "mask-icon",
    "manifest",
];

/// `<link rel>` values that only open a connection.
const HINT_RELS: &[&str] = &["preconnect", "dns-prefetch"];

/// `<script type>` values whose content is data, not code: their URLs are never fetched.
const DATA_SCRIPT_TYPES: &[&str] = &[
    "application/ld+json",
    "application/json",
    "text/template",
    "text/html",
    "text/x-template",
    "text/x-handlebars-template",
];

#[derive(Default)]
struct ScanState {
    found: Vec<Found>,
    /// An absolute `<base href>`: relative URLs after it resolve against it.
    base: Option<String>,
    /// Whether the current `<script>`'s text is code worth scanning.
    script_is_code: bool,
    script_text: String,
    style_text: String,
    noscript_text: String,
    gtag_loaded: bool,
    gtag_configured: bool,
    gtag_redirected: bool,
}

impl ScanState {
    /// Records `raw` if it is absolute, or relative under an absolute `<base>`.
    fn add(&mut self, raw: &str, place: &str, load: Load) {
        let url = absolute(raw).or_else(|| self.base.as_deref().and_then(|b| resolve(b, raw)));
        if let Some(url) = url {
            self.found.push(Found {
                url,
                place: place.to_owned(),
                load,
            });
        }
    }

    fn add_css(&mut self, css: &str, place: &str) {
        for (url, how) in css_urls(css) {
            self.add(&url, &format!("{place} {how}"), Load::Resource);
        }
    }

    fn add_script(&mut self, js: &str) {
        let js = js.replace("\\/", "/");
        let urls = script_urls(&js);
        if js.contains("_paq") {
            self.add_matomo(&js, urls);
        } else {
            for url in urls {
                self.add(&url, "inline <script>", Load::Resource);
            }
        }
        if js.contains("gtag(") && (js.contains("'config'") || js.contains("\"config\"")) {
            self.gtag_configured = true;
            if js.contains("server_container_url") || js.contains("transport_url") {
                self.gtag_redirected = true;
            }
        }
    }

    /// The Matomo snippet builds its URLs as `u+'matomo.php'` and `u+'matomo.js'` from a base
    /// `var u="//matomo.example/"`: report what is loaded and where hits go, not the base.
    fn add_matomo(&mut self, js: &str, urls: Vec<String>) {
        let names = |stem: &str| {
            let quoted = |ext: &str| {
                let name = format!("{stem}.{ext}");
                js.contains(&format!("'{name}'")) || js.contains(&format!("\"{name}\""))
            };
            (quoted("js"), quoted("php"))
        };
        let (mjs, mphp) = names("matomo");
        let (pjs, pphp) = names("piwik");
        for url in urls {
            let base = url.ends_with('/') && !url.contains('?');
            if !base || !(mjs || mphp || pjs || pphp) {
                self.add(&url, "inline <script> (Matomo)", Load::Resource);
                continue;
            }
            for (on, file, load) in [
                (mjs, "matomo.js", Load::Resource),
                (pjs, "piwik.js", Load::Resource),
                (mphp, "matomo.php", Load::Implied),
                (pphp, "piwik.php", Load::Implied),
            ] {
                if on {
                    let place = if load == Load::Implied {
                        "inline <script> (Matomo tracker URL)"
                    } else {
                        "inline <script> (Matomo)"
                    };
                    self.add(&format!("{url}{file}"), place, load);
                }
            }
        }
    }

    fn element(&mut self, el: &lol_html::html_content::Element<'_, '_>) {
        let tag = el.tag_name();
        let attr = |name: &str| {
            el.get_attribute(name)
                .map(|v| decode_entities(&v).into_owned())
        };
        let here = |a: &str| format!("<{tag} {a}>");
        match tag.as_str() {
            // Only the first <base> counts, as in browsers.
            "base" if self.base.is_none() => {
                self.base = attr("href").as_deref().and_then(absolute).map(|b| {
                    if b.starts_with("//") {
                        format!("https:{b}")
                    } else {
                        b
                    }
                });
            }
            "link" => {
                let rel = attr("rel").unwrap_or_default().to_ascii_lowercase();
                let tokens: Vec<&str> = rel.split_ascii_whitespace().collect();
                let label = tokens.join(" ");
                if let Some(href) = attr("href") {
                    if tokens
                        .iter()
                        .any(|t| LOADING_RELS.contains(t) || *t == "shortcut")
                    {
                        self.add(&href, &format!("<link rel={label} href>"), Load::Resource);
                    } else if tokens.iter().any(|t| HINT_RELS.contains(t)) {
                        self.add(&href, &format!("<link rel={label} href>"), Load::Hint);
                    }
                }
                if let Some(set) = attr("imagesrcset") {
                    for url in srcset_urls(&set) {
                        self.add(
                            &url,
                            &format!("<link rel={label} imagesrcset>"),
                            Load::Resource,
                        );
                    }
                }
            }
            "script" => {
                let src = attr("src");
                let kind = attr("type").unwrap_or_default().trim().to_ascii_lowercase();
                self.script_is_code = src.is_none() && !DATA_SCRIPT_TYPES.contains(&kind.as_str());
                self.script_text.clear();
                if let Some(src) = src {
                    self.add(&src, "<script src>", Load::Resource);
                    self.tracker_script(&src, &attr);
                }
            }
            "img" | "source" | "iframe" | "frame" | "video" | "audio" | "track" | "embed"
            | "input" | "image" => {
                for a in ["src", "poster", "data-src", "href", "xlink:href"] {
                    let applies = match a {
                        "poster" => tag == "video",
                        "href" | "xlink:href" => tag == "image",
                        "src" => {
                            tag != "input"
                                || attr("type").is_some_and(|t| t.eq_ignore_ascii_case("image"))
                        }
                        _ => true,
                    };
                    if let (true, Some(v)) = (applies, attr(a)) {
                        self.add(&v, &here(a), Load::Resource);
                    }
                }
                for a in ["srcset", "data-srcset"] {
                    if let Some(set) = attr(a) {
                        for url in srcset_urls(&set) {
                            self.add(&url, &here(a), Load::Resource);
                        }
                    }
                }
            }
            "object" => {
                if let Some(v) = attr("data") {
                    self.add(&v, &here("data"), Load::Resource);
                }
            }
            "a" | "area" => {
                // `ping` makes the browser POST to each URL on click; `href` is only a link.
                if let Some(v) = attr("ping") {
                    for url in v.split_ascii_whitespace() {
                        self.add(url, &here("ping"), Load::Resource);
                    }
                }
            }
            _ => {}
        }
        if let Some(v) = attr("background") {
            self.add(&v, &here("background"), Load::Resource);
        }
        if let Some(css) = attr("style") {
            self.add_css(&css, &here("style"));
        }
    }

    /// Analytics scripts post their hits somewhere the markup does not name.
    fn tracker_script(&mut self, src: &str, attr: &dyn Fn(&str) -> Option<String>) {
        let url = absolute(src).or_else(|| self.base.as_deref().and_then(|b| resolve(b, src)));
        // A relative script is served first-party; where it sends hits may still not be.
        let origin = url.as_deref().map(origin_of);
        let path = url.as_deref().map_or(src, path_of);
        if path.contains("/gtag/js") || src.starts_with("gtag/js") {
            self.gtag_loaded = true;
        }
        if attr("data-website-id").is_some() {
            // Umami: hits go to data-host-url, else the script's own origin.
            if let Some(host) = attr("data-host-url").or(origin) {
                let endpoint = format!("{}/api/send", host.trim_end_matches('/'));
                self.add(
                    &endpoint,
                    "<script data-website-id> (Umami sends hits here)",
                    Load::Implied,
                );
            }
        } else if attr("data-domain").is_some()
            || url.as_deref().and_then(host_of) == Some("plausible.io")
        {
            // Plausible: hits go to data-api, else the script's origin + /api/event.
            if let Some(endpoint) = attr("data-api").or(origin.map(|o| format!("{o}/api/event"))) {
                self.add(
                    &endpoint,
                    "<script data-domain> (Plausible sends hits here)",
                    Load::Implied,
                );
            }
        }
    }
}

/// Lists every absolute URL (and relative ones under an absolute `<base>`) that `html` makes the
/// browser contact, in page order, with where each was found.
pub fn scan(html: &[u8]) -> Result<Vec<Found>, AuditError> {
    scan_depth(html, 0)
}

fn scan_depth(html: &[u8], depth: u8) -> Result<Vec<Found>, AuditError> {
    use lol_html::{element, text, HtmlRewriter, Settings};

    let state = Rc::new(RefCell::new(ScanState::default()));
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state.clone());
    let handlers = vec![
        element!("*", move |el| {
            s1.borrow_mut().element(el);
            Ok(())
        }),
        text!("script", move |t| {
            let mut s = s2.borrow_mut();
            if s.script_is_code {
                s.script_text.push_str(t.as_str());
                if t.last_in_text_node() {
                    let js = std::mem::take(&mut s.script_text);
                    s.add_script(&js);
                }
            }
            Ok(())
        }),
        text!("style", move |t| {
            let mut s = s3.borrow_mut();
            s.style_text.push_str(t.as_str());
            if t.last_in_text_node() {
                let css = std::mem::take(&mut s.style_text);
                s.add_css(&css, "inline <style>");
            }
            Ok(())
        }),
        // With scripting on, <noscript> is raw text; its markup is what a browser without
        // JavaScript loads (Matomo's pixel, GTM's iframe), so it is scanned as HTML too.
        text!("noscript", move |t| {
            let mut s = s4.borrow_mut();
            s.noscript_text.push_str(t.as_str());
            Ok(())
        }),
    ];
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: handlers,
            // Ambiguous markup (e.g. a <script> inside <select>) is read the way browsers
            // read it instead of stopping the audit.
            strict: false,
            ..Settings::new()
        },
        |_: &[u8]| {},
    );
    rewriter
        .write(html)
        .and_then(|()| rewriter.end())
        .map_err(|e| AuditError::Html(e.to_string()))?;
    let mut s = state.take();
    // A page cut short inside <script> or <style> still had that text.
    let (js, css) = (
        std::mem::take(&mut s.script_text),
        std::mem::take(&mut s.style_text),
    );
    if s.script_is_code && !js.is_empty() {
        s.add_script(&js);
    }
    if !css.is_empty() {
        s.add_css(&css, "inline <style>");
    }
    let noscript = std::mem::take(&mut s.noscript_text);
    if depth == 0 && !noscript.is_empty() {
        // The inner markup keeps the page's <base>.
        let inner = match &s.base {
            Some(b) => format!("<base href=\"{b}\">{noscript}"),
            None => noscript,
        };
        for mut f in scan_depth(inner.as_bytes(), depth + 1)? {
            f.place = format!("<noscript> {}", f.place);
            s.found.push(f);
        }
    }
    if (s.gtag_loaded || s.gtag_configured) && !s.gtag_redirected {
        s.found.push(Found {
            url: "https://www.google-analytics.com/g/collect".into(),
            place: "gtag.js (sends hits here)".into(),
            load: Load::Implied,
        });
    }
    Ok(s.found)
}

/// Decodes the HTML character references that can appear in a URL attribute.
fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = if let Some(num) = name.strip_prefix('#') {
                let n = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                n.and_then(char::from_u32)
            } else {
                Some(match name {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    "sol" => '/',
                    "colon" => ':',
                    "period" => '.',
                    "quest" => '?',
                    "equals" => '=',
                    "num" => '#',
                    "percnt" => '%',
                    "comma" => ',',
                    "semi" => ';',
                    "lpar" => '(',
                    "rpar" => ')',
                    "plus" => '+',
                    _ => return None,
                })
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The URLs of a `srcset`: comma-separated candidates, each a URL and an optional descriptor.
fn srcset_urls(set: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = set;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let url = &rest[..end];
        rest = &rest[end..];
        // A URL ending in commas has no descriptor; otherwise skip the descriptor to the comma.
        if url.ends_with(',') {
            out.push(url.trim_end_matches(',').to_owned());
        } else {
            out.push(url.to_owned());
            rest = rest.find(',').map_or("", |i| &rest[i..]);
        }
    }
}

/// URLs in CSS: `url(…)` and `@import "…"`, outside comments.
fn css_urls(css: &str) -> Vec<(String, &'static str)> {
    let b = css.as_bytes();
    // Indexes only ever move past ASCII bytes or to a found ASCII byte, and slices go
    // through `get`, so no index can split a character.
    let slice = |from: usize, to: usize| css.get(from..to).unwrap_or("");
    let starts = |i: usize, word: &str| {
        css.get(i..i + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // A string's content from after its opening quote; returns it and the index after it.
    let read_string = |start: usize, quote: u8| -> (String, usize) {
        let mut j = start;
        while j < b.len() && b[j] != quote && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(b.len());
        (slice(start, end).to_owned(), end + 1)
    };
    // The argument of `url(` starting at `j` (after the parenthesis).
    let read_url = |j: usize| -> (String, usize) {
        let j = skip_ws(j);
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            return read_string(j + 1, b[j]);
        }
        let end = slice(j, b.len()).find(')').map_or(b.len(), |e| j + e);
        (slice(j, end).trim().to_owned(), end + 1)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if starts(i, "/*") {
            i = slice(i + 2, b.len())
                .find("*/")
                .map_or(b.len(), |e| i + 2 + e + 2);
        } else if starts(i, "url(") {
            let (v, next) = read_url(i + 4);
            out.push((v, "url()"));
            i = next;
        } else if starts(i, "@import") {
            let j = skip_ws(i + 7);
            if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                let (v, next) = read_string(j + 1, b[j]);
                out.push((v, "@import"));
                i = next;
            } else if starts(j, "url(") {
                let (v, next) = read_url(j + 4);
                out.push((v, "@import"));
                i = next;
            } else {
                i = j;
            }
        } else if b[i] == b'"' || b[i] == b'\'' {
            // Other strings are text (content: "…"), never fetched.
            i = read_string(i + 1, b[i]).1;
        } else {
            i += 1;
        }
    }
    out
}

/// Absolute and scheme-relative URLs that start a string literal in JavaScript (or JSON):
/// `'https://…'`, `"//host/…"`, `` `https://…${x}` `` up to the interpolation. URLs in
/// comments, and `href="…"` markup inside strings (a link, not a load), are skipped.
fn script_urls(js: &str) -> Vec<String> {
    let b = js.as_bytes();
    let mut out = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if c != b'"' && c != b'\'' && c != b'`' {
            continue;
        }
        let rest = &js[i + 1..];
        let has_scheme = |scheme: &[u8]| {
            rest.as_bytes()
                .get(..scheme.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(scheme))
        };
        let scheme_relative = rest.starts_with("//")
            && rest
                .as_bytes()
                .get(2)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'{');
        if !(has_scheme(b"http://") || has_scheme(b"https://") || scheme_relative) {
            continue;
        }
        // `<a href="…">` inside a string is markup, a link; `el.href = '…'` in code is a load.
        if js[..i]
            .strip_suffix("href=")
            .is_some_and(|lead| lead.ends_with(char::is_whitespace))
        {
            continue;
        }
        let mut end = rest
            .find(|ch: char| ch == c as char || ch.is_whitespace() || "<>\\\"'`".contains(ch))
            .unwrap_or(rest.len());
        if c == b'`' {
            end = end.min(rest.find("${").unwrap_or(end));
        }
        if let Some(url) = absolute(&rest[..end]) {
            out.push(url);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// URLs

/// The canonical form of an absolute `http(s)://` or scheme-relative URL, as a browser reads it
/// (surrounding spaces, tabs and newlines dropped, `\` as `/`, any number of slashes after the
/// scheme); `None` for relative URLs, other schemes, or no usable host.
pub fn absolute(raw: &str) -> Option<String> {
    let s: String = raw
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let (scheme, rest) = match s.find([':', '/', '\\', '?', '#']) {
        Some(i) if s.as_bytes()[i] == b':' => {
            let scheme = s[..i].to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                return None;
            }
            let rest = &s[i + 1..];
            if !rest.starts_with(['/', '\\']) {
                return None;
            }
            (Some(scheme), rest)
        }
        _ => {
            if !(s.starts_with("//")
                || s.starts_with("\\\\")
                || s.starts_with("/\\")
                || s.starts_with("\\/"))
            {
                return None;
            }
            (None, s.as_str())
        }
    };
    let rest = rest.trim_start_matches(['/', '\\']);
    let end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    let authority = rest[..end].to_ascii_lowercase();
    let host_ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:[]{}@%".contains(&b));
    if !host_ok || normal_host(&authority).is_empty() {
        return None;
    }
    let tail = &rest[end..];
    let tail = tail.split('#').next().unwrap_or("");
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p.replace('\\', "/"), Some(q)),
        None => (tail.replace('\\', "/"), None),
    };
    let mut out = match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("//{authority}{path}"),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Resolves a relative reference against an absolute base (for `<base href>` and redirects).
fn resolve(base: &str, rel: &str) -> Option<String> {
    let rel = rel.trim_matches(|c: char| c <= ' ');
    if rel.is_empty() || rel.starts_with('#') || !crate::policy::is_relative_reference(rel) {
        return None;
    }
    let origin = origin_of(base);
    let base_path = path_of(base);
    let base_path = base_path.split(['?', '#']).next().unwrap_or("/");
    let rel = rel.split('#').next().unwrap_or("");
    let joined = if rel.starts_with('/') {
        rel.to_owned()
    } else if rel.starts_with('?') {
        format!("{base_path}{rel}")
    } else {
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{rel}")
    };
    let (path, query) = match joined.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (joined.as_str(), None),
    };
    let mut out = format!("{origin}{}", remove_dot_segments(path));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    absolute(&out)
}

fn remove_dot_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segs.push("");
                }
            }
            ".." => {
                if segs.len() > 1 {
                    segs.pop();
                }
                if last {
                    segs.push("");
                }
            }
            s => segs.push(s),
        }
    }
    let joined = segs.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// The authority of a canonical URL (`host[:port]`, lowercase).
fn authority_of(url: &str) -> Option<&str> {
    let after = url.split_once("//")?.1;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(&after[..end])
}

/// The host of a canonical URL, without user information or port.
fn host_of(url: &str) -> Option<&str> {
    let a = authority_of(url)?;
    let a = a.rsplit('@').next().unwrap_or(a);
    let host = if a.starts_with('[') {
        a.find(']').map_or(a, |i| &a[..=i])
    } else {
        a.split(':').next().unwrap_or(a)
    };
    Some(host.trim_end_matches('.'))
}

/// A host as compared: lowercase, no port, no trailing dot.
fn normal_host(authority: &str) -> String {
    let fake = format!("//{}", authority.to_ascii_lowercase());
    host_of(&fake).unwrap_or("").to_owned()
}

fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("https", |(s, _)| s)
}

/// `scheme://authority` of a canonical URL (`https` for a scheme-relative one).
fn origin_of(url: &str) -> String {
    let scheme = if url.starts_with("//") {
        "https"
    } else {
        scheme_of(url)
    };
    format!("{scheme}://{}", authority_of(url).unwrap_or(""))
}

/// The path and query of a canonical URL (`/` when empty).
fn path_of(url: &str) -> &str {
    let Some((_, after)) = url.split_once("//") else {
        return "/";
    };
    match after.find(['/', '?']) {
        Some(i) => &after[i..],
        None => "/",
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage

/// Keeps the third-party URLs (host other than `site_host`; all of them without a site),
/// merges repeats, and matches each against the routes.
pub fn classify(found: &[Found], site_host: Option<&str>, router: &Router) -> Vec<Finding> {
    let site = site_host.map(normal_host);
    let mut out: Vec<Finding> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for f in found {
        let Some(host) = host_of(&f.url) else {
            continue;
        };
        if site.as_deref() == Some(host) {
            continue;
        }
        match index.get(f.url.as_str()).and_then(|&i| out.get_mut(i)) {
            Some(x) => {
                if !x.places.contains(&f.place) {
                    x.places.push(f.place.clone());
                }
                x.load = x.load.max(f.load);
            }
            None => {
                index.insert(&f.url, out.len());
                out.push(Finding {
                    url: f.url.clone(),
                    places: vec![f.place.clone()],
                    load: f.load,
                    coverage: Coverage::NotCovered,
                });
            }
        }
    }
    for x in &mut out {
        x.coverage = coverage(&x.url, x.load, site.as_deref(), router);
    }
    out
}

fn coverage(url: &str, load: Load, site: Option<&str>, router: &Router) -> Coverage {
    if load == Load::Hint {
        let host = host_of(url).unwrap_or("");
        let serving = router
            .routes()
            .iter()
            .find(|r| serves_host(r, host))
            .map(|r| r.config.name.clone());
        return Coverage::Hint { serving };
    }
    let font_file =
        fonts::font_content_type(path_of(url).split('?').next().unwrap_or("")).is_some();
    let path = path_of(url).split('?').next().unwrap_or("");
    let tracking = [
        Protocol::Ga4,
        Protocol::Matomo,
        Protocol::Plausible,
        Protocol::Umami,
    ]
    .iter()
    .flat_map(|p| p.endpoints())
    .any(|e| path.ends_with(&format!("/{e}")));
    let mut best: Option<((bool, usize, u8), Coverage)> = None;
    for route in router.routes() {
        let route: &Route = route;
        let Some((first_party, note)) = map_url(route, url, site) else {
            continue;
        };
        let analytics = matches!(route.role, Role::Analytics(_));
        // Tracking hits through a mirror would reach the tool unscrubbed: only an analytics
        // route covers them.
        if !analytics && tracking {
            continue;
        }
        // Analytics first, then the most specific upstream base; a font file goes to the
        // files part.
        let role_fit = match (route.role, font_file) {
            (Role::FontFiles, true) => 1,
            (Role::FontFiles, false) => 0,
            (_, true) => 0,
            (_, false) => 1,
        };
        let rank = (analytics, route.upstream.path.len(), role_fit);
        if best.as_ref().is_none_or(|(r, ..)| rank > *r) {
            let covered = Coverage::Covered {
                route: route.config.name.clone(),
                first_party,
                note,
            };
            best = Some((rank, covered));
        }
    }
    best.map_or(Coverage::NotCovered, |(_, c)| c)
}

/// The first-party URL `route` serves `url` at, and what else to change, if it serves it.
fn map_url(route: &Route, url: &str, site: Option<&str>) -> Option<(String, Option<String>)> {
    let site_origin = site.map_or_else(|| "https://SITE".to_owned(), |s| format!("https://{s}"));
    match route.role {
        Role::Static | Role::FontCss | Role::FontFiles => {
            let map = css::UrlMap::new(vec![(route.upstream.clone(), route.prefix.clone())]);
            let first_party = map.map(url)?;
            let note =
                (route.role == Role::Static && !route.config.forward_query && url.contains('?'))
                    .then(|| "the route drops the query (forward_query = false)".to_owned());
            Some((first_party, note))
        }
        Role::Tiles => tile_map(route, url),
        Role::Analytics(protocol) => {
            let host = host_of(url)?;
            let upstream_host = normal_host(route.upstream.authority.as_str());
            let same = authority_of(url)?.eq_ignore_ascii_case(route.upstream.authority.as_str())
                || (protocol == Protocol::Ga4 && is_ga_host(host) && is_ga_host(&upstream_host));
            if !same {
                return None;
            }
            let path = path_of(url);
            let (p, query) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            let tail = p.strip_prefix(route.upstream.path.as_str())?;
            if !protocol.endpoints().contains(&tail) {
                return None;
            }
            let mut first_party = format!("{}{tail}", route.prefix);
            if let Some(q) = query {
                first_party.push('?');
                first_party.push_str(q);
            }
            let base = route.prefix.trim_end_matches('/');
            let note = match protocol {
                Protocol::Ga4 => {
                    format!("in gtag's config set server_container_url: '{site_origin}{base}'")
                }
                Protocol::Matomo => format!("in the snippet set the tracker URL to {first_party}"),
                Protocol::Plausible => format!("on the script set data-api=\"{first_party}\""),
                Protocol::Umami => {
                    format!("on the script set data-host-url=\"{site_origin}{base}\"")
                }
            };
            Some((first_party, Some(note)))
        }
    }
}

/// Google Analytics collection hosts (any region), interchangeable for a GA4 route.
fn is_ga_host(host: &str) -> bool {
    host == "google-analytics.com"
        || host.ends_with(".google-analytics.com")
        || host == "analytics.google.com"
}

/// Whether a route mirrors resources of `host` (for connection hints).
fn serves_host(route: &Route, host: &str) -> bool {
    match (&route.role, &route.config.tiles) {
        (Role::Tiles, Some(t)) => {
            let (tpl_host, _) = split_template(t.template.as_str());
            let subs = subdomains(&t.template);
            strip_subdomain(&normal_host(tpl_host), &subs) == strip_subdomain(host, &subs)
        }
        (Role::Analytics(Protocol::Ga4), _) if is_ga_host(host) => true,
        _ => normal_host(route.upstream.authority.as_str()) == host,
    }
}

/// A template's host pattern and path (without query).
fn split_template(raw: &str) -> (&str, &str) {
    let after = raw.split_once("://").map_or(raw, |(_, r)| r);
    let (host, path) = after.find('/').map_or((after, "/"), |i| after.split_at(i));
    (host, path.split('?').next().unwrap_or(path))
}

/// The values a template uses for `{s}` (it exposes them only per tile).
fn subdomains(t: &tiles::Template) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in 0..32 {
        let tile = tiles::Tile {
            z: 5,
            x,
            y: 0,
            retina: false,
            ext: String::new(),
        };
        if let Some(s) = t.subdomain(&tile) {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
    }
    out
}

/// A tile host without its rotating subdomain: `{s}.tile.example`, `a.tile.example` and
/// `tile.example` name the same tile server.
fn strip_subdomain<'h>(host: &'h str, subs: &[String]) -> &'h str {
    match host.split_once('.') {
        Some((first, rest))
            if rest.contains('.')
                && (first == "{s}"
                    || subs.iter().any(|s| s == first)
                    || (first.len() == 1 && first.as_bytes()[0].is_ascii_lowercase())) =>
        {
            rest
        }
        _ => host,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece<'a> {
    Lit(&'a str),
    Var(char),
}

fn template_pieces(path: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let next = ["{z}", "{x}", "{y}", "{r}", "{s}"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .min();
        match next {
            Some((i, p)) => {
                if i > 0 {
                    out.push(Piece::Lit(&rest[..i]));
                }
                out.push(Piece::Var(p.as_bytes()[1] as char));
                rest = &rest[i + 3..];
            }
            None => {
                out.push(Piece::Lit(rest));
                rest = "";
            }
        }
    }
    out
}

/// Matches a URL path against template pieces; each variable takes its own `{v}` placeholder
/// (a template string in the page's JavaScript) or a value (digits; `@2x` or nothing for `r`).
fn match_pieces(pieces: &[Piece<'_>], s: &str, caps: &mut Vec<(char, String)>) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return s.is_empty();
    };
    match first {
        Piece::Lit(l) => s
            .strip_prefix(l)
            .is_some_and(|t| match_pieces(rest, t, caps)),
        Piece::Var(v) => {
            let mut options: Vec<usize> = Vec::new();
            let placeholder = format!("{{{v}}}");
            if s.starts_with(&placeholder) {
                options.push(placeholder.len());
            }
            match v {
                'r' => {
                    if s.starts_with("@2x") {
                        options.push(3);
                    }
                    options.push(0);
                }
                's' => {
                    let n = s.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
                    options.extend((1..=n).rev());
                }
                _ => {
                    let n = s.bytes().take_while(u8::is_ascii_digit).take(10).count();
                    options.extend((1..=n).rev());
                }
            }
            for len in options {
                caps.push((*v, s[..len].to_owned()));
                if match_pieces(rest, &s[len..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// A tile URL (or a `{z}/{x}/{y}` template string) under a tiles route's template.
fn tile_map(route: &Route, url: &str) -> Option<(String, Option<String>)> {
    let t = route.config.tiles.as_ref()?;
    let (tpl_host, tpl_path) = split_template(t.template.as_str());
    let subs = subdomains(&t.template);
    let url_host = authority_of(url)?;
    if strip_subdomain(&tpl_host.to_ascii_lowercase(), &subs) != strip_subdomain(url_host, &subs) {
        return None;
    }
    let path = path_of(url).split('?').next().unwrap_or("");
    // Leaflet's {r} (@2x on high-density screens) where the route serves no @2x tiles: the
    // first-party template leaves it out.
    let dropped_r = path.contains("{r}") && !t.template.retina();
    let path = path.replace("{r}", if dropped_r { "" } else { "{r}" });
    let mut caps = Vec::new();
    if !match_pieces(&template_pieces(tpl_path), &path, &mut caps) {
        return None;
    }
    let get = |v: char| caps.iter().find(|(c, _)| *c == v).map(|(_, s)| s.as_str());
    let (z, x, y) = (get('z')?, get('x')?, get('y')?);
    let r = get('r').unwrap_or("");
    let ext = t.template.ext().unwrap_or("png");
    let rest = format!("{z}/{x}/{y}{r}.{ext}");
    let placeholders = [z, x, y].iter().any(|v| v.starts_with('{'));
    if !placeholders {
        // A concrete tile: only covered if the route would serve it.
        let tile = tiles::parse(&rest, t.max_zoom).ok()?;
        t.template.accepts(&tile).ok()?;
    }
    let note = dropped_r.then(|| "the route serves no @2x tiles: {r} left out".to_owned());
    Some((format!("{}{rest}", route.prefix), note))
}

// ---------------------------------------------------------------------------------------------
// Suggestions

/// A route to suggest, before its name and prefix are made unique.
struct Plan {
    key: String,
    name: String,
    prefix: String,
    kind: &'static str,
    upstream: String,
    /// Fonts: (files_prefix under the prefix, files_upstream).
    files: Option<(&'static str, String)>,
    /// Extra `key = value` lines (values already TOML).
    extra: Vec<(&'static str, String)>,
    /// Comment lines; `{prefix}` and `{origin}` are filled in.
    comments: Vec<String>,
    urls: Vec<String>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Sanitised host, for route names and prefixes: `images.cdn.example:8443` → `images-cdn-example-8443`.
fn slug(authority: &str) -> String {
    let mut out = String::new();
    for c in authority.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "third-party".into()
    } else {
        out
    }
}

/// What kind of route would serve `url`.
fn plan_for(url: &str, places: &[String], config: &Config, origin: Option<&str>) -> Option<Plan> {
    let authority = authority_of(url)?.to_owned();
    let host = host_of(url)?.to_owned();
    let scheme = if url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let path = path_of(url);
    let path_only = path.split('?').next().unwrap_or("/");
    let file = path_only.rsplit('/').next().unwrap_or("");
    let dir = &path_only[..path_only.len() - file.len()];
    let plan = |key: &str, name: &str, prefix: &str, kind: &'static str, upstream: String| Plan {
        key: key.to_owned(),
        name: name.to_owned(),
        prefix: prefix.to_owned(),
        kind,
        upstream,
        files: None,
        extra: Vec::new(),
        comments: Vec::new(),
        urls: Vec::new(),
    };
    let whole_host = format!("{scheme}://{authority}/");
    let script_comment = "this mirrors the script only, its hits need their own route";

    if host == "fonts.googleapis.com" || host == "fonts.gstatic.com" {
        let mut p = plan(
            "google-fonts",
            "google-fonts",
            "/fonts/",
            "fonts",
            "https://fonts.googleapis.com/".into(),
        );
        p.files = Some(("files/", "https://fonts.gstatic.com/".into()));
        p.comments
            .push("Google Fonts: <link rel=\"stylesheet\" href=\"{prefix}css2?family=…\">".into());
        return Some(p);
    }
    if host == "fonts.bunny.net" {
        let mut p = plan(
            "bunny-fonts",
            "bunny-fonts",
            "/bunny-fonts/",
            "fonts",
            "https://fonts.bunny.net/".into(),
        );
        p.files = Some(("files/", "https://fonts.bunny.net/".into()));
        p.extra.push(("jurisdiction", toml_str("eu")));
        return Some(p);
    }
    if let Some(p) = tile_plan(url, &host, config, origin) {
        return Some(p);
    }
    if is_ga_host(&host) {
        if path_only.ends_with("/g/collect") {
            let mut p = plan("ga4", "ga", "/a/", "ga4", whole_host);
            p.extra.push(("allow_event_params", "[]".into()));
            p.extra.push(("allow_url_params", "[]".into()));
            p.comments.push("GA4 hits, scrubbed: in gtag's config set server_container_url: '{origin}{prefix_no_slash}'".into());
            return Some(p);
        }
        let mut p = plan(
            &format!("static {whole_host}"),
            &slug(&host),
            &format!("/{}/", slug(&host)),
            "static",
            whole_host,
        );
        p.comments.push(script_comment.into());
        return Some(p);
    }
    if host.ends_with("googletagmanager.com") {
        if path_only.starts_with("/gtag/") {
            let mut p = plan(
                "gtag",
                "gtag",
                "/gtag/",
                "static",
                format!("{scheme}://{authority}/gtag/"),
            );
            p.comments.push("the gtag.js script: <script async src=\"{prefix}js?id=G-…\"> (its hits need a kind = \"ga4\" route)".into());
            return Some(p);
        }
        let mut p = plan("gtm", "gtm", "/gtm/", "static", whole_host);
        p.comments.push(
            "Google Tag Manager: the container loads further third-party tags of its own".into(),
        );
        return Some(p);
    }
    let is_umami = places.iter().any(|p| p.contains("Umami")) || host.contains("umami");
    let is_plausible = places.iter().any(|p| p.contains("Plausible")) || host == "plausible.io";
    if path_only == "/api/send" && is_umami {
        let mut p = plan(
            &format!("umami {whole_host}"),
            "umami",
            "/u/",
            "umami",
            whole_host,
        );
        p.comments.push(
            "Umami hits, scrubbed: on the script set data-host-url=\"{origin}{prefix_no_slash}\""
                .into(),
        );
        return Some(p);
    }
    if path_only == "/api/event" && is_plausible {
        let mut p = plan(
            &format!("plausible {whole_host}"),
            "plausible",
            "/p/",
            "plausible",
            whole_host,
        );
        p.comments.push(
            "Plausible hits, scrubbed: on the script set data-api=\"{prefix}api/event\"".into(),
        );
        if host == "plausible.io" {
            p.extra.push(("jurisdiction", toml_str("eu")));
        }
        return Some(p);
    }
    if file == "matomo.php" || file == "piwik.php" {
        let mut p = plan(
            &format!("matomo {scheme}://{authority}{dir}"),
            "matomo",
            "/m/",
            "matomo",
            format!("{scheme}://{authority}{dir}"),
        );
        p.comments.push(format!(
            "Matomo hits, scrubbed: in the snippet _paq.push(['setTrackerUrl', '{{prefix}}{file}'])"
        ));
        return Some(p);
    }
    if host == "plausible.io" && path_only.starts_with("/js/") {
        let mut p = plan(
            "plausible-js",
            "plausible-js",
            "/plausible-js/",
            "static",
            "https://plausible.io/js/".into(),
        );
        p.extra.push(("jurisdiction", toml_str("eu")));
        p.comments.push(format!("the Plausible script: <script defer data-domain=… src=\"{{prefix}}{file}\">; {script_comment}"));
        return Some(p);
    }
    if file == "matomo.js" || file == "piwik.js" || (is_umami && file == "script.js") {
        let (name, prefix) = if is_umami {
            ("umami-js", "/umami-js/")
        } else {
            ("matomo-js", "/matomo-js/")
        };
        let mut p = plan(
            &format!("{name} {scheme}://{authority}{dir}"),
            name,
            prefix,
            "static",
            format!("{scheme}://{authority}{dir}"),
        );
        let how = if is_umami {
            format!("<script defer src=\"{{prefix}}{file}\" data-website-id=…>")
        } else {
            format!("in the snippet g.src='{{prefix}}{file}'")
        };
        p.comments
            .push(format!("the script: {how}; {script_comment}"));
        return Some(p);
    }
    if host == "cdn.jsdelivr.net" {
        let seg = path_only
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if !seg.is_empty() && path_only.len() > seg.len() + 1 {
            let (name, prefix) = if seg == "npm" {
                ("jsdelivr".to_owned(), "/cdn/".to_owned())
            } else {
                (
                    format!("jsdelivr-{}", slug(seg)),
                    format!("/cdn-{}/", slug(seg)),
                )
            };
            let up = format!("https://cdn.jsdelivr.net/{seg}/");
            return Some(plan(&up, &name, &prefix, "static", up.clone()));
        }
    }
    if host == "cdnjs.cloudflare.com" && path_only.starts_with("/ajax/libs/") {
        let up = "https://cdnjs.cloudflare.com/ajax/libs/".to_owned();
        return Some(plan(&up, "cdnjs", "/cdnjs/", "static", up.clone()));
    }
    if host == "unpkg.com" {
        return Some(plan(
            "https://unpkg.com/",
            "unpkg",
            "/unpkg/",
            "static",
            "https://unpkg.com/".into(),
        ));
    }
    let mut p = plan(
        &format!("static {whole_host}"),
        &slug(&authority),
        &format!("/{}/", slug(&authority)),
        "static",
        whole_host,
    );
    if places.iter().any(|p| {
        p.starts_with("<iframe") || p.starts_with("<frame") || p.starts_with("<noscript> <iframe")
    }) {
        p.comments.push(
            "an embedded page makes third-party requests of its own: this covers its document only"
                .into(),
        );
    }
    Some(p)
}

/// A tiles route for a `{z}/{x}/{y}` template string, or a tile from an OpenStreetMap host.
fn tile_plan(url: &str, host: &str, config: &Config, origin: Option<&str>) -> Option<Plan> {
    let scheme = if url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let authority = authority_of(url)?;
    let path = path_of(url).split('?').next().unwrap_or("/");
    let osm = tiles::is_osm_host(host);
    let had_query = url.contains('?');
    let template = if ["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p)) {
        format!("{scheme}://{authority}{path}")
    } else if osm {
        // A concrete tile: /…/z/x/y[@2x].ext
        let segs: Vec<&str> = path.rsplitn(4, '/').collect();
        let [file, x, z, lead] = segs.as_slice() else {
            return None;
        };
        let (stem, ext) = file.rsplit_once('.')?;
        let y = stem.trim_end_matches("@2x");
        if ![z, x, &y]
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let r = if stem.ends_with("@2x") { "{r}" } else { "" };
        format!("{scheme}://{authority}{lead}/{{z}}/{{x}}/{{y}}{r}.{ext}")
    } else {
        return None;
    };
    // OpenStreetMap asks not to use the old a/b/c subdomains of tile.openstreetmap.org.
    let bare_host = strip_subdomain(authority, &[]);
    let template = if bare_host == "tile.openstreetmap.org" {
        template.replacen(authority, bare_host, 1)
    } else {
        template
    };
    let subs: Vec<String> = if template.contains("{s}") {
        vec!["a".into(), "b".into(), "c".into()]
    } else {
        Vec::new()
    };
    tiles::Template::new(&template, subs.clone()).ok()?;
    let (name, prefix) = if bare_host == "tile.openstreetmap.org" {
        ("osm".to_owned(), "/tiles/osm/".to_owned())
    } else {
        let s = slug(&strip_subdomain(authority, &[]).replace("{s}.", ""));
        (s.clone(), format!("/tiles/{s}/"))
    };
    let mut p = Plan {
        key: format!("tiles {template}"),
        name,
        prefix,
        kind: "tiles",
        upstream: template,
        files: None,
        extra: Vec::new(),
        comments: vec!["map tiles: L.tileLayer('{prefix}{z}/{x}/{y}.png', …)".into()],
        urls: Vec::new(),
    };
    if had_query {
        p.comments.push("the page's URL had a query (an API key?): add it to upstream if the provider needs one".into());
    }
    if !subs.is_empty() {
        let list: Vec<String> = subs.iter().map(|s| toml_str(s)).collect();
        p.extra
            .push(("subdomains", format!("[{}]", list.join(", "))));
    }
    p.extra.push(("max_zoom", "19".into()));
    let site = origin.map_or_else(|| "https://site.example/".to_owned(), |o| format!("{o}/"));
    p.extra.push(("referer", toml_str(&site)));
    p.extra.push(("max_upstream_connections", "4".into()));
    if osm {
        let ua = config.upstream.user_agent.to_str().unwrap_or("");
        if !tiles::has_contact(ua) {
            p.comments.push("OpenStreetMap's tile policy asks for a contact in the User-Agent: a page or e-mail of yours".into());
            p.extra
                .push(("user_agent", toml_str(&format!("tamis (+{site})"))));
        }
    }
    Some(p)
}

/// `[[route]]` blocks serving the URLs no route covers, with names and prefixes unused in
/// `config`, each checked by parsing it as a config; `origin` is the site's (for referers and
/// hints).
pub fn suggest(findings: &[Finding], config: &Config, origin: Option<&str>) -> Vec<Suggestion> {
    let mut plans: Vec<Plan> = Vec::new();
    for f in findings {
        if f.load == Load::Hint || !matches!(f.coverage, Coverage::NotCovered) {
            continue;
        }
        let Some(plan) = plan_for(&f.url, &f.places, config, origin) else {
            continue;
        };
        match plans.iter_mut().find(|p| p.key == plan.key) {
            Some(p) => p.urls.push(f.url.clone()),
            None => {
                let mut plan = plan;
                plan.urls.push(f.url.clone());
                plans.push(plan);
            }
        }
    }
    let mut names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let mut prefixes: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| {
            std::iter::once(r.prefix.clone()).chain(r.font_files.as_ref().map(|f| f.prefix.clone()))
        })
        .collect();
    let ua = config
        .upstream
        .user_agent
        .to_str()
        .unwrap_or(crate::config::DEFAULT_USER_AGENT);
    let header = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nuser_agent = {}\n",
        toml_str(ua)
    );
    let mut out: Vec<Suggestion> = Vec::new();
    for plan in plans {
        let name = unique(&plan.name, &names, |base, n| format!("{base}-{n}"));
        let free = |p: &str| {
            !prefixes.iter().any(|x| x == p)
                && plan
                    .files
                    .as_ref()
                    .is_none_or(|(f, _)| !prefixes.iter().any(|x| *x == format!("{p}{f}")))
        };
        let mut prefix = plan.prefix.clone();
        let mut n = 2;
        while !free(&prefix) {
            prefix = format!("{}-{n}/", plan.prefix.trim_end_matches('/'));
            n += 1;
        }
        let fill = |s: &str| {
            s.replace("{prefix_no_slash}", prefix.trim_end_matches('/'))
                .replace("{prefix}", &prefix)
                .replace("{origin}", origin.unwrap_or("https://SITE"))
        };
        let mut toml = String::new();
        for c in &plan.comments {
            let _ = writeln!(toml, "# {}", fill(c));
        }
        let _ = writeln!(toml, "[[route]]");
        let _ = writeln!(toml, "name = {}", toml_str(&name));
        let _ = writeln!(toml, "kind = {}", toml_str(plan.kind));
        let _ = writeln!(toml, "prefix = {}", toml_str(&prefix));
        let _ = writeln!(toml, "upstream = {}", toml_str(&plan.upstream));
        if let Some((files, up)) = &plan.files {
            let _ = writeln!(
                toml,
                "files_prefix = {}",
                toml_str(&format!("{prefix}{files}"))
            );
            let _ = writeln!(toml, "files_upstream = {}", toml_str(up));
        }
        for (k, v) in &plan.extra {
            let _ = writeln!(toml, "{k} = {v}");
        }
        // Never suggest what `tamis check` would refuse.
        let text = format!("{header}{toml}");
        let Ok(alone) = Config::parse(&text, std::path::Path::new("suggestion.toml")) else {
            continue;
        };
        let router = Router::new(&alone);
        let serves = plan
            .urls
            .iter()
            .filter_map(|u| match coverage(u, Load::Resource, None, &router) {
                Coverage::Covered { first_party, .. } => Some((u.clone(), first_party)),
                _ => None,
            })
            .collect();
        names.push(name.clone());
        prefixes.push(prefix.clone());
        if let Some((files, _)) = &plan.files {
            prefixes.push(format!("{prefix}{files}"));
        }
        out.push(Suggestion { name, toml, serves });
    }
    out
}

fn unique(base: &str, taken: &[String], numbered: impl Fn(&str, usize) -> String) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| numbered(base, n))
        .find(|c| !taken.iter().any(|t| t == c))
        .unwrap_or_else(|| base.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Report

/// The human-readable report: covered, then not covered (one line each), the suggested routes,
/// and the summary line. `site` says what counts as first-party (a host, and how it was chosen).
pub fn render(
    page: &str,
    site: Option<&str>,
    findings: &[Finding],
    suggestions: &[Suggestion],
) -> String {
    let mut out = String::new();
    match site {
        Some(h) => {
            let _ = writeln!(out, "{page}: third-party resources (site {h})");
        }
        None => {
            let _ = writeln!(
                out,
                "{page}: third-party resources (no --site given: every absolute URL counts)"
            );
        }
    }
    let covered: Vec<&Finding> = findings.iter().filter(|f| f.covered()).collect();
    let uncovered: Vec<&Finding> = findings.iter().filter(|f| !f.covered()).collect();
    if !covered.is_empty() {
        let _ = writeln!(out, "\ncovered ({}):", covered.len());
        for f in &covered {
            if let Coverage::Covered {
                route,
                first_party,
                note,
            } = &f.coverage
            {
                let _ = write!(
                    out,
                    "  {} -> {first_party} (route {route}; {})",
                    f.url,
                    f.places.join(", ")
                );
                if let Some(n) = note {
                    let _ = write!(out, "; {n}");
                }
                out.push('\n');
            }
        }
    }
    if !uncovered.is_empty() {
        let _ = writeln!(out, "\nNOT COVERED ({}):", uncovered.len());
        for f in &uncovered {
            let _ = write!(out, "  {} ({}) -> ", f.url, f.places.join(", "));
            match &f.coverage {
                Coverage::Hint { serving: Some(r) } => {
                    let _ = write!(out, "remove this connection hint (route {r} already serves this host first-party)");
                }
                Coverage::Hint { serving: None } => {
                    out.push_str("remove this connection hint (the browser connects to the host even if nothing is fetched)");
                }
                _ => {
                    let s = suggestions.iter().find_map(|s| {
                        s.serves
                            .iter()
                            .find(|(u, _)| *u == f.url)
                            .map(|(_, p)| (s, p))
                    });
                    match s {
                        Some((s, p)) => {
                            let _ =
                                write!(out, "no route; with the suggested route {}: {p}", s.name);
                        }
                        None => out.push_str("no route; self-host it or remove it"),
                    }
                }
            }
            out.push('\n');
        }
    }
    if !suggestions.is_empty() {
        out.push_str("\nsuggested routes (append to the config, then run tamis check):\n");
        for s in suggestions {
            out.push('\n');
            out.push_str(&s.toml);
        }
    }
    let _ = writeln!(
        out,
        "\n{} third-party resources: {} covered, {} not covered",
        findings.len(),
        covered.len(),
        uncovered.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn urls(html: &str) -> Vec<(String, String)> {
        scan(html.as_bytes())
            .unwrap()
            .into_iter()
            .map(|f| (f.url, f.place))
            .collect()
    }

    fn only_urls(html: &str) -> Vec<String> {
        urls(html).into_iter().map(|(u, _)| u).collect()
    }

    #[test]
    fn urls_are_read_as_a_browser_reads_them() {
        assert_eq!(
            absolute("  HTTPS://Fonts.GoogleAPIs.com/css?family=A#x "),
            Some("https://fonts.googleapis.com/css?family=A".into())
        );
        assert_eq!(
            absolute("//cdn.example/a.js"),
            Some("//cdn.example/a.js".into())
        );
        assert_eq!(
            absolute("\\\\evil.example\\a.js"),
            Some("//evil.example/a.js".into())
        );
        assert_eq!(
            absolute("https:\\\\evil.example\\x?a\\b"),
            Some("https://evil.example/x?a\\b".into())
        );
        assert_eq!(
            absolute("ht\ntps://x.example/"),
            Some("https://x.example/".into())
        );
        for rel in [
            "/a.js",
            "a.js",
            "?q",
            "#top",
            "data:image/png;base64,AA",
            "javascript:void(0)",
            "mailto:a@b.example",
            "https://",
            "http:x.example",
            "//'+h+'/x",
        ] {
            assert_eq!(absolute(rel), None, "{rel}");
        }
        // Browsers skip any number of slashes after a web scheme.
        assert_eq!(
            absolute("https:///x.example/a"),
            Some("https://x.example/a".into())
        );
        assert_eq!(
            host_of("https://u@Host.example:8443/x"),
            Some("Host.example")
        );
        assert_eq!(host_of("//[::1]:8080/x"), Some("[::1]"));
    }

    #[test]
    fn entities_in_attributes_are_decoded() {
        assert_eq!(
            decode_entities("a?x=1&#038;y=2&amp;z=3&#x26;w&unknown;&"),
            "a?x=1&y=2&z=3&w&unknown;&"
        );
        let found = only_urls("<link rel=stylesheet href='https&#58;//fonts.googleapis.com/css?family=A&#038;display=swap'>");
        assert_eq!(
            found,
            vec!["https://fonts.googleapis.com/css?family=A&display=swap"]
        );
    }

    #[test]
    fn every_loading_attribute_is_found() {
        let html = r#"<html><head>
<link rel="Stylesheet" href="https://a.example/s.css">
<link rel="canonical" href="https://b.example/not-loaded">
<link rel="alternate" href="https://b.example/feed">
<link rel="preconnect" href="https://c.example">
<link rel="preload" as="image" imagesrcset="https://d.example/1.jpg 1x, https://d.example/2.jpg 2x">
<link rel="shortcut icon" href="//e.example/favicon.ico">
</head><body style="background:url('https://f.example/bg.png')">
<img src="https://g.example/a.png" srcset="https://g.example/a,1.png 1x,https://g.example/b.png 2x">
<IMG SRC=https://h.example/up.png>
<picture><source srcset="https://i.example/a.webp"></picture>
<video src="https://j.example/v.mp4" poster="https://j.example/p.jpg"><track src="https://j.example/t.vtt"></video>
<audio src="https://k.example/a.mp3"></audio>
<iframe src="https://l.example/embed"></iframe><embed src="https://m.example/e.swf"><object data="https://n.example/o.svg"></object>
<input type="image" src="https://o.example/btn.png"><input type="text" src="https://o.example/no">
<a href="https://p.example/link" ping="https://q.example/ping">x</a>
<img data-src="https://r.example/lazy.jpg" alt="">
<table background="https://s.example/t.gif"></table>
<svg><image href="https://t.example/i.png"/></svg>
<img src="/first-party.png"><script src="first-party.js"></script>
</body></html>"#;
        let got = urls(html);
        let want = [
            ("https://a.example/s.css", "<link rel=stylesheet href>"),
            ("https://c.example", "<link rel=preconnect href>"),
            ("https://d.example/1.jpg", "<link rel=preload imagesrcset>"),
            ("https://d.example/2.jpg", "<link rel=preload imagesrcset>"),
            ("//e.example/favicon.ico", "<link rel=shortcut icon href>"),
            ("https://f.example/bg.png", "<body style> url()"),
            ("https://g.example/a.png", "<img src>"),
            ("https://g.example/a,1.png", "<img srcset>"),
            ("https://g.example/b.png", "<img srcset>"),
            ("https://h.example/up.png", "<img src>"),
            ("https://i.example/a.webp", "<source srcset>"),
            ("https://j.example/v.mp4", "<video src>"),
            ("https://j.example/p.jpg", "<video poster>"),
            ("https://j.example/t.vtt", "<track src>"),
            ("https://k.example/a.mp3", "<audio src>"),
            ("https://l.example/embed", "<iframe src>"),
            ("https://m.example/e.swf", "<embed src>"),
            ("https://n.example/o.svg", "<object data>"),
            ("https://o.example/btn.png", "<input src>"),
            ("https://q.example/ping", "<a ping>"),
            ("https://r.example/lazy.jpg", "<img data-src>"),
            ("https://s.example/t.gif", "<table background>"),
            ("https://t.example/i.png", "<image href>"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn css_urls_in_style_elements_and_attributes() {
        let css = r#"/* url(https://comment.example/x) */ @import "https://a.example/i.css"; @import url(//b.example/j.css) screen;
.x { background: URL( "https://c.example/c.png" ); content: "url(https://text.example/)"; }
@font-face { src: url(https://d.example/f.woff2) format('woff2'), url(local.woff) }"#;
        let got: Vec<(String, &str)> = css_urls(css);
        assert_eq!(
            got,
            vec![
                ("https://a.example/i.css".to_owned(), "@import"),
                ("//b.example/j.css".to_owned(), "@import"),
                ("https://c.example/c.png".to_owned(), "url()"),
                ("https://d.example/f.woff2".to_owned(), "url()"),
                ("local.woff".to_owned(), "url()"),
            ]
        );
        for broken in [
            "url(",
            "@import '",
            "url('https://x.example",
            "/* open",
            "@import",
        ] {
            let _ = css_urls(broken);
        }
    }

    #[test]
    fn script_urls_are_quoted_literals_not_comments_or_links() {
        let js = r#"// see https://comment.example/docs
var u="//matomo.example/"; var t = 'https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png';
var a = '&copy; <a href="https://www.openstreetmap.org/copyright">OSM</a>';
l.href = 'https://fonts.googleapis.com/css2?family=Inter'; var j = {"u":"https:\/\/s.w.org\/images\/"};
var tpl = `https://cdn.example/${v}/x.js`; var notaurl = 'https://' + host + '/x';"#;
        let got = script_urls(&js.replace("\\/", "/"));
        assert_eq!(
            got,
            vec![
                "//matomo.example/",
                "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png",
                "https://fonts.googleapis.com/css2?family=Inter",
                "https://s.w.org/images/",
                "https://cdn.example/",
            ]
        );
    }

    #[test]
    fn data_scripts_are_not_code() {
        let html = r#"<script type="application/ld+json">{"@context":"https://schema.org","logo":"https://cdn.example/logo.png"}</script>
<script type="module">import x from "https://esm.example/x.js";</script>
<script type="text/plain" data-cookieconsent="statistics">load("https://later.example/t.js")</script>"#;
        assert_eq!(
            only_urls(html),
            vec!["https://esm.example/x.js", "https://later.example/t.js"]
        );
    }

    #[test]
    fn trackers_and_their_hit_destinations() {
        let matomo = r#"<script>
  var _paq = window._paq = window._paq || [];
  (function() { var u="//stats.example.org/";
    _paq.push(['setTrackerUrl', u+'matomo.php']); _paq.push(['setSiteId', '1']);
    var d=document, g=d.createElement('script'); g.src=u+'matomo.js'; })();
</script><noscript><p><img src="//stats.example.org/matomo.php?idsite=1&amp;rec=1" alt=""></p></noscript>"#;
        assert_eq!(
            urls(matomo),
            vec![
                (
                    "//stats.example.org/matomo.js".into(),
                    "inline <script> (Matomo)".into()
                ),
                (
                    "//stats.example.org/matomo.php".into(),
                    "inline <script> (Matomo tracker URL)".into()
                ),
                (
                    "//stats.example.org/matomo.php?idsite=1&rec=1".into(),
                    "<noscript> <img src>".into()
                ),
            ]
        );
        let gtag = r#"<script async src="https://www.googletagmanager.com/gtag/js?id=G-1"></script>
<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}gtag('js',new Date());gtag('config','G-1');</script>"#;
        assert_eq!(
            only_urls(gtag),
            vec![
                "https://www.googletagmanager.com/gtag/js?id=G-1",
                "https://www.google-analytics.com/g/collect"
            ]
        );
        let pointed = r#"<script async src="/gtag/js?id=G-1"></script>
<script>gtag('config','G-1',{server_container_url:'https://site.example/a'});</script>"#;
        assert_eq!(only_urls(pointed), vec!["https://site.example/a"]);
        let others = r#"<script defer data-domain="site.example" src="https://plausible.io/js/script.js"></script>
<script defer src="https://cloud.umami.is/script.js" data-website-id="94db1cb1"></script>
<script defer src="/u/script.js" data-website-id="x" data-host-url="https://umami.example"></script>"#;
        assert_eq!(
            only_urls(others),
            vec![
                "https://plausible.io/js/script.js",
                "https://plausible.io/api/event",
                "https://cloud.umami.is/script.js",
                "https://cloud.umami.is/api/send",
                "https://umami.example/api/send",
            ]
        );
    }

    #[test]
    fn base_href_makes_relative_urls_third_party() {
        let html = r##"<base href="https://cdn.example/site/v2/"><img src="img/a.png"><img src="../b.png"><img src="/c.png"><img src="#x"><a href="rel.html">x</a>"##;
        assert_eq!(
            only_urls(html),
            vec![
                "https://cdn.example/site/v2/img/a.png",
                "https://cdn.example/site/b.png",
                "https://cdn.example/c.png"
            ]
        );
        assert_eq!(
            resolve("https://h.example/a/b?q", "?z"),
            Some("https://h.example/a/b?z".into())
        );
    }

    #[test]
    fn malformed_markup_never_fails() {
        for html in [
            "<img src=\"https://a.example/x.png",
            "<script>var u = 'https://b.example/",
            "<style>@import 'https://c.example/x.css",
            "<<<>>><img/src=https://d.example/y.png/><div <p",
            "<select><script>'https://e.example/'</script></select>",
            "\u{0}\u{feff}<p>é\u{fffd}</p>",
        ] {
            let _ = scan(html.as_bytes()).unwrap();
        }
        assert_eq!(
            only_urls("<script>var u = 'https://b.example/x.js"),
            vec!["https://b.example/x.js"]
        );
        assert_eq!(
            scan(&[
                0xff, 0xfe, b'<', b'i', b'm', b'g', b' ', b's', b'r', b'c', b'=', b'/', b'/', b'x',
                b'.', b'e', b'x', b'>'
            ])
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn srcset_candidates() {
        assert_eq!(
            srcset_urls(" a.png 1x, b.png 2x,c.png,, d.png 100w "),
            vec!["a.png", "b.png", "c.png", "d.png"]
        );
        assert_eq!(
            srcset_urls("https://x.example/a,b.png 1x"),
            vec!["https://x.example/a,b.png"]
        );
    }

    const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
[upstream]
user_agent = "tamis (+https://site.example/)"
[[route]]
name = "cdnjs"
kind = "static"
prefix = "/cdnjs/"
upstream = "https://cdnjs.cloudflare.com/ajax/libs/"
[[route]]
name = "bunny"
kind = "fonts"
prefix = "/bunny/"
upstream = "https://fonts.bunny.net/"
files_prefix = "/bunny/files/"
files_upstream = "https://fonts.bunny.net/"
jurisdiction = "eu"
[[route]]
name = "osmfr"
kind = "tiles"
prefix = "/tiles/fr/"
upstream = "https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}.png"
subdomains = ["a", "b", "c"]
referer = "https://site.example/"
max_zoom = 18
[[route]]
name = "ga"
kind = "ga4"
prefix = "/a/"
upstream = "https://region1.google-analytics.com/"
[[route]]
name = "stats"
kind = "matomo"
prefix = "/m/"
upstream = "https://stats.example.org/"
[[route]]
name = "stats-files"
kind = "static"
prefix = "/stats-files/"
upstream = "https://stats.example.org/"
[[route]]
name = "tracker-mirror"
kind = "static"
prefix = "/tm/"
upstream = "https://tracker.example/"
"#;

    fn config() -> Config {
        Config::parse(CONFIG, Path::new("t.toml")).unwrap()
    }

    fn cover(url: &str) -> Coverage {
        let found = vec![Found {
            url: absolute(url).unwrap(),
            place: "t".into(),
            load: Load::Resource,
        }];
        classify(&found, Some("site.example"), &Router::new(&config()))
            .remove(0)
            .coverage
    }

    fn first_party(url: &str) -> Option<String> {
        match cover(url) {
            Coverage::Covered { first_party, .. } => Some(first_party),
            _ => None,
        }
    }

    #[test]
    fn coverage_by_route_kind() {
        assert_eq!(
            first_party("//cdnjs.cloudflare.com/ajax/libs/jquery/3.7.1/jquery.min.js").as_deref(),
            Some("/cdnjs/jquery/3.7.1/jquery.min.js")
        );
        assert_eq!(first_party("https://cdnjs.cloudflare.com/other/x.js"), None);
        assert_eq!(
            first_party("https://cdnjs.cloudflare.com/ajax/libs/../../etc/passwd"),
            None
        );
        // Bunny serves CSS and files from one host: the CSS maps to the CSS part.
        assert_eq!(
            first_party("https://fonts.bunny.net/css?family=roboto:400").as_deref(),
            Some("/bunny/css?family=roboto:400")
        );
        assert_eq!(
            first_party("https://fonts.bunny.net/roboto/files/roboto-latin-400-normal.woff2")
                .as_deref(),
            Some("/bunny/files/roboto/files/roboto-latin-400-normal.woff2")
        );
        // Tiles: templates, any subdomain, concrete tiles the route would serve.
        assert_eq!(
            first_party("https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}.png").as_deref(),
            Some("/tiles/fr/{z}/{x}/{y}.png")
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/3/4/5.png").as_deref(),
            Some("/tiles/fr/3/4/5.png")
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/19/4/5.png"),
            None,
            "above max_zoom"
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/3/4/5.jpg"),
            None,
            "other extension"
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/other/3/4/5.png"),
            None
        );
        match cover("https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}{r}.png") {
            Coverage::Covered {
                first_party, note, ..
            } => {
                assert_eq!(first_party, "/tiles/fr/{z}/{x}/{y}.png");
                assert!(note.unwrap().contains("@2x"));
            }
            c => panic!("{c:?}"),
        }
        // Analytics: only the tracking endpoint; GA regions are interchangeable.
        match cover("https://www.google-analytics.com/g/collect") {
            Coverage::Covered {
                route,
                first_party,
                note,
            } => {
                assert_eq!(
                    (route.as_str(), first_party.as_str()),
                    ("ga", "/a/g/collect")
                );
                assert_eq!(
                    note.as_deref(),
                    Some("in gtag's config set server_container_url: 'https://site.example/a'")
                );
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            first_party("//stats.example.org/matomo.php?idsite=1&rec=1").as_deref(),
            Some("/m/matomo.php?idsite=1&rec=1")
        );

        // A mirror of the tracker's host serves its script, never its hits (they would go
        // through unscrubbed), even when no analytics route exists for that host.
        assert_eq!(
            first_party("https://stats.example.org/js/matomo.js").as_deref(),
            Some("/stats-files/js/matomo.js")
        );
        assert_eq!(
            first_party("https://stats.example.org/matomo.php").as_deref(),
            Some("/m/matomo.php")
        );
        for hit in [
            "https://tracker.example/matomo.php?idsite=1",
            "https://tracker.example/sub/piwik.php",
            "https://tracker.example/g/collect?v=2",
            "https://tracker.example/api/event",
            "https://tracker.example/api/send",
        ] {
            assert_eq!(first_party(hit), None, "{hit}");
        }
        assert_eq!(
            first_party("https://tracker.example/js/script.js").as_deref(),
            Some("/tm/js/script.js")
        );
        assert_eq!(
            first_party("https://www.google-analytics.com/analytics.js"),
            None
        );
    }

    #[test]
    fn site_resources_are_first_party_and_repeats_merge() {
        let found = scan(br#"<img src="https://Site.Example/a.png"><img src="https://x.example/a.png"><link rel=preload href="https://x.example/a.png" as=image><link rel=preconnect href="https://fonts.bunny.net">"#).unwrap();
        let f = classify(&found, Some("site.example"), &Router::new(&config()));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].places, vec!["<img src>", "<link rel=preload href>"]);
        assert_eq!(f[0].coverage, Coverage::NotCovered);
        assert_eq!(
            f[1].coverage,
            Coverage::Hint {
                serving: Some("bunny".into())
            }
        );
        assert_eq!(classify(&found, None, &Router::new(&config())).len(), 3);
    }

    #[test]
    fn suggestions_are_valid_routes_that_cover_what_they_were_made_for() {
        let html = br#"<link rel=stylesheet href="https://fonts.googleapis.com/css2?family=Inter">
<script src="https://www.googletagmanager.com/gtag/js?id=G-1"></script>
<script src="https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js"></script>
<script src="https://cdn.jsdelivr.net/gh/user/repo@1/x.js"></script>
<script src="https://unpkg.com/htmx.org@2.0.0"></script>
<script>L.tileLayer('https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png');
L.tileLayer('https://{s}.basemaps.cartocdn.com/light_all/{z}/{x}/{y}{r}.png');
L.tileLayer('https://api.maptiler.com/maps/{z}/{x}/{y}.png?key={accessToken}');</script>
<img src="https://tile.openstreetmap.de/3/4/5.png">
<img src="https://images.example-cdn.net:8443/a.jpg"><iframe src="https://www.youtube-nocookie.com/embed/x"></iframe>
<script defer data-domain="site.example" src="https://plausible.io/js/script.js"></script>
<script defer src="https://cloud.umami.is/script.js" data-website-id="1"></script>
<script>var _paq=[];var u="https://stats.other.example/";_paq.push(['setTrackerUrl', u+'matomo.php']);g.src=u+'matomo.js';</script>
<img src="https://fonts.gstatic.com/s/inter/v1/a.woff2">"#;
        let cfg = config();
        let found = scan(html).unwrap();
        let findings = classify(&found, Some("site.example"), &Router::new(&cfg));
        let suggestions = suggest(&findings, &cfg, Some("https://site.example"));
        let all: String = suggestions
            .iter()
            .map(|s| s.toml.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        // Appended to the running config, every suggestion passes `tamis check`.
        let combined = format!("{CONFIG}\n{all}");
        let checked = Config::parse(&combined, Path::new("t.toml"));
        assert!(checked.is_ok(), "{all}\n{:?}", checked.err());
        let names: Vec<&str> = suggestions.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "google-fonts",
                "gtag",
                "jsdelivr",
                "jsdelivr-gh",
                "unpkg",
                "osm",
                "basemaps-cartocdn-com",
                "api-maptiler-com",
                "tile-openstreetmap-de",
                "images-example-cdn-net-8443",
                "www-youtube-nocookie-com",
                "plausible-js",
                "plausible",
                "umami-js",
                "umami",
                "matomo-js",
                "matomo",
            ],
            "the gtag hits are covered by the config's ga route (another GA region): {all}"
        );
        // With the suggestions added, everything the page loads is covered.
        let router = Router::new(&checked.unwrap());
        let after = classify(&found, Some("site.example"), &router);
        let left: Vec<&str> = after
            .iter()
            .filter(|f| !f.covered())
            .map(|f| f.url.as_str())
            .collect();
        assert_eq!(left, Vec::<&str>::new());
        let serves = |url: &str| {
            suggestions
                .iter()
                .flat_map(|s| &s.serves)
                .find(|(u, _)| u == url)
                .map(|(_, p)| p.as_str())
        };
        assert_eq!(
            serves("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"),
            Some("/tiles/osm/{z}/{x}/{y}.png")
        );
        assert_eq!(
            serves("https://fonts.googleapis.com/css2?family=Inter"),
            Some("/fonts/css2?family=Inter")
        );
        assert_eq!(
            serves("https://fonts.gstatic.com/s/inter/v1/a.woff2"),
            Some("/fonts/files/s/inter/v1/a.woff2")
        );
        assert!(
            all.contains("upstream = \"https://tile.openstreetmap.org/{z}/{x}/{y}.png\""),
            "{all}"
        );
        assert!(all.contains("referer = \"https://site.example/\""), "{all}");
    }

    #[test]
    fn ga_suggestion_when_the_config_has_none() {
        let cfg = Config::parse("[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"ga\"\nkind = \"static\"\nprefix = \"/a/\"\nupstream = \"https://x.example/\"\n[[route]]\nname = \"osm\"\nkind = \"static\"\nprefix = \"/tiles/osm/\"\nupstream = \"https://y.example/\"\n", Path::new("t.toml")).unwrap();
        let found = scan(b"<script>gtag('config','G-1')</script><script>L.tileLayer('//tile.openstreetmap.org/{z}/{x}/{y}.png')</script>").unwrap();
        let findings = classify(&found, None, &Router::new(&cfg));
        let s = suggest(&findings, &cfg, None);
        assert_eq!(s.len(), 2);
        assert!(
            s[0].toml.contains("name = \"osm-2\"")
                && s[0].toml.contains("prefix = \"/tiles/osm-2/\""),
            "{}",
            s[0].toml
        );
        assert!(
            s[0].toml
                .contains("user_agent = \"tamis (+https://site.example/)\""),
            "OSM needs a contact: {}",
            s[0].toml
        );
        assert!(
            s[1].toml.contains("name = \"ga-2\"") && s[1].toml.contains("prefix = \"/a-2/\""),
            "{}",
            s[1].toml
        );
        assert_eq!(
            s[1].serves,
            vec![(
                "https://www.google-analytics.com/g/collect".to_owned(),
                "/a-2/g/collect".to_owned()
            )]
        );
    }

    #[test]
    fn report_layout() {
        let cfg = config();
        let found = scan(br#"<script src="https://cdnjs.cloudflare.com/ajax/libs/a/1/a.js"></script><img src="https://x.example/a.png"><link rel=dns-prefetch href="//y.example">"#).unwrap();
        let findings = classify(&found, Some("site.example"), &Router::new(&cfg));
        let s = suggest(&findings, &cfg, Some("https://site.example"));
        let text = render("page.html", Some("site.example"), &findings, &s);
        assert!(text.contains("\ncovered (1):\n  https://cdnjs.cloudflare.com/ajax/libs/a/1/a.js -> /cdnjs/a/1/a.js (route cdnjs; <script src>)\n"), "{text}");
        assert!(text.contains("\nNOT COVERED (2):\n  https://x.example/a.png (<img src>) -> no route; with the suggested route x-example: /x-example/a.png\n"), "{text}");
        assert!(
            text.contains(
                "  //y.example (<link rel=dns-prefetch href>) -> remove this connection hint"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("\n3 third-party resources: 1 covered, 2 not covered\n"),
            "{text}"
        );
    }

    #[test]
    fn sites_and_pages() {
        assert_eq!(
            parse_site("https://Site.Example:8443/blog/").unwrap(),
            Site {
                host: "site.example".into(),
                origin: "https://site.example:8443".into()
            }
        );
        assert_eq!(
            parse_site("site.example").unwrap().origin,
            "https://site.example"
        );
        assert!(parse_site("ftp://site.example").is_err());
        assert!(parse_site("not a site").is_err());
        assert!(is_url("HTTPS://x.example/") && !is_url("tests/pages/a.html"));
    }
}

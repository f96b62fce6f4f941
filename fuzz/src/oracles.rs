//! tamis's privacy properties, written once as checks over (input, output) and shared by the
//! fuzz targets (`fuzz/fuzz_targets/`) and the proptest suite (`tests/properties.rs` includes
//! this file with `#[path]`). Only tamis's public API and crates tamis itself depends on are
//! used, so the file compiles in both places.
//!
//! A check panics, naming the property, when tamis's output breaks it. Bugs found so far are
//! fixed, their inputs kept as `regress-*` seeds and tests (fuzz/README.md).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use serde_json::{Map, Value};
use tamis::analytics::{
    self, ga4, matomo, plausible, umami, Context, Pseudonymizer, Settings, Tally,
};
use tamis::config::{Config, UpstreamBase};
use tamis::mirrors::{fonts, tiles};
use tamis::policy::{RequestPolicy, UserAgent, REQUEST_ALLOWLIST, REQUEST_REMOVED};
use tamis::routes::confine::{self, Redirect};
use tamis::routes::{css, PathError, Role, Route, Router};

// ---------------------------------------------------------------------------------------------
// Secrets

/// Percent-decodes (form style: `+` is a space) until nothing changes, at most four times, and
/// returns every stage: what a value may become after tamis or the upstream decodes it.
pub fn decodings(s: &str) -> Vec<String> {
    let mut out = vec![s.to_owned()];
    let mut cur = s.to_owned();
    for _ in 0..4 {
        let next = percent_encoding::percent_decode_str(&cur.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        if next == cur {
            break;
        }
        out.push(next.clone());
        cur = next;
    }
    out
}

fn json_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| json_strings(v, out)),
        Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                json_strings(v, out);
            }
        }
        _ => out.push(v.to_string()),
    }
}

/// Every way `input` can be read: raw, percent-decoded, inside JSON strings (escapes
/// resolved), lower-cased.
pub fn readings(input: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(input);
    let mut texts = vec![text.to_string()];
    if let Ok(v) = serde_json::from_slice::<Value>(input) {
        json_strings(&v, &mut texts);
    }
    texts
        .iter()
        .flat_map(|t| decodings(t))
        .map(|t| t.to_ascii_lowercase())
        .collect()
}

/// Whether `secret` can be read anywhere in `input` (see [`readings`]). A planted secret the
/// input already mentions proves nothing when it shows up in the output, so such inputs skip
/// the secret check.
pub fn mentions(input: &[u8], secret: &str) -> bool {
    let secret = secret.to_ascii_lowercase();
    readings(input).iter().any(|t| t.contains(&secret))
}

/// A secret made of letters and digits only (nothing to encode) that `inputs` never mention.
pub fn fresh_secret(inputs: &[&[u8]]) -> Option<String> {
    [
        "QzxPlantedSecret",
        "JvkHiddenValue",
        "XqwTamisCanary",
        "WyzNeverForward",
    ]
    .iter()
    .find(|s| !inputs.iter().any(|i| mentions(i, s)))
    .map(|s| (*s).to_owned())
}

/// A value planted in a field that must not reach the upstream.
#[derive(Clone, Debug)]
pub struct Planted {
    pub secret: String,
    pub field: &'static str,
}

/// Asserts that no planted secret appears in `output`, raw or decoded, in any case.
pub fn assert_absent(output: &[u8], planted: &[Planted], what: &str) {
    let read = readings(output);
    for p in planted {
        let secret = p.secret.to_ascii_lowercase();
        assert!(
            !read.iter().any(|t| t.contains(&secret)),
            "{what}: the value planted in {:?} ({}) reached the upstream: {}",
            p.field,
            p.secret,
            String::from_utf8_lossy(output)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Routes used by the properties

/// A config with one route of every kind, non-EU and EU, with and without query forwarding.
pub const TEST_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstream]
user_agent = "tamis-fuzz (+https://site.example/privacy)"

[[route]]
name = "cdn"
kind = "static"
prefix = "/cdn/"
upstream = "https://cdn.example/npm/"

[[route]]
name = "noquery"
kind = "static"
prefix = "/cdn/noquery/"
upstream = "http://127.0.0.1:8081/base/dir/"
forward_query = false

[[route]]
name = "eu"
kind = "static"
prefix = "/eu/"
upstream = "https://eu.example:8443/"
jurisdiction = "eu"
forward_headers = ["Accept-Language", "Referer"]

[[route]]
name = "eu-raw"
kind = "static"
prefix = "/pass/"
upstream = "https://pass.example/p/"
jurisdiction = "eu"
pass_through = true

[[route]]
name = "google-fonts"
kind = "fonts"
prefix = "/fonts/"
upstream = "https://fonts.googleapis.com/"
files_prefix = "/fonts/files/"
files_upstream = "https://fonts.gstatic.com/"

[[route]]
name = "bunny"
kind = "fonts"
prefix = "/bunny/"
upstream = "https://fonts.bunny.net/"
files_prefix = "/bunny/files/"
files_upstream = "https://fonts.bunny.net/"
jurisdiction = "eu"

[[route]]
name = "osm"
kind = "tiles"
prefix = "/tiles/osm/"
upstream = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
referer = "https://site.example/"

[[route]]
name = "osmfr"
kind = "tiles"
prefix = "/tiles/fr/"
upstream = "https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}{r}.png"
subdomains = ["a", "b", "c"]
referer = "https://site.example/"
max_zoom = 20

[[route]]
name = "vector"
kind = "tiles"
prefix = "/tiles/v/"
upstream = "http://tiles.example:8080/v/{z}/{x}/{y}{r}"
max_zoom = 30

[[route]]
name = "ga"
kind = "ga4"
prefix = "/ga/"
upstream = "https://region1.google-analytics.com/"

[[route]]
name = "matomo"
kind = "matomo"
prefix = "/m/"
upstream = "https://stats.example/"
jurisdiction = "eu"

[[route]]
name = "plausible"
kind = "plausible"
prefix = "/p/"
upstream = "https://plausible.io/"

[[route]]
name = "umami"
kind = "umami"
prefix = "/u/"
upstream = "https://umami.example/"
user_agent = "umami-relay"
"#;

/// The router built from [`TEST_CONFIG`].
pub fn test_router() -> Router {
    let config = Config::parse(TEST_CONFIG, Path::new("properties.toml"))
        .unwrap_or_else(|e| panic!("TEST_CONFIG: {e}"));
    Router::new(&config)
}

// ---------------------------------------------------------------------------------------------
// Path confinement and URL building

fn percent_decode_lossy(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// The built upstream URL starts with the route's base (scheme, authority, base path), names
/// no other authority, and adds only plain segments (no `.`/`..`, raw or encoded; no encoded
/// or raw separators; no empty segment before the last).
pub fn check_upstream_uri(base: &UpstreamBase, rest: &str, query: Option<&str>, uri: &Uri) {
    let ctx = || format!("base {base}, rest {rest:?}, query {query:?} -> {uri}");
    assert_eq!(
        uri.scheme(),
        Some(&base.scheme),
        "scheme changed: {}",
        ctx()
    );
    assert_eq!(
        uri.authority().map(|a| a.as_str()),
        Some(base.authority.as_str()),
        "authority changed: {}",
        ctx()
    );
    let text = uri.to_string();
    assert!(
        text.starts_with(&base.to_string()),
        "URL does not start with the upstream base: {}",
        ctx()
    );
    // What an HTTP client re-reading the URL sees: the same authority and path.
    let again: Uri = text
        .parse()
        .unwrap_or_else(|e| panic!("built URL does not parse again ({e}): {}", ctx()));
    assert_eq!(again.authority(), uri.authority(), "re-parse: {}", ctx());
    assert_eq!(again.path(), uri.path(), "re-parse: {}", ctx());
    let path = uri.path();
    let added = path
        .strip_prefix(base.path.as_str())
        .unwrap_or_else(|| panic!("path left the base path: {}", ctx()));
    let segments: Vec<&str> = added.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let decoded = percent_decode_lossy(seg);
        assert!(
            !(seg.is_empty() && i + 1 < segments.len()),
            "empty segment: {}",
            ctx()
        );
        assert!(
            decoded != b"." && decoded != b"..",
            "dot segment {seg:?}: {}",
            ctx()
        );
        assert!(
            !seg.contains('\\') && !decoded.contains(&b'/') && !decoded.contains(&b'\\'),
            "separator hidden in segment {seg:?}: {}",
            ctx()
        );
        assert!(
            !decoded.iter().any(|&b| b < 0x20 || b == 0x7f),
            "control character in segment {seg:?}: {}",
            ctx()
        );
    }
    // Exactly base + rest (+ query): nothing reinterpreted, no query smuggled in.
    assert_eq!(path, format!("{}{rest}", base.path), "path: {}", ctx());
    assert_eq!(uri.query(), query, "query: {}", ctx());
}

/// A tile path parsed by a reference reading of `{z}/{x}/{y}[@2x].{ext}`, independent of tamis.
pub fn reference_tile(rest: &str) -> Option<(u32, u64, u64, bool, String)> {
    let mut parts = rest.split('/');
    let (z, x, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (stem, ext) = file.rsplit_once('.')?;
    let (y, retina) = match stem.strip_suffix("@2x") {
        Some(y) => (y, true),
        None => (stem, false),
    };
    let num = |s: &str, max: usize| -> Option<u64> {
        (!s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())?
    };
    Some((
        num(z, 2)? as u32,
        num(x, 10)?,
        num(y, 10)?,
        retina,
        ext.to_ascii_lowercase(),
    ))
}

/// A tile accepted by `tiles::parse` has z <= max_zoom (and <= 30), x and y < 2^z, a known
/// extension, and says exactly what the path says.
pub fn check_tile(rest: &str, max_zoom: u8, parsed: &Result<tiles::Tile, tiles::TileError>) {
    let Ok(t) = parsed else { return };
    let ctx = || format!("{rest:?} (max_zoom {max_zoom}) -> {t:?}");
    assert!(
        t.z <= max_zoom && t.z <= tiles::ZOOM_LIMIT,
        "zoom: {}",
        ctx()
    );
    let side = 1u64 << t.z;
    assert!(
        u64::from(t.x) < side && u64::from(t.y) < side,
        "x/y: {}",
        ctx()
    );
    assert!(tiles::EXTENSIONS.contains(&t.ext), "ext: {}", ctx());
    let (z, x, y, retina, ext) =
        reference_tile(rest).unwrap_or_else(|| panic!("not a tile path: {}", ctx()));
    assert_eq!(
        (z, x, y, retina, ext.as_str()),
        (
            u32::from(t.z),
            u64::from(t.x),
            u64::from(t.y),
            t.retina,
            t.ext
        ),
        "{}",
        ctx()
    );
}

/// What `Route::upstream_uri` built (or refused) for the path after the route's prefix.
pub fn check_route_uri(route: &Route, rest: &str, query: Option<&str>) {
    let built = route.upstream_uri(rest, query);
    match route.role {
        Role::Tiles => {
            let t = route
                .config
                .tiles
                .as_ref()
                .expect("tiles route without a template");
            let parsed = tiles::parse(rest, t.max_zoom);
            check_tile(rest, t.max_zoom, &parsed);
            match (&built, parsed) {
                (Ok(uri), Ok(tile)) => {
                    assert_eq!(Some(uri), t.template.uri(&tile).as_ref(), "{rest:?}");
                    assert_eq!(uri.scheme(), Some(&route.upstream.scheme), "{uri}");
                    let host = uri.host().unwrap_or("");
                    let template_host = t.template.sample_host();
                    let suffix = template_host.split_once('.').map_or("", |(_, s)| s);
                    assert!(
                        uri.authority().map(|a| a.as_str()) == Some(template_host.as_str())
                            || (t.template.as_str().contains("{s}")
                                && host.ends_with(suffix)
                                && host.split_once('.').is_some_and(|(_, s)| s == suffix)),
                        "tile host {host:?} is not the template's ({template_host})"
                    );
                }
                (Ok(uri), Err(e)) => panic!("tile path {rest:?} refused ({e}) but built {uri}"),
                _ => {}
            }
        }
        _ => {
            let effective = match route.role {
                Role::FontFiles => None,
                Role::Static | Role::FontCss if !route.config.forward_query => None,
                _ => query,
            };
            if let Ok(uri) = &built {
                check_upstream_uri(&route.upstream, rest, effective, uri);
            }
            // Confinement is decided by the path alone, whatever the role.
            if confine::check_rest(rest).is_err() {
                assert!(
                    matches!(built, Err(PathError::Confinement(_))),
                    "{rest:?} built {built:?}"
                );
            }
        }
    }
}

/// A request target as hyper would parse it, routed and built as the proxy does.
pub fn check_request_target(router: &Router, target: &str) {
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    if uri.authority().is_some() {
        return; // absolute-form: answered 400 before routing
    }
    let Some((route, rest)) = router.find(uri.path()) else {
        return;
    };
    assert!(uri.path().starts_with(route.prefix.as_str()));
    check_route_uri(route, rest, uri.query());
}

/// A `Location` mapped back to the visitor stays under the route prefix, as a plain path that
/// maps back into the upstream base; a browser resolving it stays on the site.
pub fn check_location(base: &UpstreamBase, prefix: &str, requested: &Uri, location: &str) {
    let mapped = confine::map_location(base, prefix, requested, location);
    let Redirect::FirstParty(out) = mapped else {
        return;
    };
    let ctx = || format!("Location {location:?} (base {base}, prefix {prefix}) -> {out:?}");
    let (path, query) = match out.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (out.as_str(), None),
    };
    let rest = path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("left the prefix: {}", ctx()));
    assert!(confine::check_rest(rest).is_ok(), "unconfined: {}", ctx());
    assert!(
        !out.bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'\\' || b == b'#'),
        "control, backslash or fragment: {}",
        ctx()
    );
    if let Ok(uri) = confine::upstream_uri(base, rest, query) {
        check_upstream_uri(base, rest, query, &uri);
    }
}

// ---------------------------------------------------------------------------------------------
// Request headers

/// Header names the properties draw from: allowlisted, removed for a reason, and unknown.
pub fn header_pool() -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = REQUEST_ALLOWLIST
        .iter()
        .map(|(n, _, _)| n.clone())
        .collect();
    names.extend(
        REQUEST_REMOVED
            .iter()
            .map(|(n, _)| HeaderName::from_static(n)),
    );
    for n in [
        "user-agent",
        "sec-ch-ua",
        "sec-ch-ua-platform",
        "sec-fetch-site",
        "sec-fetch-dest",
        "x-something-new",
        "x-amzn-trace-id",
        "x-visitor-id",
        "cdn-loop",
        "x-hop",
    ] {
        names.push(HeaderName::from_static(n));
    }
    names
}

/// Shapes of `generalise_user_agent` outputs, digits replaced by `N`.
fn ua_shapes() -> Vec<String> {
    [
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.1.2 Safari/537.36 Edg/131.0.1.2",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.1.2 Safari/537.36 OPR/115.0.1.2",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.1.2 Safari/537.36",
        "Mozilla/5.0 (iPhone) CriOS/131.0.1.2 Mobile Safari/604.1",
        "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        "curl/8.5.0",
    ]
    .iter()
    .map(|ua| digits_as_n(&tamis::policy::generalise_user_agent(ua)))
    .collect()
}

fn digits_as_n(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Asserts a User-Agent is one of the generalised shapes (browser family, major version).
pub fn check_generalised_ua(ua: &str) {
    assert!(
        ua_shapes().contains(&digits_as_n(ua)),
        "User-Agent {ua:?} is not generalised"
    );
}

/// What `Route::scrub` sends upstream for `visitor`.
pub fn check_scrub(route: &Route, visitor: &HeaderMap) {
    let out = route.scrub(visitor);
    check_scrubbed(&route.policy, route.role == Role::FontCss, visitor, &out);
    if !route.policy.pass_through {
        // Non-interference: without the headers the policy removes, the upstream gets exactly
        // the same request, so nothing about them can leak.
        let mut kept = HeaderMap::new();
        for (name, value) in visitor {
            if route.policy.forwards(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        assert_eq!(
            route.scrub(&kept),
            out,
            "removed headers changed what was sent: {visitor:?}"
        );
    }
}

/// The headers sent upstream: only allowed names; allowlisted ones as sent (or normalised); no
/// value of a removed header, anywhere, unless an allowed input or the config explains it.
pub fn check_scrubbed(
    policy: &RequestPolicy,
    font_css: bool,
    visitor: &HeaderMap,
    out: &HeaderMap,
) {
    let ctx = || format!("policy {policy:?}\nvisitor {visitor:?}\nsent {out:?}");
    if policy.pass_through {
        let listed: Vec<String> = visitor
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        for (name, value) in out {
            let hop = REQUEST_REMOVED
                .iter()
                .any(|(n, why)| *why == tamis::policy::Removed::HopByHop && *n == name.as_str());
            assert!(!hop, "hop-by-hop {name} passed through: {}", ctx());
            assert!(
                !listed.iter().any(|l| l == name.as_str()),
                "{name} named in Connection passed through: {}",
                ctx()
            );
            assert!(
                visitor.get_all(name).iter().any(|v| v == value)
                    || (font_css && name == header::ACCEPT_ENCODING),
                "{name} was not sent by the visitor: {}",
                ctx()
            );
        }
        return;
    }
    for name in out.keys() {
        let allowed = REQUEST_ALLOWLIST.iter().any(|(n, _, _)| n == name)
            || *name == header::USER_AGENT
            || *name == header::HOST
            || (*name == header::REFERER && policy.referer.is_some())
            || policy.extra.contains(name);
        assert!(allowed, "{name} is not on the allowlist: {}", ctx());
    }
    for (name, how, _) in REQUEST_ALLOWLIST {
        let sent: Vec<&HeaderValue> = out.get_all(name).iter().collect();
        match how {
            tamis::policy::Allowed::AsSent => {
                let got: Vec<&HeaderValue> = visitor.get_all(name).iter().collect();
                assert_eq!(sent, got, "{name} not as sent: {}", ctx());
            }
            tamis::policy::Allowed::Normalized => {
                let ok: &[&str] = if font_css {
                    &["identity"]
                } else {
                    &["identity", "gzip", "br", "br, gzip"]
                };
                assert!(
                    sent.len() == 1 && ok.iter().any(|v| sent[0] == v),
                    "{name} not normalised: {}",
                    ctx()
                );
            }
        }
    }
    match (&policy.user_agent, out.get(header::USER_AGENT)) {
        (UserAgent::Fixed(ua), got) => assert_eq!(got, Some(ua), "User-Agent: {}", ctx()),
        (UserAgent::Visitor, got) => {
            assert_eq!(
                got,
                visitor.get(header::USER_AGENT),
                "User-Agent: {}",
                ctx()
            )
        }
        (UserAgent::Generalised, got) => {
            let got = got.and_then(|v| v.to_str().ok()).unwrap_or("");
            check_generalised_ua(got);
        }
    }
    if let Some(r) = &policy.referer {
        assert_eq!(out.get(header::REFERER), Some(r), "Referer: {}", ctx());
    }
    // No removed value appears in anything sent, unless an allowed input or a constant holds it.
    let mut explainers: Vec<Vec<u8>> = Vec::new();
    for (name, value) in visitor {
        if policy.forwards(name) {
            explainers.push(value.as_bytes().to_vec());
        }
    }
    if let Some(ua) = visitor
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        explainers.push(tamis::policy::generalise_user_agent(ua).into_bytes());
    }
    if let UserAgent::Fixed(ua) = &policy.user_agent {
        explainers.push(ua.as_bytes().to_vec());
    }
    if let Some(r) = &policy.referer {
        explainers.push(r.as_bytes().to_vec());
    }
    explainers.push(b"Mozilla/5.0 (compatible; other) br, gzip identity".to_vec());
    explainers.push(fonts::CSS_USER_AGENT.as_bytes().to_vec());
    for (name, value) in visitor {
        let v = value.as_bytes();
        if policy.forwards(name) || v.len() < 8 {
            continue;
        }
        for (sent_name, sent) in out {
            if contains(sent.as_bytes(), v) && !explainers.iter().any(|e| contains(e, v)) {
                panic!(
                    "the value of removed header {name} reached the upstream in {sent_name}: {}",
                    ctx()
                );
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Visitor headers that must never leave, each with a value holding one secret
/// (`{secret}01`…), for the planted check: (name, value, what to look for).
pub fn planted_headers(secret: &str) -> Vec<(HeaderName, String, Planted)> {
    [
        ("cookie", "session={}; theme=dark"),
        ("authorization", "Bearer {}"),
        ("x-forwarded-for", "203.0.113.7, {}"),
        ("forwarded", "for=\"{}\""),
        ("x-real-ip", "{}"),
        ("accept-language", "fr-FR,{};q=0.9"),
        ("referer", "https://site.example/account?user={}"),
        ("origin", "https://{}.example"),
        ("if-none-match", "\"{}\""),
        ("x-client-data", "{}"),
        ("sec-ch-ua-model", "\"{}\""),
        ("x-visitor-id", "{}"),
        ("proxy-authorization", "Basic {}"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, template))| {
        let s = format!("{secret}{:02}", i + 1);
        (
            HeaderName::from_static(name),
            template.replace("{}", &s),
            Planted {
                secret: s,
                field: name,
            },
        )
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// Analytics

/// A fixed clock (so pseudonym periods are known) and a pseudonymizer for the scrubbers.
pub struct Analytics {
    pub settings: Settings,
    pub pseudonyms: Pseudonymizer,
    pub now: SystemTime,
}

impl Default for Analytics {
    fn default() -> Analytics {
        Analytics {
            settings: Settings {
                allow_event_params: vec![
                    "ep.page_type".into(),
                    "Plan".into(),
                    "plan".into(),
                    "author".into(),
                    "dimension2".into(),
                    // Not custom fields: listing them must not keep them.
                    "uid".into(),
                    "cip".into(),
                ],
                allow_url_params: vec!["utm_source".into()],
            },
            pseudonyms: Pseudonymizer::new(
                Duration::from_secs(86400),
                Some(tamis::secret::Secret::new(
                    "pseudonym salt",
                    "0123456789abcdef",
                )),
            ),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }
}

impl Analytics {
    pub fn ctx<'a>(&'a self, route: &'a str) -> Context<'a> {
        Context {
            settings: &self.settings,
            pseudonyms: &self.pseudonyms,
            route,
            visitor: &tamis::analytics::visitor::Visitor::NONE,
            matomo_token: None,
        }
    }
}

/// A page URL after the URL rule: http(s) or a path, no path parameter (`;jsessionid=`), no
/// fragment, only allowed query parameters.
fn check_page_url(url: &str, allow: &[String], what: &str) {
    assert!(!url.contains('#'), "{what}: fragment kept in {url:?}");
    let before_query = url.split('?').next().unwrap_or("");
    assert!(
        !before_query.contains(';'),
        "{what}: path parameter kept in {url:?}"
    );
    let lower = url.to_ascii_lowercase();
    let absolute = lower.starts_with("https://") || lower.starts_with("http://");
    assert!(
        absolute || url.starts_with('/'),
        "{what}: not a page URL {url:?}"
    );
    let path = url.split('?').next().unwrap_or("");
    assert!(
        !path.contains(';') && !path.to_ascii_lowercase().contains("%3b"),
        "{what}: path parameter kept in {url:?}"
    );
    if let Some((_, q)) = url.split_once('?') {
        for (k, _) in form_urlencoded::parse(q.as_bytes()) {
            assert!(
                allow.iter().any(|a| *a == k),
                "{what}: URL parameter {k:?} kept in {url:?}"
            );
        }
    }
    check_no_userinfo(url, what);
}

fn check_no_userinfo(url: &str, what: &str) {
    // Only an absolute URL has an authority: in a path (`/a.://@host/x`) '@' is path text.
    let lower = url.to_ascii_lowercase();
    let Some(start) = ["https://", "http://"]
        .iter()
        .find(|p| lower.starts_with(*p))
        .map(|p| p.len())
    else {
        return;
    };
    let rest = &url[start..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    assert!(
        !authority.contains('@'),
        "{what}: user information kept in {url:?}"
    );
}

/// A referrer after the same-site rule: the site's own origin and path (without path
/// parameters), nothing else.
fn check_referrer(r: &str, site_host: Option<&str>, what: &str) {
    assert!(
        !r.contains(['?', '#', ';']),
        "{what}: query, fragment or path parameter kept in {r:?}"
    );
    let lower = r.to_ascii_lowercase();
    assert!(
        lower.starts_with("https://") || lower.starts_with("http://"),
        "{what}: referrer {r:?} is not an http(s) URL"
    );
    let host = analytics::host_of(r)
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| panic!("{what}: {r:?} has no host"));
    let site = site_host
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| panic!("{what}: {r:?} kept without a site to compare to"));
    let same = host == site
        || host.strip_prefix("www.") == Some(site.as_str())
        || site.strip_prefix("www.") == Some(host.as_str());
    assert!(same, "{what}: referrer {r:?} is not on the site {site:?}");
    check_no_userinfo(r, what);
}

fn check_language(l: &str, what: &str) {
    assert!(
        (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase()),
        "{what}: language {l:?} not generalised"
    );
}

fn decode_key(raw: &str) -> String {
    let k = raw.split_once('=').map_or(raw, |(k, _)| k);
    form_urlencoded::parse(format!("{k}=").as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

/// Removes the `&`-separated pairs whose decoded key `dropped` selects (keeps the separators,
/// so a line of dropped pairs stays a non-blank line).
fn without_pairs(q: &str, dropped: impl Fn(&str) -> bool) -> String {
    let q = q.strip_prefix('?').unwrap_or(q);
    q.split('&')
        .map(|p| if dropped(&decode_key(p)) { "" } else { p })
        .collect::<Vec<_>>()
        .join("&")
}

const GA4_CUSTOM: &[&str] = &["ep.", "epn.", "up.", "upn."];

fn ga4_dropped(key: &str, settings: &Settings) -> bool {
    let kept = analytics::kept_index(ga4::RULES);
    !(kept.binary_search(&key).is_ok()
        || ["cid", "sid", "_p", "sct", "dl", "dr", "ul"].contains(&key)
        || (GA4_CUSTOM.iter().any(|c| key.starts_with(c))
            && settings.allow_event_params.iter().any(|a| a == key)))
}

/// The host of a set's scrubbed page URL (`dl`), if it has one.
fn ga4_page_host(set: &str) -> Option<String> {
    pairs(set)
        .into_iter()
        .find(|(k, _)| k == "dl")
        .and_then(|(_, v)| analytics::host_of(&v).map(str::to_owned))
}

/// A scrubbed query or body line: only `name=value` pairs of printable ASCII with nothing a
/// server could split elsewhere (no control character, space, `;` or `#`, one `=` a pair), each
/// name once and one the table keeps, values after their rule; a kept referrer is on the host
/// of every page in `pages` (those of the events it goes with).
fn check_ga4_params(line: &str, a: &Analytics, what: &str, pages: &[Option<String>]) {
    assert!(
        line.bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'#'),
        "{what}: {line:?} holds a byte a server could split on"
    );
    for pair in line.split('&').filter(|p| !p.is_empty()) {
        assert_eq!(pair.matches('=').count(), 1, "{what}: {pair:?} in {line:?}");
    }
    let params = pairs(line);
    for (i, (k, v)) in params.iter().enumerate() {
        assert!(
            !ga4_dropped(k, &a.settings),
            "{what}: {k:?} kept in {line:?}"
        );
        assert!(
            params[..i].iter().all(|(n, _)| n != k),
            "{what}: {k:?} sent twice in {line:?}"
        );
        match k.as_str() {
            "cid" => {
                let (n, start) = v
                    .split_once('.')
                    .unwrap_or_else(|| panic!("{what}: cid {v:?} not a pseudonym"));
                assert!(
                    n.parse::<u32>().is_ok()
                        && start == a.pseudonyms.period_start(a.now).to_string(),
                    "{what}: cid {v:?} not a pseudonym"
                );
            }
            "sid" | "_p" => assert!(
                v.parse::<u32>().is_ok(),
                "{what}: {k}={v:?} is not a derived id"
            ),
            "sct" => assert_eq!(v, "1", "{what}: a session count says more than 1"),
            "dl" => check_page_url(v, &a.settings.allow_url_params, what),
            "dr" => {
                for page in pages {
                    check_referrer(v, page.as_deref(), what);
                }
            }
            "ul" => check_language(v, what),
            _ => {}
        }
    }
}

/// GA4: every output parameter is one the table keeps (pseudonym, derived id, generalised URL,
/// language or allowlisted custom field), each once a set, safely encoded; a kept referrer is
/// on the page of every event it goes with (a line's own page, or the query's); removing the
/// dropped parameters from the input changes nothing.
pub fn check_ga4(query: &str, body: &[u8], a: &Analytics) -> Option<(String, Vec<u8>)> {
    let mut tally = Tally::default();
    let ctx = a.ctx("ga");
    let (q, b) = ga4::scrub(query, body, &ctx, a.now, &mut tally).ok()?;
    let what = format!(
        "ga4 query {query:?} body {:?}",
        String::from_utf8_lossy(body)
    );
    let body_text = std::str::from_utf8(body).expect("scrubbed a non-UTF-8 body");
    let body_out = String::from_utf8(b.clone()).expect("GA4 body not UTF-8");
    let lines_out: Vec<&str> = if body_out.is_empty() {
        Vec::new()
    } else {
        body_out.split("\r\n").collect()
    };
    let query_page = ga4_page_host(&q);
    let line_pages: Vec<Option<String>> = lines_out
        .iter()
        .map(|l| ga4_page_host(l).or_else(|| query_page.clone()))
        .collect();
    let mut query_pages = vec![query_page];
    query_pages.extend(line_pages.iter().cloned());
    check_ga4_params(&q, a, &what, &query_pages);
    for (line, page) in lines_out.iter().zip(line_pages) {
        assert!(!line.is_empty(), "{what}: blank line in {body_out:?}");
        check_ga4_params(line, a, &what, &[page]);
    }
    let dropped = |k: &str| ga4_dropped(k, &a.settings);
    let q2 = without_pairs(query, dropped);
    let b2: Vec<String> = body_text
        .split('\n')
        .map(|l| {
            let (l, cr) = match l.strip_suffix('\r') {
                Some(l) => (l, "\r"),
                None => (l, ""),
            };
            if l.trim().is_empty() {
                format!("{l}{cr}")
            } else {
                // A line left with nothing must stay non-blank, as the original was.
                let kept = without_pairs(l, dropped);
                let kept = if kept.trim().is_empty() {
                    "&".to_owned()
                } else {
                    kept
                };
                format!("{kept}{cr}")
            }
        })
        .collect();
    let again = ga4::scrub(&q2, b2.join("\n").as_bytes(), &ctx, a.now, &mut tally)
        .unwrap_or_else(|e| panic!("{what}: refused ({e}) once dropped parameters were removed"));
    assert_eq!(
        again,
        (q.clone(), b.clone()),
        "{what}: dropped parameters changed the output"
    );
    Some((q, b))
}

/// GA4 parameters with secrets that must never reach Google.
pub fn ga4_planted(secret: &str) -> (Vec<String>, Vec<Planted>) {
    let s = secret;
    let mut pairs = Vec::new();
    let mut planted = Vec::new();
    let mut plant = |pair: String, n: usize, field: &'static str| {
        pairs.push(pair);
        planted.push(Planted {
            secret: format!("{s}{n:02}"),
            field,
        });
    };
    plant(format!("uip={s}01"), 1, "uip");
    plant(format!("_uip={s}02"), 2, "_uip");
    plant(format!("uid={s}03"), 3, "uid");
    plant(format!("_fid={s}04"), 4, "_fid");
    plant(format!("ecid={s}05"), 5, "ecid");
    plant(format!("_gl=1*{s}06"), 6, "_gl");
    plant(format!("ep.customer_email={s}07"), 7, "ep.customer_email");
    plant(format!("cid={s}08.1732439000"), 8, "cid");
    plant(
        format!(
            "dl=https%3A%2F%2Fshop.example%2Forder%3Femail%3D{s}09%26utm_source%3Dnews%23{s}10"
        ),
        9,
        "dl query",
    );
    plant(
        format!("dr=https%3A%2F%2Fsearch.example%2Fsearch%3Fq%3D{s}11"),
        11,
        "dr (external)",
    );
    plant(format!("sr={s}12"), 12, "sr");
    plant(format!("uaa={s}13"), 13, "uaa");
    plant(format!("ul={s}14"), 14, "ul");
    plant(format!("up.email={s}15"), 15, "up.email");
    plant(
        format!("dr={s}17+https%3A%2F%2Fshop.example%2F"),
        17,
        "dr prefix",
    );
    plant(
        format!("dl=https%3A%2F%2F{s}16%3Apw%40shop.example%2Fp"),
        16,
        "dl userinfo",
    );
    plant(
        format!("dl=https%3A%2F%2Fshop.example%2Fcart%3Bjsessionid%3D{s}18%2Fpay"),
        18,
        "dl path parameter",
    );
    plant(
        format!("dr=https%3A%2F%2Fshop.example%2Fa%3Bsid%3D{s}19"),
        19,
        "dr path parameter",
    );
    // Values the browser keeps across hits: derived, counted out or dropped, never passed on.
    plant(format!("sid={s}20"), 20, "sid");
    plant(format!("_p={s}21"), 21, "_p");
    plant(format!("sct={s}22"), 22, "sct");
    plant(format!("_s={s}23&tfd={s}23"), 23, "_s, tfd");
    planted.push(Planted {
        secret: format!("{s}10"),
        field: "dl fragment",
    });
    (pairs, planted)
}

/// Interleaves planted pairs into a query string, at positions picked by `seed`.
pub fn interleave(query: &str, planted: &[String], seed: usize) -> String {
    let q = query.strip_prefix('?').unwrap_or(query);
    let mut parts: Vec<String> = if q.is_empty() {
        Vec::new()
    } else {
        q.split('&').map(str::to_owned).collect()
    };
    for (i, p) in planted.iter().enumerate() {
        let at = (seed.wrapping_mul(31).wrapping_add(i * 7)) % (parts.len() + 1);
        parts.insert(at, p.clone());
    }
    parts.join("&")
}

/// The name PHP files a decoded parameter name under, and whether it makes an array: the
/// oracles' own reading of `php_register_variable_ex` (a NUL ends the name, leading spaces are
/// skipped, `name[…]` is an array when a `]` follows the `[`, otherwise spaces, dots and `[`
/// are `_`); `None` when PHP ignores the parameter.
fn php_name(raw: &str) -> Option<(String, bool)> {
    let name = raw.split('\0').next().unwrap_or("").trim_start_matches(' ');
    match name.find('[') {
        _ if name.is_empty() => None,
        Some(0) => None,
        Some(i) if name[i..].contains(']') => Some((name[..i].replace([' ', '.'], "_"), true)),
        _ => Some((name.replace([' ', '.', '['], "_"), false)),
    }
}

/// Whether Matomo's table does anything with a parameter PHP files under `name` (keeps,
/// pseudonymises, generalises or reads it).
fn matomo_named(name: &str, settings: &Settings) -> bool {
    let kept = matomo::RULES
        .iter()
        .filter(|(_, o, _)| *o == analytics::Outcome::Kept)
        .flat_map(|(n, _, _)| n.split(", "))
        .any(|n| n == name);
    let dimension = name.len() > 9
        && name.starts_with("dimension")
        && name[9..].bytes().all(|b| b.is_ascii_digit());
    kept || [
        "_id", "cid", "pv_id", "url", "link", "download", "urlref", "_ref", "ua", "lang", "_cvar",
        "cvar",
    ]
    .contains(&name)
        || (dimension && settings.allow_event_params.iter().any(|a| a == name))
}

/// Whether a pair with this decoded key is one Matomo's table drops, whatever its value and
/// wherever it stands: PHP ignores it, or files it under a name no rule keeps or reads. (A
/// bracketed `url[]` is not: it makes PHP's `url` an array, which drops the page URL.)
fn matomo_dropped(key: &str, settings: &Settings) -> bool {
    php_name(key).is_none_or(|(name, _)| !matomo_named(&name, settings))
}

/// `q` read back into pairs.
fn pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.strip_prefix('?').unwrap_or(q).as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The Matomo parameters of one scrubbed set: each name once and as PHP will file it, only
/// names the table keeps, values after their rule; a kept referrer is on `page_host`, the host
/// of the page URL that left with it.
fn check_matomo_params(
    params: &[(String, String)],
    a: &Analytics,
    what: &str,
    page_host: Option<&str>,
) {
    for (i, (k, v)) in params.iter().enumerate() {
        assert_eq!(
            php_name(k),
            Some((k.clone(), false)),
            "{what}: PHP would not read {k:?} as itself"
        );
        assert!(
            params[..i].iter().all(|(n, _)| n != k),
            "{what}: {k:?} sent twice, in {params:?}"
        );
        assert!(
            !matomo_dropped(k, &a.settings),
            "{what}: {k:?} kept in {params:?}"
        );
        match k.as_str() {
            "_id" | "cid" => assert!(
                v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()),
                "{what}: {k}={v:?} is not a pseudonym"
            ),
            "pv_id" => assert!(
                v.len() == 6 && v.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{what}: pv_id={v:?} is not a derived id"
            ),
            "url" | "link" | "download" => check_page_url(v, &a.settings.allow_url_params, what),
            "urlref" | "_ref" => check_referrer(v, page_host, what),
            "ua" => check_generalised_ua(v),
            "lang" => check_language(v, what),
            "_cvar" | "cvar" => {
                let Ok(Value::Object(vars)) = serde_json::from_str::<Value>(v) else {
                    panic!("{what}: {k}={v:?} is not a custom variable object");
                };
                for (_, var) in vars {
                    let pair = var.as_array().map(Vec::as_slice).unwrap_or_default();
                    let [Value::String(name), value] = pair else {
                        panic!("{what}: custom variable {var} is not a name and a value");
                    };
                    assert!(
                        a.settings.allow_event_params.iter().any(|n| n == name),
                        "{what}: custom variable {name:?} kept"
                    );
                    check_scalar(value, what);
                }
            }
            _ => {}
        }
    }
}

/// The host of the page URL (`url`) among scrubbed parameters.
fn matomo_page_host<'a>(params: impl IntoIterator<Item = &'a (String, String)>) -> Option<&'a str> {
    params
        .into_iter()
        .find(|(k, _)| k == "url")
        .and_then(|(_, v)| analytics::host_of(v))
}

/// Matomo, query string: only table-kept parameters leave, each once, as PHP reads them;
/// dropped ones change nothing.
pub fn check_matomo_query(query: &str, a: &Analytics) -> Option<String> {
    let mut tally = Tally::default();
    let ctx = a.ctx("matomo");
    let out = matomo::scrub_query(query, &ctx, a.now, &mut tally).ok()?;
    let what = format!("matomo query {query:?}");
    let params = pairs(&out);
    check_matomo_params(&params, a, &what, matomo_page_host(&params));
    let again = matomo::scrub_query(
        &without_pairs(query, |k| matomo_dropped(k, &a.settings)),
        &ctx,
        a.now,
        &mut tally,
    )
    .unwrap_or_else(|e| panic!("{what}: refused ({e}) once dropped parameters were removed"));
    assert_eq!(again, out, "{what}: dropped parameters changed the output");
    Some(out)
}

/// Matomo, a whole request as the proxy scrubs it. A form body is read with the query as
/// Matomo reads `$_GET + $_POST`: no name leaves on both sides, a kept referrer on either side
/// is on the host of the page URL that leaves, and dropped parameters change nothing. Without
/// a form, the query and the body are scrubbed as they are on their own.
pub fn check_matomo_request(query: &str, body: &[u8], a: &Analytics) -> Option<(String, Vec<u8>)> {
    let mut tally = Tally::default();
    let ctx = a.ctx("matomo");
    let (q, b) = matomo::scrub(query, body, &ctx, a.now, &mut tally).ok()?;
    let text = std::str::from_utf8(body).expect("scrubbed a non-UTF-8 body");
    let what = format!("matomo request {query:?} body {text:?}");
    if body.is_empty() || text.trim_start().starts_with('{') {
        assert_eq!(check_matomo_query(query, a).as_ref(), Some(&q), "{what}");
        if !body.is_empty() {
            assert_eq!(check_matomo_body(body, a).as_ref(), Some(&b), "{what}");
        }
        return Some((q, b));
    }
    let (qp, bp) = (
        pairs(&q),
        pairs(std::str::from_utf8(&b).expect("form output")),
    );
    for (k, _) in &bp {
        assert!(
            qp.iter().all(|(n, _)| n != k),
            "{what}: {k:?} left in both the query and the body"
        );
    }
    let host = matomo_page_host(qp.iter().chain(&bp));
    check_matomo_params(&qp, a, &what, host);
    check_matomo_params(&bp, a, &what, host);
    let dropped = |k: &str| matomo_dropped(k, &a.settings);
    let again = matomo::scrub(
        &without_pairs(query, dropped),
        without_pairs(text.trim(), dropped).as_bytes(),
        &ctx,
        a.now,
        &mut tally,
    )
    .unwrap_or_else(|e| panic!("{what}: refused ({e}) once dropped parameters were removed"));
    assert_eq!(
        again,
        (q.clone(), b.clone()),
        "{what}: dropped parameters changed the output"
    );
    Some((q, b))
}

/// Matomo, POST body (bulk JSON or form): the same, request by request; a bulk body keeps only
/// its `requests`.
pub fn check_matomo_body(body: &[u8], a: &Analytics) -> Option<Vec<u8>> {
    let mut tally = Tally::default();
    let ctx = a.ctx("matomo");
    let out = matomo::scrub_body(body, &ctx, a.now, &mut tally).ok()?;
    let text = std::str::from_utf8(body).expect("scrubbed a non-UTF-8 body");
    let what = format!("matomo body {text:?}");
    if !text.trim_start().starts_with('{') {
        let out_text = String::from_utf8(out.clone()).expect("form output not UTF-8");
        assert_eq!(
            check_matomo_query(text.trim(), a).as_deref(),
            Some(out_text.as_str()),
            "{what}"
        );
        return Some(out);
    }
    let v: Value = serde_json::from_slice(&out).expect("bulk output is not JSON");
    let o = v.as_object().expect("bulk output is not an object");
    assert_eq!(
        o.len(),
        1,
        "{what}: bulk output keeps more than requests: {v}"
    );
    let input: Value = serde_json::from_str(text).expect("bulk input accepted but not JSON");
    let reqs_in = input["requests"].as_array().expect("input requests");
    let reqs_out = o["requests"].as_array().expect("output requests");
    assert_eq!(reqs_in.len(), reqs_out.len(), "{what}");
    for (i, o) in reqs_in.iter().zip(reqs_out) {
        let q = check_matomo_query(i.as_str().expect("request"), a).expect("request accepted");
        assert_eq!(o.as_str(), Some(format!("?{q}").as_str()), "{what}");
    }
    Some(out)
}

/// Matomo parameters with secrets that must never reach the Matomo server.
pub fn matomo_planted(secret: &str) -> (Vec<String>, Vec<Planted>) {
    let s = secret;
    let mut pairs = Vec::new();
    let mut planted = Vec::new();
    let mut plant = |pair: String, n: usize, field: &'static str| {
        pairs.push(pair);
        planted.push(Planted {
            secret: format!("{s}{n:02}"),
            field,
        });
    };
    plant(format!("cip={s}01"), 1, "cip");
    plant(format!("token_auth={s}02"), 2, "token_auth");
    plant(format!("uid={s}03"), 3, "uid");
    plant(format!("_id={s}04"), 4, "_id");
    plant(format!("cid={s}05"), 5, "cid");
    plant(
        format!("ua=Mozilla%2F5.0+(X11%3B+{s}06)+AppleWebKit%2F537.36+Chrome%2F131.0.1.2+Safari%2F537.36"),
        6,
        "ua",
    );
    plant(format!("lang={s}07"), 7, "lang");
    plant(
        format!("url=https%3A%2F%2Fshop.example%2Faccount%3Femail%3D{s}08%23{s}09"),
        8,
        "url query",
    );
    plant(
        format!("urlref=https%3A%2F%2Fsearch.example%2F%3Fq%3D{s}10"),
        10,
        "urlref",
    );
    plant(
        format!("_ref=https%3A%2F%2Fmail.example%2F%3Fu%3D{s}11"),
        11,
        "_ref",
    );
    plant(format!("cdt={s}12"), 12, "cdt");
    plant(format!("lat={s}13&long={s}13"), 13, "lat/long");
    plant(format!("country={s}14&city={s}14"), 14, "country/city");
    plant(format!("_idts={s}15&_viewts={s}15"), 15, "visit history");
    plant(format!("res={s}16&uadata={s}16"), 16, "res/uadata");
    plant(format!("dimension1={s}17"), 17, "dimension1");
    plant(
        format!("_cvar=%7B%221%22%3A%5B%22Email%22%2C%22{s}18%22%5D%2C%222%22%3A%5B%22Plan%22%2C%22pro%22%5D%7D"),
        18,
        "_cvar Email",
    );
    plant(format!("h={s}19&m={s}19&s={s}19"), 19, "h/m/s");
    plant(
        format!("_ref={s}21+https%3A%2F%2Fshop.example%2F"),
        21,
        "_ref prefix",
    );
    plant(
        format!("urlref=https%3A%2F%2F{s}20%40shop.example%2Fp"),
        20,
        "urlref userinfo",
    );
    plant(
        format!("link=https%3A%2F%2Fshop.example%2Fa%3Bjsessionid%3D{s}22%3Fq%3D{s}22"),
        22,
        "link path parameter and query",
    );
    plant(
        format!("download=https%3A%2F%2Fcdn.example%2Ff.pdf%3Bsid%3D{s}23"),
        23,
        "download path parameter",
    );
    plant(format!("pv_id={s}24"), 24, "pv_id");
    planted.push(Planted {
        secret: format!("{s}09"),
        field: "url fragment",
    });
    (pairs, planted)
}

const PLAUSIBLE_KEPT: &[&str] = &["n", "d", "h", "i", "v"];
const PLAUSIBLE_FIELDS: &[&str] = &["$", "u", "r", "p", "props", "m", "meta"];

/// A kept JSON value is a string, number, boolean or null: never an object or array, which
/// could carry any number of fields under one kept name.
fn check_scalar(v: &Value, what: &str) {
    assert!(
        !v.is_object() && !v.is_array(),
        "{what}: nested value {v} kept"
    );
}

/// A field the table keeps goes on as the input had it, and only if it is a scalar.
fn check_kept_scalar(k: &str, v: &Value, input: &Map<String, Value>, what: &str) {
    check_scalar(v, what);
    assert_eq!(Some(v), input.get(k), "{what}");
}

fn check_fields(v: &Value, allow: &[String], what: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: custom fields not an object: {v}"));
    for (k, v) in o {
        assert!(allow.contains(k), "{what}: custom field {k:?} kept");
        check_scalar(v, what);
    }
}

/// Plausible: only the table's fields leave, URLs generalised, custom fields allowlisted;
/// removing dropped fields changes nothing.
pub fn check_plausible(body: &[u8], a: &Analytics) -> Option<Vec<u8>> {
    let mut tally = Tally::default();
    let ctx = a.ctx("plausible");
    let out = plausible::scrub(body, &ctx, &mut tally).ok()?;
    let what = format!("plausible body {:?}", String::from_utf8_lossy(body));
    let input: Map<String, Value> = serde_json::from_slice(body).expect("accepted non-object");
    let v: Value = serde_json::from_slice(&out).expect("output is not JSON");
    let o = v.as_object().expect("output is not an object");
    let site = input
        .get("d")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            input
                .get("u")
                .and_then(Value::as_str)
                .and_then(analytics::host_of)
                .map(str::to_owned)
        });
    for (k, val) in o {
        match k.as_str() {
            k if PLAUSIBLE_KEPT.contains(&k) => check_kept_scalar(k, val, &input, &what),
            "$" => {
                let revenue = input.get("$").and_then(Value::as_object);
                let members = val.as_object().expect("revenue is an object");
                for (m, v) in members {
                    assert!(
                        ["amount", "currency"].contains(&m.as_str()),
                        "{what}: revenue member {m:?} kept"
                    );
                    check_scalar(v, &what);
                    assert_eq!(Some(v), revenue.and_then(|r| r.get(m)), "{what}");
                }
            }
            "u" => check_page_url(
                val.as_str().expect("u"),
                &a.settings.allow_url_params,
                &what,
            ),
            "r" => check_referrer(val.as_str().expect("r"), site.as_deref(), &what),
            "p" | "props" | "m" | "meta" => {
                check_fields(val, &a.settings.allow_event_params, &what)
            }
            other => panic!("{what}: field {other:?} kept"),
        }
    }
    let mut fewer = input.clone();
    fewer.retain(|k, _| {
        PLAUSIBLE_KEPT.contains(&k.as_str()) || PLAUSIBLE_FIELDS.contains(&k.as_str())
    });
    let again = plausible::scrub(
        Value::Object(fewer).to_string().as_bytes(),
        &ctx,
        &mut tally,
    )
    .unwrap_or_else(|e| panic!("{what}: refused ({e}) once dropped fields were removed"));
    assert_eq!(again, out, "{what}: dropped fields changed the output");
    Some(out)
}

const UMAMI_KEPT: &[&str] = &["website", "hostname", "title", "name", "tag"];
const UMAMI_FIELDS: &[&str] = &["url", "referrer", "language", "data"];

/// Umami: `{"type":"event","payload":{…}}` with only the table's fields; other types refused.
pub fn check_umami(body: &[u8], a: &Analytics) -> Option<Vec<u8>> {
    let mut tally = Tally::default();
    let ctx = a.ctx("umami");
    let result = umami::scrub(body, &ctx, &mut tally);
    let input: Option<Value> = serde_json::from_slice(body).ok();
    let is_event = input
        .as_ref()
        .and_then(|i| i.get("type"))
        .is_some_and(|t| t == "event");
    let out = match result {
        Ok(out) => out,
        Err(_) => return None,
    };
    let what = format!("umami body {:?}", String::from_utf8_lossy(body));
    assert!(is_event, "{what}: a non-event was forwarded");
    let input = input.expect("accepted non-JSON");
    let payload_in = input["payload"].as_object().expect("payload");
    let v: Value = serde_json::from_slice(&out).expect("output is not JSON");
    let o = v.as_object().expect("output is not an object");
    assert_eq!(o.len(), 2, "{what}: {v}");
    assert_eq!(
        o.get("type"),
        Some(&Value::String("event".into())),
        "{what}"
    );
    let payload = o["payload"].as_object().expect("output payload");
    let site = payload_in.get("hostname").and_then(Value::as_str);
    for (k, val) in payload {
        match k.as_str() {
            k if UMAMI_KEPT.contains(&k) => check_kept_scalar(k, val, payload_in, &what),
            "url" => check_page_url(
                val.as_str().expect("url"),
                &a.settings.allow_url_params,
                &what,
            ),
            "referrer" => {
                let r = val.as_str().expect("referrer");
                if !r.is_empty() {
                    check_referrer(r, site, &what);
                }
            }
            "language" => check_language(val.as_str().expect("language"), &what),
            "data" => check_fields(val, &a.settings.allow_event_params, &what),
            other => panic!("{what}: field {other:?} kept"),
        }
    }
    let mut fewer = payload_in.clone();
    fewer.retain(|k, _| UMAMI_KEPT.contains(&k.as_str()) || UMAMI_FIELDS.contains(&k.as_str()));
    let body2 = serde_json::json!({"type": "event", "payload": fewer}).to_string();
    let again = umami::scrub(body2.as_bytes(), &ctx, &mut tally)
        .unwrap_or_else(|e| panic!("{what}: refused ({e}) once dropped fields were removed"));
    assert_eq!(again, out, "{what}: dropped fields changed the output");
    Some(out)
}

/// Umami's answer never hands the visitor a session identifier.
pub fn check_umami_answer(body: &[u8]) -> Vec<u8> {
    let out = umami::scrub_answer(body);
    let v: Value = serde_json::from_slice(&out).expect("answer output is not JSON");
    let o = v.as_object().expect("answer output is not an object");
    for k in umami::ANSWER_IDENTIFIERS {
        assert!(!o.contains_key(*k), "{k} handed to the visitor: {v}");
    }
    // Only the tracker's flags, each a boolean: nothing else the upstream wrote passes.
    for (k, val) in o {
        assert!(
            umami::ANSWER_KEPT.contains(&k.as_str()) && val.is_boolean(),
            "{k} handed to the visitor: {v}"
        );
    }
    out
}

/// Sets `key` to `value` (which carries `secret`) unless the input already has that field,
/// and records the plant.
fn plant_json(
    into: &mut Map<String, Value>,
    planted: &mut Vec<Planted>,
    (key, value): (&str, Value),
    secret: &str,
    field: &'static str,
) {
    if !into.contains_key(key) {
        into.insert(key.to_owned(), value);
        planted.push(Planted {
            secret: secret.to_owned(),
            field,
        });
    }
}

/// Plants secrets in a JSON event (Plausible) where they must be dropped; keeps the input's own
/// fields where present.
pub fn plausible_planted(event: &mut Map<String, Value>, s: &str) -> Vec<Planted> {
    let mut planted = Vec::new();
    let mut plant = |k: &str, v: Value, n: usize, field: &'static str| {
        plant_json(event, &mut planted, (k, v), &format!("{s}{n:02}"), field)
    };
    plant("email", Value::String(format!("{s}01")), 1, "email");
    plant(
        "p",
        serde_json::json!({"author": "Jo", "customer": format!("{s}02")}),
        2,
        "p.customer",
    );
    plant(
        "props",
        Value::String(format!("{{\"token\":\"{s}03\"}}")),
        3,
        "props (string)",
    );
    plant(
        "m",
        serde_json::json!({"user": format!("{s}04")}),
        4,
        "m.user",
    );
    plant(
        "u",
        Value::String(format!(
            "https://blog.example/post;jsessionid={s}05?email={s}05&utm_source=x#{s}06"
        )),
        5,
        "u query",
    );
    plant(
        "r",
        Value::String(format!("https://social.example/?u={s}07")),
        7,
        "r (external)",
    );
    plant("ip", Value::String(format!("{s}08")), 8, "ip");
    plant(
        "meta",
        serde_json::json!({"id": format!("{s}09"), "plan": {"email": format!("{s}09")}}),
        9,
        "meta.id, meta.plan (nested under a kept key)",
    );
    plant(
        "$",
        serde_json::json!({"amount": "9.5", "currency": "EUR", "email": format!("{s}10")}),
        10,
        "$.email",
    );
    planted
}

/// Plants secrets in an Umami event payload (and around it) where they must be dropped.
pub fn umami_planted(body: &mut Map<String, Value>, s: &str) -> Vec<Planted> {
    let mut planted = Vec::new();
    if !body.contains_key("cache") {
        body.insert("cache".into(), Value::String(format!("{s}01")));
        planted.push(Planted {
            secret: format!("{s}01"),
            field: "cache (top level)",
        });
    }
    let payload = body
        .entry("payload")
        .or_insert_with(|| Value::Object(Map::new()));
    if !payload.is_object() {
        *payload = Value::Object(Map::new());
    }
    let payload = payload.as_object_mut().expect("object");
    let mut plant = |k: &str, v: Value, n: usize, field: &'static str| {
        plant_json(payload, &mut planted, (k, v), &format!("{s}{n:02}"), field)
    };
    plant("id", Value::String(format!("{s}02")), 2, "id");
    plant("screen", Value::String(format!("{s}03")), 3, "screen");
    plant(
        "data",
        serde_json::json!({"plan": "pro", "email": format!("{s}04"), "author": [format!("{s}04")]}),
        4,
        "data.email, data.author (nested under a kept key)",
    );
    plant(
        "title",
        serde_json::json!({"text": format!("{s}10")}),
        10,
        "title (nested)",
    );
    plant(
        "url",
        Value::String(format!("/reset;jsessionid={s}05?token={s}05#{s}06")),
        5,
        "url query",
    );
    plant(
        "referrer",
        Value::String(format!("https://mail.example/?u={s}07")),
        7,
        "referrer (external)",
    );
    plant("language", Value::String(format!("{s}08")), 8, "language");
    plant("ip", Value::String(format!("{s}09")), 9, "ip");
    planted
}

// ---------------------------------------------------------------------------------------------
// CSS

/// Where a browser fetches a URL found in CSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlContext {
    /// `url(x)`, unquoted.
    UrlToken,
    /// `url("x")`.
    UrlString,
    /// `@import "x"`.
    Import,
    /// A string in `image-set()` or `src()`.
    ImageSet,
}

/// A URL a browser would fetch, found by [`css_urls`].
#[derive(Clone, Debug)]
pub struct CssUrl {
    pub context: UrlContext,
    /// After CSS escapes are resolved.
    pub value: String,
    /// The token as written.
    pub raw: String,
    /// Whether the `url` function name was written with an escape (`u\rl(`).
    pub escaped_name: bool,
}

/// The URLs a browser would fetch from this stylesheet, read by a CSS Syntax Level 3 tokenizer
/// (comments, strings, escapes, identifiers, numbers, functions, `url(` tokens).
pub fn css_urls(css: &str) -> Vec<CssUrl> {
    css_scan(css).0
}

fn css_scan(css: &str) -> (Vec<CssUrl>, bool) {
    let pre: String = {
        let s = css.replace("\r\n", "\n").replace(['\r', '\x0c'], "\n");
        s.replace('\0', "\u{FFFD}")
    };
    let c: Vec<char> = pre.chars().collect();
    let mut t = Tokenizer {
        c: &c,
        i: 0,
        escaped_url_function: false,
    };
    let mut out = Vec::new();
    // Open blocks: the character that closes each, and whether strings inside are fetched
    // (image-set, src). A closer that does not match the innermost block is an ordinary token.
    let mut stack: Vec<(char, bool)> = Vec::new();
    let mut after_import = false;
    // After `url(` + a quote: Some(whether the name was written with an escape).
    let mut url_fn_string: Option<bool> = None;
    while let Some(tok) = t.next() {
        let in_image_set = stack.last().is_some_and(|b| b.1);
        match tok {
            Tok::Whitespace | Tok::Comment => continue,
            Tok::Str { value, raw } => {
                let escaped_name = url_fn_string.take();
                let context = if escaped_name.is_some() {
                    Some(UrlContext::UrlString)
                } else if after_import {
                    Some(UrlContext::Import)
                } else if in_image_set {
                    Some(UrlContext::ImageSet)
                } else {
                    None
                };
                if let Some(context) = context {
                    out.push(CssUrl {
                        context,
                        value,
                        raw,
                        escaped_name: escaped_name.unwrap_or(false),
                    });
                }
            }
            Tok::Url {
                value,
                raw,
                escaped_name,
            } => out.push(CssUrl {
                context: UrlContext::UrlToken,
                value,
                raw,
                escaped_name,
            }),
            Tok::Function { name, escaped } => {
                let n = name.to_ascii_lowercase();
                url_fn_string = (n == "url").then_some(escaped);
                stack.push((
                    ')',
                    matches!(n.as_str(), "image-set" | "-webkit-image-set" | "src"),
                ));
                after_import = false;
                continue;
            }
            Tok::Open(closer) => {
                stack.push((closer, in_image_set));
            }
            Tok::Close(c) => {
                if stack.last().is_some_and(|b| b.0 == c) {
                    stack.pop();
                }
            }
            Tok::AtKeyword(name) => {
                after_import = name.eq_ignore_ascii_case("import");
                url_fn_string = None;
                continue;
            }
            Tok::Other | Tok::BadString | Tok::BadUrl => {}
        }
        after_import = false;
        url_fn_string = None;
    }
    (out, t.escaped_url_function)
}

enum Tok {
    Whitespace,
    Comment,
    Str {
        value: String,
        raw: String,
    },
    BadString,
    Url {
        value: String,
        raw: String,
        escaped_name: bool,
    },
    BadUrl,
    Function {
        name: String,
        escaped: bool,
    },
    AtKeyword(String),
    Open(char),
    Close(char),
    Other,
}

struct Tokenizer<'a> {
    c: &'a [char],
    i: usize,
    /// Set once a `url(` spelled with an escape is read (valid url token or not).
    escaped_url_function: bool,
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n')
}
fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}
fn is_name(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit() || c == '-'
}
fn non_printable(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b' | '\x0e'..='\x1f' | '\x7f')
}

impl Tokenizer<'_> {
    fn at(&self, k: usize) -> Option<char> {
        self.c.get(self.i + k).copied()
    }
    fn valid_escape(&self, k: usize) -> bool {
        // A backslash at the end of input is a valid escape too (it stands for U+FFFD).
        self.at(k) == Some('\\') && self.at(k + 1) != Some('\n')
    }
    fn starts_ident(&self, k: usize) -> bool {
        match self.at(k) {
            Some('-') => {
                self.at(k + 1).is_some_and(|c| is_name_start(c) || c == '-')
                    || self.valid_escape(k + 1)
            }
            Some('\\') => self.valid_escape(k),
            Some(c) => is_name_start(c),
            None => false,
        }
    }
    fn starts_number(&self) -> bool {
        let digit = |k: usize| self.at(k).is_some_and(|c| c.is_ascii_digit());
        match self.at(0) {
            Some('+' | '-') => digit(1) || (self.at(1) == Some('.') && digit(2)),
            Some('.') => digit(1),
            Some(c) => c.is_ascii_digit(),
            None => false,
        }
    }
    /// After a backslash (already consumed).
    fn escaped(&mut self) -> char {
        let Some(c) = self.at(0) else {
            return '\u{FFFD}';
        };
        if c.is_ascii_hexdigit() {
            let mut hex = String::new();
            while hex.len() < 6 && self.at(0).is_some_and(|c| c.is_ascii_hexdigit()) {
                hex.push(self.at(0).unwrap_or('0'));
                self.i += 1;
            }
            if self.at(0).is_some_and(is_ws) {
                self.i += 1;
            }
            let n = u32::from_str_radix(&hex, 16).unwrap_or(0);
            return match char::from_u32(n) {
                Some(ch) if n != 0 => ch,
                _ => '\u{FFFD}',
            };
        }
        self.i += 1;
        c
    }
    fn ident(&mut self) -> (String, bool) {
        let mut s = String::new();
        let mut escaped = false;
        loop {
            match self.at(0) {
                Some(c) if is_name(c) => {
                    s.push(c);
                    self.i += 1;
                }
                Some('\\') if self.valid_escape(0) => {
                    self.i += 1;
                    s.push(self.escaped());
                    escaped = true;
                }
                _ => return (s, escaped),
            }
        }
    }
    fn string(&mut self, quote: char) -> Tok {
        let start = self.i - 1;
        let mut value = String::new();
        loop {
            match self.at(0) {
                None => break,
                Some(c) if c == quote => {
                    self.i += 1;
                    break;
                }
                Some('\n') => return Tok::BadString,
                Some('\\') => {
                    self.i += 1;
                    match self.at(0) {
                        None => {}
                        Some('\n') => self.i += 1,
                        Some(_) => value.push(self.escaped()),
                    }
                }
                Some(c) => {
                    value.push(c);
                    self.i += 1;
                }
            }
        }
        Tok::Str {
            value,
            raw: self.c[start..self.i].iter().collect(),
        }
    }
    fn url(&mut self, start: usize, escaped_name: bool) -> Tok {
        while self.at(0).is_some_and(is_ws) {
            self.i += 1;
        }
        let mut value = String::new();
        loop {
            match self.at(0) {
                None => break,
                Some(')') => {
                    self.i += 1;
                    break;
                }
                Some(c) if is_ws(c) => {
                    while self.at(0).is_some_and(is_ws) {
                        self.i += 1;
                    }
                    match self.at(0) {
                        None => break,
                        Some(')') => {
                            self.i += 1;
                            break;
                        }
                        _ => return self.bad_url(),
                    }
                }
                Some('"' | '\'' | '(') => return self.bad_url(),
                Some(c) if non_printable(c) => return self.bad_url(),
                Some('\\') => {
                    if self.valid_escape(0) {
                        self.i += 1;
                        value.push(self.escaped());
                    } else {
                        return self.bad_url();
                    }
                }
                Some(c) => {
                    value.push(c);
                    self.i += 1;
                }
            }
        }
        Tok::Url {
            value,
            raw: self.c[start..self.i].iter().collect(),
            escaped_name,
        }
    }
    fn bad_url(&mut self) -> Tok {
        loop {
            match self.at(0) {
                None => return Tok::BadUrl,
                Some(')') => {
                    self.i += 1;
                    return Tok::BadUrl;
                }
                Some('\\') if self.valid_escape(0) => {
                    self.i += 1;
                    self.escaped();
                }
                Some(_) => self.i += 1,
            }
        }
    }
    fn next(&mut self) -> Option<Tok> {
        let c = self.at(0)?;
        if c == '/' && self.at(1) == Some('*') {
            self.i += 2;
            while self.i < self.c.len() && !(self.at(0) == Some('*') && self.at(1) == Some('/')) {
                self.i += 1;
            }
            self.i = (self.i + 2).min(self.c.len());
            return Some(Tok::Comment);
        }
        if is_ws(c) {
            while self.at(0).is_some_and(is_ws) {
                self.i += 1;
            }
            return Some(Tok::Whitespace);
        }
        if c == '"' || c == '\'' {
            self.i += 1;
            return Some(self.string(c));
        }
        if self.starts_number() {
            let digit = |t: &Self, k: usize| t.at(k).is_some_and(|c| c.is_ascii_digit());
            if matches!(c, '+' | '-') {
                self.i += 1;
            }
            while digit(self, 0) {
                self.i += 1;
            }
            if self.at(0) == Some('.') && digit(self, 1) {
                self.i += 1;
                while digit(self, 0) {
                    self.i += 1;
                }
            }
            if matches!(self.at(0), Some('e' | 'E'))
                && (self.at(1).is_some_and(|c| c.is_ascii_digit())
                    || (matches!(self.at(1), Some('+' | '-'))
                        && self.at(2).is_some_and(|c| c.is_ascii_digit())))
            {
                self.i += 2;
                while self.at(0).is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
            if self.starts_ident(0) {
                self.ident(); // the unit of a dimension, never a function
            }
            return Some(Tok::Other);
        }
        // <!-- and --> (CDO, CDC) are tokens of their own.
        if c == '<' && self.at(1) == Some('!') && self.at(2) == Some('-') && self.at(3) == Some('-')
        {
            self.i += 4;
            return Some(Tok::Other);
        }
        if c == '-' && self.at(1) == Some('-') && self.at(2) == Some('>') {
            self.i += 3;
            return Some(Tok::Other);
        }
        if c == '#' && (self.at(1).is_some_and(is_name) || self.valid_escape(1)) {
            self.i += 1;
            self.ident();
            return Some(Tok::Other);
        }
        if c == '@' && self.starts_ident(1) {
            self.i += 1;
            return Some(Tok::AtKeyword(self.ident().0));
        }
        if self.starts_ident(0) {
            let start = self.i;
            let (name, escaped_name) = self.ident();
            if self.at(0) == Some('(') {
                self.i += 1;
                if name.eq_ignore_ascii_case("url") {
                    self.escaped_url_function |= escaped_name;
                    let mut k = 0;
                    while self.at(k).is_some_and(is_ws) {
                        k += 1;
                    }
                    if !matches!(self.at(k), Some('"' | '\'')) {
                        return Some(self.url(start, escaped_name));
                    }
                }
                return Some(Tok::Function {
                    name,
                    escaped: escaped_name,
                });
            }
            return Some(Tok::Other);
        }
        self.i += 1;
        Some(match c {
            '(' => Tok::Open(')'),
            '[' => Tok::Open(']'),
            '{' => Tok::Open('}'),
            ')' | ']' | '}' => Tok::Close(c),
            _ => Tok::Other,
        })
    }
}

/// What the WHATWG URL parser does first: trims C0 controls and spaces, deletes tabs and
/// newlines anywhere.
pub fn whatwg_clean(url: &str) -> String {
    url.trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Whether a URL read from CSS stays on the site (or makes no request): relative, `data:`, or
/// the `about:invalid` tamis puts in place of a blocked URL.
pub fn css_url_is_first_party(value: &str) -> bool {
    let u = whatwg_clean(value);
    let lower = u.to_ascii_lowercase();
    if lower.is_empty() || lower.starts_with("data:") || lower == css::BLOCKED {
        return true;
    }
    let slashes = |s: &str| s.trim_start_matches(['/', '\\']).len();
    let authority_and_rest = if lower.len() - slashes(&lower) >= 2 {
        // Scheme-relative (`//host`, `\\host`, `///host`): the slashes are skipped.
        lower.trim_start_matches(['/', '\\'])
    } else {
        // A scheme: a letter, then letters, digits, + - . up to a ':'. Network schemes reach a
        // host (on an http:// page even `https:host/x` does); other schemes (javascript:,
        // about:, a word before a colon in text) make no request.
        let b = lower.as_bytes();
        let end = b
            .iter()
            .position(|&c| !(c.is_ascii_alphanumeric() || b"+-.".contains(&c)));
        match end {
            Some(e) if b[e] == b':' && b[0].is_ascii_alphabetic() => {
                if !["http", "https", "ftp", "ws", "wss", "file"].contains(&&lower[..e]) {
                    return true;
                }
                lower[e + 1..].trim_start_matches(['/', '\\'])
            }
            _ => return true, // a relative path
        }
    };
    // A request leaves only if what follows names a host.
    let authority = authority_and_rest
        .split(['/', '\\', '?', '#'])
        .next()
        .unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    host.is_empty() || host.contains(|c: char| c <= ' ' || "<>^|".contains(c))
}

/// A stylesheet as `route` serves it when its upstream answers 200 `text/css` with `css`; `None`
/// when refused (502).
pub fn rewrite_css_route(route: &Route, css: &str) -> Option<String> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    let out = route.rewrite(http::StatusCode::OK, &mut headers, css.as_bytes(), 1 << 24)?;
    Some(String::from_utf8(out.to_vec()).expect("rewritten CSS is UTF-8"))
}

/// The rewritten stylesheet names no third-party URL a browser would fetch, and no `://`.
pub fn check_css(input: &str, output: &str) {
    assert!(
        !output.contains("://"),
        "'://' left in rewritten CSS\ninput {input:?}\noutput {output:?}"
    );
    for u in css_urls(output) {
        assert!(
            css_url_is_first_party(&u.value),
            "third-party URL {:?} ({:?}, written {:?}) left in rewritten CSS\ninput {input:?}\noutput {output:?}",
            u.value,
            u.context,
            u.raw,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// `Config::parse` never panics; what it accepts is valid (every rule the docs state holds) and
/// can be run: the router builds, every route answers, the report and page render.
pub fn check_config(text: &str) {
    let Ok(c) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let what = || format!("accepted config:\n{text}");
    // Every [[route]] written is a route that runs: none is dropped silently.
    if let Ok(table) = toml::from_str::<toml::Table>(text) {
        let written = table
            .get("route")
            .and_then(|r| r.as_array())
            .map_or(&[][..], Vec::as_slice);
        assert_eq!(
            c.routes.len(),
            written.len(),
            "[[route]] written and accepted: {}",
            what()
        );
    }
    assert!(
        c.server.listen.is_some() || c.server.tls.is_some(),
        "no listener: {}",
        what()
    );
    assert!(c.cache.max_object_bytes <= c.cache.max_bytes, "{}", what());
    let mut prefixes: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for r in &c.routes {
        let plain_prefix = |p: &str| {
            p.starts_with('/')
                && p.ends_with('/')
                && !p.contains("//")
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
                && !p.split('/').any(|s| s == "." || s == "..")
        };
        assert!(plain_prefix(&r.prefix), "prefix {:?}: {}", r.prefix, what());
        assert!(
            !r.name.is_empty()
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "name {:?}: {}",
            r.name,
            what()
        );
        assert!(
            !names.contains(&r.name.as_str()),
            "duplicate name: {}",
            what()
        );
        names.push(&r.name);
        assert!(
            !prefixes.contains(&r.prefix.as_str()),
            "duplicate prefix: {}",
            what()
        );
        prefixes.push(&r.prefix);
        let base = &r.upstream;
        assert!(
            base.scheme == http::uri::Scheme::HTTP || base.scheme == http::uri::Scheme::HTTPS,
            "{}",
            what()
        );
        assert!(
            !base.authority.as_str().contains('@') && !base.authority.host().is_empty(),
            "{}",
            what()
        );
        assert!(
            base.path.starts_with('/')
                && base.path.ends_with('/')
                && !base.path.split('/').any(|s| s == "." || s == ".."),
            "upstream path {:?}: {}",
            base.path,
            what()
        );
        if r.jurisdiction != tamis::policy::Jurisdiction::Eu {
            assert!(
                r.forward_headers.is_empty() && !r.pass_through,
                "non-EU route forwards visitor headers: {}",
                what()
            );
        }
        for h in &r.forward_headers {
            let why = tamis::policy::removal_reason(h.as_str());
            assert!(
                !matches!(
                    why,
                    Some(
                        tamis::policy::Removed::Credential
                            | tamis::policy::Removed::ClientAddress
                            | tamis::policy::Removed::Validator
                            | tamis::policy::Removed::HopByHop
                    )
                ),
                "{h} may never be forwarded: {}",
                what()
            );
        }
        if let Some(f) = &r.font_files {
            assert!(plain_prefix(&f.prefix), "files prefix: {}", what());
            assert!(
                !prefixes.contains(&f.prefix.as_str()),
                "duplicate prefix: {}",
                what()
            );
            prefixes.push(&f.prefix);
        }
        if let Some(t) = &r.tiles {
            assert!(t.max_zoom <= tiles::ZOOM_LIMIT, "{}", what());
            // The route's base (connection pool, reports) is where its tiles go.
            assert_eq!(
                base.to_string(),
                format!("{}://{}/", t.template.scheme(), t.template.sample_host()),
                "{}",
                what()
            );
        }
        assert_eq!(
            r.tiles.is_some(),
            r.kind == tamis::config::RouteKind::Tiles,
            "{}",
            what()
        );
        if let Some(a) = &r.analytics {
            assert!(!r.cache.enabled, "analytics route caches: {}", what());
            assert!((1..=16 * 1024 * 1024).contains(&a.max_body), "{}", what());
            assert!((8..=32).contains(&a.pseudonym_bits), "{}", what());
            assert!(a.min_visitors >= 2, "{}", what());
            if a.location != tamis::analytics::geo::Precision::None {
                assert_eq!(
                    r.jurisdiction,
                    tamis::policy::Jurisdiction::Eu,
                    "{}",
                    what()
                );
                assert!(
                    matches!(
                        a.protocol,
                        tamis::analytics::Protocol::Matomo | tamis::analytics::Protocol::Umami
                    ),
                    "{}",
                    what()
                );
            }
            // Any address, even truncated or synthetic, goes only to an EU upstream.
            if a.client_ip != tamis::analytics::visitor::ClientAddress::None {
                assert_eq!(
                    r.jurisdiction,
                    tamis::policy::Jurisdiction::Eu,
                    "{}",
                    what()
                );
            }
        }
        assert_eq!(
            r.analytics.is_some(),
            r.kind.analytics().is_some(),
            "{}",
            what()
        );
        if let (Some(min), Some(max)) = (r.cache.min_ttl, r.cache.max_ttl) {
            assert!(min <= max, "{}", what());
        }
        // The router makes a semaphore of this many permits (tokio panics above 2^61 - 1).
        assert!(
            r.max_upstream_connections
                .is_none_or(|n| (1..=tamis::config::MAX_UPSTREAM_CONNECTIONS).contains(&n)),
            "max_upstream_connections: {}",
            what()
        );
    }
    assert!(!c.routes.is_empty(), "no routes: {}", what());
    let router = Router::new(&c);
    for route in router.routes() {
        let _ = route.scrub(&HeaderMap::new());
        for rest in ["", "a", "0/0/0.png", "g/collect"] {
            check_route_uri(route, rest, Some("a=1"));
        }
    }
    let _ = tamis::transparency::check_report(&c);
    let _ = tamis::transparency::page::Page::new(&c, &router);
}

// ---------------------------------------------------------------------------------------------
// Link

/// One entry of a `Link` value as a browser reads it: the target and the parameters (values
/// unquoted, backslash escapes resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEntry {
    pub target: String,
    pub params: Vec<(String, String)>,
}

/// The entries of a `Link` value as a browser reads them. `angle_aware`: a comma inside `<…>`
/// does not split (RFC 8288, Firefox); otherwise only quotes protect a comma (Chromium's
/// value iterator). An entry that does not parse is skipped, as browsers skip it.
pub fn link_entries(value: &str, angle_aware: bool) -> Vec<LinkEntry> {
    let mut pieces = Vec::new();
    let (mut start, mut quote, mut angle, mut escaped) = (0, false, false, false);
    for (i, c) in value.char_indices() {
        if quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' if !angle => quote = true,
            '<' if angle_aware => angle = true,
            '>' if angle_aware => angle = false,
            ',' if !angle => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    pieces
        .into_iter()
        .filter_map(|p| {
            let p = p.trim_matches([' ', '\t']);
            let rest = p.strip_prefix('<')?;
            let end = rest.find('>')?;
            let target = rest[..end].to_owned();
            let mut params = Vec::new();
            for param in split_params(&rest[end + 1..]) {
                let param = param.trim_matches([' ', '\t']);
                if param.is_empty() {
                    continue;
                }
                let (name, value) = param.split_once('=').unwrap_or((param, ""));
                let value = value.trim_matches([' ', '\t']);
                let value = match value.strip_prefix('"') {
                    Some(q) => {
                        let mut out = String::new();
                        let mut chars = q.chars();
                        while let Some(c) = chars.next() {
                            match c {
                                '"' => break,
                                '\\' => out.extend(chars.next()),
                                c => out.push(c),
                            }
                        }
                        out
                    }
                    None => value.to_owned(),
                };
                params.push((name.trim().to_ascii_lowercase(), value));
            }
            Some(LinkEntry { target, params })
        })
        .collect()
}

/// Splits parameters on `;` outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match (quote, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quote = !quote,
            (false, _, ';') => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Every URL a browser may follow from these entries: each target, and every space- or
/// comma-separated word of every parameter value (an `anchor`, the `imagesrcset` candidates).
pub fn link_urls(entries: &[LinkEntry]) -> Vec<String> {
    let mut out = Vec::new();
    for e in entries {
        out.push(e.target.clone());
        for (_, v) in &e.params {
            out.extend(
                v.split(|c: char| c.is_ascii_whitespace() || c == ',')
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// What tamis passed on of `input` (the `Link` values after scrubbing) is first-party however
/// a browser splits it, reads the same whichever way it is split, is in the one plain form
/// (scrubbing it again changes nothing), and names no target the input did not.
pub fn check_link(input: &[&str], output: &[String]) {
    let targets_in: Vec<String> = input
        .iter()
        .flat_map(|v| {
            link_entries(v, true)
                .into_iter()
                .chain(link_entries(v, false))
        })
        .map(|e| e.target)
        .collect();
    for value in output {
        let strict = link_entries(value, true);
        assert_eq!(
            strict,
            link_entries(value, false),
            "Link {value:?} reads differently split on every comma\ninput {input:?}"
        );
        assert!(!strict.is_empty(), "empty Link value {value:?} passed on");
        for url in link_urls(&strict) {
            assert!(
                css_url_is_first_party(&url) && !url.contains(['\t', '\\']),
                "Link {value:?} sends the browser to {url:?}\ninput {input:?}"
            );
        }
        for e in &strict {
            assert!(
                targets_in.contains(&e.target),
                "Link target {:?} was never in the input {input:?}",
                e.target
            );
        }
        assert_eq!(
            tamis::policy::link::filter(value).as_deref(),
            Some(value.as_str()),
            "Link {value:?} is not in its plain form\ninput {input:?}"
        );
    }
}

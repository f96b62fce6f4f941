//! What may come back: which response headers an upstream's answer passes to the visitor, by
//! kind of route, and what a 304 may refresh in a stored answer.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{csp, link};

/// What a route's answers are, for the response-header allowlist: each kind passes to the
/// visitor only the headers such an answer legitimately needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseKind {
    /// A fonts route's stylesheet (rewritten).
    FontCss,
    /// Font files.
    FontFiles,
    /// Map tiles.
    Tiles,
    /// A mirrored library, script or page (`kind = "static"`).
    Static,
    /// A tracking endpoint's answer: none of the upstream's headers pass (the browser gets
    /// tamis's own answer, `routes::analytics::answer`).
    Analytics,
    /// An EU pass-through route: a plain reverse proxy to the operator's own upstream. Every
    /// end-to-end header passes except those in [`RESPONSE_STRIPPED`] (and [`RESPONSE_STRIPPED_PREFIXES`]).
    PassThrough,
}

impl ResponseKind {
    /// Every kind, in the order `tamis check` lists them.
    pub const ALL: [ResponseKind; 6] = [
        ResponseKind::FontCss,
        ResponseKind::FontFiles,
        ResponseKind::Tiles,
        ResponseKind::Static,
        ResponseKind::Analytics,
        ResponseKind::PassThrough,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The headers a visitor may get from this kind of answer (empty for pass-through, which
    /// works by [`RESPONSE_STRIPPED`] instead).
    pub fn allowlist(self) -> impl Iterator<Item = &'static (&'static str, Kinds, &'static str)> {
        RESPONSE_ALLOWLIST
            .iter()
            .filter(move |(_, kinds, _)| kinds.0 & self.bit() != 0)
    }
}

/// A set of [`ResponseKind`]s, for the allowlist's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    const FONT_CSS: Kinds = Kinds(1 << ResponseKind::FontCss as u8);
    const FONT_FILES: Kinds = Kinds(1 << ResponseKind::FontFiles as u8);
    const TILES: Kinds = Kinds(1 << ResponseKind::Tiles as u8);
    const STATIC: Kinds = Kinds(1 << ResponseKind::Static as u8);
    /// What the cache serves: fonts, tiles, mirrored files.
    const RESOURCES: Kinds =
        Kinds(Kinds::FONT_CSS.0 | Kinds::FONT_FILES.0 | Kinds::TILES.0 | Kinds::STATIC.0);
}

/// The response headers that may reach the visitor, by kind of answer, and why; everything
/// else an upstream sends is withheld (the visitor's browser keeps no state, reports to no one,
/// is pointed at no other host because of a header nobody thought of). tamis adds its own
/// afterwards: `X-Content-Type-Options: nosniff`, `Age`, `Cache-Status`, its own `ETag`,
/// `Retry-After` on its errors, CORS on font files.
pub const RESPONSE_ALLOWLIST: &[(&str, Kinds, &str)] = &[
    (
        "content-type",
        Kinds::RESOURCES,
        "what the body is (a stylesheet's is tamis's own)",
    ),
    ("content-length", Kinds::RESOURCES, "the body's length"),
    (
        "content-encoding",
        Kinds::RESOURCES,
        "how the body is compressed",
    ),
    (
        "cache-control",
        Kinds::RESOURCES,
        "how long the browser may keep it",
    ),
    (
        "expires",
        Kinds::RESOURCES,
        "how long the browser may keep it",
    ),
    ("date", Kinds::RESOURCES, "when it was made"),
    (
        "location",
        Kinds::RESOURCES,
        "mapped back under the route, or the answer is a 502",
    ),
    ("retry-after", Kinds::RESOURCES, "when to ask again"),
    ("age", Kinds::RESOURCES, "how long caches held it"),
    ("vary", Kinds::RESOURCES, "what it depends on"),
    (
        "etag",
        Kinds::RESOURCES,
        "the visitor gets tamis's own, derived from the bytes, or none",
    ),
    ("last-modified", Kinds::RESOURCES, "when it last changed"),
    ("accept-ranges", Kinds::RESOURCES, "parts can be asked for"),
    ("content-range", Kinds::RESOURCES, "which part this is"),
    (
        "access-control-allow-origin",
        Kinds::RESOURCES,
        "public files loaded under CORS (fonts, WebGL tiles, module scripts)",
    ),
    (
        "cross-origin-resource-policy",
        Kinds::RESOURCES,
        "lets cross-origin-isolated pages embed it",
    ),
    ("content-disposition", Kinds::STATIC, "download file name"),
    ("content-language", Kinds::STATIC, "the body's language"),
    (
        "link",
        Kinds::STATIC,
        "first-party preload hints only: an entry naming any other host is dropped",
    ),
    (
        "content-security-policy",
        Kinds::STATIC,
        "a mirrored page's protection, without report-uri and report-to",
    ),
    (
        "x-frame-options",
        Kinds::STATIC,
        "a mirrored page's protection",
    ),
    (
        "referrer-policy",
        Kinds::STATIC,
        "a mirrored page's protection",
    ),
    (
        "permissions-policy",
        Kinds::STATIC,
        "a mirrored page's protection",
    ),
    (
        "cross-origin-opener-policy",
        Kinds::STATIC,
        "a mirrored page's isolation (a report-to there names no endpoint: those are withheld)",
    ),
    (
        "cross-origin-embedder-policy",
        Kinds::STATIC,
        "a mirrored page's isolation (a report-to there names no endpoint: those are withheld)",
    ),
];

/// Why a response header is kept from the visitor: the notable ones, named in `tamis check`,
/// and the only ones a pass-through route withholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stripped {
    /// Would store state in the visitor's browser for the site's origin.
    BrowserState,
    /// Makes the browser report to a third party later.
    Reporting,
    /// Points the browser at the third party directly.
    ThirdPartyHint,
    /// Asks the browser for client hints on later requests.
    ClientHints,
    /// Enrols the browser in an advertising or attribution API.
    Advertising,
    /// Third-party timing details.
    Timing,
    /// Belongs to one connection.
    HopByHop,
}

impl Stripped {
    /// One line for `tamis check` and the docs.
    pub fn reason(self) -> &'static str {
        match self {
            Stripped::BrowserState => "sets state in the visitor's browser",
            Stripped::Reporting => "makes the browser report to a third party",
            Stripped::ThirdPartyHint => "sends the browser to the third party",
            Stripped::ClientHints => "asks the browser for client hints",
            Stripped::Advertising => "enrols the browser in ad or attribution APIs",
            Stripped::Timing => "third-party timing",
            Stripped::HopByHop => "hop-by-hop",
        }
    }
}

/// Response headers that never reach the visitor, on any route, pass-through included.
pub const RESPONSE_STRIPPED: &[(&str, Stripped)] = &[
    ("set-cookie", Stripped::BrowserState),
    ("set-cookie2", Stripped::BrowserState),
    ("clear-site-data", Stripped::BrowserState),
    ("strict-transport-security", Stripped::BrowserState),
    ("public-key-pins", Stripped::BrowserState),
    ("public-key-pins-report-only", Stripped::BrowserState),
    ("expect-ct", Stripped::BrowserState),
    ("set-login", Stripped::BrowserState),
    ("activate-storage-access", Stripped::BrowserState),
    ("origin-trial", Stripped::BrowserState),
    ("nel", Stripped::Reporting),
    ("report-to", Stripped::Reporting),
    ("reporting-endpoints", Stripped::Reporting),
    ("content-security-policy-report-only", Stripped::Reporting),
    ("permissions-policy-report-only", Stripped::Reporting),
    (
        "cross-origin-embedder-policy-report-only",
        Stripped::Reporting,
    ),
    (
        "cross-origin-opener-policy-report-only",
        Stripped::Reporting,
    ),
    ("document-policy", Stripped::Reporting),
    ("document-policy-report-only", Stripped::Reporting),
    ("require-document-policy", Stripped::Reporting),
    ("integrity-policy", Stripped::Reporting),
    ("integrity-policy-report-only", Stripped::Reporting),
    ("alt-svc", Stripped::ThirdPartyHint),
    ("content-location", Stripped::ThirdPartyHint),
    ("refresh", Stripped::ThirdPartyHint),
    ("speculation-rules", Stripped::ThirdPartyHint),
    ("service-worker-allowed", Stripped::ThirdPartyHint),
    ("sourcemap", Stripped::ThirdPartyHint),
    ("x-sourcemap", Stripped::ThirdPartyHint),
    ("accept-ch", Stripped::ClientHints),
    ("critical-ch", Stripped::ClientHints),
    ("accept-ch-lifetime", Stripped::ClientHints),
    ("observe-browsing-topics", Stripped::Advertising),
    ("server-timing", Stripped::Timing),
    ("connection", Stripped::HopByHop),
    ("keep-alive", Stripped::HopByHop),
    ("proxy-connection", Stripped::HopByHop),
    ("proxy-authenticate", Stripped::HopByHop),
    ("te", Stripped::HopByHop),
    ("trailer", Stripped::HopByHop),
    ("transfer-encoding", Stripped::HopByHop),
    ("upgrade", Stripped::HopByHop),
];

/// Families of response headers withheld by name prefix, on any route.
pub const RESPONSE_STRIPPED_PREFIXES: &[(&str, Stripped)] = &[
    // Device-bound session credentials register and refresh a login with the origin.
    ("sec-session-", Stripped::BrowserState),
    ("sec-private-state-token", Stripped::BrowserState),
    ("attribution-reporting-", Stripped::Advertising),
    ("ad-auction-", Stripped::Advertising),
    ("shared-storage-", Stripped::Advertising),
];

/// Whether a response header is withheld from a visitor of this kind of route (if not, it
/// passes, possibly filtered).
pub fn withheld(kind: ResponseKind, name: &HeaderName) -> bool {
    match kind {
        ResponseKind::PassThrough => {
            let text = name.as_str();
            (STRIPPED_FILTER.may_hold(text) && stripped_names().contains(name))
                || stripped_by_prefix(text)
        }
        _ => !allowed_names(kind).contains(name),
    }
}

/// Whether a name starts with one of [`RESPONSE_STRIPPED_PREFIXES`]. Most names are ruled out
/// by their first byte alone: this runs for every header of every pass-through answer.
fn stripped_by_prefix(name: &str) -> bool {
    let first = name.as_bytes().first().copied().unwrap_or(0);
    PREFIX_FIRST_BYTES[usize::from(first)]
        && RESPONSE_STRIPPED_PREFIXES
            .iter()
            .any(|(p, _)| name.starts_with(p))
}

/// The first bytes of [`RESPONSE_STRIPPED_PREFIXES`], worked out from the table at compile time.
const PREFIX_FIRST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < RESPONSE_STRIPPED_PREFIXES.len() {
        t[RESPONSE_STRIPPED_PREFIXES[i].0.as_bytes()[0] as usize] = true;
        i += 1;
    }
    t
};

/// Removes from an upstream response every header the visitor must not get: all but the
/// kind's allowlist (for pass-through, the withheld table), headers the upstream named in
/// `Connection`, `Link` entries a browser would follow off the site, and the reporting
/// directives of a `Content-Security-Policy`. `Location` is handled by the route (it maps it
/// back to a first-party URL).
pub fn scrub_response(headers: &mut HeaderMap, kind: ResponseKind) {
    // Whether Link and Content-Security-Policy passed, noted as the names go by rather than
    // looked up again after.
    let (mut link, mut csp) = (false, false);
    remove_with_connection_listed(headers, |name| {
        let out = withheld(kind, name);
        if !out {
            link |= name == header::LINK;
            csp |= name == header::CONTENT_SECURITY_POLICY;
        }
        out
    });
    // Only these kinds let Link and Content-Security-Policy through at all.
    if !matches!(kind, ResponseKind::Static | ResponseKind::PassThrough) {
        return;
    }
    if link {
        rewrite_values(headers, header::LINK, link::filter);
    }
    if csp {
        rewrite_values(
            headers,
            header::CONTENT_SECURITY_POLICY,
            csp::without_reporting,
        );
    }
}

/// What an upstream's 304 may change in a stored answer: its validators and its freshness,
/// nothing else. RFC 9111 §4.3.4 has a cache update a stored response's headers from a 304,
/// and §3.2 lets a cache that stores what it made of a response (tamis's rewritten
/// stylesheets, its own ETag) keep the headers that processing depends on. So how the body is
/// read (Content-Type and its charset, Content-Encoding, Content-Language,
/// Content-Disposition, X-Content-Type-Options), `Link`, CSP, CORS and everything else stay as
/// the fill decided them, whatever a 304 says.
pub const REFRESHED_BY_NOT_MODIFIED: &[(&str, &str)] = &[
    ("cache-control", "the new lifetime"),
    ("expires", "the new lifetime"),
    ("date", "when the upstream answered"),
    ("age", "how long caches upstream held it"),
    (
        "etag",
        "the upstream's validator, for tamis's next revalidation",
    ),
    (
        "last-modified",
        "the upstream's validator, for tamis's next revalidation",
    ),
];

/// A stored answer's headers refreshed by a 304's (already scrubbed) headers: each header
/// [`REFRESHED_BY_NOT_MODIFIED`] names that the 304 carries replaces the stored one; every
/// other header of the 304 is ignored. On a pass-through route (a plain reverse proxy to the
/// operator's own EU upstream, whose bodies tamis never rewrites), every header the 304
/// carries but Content-Length replaces the stored one, as RFC 9111 §3.2 has it.
pub fn refresh(stored: &HeaderMap, not_modified: &HeaderMap, kind: ResponseKind) -> HeaderMap {
    let mut out = stored.clone();
    let mut take = |name: &HeaderName| {
        out.remove(name);
        for v in not_modified.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    };
    if kind == ResponseKind::PassThrough {
        for name in not_modified.keys() {
            if name != header::CONTENT_LENGTH {
                take(name);
            }
        }
    } else {
        for (name, _) in REFRESHED_BY_NOT_MODIFIED {
            let name = HeaderName::from_static(name);
            if not_modified.contains_key(&name) {
                take(&name);
            }
        }
    }
    out
}

/// The headers no answer may carry to the visitor, whatever made it ([`RESPONSE_STRIPPED`] and
/// [`RESPONSE_STRIPPED_PREFIXES`]: state, reporting, third-party hints) that `headers` holds.
pub fn withheld_names(headers: &HeaderMap) -> Vec<&HeaderName> {
    headers
        .keys()
        .filter(|name| withheld(ResponseKind::PassThrough, name))
        .collect()
}

/// Replaces every value of `name` by what `f` makes of it (dropping it on `None`, and any value
/// that is not text).
fn rewrite_values(headers: &mut HeaderMap, name: HeaderName, f: fn(&str) -> Option<String>) {
    let kept: Vec<HeaderValue> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok().and_then(f))
        .filter_map(|v| HeaderValue::from_str(&v).ok())
        .collect();
    headers.remove(&name);
    for v in kept {
        headers.append(name.clone(), v);
    }
}

/// A summary of a fixed set of header names, worked out from a table at compile time: a name
/// it says the set cannot hold is not looked up in it. Most of a message's names (Date,
/// Content-Type, Content-Length, ...) are ruled out this way, for a few instructions instead
/// of a hashed set lookup (~57 each, on every header of every forward, both ways). It only
/// ever says "maybe" for a name of the set, so the answer is the set's.
pub(super) struct NameFilter([u64; 8]);

impl NameFilter {
    /// The filter of no names.
    pub(super) const EMPTY: NameFilter = NameFilter([0; 8]);

    /// The bit a name sets: its length, first, second and last bytes, mixed.
    const fn bit(name: &[u8]) -> usize {
        let n = name.len();
        if n == 0 {
            return 0;
        }
        let mut h = n as u32;
        h = h.wrapping_mul(31).wrapping_add(name[0] as u32);
        h = h
            .wrapping_mul(31)
            .wrapping_add(if n > 1 { name[1] as u32 } else { 0 });
        h = h.wrapping_mul(31).wrapping_add(name[n - 1] as u32);
        (h % 512) as usize
    }

    /// This filter and `name` (lower case, as header names are).
    pub(super) const fn with(mut self, name: &str) -> NameFilter {
        let b = NameFilter::bit(name.as_bytes());
        self.0[b / 64] |= 1 << (b % 64);
        self
    }

    /// Whether `name` (a header name's lower-case text) may be one of the filter's names.
    pub(super) fn may_hold(&self, name: &str) -> bool {
        let b = NameFilter::bit(name.as_bytes());
        self.0[b / 64] >> (b % 64) & 1 == 1
    }
}

/// [`RESPONSE_STRIPPED`]'s filter.
const STRIPPED_FILTER: NameFilter = {
    let mut f = NameFilter::EMPTY;
    let mut i = 0;
    while i < RESPONSE_STRIPPED.len() {
        f = f.with(RESPONSE_STRIPPED[i].0);
        i += 1;
    }
    f
};

/// A fixed set of header names. FxHash rather than SipHash: the sets are built from this
/// module's tables, never from visitor input, so there is nothing to collide on purpose, and
/// the lookup runs for every header of every request and response.
pub(super) type NameSet = rustc_hash::FxHashSet<HeaderName>;

/// The names of [`RESPONSE_STRIPPED`], hashed once: a set lookup per response header instead
/// of a scan of the table.
fn stripped_names() -> &'static NameSet {
    static NAMES: std::sync::OnceLock<NameSet> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        RESPONSE_STRIPPED
            .iter()
            .map(|(n, _)| HeaderName::from_static(n))
            .collect()
    })
}

/// Each kind's allowlist, hashed once.
fn allowed_names(kind: ResponseKind) -> &'static NameSet {
    static SETS: std::sync::OnceLock<Vec<NameSet>> = std::sync::OnceLock::new();
    let sets = SETS.get_or_init(|| {
        ResponseKind::ALL
            .iter()
            .map(|k| {
                k.allowlist()
                    .map(|(n, _, _)| HeaderName::from_static(n))
                    .collect()
            })
            .collect()
    });
    &sets[kind as usize]
}

/// Removes every header `drop` names, and those the message's `Connection` header lists
/// (hop-by-hop too, RFC 9110 §7.6.1), then `Connection` itself. One pass over the message's
/// own few headers collects the names and removes them after it; nothing is allocated, since
/// this runs on every request and response tamis forwards. `drop` sees every other name at
/// least once.
pub(super) fn remove_with_connection_listed(
    headers: &mut HeaderMap,
    mut drop: impl FnMut(&HeaderName) -> bool,
) {
    // Made only once a name is doomed: most messages lose none but Connection, and building
    // then dropping the eight empty slots cost ~45 instructions on each.
    let mut doomed: Option<[Option<HeaderName>; 8]> = None;
    // Most messages have no Connection header (HTTP/1.1 keeps the connection open without
    // one), or one that says only `keep-alive` or `close`: one pass over the entries finds
    // out, without looking the name up to read it.
    let (mut has_connection, mut any_extra) = (false, false);
    for (name, value) in headers.iter() {
        if name == header::CONNECTION {
            has_connection = true;
            any_extra |= lists_extra(value);
        }
    }
    loop {
        // The names Connection lists beyond `close` and `keep-alive` (usually none).
        let connection = any_extra.then(|| headers.get_all(header::CONNECTION));
        let listed = |name: &HeaderName| {
            connection
                .iter()
                .flatten()
                .flat_map(connection_options)
                .any(|l| l.eq_ignore_ascii_case(name.as_str()))
        };
        let (mut found, mut full) = (0, false);
        for name in headers.keys() {
            // Connection itself goes last: a later pass still needs what it lists.
            if name == header::CONNECTION {
                continue;
            }
            if drop(name) || listed(name) {
                let slots = doomed.get_or_insert_with(Default::default);
                if found == slots.len() {
                    full = true;
                    break;
                }
                slots[found] = Some(name.clone());
                found += 1;
            }
        }
        if let Some(slots) = doomed.as_mut() {
            for name in slots[..found].iter_mut().filter_map(Option::take) {
                headers.remove(name);
            }
        }
        // More names to drop than the array holds: another pass finds the rest.
        if !full {
            break;
        }
    }
    if has_connection {
        headers.remove(header::CONNECTION);
    }
}

/// Whether a `Connection` value lists a name beyond `close` and `keep-alive`, as
/// [`connection_options`] finds them. Most values are exactly one of those two (nginx answers
/// `keep-alive` every time): they are recognised whole, without splitting the value (~240
/// instructions of every forward).
fn lists_extra(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    if v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close") {
        return false;
    }
    connection_options(value).next().is_some()
}

/// The names a `Connection` value lists beyond `close` and `keep-alive` (none for a value that
/// is not text).
fn connection_options(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .ok()
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.eq_ignore_ascii_case("close")
                && !l.eq_ignore_ascii_case("keep-alive")
        })
}

/// True for a path-absolute or path-relative URL reference (no scheme, no authority).
pub fn is_relative_reference(target: &str) -> bool {
    let t = target.trim();
    if t.starts_with("//") || t.starts_with("\\\\") || t.starts_with("/\\") || t.starts_with("\\/")
    {
        return false;
    }
    // A scheme is letters/digits/+-. before the first ':' that comes before any '/', '?' or '#'.
    !matches!(t.find([':', '/', '?', '#']), Some(i) if t.as_bytes()[i] == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_filter_never_rules_out_a_withheld_name() {
        for (name, _) in RESPONSE_STRIPPED {
            assert!(STRIPPED_FILTER.may_hold(name), "{name}");
            let name = HeaderName::from_static(name);
            assert!(withheld(ResponseKind::PassThrough, &name), "{name}");
        }
        // The filter only skips the lookup: the answer is the set's, for any name.
        for name in [
            "date",
            "server",
            "content-type",
            "x-custom",
            "set-cookie",
            "nel",
            "te",
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(
                withheld(ResponseKind::PassThrough, &name),
                stripped_names().contains(&name),
                "{name}"
            );
        }
    }

    #[test]
    fn the_whole_value_shortcut_agrees_with_the_listed_options() {
        for v in [
            &b"keep-alive"[..],
            b"Keep-Alive",
            b"CLOSE",
            b"close",
            b" keep-alive",
            b"keep-alive ",
            b"keep-alive, close",
            b"keep-alive, x-secret",
            b"x-secret",
            b"close,",
            b",",
            b"",
            b"keep-alive\xff",
            b"upgrade",
        ] {
            let value = HeaderValue::from_bytes(v).unwrap();
            assert_eq!(
                lists_extra(&value),
                connection_options(&value).next().is_some(),
                "{v:?}"
            );
        }
        assert!(!lists_extra(&HeaderValue::from_static("Keep-Alive")));
        assert!(lists_extra(&HeaderValue::from_static(
            "keep-alive, x-secret"
        )));
    }

    #[test]
    fn withheld_names_finds_state_reporting_and_hint_headers_only() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "text/css"),
            ("set-cookie", "a=b"),
            ("nel", "{}"),
            ("attribution-reporting-register-source", "{}"),
            ("x-content-type-options", "nosniff"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let names: Vec<&str> = withheld_names(&h).iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["set-cookie", "nel", "attribution-reporting-register-source"]
        );
        h.remove("set-cookie");
        h.remove("nel");
        h.remove("attribution-reporting-register-source");
        assert!(withheld_names(&h).is_empty());
    }

    #[test]
    fn a_304_refreshes_validators_and_freshness_only() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let stored = h(&[
            ("content-type", "text/plain"),
            ("content-length", "12"),
            ("cache-control", "max-age=1"),
            ("etag", "\"v1\""),
            ("link", "</a.css>; rel=preload; as=style"),
            ("x-content-type-options", "nosniff"),
        ]);
        let not_modified = h(&[
            ("content-type", "text/css"),
            ("content-encoding", "gzip"),
            ("content-language", "fr"),
            ("content-disposition", "attachment"),
            ("content-length", "0"),
            ("x-content-type-options", "none"),
            ("link", "</b.css>; rel=preload; as=style"),
            ("cache-control", "max-age=60"),
            ("cache-control", "public"),
            ("etag", "\"v2\""),
            ("date", "Mon, 07 Dec 2026 00:00:00 GMT"),
        ]);
        let out = refresh(&stored, &not_modified, ResponseKind::Static);
        let values = |name: &str| -> Vec<&str> {
            out.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(values("content-type"), ["text/plain"]);
        assert_eq!(values("content-length"), ["12"]);
        assert_eq!(values("x-content-type-options"), ["nosniff"]);
        assert_eq!(values("link"), ["</a.css>; rel=preload; as=style"]);
        for never in [
            "content-encoding",
            "content-language",
            "content-disposition",
        ] {
            assert!(values(never).is_empty(), "{never}");
        }
        assert_eq!(values("cache-control"), ["max-age=60", "public"]);
        assert_eq!(values("etag"), ["\"v2\""]);
        assert_eq!(values("date"), ["Mon, 07 Dec 2026 00:00:00 GMT"]);
        // A pass-through route's 304 updates what it carries, as RFC 9111 §3.2 has it.
        let plain = refresh(&stored, &not_modified, ResponseKind::PassThrough);
        assert_eq!(plain.get("content-language").unwrap(), "fr");
        assert_eq!(plain.get("content-length").unwrap(), "12");
        // Every name the table lists may be sent to the visitor of a cached kind at all.
        for (name, _) in REFRESHED_BY_NOT_MODIFIED {
            let name = HeaderName::from_static(name);
            assert!(!withheld(ResponseKind::Tiles, &name), "{name}");
        }
    }

    fn response(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// What a hostile upstream might send along with a body.
    fn hostile() -> HeaderMap {
        response(&[
            ("content-type", "text/css"),
            ("cache-control", "public, max-age=60"),
            ("etag", "\"abc\""),
            ("set-cookie", "NID=1; Domain=.google.com"),
            ("nel", "{\"report_to\":\"x\"}"),
            ("report-to", "{}"),
            ("reporting-endpoints", "x=\"https://r.example\""),
            ("alt-svc", "h3=\":443\""),
            ("accept-ch", "Sec-CH-UA-Model"),
            ("critical-ch", "Sec-CH-UA-Model"),
            ("server-timing", "db;dur=53"),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            (
                "content-security-policy",
                "img-src *; report-uri https://r.example/csp",
            ),
            (
                "content-security-policy-report-only",
                "img-src 'none'; report-uri https://r.example/",
            ),
            ("attribution-reporting-register-source", "{}"),
            (
                "attribution-reporting-register-os-source",
                "\"https://r.example/\"",
            ),
            ("shared-storage-write", "set;key=a;value=b"),
            ("sec-session-registration", "(ES256);path=\"/reg\""),
            ("observe-browsing-topics", "?1"),
            ("origin-trial", "token"),
            ("x-tracker-id", "visitor-42"),
            ("server", "gws"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            (
                "link",
                "<https://fonts.gstatic.com>; rel=preconnect, </a.css>; rel=preload; as=style",
            ),
        ])
    }

    #[test]
    fn each_kind_of_answer_passes_only_its_allowlist() {
        let names = |kind| {
            let mut h = hostile();
            scrub_response(&mut h, kind);
            let mut names: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
            names.sort();
            names
        };
        for kind in [
            ResponseKind::FontCss,
            ResponseKind::FontFiles,
            ResponseKind::Tiles,
        ] {
            assert_eq!(
                names(kind),
                ["cache-control", "content-type", "etag"],
                "{kind:?}"
            );
        }
        // A tracking endpoint's answer is tamis's own: none of the upstream's headers pass.
        assert!(names(ResponseKind::Analytics).is_empty());
        assert_eq!(
            names(ResponseKind::Static),
            [
                "cache-control",
                "content-security-policy",
                "content-type",
                "etag",
                "link"
            ]
        );
        let mut h = hostile();
        scrub_response(&mut h, ResponseKind::Static);
        assert_eq!(h["content-security-policy"], "img-src *");
        assert_eq!(h["link"], "</a.css>; rel=preload; as=style");
        // Pass-through: everything but the withheld table and its families.
        assert_eq!(
            names(ResponseKind::PassThrough),
            [
                "cache-control",
                "content-security-policy",
                "content-type",
                "etag",
                "link",
                "server",
                "x-tracker-id"
            ]
        );
    }

    #[test]
    fn every_stripped_row_goes_at_once_with_what_connection_lists() {
        // Connection first and a listed name last, more names to drop than one pass holds:
        // the listed name must still be found once Connection's own turn has come.
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("keep-alive, X-Hop-A, Content-Language"),
        );
        h.append("connection", HeaderValue::from_static("x-hop-b"));
        for (name, _) in RESPONSE_STRIPPED {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        h.append("content-type", HeaderValue::from_static("image/png"));
        h.append("content-language", HeaderValue::from_static("fr"));
        h.append("x-hop-a", HeaderValue::from_static("1"));
        h.append("x-hop-b", HeaderValue::from_static("1"));
        for kind in ResponseKind::ALL {
            let mut h = h.clone();
            scrub_response(&mut h, kind);
            let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            // A tracking endpoint's answer keeps none of the upstream's headers.
            let kept: &[&str] = match kind {
                ResponseKind::Analytics => &[],
                _ => &["content-type"],
            };
            assert_eq!(names, kept, "{kind:?}");
        }
    }

    #[test]
    fn no_state_setter_is_ever_allowlisted() {
        for kind in ResponseKind::ALL {
            for (name, _, _) in kind.allowlist() {
                assert!(
                    !RESPONSE_STRIPPED.iter().any(|(n, _)| n == name)
                        && !RESPONSE_STRIPPED_PREFIXES
                            .iter()
                            .any(|(p, _)| name.starts_with(p)),
                    "{name} is both allowed and withheld"
                );
                assert_eq!(HeaderName::from_static(name).as_str(), *name);
            }
        }
        assert_eq!(ResponseKind::PassThrough.allowlist().count(), 0);
    }

    #[test]
    fn relative_references() {
        assert!(is_relative_reference("/a/b"));
        assert!(is_relative_reference("a/b:c"));
        assert!(is_relative_reference("?q=1"));
        assert!(!is_relative_reference("https://x/"));
        assert!(!is_relative_reference("//x/"));
        assert!(!is_relative_reference("/\\x/"));
        assert!(!is_relative_reference("javascript:alert(1)"));
    }
}

//! The privacy policy, as data: which request headers may leave tamis for an upstream, and
//! which response headers may reach the visitor. Every header rule lives here, in tables read
//! by pure functions; `tamis check` prints the same tables.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

pub mod csp;
pub mod link;

/// Where an upstream's operator is, legally. Outside the EU unless the config says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
pub enum Jurisdiction {
    /// Under EU law, in the EU.
    #[serde(rename = "eu")]
    Eu,
    /// Anywhere else (the default).
    #[default]
    #[serde(rename = "non-eu")]
    NonEu,
}

impl Jurisdiction {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Jurisdiction::Eu => "eu",
            Jurisdiction::NonEu => "non-eu",
        }
    }
}

/// Why a request header is kept from the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    /// Carries or reveals the visitor's address.
    ClientAddress,
    /// Logs the visitor in somewhere (the site's cookies, tokens).
    Credential,
    /// Reveals the page the visitor is on.
    Referrer,
    /// Narrows down who the visitor is (language, preferences).
    Fingerprint,
    /// Client hints: device and browser details.
    ClientHint,
    /// An identifier assigned to the browser.
    Identifier,
    /// A browser validator can carry an identifier (ETag supercookie); tamis revalidates itself.
    Validator,
    /// Belongs to one connection, not to the request.
    HopByHop,
    /// Not on the allowlist.
    NotAllowlisted,
}

impl Removed {
    /// One line for `tamis check` and the docs.
    pub fn reason(self) -> &'static str {
        match self {
            Removed::ClientAddress => "client address",
            Removed::Credential => "credentials (the site's cookies and logins)",
            Removed::Referrer => "the visitor's page",
            Removed::Fingerprint => "fingerprinting",
            Removed::ClientHint => "client hints (device details)",
            Removed::Identifier => "browser identifier",
            Removed::Validator => {
                "browser validator (can be a supercookie); tamis revalidates with its own"
            }
            Removed::HopByHop => "hop-by-hop (tamis manages its own connections)",
            Removed::NotAllowlisted => "not on the allowlist",
        }
    }
}

/// What the allowlist does with a header it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Sent as the browser sent it.
    AsSent,
    /// Reduced to one of a few canonical values (also part of the cache key).
    Normalized,
}

/// The request headers that may reach an upstream, whatever its jurisdiction.
/// Content-Length is not here: the client sets it from the body tamis actually forwards.
pub const REQUEST_ALLOWLIST: &[(HeaderName, Allowed, &str)] = &[
    (header::ACCEPT, Allowed::AsSent, "content negotiation"),
    (
        header::ACCEPT_ENCODING,
        Allowed::Normalized,
        "normalised to \"br, gzip\", \"gzip\", \"br\" or \"identity\"",
    ),
    (
        header::RANGE,
        Allowed::AsSent,
        "partial content, never cached",
    ),
    (
        header::CONTENT_TYPE,
        Allowed::AsSent,
        "describes a forwarded body",
    ),
];

/// Request headers removed for a named reason (everything else not allowlisted goes too).
pub const REQUEST_REMOVED: &[(&str, Removed)] = &[
    ("cookie", Removed::Credential),
    ("authorization", Removed::Credential),
    ("proxy-authorization", Removed::Credential),
    ("x-forwarded-for", Removed::ClientAddress),
    ("forwarded", Removed::ClientAddress),
    ("x-real-ip", Removed::ClientAddress),
    ("true-client-ip", Removed::ClientAddress),
    ("cf-connecting-ip", Removed::ClientAddress),
    ("fastly-client-ip", Removed::ClientAddress),
    ("x-client-ip", Removed::ClientAddress),
    ("x-cluster-client-ip", Removed::ClientAddress),
    ("x-forwarded", Removed::ClientAddress),
    ("forwarded-for", Removed::ClientAddress),
    ("x-forwarded-host", Removed::ClientAddress),
    ("x-forwarded-proto", Removed::ClientAddress),
    ("via", Removed::ClientAddress),
    ("referer", Removed::Referrer),
    ("origin", Removed::Referrer),
    ("accept-language", Removed::Fingerprint),
    ("dnt", Removed::Fingerprint),
    ("sec-gpc", Removed::Fingerprint),
    ("x-client-data", Removed::Identifier),
    ("x-requested-with", Removed::Identifier),
    ("device-memory", Removed::ClientHint),
    ("dpr", Removed::ClientHint),
    ("viewport-width", Removed::ClientHint),
    ("width", Removed::ClientHint),
    ("downlink", Removed::ClientHint),
    ("ect", Removed::ClientHint),
    ("rtt", Removed::ClientHint),
    ("save-data", Removed::ClientHint),
    ("if-none-match", Removed::Validator),
    ("if-modified-since", Removed::Validator),
    ("if-match", Removed::Validator),
    ("if-unmodified-since", Removed::Validator),
    ("if-range", Removed::Validator),
    ("connection", Removed::HopByHop),
    ("keep-alive", Removed::HopByHop),
    ("proxy-connection", Removed::HopByHop),
    ("te", Removed::HopByHop),
    ("trailer", Removed::HopByHop),
    ("transfer-encoding", Removed::HopByHop),
    ("upgrade", Removed::HopByHop),
    ("host", Removed::HopByHop),
];

/// Families of request headers removed by name prefix.
pub const REQUEST_REMOVED_PREFIXES: &[(&str, Removed)] = &[
    ("sec-ch-", Removed::ClientHint),
    ("sec-fetch-", Removed::Fingerprint),
];

/// Removal reasons that no per-route setting can lift: these never reach any upstream.
const NEVER_FORWARDABLE: &[Removed] = &[
    Removed::Credential,
    Removed::ClientAddress,
    Removed::Validator,
    Removed::HopByHop,
];

/// Why a named request header would be removed (`None`: on the allowlist, or User-Agent).
pub fn removal_reason(name: &str) -> Option<Removed> {
    if name.eq_ignore_ascii_case("user-agent")
        || REQUEST_ALLOWLIST
            .iter()
            .any(|(n, _, _)| n.as_str().eq_ignore_ascii_case(name))
    {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    if let Some((_, why)) = REQUEST_REMOVED.iter().find(|(n, _)| *n == lower) {
        return Some(*why);
    }
    if let Some((_, why)) = REQUEST_REMOVED_PREFIXES
        .iter()
        .find(|(p, _)| lower.starts_with(p))
    {
        return Some(*why);
    }
    Some(Removed::NotAllowlisted)
}

/// Checks a header an EU route wants to forward beyond the allowlist.
pub fn check_forwardable(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    match removal_reason(name) {
        Some(why) if NEVER_FORWARDABLE.contains(&why) => Err(format!(
            "{name:?} is never forwarded to any upstream ({})",
            why.reason()
        )),
        None => Err(format!(
            "{name:?} is already forwarded; remove it from the list"
        )),
        Some(_) => Ok(parsed),
    }
}

/// The User-Agent an upstream sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAgent {
    /// A fixed value configured by the operator.
    Fixed(HeaderValue),
    /// The visitor's own (EU routes without a configured one).
    Visitor,
    /// The visitor's, generalised to browser family and major version (analytics routes).
    Generalised,
}

/// One route's request-header policy, derived from its config.
#[derive(Clone, Debug)]
pub struct RequestPolicy {
    pub jurisdiction: Jurisdiction,
    pub user_agent: UserAgent,
    /// Extra visitor headers forwarded as they are (EU routes only, checked at load).
    pub extra: Vec<HeaderName>,
    /// Every end-to-end header is forwarded (EU pass-through routes only, checked at load).
    pub pass_through: bool,
    /// A fixed Referer configured by the operator (the site's origin), never the visitor's.
    pub referer: Option<HeaderValue>,
}

impl RequestPolicy {
    /// Non-EU upstreams always get a fixed User-Agent; EU ones get the visitor's unless the
    /// route sets one.
    pub fn new(
        jurisdiction: Jurisdiction,
        global_ua: &HeaderValue,
        route_ua: Option<&HeaderValue>,
        extra: &[HeaderName],
    ) -> RequestPolicy {
        let user_agent = match (jurisdiction, route_ua) {
            (_, Some(ua)) => UserAgent::Fixed(ua.clone()),
            (Jurisdiction::NonEu, None) => UserAgent::Fixed(global_ua.clone()),
            (Jurisdiction::Eu, None) => UserAgent::Visitor,
        };
        let extra = match jurisdiction {
            Jurisdiction::Eu => extra.to_vec(),
            // Config loading refuses this already; the policy holds the line on its own too.
            Jurisdiction::NonEu => Vec::new(),
        };
        RequestPolicy {
            jurisdiction,
            user_agent,
            extra,
            pass_through: false,
            referer: None,
        }
    }

    /// Replaces the User-Agent rule (analytics routes generalise the visitor's).
    pub fn with_user_agent(mut self, user_agent: UserAgent) -> RequestPolicy {
        self.user_agent = user_agent;
        self
    }

    /// Sends a fixed Referer (the site's origin) instead of none.
    pub fn with_referer(mut self, referer: HeaderValue) -> RequestPolicy {
        self.referer = Some(referer);
        self
    }

    /// A pass-through policy: every end-to-end header goes as sent. Only for EU routes; a
    /// non-EU jurisdiction keeps the allowlist whatever the caller asks.
    pub fn pass_through(mut self) -> RequestPolicy {
        self.pass_through = self.jurisdiction == Jurisdiction::Eu;
        self
    }

    /// Whether a visitor header of this name can reach the upstream (so a response may vary
    /// on it).
    pub fn forwards(&self, name: &HeaderName) -> bool {
        if self.pass_through {
            return !is_hop_by_hop(name);
        }
        *name == header::USER_AGENT
            || self.extra.contains(name)
            || REQUEST_ALLOWLIST.iter().any(|(n, _, _)| n == name)
    }

    /// As [`scrub`](Self::scrub), for a caller done with the visitor's headers: a pass-through
    /// policy strips them in place instead of copying what it keeps.
    pub fn scrub_owned(&self, mut visitor: HeaderMap) -> HeaderMap {
        if !self.pass_through {
            return self.scrub(&visitor);
        }
        strip_hop_by_hop(&mut visitor);
        visitor
    }

    /// Builds the header map sent upstream. It is built *from the allowlist*, not by deleting
    /// from the visitor's headers, so a header nobody thought of can never slip through.
    pub fn scrub(&self, visitor: &HeaderMap) -> HeaderMap {
        if self.pass_through {
            let mut out = visitor.clone();
            strip_hop_by_hop(&mut out);
            return out;
        }
        let mut out = HeaderMap::with_capacity(8);
        for (name, how, _) in REQUEST_ALLOWLIST {
            match how {
                Allowed::AsSent => {
                    for v in visitor.get_all(name) {
                        out.append(name.clone(), v.clone());
                    }
                }
                Allowed::Normalized => {
                    // Accept-Encoding is the only normalised header.
                    let enc = AcceptEncoding::from_headers(visitor);
                    out.insert(name.clone(), enc.header_value());
                }
            }
        }
        for name in &self.extra {
            for v in visitor.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        if let Some(referer) = &self.referer {
            out.insert(header::REFERER, referer.clone());
        }
        match &self.user_agent {
            UserAgent::Fixed(ua) => {
                out.insert(header::USER_AGENT, ua.clone());
            }
            UserAgent::Visitor => {
                if let Some(ua) = visitor.get(header::USER_AGENT) {
                    out.insert(header::USER_AGENT, ua.clone());
                }
            }
            UserAgent::Generalised => {
                let ua = visitor
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if let Ok(v) = HeaderValue::from_str(&generalise_user_agent(ua)) {
                    out.insert(header::USER_AGENT, v);
                }
            }
        }
        out
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    static NAMES: std::sync::OnceLock<NameSet> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            REQUEST_REMOVED
                .iter()
                .filter(|(_, why)| *why == Removed::HopByHop)
                .map(|(n, _)| HeaderName::from_static(n))
                .collect()
        })
        .contains(name)
}

/// A fixed set of header names. FxHash rather than SipHash: the sets are built from this
/// module's tables, never from visitor input, so there is nothing to collide on purpose, and
/// the lookup runs for every header of every request and response.
type NameSet = rustc_hash::FxHashSet<HeaderName>;

/// Everything but hop-by-hop headers (and those the visitor named in Connection), removed in
/// place.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_with_connection_listed(headers, is_hop_by_hop);
}

/// The content codings tamis asks an upstream for, reduced to four buckets so that the cache
/// keeps at most four variants and the header says nothing about the visitor's browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcceptEncoding {
    Identity,
    Gzip,
    Br,
    BrGzip,
}

impl AcceptEncoding {
    /// Reads every Accept-Encoding value; a coding counts when its q is above 0.
    pub fn from_headers(headers: &HeaderMap) -> AcceptEncoding {
        let (mut br, mut gzip) = (false, false);
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let accepted = parts.all(|p| {
                    let p = p.trim();
                    match p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                        Some(q) => q.trim().parse::<f32>().map(|q| q > 0.0).unwrap_or(false),
                        None => true,
                    }
                });
                if !accepted {
                    continue;
                }
                if coding.eq_ignore_ascii_case("br") {
                    br = true;
                } else if coding.eq_ignore_ascii_case("gzip")
                    || coding.eq_ignore_ascii_case("x-gzip")
                {
                    gzip = true;
                } else if coding == "*" {
                    br = true;
                    gzip = true;
                }
            }
        }
        match (br, gzip) {
            (true, true) => AcceptEncoding::BrGzip,
            (true, false) => AcceptEncoding::Br,
            (false, true) => AcceptEncoding::Gzip,
            (false, false) => AcceptEncoding::Identity,
        }
    }

    /// The value sent upstream.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            AcceptEncoding::Identity => "identity",
            AcceptEncoding::Gzip => "gzip",
            AcceptEncoding::Br => "br",
            AcceptEncoding::BrGzip => "br, gzip",
        })
    }
}

/// A User-Agent generalised to browser family and major version, with nothing else (no OS, no
/// device, no minor versions): what analytics tools still recognise.
pub fn generalise_user_agent(ua: &str) -> String {
    // Order matters: Edge and Opera also say Chrome; Chrome also says Safari.
    type Render = fn(&str) -> String;
    let families: &[(&str, &str, Render)] = &[
        ("Edg/", "Edge", |v| {
            format!("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0")
        }),
        ("OPR/", "Opera", |v| {
            format!("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 OPR/{v}.0.0.0")
        }),
        ("Firefox/", "Firefox", |v| {
            format!("Mozilla/5.0 Gecko/20100101 Firefox/{v}.0")
        }),
        ("Chrome/", "Chrome", |v| {
            format!(
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
            )
        }),
        ("CriOS/", "Chrome", |v| {
            format!(
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"
            )
        }),
        ("Version/", "Safari", |v| {
            format!("Mozilla/5.0 AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v}.0 Safari/605.1.15")
        }),
    ];
    for (marker, family, render) in families {
        if *family == "Safari" && !ua.contains("Safari/") {
            continue;
        }
        if let Some(pos) = ua.find(marker) {
            let major: String = ua[pos + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .take(4)
                .collect();
            if !major.is_empty() {
                return render(&major);
            }
        }
    }
    "Mozilla/5.0 (compatible; other)".to_owned()
}

/// Truncates a client address for the rare places tamis may send or keep one (an EU analytics
/// route's `X-Forwarded-For`, its own log, when the operator asks): IPv4 to /24, IPv6 to /48,
/// and an IPv6 address carrying an IPv4 one (6to4, Teredo, NAT64, IPv4-mapped) as that IPv4 to
/// /24, since its /48 could hold the whole IPv4.
pub fn truncate_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match ip {
        IpAddr::V6(v6) => crate::client_addr::embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

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
            stripped_names().contains(name)
                || RESPONSE_STRIPPED_PREFIXES
                    .iter()
                    .any(|(p, _)| name.as_str().starts_with(p))
        }
        _ => !allowed_names(kind).contains(name),
    }
}

/// Removes from an upstream response every header the visitor must not get: all but the
/// kind's allowlist (for pass-through, the withheld table), headers the upstream named in
/// `Connection`, `Link` entries a browser would follow off the site, and the reporting
/// directives of a `Content-Security-Policy`. `Location` is handled by the route (it maps it
/// back to a first-party URL).
pub fn scrub_response(headers: &mut HeaderMap, kind: ResponseKind) {
    remove_with_connection_listed(headers, |name| withheld(kind, name));
    // Only these kinds let Link and Content-Security-Policy through at all.
    if !matches!(kind, ResponseKind::Static | ResponseKind::PassThrough) {
        return;
    }
    if headers.contains_key(header::LINK) {
        rewrite_values(headers, header::LINK, link::filter);
    }
    if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
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
/// this runs on every request and response tamis forwards.
fn remove_with_connection_listed(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let mut doomed: [Option<HeaderName>; 8] = Default::default();
    loop {
        // The names Connection lists beyond `close` and `keep-alive` (usually none).
        let connection = headers.get_all(header::CONNECTION);
        let extra = || {
            connection
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.eq_ignore_ascii_case("close")
                        && !l.eq_ignore_ascii_case("keep-alive")
                })
        };
        let any_extra = extra().next().is_some();
        let listed =
            |name: &HeaderName| any_extra && extra().any(|l| l.eq_ignore_ascii_case(name.as_str()));
        let (mut found, mut full) = (0, false);
        for name in headers.keys() {
            // Connection itself goes last: a later pass still needs what it lists.
            if name == header::CONNECTION {
                continue;
            }
            if drop(name) || listed(name) {
                if found == doomed.len() {
                    full = true;
                    break;
                }
                doomed[found] = Some(name.clone());
                found += 1;
            }
        }
        for name in doomed[..found].iter_mut().filter_map(Option::take) {
            headers.remove(name);
        }
        // More names to drop than the array holds: another pass finds the rest.
        if !full {
            break;
        }
    }
    headers.remove(header::CONNECTION);
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

    fn visitor() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("accept", "text/css,*/*;q=0.1"),
            ("accept-encoding", "gzip, deflate, br, zstd"),
            ("accept-language", "fr-FR,fr;q=0.9"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
            ("cookie", "session=secret"),
            ("authorization", "Bearer secret"),
            ("referer", "https://site.example/private/page?user=42"),
            ("origin", "https://site.example"),
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
            ("x-real-ip", "203.0.113.7"),
            ("true-client-ip", "203.0.113.7"),
            ("cf-connecting-ip", "203.0.113.7"),
            ("via", "1.1 someproxy"),
            ("sec-ch-ua", "\"Chromium\";v=\"131\""),
            ("sec-ch-ua-platform", "\"Linux\""),
            ("x-client-data", "CIa2yQEIpLbJAQ=="),
            ("if-none-match", "\"supercookie-1234\""),
            ("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ("dnt", "1"),
            ("x-something-new", "identifier"),
            ("range", "bytes=0-99"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        h
    }

    fn ua() -> HeaderValue {
        HeaderValue::from_static("tamis-test (ops@site.example)")
    }

    #[test]
    fn non_eu_gets_only_the_allowlist_and_a_fixed_user_agent() {
        let p = RequestPolicy::new(Jurisdiction::NonEu, &ua(), None, &[]);
        let out = p.scrub(&visitor());
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "accept-encoding", "range", "user-agent"]);
        assert_eq!(out["user-agent"], "tamis-test (ops@site.example)");
        assert_eq!(out["accept-encoding"], "br, gzip");
        assert_eq!(out["accept"], "text/css,*/*;q=0.1");
    }

    #[test]
    fn non_eu_ignores_extra_headers_even_if_asked() {
        let extra = [HeaderName::from_static("accept-language")];
        let p = RequestPolicy::new(Jurisdiction::NonEu, &ua(), None, &extra);
        assert!(p.scrub(&visitor()).get("accept-language").is_none());
    }

    #[test]
    fn eu_keeps_the_visitor_user_agent_and_explicit_extras() {
        let extra = [HeaderName::from_static("accept-language")];
        let p = RequestPolicy::new(Jurisdiction::Eu, &ua(), None, &extra);
        let out = p.scrub(&visitor());
        assert_eq!(
            out["user-agent"],
            "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"
        );
        assert_eq!(out["accept-language"], "fr-FR,fr;q=0.9");
        for never in [
            "cookie",
            "authorization",
            "x-forwarded-for",
            "referer",
            "if-none-match",
        ] {
            assert!(out.get(never).is_none(), "{never} forwarded");
        }
    }

    #[test]
    fn a_route_user_agent_wins_everywhere() {
        let route = HeaderValue::from_static("route-ua");
        for j in [Jurisdiction::Eu, Jurisdiction::NonEu] {
            let p = RequestPolicy::new(j, &ua(), Some(&route), &[]);
            assert_eq!(p.scrub(&visitor())["user-agent"], "route-ua");
        }
    }

    #[test]
    fn pass_through_forwards_end_to_end_headers_on_eu_routes_only() {
        let p = RequestPolicy::new(Jurisdiction::Eu, &ua(), None, &[]).pass_through();
        let mut v = visitor();
        v.insert("connection", HeaderValue::from_static("x-hop"));
        v.insert("x-hop", HeaderValue::from_static("1"));
        let out = p.scrub(&v);
        assert_eq!(out["cookie"], "session=secret");
        assert_eq!(out["if-none-match"], "\"supercookie-1234\"");
        assert!(out.get("connection").is_none() && out.get("x-hop").is_none());
        assert!(p.forwards(&HeaderName::from_static("cookie")));
        let strict = RequestPolicy::new(Jurisdiction::NonEu, &ua(), None, &[]).pass_through();
        assert!(!strict.pass_through);
        assert!(strict.scrub(&v).get("cookie").is_none());
        assert!(!strict.forwards(&HeaderName::from_static("cookie")));
        assert!(strict.forwards(&header::ACCEPT));
        // Scrubbing in place (the visitor's map handed over) gives the same headers.
        assert_eq!(p.scrub_owned(v.clone()), out);
        assert_eq!(strict.scrub_owned(v.clone()), strict.scrub(&v));
    }

    #[test]
    fn pass_through_drops_every_hop_by_hop_header_and_what_connection_lists() {
        let p = RequestPolicy::new(Jurisdiction::Eu, &ua(), None, &[]).pass_through();
        let mut v = HeaderMap::new();
        v.append("connection", HeaderValue::from_static("Keep-Alive, X-A"));
        v.append("connection", HeaderValue::from_static("x-b"));
        for (name, why) in REQUEST_REMOVED {
            if *why == Removed::HopByHop && *name != "connection" {
                v.append(HeaderName::from_static(name), HeaderValue::from_static("1"));
            }
        }
        v.append("x-a", HeaderValue::from_static("1"));
        v.append("x-b", HeaderValue::from_static("1"));
        v.append("content-type", HeaderValue::from_static("application/json"));
        for out in [p.scrub(&v), p.scrub_owned(v.clone())] {
            let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
            assert_eq!(names, ["content-type"]);
        }
    }

    #[test]
    fn removal_reasons_are_named() {
        assert_eq!(removal_reason("Cookie"), Some(Removed::Credential));
        assert_eq!(
            removal_reason("X-Forwarded-For"),
            Some(Removed::ClientAddress)
        );
        assert_eq!(
            removal_reason("CF-Connecting-IP"),
            Some(Removed::ClientAddress)
        );
        assert_eq!(removal_reason("Sec-CH-UA-Model"), Some(Removed::ClientHint));
        assert_eq!(removal_reason("If-None-Match"), Some(Removed::Validator));
        assert_eq!(removal_reason("X-Client-Data"), Some(Removed::Identifier));
        assert_eq!(removal_reason("X-Anything"), Some(Removed::NotAllowlisted));
        assert_eq!(removal_reason("accept"), None);
    }

    #[test]
    fn never_forwardable_headers_cannot_be_opted_in() {
        for h in [
            "Cookie",
            "Authorization",
            "X-Forwarded-For",
            "Forwarded",
            "Via",
            "If-None-Match",
            "Host",
            "Connection",
        ] {
            assert!(check_forwardable(h).is_err(), "{h} accepted");
        }
        assert!(check_forwardable("Accept").is_err(), "already forwarded");
        assert!(check_forwardable("bad header").is_err());
        assert!(check_forwardable("Accept-Language").is_ok());
        assert!(check_forwardable("Referer").is_ok());
    }

    #[test]
    fn accept_encoding_buckets() {
        let ae = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_static(v));
            AcceptEncoding::from_headers(&h)
        };
        assert_eq!(ae("gzip, deflate, br, zstd"), AcceptEncoding::BrGzip);
        assert_eq!(ae("gzip"), AcceptEncoding::Gzip);
        assert_eq!(ae("x-gzip;q=0.5"), AcceptEncoding::Gzip);
        assert_eq!(ae("br;q=1.0, gzip;q=0"), AcceptEncoding::Br);
        assert_eq!(ae("identity"), AcceptEncoding::Identity);
        assert_eq!(ae("*"), AcceptEncoding::BrGzip);
        assert_eq!(ae("gzip;q=bogus"), AcceptEncoding::Identity);
        assert_eq!(
            AcceptEncoding::from_headers(&HeaderMap::new()),
            AcceptEncoding::Identity
        );
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
    fn an_address_embedding_an_ipv4_is_truncated_to_that_ipv4s_24() {
        // (address, truncated): 203.0.113.7 = 0xcb00_7107, written every way IPv6 embeds it.
        let cases = [
            ("203.0.113.77", "203.0.113.0"),
            ("2001:db8:1234:5678::1", "2001:db8:1234::"),
            // IPv4-mapped, IPv4-compatible (deprecated), IPv4-translated (SIIT).
            ("::ffff:203.0.113.7", "203.0.113.0"),
            ("::203.0.113.7", "203.0.113.0"),
            ("::ffff:0:203.0.113.7", "203.0.113.0"),
            // The unspecified and loopback addresses are not IPv4-compatible ones.
            ("::", "::"),
            ("::1", "::"),
            // 6to4: the IPv4 is the site's /48, whatever the subnet and interface.
            ("2002:cb00:7107::1", "203.0.113.0"),
            ("2002:cb00:7107:42:a:b:c:d", "203.0.113.0"),
            // Teredo: server 65.54.227.120, client 203.0.113.7 inverted in the last 32 bits;
            // nothing of the server, the flags or the obfuscated port is kept.
            ("2001:0:4136:e378:8000:63bf:34ff:8ef8", "203.0.113.0"),
            // NAT64 well-known prefix (RFC 6052 /96).
            ("64:ff9b::cb00:7107", "203.0.113.0"),
            ("64:ff9b::203.0.113.7", "203.0.113.0"),
            // NAT64 local-use prefix (RFC 8215): the IPv4 lies beyond its /48 at a length the
            // operator chose; the /48 cut keeps none of it.
            ("64:ff9b:1:cb00:71:700::", "64:ff9b:1::"),
            ("64:ff9b:1::cb00:7107", "64:ff9b:1::"),
            // A network-specific NAT64 prefix cannot be told from a native address: with the
            // shortest (/32) the /48 cut keeps the IPv4's first 16 bits, less than its /24.
            ("2001:db8:cb00:7107::", "2001:db8:cb00::"),
        ];
        for (address, truncated) in cases {
            assert_eq!(
                truncate_ip(address.parse().unwrap()).to_string(),
                truncated,
                "{address}"
            );
        }
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

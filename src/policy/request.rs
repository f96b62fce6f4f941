//! What may leave: which request headers reach an upstream and in what form (the allowlist,
//! the named removals, User-Agent and Accept-Encoding normalised), route by route.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::response::{remove_with_connection_listed, NameFilter, NameSet};
use super::Jurisdiction;

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

    /// As [`scrub_owned`](Self::scrub_owned), for a request sent to an upstream whose `Host`
    /// is `host`: on a pass-through policy, a visitor's single `Host` (hop-by-hop, never
    /// forwarded) has `host` written over it in place instead of being removed for the
    /// client to add `host` after, two hashed map operations per forward. Anything else (no
    /// `Host`, several, one that `Connection` lists) is stripped as `scrub_owned` strips it,
    /// and the client adds `host`. Either way the visitor's `Host` never leaves.
    pub fn scrub_owned_to(&self, mut visitor: HeaderMap, host: &HeaderValue) -> HeaderMap {
        if !self.pass_through {
            return self.scrub(&visitor);
        }
        let mut hosts = visitor.iter_mut().filter(|(n, _)| *n == header::HOST);
        match (hosts.next(), hosts.next()) {
            (Some((_, value)), None) => {
                value.clone_from(host);
                remove_with_connection_listed(&mut visitor, |n| {
                    n != header::HOST && is_hop_by_hop(n)
                });
            }
            _ => strip_hop_by_hop(&mut visitor),
        }
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
                // The String becomes the value's bytes (from_str would copy it).
                if let Ok(v) = HeaderValue::try_from(generalise_user_agent(ua)) {
                    out.insert(header::USER_AGENT, v);
                }
            }
        }
        out
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Most names are ruled out by the filter alone (see `NameFilter`).
    if !HOP_BY_HOP_FILTER.may_hold(name.as_str()) {
        return false;
    }
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

/// The filter of [`REQUEST_REMOVED`]'s hop-by-hop names.
const HOP_BY_HOP_FILTER: NameFilter = {
    let mut f = NameFilter::EMPTY;
    let mut i = 0;
    while i < REQUEST_REMOVED.len() {
        if matches!(REQUEST_REMOVED[i].1, Removed::HopByHop) {
            f = f.with(REQUEST_REMOVED[i].0);
        }
        i += 1;
    }
    f
};

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
    // Shorter than the shortest marker ("Edg/", "OPR/"): none can be in it (a client that
    // sends no User-Agent at all gets here with "").
    if ua.len() < 4 {
        return OTHER_USER_AGENT.to_owned();
    }
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
    // The markers' searchers, built once: `str::find` builds one per call, which cost more
    // than the searches themselves on every tracking request.
    static FINDERS: std::sync::OnceLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::OnceLock::new();
    let finders = FINDERS.get_or_init(|| {
        [
            "Edg/", "OPR/", "Firefox/", "Chrome/", "CriOS/", "Version/", "Safari/",
        ]
        .iter()
        .map(|m| memchr::memmem::Finder::new(m.as_bytes()))
        .collect()
    });
    let find = |marker: &str| {
        finders
            .iter()
            .find(|f| f.needle() == marker.as_bytes())
            .and_then(|f| f.find(ua.as_bytes()))
    };
    for (marker, family, render) in families {
        if *family == "Safari" && find("Safari/").is_none() {
            continue;
        }
        if let Some(pos) = find(marker) {
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
    OTHER_USER_AGENT.to_owned()
}

/// What [`generalise_user_agent`] makes of a User-Agent naming no known browser.
const OTHER_USER_AGENT: &str = "Mozilla/5.0 (compatible; other)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstreams_host_goes_where_the_visitors_was_and_nothing_else_changes() {
        let ua = HeaderValue::from_static("tamis");
        let through = RequestPolicy::new(Jurisdiction::Eu, &ua, None, &[]).pass_through();
        let allowlist = RequestPolicy::new(Jurisdiction::Eu, &ua, None, &[]);
        let up = HeaderValue::from_static("up.example:8080");
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("host", "site.example"),
                ("content-type", "a/b"),
                ("x-a", "1"),
            ],
            &[("content-type", "a/b")],
            &[("host", "one.example"), ("host", "two.example")],
            &[("host", "site.example"), ("connection", "host")],
            &[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("host", "site.example"),
                ("te", "trailers"),
                ("cookie", "c=1"),
            ],
        ];
        for case in cases {
            let mut visitor = HeaderMap::new();
            for (k, v) in *case {
                visitor.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            let mut sent = through.scrub_owned_to(visitor.clone(), &up);
            // At most one Host, the upstream's: the visitor's never leaves.
            let hosts: Vec<_> = sent.get_all(header::HOST).iter().cloned().collect();
            assert!(
                hosts.len() <= 1 && hosts.iter().all(|h| *h == up),
                "{case:?}"
            );
            sent.remove(header::HOST);
            assert_eq!(sent, through.scrub_owned(visitor.clone()), "{case:?}");
            assert_eq!(
                allowlist.scrub_owned_to(visitor.clone(), &up),
                allowlist.scrub(&visitor),
                "{case:?}"
            );
        }
    }

    #[test]
    fn the_hop_by_hop_filter_never_rules_out_a_hop_by_hop_name() {
        for (name, why) in REQUEST_REMOVED {
            let hop = *why == Removed::HopByHop;
            assert_eq!(is_hop_by_hop(&HeaderName::from_static(name)), hop, "{name}");
            if hop {
                assert!(HOP_BY_HOP_FILTER.may_hold(name), "{name}");
            }
        }
        for name in [
            "content-type",
            "content-length",
            "accept",
            "x-custom",
            "hostname",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
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
}

//! What leaves, decided without I/O: the checks every visitor request passes before anything
//! is sent, in the order they are made (`request_filter`, `route_filter`), and the upstream
//! request built from the route's policy (`route_request`, `prepare_analytics`). The live
//! path (the proxy module) and the dry-run probe (`dry_run`) both call these, so what the
//! probe shows is what the live path does.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::Full;

use crate::analytics::{self, Protocol};
use crate::config::Config;
use crate::refusal::Refusal;
use crate::routes::{Role, Route, Router};
use crate::secret::Secret;

/// Where [`request_filter`] sends a request.
pub(crate) enum Admitted<'r, 'p> {
    /// One of tamis's own public pages (the transparency page, the probe): tamis answers it.
    OwnPage,
    /// A route's request, and the path after the route's prefix.
    Route(&'r Arc<Route>, &'p str),
}

/// The first checks of every request, live or probed, in this order: no CONNECT and no
/// absolute-form target on HTTP/1 (tamis never proxies to a host the client names, 400), the
/// target's length (414, RFC 9110 §15.5.15), tamis's own pages ahead of the routes (a route can
/// never hide them), then the route by longest prefix (404).
pub(crate) fn request_filter<'r, 'p>(
    config: &Config,
    router: &'r Router,
    is_own_page: impl Fn(&str) -> bool,
    method: &Method,
    uri: &'p Uri,
    version: Version,
) -> Result<Admitted<'r, 'p>, Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    if version < Version::HTTP_2 && uri.authority().is_some() {
        return Err(Refusal::AbsoluteForm);
    }
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > config.limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    let path = uri.path();
    if is_own_page(path) {
        return Ok(Admitted::OwnPage);
    }
    match router.find(path) {
        Some((route, rest)) => Ok(Admitted::Route(route, rest)),
        None => Err(Refusal::NotFound),
    }
}

/// What a route takes, from [`route_filter_at`].
pub(crate) enum Accepted<'r> {
    /// A mirror's request (static, fonts, tiles) and the upstream URL it maps to.
    Mirror(Uri),
    /// A tracking request to one of the protocol's endpoints, and the route's analytics state.
    Tracking(Protocol, &'r Arc<analytics::Runtime>),
}

/// As [`route_filter_at`], given only the query: the upstream URL is always written out and
/// parsed. The tests compare the two.
#[cfg(test)]
pub(crate) fn route_filter<'r>(
    route: &'r Route,
    rest: &str,
    method: &Method,
    query: Option<&str>,
) -> Result<Accepted<'r>, Refusal> {
    accept(route, rest, method, || route.upstream_uri(rest, query))
}

/// Whether the route takes this request, checked before any body is read, in the order the
/// live path has always answered: a mirror's path confined under its upstream base (400)
/// before its method (405); a tracking route's endpoint (404) before its method (405).
/// `target` is the visitor's request target (its path is the route's prefix then `rest`),
/// whose parsed path and query the upstream URL may share (see [`Route::upstream_uri_at`]).
/// The live path and the probe both call it.
pub(crate) fn route_filter_at<'r>(
    route: &'r Route,
    rest: &str,
    method: &Method,
    target: &Uri,
) -> Result<Accepted<'r>, Refusal> {
    accept(route, rest, method, || route.upstream_uri_at(target, rest))
}

/// [`route_filter_at`]'s checks, with the mirror's upstream URL built by `uri`.
fn accept<'r>(
    route: &'r Route,
    rest: &str,
    method: &Method,
    uri: impl FnOnce() -> Result<Uri, crate::routes::PathError>,
) -> Result<Accepted<'r>, Refusal> {
    if let Role::Analytics(protocol) = route.role {
        return analytics_gate(route, protocol, rest, method)
            .map(|rt| Accepted::Tracking(protocol, rt));
    }
    let uri = uri().map_err(|why| {
        tracing::debug!(route = %route.config.name, %why, "path refused");
        Refusal::BadPath
    })?;
    route_method(route, method)?;
    Ok(Accepted::Mirror(uri))
}

/// What the live path would do with a visitor's request, up to the point of sending: the same
/// filters ([`request_filter`], [`route_filter_at`]) and the same builders ([`route_request`],
/// [`prepare_analytics`]), without the cache, the rate limits, the metrics or the upstream. An analytics route's pseudonyms
/// come from a key drawn for this call alone, never the route's: they cannot be compared with
/// live ones. The request target must be in origin form (`/path?query`).
pub(crate) fn dry_run(
    config: &Config,
    router: &Router,
    own_paths: &[&str],
    visit: &Visit<'_>,
    now: SystemTime,
) -> DryRun {
    let is_own_page = |path: &str| own_paths.contains(&path);
    let admitted = request_filter(
        config,
        router,
        is_own_page,
        visit.method,
        visit.uri,
        Version::HTTP_11,
    );
    let (route, rest) = match admitted {
        Ok(Admitted::Route(route, rest)) => (route, rest),
        // tamis's own pages come before the routes: answered there, nothing sent.
        Ok(Admitted::OwnPage) => {
            return DryRun::Answered {
                route: None,
                refused: Refusal::OwnPage,
            }
        }
        Err(refused) => {
            return DryRun::Answered {
                route: None,
                refused,
            }
        }
    };
    let accepted = route_filter_at(route, rest, visit.method, visit.uri);
    let result = accepted.and_then(|accepted| match accepted {
        Accepted::Tracking(protocol, rt) => {
            if visit.body.len() > rt.max_body {
                return Err(Refusal::BodyTooLarge);
            }
            let rotate = route.config.analytics.as_ref().map(|a| a.rotate);
            let throwaway = analytics::Pseudonymizer::new(rotate.unwrap_or(DAY), None);
            // The probe's visitor is counted in empty location counts of its own: the live
            // ones would tell the prober how many visitors a region had, so a probe's answer
            // never carries a location (one visitor never opens a cell).
            let empty = crate::analytics::geo::Gate::new(2);
            let keys = analytics::visitor::Keys {
                pseudonyms: &throwaway,
                gate: &empty,
                geo: config.geo.as_deref(),
            };
            // The operator's secrets stay out of the dry run altogether: it writes their
            // placeholders where the real path writes them.
            let secrets = Secrets::Placeholders;
            prepare_analytics(route, rt, protocol, rest, visit, &keys, secrets, now)
                .map(|(up, tally, _)| (up, Some(tally)))
        }
        Accepted::Mirror(uri) => {
            let safe = is_safe(visit.method);
            if !safe && visit.body.len() > config.limits.max_body_bytes {
                return Err(Refusal::BodyTooLarge);
            }
            // A safe request's body is never read, so never sent.
            let body = if safe {
                Bytes::new()
            } else {
                visit.body.clone()
            };
            let mut headers = visit.headers.clone();
            let up = route_request(route, visit.method, uri, &mut headers, body);
            Ok((up, None))
        }
    });
    match result {
        Ok((up, tally)) => DryRun::Sent {
            route: route.clone(),
            up: Box::new(up),
            tally,
        },
        Err(refused) => DryRun::Answered {
            route: Some(route.clone()),
            refused,
        },
    }
}

/// A fallback rotation for a throwaway key (analytics routes always configure one).
pub(crate) const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// What [`dry_run`] found.
pub(crate) enum DryRun {
    /// The request the route would send, and what the analytics scrub did (analytics routes).
    Sent {
        route: Arc<Route>,
        /// Boxed: three times the size of the other variant.
        up: Box<UpstreamRequest>,
        tally: Option<analytics::Tally>,
    },
    /// tamis would answer itself, sending nothing (the route, when one matched).
    Answered {
        route: Option<Arc<Route>>,
        refused: Refusal,
    },
}

/// Headers that only make sense between the browser and tamis: a fill for the cache asks the
/// upstream for the whole, unconditional representation.
pub(crate) const CLIENT_ONLY: &[HeaderName] = &[
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Whether a route answers this method at all: GET and HEAD, anything on a pass-through route.
fn route_method(route: &Route, method: &Method) -> Result<(), Refusal> {
    if is_safe(method) || route.config.pass_through {
        return Ok(());
    }
    Err(Refusal::MethodNotAllowed("GET, HEAD"))
}

pub(crate) fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Whether this request on this route goes through the cache.
pub(crate) fn caches(route: &Route, method: &Method) -> bool {
    is_safe(method) && route.config.cache.enabled
}

/// What a static, tiles or fonts route sends upstream for a visitor's request (its method
/// already allowed by [`route_method`]), on a cache miss: the route's header policy, minus the
/// browser's own conditionals and ranges when the cache fills. The real path and the probe
/// both build their request here. An unsafe method (pass-through routes only) takes the
/// visitor's headers out of `visitor`, as nothing reads them afterwards; a safe one leaves them.
pub(crate) fn route_request(
    route: &Route,
    method: &Method,
    uri: Uri,
    visitor: &mut HeaderMap,
    body: Bytes,
) -> UpstreamRequest {
    if !is_safe(method) {
        // Scrubbed in place: no copy of what a pass-through route keeps. The route's upstream
        // `Host` goes where the visitor's was (the sender would add it otherwise).
        let visitor = std::mem::take(visitor);
        let headers = match &route.upstream_host {
            Some(host) => route.scrub_owned_to(visitor, host),
            None => route.scrub_owned(visitor),
        };
        return UpstreamRequest::new(method.clone(), uri, headers, body);
    }
    let mut headers = route.scrub(visitor);
    if !caches(route, method) {
        return UpstreamRequest::new(method.clone(), uri, headers, Bytes::new());
    }
    // The visitor's own conditionals and ranges are answered from the stored copy; the
    // upstream is asked for the plain representation. Usually none is there (a browser's
    // Range is the one the allowlist lets through): look before hashing each.
    if headers.keys().any(|n| CLIENT_ONLY.contains(n)) {
        for h in CLIENT_ONLY {
            headers.remove(h);
        }
    }
    // A HEAD miss fetches with GET, so the answer can be stored for both.
    UpstreamRequest::new(Method::GET, uri, headers, Bytes::new())
}

/// Whether an analytics route takes this request at all: one of its protocol's endpoints, with
/// a method the protocol uses. Checked before the body is read.
fn analytics_gate<'r>(
    route: &'r Route,
    protocol: Protocol,
    rest: &str,
    method: &Method,
) -> Result<&'r Arc<analytics::Runtime>, Refusal> {
    let Some(rt) = route.analytics.as_ref() else {
        return Err(Refusal::NotFound);
    };
    if !protocol.endpoints().contains(&rest) {
        return Err(Refusal::NotTrackingEndpoint);
    }
    if !protocol.allows(method) {
        let allow = if protocol.allows(&Method::GET) {
            "GET, POST"
        } else {
            "POST"
        };
        return Err(Refusal::MethodNotAllowed(allow));
    }
    Ok(rt)
}

/// One visitor request as the analytics preparation reads it.
pub(crate) struct Visit<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    /// Who sent it (tamis's own view: the peer, or what a trusted proxy said).
    pub client: IpAddr,
}

/// What an analytics route sends upstream for a tracking request that passed
/// [`analytics_gate`]: the route's header policy and what the route adds to it (the truncated
/// address, synthetic or truncated, and the location), then the protocol's scrub of query and
/// body, and the upstream URL. The real path calls it with the route's live `keys`
/// (pseudonym key, location counts), the probe with throwaway ones, so anything added here
/// reaches both; likewise the real path sends the operator's secrets, the probe their
/// placeholders. The tally says what the scrub did.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_analytics(
    route: &Route,
    rt: &analytics::Runtime,
    protocol: Protocol,
    rest: &str,
    visit: &Visit<'_>,
    keys: &analytics::visitor::Keys<'_>,
    secrets: Secrets,
    now: SystemTime,
) -> Result<
    (
        UpstreamRequest,
        analytics::Tally,
        crate::analytics::geo::Released,
    ),
    Refusal,
> {
    let mut headers = route.scrub(visit.headers);
    // tamis reads some protocols' answers for a few typed fields: unencoded, or not at all.
    if analytics::answer::wants_identity(protocol) {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    // What the upstream may learn of the visitor besides the payload (address, location):
    // worked out here from the real address, which goes no further.
    let visitor = analytics::visitor::observe(
        rt,
        keys,
        &route.config.name,
        || site_of(visit.uri, visit.headers),
        visit.client,
        visit
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        now,
    );
    analytics::visitor::add_headers(protocol, &visitor, &mut headers);
    let token = route
        .config
        .analytics
        .as_ref()
        .and_then(|a| a.token.as_ref());
    let placeholder = match secrets {
        Secrets::Real => None,
        Secrets::Placeholders => token.map(Secret::placeholder),
    };
    let ctx = analytics::Context {
        settings: &rt.settings,
        pseudonyms: keys.pseudonyms,
        route: &route.config.name,
        visitor: &visitor,
        matomo_token: match secrets {
            Secrets::Real => token,
            Secrets::Placeholders => placeholder.as_ref(),
        },
    };
    let mut tally = analytics::Tally::default();
    let query = visit.uri.query().unwrap_or("");
    let body = visit.body;
    let scrubbed: Result<(String, Bytes), analytics::ScrubError> = match protocol {
        Protocol::Ga4 => analytics::ga4::scrub(query, body, &ctx, now, &mut tally)
            .map(|(q, b)| (q, Bytes::from(b))),
        Protocol::Matomo => analytics::matomo::scrub(query, body, &ctx, now, &mut tally)
            .map(|(q, b)| (q, Bytes::from(b))),
        // The JSON protocols carry everything in the body; a query would only add identifiers.
        Protocol::Plausible => analytics::plausible::scrub(body, &ctx, &mut tally)
            .map(|b| (String::new(), Bytes::from(b))),
        Protocol::Umami => {
            analytics::umami::scrub(body, &ctx, &mut tally).map(|b| (String::new(), Bytes::from(b)))
        }
    };
    let (query, body) = match scrubbed {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(route = %route.config.name, error = %e, "tracking request refused");
            return Err(Refusal::MalformedTracking);
        }
    };
    // An endpoint's URL without a query is built once per route (Plausible's and Umami's
    // events never carry one).
    let uri = match route.endpoint_uri(rest) {
        Some(uri) if query.is_empty() => uri.clone(),
        _ => route
            .upstream_uri(rest, (!query.is_empty()).then_some(query.as_str()))
            .map_err(|_| Refusal::BadPath)?,
    };
    let mut method = visit.method.clone();
    // Matomo's token_auth never goes in a URL (logs keep URLs): a GET that must carry one is
    // sent as the equivalent form POST, which Matomo reads the same way ($_GET + $_POST).
    if protocol == Protocol::Matomo && method == Method::GET && !body.is_empty() {
        method = Method::POST;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    let up = UpstreamRequest::new(method, uri, headers, body);
    Ok((up, tally, visitor.location))
}

/// Which operator secrets an upstream request is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Secrets {
    /// The secrets themselves: the request is sent.
    Real,
    /// Their placeholders (`<operator token_auth>`): the request is shown (the probe), and the
    /// secrets never enter it.
    Placeholders,
}

/// The site a request was made to (its host, lower-case, without a port): part of a visitor's
/// pseudonymous key, so two sites behind one tamis never share one.
pub(crate) fn site_of(uri: &Uri, headers: &HeaderMap) -> String {
    let host = uri
        .host()
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let host = host
        .parse::<http::uri::Authority>()
        .map_or_else(|_| host.to_owned(), |a| a.host().to_owned());
    host.to_ascii_lowercase()
}

/// The request tamis sends upstream.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamRequest {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: Bytes,
}

impl UpstreamRequest {
    pub(crate) fn new(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> UpstreamRequest {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = method;
        parts.uri = uri;
        // `HeaderMap::new` (in `Request::new`) does not allocate, so the empty map replaced
        // here holds nothing to free: forgetting it skips a drop that walks its empty parts.
        std::mem::forget(std::mem::replace(&mut parts.headers, headers));
        UpstreamRequest { parts, body }
    }

    pub(crate) fn to_request(&self) -> Request<Full<Bytes>> {
        Request::from_parts(self.parts.clone(), Full::new(self.body.clone()))
    }

    pub(crate) fn into_request(self) -> Request<Full<Bytes>> {
        Request::from_parts(self.parts, Full::new(self.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_uri_bytes = 64\n\
             [[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\n\
             upstream = \"https://cdn.example/npm/\"\n\
             [[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\n\
             upstream = \"https://region1.google-analytics.com/\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    /// The status `request_filter` then `route_filter` give a request, as the live path and
    /// the probe both see it (0: taken).
    fn judged(config: &Config, router: &Router, method: Method, target: &str, v: Version) -> u16 {
        let uri: Uri = target.parse().unwrap();
        let own = |p: &str| p == "/.well-known/tamis";
        match request_filter(config, router, own, &method, &uri, v) {
            Err(r) => r.status().as_u16(),
            Ok(Admitted::OwnPage) => 1,
            Ok(Admitted::Route(route, rest)) => {
                match route_filter(route, rest, &method, uri.query()) {
                    Err(r) => r.status().as_u16(),
                    Ok(_) => 0,
                }
            }
        }
    }

    #[test]
    fn a_mounted_route_shares_the_target_and_asks_for_the_same_url() {
        let config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"same\"\nkind = \"static\"\nprefix = \"/post/\"\n\
             upstream = \"http://up.example:8080/post/\"\nforward_query = true\n\
             [[route]]\nname = \"noq\"\nkind = \"static\"\nprefix = \"/noq/\"\n\
             upstream = \"https://up.example/noq/\"\nforward_query = false\n\
             [[route]]\nname = \"moved\"\nkind = \"static\"\nprefix = \"/m/\"\n\
             upstream = \"https://up.example/elsewhere/\"\nforward_query = true\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let router = Router::new(&config);
        for target in [
            "/post/e",
            "/post/e?a=b",
            "/post/e?",
            "/post/",
            "/post/a/b.js?v=1&w=%20",
            "/post/a//b",
            "/post/../x",
            "/post/%2e%2e/x",
            "/post/a%2fb",
            "/post/a\\b",
            "/noq/x?drop=me",
            "/noq/x",
            "/m/x?y=z",
            "/m/..",
        ] {
            let uri: Uri = target.parse().unwrap();
            let (route, rest) = router.find(uri.path()).unwrap();
            let url = |a: Result<Accepted<'_>, Refusal>| match a {
                Ok(Accepted::Mirror(u)) => Ok(u.to_string()),
                Ok(Accepted::Tracking(..)) => Err(0),
                Err(r) => Err(r.status().as_u16()),
            };
            assert_eq!(
                url(route_filter_at(route, rest, &Method::POST, &uri)),
                url(route_filter(route, rest, &Method::POST, uri.query())),
                "{target}"
            );
        }
    }

    #[test]
    fn requests_are_refused_in_the_same_order_live_and_probed() {
        let config = config();
        let router = Router::new(&config);
        let h1 = Version::HTTP_11;
        let long = format!("/cdn/{}", "a".repeat(80));
        let cases: &[(Method, &str, Version, u16)] = &[
            (Method::CONNECT, "/cdn/x", h1, 400),
            (Method::GET, "http://evil.example/cdn/x", h1, 400),
            // HTTP/2 always carries an authority: only HTTP/1's absolute form is refused.
            (Method::GET, "http://site.example/cdn/x", Version::HTTP_2, 0),
            (Method::GET, &long, h1, 414),
            (Method::GET, "/.well-known/tamis", h1, 1),
            (Method::GET, "/nowhere", h1, 404),
            (Method::GET, "/cdn/x.js", h1, 0),
            // A mirror's bad path (400) comes before its method (405).
            (Method::POST, "/cdn/../x", h1, 400),
            (Method::POST, "/cdn/x.js", h1, 405),
            // A tracking route's endpoint (404) comes before its method (405).
            (Method::PUT, "/a/other", h1, 404),
            (Method::PUT, "/a/g/collect", h1, 405),
            (Method::POST, "/a/g/collect", h1, 0),
        ];
        for (method, target, v, status) in cases {
            assert_eq!(
                judged(&config, &router, method.clone(), target, *v),
                *status,
                "{method} {target}"
            );
        }
    }
}

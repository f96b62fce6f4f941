//! The request flow, top to bottom: route → scrub request → cache lookup → upstream → scrub
//! response → store → respond.
//!
//! The functions on the hot path taking a request by value return `impl Future` built from an
//! `async move` block instead of being `async fn`s: an `async fn` keeps each by-value argument
//! twice (the argument and the local it is moved into), and a future is copied whole each time
//! it is awaited, so every layer's copy of the request made all the futures above it larger.
//! Copying those futures was the largest single source of the forward's L1 misses, about a
//! third of them (see benches/RESULTS.md, the forward section).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::access_log;
use crate::body::{self, ProxyBody, Streamed};
use crate::cache::{
    self, Cache, CacheKey, Entry, Fill, FillGuard, FillState, Lookup, NotStored, Waited,
};
use crate::config::Config;
use crate::metrics::{CacheResult, Metrics, RouteMetrics, UpstreamFailure, NO_ROUTE};
use crate::routes::analytics::{self, Protocol};
use crate::routes::{Role, Route, Router};
use crate::secret::Secret;
use crate::upstream::{Upstream, UpstreamBody, UpstreamError};

mod respond;

/// Everything a request needs, built from a validated config. A reload builds a new one that
/// shares the cache and the metrics with the one it replaces (see [`crate::reload`]).
pub struct State {
    pub config: Config,
    pub router: Router,
    pub cache: Arc<Cache>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// The public page disclosing what each route does.
    pub transparency: Option<crate::transparency::Page>,
    /// The public dry-run probe (`transparency.probe`).
    pub probe: Option<crate::probe::Endpoint>,
    /// Indexed like the router's routes.
    route_metrics: Vec<RouteMetrics>,
}

/// Something in the config that could not be turned into a running state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl State {
    /// The paths tamis answers itself ahead of the routes (the transparency page, the probe).
    pub fn own_paths(&self) -> Vec<&str> {
        let page = self.transparency.as_ref().map(|p| p.path.as_str());
        let probe = self.probe.as_ref().map(|p| p.path.as_str());
        page.into_iter().chain(probe).collect()
    }

    /// The metrics of the route at `index` in the router.
    pub fn route_metrics(&self, index: usize) -> Option<&RouteMetrics> {
        self.route_metrics.get(index)
    }

    /// Builds routes, cache, upstream client and metrics.
    pub fn new(config: Config) -> Result<State, StateError> {
        let metrics = Arc::new(Metrics::new()?);
        let cache = Arc::new(Cache::new(
            config.cache.max_bytes,
            config.cache.max_object_bytes,
            metrics.eviction_hook(),
        ));
        let state = State::build(config, None, cache, metrics)?;
        state
            .metrics
            .config_loaded(&state.config.hash, state.cache.max_bytes());
        Ok(state)
    }

    /// The state for a reloaded `config`: same cache and metrics, routes rebuilt (an unchanged
    /// route keeps its cache entries, upstream permits and pseudonym key).
    pub fn next(&self, config: Config) -> Result<State, StateError> {
        State::build(
            config,
            Some(&self.router),
            self.cache.clone(),
            self.metrics.clone(),
        )
    }

    fn build(
        config: Config,
        previous: Option<&Router>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
    ) -> Result<State, StateError> {
        let router = Router::reloaded(&config, previous);
        let upstream = Upstream::new(&config.upstream)?;
        let route_metrics = router
            .routes()
            .iter()
            .map(|r| metrics.route(&r.config.name))
            .collect();
        let transparency = crate::transparency::Page::new(&config, &router);
        let probe = crate::probe::Endpoint::new(&config);
        Ok(State {
            transparency,
            probe,
            config,
            router,
            cache,
            upstream,
            metrics,
            route_metrics,
        })
    }
}

/// How a request was answered, for metrics, the log and `Cache-Status`.
struct Answer {
    response: Response<ProxyBody>,
    route: Option<usize>,
    cache: Option<CacheResult>,
    cache_status: Option<HeaderValue>,
}

impl Answer {
    fn plain(status: StatusCode, message: &'static str) -> Answer {
        Answer {
            response: error_response(status, message),
            route: None,
            cache: None,
            cache_status: None,
        }
    }

    fn with(mut self, result: CacheResult, cache_status: HeaderValue) -> Answer {
        self.cache = Some(result);
        self.cache_status = Some(cache_status);
        self
    }
}

/// A static `Cache-Status` value.
fn status_of(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

/// A `Cache-Status` for a forwarded request that was not stored.
fn status_not_stored(why: NotStored) -> HeaderValue {
    HeaderValue::from_str(&format!("tamis; fwd=miss; detail={}", why.as_str()))
        .unwrap_or(HeaderValue::from_static("tamis; fwd=miss"))
}

/// Answers one visitor request.
#[allow(clippy::manual_async_fn)] // See the module note.
pub fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        let start = Instant::now();
        let method = req.method().clone();
        // Only the access log needs the path (never the query): don't allocate it otherwise.
        let path = state.config.log.access.then(|| req.uri().path().to_owned());
        // Who the client is, for tamis's own use (rate limits, truncated addresses): never sent on.
        let proxies = &state.config.server.trusted_proxies;
        let client = crate::client_addr::resolve(peer, req.headers(), proxies);
        let id = path
            .as_ref()
            .map(|_| access_log::RequestId::new(peer, req.headers(), proxies));
        let answer = serve(&state, req, client).await;
        let elapsed = start.elapsed();
        let status = answer.response.status();

        let route_name = match answer.route {
            Some(i) => {
                let rm = &state.route_metrics[i];
                rm.observe(elapsed.as_secs_f64());
                if let Some(result) = answer.cache {
                    rm.lookup(result);
                    // Streamed bodies count themselves as they flow; in-memory ones are counted here.
                    if let http_body_util::Either::Left(full) = answer.response.body() {
                        let n = http_body::Body::size_hint(full).exact().unwrap_or(0);
                        if result.from_cache() {
                            rm.bytes_from_cache.inc_by(n);
                        } else {
                            rm.bytes_from_upstream.inc_by(n);
                        }
                    }
                }
                rm.request(status);
                state.router.routes()[i].config.name.as_str()
            }
            None => {
                state.metrics.request(NO_ROUTE, status);
                NO_ROUTE
            }
        };

        let mut response = answer.response;
        let pass_through = answer
            .route
            .and_then(|i| state.router.routes().get(i))
            .is_some_and(|r| r.config.pass_through);
        let cache_status = answer
            .cache_status
            .filter(|_| state.config.cache.status_header);
        respond::response_filter(&mut response, pass_through, cache_status);
        if let (Some(path), Some(id)) = (path, id) {
            let line = access_log::Line {
                id: &id,
                client,
                route: route_name,
                method: &method,
                path: &path,
                status,
                cache: answer.cache.map_or("-", CacheResult::as_str),
                elapsed,
            };
            access_log::write(state.config.log.client_ip, &line);
        }
        response
    }
}

#[allow(clippy::manual_async_fn)] // See the module note.
fn serve<'a>(
    state: &'a Arc<State>,
    req: Request<Incoming>,
    client: IpAddr,
) -> impl Future<Output = Answer> + 'a {
    async move {
        // 1. Only origin-form requests for our own paths: no proxying to a host the client names.
        if req.method() == Method::CONNECT {
            return Answer::plain(StatusCode::BAD_REQUEST, "CONNECT is not supported\n");
        }
        if req.version() < Version::HTTP_2 && req.uri().authority().is_some() {
            return Answer::plain(
                StatusCode::BAD_REQUEST,
                "absolute-form request targets are not accepted\n",
            );
        }

        let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > state.config.limits.max_uri_bytes {
            return Answer::plain(StatusCode::URI_TOO_LONG, "request target too long\n");
        }

        // tamis's own public pages, ahead of the routes: a route can never hide them.
        if let Some(probe) = &state.probe {
            if req.uri().path() == probe.path {
                let own = state.own_paths();
                // Boxed: rare, and inline its future would widen every request's.
                let answer = probe.answer(&state.config, &state.router, &own, req, client);
                return Answer {
                    response: Box::pin(answer).await,
                    route: None,
                    cache: None,
                    cache_status: None,
                };
            }
        }
        if let Some(page) = &state.transparency {
            if req.uri().path() == page.path {
                return Answer {
                    response: page.answer(
                        req.method(),
                        req.uri().query(),
                        req.headers(),
                        &state.metrics,
                    ),
                    route: None,
                    cache: None,
                    cache_status: None,
                };
            }
        }

        // 2. Route, and the upstream URL (confined under the route's base).
        let Some((route, rest)) = state.router.find(req.uri().path()) else {
            return Answer::plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let route = route.clone();
        // Per-client rate (in memory only): a scraper cannot bulk-download through us.
        if let Some(limiter) = &route.rate {
            if let Err(wait) = limiter.check(client) {
                let mut a = Answer::plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                a.response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                a.route = Some(route.index);
                return a;
            }
        }
        if let Role::Analytics(protocol) = route.role {
            let rest = rest.to_owned();
            let mut answer =
                Box::pin(serve_analytics(state, &route, protocol, &rest, req, client)).await;
            answer.route = Some(route.index);
            return answer;
        }
        let uri = route.upstream_uri(rest, req.uri().query());
        let mut answer = match uri {
            Ok(uri) => serve_route(state, &route, uri, req).await,
            Err(why) => {
                tracing::debug!(route = %route.config.name, %why, "path refused");
                Answer::plain(StatusCode::BAD_REQUEST, "bad path\n")
            }
        };
        answer.route = Some(route.index);
        answer
    }
}

/// What [`serve`] would do with a visitor's request, up to the point of sending: the same checks
/// in the same order and the same builders ([`route_request`], [`prepare_analytics`]), without
/// the cache, the rate limits, the metrics or the upstream. An analytics route's pseudonyms
/// come from a key drawn for this call alone, never the route's: they cannot be compared with
/// live ones. The request target must be in origin form (`/path?query`).
pub(crate) fn dry_run(
    config: &Config,
    router: &Router,
    own_paths: &[&str],
    visit: &Visit<'_>,
    now: SystemTime,
) -> DryRun {
    let local = |refused: Refused| DryRun::Answered {
        route: None,
        refused,
    };
    if *visit.method == Method::CONNECT {
        return local(Refused::new(
            StatusCode::BAD_REQUEST,
            "CONNECT is not supported\n",
        ));
    }
    let target_len = visit.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > config.limits.max_uri_bytes {
        return local(Refused::new(
            StatusCode::URI_TOO_LONG,
            "request target too long\n",
        ));
    }
    let path = visit.uri.path();
    // tamis's own pages come before the routes (see `serve`): answered here, nothing sent.
    if own_paths.contains(&path) {
        return local(Refused::new(
            StatusCode::OK,
            "answered by tamis itself (its own page): nothing is sent upstream\n",
        ));
    }
    let Some((route, rest)) = router.find(path) else {
        return local(Refused::new(StatusCode::NOT_FOUND, "not found\n"));
    };
    let result = if let Role::Analytics(protocol) = route.role {
        analytics_gate(route, protocol, rest, visit.method).and_then(|rt| {
            if visit.body.len() > rt.max_body {
                return Err(Refused::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large\n",
                ));
            }
            let rotate = route.config.analytics.as_ref().map(|a| a.rotate);
            let throwaway = analytics::Pseudonymizer::new(rotate.unwrap_or(DAY), None);
            // The probe's visitor is counted in empty location counts of its own: the live
            // ones would tell the prober how many visitors a region had, so a probe's answer
            // never carries a location (one visitor never opens a cell).
            let empty = crate::geo::Gate::new(2);
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
        })
    } else {
        route
            .upstream_uri(rest, visit.uri.query())
            .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "bad path\n"))
            .and_then(|uri| {
                route_method(route, visit.method)?;
                let safe = is_safe(visit.method);
                if !safe && visit.body.len() > config.limits.max_body_bytes {
                    return Err(Refused::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large\n",
                    ));
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
            })
    };
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
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

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
        refused: Refused,
    },
}

/// Headers that only make sense between the browser and tamis: a fill for the cache asks the
/// upstream for the whole, unconditional representation.
const CLIENT_ONLY: &[HeaderName] = &[
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Whether a route answers this method at all: GET and HEAD, anything on a pass-through route.
fn route_method(route: &Route, method: &Method) -> Result<(), Refused> {
    if is_safe(method) || route.config.pass_through {
        return Ok(());
    }
    Err(Refused {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "method not allowed\n",
        allow: Some("GET, HEAD"),
    })
}

fn is_safe(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Whether this request on this route goes through the cache.
fn caches(route: &Route, method: &Method) -> bool {
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
        // Scrubbed in place: no copy of what a pass-through route keeps.
        let headers = route.scrub_owned(std::mem::take(visitor));
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

#[allow(clippy::manual_async_fn)] // See the module note.
fn serve_route<'a>(
    state: &'a Arc<State>,
    route: &'a Arc<Route>,
    uri: Uri,
    mut req: Request<Incoming>,
) -> impl Future<Output = Answer> + 'a {
    async move {
        let method = req.method().clone();
        if let Err(refused) = route_method(route, &method) {
            return refused.answer();
        }
        let head_only = method == Method::HEAD;
        let caching = caches(route, &method);
        let uri = if caching {
            // 3. A fresh stored copy that varies on nothing answers at once: nothing goes
            //    upstream, so there is nothing to scrub or build.
            let key = CacheKey::primary(route.cache_id, uri);
            if let Some(entry) = state.cache.fresh(&key).await {
                return cached(&entry, req.headers(), head_only)
                    .with(CacheResult::Hit, status_of("tamis; hit"));
            }
            key.uri
        } else {
            uri
        };

        // 4. Scrub: what goes upstream is built from the route's policy.
        if !is_safe(&method) {
            return Box::pin(forward_unsafe(state, route, uri, req)).await;
        }
        let up = route_request(route, &method, uri, req.headers_mut(), Bytes::new());
        if !caching {
            return Box::pin(forward(state, route, up.into_request(), head_only))
                .await
                .with(CacheResult::Bypass, status_of("tamis; fwd=bypass"));
        }
        // Boxed: a miss goes upstream anyway, and inline the lookup's future would be copied
        // along with every request's, hits and forwards included.
        Box::pin(serve_cached(state, route, up, req.headers(), head_only)).await
    }
}

/// Step 5, the cache lookup for a request the fresh-copy shortcut did not answer. The
/// visitor's own conditionals and ranges are answered here, from the stored copy; `up` (built
/// by [`route_request`]) asks the upstream for the plain representation on a miss.
async fn serve_cached(
    state: &Arc<State>,
    route: &Arc<Route>,
    up: UpstreamRequest,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    let fill_headers = &up.parts.headers;
    let key = CacheKey::primary(route.cache_id, up.parts.uri.clone());
    // The last fill this request waited on, if it waited.
    let mut waited_on: Option<FillState> = None;
    for _ in 0..3 {
        let (stale, outcome) = match Box::pin(state.cache.lookup(&key, fill_headers)).await {
            Lookup::Fresh(entry) => {
                let (result, status) = if waited_on.is_some() {
                    (CacheResult::Coalesced, "tamis; fwd=miss; collapsed")
                } else {
                    (CacheResult::Hit, "tamis; hit")
                };
                return cached(&entry, client, head_only).with(result, status_of(status));
            }
            Lookup::StaleWhileRevalidate(entry, fill_key) => {
                spawn_refresh(
                    state.clone(),
                    route.clone(),
                    fill_key,
                    up.clone(),
                    entry.clone(),
                );
                return cached(&entry, client, head_only).with(
                    CacheResult::Stale,
                    status_of("tamis; hit; detail=stale-while-revalidate"),
                );
            }
            Lookup::Lead { stale, guard } => {
                // The fill waited on may have settled just as the wait ran out (its leader
                // on another thread): a fill publishes its result before it gives up the
                // lead, so having the lead now means that result is readable.
                match waited_on.as_ref().and_then(Cache::settled) {
                    Some(settled) => {
                        drop(guard);
                        (stale, Waited::Fill(settled))
                    }
                    None => {
                        return Box::pin(fill(state, route, &up, stale, guard, client, head_only))
                            .await;
                    }
                }
            }
            Lookup::Wait { stale, fill } => {
                waited_on = Some(fill.clone());
                (stale, Cache::wait(fill, state.upstream.timeout()).await)
            }
        };
        match outcome {
            Waited::Fill(Fill::Stored(entry)) if entry.matches(fill_headers) => {
                return cached(&entry, client, head_only).with(
                    CacheResult::Coalesced,
                    status_of("tamis; fwd=miss; collapsed"),
                );
            }
            Waited::Fill(Fill::Stored(_)) | Waited::Fill(Fill::NotStored) => break,
            Waited::Fill(Fill::Failed(status)) => {
                if let Some(stale) = stale.filter(|s| s.usable_on_error(Instant::now())) {
                    return cached(&stale, client, head_only).with(
                        CacheResult::Stale,
                        status_of("tamis; hit; detail=stale-if-error"),
                    );
                }
                return Answer::plain(status, "upstream unavailable\n").with(
                    CacheResult::Coalesced,
                    status_of("tamis; fwd=miss; collapsed"),
                );
            }
            Waited::Retry => continue,
        }
    }
    // The answer cannot be shared (or the fill kept failing to settle): fetch on our own.
    Box::pin(forward(state, route, up.into_request(), head_only))
        .await
        .with(CacheResult::Uncacheable, status_of("tamis; fwd=miss"))
}

/// Whether an analytics route takes this request at all: one of its protocol's endpoints, with
/// a method the protocol uses. Checked before the body is read.
fn analytics_gate<'r>(
    route: &'r Route,
    protocol: Protocol,
    rest: &str,
    method: &Method,
) -> Result<&'r Arc<analytics::Runtime>, Refused> {
    let Some(rt) = route.analytics.as_ref() else {
        return Err(Refused::new(StatusCode::NOT_FOUND, "not found\n"));
    };
    if !protocol.endpoints().contains(&rest) {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            "not a tracking endpoint\n",
        ));
    }
    if !protocol.allows(method) {
        let allow = if protocol.allows(&Method::GET) {
            "GET, POST"
        } else {
            "POST"
        };
        return Err(Refused {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed\n",
            allow: Some(allow),
        });
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
) -> Result<(UpstreamRequest, analytics::Tally, crate::geo::Released), Refused> {
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
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "malformed tracking request\n",
            ));
        }
    };
    let uri = route
        .upstream_uri(rest, (!query.is_empty()).then_some(query.as_str()))
        .map_err(|_| Refused::new(StatusCode::BAD_REQUEST, "bad path\n"))?;
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

/// An analytics tracking request: only the protocol's endpoints, body capped, query and body
/// scrubbed per protocol, never cached. The browser gets tamis's own answer
/// ([`analytics::answer`]): the upstream's status (from a short list, else its class's
/// fallback) and a fixed body or a few typed fields, never the upstream's bytes or headers.
async fn serve_analytics(
    state: &State,
    route: &Route,
    protocol: Protocol,
    rest: &str,
    req: Request<Incoming>,
    client: IpAddr,
) -> Answer {
    let bypass = || status_of("tamis; fwd=bypass");
    let rt = match analytics_gate(route, protocol, rest, req.method()) {
        Ok(rt) => rt,
        Err(refused) => return refused.answer(),
    };
    let (parts, body) = req.into_parts();
    let body = match body::read_limited(body, rt.max_body).await {
        Ok(b) => b,
        Err(e) => return body_refused(&e),
    };
    let visit = Visit {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        body: &body,
        client,
    };
    let now = SystemTime::now();
    let keys = analytics::visitor::Keys {
        pseudonyms: &rt.pseudonyms,
        gate: &rt.gate,
        geo: state.config.geo.as_deref(),
    };
    let prepared = prepare_analytics(route, rt, protocol, rest, &visit, &keys, Secrets::Real, now);
    let (up, tally, location) = match prepared {
        Ok(p) => p,
        Err(refused) => return refused.answer().with(CacheResult::Bypass, bypass()),
    };
    let rm = &state.route_metrics[route.index];
    rm.analytics(&tally);
    if rt.location != crate::geo::Precision::None {
        rm.location(&location);
    }
    let bulk = protocol == Protocol::Matomo
        && std::str::from_utf8(&body).is_ok_and(analytics::matomo::is_bulk);
    let success = analytics::answer::Success::of(protocol, bulk);
    let mut request = up.into_request();
    let (resp, _permit) = match send(state, route, &mut request).await {
        Ok(r) => r,
        Err(e) => return upstream_failed(&e).with(CacheResult::Bypass, bypass()),
    };
    let (parts, incoming) = resp.into_parts();
    // Read (capped, within the timeout) even when unused, so the connection can be reused; an
    // encoded answer is not decoded: unreadable, the minimal answer goes.
    let read = tokio::time::timeout(
        state.upstream.timeout(),
        body::read_limited(incoming, analytics::answer::MAX_ANSWER),
    )
    .await;
    let unencoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let read = match read {
        Ok(Ok(b)) if unencoded && success.reads_body() => Some(b),
        _ => None,
    };
    let own = analytics::answer::answer(success, parts.status, read.as_deref());
    Answer {
        response: analytics_response(own),
        route: None,
        cache: None,
        cache_status: None,
    }
    .with(CacheResult::Bypass, bypass())
}

/// The response for tamis's own answer to a tracking request: its status, type and body, and
/// headers of tamis's own only (no upstream header passes: any could carry an echo).
fn analytics_response(own: analytics::answer::Own) -> Response<ProxyBody> {
    let analytics::answer::Own {
        status,
        content_type,
        body: bytes,
    } = own;
    let length = bytes.len();
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    let h = response.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    // A 204 carries no Content-Length (RFC 9110 §8.6).
    if status != StatusCode::NO_CONTENT {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    // Each hit is its own: a cached answer would keep an image hit from being sent again.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The site a request was made to (its host, lower-case, without a port): part of a visitor's
/// pseudonymous key, so two sites behind one tamis never share one.
fn site_of(uri: &Uri, headers: &HeaderMap) -> String {
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

/// Why tamis answers a request itself and sends nothing upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Refused {
    fn new(status: StatusCode, message: &'static str) -> Refused {
        Refused {
            status,
            message,
            allow: None,
        }
    }

    fn answer(self) -> Answer {
        let mut a = Answer::plain(self.status, self.message);
        if let Some(allow) = self.allow {
            a.response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        a
    }
}

impl UpstreamRequest {
    fn new(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> UpstreamRequest {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = method;
        parts.uri = uri;
        parts.headers = headers;
        UpstreamRequest { parts, body }
    }

    pub(crate) fn to_request(&self) -> Request<Full<Bytes>> {
        Request::from_parts(self.parts.clone(), Full::new(self.body.clone()))
    }

    fn into_request(self) -> Request<Full<Bytes>> {
        Request::from_parts(self.parts, Full::new(self.body))
    }
}

/// Refreshes a stale-while-revalidate entry in the background; one refresh per key, since it
/// must take the key's fill lead first.
fn spawn_refresh(
    state: Arc<State>,
    route: Arc<Route>,
    key: CacheKey,
    up: UpstreamRequest,
    stale: Arc<Entry>,
) {
    tokio::spawn(async move {
        let Some(guard) = state.cache.try_lead(&key) else {
            return;
        };
        let nobody = HeaderMap::new();
        fill(&state, &route, &up, Some(stale), guard, &nobody, true).await;
    });
}

/// Scrubs an upstream response's headers and maps its `Location` back under the route (see
/// [`respond::upstream_response_filter`]); `None` when it redirects outside the route (never
/// handed to the browser), which is counted and logged.
fn scrub_response(
    state: &State,
    route: &Route,
    requested: &Uri,
    headers: HeaderMap,
) -> Option<HeaderMap> {
    match respond::upstream_response_filter(route, requested, headers) {
        Ok(headers) => Some(headers),
        Err(_) => {
            redirected_outside(state, route);
            None
        }
    }
}

fn redirected_outside(state: &State, route: &Route) {
    state
        .metrics
        .upstream_error(&state.route_metrics[route.index], UpstreamFailure::Redirect);
    tracing::warn!(route = %route.config.name, "upstream redirected outside its route; answering 502");
}

/// The one fetch for a key: revalidates the stale copy if there is one, stores what may be
/// stored, falls back on the stale copy when the upstream fails and that is allowed.
async fn fill(
    state: &State,
    route: &Route,
    up: &UpstreamRequest,
    stale: Option<Arc<Entry>>,
    guard: FillGuard<'_>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    let rm = &state.route_metrics[route.index];
    let revalidating = stale.as_ref().filter(|s| s.can_revalidate()).cloned();
    let mut request = up.to_request();
    if let Some(s) = &revalidating {
        // tamis's own validators, from the upstream's earlier answer: never the browser's.
        if let Some(etag) = &s.upstream_etag {
            request
                .headers_mut()
                .insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = &s.last_modified {
            request
                .headers_mut()
                .insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let fallback =
        |stale: &Option<Arc<Entry>>| stale.clone().filter(|s| s.usable_on_error(Instant::now()));

    let deadline = tokio::time::Instant::now() + state.upstream.timeout();
    // Held until the body is buffered: the route's cap counts whole exchanges.
    let (resp, _permit) = match send(state, route, &mut request).await {
        Ok(resp) => resp,
        Err(e) => {
            let message = if e.status() == StatusCode::GATEWAY_TIMEOUT {
                "upstream timed out\n"
            } else {
                "upstream unavailable\n"
            };
            let a = fill_failed(guard, e.status(), message, &stale, client, head_only).await;
            return retry_after(a, &e);
        }
    };
    let (parts, incoming) = resp.into_parts();
    let status = parts.status;
    let received = SystemTime::now();

    // The stored copy is still good: refresh its headers and lifetime, keep its body.
    if status == StatusCode::NOT_MODIFIED {
        if let Some(s) = &revalidating {
            return refreshed(
                state,
                route,
                up,
                s,
                &parts.headers,
                received,
                guard,
                client,
                head_only,
            )
            .await;
        }
    }
    // A server error with a usable stale copy: serve that instead (stale-if-error).
    if status.is_server_error() {
        if let Some(s) = fallback(&stale) {
            guard.finish(Fill::Failed(status), &[]).await;
            return cached(&s, client, head_only).with(
                CacheResult::Stale,
                status_of("tamis; fwd=stale; detail=stale-if-error"),
            );
        }
    }

    let decision = cache::storability(
        &up.parts,
        status,
        &route.cache_view(&parts.headers),
        received,
        &route.rules,
        |n| route.varyable(n),
    );
    // 5. Scrub the response before anything else looks at it.
    let Some(mut headers) = scrub_response(state, route, &up.parts.uri, parts.headers) else {
        guard
            .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
            .await;
        return Answer::plain(StatusCode::BAD_GATEWAY, "upstream redirected elsewhere\n");
    };
    let max = state.cache.max_object_bytes();
    let decision = match decision {
        Ok(_) if content_length(&headers).is_some_and(|n| n > max) => Err(NotStored::TooLarge),
        d => d,
    };
    let rendition = respond::rendition(route, &headers);
    let body = if rendition == cache::Rendition::Stylesheet {
        // Font CSS: always rewritten whole, stored or not; never served as the upstream sent it.
        match tokio::time::timeout_at(
            deadline,
            Box::pin(rewritten(route, status, &mut headers, incoming, max)),
        )
        .await
        {
            Ok(Some(body)) => body,
            _ => {
                state.metrics.upstream_error(rm, UpstreamFailure::Body);
                guard
                    .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
                    .await;
                return Answer::plain(
                    StatusCode::BAD_GATEWAY,
                    "upstream stylesheet could not be rewritten\n",
                );
            }
        }
    } else {
        if let Err(why) = decision {
            guard
                .not_stored(why, status, state.config.cache.hit_for_miss)
                .await;
            return streamed(
                state,
                route,
                status,
                headers,
                Vec::new(),
                Some(incoming),
                head_only,
            )
            .with(CacheResult::Uncacheable, status_not_stored(why));
        }
        // 6. Buffer (up to max_object_bytes) and store.
        match tokio::time::timeout_at(deadline, buffer(incoming, max)).await {
            Ok(Ok(Buffered::Complete(body))) => body,
            Ok(Ok(Buffered::TooLarge(prefix, rest))) => {
                guard
                    .not_stored(NotStored::TooLarge, status, state.config.cache.hit_for_miss)
                    .await;
                return streamed(state, route, status, headers, prefix, Some(rest), head_only)
                    .with(
                        CacheResult::Uncacheable,
                        status_not_stored(NotStored::TooLarge),
                    );
            }
            Ok(Err(e)) => {
                state.metrics.upstream_error(rm, UpstreamFailure::Body);
                tracing::warn!(route = %route.config.name, error = %e, "upstream body failed");
                return fill_failed(
                    guard,
                    StatusCode::BAD_GATEWAY,
                    "upstream body failed\n",
                    &stale,
                    client,
                    head_only,
                )
                .await;
            }
            Err(_) => {
                state.metrics.upstream_error(rm, UpstreamFailure::Timeout);
                tracing::warn!(route = %route.config.name, "upstream body timed out");
                return fill_failed(
                    guard,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out\n",
                    &stale,
                    client,
                    head_only,
                )
                .await;
            }
        }
    };
    let storable = match decision {
        Ok(s) => s,
        Err(why) => {
            // Only rewritten bodies get here: served once, not kept.
            guard
                .not_stored(why, status, state.config.cache.hit_for_miss)
                .await;
            let once = Entry::new(
                status,
                headers,
                body,
                rendition,
                cache::Lifetimes::default(),
                Vec::new(),
                std::time::Duration::ZERO,
                !route.config.pass_through,
            );
            return cached(&once, client, head_only)
                .with(CacheResult::Uncacheable, status_not_stored(why));
        }
    };
    if !route.config.pass_through {
        sane_browser_lifetime(&mut headers, &storable.lifetimes);
    }
    if status == StatusCode::OK {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let entry = Arc::new(Entry::new(
        status,
        headers,
        body,
        rendition,
        storable.lifetimes,
        cache::vary_values(&storable.vary, &up.parts.headers),
        state.config.cache.keep,
        !route.config.pass_through,
    ));
    guard
        .finish(Fill::Stored(entry.clone()), &storable.vary)
        .await;
    // A stale copy replaced by a new one: the body came from the upstream, as on a miss.
    let cache_status = if stale.is_some() {
        "tamis; fwd=stale; fwd-status=200; stored"
    } else {
        "tamis; fwd=miss; stored"
    };
    cached(&entry, client, head_only).with(CacheResult::Miss, status_of(cache_status))
}

/// A fill that failed: the waiters are told, and this request falls back on its stale copy
/// when stale-if-error allows, else answers the failure.
async fn fill_failed(
    guard: FillGuard<'_>,
    status: StatusCode,
    message: &'static str,
    stale: &Option<Arc<Entry>>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    guard.finish(Fill::Failed(status), &[]).await;
    match stale.clone().filter(|s| s.usable_on_error(Instant::now())) {
        Some(s) => cached(&s, client, head_only).with(
            CacheResult::Stale,
            status_of("tamis; fwd=stale; detail=stale-if-error"),
        ),
        None => {
            Answer::plain(status, message).with(CacheResult::Miss, status_of("tamis; fwd=miss"))
        }
    }
}

/// Sends `request` (taken out) upstream through the route's circuit breaker and within its cap
/// on concurrent upstream requests (waiting for a turn counts against the upstream timeout).
/// A GET or HEAD whose connection failed before any answer is tried again, at most
/// `upstream.retries` times. Records the upstream metrics and logs a failure.
async fn send(
    state: &State,
    route: &Route,
    request: &mut Request<Full<Bytes>>,
) -> Result<
    (
        Response<UpstreamBody>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    UpstreamError,
> {
    let sent = Instant::now();
    let result = 'send: {
        if let Err(open) = route.breaker.admit(sent) {
            break 'send Err(UpstreamError::CircuitOpen(open.0));
        }
        let permit = match &route.permits {
            None => None,
            Some(sem) => {
                // Boxed: only routes with a cap wait here; inline, the wait would widen every
                // request's future.
                let turn =
                    tokio::time::timeout(state.upstream.timeout(), sem.clone().acquire_owned());
                match Box::pin(turn).await {
                    Ok(Ok(p)) => Some(p),
                    _ => break 'send Err(UpstreamError::Timeout(state.upstream.timeout())),
                }
            }
        };
        let idempotent = matches!(*request.method(), Method::GET | Method::HEAD);
        let retries = if idempotent {
            state.config.upstream.retries
        } else {
            0
        };
        let mut attempt = 0;
        let result = loop {
            // A copy only while another attempt may follow; the last one sends the original.
            // Boxed for the same reason: most requests are never retried.
            let mut copy = (attempt < retries).then(|| Box::new(clone_request(request)));
            let this = match copy.as_mut() {
                Some(c) => c,
                None => &mut *request,
            };
            match state.upstream.send(this).await {
                Err(e) if e.retryable() && attempt < retries => {
                    attempt += 1;
                    tracing::debug!(route = %route.config.name, error = %e, attempt, "retrying upstream request");
                    tokio::time::sleep(std::time::Duration::from_millis(25 * u64::from(attempt)))
                        .await;
                }
                other => break other,
            }
        };
        let ok = result.as_ref().is_ok_and(|r| !r.status().is_server_error());
        if route.breaker.record(ok, Instant::now()) {
            let (failures, cooldown) = route.breaker.settings();
            tracing::warn!(
                route = %route.config.name,
                failures,
                ?cooldown,
                "upstream failing: circuit open, answering from the cache or 503 without asking it"
            );
        }
        result.map(|r| (r, permit))
    };
    let rm = &state.route_metrics[route.index];
    match &result {
        Ok((resp, _)) => {
            let took = sent.elapsed().as_secs_f64();
            state.metrics.upstream_response(rm, resp.status(), took);
        }
        Err(e) => {
            state.metrics.upstream_error(rm, e.failure());
            log_failure(route, e);
        }
    }
    result
}

fn log_failure(route: &Route, e: &UpstreamError) {
    // An open circuit was logged once when it opened.
    if matches!(e, UpstreamError::CircuitOpen(_)) {
        tracing::debug!(route = %route.config.name, error = %e, "upstream not asked");
    } else {
        tracing::warn!(route = %route.config.name, error = %e, "upstream request failed");
    }
}

/// A copy of a request whose body is already in memory (for a retry).
fn clone_request(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut out = Request::new(r.body().clone());
    *out.method_mut() = r.method().clone();
    *out.uri_mut() = r.uri().clone();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}

/// A failed upstream exchange as the visitor sees it: 502, 503 (with `Retry-After` when the
/// circuit is open) or 504.
fn upstream_failed(e: &UpstreamError) -> Answer {
    let message = match e.status() {
        StatusCode::GATEWAY_TIMEOUT => "upstream timed out\n",
        _ => "upstream unavailable\n",
    };
    retry_after(Answer::plain(e.status(), message), e)
}

/// Adds `Retry-After` to an error answer for an open circuit (a stale copy served instead
/// keeps its own headers).
fn retry_after(mut a: Answer, e: &UpstreamError) -> Answer {
    if let Some(d) = e.retry_after() {
        if a.response.status() == StatusCode::SERVICE_UNAVAILABLE {
            a.response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
    }
    a
}

/// Reads a stylesheet that must be rewritten and rewrites it (see [`Route::rewrite`]); `None`
/// when it cannot be (too large, an unknown coding or charset, a partial answer, upstream
/// failure): the caller answers 502, never the body as it came.
async fn rewritten(
    route: &Route,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: UpstreamBody,
    max: u64,
) -> Option<Bytes> {
    let Ok(Buffered::Complete(raw)) = buffer(body, max).await else {
        return None;
    };
    route.rewrite(status, headers, &raw, max)
}

/// Browsers get a lifetime even when the upstream gave tamis none it could pass on (heuristic,
/// negative caching, min_ttl): `max-age` counts from the response's birth, as `Age` does.
fn sane_browser_lifetime(headers: &mut HeaderMap, lifetimes: &cache::Lifetimes) {
    if headers.contains_key(header::CACHE_CONTROL) || headers.contains_key(header::EXPIRES) {
        return;
    }
    let lifetime = (lifetimes.fresh_for + lifetimes.age).as_secs();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={lifetime}")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

/// The upstream answered 304 to tamis's conditional request: the stored headers are updated
/// from it (RFC 9111 §4.3.4) and the lifetime recomputed; the body is kept.
#[allow(clippy::too_many_arguments)]
async fn refreshed(
    state: &State,
    route: &Route,
    up: &UpstreamRequest,
    stale: &Entry,
    not_modified: &HeaderMap,
    received: SystemTime,
    guard: FillGuard<'_>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    // What the visitor gets: the stored answer with only its validators and freshness taken
    // from the 304, filtered as a fresh answer's headers are; how the body is read stays.
    let headers = match respond::refreshed_head(route, &up.parts.uri, stale, not_modified) {
        Ok(h) => h,
        Err(unfit) => {
            let message = match unfit {
                respond::Unfit::Outside => {
                    redirected_outside(state, route);
                    "upstream redirected elsewhere\n"
                }
                respond::Unfit::Inconsistent => {
                    tracing::warn!(route = %route.config.name, "a 304 would change how the stored body is read; answering 502");
                    "upstream answer inconsistent with the stored one\n"
                }
            };
            guard
                .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
                .await;
            return Answer::plain(StatusCode::BAD_GATEWAY, message);
        }
    };
    // The upstream's view of the stored response, for the cache's decision alone: its own
    // ETag, and every header of the 304 (the stored Cache-Control may be tamis's own browser
    // lifetime; the 304 brings the real one).
    let mut merged = stale.headers.clone();
    match &stale.upstream_etag {
        Some(etag) => merged.insert(header::ETAG, etag.clone()),
        None => merged.remove(header::ETAG),
    };
    for name in not_modified.keys() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        merged.remove(name);
        for v in not_modified.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    if !not_modified.contains_key(header::AGE) {
        merged.remove(header::AGE);
    }
    let decision = cache::storability(
        &up.parts,
        stale.status,
        &route.cache_view(&merged),
        received,
        &route.rules,
        |n| route.varyable(n),
    );
    let status_304 = "tamis; fwd=stale; fwd-status=304; stored";
    match decision {
        Ok(storable) => {
            let entry = Arc::new(Entry::new(
                stale.status,
                headers,
                stale.body.clone(),
                stale.rendition,
                storable.lifetimes,
                cache::vary_values(&storable.vary, &up.parts.headers),
                state.config.cache.keep,
                !route.config.pass_through,
            ));
            guard
                .finish(Fill::Stored(entry.clone()), &storable.vary)
                .await;
            cached(&entry, client, head_only).with(CacheResult::Revalidated, status_of(status_304))
        }
        Err(why) => {
            // Valid for this answer, but the refreshed headers forbid keeping it.
            guard
                .not_stored(why, stale.status, state.config.cache.hit_for_miss)
                .await;
            let once = Entry::new(
                stale.status,
                headers,
                stale.body.clone(),
                stale.rendition,
                stale.lifetimes,
                Vec::new(),
                std::time::Duration::ZERO,
                !route.config.pass_through,
            );
            cached(&once, client, head_only).with(
                CacheResult::Revalidated,
                HeaderValue::from_str(&format!(
                    "tamis; fwd=stale; fwd-status=304; detail={}",
                    why.as_str()
                ))
                .unwrap_or(status_of("tamis; fwd=stale")),
            )
        }
    }
}

/// Forwards without the cache and streams the answer back.
#[allow(clippy::manual_async_fn)] // See the module note.
fn forward<'a>(
    state: &'a State,
    route: &'a Route,
    mut request: Request<Full<Bytes>>,
    head_only: bool,
) -> impl Future<Output = Answer> + 'a {
    async move {
        let requested = request.uri().clone();
        let (resp, _permit) = match send(state, route, &mut request).await {
            Ok(resp) => resp,
            Err(e) => return upstream_failed(&e),
        };
        let (parts, incoming) = resp.into_parts();
        let Some(mut headers) = scrub_response(state, route, &requested, parts.headers) else {
            return Answer::plain(StatusCode::BAD_GATEWAY, "upstream redirected elsewhere\n");
        };
        if route.rewrites(&headers) {
            let max = state.cache.max_object_bytes();
            return match tokio::time::timeout(
                state.upstream.timeout(),
                Box::pin(rewritten(route, parts.status, &mut headers, incoming, max)),
            )
            .await
            {
                Ok(Some(body)) => {
                    let mut response = Response::new(if head_only {
                        body::empty()
                    } else {
                        body::full(body)
                    });
                    *response.status_mut() = parts.status;
                    *response.headers_mut() = headers;
                    Answer {
                        response,
                        route: None,
                        cache: None,
                        cache_status: None,
                    }
                }
                _ => Answer::plain(
                    StatusCode::BAD_GATEWAY,
                    "upstream stylesheet could not be rewritten\n",
                ),
            };
        }
        streamed(
            state,
            route,
            parts.status,
            headers,
            Vec::new(),
            Some(incoming),
            head_only,
        )
    }
}

/// Pass-through routes only: forwards an unsafe method with its body, then drops what the
/// cache holds for that URL when it succeeded (RFC 9111 §4.4).
#[allow(clippy::manual_async_fn)] // See the module note.
fn forward_unsafe<'a>(
    state: &'a State,
    route: &'a Route,
    uri: Uri,
    req: Request<Incoming>,
) -> impl Future<Output = Answer> + 'a {
    async move {
        let (mut parts, body) = req.into_parts();
        let body = match body::read_limited(body, state.config.limits.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return body_refused(&e),
        };
        // Only a caching route can hold a copy to drop.
        let stored = route.config.cache.enabled.then(|| uri.clone());
        let up = route_request(route, &parts.method, uri, &mut parts.headers, body);
        drop(parts);
        let answer = forward(state, route, up.into_request(), false).await;
        let status = answer.response.status();
        if let Some(uri) = stored.filter(|_| status.is_success() || status.is_redirection()) {
            Box::pin(state.cache.invalidate(route.cache_id, &uri)).await;
        }
        answer.with(CacheResult::Bypass, status_of("tamis; fwd=bypass"))
    }
}

/// 413 for a visitor's body over the limit, 400 for one that broke off.
fn body_refused(e: &body::ReadError) -> Answer {
    match e {
        body::ReadError::TooLarge(_) => {
            Answer::plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
        }
        body::ReadError::Failed(_) => {
            Answer::plain(StatusCode::BAD_REQUEST, "request body unreadable\n")
        }
    }
}

/// Streams an answer tamis does not keep. Its upstream's ETag stays behind: tamis answers a
/// browser's conditionals only from its own copies, never forwards them, so an ETag here could
/// only serve as an identifier the browser stores (served ETags are tamis's own, from the
/// bytes).
fn streamed(
    state: &State,
    route: &Route,
    status: StatusCode,
    mut headers: HeaderMap,
    prefix: Vec<Bytes>,
    rest: Option<UpstreamBody>,
    head_only: bool,
) -> Answer {
    if !route.config.pass_through {
        headers.remove(header::ETAG);
    }
    let rm = &state.route_metrics[route.index];
    let idle = state.upstream.timeout();
    let body = if head_only {
        body::empty()
    } else {
        ProxyBody::Right(Streamed::new(
            prefix,
            rest,
            idle,
            rm.bytes_from_upstream.clone(),
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Answer {
        response,
        route: None,
        cache: None,
        cache_status: None,
    }
}

enum Buffered {
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest still to stream.
    TooLarge(Vec<Bytes>, UpstreamBody),
}

/// Reads a body into memory unless it grows past `max`.
async fn buffer(mut body: UpstreamBody, max: u64) -> Result<Buffered, hyper::Error> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        chunks.push(data);
        if total > max {
            return Ok(Buffered::TooLarge(chunks, body));
        }
    }
    // Always one exact-size allocation: a chunk can be a slice of a larger read buffer, and
    // keeping it would pin that whole buffer in the cache for the entry's lifetime.
    let mut all = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for c in &chunks {
        all.extend_from_slice(c);
    }
    Ok(Buffered::Complete(Bytes::from(all)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Answers from a stored entry (see [`respond::from_store`]).
fn cached(entry: &Entry, client: &HeaderMap, head_only: bool) -> Answer {
    Answer {
        response: respond::from_store(entry, client, head_only, Instant::now()),
        route: None,
        cache: None,
        cache_status: None,
    }
}

/// A short plain-text answer that no cache keeps.
pub fn error_response(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Like every answer: never read as anything but the text it is (a quirks-mode page would
    // apply any same-origin body as a stylesheet otherwise).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async function returns, read from its type: never called.
    fn future_size<Args, F: Future>(_: impl FnOnce(Args) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is copied whole each time it is awaited or boxed: at 4.4 KB for
    /// `handle` and 4.5 KB for `forward_unsafe` these copies caused about a third of the
    /// forward's L1 misses. A by-value argument to an `async fn` is kept twice (argument and local), which
    /// is how they grew; these bounds catch the next such argument.
    #[test]
    fn request_futures_stay_small() {
        let sizes = [
            ("handle", future_size(|(s, r, p)| handle(s, r, p)), 3 * 1024),
            (
                "forward_unsafe",
                future_size(|(s, r, u, q): (&'static State, &'static Route, _, _)| {
                    forward_unsafe(s, r, u, q)
                }),
                3 * 1024,
            ),
            (
                "forward",
                future_size(|(s, r, q, h): (&'static State, &'static Route, _, _)| {
                    forward(s, r, q, h)
                }),
                2 * 1024,
            ),
        ];
        for (name, size, bound) in sizes {
            assert!(
                size <= bound,
                "{name}'s future is {size} bytes, over {bound}"
            );
        }
    }
}

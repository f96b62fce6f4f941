//! One visitor request, phase by phase (pingora's names), top to bottom in `handle`,
//! `serve` and `serve_route`; each phase is a function in the module named here:
//!
//! | # | phase | where |
//! | --- | --- | --- |
//! | 1 | request_filter: CONNECT, absolute-form, target length, own pages, the route | `crate::egress::request_filter` |
//! | 2 | rate_limit (live only) | `rate_limit` here |
//! | 3 | route_filter: a mirror's path (400) before its method (405); a tracking endpoint (404) before its method (405) | `crate::egress::route_filter` |
//! | 4 | cache_hit: a fresh entry that varies on nothing (for a mirror whose URL is base + path, looked up by the key's parts ahead of 3: what 3 refuses was never stored; for any other, in memory or else on disk) | `serve` and `serve_route` here, [`crate::cache::Cache::fresh_at`], [`crate::cache::Cache::fresh_or_disk`] |
//! | 5 | upstream_request_filter: what the route sends | `crate::egress::route_request`, `crate::egress::prepare_analytics` |
//! | 6 | cache_lookup: fresh, stale-while-revalidate, lead or wait | `cached::serve_cached` |
//! | 7 | send: breaker, permits, retries | `forward::send` |
//! | 8 | upstream_response_filter: the allowlist, Link, CSP, nosniff, Location | `respond::upstream_response_filter` |
//! | 9 | store: storability, rewrite or buffer, the entry; a 304's refresh | `cached::fill`, `cached::refreshed` |
//! | 10 | response_filter: every answer, whatever its source | `respond::response_filter` |
//! | 11 | logging: metrics and the access line | `logging` here |
//!
//! The dry-run probe runs phases 1, 3 and 5 through the same functions
//! (`crate::egress::dry_run`).
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
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::cache::CacheKey;
use crate::metrics::{CacheResult, NO_ROUTE};
use crate::routes::Route;

pub mod access_log;
mod analytics;
mod cached;
mod forward;
mod respond;

pub use crate::state::{State, StateError};

use crate::egress::{self, caches, is_safe, route_request, Accepted, Admitted};
use crate::refusal::Refusal;
use analytics::serve_analytics;
use cached::serve_cached;
use forward::forward_unsafe;
use respond::{cached, status_of, Answer};

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
        let client = crate::policy::client_addr::resolve(peer, req.headers(), proxies);
        let id = path
            .as_ref()
            .map(|_| access_log::RequestId::new(peer, req.headers(), proxies));
        let mut answer = serve(&state, req, client, start).await;
        // 10. response_filter: the last step of every answer, whatever produced it.
        let pass_through = answer
            .route
            .and_then(|i| state.router.routes().get(i))
            .is_some_and(|r| r.config.pass_through);
        let cache_status = answer
            .cache_status
            .take()
            .filter(|_| state.config.cache.status_header);
        respond::response_filter(
            &mut answer.response,
            pass_through,
            cache_status,
            answer.prepared,
        );
        // 11. logging: metrics and the access line.
        let request = Logged {
            method: &method,
            path,
            id,
            client,
            elapsed: start.elapsed(),
        };
        logging(&state, &answer, request);
        answer.response
    }
}

/// What the access line says of the request.
struct Logged<'a> {
    method: &'a Method,
    /// Only when the access log is on.
    path: Option<String>,
    id: Option<access_log::RequestId>,
    client: IpAddr,
    elapsed: std::time::Duration,
}

/// The last phase: the route's metrics (or the no-route ones) and the access line.
fn logging(state: &State, answer: &Answer, request: Logged<'_>) {
    let status = answer.response.status();
    let route_name = match answer.route {
        Some(i) => {
            let rm = &state.route_metrics[i];
            rm.observe(request.elapsed.as_secs_f64());
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
    if let (Some(path), Some(id)) = (request.path, request.id) {
        let line = access_log::Line {
            id: &id,
            client: request.client,
            route: route_name,
            method: request.method,
            path: &path,
            status,
            cache: answer.cache.map_or("-", CacheResult::as_str),
            elapsed: request.elapsed,
        };
        access_log::write(state.config.log.client_ip, &line);
    }
}

#[allow(clippy::manual_async_fn)] // See the module note.
fn serve<'a>(
    state: &'a Arc<State>,
    req: Request<Incoming>,
    client: IpAddr,
    start: Instant,
) -> impl Future<Output = Answer> + 'a {
    async move {
        // 1. request_filter: the checks every request passes, the probe's included.
        let admitted = egress::request_filter(
            &state.config,
            &state.router,
            |path| state.is_own_page(path),
            req.method(),
            req.uri(),
            req.version(),
        );
        let (route, rest) = match admitted {
            Ok(Admitted::Route(route, rest)) => (route, rest),
            Ok(Admitted::OwnPage) => return Box::pin(own_page(state, req, client)).await,
            Err(refused) => return Answer::own(refused),
        };
        let route = route.clone();
        // 2. rate_limit (live requests only).
        if let Err(wait) = rate_limit(&route, client) {
            let mut too_many = respond::too_many_requests(wait);
            too_many.route = Some(route.index);
            return too_many;
        }
        // 4. cache_hit, for a mirror whose upstream URL is its base and the visitor's path:
        //    looked up by the key's parts, before route_filter builds that URL. What
        //    route_filter would refuse (a path confinement refuses, an unsafe method) was
        //    never stored under a key these parts can match, so it finds nothing here.
        let method = req.method();
        if caches(&route, method) {
            if let Some(parts) = route.key_parts(rest, req.uri().query()) {
                // The request's arrival is the moment the copy is judged fresh at, and its
                // `Age` counted to: one clock reading for all three.
                if let Some(entry) = state.cache.fresh_at(parts, start).await {
                    let head_only = method == Method::HEAD;
                    return respond::hit(&entry, req.headers(), head_only, start, route.index);
                }
            }
        }
        // 3. route_filter: what the route takes, before any body is read.
        let accepted = egress::route_filter_at(&route, rest, req.method(), req.uri());
        let mut answer = match accepted {
            Ok(Accepted::Tracking(protocol, rt)) => {
                let rest = rest.to_owned();
                Box::pin(serve_analytics(
                    state, &route, protocol, rt, &rest, req, client,
                ))
                .await
            }
            Ok(Accepted::Mirror(uri)) => serve_route(state, &route, uri, req).await,
            Err(refused) => Answer::own(refused),
        };
        answer.route = Some(route.index);
        answer
    }
}

/// Per-client rate (in memory only): a scraper cannot bulk-download through tamis. How long
/// to wait when over it.
fn rate_limit(route: &Route, client: IpAddr) -> Result<(), std::time::Duration> {
    match &route.rate {
        Some(limiter) => limiter.check(client),
        None => Ok(()),
    }
}

/// tamis's own public pages, ahead of the routes: the dry-run probe and the transparency page.
async fn own_page(state: &Arc<State>, req: Request<Incoming>, client: IpAddr) -> Answer {
    let response = match &state.probe {
        Some(probe) if req.uri().path() == probe.path => {
            let own = state.own_paths();
            probe
                .answer(&state.config, &state.router, &own, req, client)
                .await
        }
        _ => match &state.transparency {
            Some(page) => page.answer(
                req.method(),
                req.uri().query(),
                req.headers(),
                &state.metrics,
            ),
            None => return Answer::own(Refusal::NotFound),
        },
    };
    Answer::of(response)
}

#[allow(clippy::manual_async_fn)] // See the module note.
fn serve_route<'a>(
    state: &'a Arc<State>,
    route: &'a Arc<Route>,
    uri: Uri,
    mut req: Request<Incoming>,
) -> impl Future<Output = Answer> + 'a {
    async move {
        // route_filter has allowed the method.
        let method = req.method().clone();
        let head_only = method == Method::HEAD;
        let caching = caches(route, &method);
        // Routes with key parts were looked up in `serve` already.
        let uri = if caching && !route.keyed_by_parts() {
            // 4. cache_hit: a fresh stored copy that varies on nothing, in memory or on disk,
            //    answers at once: nothing goes upstream, so there is nothing to scrub or build.
            let key = CacheKey::primary(route.cache_id, uri);
            if let Some((entry, from_disk)) = state.cache.fresh_or_disk(&key).await {
                let (result, status) = if from_disk {
                    (CacheResult::DiskHit, "tamis; hit; detail=disk")
                } else {
                    (CacheResult::Hit, "tamis; hit")
                };
                return cached(&entry, req.headers(), head_only).with(result, status_of(status));
            }
            key.uri
        } else {
            uri
        };

        // 5. upstream_request_filter: what goes upstream is built from the route's policy.
        if !is_safe(&method) {
            return Box::pin(forward_unsafe(state, route, uri, req)).await;
        }
        let up = route_request(route, &method, uri, req.headers_mut(), Bytes::new());
        if !caching {
            return Box::pin(forward::forward(state, route, up.into_request(), head_only))
                .await
                .with(CacheResult::Bypass, status_of("tamis; fwd=bypass"));
        }
        // 6. cache_lookup, then on a miss 7. send, 8. upstream_response_filter and 9. store.
        // Boxed: a miss goes upstream anyway, and inline the lookup's future would be copied
        // along with every request's, hits and forwards included.
        Box::pin(serve_cached(state, route, up, req.headers(), head_only)).await
    }
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
                    forward::forward(s, r, q, h)
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

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
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::access_log;
use crate::body::ProxyBody;
use crate::cache::CacheKey;
use crate::metrics::{CacheResult, NO_ROUTE};
use crate::routes::{Role, Route};

mod analytics;
mod cached;
mod forward;
mod respond;

pub use crate::state::{State, StateError};

use crate::egress::{caches, is_safe, route_method, route_request};
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
            return respond::refused(refused);
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
            return Box::pin(forward::forward(state, route, up.into_request(), head_only))
                .await
                .with(CacheResult::Bypass, status_of("tamis; fwd=bypass"));
        }
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

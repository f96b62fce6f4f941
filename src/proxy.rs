//! The request flow, top to bottom: route → scrub request → cache lookup → upstream → scrub
//! response → store → respond.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::body::{self, ProxyBody, Streamed};
use crate::cache::{self, Cache, CacheKey, Entry, Fill, Lookup, NotStored, Waited};
use crate::config::{ClientIpLog, Config};
use crate::metrics::{CacheResult, Metrics, RouteMetrics, UpstreamFailure, NO_ROUTE};
use crate::policy::{self, AcceptEncoding};
use crate::routes::confine::{self, Redirect};
use crate::routes::{Route, Router};
use crate::upstream::{Upstream, UpstreamError};

/// Everything a request needs, built once from a validated config.
pub struct State {
    pub config: Config,
    pub router: Router,
    pub cache: Cache,
    pub upstream: Upstream,
    pub metrics: Metrics,
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
    /// Builds routes, cache, upstream client and metrics.
    pub fn new(config: Config) -> Result<State, StateError> {
        let router = Router::new(&config);
        let cache = Cache::new(config.cache.max_bytes, config.cache.max_object_bytes);
        let upstream = Upstream::new(&config.upstream)?;
        let metrics = Metrics::new()?;
        let route_metrics = router
            .routes()
            .iter()
            .map(|r| metrics.route(&r.config.name))
            .collect();
        Ok(State {
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
    /// Whether this request stored what it fetched.
    stored: Option<Result<(), NotStored>>,
}

impl Answer {
    fn plain(status: StatusCode, message: &'static str) -> Answer {
        Answer {
            response: error_response(status, message),
            route: None,
            cache: None,
            stored: None,
        }
    }
}

/// Answers one visitor request.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    // Only the access log needs the path (never the query): don't allocate it otherwise.
    let path = state.config.log.access.then(|| req.uri().path().to_owned());
    let answer = serve(&state, req).await;
    let elapsed = start.elapsed();
    let status = answer.response.status();

    let route_name = match answer.route {
        Some(i) => {
            let rm = &state.route_metrics[i];
            rm.observe(elapsed.as_secs_f64());
            if let Some(result) = answer.cache {
                rm.lookup(result);
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
    if state.config.cache.status_header {
        if let Some(value) = cache_status(answer.cache, answer.stored) {
            response
                .headers_mut()
                .insert(CACHE_STATUS, HeaderValue::from_static(value));
        }
    }
    if let Some(path) = path {
        let cache = answer.cache.map_or("-", CacheResult::as_str);
        let ms = elapsed.as_secs_f64() * 1000.0;
        match state.config.log.client_ip {
            ClientIpLog::None => tracing::info!(
                target: "tamis::access",
                route = route_name, %method, path = %path, status = status.as_u16(), cache, ms,
            ),
            ClientIpLog::Truncated => tracing::info!(
                target: "tamis::access",
                client = %policy::truncate_ip(peer.ip()),
                route = route_name, %method, path = %path, status = status.as_u16(), cache, ms,
            ),
        }
    }
    response
}

/// RFC 9211 `Cache-Status`.
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

fn cache_status(
    result: Option<CacheResult>,
    stored: Option<Result<(), NotStored>>,
) -> Option<&'static str> {
    Some(match (result?, stored) {
        (CacheResult::Hit, _) => "tamis; hit",
        (CacheResult::Bypass, _) => "tamis; fwd=bypass",
        (CacheResult::Miss, Some(Ok(()))) => "tamis; fwd=miss; stored",
        (CacheResult::Miss, _) => "tamis; fwd=miss",
        (CacheResult::Coalesced, _) => "tamis; fwd=miss; collapsed",
    })
}

async fn serve(state: &State, req: Request<Incoming>) -> Answer {
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

    // 2. Route.
    let Some((route, rest)) = state.router.find(req.uri().path()) else {
        return Answer::plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut answer = serve_route(state, route, rest, &req).await;
    answer.route = Some(route.index);
    answer
}

async fn serve_route(
    state: &State,
    route: &Arc<Route>,
    rest: &str,
    req: &Request<Incoming>,
) -> Answer {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut a = Answer::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            a.response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return a;
        }
    };
    let uri = match route.upstream_uri(rest, req.uri().query()) {
        Ok(uri) => uri,
        Err(why) => {
            tracing::debug!(route = %route.config.name, %why, "path refused");
            return Answer::plain(StatusCode::BAD_REQUEST, "bad path\n");
        }
    };

    // 3. Scrub: what goes upstream is built from the allowlist.
    let headers = route.policy.scrub(req.headers());

    // 4. Cache lookup (range requests go straight through).
    if headers.contains_key(header::RANGE) {
        let up = UpstreamRequest::new(req.method().clone(), uri, headers);
        let mut a = fetch(state, route, up, head_only, None).await;
        a.cache = Some(CacheResult::Bypass);
        return a;
    }
    let key = CacheKey {
        route: route.index,
        uri: uri.clone(),
        encoding: AcceptEncoding::from_headers(&headers),
    };
    // A HEAD miss fetches with GET, so the answer can be stored for both.
    let up = UpstreamRequest::new(Method::GET, uri, headers);
    let mut coalesced = false;
    for _ in 0..3 {
        match state.cache.lookup(&key).await {
            Lookup::Hit(entry) => {
                return Answer {
                    response: from_entry(&entry, head_only),
                    route: None,
                    cache: Some(if coalesced {
                        CacheResult::Coalesced
                    } else {
                        CacheResult::Hit
                    }),
                    stored: None,
                };
            }
            Lookup::Lead(guard) => {
                let mut a = fetch(state, route, up, head_only, Some(guard)).await;
                a.cache = Some(CacheResult::Miss);
                return a;
            }
            Lookup::Wait(rx) => {
                coalesced = true;
                match Cache::wait(rx, state.upstream.timeout()).await {
                    Waited::Fill(Fill::Stored(entry)) => {
                        return Answer {
                            response: from_entry(&entry, head_only),
                            route: None,
                            cache: Some(CacheResult::Coalesced),
                            stored: None,
                        };
                    }
                    Waited::Fill(Fill::Failed(status)) => {
                        let mut a = Answer::plain(status, "upstream unavailable\n");
                        a.cache = Some(CacheResult::Coalesced);
                        return a;
                    }
                    Waited::Fill(Fill::NotStored) => break,
                    Waited::Retry => continue,
                }
            }
        }
    }
    // Not storable (or the fill kept failing to settle): fetch on our own.
    let mut a = fetch(state, route, up, head_only, None).await;
    a.cache = Some(CacheResult::Miss);
    a
}

/// The request tamis sends upstream.
struct UpstreamRequest {
    parts: http::request::Parts,
}

impl UpstreamRequest {
    fn new(method: Method, uri: Uri, headers: HeaderMap) -> UpstreamRequest {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = method;
        parts.uri = uri;
        parts.headers = headers;
        UpstreamRequest { parts }
    }

    fn to_request(&self) -> Request<Full<Bytes>> {
        Request::from_parts(self.parts.clone(), Full::new(Bytes::new()))
    }
}

/// Fetches from the upstream, scrubs the answer, stores it when allowed (and when this request
/// leads the fill), and answers.
async fn fetch(
    state: &State,
    route: &Route,
    up: UpstreamRequest,
    head_only: bool,
    guard: Option<cache::FillGuard<'_>>,
) -> Answer {
    let rm = &state.route_metrics[route.index];
    let deadline = tokio::time::Instant::now() + state.upstream.timeout();
    let sent = Instant::now();
    let resp = match state.upstream.send(up.to_request()).await {
        Ok(resp) => resp,
        Err(e) => return upstream_failed(state, rm, route, e, guard).await,
    };
    state
        .metrics
        .upstream_response(rm, resp.status(), sent.elapsed().as_secs_f64());
    let (parts, incoming) = resp.into_parts();
    let status = parts.status;
    let decision = if guard.is_some() {
        cache::storability(&up.parts, status, &parts.headers, SystemTime::now())
    } else {
        Err(NotStored::Forbidden)
    };

    // 5. Scrub the response before anything else looks at it.
    let mut headers = parts.headers;
    policy::scrub_response(&mut headers);
    if let Some(location) = headers.get(header::LOCATION) {
        let mapped = location.to_str().ok().map(|loc| {
            confine::map_location(
                &route.config.upstream,
                &route.config.prefix,
                &up.parts.uri,
                loc,
            )
        });
        match mapped.and_then(|m| match m {
            Redirect::FirstParty(p) => HeaderValue::from_str(&p).ok(),
            Redirect::Outside => None,
        }) {
            Some(v) => {
                headers.insert(header::LOCATION, v);
            }
            None => {
                state.metrics.upstream_error(rm, UpstreamFailure::Redirect);
                tracing::warn!(route = %route.config.name, "upstream redirected outside its route; answering 502");
                if let Some(g) = guard {
                    g.finish(Fill::Failed(StatusCode::BAD_GATEWAY)).await;
                }
                return Answer::plain(StatusCode::BAD_GATEWAY, "upstream redirected elsewhere\n");
            }
        }
    }

    let max = state.cache.max_object_bytes();
    let declared = content_length(&headers);
    let decision = match decision {
        Ok(_) if declared.is_some_and(|n| n > max) => Err(NotStored::TooLarge),
        d => d,
    };
    let Some(guard) = guard else {
        return streamed(
            state,
            status,
            headers,
            Vec::new(),
            Some(incoming),
            head_only,
            decision.map(|_| ()),
        );
    };
    let storable = match decision {
        Ok(s) => s,
        Err(why) => {
            guard.finish(Fill::NotStored).await;
            return streamed(
                state,
                status,
                headers,
                Vec::new(),
                Some(incoming),
                head_only,
                Err(why),
            );
        }
    };

    // 6. Buffer (up to max_object_bytes) and store.
    match tokio::time::timeout_at(deadline, buffer(incoming, max)).await {
        Ok(Ok(Buffered::Complete(body))) => {
            headers.remove(header::TRANSFER_ENCODING);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let entry = Arc::new(Entry::new(status, headers, body, storable));
            guard.finish(Fill::Stored(entry.clone())).await;
            Answer {
                response: from_entry(&entry, head_only),
                route: None,
                cache: None,
                stored: Some(Ok(())),
            }
        }
        Ok(Ok(Buffered::TooLarge(prefix, rest))) => {
            guard.finish(Fill::NotStored).await;
            streamed(
                state,
                status,
                headers,
                prefix,
                Some(rest),
                head_only,
                Err(NotStored::TooLarge),
            )
        }
        Ok(Err(e)) => {
            state.metrics.upstream_error(rm, UpstreamFailure::Body);
            tracing::warn!(route = %route.config.name, error = %e, "upstream body failed");
            guard.finish(Fill::Failed(StatusCode::BAD_GATEWAY)).await;
            Answer::plain(StatusCode::BAD_GATEWAY, "upstream body failed\n")
        }
        Err(_) => {
            state.metrics.upstream_error(rm, UpstreamFailure::Timeout);
            tracing::warn!(route = %route.config.name, "upstream body timed out");
            guard
                .finish(Fill::Failed(StatusCode::GATEWAY_TIMEOUT))
                .await;
            Answer::plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n")
        }
    }
}

async fn upstream_failed(
    state: &State,
    rm: &RouteMetrics,
    route: &Route,
    e: UpstreamError,
    guard: Option<cache::FillGuard<'_>>,
) -> Answer {
    state.metrics.upstream_error(rm, e.failure());
    tracing::warn!(route = %route.config.name, error = %e, "upstream request failed");
    let status = e.status();
    if let Some(g) = guard {
        g.finish(Fill::Failed(status)).await;
    }
    Answer::plain(
        status,
        if status == StatusCode::GATEWAY_TIMEOUT {
            "upstream timed out\n"
        } else {
            "upstream unavailable\n"
        },
    )
}

fn streamed(
    state: &State,
    status: StatusCode,
    headers: HeaderMap,
    prefix: Vec<Bytes>,
    rest: Option<Incoming>,
    head_only: bool,
    stored: Result<(), NotStored>,
) -> Answer {
    let body = if head_only {
        body::empty()
    } else {
        ProxyBody::Right(Streamed::new(prefix, rest, state.upstream.timeout()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Answer {
        response,
        route: None,
        cache: None,
        stored: Some(stored),
    }
}

enum Buffered {
    Complete(Bytes),
    /// Over the limit: what was read so far, and the rest still to stream.
    TooLarge(Vec<Bytes>, Incoming),
}

/// Reads a body into memory unless it grows past `max`.
async fn buffer(mut body: Incoming, max: u64) -> Result<Buffered, hyper::Error> {
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
    Ok(Buffered::Complete(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    }))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A response from a stored entry: clones of its headers and body, plus `Age`.
fn from_entry(entry: &Entry, head_only: bool) -> Response<ProxyBody> {
    let body = if head_only {
        body::empty()
    } else {
        body::full(entry.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response
        .headers_mut()
        .insert(header::AGE, HeaderValue::from(entry.age(Instant::now())));
    response
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
    response
}

//! The upstream phase: the send (circuit breaker, permits, retries, metrics), a forward that
//! bypasses the cache and streams the answer back, and unsafe methods on pass-through routes.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::body::{self};
use crate::metrics::CacheResult;
use crate::routes::Route;
use crate::state::State;
use crate::upstream::{UpstreamBody, UpstreamError};

use super::respond::{rewritten, scrub_response, status_of, streamed, Answer};
use crate::egress::route_request;
use crate::refusal::Refusal;

/// Sends `request` (taken out) upstream through the route's circuit breaker and within its cap
/// on concurrent upstream requests (waiting for a turn counts against the upstream timeout).
/// A GET or HEAD whose connection failed before any answer is tried again, at most
/// `upstream.retries` times. Records the upstream metrics and logs a failure.
pub(super) async fn send(
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
    // When the answer came: one clock reading for the breaker and the metrics.
    let mut answered = sent;
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
        answered = Instant::now();
        let ok = result.as_ref().is_ok_and(|r| !r.status().is_server_error());
        if route.breaker.record(ok, answered) {
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
            let took = answered.duration_since(sent).as_secs_f64();
            state.metrics.upstream_response(rm, resp.status(), took);
        }
        Err(e) => {
            state.metrics.upstream_error(rm, e.failure());
            log_failure(route, e);
        }
    }
    result
}

pub(super) fn log_failure(route: &Route, e: &UpstreamError) {
    // An open circuit was logged once when it opened.
    if matches!(e, UpstreamError::CircuitOpen(_)) {
        tracing::debug!(route = %route.config.name, error = %e, "upstream not asked");
    } else {
        tracing::warn!(route = %route.config.name, error = %e, "upstream request failed");
    }
}

/// A copy of a request whose body is already in memory (for a retry).
pub(super) fn clone_request(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut out = Request::new(r.body().clone());
    *out.method_mut() = r.method().clone();
    *out.uri_mut() = r.uri().clone();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}

/// A failed upstream exchange as the visitor sees it: 502, 503 (with `Retry-After` when the
/// circuit is open) or 504.
pub(super) fn upstream_failed(e: &UpstreamError) -> Answer {
    retry_after(Answer::own(Refusal::upstream(e.status())), e)
}

/// Adds `Retry-After` to an error answer for an open circuit (a stale copy served instead
/// keeps its own headers).
pub(super) fn retry_after(mut a: Answer, e: &UpstreamError) -> Answer {
    if let Some(d) = e.retry_after() {
        if a.response.status() == StatusCode::SERVICE_UNAVAILABLE {
            a.response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(d.as_secs().max(1)));
        }
    }
    a
}

/// Forwards without the cache and streams the answer back.
#[allow(clippy::manual_async_fn)] // See the module note.
pub(super) fn forward<'a>(
    state: &'a State,
    route: &'a Route,
    mut request: Request<Full<Bytes>>,
    head_only: bool,
) -> impl Future<Output = Answer> + 'a {
    async move {
        // Only its path is read afterwards (for Location and a font's type), once hyper has
        // taken the request: a copy of the path alone, kept inline when short.
        let requested = PathCopy::of(request.uri().path_and_query().map_or("", |p| p.path()));
        let (resp, _permit) = match send(state, route, &mut request).await {
            Ok(resp) => resp,
            Err(e) => return upstream_failed(&e),
        };
        let (parts, incoming) = resp.into_parts();
        let Some(mut headers) = scrub_response(state, route, || requested.as_str(), parts.headers)
        else {
            return Answer::own(Refusal::RedirectedElsewhere);
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
                    Answer::of(response)
                }
                _ => Answer::own(Refusal::StylesheetRefused),
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

/// A copy of the path a forward asked upstream for, read after hyper has taken the request.
/// Inline when short (most paths are): cloning the URI's shared bytes instead allocated their
/// reference count on every forward, the URI being built from a `String`.
enum PathCopy {
    Inline { len: u8, bytes: [u8; PATH_INLINE] },
    Heap(String),
}

/// The longest path [`PathCopy`] keeps inline.
const PATH_INLINE: usize = 96;

impl PathCopy {
    fn of(path: &str) -> PathCopy {
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= PATH_INLINE => {
                let mut bytes = [0; PATH_INLINE];
                bytes[..path.len()].copy_from_slice(path.as_bytes());
                PathCopy::Inline { len, bytes }
            }
            _ => PathCopy::Heap(path.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Whole characters copied from a `str`: always UTF-8.
            PathCopy::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
            PathCopy::Heap(s) => s,
        }
    }
}

/// Pass-through routes only: forwards an unsafe method with its body, then drops what the
/// cache holds for that URL when it succeeded (RFC 9111 §4.4).
#[allow(clippy::manual_async_fn)] // See the module note.
pub(super) fn forward_unsafe<'a>(
    state: &'a State,
    route: &'a Route,
    uri: Uri,
    req: Request<Incoming>,
) -> impl Future<Output = Answer> + 'a {
    async move {
        // Only the method and the headers are read after the body: the rest of the head goes
        // now, not moved whole into a `drop` after.
        let (method, mut headers, body) = {
            let (parts, body) = req.into_parts();
            (parts.method, parts.headers, body)
        };
        let body = match body::read_limited(body, state.config.limits.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return body_refused(&e),
        };
        // Only a caching route can hold a copy to drop.
        let stored = route.config.cache.enabled.then(|| uri.clone());
        let up = route_request(route, &method, uri, &mut headers, body);
        drop(headers);
        let answer = forward(state, route, up.into_request(), false).await;
        let status = answer.response.status();
        if let Some(uri) = stored.filter(|_| status.is_success() || status.is_redirection()) {
            Box::pin(state.cache.invalidate(route.cache_id, &uri)).await;
        }
        answer.with(CacheResult::Bypass, status_of("tamis; fwd=bypass"))
    }
}

/// 413 for a visitor's body over the limit, 400 for one that broke off.
pub(super) fn body_refused(e: &body::ReadError) -> Answer {
    match e {
        body::ReadError::TooLarge(_) => Answer::own(Refusal::BodyTooLarge),
        body::ReadError::Failed(_) => Answer::own(Refusal::BodyUnreadable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_copy_reads_back_the_path_inline_or_not() {
        let long = format!("/{}", "é".repeat(PATH_INLINE));
        for path in ["", "/", "/post/e", &"/a".repeat(PATH_INLINE / 2), &long] {
            let copy = PathCopy::of(path);
            assert_eq!(copy.as_str(), path);
            let inline = matches!(copy, PathCopy::Inline { .. });
            assert_eq!(inline, path.len() <= PATH_INLINE, "{path}");
        }
    }
}

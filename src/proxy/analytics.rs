//! A tracking request: only the protocol's endpoints, its body read within the cap, scrubbed
//! per protocol and never cached; the browser gets tamis's own answer, never the upstream's.

use std::future::Future;
use std::net::IpAddr;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::analytics::{self, Protocol};
use crate::body::{self, ProxyBody};
use crate::egress::{Secrets, Visit};
use crate::metrics::CacheResult;
use crate::routes::Route;
use crate::state::State;

use super::forward::{body_refused, send, upstream_failed};
use super::respond::{status_of, Answer};
use crate::egress::prepare_analytics;

/// An analytics tracking request: only the protocol's endpoints, body capped, query and body
/// scrubbed per protocol, never cached. The browser gets tamis's own answer
/// ([`analytics::answer`]): the upstream's status (from a short list, else its class's
/// fallback) and a fixed body or a few typed fields, never the upstream's bytes or headers.
#[allow(clippy::manual_async_fn)] // See the proxy module's note: `req` is kept once, not twice.
pub(super) fn serve_analytics<'a>(
    state: &'a State,
    route: &'a Route,
    protocol: Protocol,
    rt: &'a analytics::Runtime,
    rest: &'a str,
    req: Request<Incoming>,
    client: IpAddr,
) -> impl Future<Output = Answer> + 'a {
    async move {
        let bypass = || status_of("tamis; fwd=bypass");
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
        // Replicas sharing a key store: the shared counts may open this visitor's location cell
        // (bounded by the store's timeout; nothing asked once the cell is open).
        if let Some(geo) = state.config.geo.as_deref() {
            // Boxed: only routes with locations and a shared store wait here; inline, the
            // store's exchange would widen every tracking request's future.
            Box::pin(analytics::shared::count_location(
                rt,
                &route.config.name,
                geo,
                client,
                now,
            ))
            .await;
        }
        let keys = analytics::visitor::Keys {
            pseudonyms: &rt.pseudonyms,
            gate: &rt.gate,
            geo: state.config.geo.as_deref(),
        };
        let prepared =
            prepare_analytics(route, rt, protocol, rest, &visit, &keys, Secrets::Real, now);
        let (up, tally, location) = match prepared {
            Ok(p) => p,
            Err(refused) => return Answer::own(refused).with(CacheResult::Bypass, bypass()),
        };
        let rm = &state.route_metrics[route.index];
        rm.analytics(&tally);
        if rt.location != crate::analytics::geo::Precision::None {
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
        Answer::of(analytics_response(own)).with(CacheResult::Bypass, bypass())
    }
}

/// The response for tamis's own answer to a tracking request: its status, type and body, and
/// headers of tamis's own only (no upstream header passes: any could carry an echo).
pub(super) fn analytics_response(own: analytics::answer::Own) -> Response<ProxyBody> {
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

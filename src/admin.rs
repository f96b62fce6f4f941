//! The admin listener: Prometheus metrics, a health check, cache purge and config reload. Never
//! exposed on the public listener.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, ProxyBody};
use crate::proxy::{error_response, State};
use crate::reload::Live;

/// Answers one admin request.
pub async fn handle(live: &Live, req: Request<Incoming>) -> Response<ProxyBody> {
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "POST /reload\n");
        }
        if !authorised(&live.load(), &req) {
            return unauthorised();
        }
        return reload(live).await;
    }
    let state = &*live.load();
    if req.uri().path() == "/cache/purge" {
        if !authorised(state, &req) {
            return unauthorised();
        }
        if req.method() != Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /cache/purge?route=NAME&path=/p (or &prefix=/p/)\n",
            );
        }
        return purge(state, req.uri().query().unwrap_or("")).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"ok\n"),
        ),
        "/metrics" => {
            let (bytes, entries) = state.cache.size().await;
            state.metrics.set_cache_size(bytes, entries);
            match state.metrics.render() {
                Ok(out) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(out),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot render metrics");
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
                }
            }
        }
        _ => error_response(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether a request may change things (reload, purge): always, unless `admin.token_file` is
/// set; then only with `Authorization: Bearer <token>`. Reading (metrics, health) stays open
/// for scrapers and probes.
fn authorised(state: &State, req: &Request<Incoming>) -> bool {
    let Some(token) = state.config.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    // Compare in constant time: the answer's timing must not reveal a prefix.
    given.len() == token.len()
        && given
            .iter()
            .zip(token.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn unauthorised() -> Response<ProxyBody> {
    let mut r = error_response(StatusCode::UNAUTHORIZED, "admin token required\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `POST /reload`: 200 with the new config's hash, or 409 with why the running config stays.
async fn reload(live: &Live) -> Response<ProxyBody> {
    match live.reload().await {
        Ok(r) => text(
            StatusCode::OK,
            "application/json",
            Bytes::from(
                serde_json::json!({
                    "reloaded": !r.unchanged,
                    "hash": r.hash,
                    "cache_entries_dropped": r.dropped,
                })
                .to_string()
                    + "\n",
            ),
        ),
        Err(e) => {
            let running = live.load().config.hash.clone();
            text(
                StatusCode::CONFLICT,
                "application/json",
                Bytes::from(
                    serde_json::json!({
                        "reloaded": false,
                        "running": running,
                        "error": e.to_string(),
                    })
                    .to_string()
                        + "\n",
                ),
            )
        }
    }
}

/// `POST /cache/purge?route=NAME&path=/visitor/path` (or `&prefix=/visitor/prefix/`): drops
/// the stored objects of one route, by the first-party URL the visitor uses.
async fn purge(state: &State, query: &str) -> Response<ProxyBody> {
    let mut route_name = None;
    let mut target = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("route", v)) => route_name = Some(v),
            Some(("path", v)) => target = Some((v, false)),
            Some(("prefix", v)) => target = Some((v, true)),
            _ => {}
        }
    }
    let (Some(route_name), Some((path, prefix))) = (route_name, target) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "give route= and path= or prefix=\n",
        );
    };
    // A fonts route has two parts (CSS, files): the one whose prefix holds the path.
    let named: Vec<_> = state
        .router
        .routes()
        .iter()
        .filter(|r| r.config.name == route_name)
        .collect();
    if named.is_empty() {
        return error_response(StatusCode::NOT_FOUND, "no such route\n");
    }
    let route = named
        .into_iter()
        .filter(|r| path.starts_with(r.prefix.as_str()))
        .max_by_key(|r| r.prefix.len());
    // The same confinement as for visitors maps the path to the upstream's; a tile path is
    // purged by its directory, so it goes through confinement too.
    let upstream_path = route.and_then(|route| {
        let rest = path.strip_prefix(route.prefix.as_str())?;
        let uri = crate::routes::confine::upstream_uri(&route.upstream, rest, None).ok()?;
        Some((route, uri.path().to_owned()))
    });
    let Some((route, upstream_path)) = upstream_path else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "path is not under the route's prefix\n",
        );
    };
    let purged = state
        .cache
        .purge(route.cache_id, &upstream_path, prefix)
        .await;
    tracing::info!(route = route_name, path, prefix, purged, "cache purge");
    text(
        StatusCode::OK,
        "application/json",
        Bytes::from(format!("{{\"purged\":{purged}}}\n")),
    )
}

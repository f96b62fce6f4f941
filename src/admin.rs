//! The admin listener: Prometheus metrics and a health check. Never exposed on the public
//! listener.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, ProxyBody};
use crate::proxy::{error_response, State};

/// Answers one admin request.
pub async fn handle(state: &State, req: Request<Incoming>) -> Response<ProxyBody> {
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

//! The upstream client: tamis's own pool of kept-alive hyper connections (`pool`) over TCP or
//! rustls (`connect`: public roots plus the configured extra CA), HTTP/2 where the upstream
//! offers it, with connect and total timeouts.
//!
//! Built on hyper's connection API rather than hyper-util's pooled client: a connection goes
//! back to the pool when its response body ends instead of through a task spawned per
//! request, and a request a pooled connection could not take (the upstream had closed it) is
//! handed back by hyper and sent on another one, never lost.

pub mod breaker;
mod connect;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::Full;

use crate::config::tls;
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamFailure;

use connect::Connector;
pub use pool::PooledBody;
use pool::{HostId, Pool, Sender};

/// The body of an upstream response.
pub type UpstreamBody = PooledBody;

/// A failed upstream exchange.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    #[error("upstream exchange failed: {0}")]
    Protocol(String),
    /// The upstream's certificate was refused (unknown issuer, wrong name, expired): never
    /// downgraded, never retried.
    #[error("upstream certificate refused: {0}")]
    Tls(String),
    /// The route's circuit breaker is open: the upstream was not asked.
    #[error("upstream failing: circuit open for another {0:?}")]
    CircuitOpen(Duration),
}

impl UpstreamError {
    /// The status the visitor gets.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::CircuitOpen(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// The metrics label.
    pub fn failure(&self) -> UpstreamFailure {
        match self {
            UpstreamError::Timeout(_) => UpstreamFailure::Timeout,
            UpstreamError::Connect(_) => UpstreamFailure::Connect,
            UpstreamError::Protocol(_) => UpstreamFailure::Protocol,
            UpstreamError::CircuitOpen(_) => UpstreamFailure::CircuitOpen,
            UpstreamError::Tls(_) => UpstreamFailure::Tls,
        }
    }

    /// Whether the request never reached the upstream's application (so a GET may be retried):
    /// a refused or failed connection, or one closed before any answer.
    pub fn retryable(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Protocol(_))
    }

    /// When the visitor may try again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::CircuitOpen(d) => Some(*d),
            _ => None,
        }
    }
}

/// The shared client for every route.
pub struct Upstream {
    connector: Connector,
    pool: Arc<Pool>,
    timeout: Duration,
}

impl Upstream {
    /// Builds the client from the `[upstream]` config.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, tls::TlsError> {
        Ok(Upstream {
            connector: Connector::new(
                tls::client_config(&config.extra_ca)?,
                config.connect_timeout,
            ),
            pool: Pool::new(config.keepalive, config.keepalive_timeout),
            timeout: config.timeout,
        })
    }

    /// The total time allowed for one exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the request in `req` (absolute `http` or `https` URI; taken out when hyper takes
    /// it, so `req` is left empty once sent) and waits for the response head, within the total
    /// timeout.
    ///
    /// By `&mut`, not by value: an async fn keeps a by-value argument for its whole life and
    /// again as the local it works on, so each layer handing a 256-byte request down by value
    /// grew every future above it, and each was copied whole when awaited.
    pub async fn send(
        &self,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let Some((host, host_header)) = self.pool.host_of(req.uri()) else {
            return Err(UpstreamError::Protocol(format!(
                "not an http or https URL: {}",
                req.uri()
            )));
        };
        match tokio::time::timeout(self.timeout, self.exchange(host, host_header, req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(r) => r,
        }
    }

    /// Sends on a pooled connection, or a new one. A pooled connection that turns out closed
    /// hands the request back (hyper never wrote it) and the next one is tried; a new
    /// connection that fails is the error.
    async fn exchange(
        &self,
        host: HostId,
        host_header: Option<HeaderValue>,
        req: &mut Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // The request stays in the caller's place until it is handed to hyper, which hands
        // it back there if it could not send it: one copy of it in this future, not two.
        loop {
            let (sender, pooled) = match self.pool.checkout(host) {
                Some(s) => (s, true),
                None => {
                    let Some(key) = self.pool.key(host) else {
                        return Err(UpstreamError::Protocol("unknown upstream host".into()));
                    };
                    // Boxed: the connect future (DNS, TLS) is large and rare; inline it would be
                    // moved along with every request's future.
                    let s = Box::pin(self.connector.connect(&key)).await?;
                    if let Sender::H2(h2) = &s {
                        self.pool.share_h2(host, h2);
                    }
                    (s, false)
                }
            };
            match sender {
                Sender::H1(mut h1) => {
                    if let Err(e) = h1.sender.ready().await {
                        if pooled {
                            continue;
                        }
                        return Err(UpstreamError::Protocol(error_chain(&e)));
                    }
                    for_h1(req, host_header.as_ref());
                    match h1.sender.try_send_request(std::mem::take(req)).await {
                        Ok(resp) => {
                            let pool = self.pool.clone();
                            return Ok(resp.map(|b| PooledBody::pooled(b, pool, host, h1)));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if pooled => *req = unsent,
                            _ => return Err(UpstreamError::Protocol(error_chain(e.error()))),
                        },
                    }
                }
                Sender::H2(mut h2) => {
                    if req.uri().scheme().is_none() {
                        // Made origin-form for an HTTP/1.1 connection that failed: rebuild it.
                        let Some(key) = self.pool.key(host) else {
                            return Err(UpstreamError::Protocol("unknown upstream host".into()));
                        };
                        let scheme = if key.https { "https" } else { "http" };
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let uri = format!("{scheme}://{}{path}", key.authority());
                        *req.uri_mut() = uri
                            .parse()
                            .map_err(|e| UpstreamError::Protocol(format!("{uri}: {e}")))?;
                    }
                    // HTTP/2 takes scheme and authority from the absolute URI (`:scheme`,
                    // `:authority`); a `Host` header would be redundant.
                    *req.version_mut() = Version::HTTP_2;
                    req.headers_mut().remove(HOST);
                    match h2.try_send_request(std::mem::take(req)).await {
                        Ok(resp) => return Ok(resp.map(PooledBody::unpooled)),
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if pooled => {
                                self.pool.drop_h2(host);
                                *req = unsent;
                            }
                            _ => return Err(UpstreamError::Protocol(error_chain(e.error()))),
                        },
                    }
                }
            }
        }
    }
}

/// The `Host` header tamis sends over HTTP/1.1 for an absolute `http` or `https` URI (the
/// host in lower case, the port unless it is the scheme's default).
pub fn host_header(uri: &Uri) -> Option<HeaderValue> {
    pool::Target::of(uri).and_then(|t| t.host_header())
}

/// HTTP/1.1 wants the origin form (`/path?query`) and a `Host` header.
fn for_h1(req: &mut Request<Full<Bytes>>, host: Option<&HeaderValue>) {
    *req.version_mut() = Version::HTTP_11;
    if let Some(host) = host {
        // Usually there already: a pass-through route's request has the upstream's written
        // over the visitor's (`Route::scrub_owned_to`). Written again all the same, so the
        // upstream's is the one sent whatever a scrub left (a visitor's Host could reach
        // another site on a shared front end): a look along the few names and a cheap clone,
        // not a hashed lookup; when there is not exactly one, one insert replaces them all.
        let one = {
            let mut hosts = req.headers_mut().iter_mut().filter(|(n, _)| *n == HOST);
            match (hosts.next(), hosts.next()) {
                (Some((_, value)), None) => {
                    value.clone_from(host);
                    true
                }
                _ => false,
            }
        };
        if !one {
            req.headers_mut().insert(HOST, host.clone());
        }
    }
    if req.uri().scheme().is_some() {
        // Moved out, not cloned: a clone of a URI built from a `String` allocates.
        let path = std::mem::take(req.uri_mut())
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
}

/// A request as tamis writes it on an HTTP/1.1 connection to its upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Http1Request {
    pub method: String,
    /// The origin-form target (`/path?query`).
    pub target: String,
    /// In the order they are written, names in lower case as hyper writes them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Http1Request {
    /// The exact bytes: request line, headers, blank line, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// What [`Upstream::send`] puts on an HTTP/1.1 connection for this request (absolute URI):
/// [`for_h1`]'s origin form and `Host`, then what hyper's encoder adds for a body held in
/// memory (`Content-Length`, after the other headers, unless the request has one; none for an
/// empty body). tamis sets no `Transfer-Encoding` (hop-by-hop, never forwarded) and keeps its
/// connections alive (so hyper adds no `Connection`). The probe shows this; `tests/probe.rs`
/// compares it with the bytes a raw upstream reads. Over HTTP/2 the same fields go as HPACK,
/// with `:authority` instead of `Host`.
pub fn as_http1(parts: &http::request::Parts, body: &Bytes) -> Http1Request {
    let host = host_header(&parts.uri);
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    for_h1(&mut req, host.as_ref());
    let headers = req.headers_mut();
    if !body.is_empty() && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Http1Request {
        method: req.method().as_str().to_owned(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        body: body.clone(),
    }
}

/// Whether a TLS error (from rustls, maybe inside nested `io::Error`s) is in the chain.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // An io::Error's source() skips the error it wraps: look at that one itself.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// The error and its causes on one line (hyper's own message is often just "client error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_gets_the_origin_form_and_a_host_header() {
        let mut req = Request::builder()
            .uri("http://up.example:8080/a/b?c=d")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let host = HeaderValue::from_static("up.example:8080");
        for_h1(&mut req, Some(&host));
        assert_eq!(req.uri().to_string(), "/a/b?c=d");
        assert_eq!(req.headers()[HOST], "up.example:8080");
        assert_eq!(req.version(), Version::HTTP_11);
        // Already in origin form (a request handed back by a closed connection): unchanged.
        for_h1(&mut req, Some(&host));
        assert_eq!(req.uri().to_string(), "/a/b?c=d");
        assert_eq!(req.headers().get_all(HOST).iter().count(), 1);
    }

    #[test]
    fn http1_sends_the_upstreams_host_whatever_host_the_request_held() {
        let host = HeaderValue::from_static("up.example:8080");
        for stray in [&["site.example"][..], &["a.example", "b.example"][..]] {
            let mut req = Request::builder()
                .uri("http://up.example:8080/a")
                .body(Full::new(Bytes::new()))
                .unwrap();
            for h in stray {
                req.headers_mut().append(HOST, HeaderValue::from_static(h));
            }
            for_h1(&mut req, Some(&host));
            let sent: Vec<_> = req.headers().get_all(HOST).iter().collect();
            assert_eq!(sent, [&host], "{stray:?}");
        }
    }
}

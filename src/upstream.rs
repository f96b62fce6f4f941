//! The upstream client: pooled hyper connections over rustls (public roots plus the configured
//! extra CA), HTTP/2 where the upstream offers it, with connect and total timeouts.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::metrics::UpstreamFailure;
use crate::tls;

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
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Upstream {
    /// Builds the client from the `[upstream]` config.
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, tls::TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(&config.extra_ca)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(https);
        Ok(Upstream {
            client,
            timeout: config.timeout,
        })
    }

    /// The total time allowed for one exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `req` and waits for the response head, within the total timeout.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if is_tls(&e) => Err(UpstreamError::Tls(error_chain(&e))),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
        }
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

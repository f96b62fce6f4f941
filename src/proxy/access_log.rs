//! The access log: one line per request (route, method, path without query, status, cache
//! result, milliseconds, a request id), and the client's address only when the operator asks,
//! then truncated. Text or JSON, as `log.format` says (set up in `main`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use ipnet::IpNet;

use crate::config::ClientIpLog;
use crate::policy;

/// The header a TLS terminator in front (nginx's `$request_id`, Caddy's `{http.request.uuid}`)
/// passes its own id in, so both logs name a request alike.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Names one request in the log.
#[derive(Clone, Debug)]
pub enum RequestId {
    /// tamis's own: a per-process random prefix and a counter, 16 hex digits.
    Own(u64),
    /// The one a trusted proxy sent in `X-Request-Id`.
    Proxy(HeaderValue),
}

impl RequestId {
    /// The trusted proxy's id when the peer is one and its id is plain (letters, digits,
    /// `-._`, at most 64), else a new one of tamis's.
    pub fn new(peer: SocketAddr, headers: &HeaderMap, proxies: &[IpNet]) -> RequestId {
        let from_proxy = (!proxies.is_empty())
            .then(|| headers.get(X_REQUEST_ID))
            .flatten()
            .filter(|v| {
                (1..=64).contains(&v.len())
                    && v.as_bytes()
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b))
            })
            .filter(|_| crate::policy::client_addr::is_trusted(peer.ip(), proxies));
        match from_proxy {
            Some(v) => RequestId::Proxy(v.clone()),
            None => RequestId::Own(next_own()),
        }
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Own(n) => write!(f, "{n:016x}"),
            RequestId::Proxy(v) => f.write_str(v.to_str().unwrap_or("-")),
        }
    }
}

/// A random 32-bit prefix per process (so ids of two runs, or two replicas, do not repeat),
/// then a counter: unique, ordered, and one atomic add per request.
fn next_own() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        // No randomness (never seen on Linux): the process id still tells runs apart.
        if getrandom::fill(&mut b).is_err() {
            b = std::process::id().to_le_bytes();
        }
        u64::from(u32::from_le_bytes(b)) << 32
    });
    prefix | (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

/// Milliseconds to the microsecond: `0.048`, never `7.685041999999999`.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// What one access line says.
pub struct Line<'a> {
    pub id: &'a RequestId,
    pub client: IpAddr,
    pub route: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub status: StatusCode,
    pub cache: &'static str,
    pub elapsed: Duration,
}

/// Writes the line, with the client's address only as `client_ip` allows.
pub fn write(client_ip: ClientIpLog, l: &Line<'_>) {
    let (status, ms) = (l.status.as_u16(), millis(l.elapsed));
    let (route, method, path, cache, id) = (l.route, l.method, l.path, l.cache, l.id);
    match client_ip {
        ClientIpLog::None => tracing::info!(
            target: "tamis::access",
            %id, route, %method, path, status, cache, ms,
        ),
        ClientIpLog::Truncated => tracing::info!(
            target: "tamis::access",
            %id, client = %policy::truncate_ip(l.client),
            route, %method, path, status, cache, ms,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_milliseconds_without_float_noise() {
        assert_eq!(millis(Duration::from_micros(48)).to_string(), "0.048");
        assert_eq!(millis(Duration::from_nanos(7_685_042)).to_string(), "7.685");
        assert_eq!(millis(Duration::from_secs(2)).to_string(), "2000");
    }

    #[test]
    fn request_ids_are_unique_or_the_trusted_proxys() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let proxies: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let none = HeaderMap::new();
        let (a, b) = (
            RequestId::new(peer, &none, &proxies).to_string(),
            RequestId::new(peer, &none, &proxies).to_string(),
        );
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::new(peer, &h, &proxies).to_string(), "abc-123");
        // From anyone else, or not plain: tamis's own.
        let stranger: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        assert_ne!(
            RequestId::new(stranger, &h, &proxies).to_string(),
            "abc-123"
        );
        assert_ne!(RequestId::new(peer, &h, &[]).to_string(), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("a b"));
        assert_eq!(RequestId::new(peer, &h, &proxies).to_string().len(), 16);
    }
}

//! Kept-alive upstream connections, per scheme, host and port: a stack of idle HTTP/1.1
//! connections (the most recently used first, so a quiet period lets the others expire) and
//! one shared HTTP/2 connection.
//!
//! An HTTP/1.1 connection comes back to the pool when the response body it carries has been
//! read to its end ([`PooledBody`]): no task per request waits for it. A body dropped half-read
//! takes its connection with it (hyper closes it), since the rest of that answer is still on
//! the wire.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderValue, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

/// Where a connection goes: scheme, host (no IPv6 brackets, lower case) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Key {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// A [`Key`] borrowed from a request's URI, to find its host without allocating.
pub(super) struct Target<'a> {
    https: bool,
    host: &'a str,
    port: u16,
}

/// Whether an absolute URI is `https` (true) or `http` (false); `None` for anything else.
fn is_https(uri: &Uri) -> Option<bool> {
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => Some(true),
        Some(s) if *s == Scheme::HTTP => Some(false),
        _ => None,
    }
}

impl Target<'_> {
    /// The target of an absolute `http` or `https` URI.
    pub(super) fn of(uri: &Uri) -> Option<Target<'_>> {
        let https = is_https(uri)?;
        let host = uri.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Some(Target { https, host, port })
    }

    /// The `Host` header tamis sends this target over HTTP/1.1 (as [`Pool::host`] builds it).
    pub(super) fn host_header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.key().authority()).ok()
    }

    fn is(&self, key: &Key) -> bool {
        self.https == key.https
            && self.port == key.port
            && self.host.eq_ignore_ascii_case(&key.host)
    }

    fn key(&self) -> Key {
        Key {
            https: self.https,
            host: self.host.to_ascii_lowercase(),
            port: self.port,
        }
    }
}

impl Key {
    /// `host[:port]` for a `Host` header or an absolute URI, the port only when not the
    /// scheme's default.
    pub(super) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Spellings of one host remembered by [`Pool::host_of`].
const MAX_SPELLINGS: usize = 8;

/// An upstream host's place in the pool (hosts are few and never forgotten: the routes name
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HostId(usize);

/// A connection to send on.
pub(super) enum Sender {
    H1(H1),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An HTTP/1.1 connection, and the worker thread whose event loop drives it.
pub(super) struct H1 {
    pub(super) sender: http1::SendRequest<Full<Bytes>>,
    home: Option<usize>,
}

impl H1 {
    /// A connection whose I/O task was just spawned on this thread's worker.
    pub(super) fn here(sender: http1::SendRequest<Full<Bytes>>) -> H1 {
        H1 {
            sender,
            home: crate::conn::workers::current(),
        }
    }

    fn usable(&self, since: Instant, now: Instant, timeout: Duration) -> bool {
        !self.sender.is_closed() && now.duration_since(since) < timeout
    }
}

struct Host {
    key: Key,
    /// Scheme and authority, as written in request URIs, already found to name this host: a
    /// request with one of them skips parsing its authority (routes build their URIs from one
    /// configured base, so each host is usually asked for in a single spelling).
    seen: Vec<(bool, Box<str>)>,
    /// Its `Host` header, built once.
    host_header: Option<HeaderValue>,
    /// Idle HTTP/1.1 connections and when each went idle; the last is the most recent.
    idle: Vec<(H1, Instant)>,
    /// The HTTP/2 connection every request to this host shares.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
}

/// The idle connections of every upstream host.
pub(super) struct Pool {
    hosts: Mutex<Vec<Host>>,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    /// Whether the task that closes expired idle connections runs.
    reaper: Mutex<bool>,
}

impl Pool {
    /// An empty pool keeping at most `max_idle_per_host` idle HTTP/1.1 connections per host,
    /// each for at most `idle_timeout`.
    pub(super) fn new(max_idle_per_host: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            hosts: Mutex::new(Vec::new()),
            max_idle_per_host,
            idle_timeout,
            reaper: Mutex::new(false),
        })
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, Vec<Host>> {
        // A panic while holding the lock cannot leave the map inconsistent (every change is a
        // single push, pop or assignment): keep using it.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The place of the host an absolute `http` or `https` URI names, and its `Host` header.
    pub(super) fn host_of(&self, uri: &Uri) -> Option<(HostId, Option<HeaderValue>)> {
        let https = is_https(uri)?;
        let authority = uri.authority()?.as_str();
        {
            let hosts = self.hosts();
            let spelt = |h: &&Host| h.seen.iter().any(|(s, a)| *s == https && **a == *authority);
            if let Some((i, h)) = hosts.iter().enumerate().find(|(_, h)| spelt(h)) {
                return Some((HostId(i), h.host_header.clone()));
            }
        }
        let found = self.host(&Target::of(uri)?);
        if let Some(host) = self.hosts().get_mut(found.0 .0) {
            // Spellings come from the config (route bases, tile subdomains), yet stay bounded.
            if host.seen.len() < MAX_SPELLINGS {
                host.seen.push((https, authority.into()));
            }
        }
        Some(found)
    }

    /// The place of `target`'s host, and its `Host` header.
    pub(super) fn host(&self, target: &Target<'_>) -> (HostId, Option<HeaderValue>) {
        let mut hosts = self.hosts();
        if let Some(i) = hosts.iter().position(|h| target.is(&h.key)) {
            return (HostId(i), hosts[i].host_header.clone());
        }
        let key = target.key();
        let host_header = target.host_header();
        hosts.push(Host {
            key,
            seen: Vec::new(),
            host_header: host_header.clone(),
            idle: Vec::new(),
            h2: None,
        });
        (HostId(hosts.len() - 1), host_header)
    }

    /// The key of a host, to connect to it.
    pub(super) fn key(&self, id: HostId) -> Option<Key> {
        self.hosts().get(id.0).map(|h| h.key.clone())
    }

    /// A kept-alive connection to host `id`, if one is open: the shared HTTP/2 one, else the
    /// most recently idle HTTP/1.1 one, preferably one this worker drives (a request on another
    /// worker's connection wakes that thread twice). It may still turn out closed when used.
    pub(super) fn checkout(&self, id: HostId) -> Option<Sender> {
        let mut hosts = self.hosts();
        let host = hosts.get_mut(id.0)?;
        if let Some(h2) = &host.h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2.clone()));
            }
            host.h2 = None;
        }
        let now = Instant::now();
        let here = crate::conn::workers::current();
        let usable = |(c, since): &(H1, Instant)| c.usable(*since, now, self.idle_timeout);
        let i = match host
            .idle
            .iter()
            .rposition(|e| e.0.home == here && usable(e))
        {
            Some(i) => i,
            None => {
                // Whatever is above the most recent usable one is closed or expired.
                let newest = host.idle.iter().rposition(usable);
                host.idle.truncate(newest.map_or(0, |i| i + 1));
                newest?
            }
        };
        Some(Sender::H1(host.idle.remove(i).0))
    }

    /// Keeps a new HTTP/2 connection for the next requests to host `id`.
    pub(super) fn share_h2(&self, id: HostId, sender: &http2::SendRequest<Full<Bytes>>) {
        if let Some(host) = self.hosts().get_mut(id.0) {
            host.h2 = Some(sender.clone());
        }
    }

    /// Forgets host `id`'s HTTP/2 connection (it refused a request).
    pub(super) fn drop_h2(&self, id: HostId) {
        if let Some(host) = self.hosts().get_mut(id.0) {
            host.h2 = None;
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange is complete.
    fn checkin(self: &Arc<Self>, id: HostId, conn: H1) {
        if conn.sender.is_closed() || self.max_idle_per_host == 0 {
            return;
        }
        {
            let mut hosts = self.hosts();
            let Some(host) = hosts.get_mut(id.0) else {
                return;
            };
            if host.idle.len() >= self.max_idle_per_host {
                // Dropping the oldest closes it; the newer ones are the likelier to be reused.
                host.idle.remove(0);
            }
            host.idle.push((conn, Instant::now()));
        }
        self.start_reaper();
    }

    /// Starts, once, the task that closes connections idle for longer than the timeout (and
    /// forgets those the upstream closed). It holds the pool weakly and ends with it.
    fn start_reaper(self: &Arc<Self>) {
        let mut started = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *started = true;
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(reap(pool, every));
    }
}

async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let timeout = pool.idle_timeout;
        for host in pool.hosts().iter_mut() {
            host.idle
                .retain(|(c, since)| c.usable(*since, now, timeout));
            if host.h2.as_ref().is_some_and(|h2| h2.is_closed()) {
                host.h2 = None;
            }
        }
    }
}

/// The body of an upstream response; an HTTP/1.1 connection goes back to the pool once the
/// body has been read to its end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<Return>,
    done: bool,
}

struct Return {
    pool: Arc<Pool>,
    host: HostId,
    conn: H1,
}

impl PooledBody {
    /// A body whose connection is not pooled per request (HTTP/2, or not reusable).
    pub(super) fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody {
            inner,
            back: None,
            done: false,
        }
    }

    /// A body that returns `conn` to `pool` when read to its end.
    pub(super) fn pooled(inner: Incoming, pool: Arc<Pool>, host: HostId, conn: H1) -> PooledBody {
        let mut body = PooledBody {
            inner,
            back: Some(Return { pool, host, conn }),
            done: false,
        };
        // An empty body (HEAD, 204, 304, Content-Length: 0) is already complete.
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(r) = self.back.take() {
            r.pool.checkin(r.host, r.conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            // The connection failed mid-body: hyper closes it, never reuse it.
            Some(Err(_)) => {
                this.back = None;
                this.done = true;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> Key {
        let uri: Uri = uri.parse().unwrap();
        Target::of(&uri).unwrap().key()
    }

    #[test]
    fn a_host_is_its_scheme_lowercased_name_and_port() {
        assert_eq!(
            key("https://Tiles.Example/a"),
            Key {
                https: true,
                host: "tiles.example".into(),
                port: 443
            }
        );
        assert_eq!(key("http://h:8080/").port, 8080);
        assert_eq!(key("http://[::1]:81/x").host, "::1");
        let uri: Uri = "ftp://h/x".parse().unwrap();
        assert!(Target::of(&uri).is_none());
        let uri: Uri = "/relative".parse().unwrap();
        assert!(Target::of(&uri).is_none());
    }

    #[test]
    fn the_authority_names_the_port_only_when_not_the_default() {
        assert_eq!(key("https://a.example/").authority(), "a.example");
        assert_eq!(key("https://a.example:8443/").authority(), "a.example:8443");
        assert_eq!(key("http://a.example:80/").authority(), "a.example");
        assert_eq!(key("http://[::1]:81/").authority(), "[::1]:81");
    }

    #[tokio::test]
    async fn one_place_per_host_whatever_the_case_of_its_name() {
        let pool = Pool::new(4, Duration::from_secs(1));
        let a: Uri = "https://A.example/x".parse().unwrap();
        let b: Uri = "https://a.example/y".parse().unwrap();
        let c: Uri = "http://a.example/y".parse().unwrap();
        let (ia, host) = pool.host(&Target::of(&a).unwrap());
        let (ib, _) = pool.host(&Target::of(&b).unwrap());
        let (ic, _) = pool.host(&Target::of(&c).unwrap());
        assert_eq!(ia, ib);
        assert_ne!(ia, ic);
        assert_eq!(host.unwrap(), "a.example");
        assert!(pool.checkout(ia).is_none());
    }

    #[tokio::test]
    async fn a_remembered_spelling_finds_the_same_host_as_parsing_it() {
        let pool = Pool::new(4, Duration::from_secs(1));
        let place = |uri: &str| pool.host_of(&uri.parse::<Uri>().unwrap());
        let first = place("https://A.example:443/x").unwrap();
        // Asked again in the same spelling (now remembered), and in others.
        assert_eq!(place("https://A.example:443/y").unwrap(), first);
        assert_eq!(place("https://a.example/z").unwrap(), first);
        assert_eq!(place("https://a.example/again").unwrap(), first);
        assert_eq!(first.1.unwrap(), "a.example");
        // The same authority under the other scheme is another host, remembered apart.
        let plain = place("http://a.example:443/x").unwrap();
        assert_ne!(plain.0, first.0);
        assert_eq!(place("http://a.example:443/y").unwrap().0, plain.0);
        assert_eq!(place("https://a.example:443/y").unwrap().0, first.0);
        assert_eq!(plain.1.unwrap(), "a.example:443");
        // Other ports are other hosts.
        assert_ne!(place("https://a.example:8443/").unwrap().0, first.0);
        assert!(place("ftp://a.example/").is_none());
        assert!(place("/relative").is_none());
        // Spellings are bounded, and a host asked for in more of them is still found.
        for i in 0..2 * MAX_SPELLINGS {
            let padded = format!("https://a.example:{:0>width$}/", 443, width = 3 + i);
            assert_eq!(place(&padded).unwrap().0, first.0, "{padded}");
        }
        let hosts = pool.hosts();
        assert!(hosts.iter().all(|h| h.seen.len() <= MAX_SPELLINGS));
    }
}

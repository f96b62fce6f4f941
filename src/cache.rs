//! The shared cache: what may be stored and for how long (RFC 9111 through
//! `http-cache-semantics`, as a shared cache), a moka store bounded in bytes, and request
//! coalescing so that concurrent misses on one key make a single upstream request.
//!
//! A hit is a map lookup plus clones of a pre-built header map and a `Bytes` body: nothing on
//! the hit path allocates a body or holds a lock across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy};
use moka::future::Cache as Moka;
use moka::Expiry;
use tokio::sync::watch;

use crate::policy::AcceptEncoding;

/// Identifies one stored variant. Built only from what tamis sends upstream (route, upstream
/// URL, normalised Accept-Encoding), never from headers it strips.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub route: usize,
    pub uri: Uri,
    pub encoding: AcceptEncoding,
}

/// A stored response, ready to serve.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// Scrubbed headers, as served (without `Age`).
    pub headers: HeaderMap,
    pub body: Bytes,
    stored_at: Instant,
    /// Age of the response when it was stored (the upstream's `Age`).
    initial_age: Duration,
    /// Freshness left when it was stored.
    fresh_for: Duration,
    weight: u32,
}

impl Entry {
    /// Builds an entry; `fresh_for` and `initial_age` come from [`storability`].
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes, decision: Storable) -> Entry {
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        // Fixed overhead per entry (key, struct, moka bookkeeping), roughly.
        let weight = body.len() + header_bytes + 256;
        Entry {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            initial_age: decision.age,
            fresh_for: decision.fresh_for,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Whether it can be served without asking the upstream.
    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored_at) < self.fresh_for
    }

    /// The `Age` to send, in seconds.
    pub fn age(&self, now: Instant) -> u64 {
        (self.initial_age + now.saturating_duration_since(self.stored_at)).as_secs()
    }

    /// Bytes it counts for against `max_bytes`.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// A response the cache may keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storable {
    pub fresh_for: Duration,
    pub age: Duration,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// RFC 9111 forbids it (no-store, private, status, method…).
    Forbidden,
    /// No freshness left (no lifetime given, no-cache, already stale…).
    NoFreshness,
    /// The upstream tried to set a cookie: the answer was meant for one client.
    SetCookie,
    /// `Vary` names a header tamis does not key on (or `*`).
    Vary,
    /// Larger than `max_object_bytes`.
    TooLarge,
}

impl NotStored {
    /// A short token for logs and `Cache-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Forbidden => "forbidden",
            NotStored::NoFreshness => "no-freshness",
            NotStored::SetCookie => "set-cookie",
            NotStored::Vary => "vary",
            NotStored::TooLarge => "too-large",
        }
    }
}

/// The request headers the cache key accounts for: a `Vary` on anything else is not stored.
const KEYED_VARY: &[&str] = &["accept-encoding"];

/// Decides whether a response to `request` (as sent upstream) may be stored.
/// `upstream_headers` are the response headers before scrubbing.
pub fn storability(
    request: &http::request::Parts,
    status: StatusCode,
    upstream_headers: &HeaderMap,
    now: SystemTime,
) -> Result<Storable, NotStored> {
    if upstream_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    for v in upstream_headers.get_all(header::VARY) {
        let Ok(v) = v.to_str() else {
            return Err(NotStored::Vary);
        };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !KEYED_VARY.iter().any(|k| k.eq_ignore_ascii_case(name)) {
                return Err(NotStored::Vary);
            }
        }
    }
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = upstream_headers.clone();
    let options = CacheOptions {
        shared: true,
        // No heuristic freshness: only what the upstream states explicitly is kept.
        cache_heuristic: 0.0,
        immutable_min_time_to_live: Duration::ZERO,
        ignore_cargo_cult: false,
    };
    let policy = CachePolicy::new_options(request, &response, now, options);
    if !policy.is_storable() {
        return Err(NotStored::Forbidden);
    }
    let fresh_for = policy.time_to_live(now);
    if fresh_for.is_zero() {
        return Err(NotStored::NoFreshness);
    }
    Ok(Storable {
        fresh_for,
        age: policy.age(now),
    })
}

/// What a fill (the one upstream fetch for a key) ended with, as seen by those waiting on it.
#[derive(Clone, Debug)]
pub enum Fill {
    /// Stored: serve it.
    Stored(Arc<Entry>),
    /// Not storable: each waiter fetches on its own.
    NotStored,
    /// The upstream failed: waiters answer with the same status instead of piling on.
    Failed(StatusCode),
}

type FillState = watch::Receiver<Option<Fill>>;

/// The result of a lookup.
pub enum Lookup<'c> {
    /// A fresh stored copy.
    Hit(Arc<Entry>),
    /// Nobody is fetching this key: the caller must, and report through the guard.
    Lead(FillGuard<'c>),
    /// Another request is fetching it: wait with [`Cache::wait`].
    Wait(FillState),
}

/// What waiting on another request's fill gave.
pub enum Waited {
    Fill(Fill),
    /// The leader went away without a result (client gone) or took too long: look up again.
    Retry,
}

/// The cache.
pub struct Cache {
    store: Moka<CacheKey, Arc<Entry>>,
    fills: Mutex<HashMap<CacheKey, FillState>>,
    max_object_bytes: u64,
}

/// Entries leave moka when their freshness runs out.
struct Freshness;

impl Expiry<CacheKey, Arc<Entry>> for Freshness {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_for)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.fresh_for)
    }
}

impl Cache {
    /// A cache holding at most `max_bytes` (weights of bodies and headers).
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Cache {
        let store = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &CacheKey, v: &Arc<Entry>| v.weight)
            .expire_after(Freshness)
            .build();
        Cache {
            store,
            fills: Mutex::new(HashMap::new()),
            max_object_bytes,
        }
    }

    /// Largest body that is buffered and stored.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// Looks `key` up; on a miss, either makes the caller the one to fetch it or hands back
    /// the fill to wait for.
    pub async fn lookup(&self, key: &CacheKey) -> Lookup<'_> {
        if let Some(hit) = self.fresh(key).await {
            return Lookup::Hit(hit);
        }
        let lead = {
            let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
            match fills.get(key) {
                Some(rx) => return Lookup::Wait(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    fills.insert(key.clone(), rx);
                    tx
                }
            }
        };
        let guard = FillGuard {
            cache: self,
            key: key.clone(),
            tx: lead,
            done: false,
        };
        // A fill may have completed between the first look and taking the lead: it stores
        // before it leaves the fill table, so a second look settles it.
        if let Some(hit) = self.fresh(key).await {
            guard.finish(Fill::Stored(hit.clone())).await;
            return Lookup::Hit(hit);
        }
        Lookup::Lead(guard)
    }

    async fn fresh(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.store.get(key).await?;
        entry.is_fresh(Instant::now()).then_some(entry)
    }

    /// Waits for another request's fill, at most `limit`.
    pub async fn wait(mut rx: FillState, limit: Duration) -> Waited {
        match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
            Ok(Ok(fill)) => match fill.as_ref() {
                Some(fill) => Waited::Fill(fill.clone()),
                None => Waited::Retry,
            },
            Ok(Err(_closed)) => Waited::Retry,
            Err(_elapsed) => Waited::Retry,
        }
    }

    /// Bytes held (weights) and entries, after applying pending evictions.
    pub async fn size(&self) -> (u64, u64) {
        self.store.run_pending_tasks().await;
        (self.store.weighted_size(), self.store.entry_count())
    }
}

/// Held by the one request fetching a key; dropping it without [`FillGuard::finish`] (client
/// gone, task cancelled) releases the waiters, who then look up again.
pub struct FillGuard<'c> {
    cache: &'c Cache,
    key: CacheKey,
    tx: watch::Sender<Option<Fill>>,
    done: bool,
}

impl FillGuard<'_> {
    /// Publishes the fill's result: stores first, then wakes the waiters, then leaves the table.
    pub async fn finish(mut self, fill: Fill) {
        if let Fill::Stored(entry) = &fill {
            self.cache
                .store
                .insert(self.key.clone(), entry.clone())
                .await;
        }
        self.tx.send_replace(Some(fill));
        self.release();
    }

    fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let mut fills = self.cache.fills.lock().unwrap_or_else(|p| p.into_inner());
        if fills
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            fills.remove(&self.key);
        }
    }
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn get(uri: &str) -> http::request::Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn decide(status: u16, pairs: &[(&'static str, &'static str)]) -> Result<Storable, NotStored> {
        storability(
            &get("https://cdn.example/a"),
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            SystemTime::now(),
        )
    }

    #[test]
    fn explicit_lifetimes_are_stored() {
        let s = decide(200, &[("cache-control", "public, max-age=60")]).unwrap();
        assert_eq!(s.fresh_for, Duration::from_secs(60));
        let s = decide(200, &[("cache-control", "max-age=60, s-maxage=600")]).unwrap();
        assert_eq!(
            s.fresh_for,
            Duration::from_secs(600),
            "s-maxage wins in a shared cache"
        );
        let s = decide(200, &[("cache-control", "max-age=60"), ("age", "50")]).unwrap();
        assert_eq!(s.fresh_for, Duration::from_secs(10));
        assert_eq!(s.age, Duration::from_secs(50));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let mut h = headers(&[]);
        h.insert("expires", HeaderValue::from_str(&in_a_minute).unwrap());
        let s = storability(&get("https://x/"), StatusCode::OK, &h, SystemTime::now()).unwrap();
        assert!(s.fresh_for > Duration::from_secs(55), "{s:?}");
        assert!(decide(404, &[("cache-control", "max-age=30")]).is_ok());
    }

    #[test]
    fn what_must_not_be_stored_is_not() {
        assert_eq!(
            decide(200, &[("cache-control", "no-store, max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[("cache-control", "private, max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[("cache-control", "no-cache, max-age=60")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            decide(200, &[]),
            Err(NotStored::NoFreshness),
            "no heuristic freshness"
        );
        assert_eq!(
            decide(200, &[("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            decide(206, &[("cache-control", "max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=0")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=60"), ("age", "61")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            decide(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStored::Vary)
        );
        assert_eq!(
            decide(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("vary", "Accept-Encoding, Cookie")
                ]
            ),
            Err(NotStored::Vary)
        );
        assert!(decide(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-encoding")]
        )
        .is_ok());
        assert_eq!(
            decide(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("expires", "0"),
                    ("cache-control", "s-maxage=0")
                ]
            ),
            Err(NotStored::NoFreshness)
        );
    }

    fn key(n: usize) -> CacheKey {
        CacheKey {
            route: 0,
            uri: format!("https://cdn.example/{n}").parse().unwrap(),
            encoding: AcceptEncoding::Identity,
        }
    }

    fn entry(body: usize, secs: u64) -> Arc<Entry> {
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![0u8; body]),
            Storable {
                fresh_for: Duration::from_secs(secs),
                age: Duration::ZERO,
            },
        ))
    }

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_share_its_fill() {
        let cache = Cache::new(1 << 20, 1 << 16);
        let Lookup::Lead(guard) = cache.lookup(&key(1)).await else {
            panic!("expected lead")
        };
        let Lookup::Wait(rx) = cache.lookup(&key(1)).await else {
            panic!("expected wait")
        };
        assert!(
            matches!(cache.lookup(&key(2)).await, Lookup::Lead(_)),
            "other keys are independent"
        );
        guard.finish(Fill::Stored(entry(10, 60))).await;
        assert!(matches!(
            Cache::wait(rx, Duration::from_secs(1)).await,
            Waited::Fill(Fill::Stored(_))
        ));
        assert!(matches!(cache.lookup(&key(1)).await, Lookup::Hit(_)));
    }

    #[tokio::test]
    async fn an_abandoned_fill_releases_its_waiters() {
        let cache = Cache::new(1 << 20, 1 << 16);
        let Lookup::Lead(guard) = cache.lookup(&key(1)).await else {
            panic!("expected lead")
        };
        let Lookup::Wait(rx) = cache.lookup(&key(1)).await else {
            panic!("expected wait")
        };
        drop(guard);
        assert!(matches!(
            Cache::wait(rx, Duration::from_secs(1)).await,
            Waited::Retry
        ));
        assert!(
            matches!(cache.lookup(&key(1)).await, Lookup::Lead(_)),
            "a new leader can start"
        );
    }

    #[tokio::test]
    async fn stale_entries_are_not_hits() {
        let cache = Cache::new(1 << 20, 1 << 16);
        let e = Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            Storable {
                fresh_for: Duration::from_millis(50),
                age: Duration::ZERO,
            },
        ));
        let Lookup::Lead(guard) = cache.lookup(&key(1)).await else {
            panic!()
        };
        guard.finish(Fill::Stored(e)).await;
        assert!(matches!(cache.lookup(&key(1)).await, Lookup::Hit(_)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(matches!(cache.lookup(&key(1)).await, Lookup::Lead(_)));
    }

    #[tokio::test]
    async fn the_byte_bound_holds() {
        let max = 200_000;
        let cache = Cache::new(max, 20_000);
        for n in 0..100 {
            if let Lookup::Lead(g) = cache.lookup(&key(n)).await {
                g.finish(Fill::Stored(entry(10_000, 600))).await;
            }
        }
        let (bytes, entries) = cache.size().await;
        assert!(bytes <= max, "{bytes} > {max}");
        assert!(entries < 100 && entries > 0, "{entries}");
    }
}

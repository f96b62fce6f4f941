//! The shared cache: whether a response may be stored (RFC 9111 §3, through
//! `http-cache-semantics`), how long it stays fresh or usable stale ([`freshness`]), a moka
//! store bounded in bytes, variants by `Vary`, and request coalescing so that concurrent misses
//! (and revalidations) of one key make a single upstream request.
//!
//! A fresh hit is a map lookup plus clones of a pre-built header map and a `Bytes` body: nothing
//! on the hit path allocates a body or holds a lock across an await.
//!
//! `key` names what is stored, `entry` is what is served, `storable` decides whether an answer
//! is kept, `fill` coalesces the fetches; this file holds the store itself (lookup, purge,
//! eviction). Their public names are re-exported here: `cache::X` is the one path to each.

pub mod conditional;
pub mod disk;
mod entry;
mod fill;
pub mod freshness;
mod key;
mod storable;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, Uri};
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;
use moka::Expiry;
use tokio::sync::watch;

pub use entry::{content_etag, Entry, Rendition, Staleness, CACHE_STATUS, CACHE_STATUS_HIT};
pub use fill::{Fill, FillGuard, FillState, Lookup, Waited};
pub use freshness::{Lifetimes, Rules};
pub use key::{vary_names, vary_values, CacheKey, KeyParts, VaryRefused, VaryValues};
pub use storable::{storability, NotStored, Storable};

use disk::DiskTier;
use key::variant_hash;

/// A stored value: an object, the list of headers the objects under this primary key vary
/// on (the objects themselves sit under variant keys), or a hit-for-miss marker.
#[derive(Clone, Debug)]
enum Slot {
    Object(Arc<Entry>),
    Vary {
        names: Arc<[HeaderName]>,
        keep: Duration,
    },
    /// The last answer could not be stored: until this expires, requests for the key fetch
    /// without waiting on each other (and store the answer if it has become storable).
    Pass {
        keep: Duration,
    },
}

/// What a key holds, as a lookup sees it.
enum Found {
    Object(Arc<Entry>),
    /// Read back from the disk tier on a memory miss (and promoted to memory).
    Disk(Arc<Entry>),
    Pass,
    Nothing,
}

/// Why entries left the cache (the `result` label of `tamis_cache_evictions_total`).
pub type EvictionHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The cache.
pub struct Cache {
    store: Moka<CacheKey, Slot>,
    fills: Mutex<HashMap<CacheKey, FillState>>,
    max_object_bytes: u64,
    /// Hit-for-miss markers held: moka counts them as entries, the entries gauge must not.
    markers: Arc<AtomicU64>,
    /// The second tier, when `cache.disk_dir` is set and writable.
    disk: Option<Arc<DiskTier>>,
    /// The `cache_id`s of the route parts that use the disk tier (set by each state).
    disk_routes: RwLock<Arc<[u64]>>,
}

/// Entries leave moka once nothing can use them any more.
struct Lifetime;

impl Lifetime {
    fn of(slot: &Slot) -> Duration {
        match slot {
            Slot::Object(e) => e.time_to_keep(),
            Slot::Vary { keep, .. } | Slot::Pass { keep } => *keep,
        }
    }
}

impl Expiry<CacheKey, Slot> for Lifetime {
    fn expire_after_create(&self, _: &CacheKey, value: &Slot, _: Instant) -> Option<Duration> {
        Some(Lifetime::of(value))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Lifetime::of(value))
    }
}

impl Cache {
    /// A cache holding at most `max_bytes` (weights of bodies and headers); `evicted` is told
    /// why each entry left ("size", "expired", "purged").
    pub fn new(max_bytes: u64, max_object_bytes: u64, evicted: EvictionHook) -> Cache {
        let markers = Arc::new(AtomicU64::new(0));
        let gone = markers.clone();
        let store = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &CacheKey, v: &Slot| match v {
                Slot::Object(e) => e.weight(),
                Slot::Vary { names, .. } => 256 + 32 * names.len() as u32,
                Slot::Pass { .. } => 256,
            })
            .expire_after(Lifetime)
            // Markers are not objects: their comings and goings are no eviction. Each marker
            // inserted leaves through here exactly once (replaced, expired, evicted, purged).
            .eviction_listener(move |_k, v, cause| match cause {
                _ if matches!(v, Slot::Pass { .. }) => {
                    gone.fetch_sub(1, Ordering::Relaxed);
                }
                // A Vary list is an index over objects, not one: the evictions metric counts
                // responses.
                _ if matches!(v, Slot::Vary { .. }) => {}
                RemovalCause::Size => evicted("size"),
                RemovalCause::Expired => evicted("expired"),
                RemovalCause::Explicit => evicted("purged"),
                RemovalCause::Replaced => {}
            })
            .build();
        Cache {
            store,
            fills: Mutex::new(HashMap::new()),
            max_object_bytes,
            markers,
            disk: None,
            disk_routes: RwLock::new(Arc::from(Vec::new())),
        }
    }

    /// The cache with a disk tier behind its memory.
    pub fn with_disk(mut self, disk: Option<Arc<DiskTier>>) -> Cache {
        self.disk = disk;
        self
    }

    /// The disk tier, if there is one.
    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    /// Which route parts (by `cache_id`) keep their objects on disk too. The disk tier drops at
    /// once what it holds of any other (after a reload, the routes it changed or dropped; at
    /// start, once loaded, what it found of routes changed while tamis was down).
    pub fn set_disk_routes(&self, ids: Vec<u64>) {
        let ids: Arc<[u64]> = Arc::from(ids);
        *self.disk_routes.write().unwrap_or_else(|p| p.into_inner()) = ids.clone();
        if let Some(disk) = &self.disk {
            disk.set_live(ids);
        }
    }

    /// The disk tier, if this route uses it.
    pub(crate) fn disk_for(&self, route: u64) -> Option<&Arc<DiskTier>> {
        let disk = self.disk.as_ref()?;
        self.disk_routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&route)
            .then_some(disk)
    }

    /// On a memory miss: the object the disk tier holds for `key` (see [`Self::use_disk_read`]).
    async fn read_disk(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<Entry>> {
        let disk = self.disk_for(key.route)?;
        self.use_disk_read(key, disk.read(key).await?, request, Instant::now())
            .await
    }

    /// An object read from disk for `key`, if it answers `request`: promoted to memory when
    /// memory would still hold it at its next read, that is when it came back within memory's
    /// size of other disk reads (as an LRU of `max_bytes` would have kept it). An object read
    /// round-robin among more than memory holds is not: each promotion would only evict
    /// another, the cost of a memory insert and an eviction per hit for no memory hit (nginx,
    /// with no memory tier, pays neither). A copy that is no longer fresh always is: the
    /// request that found it looks again (to take the lead, then once it has it) before its
    /// revalidation's answer replaces it, and would read its file each time.
    async fn use_disk_read(
        &self,
        key: &CacheKey,
        read: disk::Read,
        request: &HeaderMap,
        now: Instant,
    ) -> Option<Arc<Entry>> {
        let entry = read.entry;
        if !entry.matches(request) {
            return None;
        }
        if read.reuse < self.max_bytes() || entry.staleness(now) != Staleness::Fresh {
            self.store
                .insert(key.clone(), Slot::Object(entry.clone()))
                .await;
        }
        Some(entry)
    }

    /// On a memory miss of a primary key: what the disk tier holds for it, its Vary list
    /// (promoted to memory) resolved to the request's variant as memory resolves it.
    async fn resolve_on_disk(&self, primary: &CacheKey, request: &HeaderMap) -> (CacheKey, Found) {
        let Some(disk) = self.disk_for(primary.route) else {
            return (primary.clone(), Found::Nothing);
        };
        let (key, read) = match disk.held(primary) {
            Some(disk::Held::Vary(names, keep)) => {
                let key = primary.with_variant(variant_hash(&vary_values(&names, request)));
                self.store
                    .insert(primary.clone(), Slot::Vary { names, keep })
                    .await;
                let read = disk.read(&key).await;
                (key, read)
            }
            Some(disk::Held::Object(o)) => (primary.clone(), disk.read_held(primary, o).await),
            // Still waiting for its writer (memory let it go before the disk caught up): the
            // very entry memory held, no file to read.
            Some(disk::Held::Queued(entry)) => {
                (primary.clone(), Some(disk::Read { entry, reuse: 0 }))
            }
            None => return (primary.clone(), Found::Nothing),
        };
        let found = match read {
            Some(read) => {
                self.use_disk_read(&key, read, request, Instant::now())
                    .await
            }
            None => None,
        };
        match found {
            Some(e) => (key, Found::Disk(e)),
            None => (key, Found::Nothing),
        }
    }

    /// Largest body that is buffered and stored.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// The stored copy for `primary` if it is fresh and varies on nothing: the common hit,
    /// answered before any request header is scrubbed.
    pub async fn fresh(&self, primary: &CacheKey) -> Option<Arc<Entry>> {
        self.fresh_at(primary.parts(), Instant::now()).await
    }

    /// [`fresh`](Self::fresh), or on a memory miss the fresh copy the disk tier holds for
    /// `primary` if it varies on nothing (read and promoted as any disk hit; `true` with it):
    /// the common disk hit too is answered before any request header is scrubbed. Anything
    /// else (a stale copy, a Vary list, a hit-for-miss marker) is left to [`lookup`].
    ///
    /// [`lookup`]: Self::lookup
    pub async fn fresh_or_disk(&self, primary: &CacheKey) -> Option<(Arc<Entry>, bool)> {
        match self.store.get(primary).await {
            Some(Slot::Object(e)) if e.staleness(Instant::now()) == Staleness::Fresh => {
                Some((e, false))
            }
            Some(_) => None,
            // Boxed: only a memory miss pays for the disk read's future.
            None => Box::pin(self.fresh_on_disk(primary))
                .await
                .map(|e| (e, true)),
        }
    }

    /// The disk half of [`fresh_or_disk`](Self::fresh_or_disk).
    async fn fresh_on_disk(&self, primary: &CacheKey) -> Option<Arc<Entry>> {
        let read = self.disk_for(primary.route)?.read(primary).await?;
        if !read.entry.vary.is_empty() {
            return None;
        }
        // Varying on nothing, it answers any request; one no longer fresh is promoted too (see
        // `use_disk_read`), so the lookup that follows finds it without reading it again.
        let now = Instant::now();
        let e = self
            .use_disk_read(primary, read, &HeaderMap::new(), now)
            .await?;
        (e.staleness(now) == Staleness::Fresh).then_some(e)
    }

    /// [`fresh`](Self::fresh) at `now`, looked up by the key's borrowed parts: nothing is
    /// built (and the caller's clock reading serves for the answer's `Age` too).
    pub async fn fresh_at(&self, primary: KeyParts<'_>, now: Instant) -> Option<Arc<Entry>> {
        match self.store.get(&primary).await {
            Some(Slot::Object(e)) if e.staleness(now) == Staleness::Fresh => Some(e),
            _ => None,
        }
    }

    /// Resolves the key a request maps to: the primary key, or the variant its Vary'd header
    /// values select. Also returns what is stored there.
    async fn resolve(&self, primary: &CacheKey, request: &HeaderMap) -> (CacheKey, Found) {
        match self.store.get(primary).await {
            Some(Slot::Object(e)) => (primary.clone(), Found::Object(e)),
            Some(Slot::Pass { .. }) => (primary.clone(), Found::Pass),
            Some(Slot::Vary { names, .. }) => {
                let key = primary.with_variant(variant_hash(&vary_values(&names, request)));
                let found = match self.store.get(&key).await {
                    Some(Slot::Object(e)) if e.matches(request) => Found::Object(e),
                    Some(Slot::Pass { .. }) => Found::Pass,
                    Some(Slot::Object(_)) => Found::Nothing,
                    None => match self.read_disk(&key, request).await {
                        Some(e) => Found::Disk(e),
                        None => Found::Nothing,
                    },
                    _ => Found::Nothing,
                };
                (key, found)
            }
            None => self.resolve_on_disk(primary, request).await,
        }
    }

    /// Looks a request up; on a miss (or a stale copy that needs revalidating) either makes the
    /// caller the one to fetch it or hands back the fill to wait for. Under a hit-for-miss
    /// marker every caller fetches, each with a guard of its own that no one waits on.
    pub async fn lookup(&self, primary: &CacheKey, request: &HeaderMap) -> Lookup<'_> {
        let (key, found) = self.resolve(primary, request).await;
        let stale = match found {
            Found::Disk(e) if e.staleness(Instant::now()) == Staleness::Fresh => {
                return Lookup::FreshFromDisk(e)
            }
            Found::Object(e) | Found::Disk(e) => match e.staleness(Instant::now()) {
                Staleness::Fresh => return Lookup::Fresh(e),
                Staleness::WhileRevalidate => return Lookup::StaleWhileRevalidate(e, key),
                Staleness::Stale => Some(e),
            },
            Found::Pass => {
                let guard = FillGuard {
                    cache: self,
                    key,
                    tx: watch::channel(None).0,
                    done: false,
                };
                return Lookup::Lead { stale: None, guard };
            }
            Found::Nothing => None,
        };
        let lead = {
            let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
            match fills.get(&key) {
                Some(rx) => {
                    return Lookup::Wait {
                        stale,
                        fill: rx.clone(),
                    }
                }
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
        if let (_, Found::Object(e) | Found::Disk(e)) = self.resolve(primary, request).await {
            if e.staleness(Instant::now()) == Staleness::Fresh {
                guard.finish(Fill::Stored(e.clone()), &[]).await;
                return Lookup::Fresh(e);
            }
        }
        Lookup::Lead { stale, guard }
    }

    /// Takes the lead on `key` if nobody is fetching it (background refresh).
    pub fn try_lead(&self, key: &CacheKey) -> Option<FillGuard<'_>> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if fills.contains_key(key) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        fills.insert(key.clone(), rx);
        Some(FillGuard {
            cache: self,
            key: key.clone(),
            tx,
            done: false,
        })
    }

    /// The result of a fill, if it has one.
    pub fn settled(fill: &FillState) -> Option<Fill> {
        fill.borrow().clone()
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

    /// Drops everything stored for `uri` on a route (every variant): what RFC 9111
    /// §4.4 asks after an unsafe method succeeds.
    pub async fn invalidate(&self, route: u64, uri: &Uri) {
        // Removing the primary key also makes its Vary variants unreachable.
        let primary = CacheKey::primary(route, uri.clone());
        if let Some(disk) = &self.disk {
            disk.invalidate(&primary);
        }
        self.store.invalidate(&primary).await;
    }

    /// Removes the objects of `route` whose upstream path is `path`, or starts with it when
    /// `prefix`; returns how many were removed.
    pub async fn purge(&self, route: u64, path: &str, prefix: bool) -> usize {
        self.remove_where(|k| {
            k.route == route
                && if prefix {
                    k.uri.path().starts_with(path)
                } else {
                    k.uri.path() == path
                }
        })
        .await
    }

    /// Removes every object of one route; returns how many were removed.
    pub async fn purge_route(&self, route: u64) -> usize {
        self.remove_where(|k| k.route == route).await
    }

    /// Removes every object of a route not in `live` (after a reload removed or changed it);
    /// returns how many were removed. On disk, also the objects of routes that no longer use
    /// the disk tier (see [`set_disk_routes`](Self::set_disk_routes), set before).
    pub async fn retain_routes(&self, live: &[u64]) -> usize {
        let on_disk = self
            .disk_routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let memory = self.remove_in_memory(|k| !live.contains(&k.route)).await;
        let disk = match &self.disk {
            Some(d) => d.remove_where(|k| !on_disk.contains(&k.route)),
            None => Vec::new(),
        };
        count_once(memory, disk)
    }

    /// Removes every slot whose key matches (Vary lists and hit-for-miss markers with the
    /// objects) and returns how many objects went: the operator asked about responses, and a
    /// varied object would otherwise count twice and a marker as one.
    async fn remove_where(&self, doomed: impl Fn(&CacheKey) -> bool) -> usize {
        let memory = self.remove_in_memory(&doomed).await;
        let disk = match &self.disk {
            Some(d) => d.remove_where(&doomed),
            None => Vec::new(),
        };
        count_once(memory, disk)
    }

    /// Removes the memory slots whose key matches; returns the object keys removed.
    async fn remove_in_memory(&self, doomed: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        let doomed: Vec<(CacheKey, bool)> = self
            .store
            .iter()
            .filter(|(k, _)| doomed(k))
            .map(|(k, v)| ((*k).clone(), matches!(v, Slot::Object(_))))
            .collect();
        for (k, _) in &doomed {
            self.store.invalidate(k).await;
        }
        doomed
            .into_iter()
            .filter(|(_, object)| *object)
            .map(|(k, _)| k)
            .collect()
    }

    /// The configured bound, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.store.policy().max_capacity().unwrap_or(0)
    }

    /// Bytes held (weights, markers included) and entries (markers not), after applying
    /// pending evictions.
    pub async fn size(&self) -> (u64, u64) {
        self.store.run_pending_tasks().await;
        let markers = self.markers.load(Ordering::Relaxed);
        let entries = self.store.entry_count().saturating_sub(markers);
        (self.store.weighted_size(), entries)
    }
}

/// How many objects went from either tier, each counted once.
fn count_once(memory: Vec<CacheKey>, disk: Vec<CacheKey>) -> usize {
    let mut all: std::collections::HashSet<CacheKey> = memory.into_iter().collect();
    all.extend(disk);
    all.len()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{header, HeaderValue, StatusCode};

    use super::*;

    fn key(n: usize) -> CacheKey {
        CacheKey::primary(0, format!("https://cdn.example/{n}").parse().unwrap())
    }

    fn lifetimes(fresh: Duration) -> Lifetimes {
        Lifetimes {
            fresh_for: fresh,
            age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
        }
    }

    fn entry(body: usize, fresh: Duration, vary: VaryValues) -> Arc<Entry> {
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![0u8; body]),
            Rendition::AsSent,
            lifetimes(fresh),
            vary,
            Duration::ZERO,
            true,
        ))
    }

    fn cache(max: u64) -> Cache {
        Cache::new(max, max / 4, Arc::new(|_| {}))
    }

    /// Two lookups of key 1 on an empty cache: the first leads, the second waits on it.
    async fn lead_and_wait<'c>(cache: &'c Cache, h: &HeaderMap) -> (FillGuard<'c>, FillState) {
        lead_and_wait_on(cache, &key(1), h).await
    }

    /// Two lookups of `k`: the first leads, the second waits on it.
    async fn lead_and_wait_on<'c>(
        cache: &'c Cache,
        k: &CacheKey,
        h: &HeaderMap,
    ) -> (FillGuard<'c>, FillState) {
        let Lookup::Lead { guard, .. } = cache.lookup(k, h).await else {
            panic!("expected lead")
        };
        let Lookup::Wait { fill, .. } = cache.lookup(k, h).await else {
            panic!("expected wait")
        };
        (guard, fill)
    }

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_share_its_fill() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        let (guard, fill) = lead_and_wait(&cache, &h).await;
        assert!(
            matches!(cache.lookup(&key(2), &h).await, Lookup::Lead { .. }),
            "other keys are independent"
        );
        guard
            .finish(Fill::Stored(entry(10, MIN, vec![])), &[])
            .await;
        assert!(matches!(
            Cache::wait(fill, Duration::from_secs(1)).await,
            Waited::Fill(Fill::Stored(_))
        ));
        assert!(matches!(cache.lookup(&key(1), &h).await, Lookup::Fresh(_)));
    }

    #[tokio::test]
    async fn under_a_hit_for_miss_marker_every_request_fetches_until_one_stores() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        let (guard, fill) = lead_and_wait(&cache, &h).await;
        guard
            .not_stored(NotStored::Forbidden, StatusCode::OK, MIN)
            .await;
        assert!(matches!(Cache::settled(&fill), Some(Fill::NotStored)));
        assert_eq!(cache.size().await.1, 0, "a marker is not an object");
        // Two at once: both lead, neither waits on the other.
        let Lookup::Lead { guard: a, .. } = cache.lookup(&key(1), &h).await else {
            panic!("expected lead")
        };
        let Lookup::Lead { guard: b, .. } = cache.lookup(&key(1), &h).await else {
            panic!("expected a second lead, not a wait")
        };
        // The answer became storable: it replaces the marker, and coalescing is back.
        a.finish(Fill::Stored(entry(10, MIN, vec![])), &[]).await;
        drop(b);
        assert!(matches!(cache.lookup(&key(1), &h).await, Lookup::Fresh(_)));
        assert_eq!(cache.size().await.1, 1);
        // A transient refusal, or a zero hit_for_miss, leaves no marker.
        for (status, ttl) in [
            (StatusCode::SERVICE_UNAVAILABLE, MIN),
            (StatusCode::OK, Duration::ZERO),
        ] {
            let Lookup::Lead { guard, .. } = cache.lookup(&key(2), &h).await else {
                panic!("expected lead")
            };
            guard.not_stored(NotStored::Forbidden, status, ttl).await;
            let (_lead, _fill) = lead_and_wait_on(&cache, &key(2), &h).await;
        }
    }

    #[tokio::test]
    async fn a_failed_fill_is_readable_once_its_lead_is_free() {
        // A waiter whose wait ran out just as the fill failed looks up again and may get the
        // lead: the failure must be in its copy of the fill by then (no second fetch).
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        let (guard, fill) = lead_and_wait(&cache, &h).await;
        assert!(Cache::settled(&fill).is_none());
        guard
            .finish(Fill::Failed(StatusCode::GATEWAY_TIMEOUT), &[])
            .await;
        assert!(matches!(
            cache.lookup(&key(1), &h).await,
            Lookup::Lead { .. }
        ));
        assert!(matches!(
            Cache::settled(&fill),
            Some(Fill::Failed(StatusCode::GATEWAY_TIMEOUT))
        ));
    }

    #[tokio::test]
    async fn an_abandoned_fill_releases_its_waiters() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        let (guard, fill) = lead_and_wait(&cache, &h).await;
        drop(guard);
        assert!(matches!(
            Cache::wait(fill, Duration::from_secs(1)).await,
            Waited::Retry
        ));
        assert!(
            matches!(cache.lookup(&key(1), &h).await, Lookup::Lead { .. }),
            "a new leader can start"
        );
    }

    #[tokio::test]
    async fn stale_entries_come_back_for_revalidation() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        let mut hs = HeaderMap::new();
        hs.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        let e = Arc::new(Entry::new(
            StatusCode::OK,
            hs,
            Bytes::new(),
            Rendition::AsSent,
            lifetimes(Duration::from_millis(50)),
            vec![],
            MIN,
            false,
        ));
        let Lookup::Lead { guard, .. } = cache.lookup(&key(1), &h).await else {
            panic!()
        };
        guard.finish(Fill::Stored(e), &[]).await;
        assert!(matches!(cache.lookup(&key(1), &h).await, Lookup::Fresh(_)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        match cache.lookup(&key(1), &h).await {
            Lookup::Lead { stale: Some(s), .. } => {
                assert_eq!(s.upstream_etag.as_ref().unwrap(), "\"v1\"")
            }
            _ => panic!("expected a lead with the stale copy"),
        };
    }

    #[tokio::test]
    async fn variants_are_kept_apart() {
        let cache = cache(1 << 20);
        let mut a = HeaderMap::new();
        a.insert(header::ACCEPT, HeaderValue::from_static("image/webp"));
        let mut b = HeaderMap::new();
        b.insert(header::ACCEPT, HeaderValue::from_static("image/png"));
        let names = [header::ACCEPT];
        let Lookup::Lead { guard, .. } = cache.lookup(&key(1), &a).await else {
            panic!()
        };
        guard
            .finish(Fill::Stored(entry(1, MIN, vary_values(&names, &a))), &names)
            .await;
        assert!(matches!(cache.lookup(&key(1), &a).await, Lookup::Fresh(_)));
        let Lookup::Lead { guard, .. } = cache.lookup(&key(1), &b).await else {
            panic!("another Accept is another variant")
        };
        guard
            .finish(Fill::Stored(entry(2, MIN, vary_values(&names, &b))), &names)
            .await;
        let Lookup::Fresh(ea) = cache.lookup(&key(1), &a).await else {
            panic!()
        };
        let Lookup::Fresh(eb) = cache.lookup(&key(1), &b).await else {
            panic!()
        };
        assert_eq!((ea.body.len(), eb.body.len()), (1, 2));
    }

    #[tokio::test]
    async fn the_byte_bound_holds() {
        let max = 200_000;
        let cache = cache(max);
        let h = HeaderMap::new();
        for n in 0..100 {
            if let Lookup::Lead { guard, .. } = cache.lookup(&key(n), &h).await {
                guard
                    .finish(Fill::Stored(entry(10_000, MIN, vec![])), &[])
                    .await;
            }
        }
        let (bytes, entries) = cache.size().await;
        assert!(bytes <= max, "{bytes} > {max}");
        assert!(entries < 100 && entries > 0, "{entries}");
    }

    #[tokio::test]
    async fn purge_by_path_and_prefix() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        for n in [1, 2, 3] {
            let Lookup::Lead { guard, .. } = cache.lookup(&key(n), &h).await else {
                panic!()
            };
            guard.finish(Fill::Stored(entry(1, MIN, vec![])), &[]).await;
        }
        assert_eq!(cache.purge(0, "/1", false).await, 1);
        assert_eq!(cache.purge(0, "/", true).await, 2);
        assert_eq!(cache.purge(0, "/", true).await, 0);
    }

    #[tokio::test]
    async fn purge_and_retain_count_objects_not_vary_lists_or_markers() {
        let cache = cache(1 << 20);
        let h = HeaderMap::new();
        // /1: one object under a Vary list (two slots); /2: a hit-for-miss marker.
        let names = [header::ACCEPT];
        let Lookup::Lead { guard, .. } = cache.lookup(&key(1), &h).await else {
            panic!()
        };
        guard
            .finish(Fill::Stored(entry(1, MIN, vary_values(&names, &h))), &names)
            .await;
        let Lookup::Lead { guard, .. } = cache.lookup(&key(2), &h).await else {
            panic!()
        };
        guard
            .not_stored(NotStored::Forbidden, StatusCode::OK, MIN)
            .await;
        assert_eq!(cache.purge(0, "/1", false).await, 1, "one object, not two");
        assert_eq!(
            cache.purge(0, "/2", false).await,
            0,
            "a marker is no object"
        );
        // Both are gone all the same: /2 coalesces again (a lead, then a wait).
        assert!(matches!(
            cache.lookup(&key(1), &h).await,
            Lookup::Lead { .. }
        ));
        let _lead = lead_and_wait_on(&cache, &key(2), &h).await;

        let other = CacheKey::primary(7, "https://cdn.example/x".parse().unwrap());
        let Lookup::Lead { guard, .. } = cache.lookup(&other, &h).await else {
            panic!()
        };
        guard
            .not_stored(NotStored::Forbidden, StatusCode::OK, MIN)
            .await;
        assert_eq!(
            cache.retain_routes(&[0]).await,
            0,
            "route 7 held a marker only"
        );
        assert_eq!(cache.size().await, (0, 0));
    }
}

#[cfg(test)]
mod disk_tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use http::{header, HeaderValue, StatusCode};

    use super::disk::{DiskHooks, DiskSettings};
    use super::*;

    fn tier(dir: &std::path::Path) -> Arc<DiskTier> {
        let hooks = DiskHooks {
            evicted: Arc::new(|_| {}),
            write_failed: Arc::new(|_| {}),
        };
        let settings = DiskSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            max_object_bytes: 1 << 16,
            queue_bytes: None,
            open_files: 64,
        };
        DiskTier::open(&settings, hooks).unwrap()
    }

    fn cache(dir: &std::path::Path) -> Cache {
        cache_of(dir, 1 << 20)
    }

    /// A cache whose memory tier holds `memory` bytes, over a disk tier in `dir`.
    fn cache_of(dir: &std::path::Path, memory: u64) -> Cache {
        let c = Cache::new(memory, 1 << 16, Arc::new(|_| {})).with_disk(Some(tier(dir)));
        c.set_disk_routes(vec![0]);
        c
    }

    /// Waits until the tier has loaded and holds `n` objects.
    async fn settled(c: &Cache, n: u64) {
        let started = SystemTime::now();
        loop {
            let s = c.disk().unwrap().stats();
            if !s.loading && s.entries == n {
                return;
            }
            assert!(
                started.elapsed().unwrap() < Duration::from_secs(10),
                "{s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn variants_resolve_on_disk_after_a_restart_as_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::primary(0, "https://cdn.example/v".parse().unwrap());
        let names = [header::ACCEPT_ENCODING];
        let mut webp = HeaderMap::new();
        webp.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        let mut png = HeaderMap::new();
        png.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        {
            let c = cache(dir.path());
            settled(&c, 0).await;
            let Lookup::Lead { guard, .. } = c.lookup(&key, &webp).await else {
                panic!()
            };
            let lifetimes = Lifetimes {
                fresh_for: Duration::from_secs(60),
                ..Lifetimes::default()
            };
            let e = Arc::new(Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from_static(b"webp bytes"),
                Rendition::AsSent,
                lifetimes,
                vary_values(&names, &webp),
                Duration::ZERO,
                true,
            ));
            guard.finish(Fill::Stored(e), &names).await;
            // The variant and its Vary list written (vary_of sees a queued list too: a stop
            // right then once left it unwritten, and the variant unfound after the restart).
            let disk = c.disk().unwrap().clone();
            let left = tokio::task::spawn_blocking(move || disk.flush(Duration::from_secs(10)));
            assert_eq!(left.await.unwrap(), 0);
            assert!(c.disk().unwrap().vary_of(&key).is_some());
        }
        // A new process, as far as the store knows: memory empty, the index rebuilt.
        let c = cache(dir.path());
        settled(&c, 1).await;
        assert!(
            matches!(c.lookup(&key, &png).await, Lookup::Lead { .. }),
            "another coding is another variant, on disk as in memory"
        );
        let Lookup::FreshFromDisk(e) = c.lookup(&key, &webp).await else {
            panic!("expected the variant from disk")
        };
        assert_eq!(&e.body[..], b"webp bytes");
        assert!(
            matches!(c.lookup(&key, &webp).await, Lookup::Fresh(_)),
            "promoted"
        );
        // Purged from both tiers, counted once.
        assert_eq!(c.purge(0, "/v", false).await, 1);
        assert_eq!(c.disk().unwrap().stats().entries, 0);
    }

    #[tokio::test]
    async fn an_answer_varying_on_a_visitors_value_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::primary(0, "https://cdn.example/a".parse().unwrap());
        let c = cache(dir.path());
        settled(&c, 0).await;
        let fresh = Lifetimes {
            fresh_for: Duration::from_secs(60),
            ..Lifetimes::default()
        };
        let stored = |body: &'static [u8], vary: VaryValues| {
            Arc::new(Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from_static(body),
                Rendition::AsSent,
                fresh,
                vary,
                Duration::ZERO,
                true,
            ))
        };
        // A first answer without Vary goes to disk.
        let h = HeaderMap::new();
        let Lookup::Lead { guard, .. } = c.lookup(&key, &h).await else {
            panic!()
        };
        guard
            .finish(Fill::Stored(stored(b"old", vec![])), &[])
            .await;
        settled(&c, 1).await;
        // Its next version varies on the browser's Accept: the value a visitor wrote is not
        // written, and the older copy leaves the disk (it must not answer instead).
        let names = [header::ACCEPT];
        let mut webp = HeaderMap::new();
        webp.insert(header::ACCEPT, HeaderValue::from_static("image/webp,*/*"));
        let Some(guard) = c.try_lead(&key) else {
            panic!()
        };
        guard
            .finish(
                Fill::Stored(stored(b"new", vary_values(&names, &webp))),
                &names,
            )
            .await;
        settled(&c, 0).await;
        assert!(c.disk().unwrap().vary_of(&key).is_none());
        assert!(matches!(c.lookup(&key, &webp).await, Lookup::Fresh(_)));
        for f in walk(dir.path()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(10).any(|w| w == b"image/webp"),
                "{} holds the visitor's Accept",
                f.display()
            );
        }
    }

    // The writers are threads of their own, so holding their gate across awaits blocks only
    // them, which is the point.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn an_object_waiting_for_its_writer_answers_and_a_purge_keeps_it_off_disk() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let h = HeaderMap::new();
        let fill = |key: CacheKey, body: &'static [u8]| fill(&c, key, body);
        let waiting = CacheKey::primary(0, "https://tiles.example/w".parse().unwrap());
        let purged = CacheKey::primary(0, "https://tiles.example/p".parse().unwrap());
        {
            // The disk is behind: no writer may start.
            let _behind = disk.hold.lock().unwrap();
            fill(waiting.clone(), b"waiting").await;
            fill(purged.clone(), b"purged").await;
            // Memory lets both go before their files are written.
            c.store.invalidate(&waiting).await;
            c.store.invalidate(&purged).await;
            let Lookup::FreshFromDisk(e) = c.lookup(&waiting, &h).await else {
                panic!("an object waiting for its writer is the disk tier's already")
            };
            assert_eq!(&e.body[..], b"waiting");
            assert_eq!(c.purge(0, "/p", false).await, 1);
            assert!(disk.held(&purged).is_none());
        }
        assert_eq!(
            tokio::task::spawn_blocking(move || disk.flush(Duration::from_secs(10)))
                .await
                .unwrap(),
            0
        );
        // Only the object never purged reached the disk: a purge while queued is not undone by
        // its writer.
        assert_eq!(c.disk().unwrap().stats().entries, 1);
        c.store.invalidate(&purged).await;
        assert!(matches!(c.lookup(&purged, &h).await, Lookup::Lead { .. }));
        assert_eq!(walk(&dir.path().join("tmp")).len(), 0);
    }

    /// Fills `key` with a fresh `body` (no Vary).
    async fn fill(c: &Cache, key: CacheKey, body: &'static [u8]) {
        let fresh = Lifetimes {
            fresh_for: Duration::from_secs(60),
            ..Lifetimes::default()
        };
        fill_for(c, &key, body, fresh).await;
    }

    /// Fills `key` with `body` (no Vary) living `lifetimes`.
    async fn fill_for(c: &Cache, key: &CacheKey, body: &'static [u8], lifetimes: Lifetimes) {
        let Lookup::Lead { guard, .. } = c.lookup(key, &HeaderMap::new()).await else {
            panic!("expected a miss")
        };
        let e = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            Rendition::AsSent,
            lifetimes,
            vec![],
            Duration::ZERO,
            true,
        );
        guard.finish(Fill::Stored(Arc::new(e)), &[]).await;
    }

    // The gate holds the writer threads only.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn the_write_queue_shows_in_the_stats_while_the_writer_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let queue = |d: &DiskTier| {
            let s = d.stats();
            (s.write_queue_objects, s.write_queue_bytes)
        };
        assert_eq!(queue(&disk), (0, 0));
        assert_eq!(
            disk.stats().write_queue_max_bytes,
            64 << 20,
            "the default bound"
        );
        let behind = disk.hold.lock().unwrap();
        let key =
            |n: u8| CacheKey::primary(0, format!("https://tiles.example/q{n}").parse().unwrap());
        fill(&c, key(1), b"tile one").await;
        fill(&c, key(2), b"tile 2").await;
        assert_eq!(queue(&disk), (2, 14), "two bodies waiting");
        drop(behind);
        let d = disk.clone();
        let left = tokio::task::spawn_blocking(move || d.flush(Duration::from_secs(10)));
        assert_eq!(left.await.unwrap(), 0);
        assert_eq!(queue(&disk), (0, 0), "written");
        assert_eq!(disk.stats().entries, 2);
    }

    // As above: the gate holds the writer threads only.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_full_queue_makes_a_fill_wait_for_the_disk_and_a_stuck_disk_is_not_waited_on_twice() {
        let dir = tempfile::tempdir().unwrap();
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let hooks = DiskHooks {
            evicted: Arc::new(|_| {}),
            write_failed: {
                let failed = failed.clone();
                Arc::new(move |_| {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                })
            },
        };
        let settings = DiskSettings {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            max_object_bytes: 1 << 16,
            // One 8-byte body at a time.
            queue_bytes: Some(8),
            open_files: 64,
        };
        let c = Cache::new(1 << 20, 1 << 16, Arc::new(|_| {}))
            .with_disk(Some(DiskTier::open(&settings, hooks).unwrap()));
        c.set_disk_routes(vec![0]);
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let key =
            |n: u8| CacheKey::primary(0, format!("https://tiles.example/{n}").parse().unwrap());
        let failures = || failed.load(std::sync::atomic::Ordering::Relaxed);

        let behind = disk.hold.lock().unwrap();
        fill(&c, key(1), b"tile one").await;
        // The queue is full: the next fill waits for a writer instead of dropping its write.
        let catch_up = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(behind);
        };
        tokio::join!(fill(&c, key(2), b"tile two"), catch_up);
        settled(&c, 2).await;
        assert_eq!(failures(), 0, "nothing dropped");

        // A disk that takes nothing while a fill waits: that write is dropped and counted, and
        // the next one is dropped at once rather than waited for again.
        let stuck = disk.hold.lock().unwrap();
        fill(&c, key(3), b"tile 3!!").await;
        fill(&c, key(4), b"tile 4!!").await;
        assert_eq!(failures(), 1);
        assert!(
            disk.stalled(),
            "a disk that took nothing in time is not waited on"
        );
        fill(&c, key(5), b"tile 5!!").await;
        assert_eq!(failures(), 2);
        drop(stuck);
        let left = tokio::task::spawn_blocking(move || disk.flush(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(c.disk().unwrap().stats().entries, 3);
        assert!(!c.disk().unwrap().stalled(), "caught up");
    }

    #[tokio::test]
    async fn a_disk_hit_is_promoted_only_if_memory_would_still_hold_it_at_its_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<CacheKey> = (0..8)
            .map(|n| CacheKey::primary(0, format!("https://t.example/{n}").parse().unwrap()))
            .collect();
        let h = HeaderMap::new();
        {
            let c = cache(dir.path());
            settled(&c, 0).await;
            for k in &keys {
                let Lookup::Lead { guard, .. } = c.lookup(k, &h).await else {
                    panic!()
                };
                let e = Entry::new(
                    StatusCode::OK,
                    HeaderMap::new(),
                    Bytes::from(vec![7u8; 20_000]),
                    Rendition::AsSent,
                    Lifetimes {
                        fresh_for: Duration::from_secs(60),
                        ..Lifetimes::default()
                    },
                    vec![],
                    Duration::ZERO,
                    true,
                );
                guard.finish(Fill::Stored(Arc::new(e)), &[]).await;
            }
            settled(&c, 8).await;
            c.disk().unwrap().close();
        }
        // Restarted with a memory tier of three tiles, past the first reads (which fill an
        // empty memory) and with memory emptied again.
        let c = cache_of(dir.path(), 64 << 10);
        settled(&c, 8).await;
        for k in &keys {
            assert!(matches!(c.lookup(k, &h).await, Lookup::FreshFromDisk(_)));
        }
        c.store.invalidate_all();
        // Round-robin over eight: each comes back after seven others, more than memory holds.
        for _ in 0..2 {
            for k in &keys {
                assert!(matches!(c.lookup(k, &h).await, Lookup::FreshFromDisk(_)));
            }
        }
        assert_eq!(c.size().await.1, 0, "nothing promoted only to be evicted");
        // Read twice in a row: the second read is within memory's reach, so promoted.
        for _ in 0..2 {
            assert!(matches!(
                c.lookup(&keys[0], &h).await,
                Lookup::FreshFromDisk(_)
            ));
        }
        assert!(matches!(c.lookup(&keys[0], &h).await, Lookup::Fresh(_)));
        assert_eq!(c.size().await.1, 1);
    }

    /// Fills `key` with a fresh `body` whose `x-version` header says `version`.
    async fn fill_version(c: &Cache, key: &CacheKey, body: &'static [u8], version: &'static str) {
        let Lookup::Lead { guard, .. } = c.lookup(key, &HeaderMap::new()).await else {
            panic!("expected a miss")
        };
        guard
            .finish(Fill::Stored(version_entry(body, version)), &[])
            .await;
    }

    fn version_entry(body: &'static [u8], version: &'static str) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        headers.insert("x-version", HeaderValue::from_static(version));
        Arc::new(Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            Rendition::AsSent,
            Lifetimes {
                fresh_for: Duration::from_secs(60),
                ..Lifetimes::default()
            },
            vec![],
            Duration::ZERO,
            true,
        ))
    }

    /// Fills `key` with `body`, stale at once and kept a minute for `stale-if-error`.
    async fn fill_stale(c: &Cache, key: &CacheKey, body: &'static [u8]) {
        let stale = Lifetimes {
            stale_if_error: Duration::from_secs(60),
            ..Lifetimes::default()
        };
        fill_for(c, key, body, stale).await;
    }

    /// Waits until `key`'s newest version is written and indexed.
    async fn written(c: &Cache, key: &CacheKey) {
        let started = SystemTime::now();
        while !matches!(c.disk().unwrap().held(key), Some(disk::Held::Object(_))) {
            assert!(started.elapsed().unwrap() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads `key` from disk (memory let go of it first): its body and `x-version`.
    async fn from_disk(c: &Cache, key: &CacheKey) -> Option<(Bytes, String)> {
        c.store.invalidate(key).await;
        match c.lookup(key, &HeaderMap::new()).await {
            Lookup::FreshFromDisk(e) => {
                let v = e.head["x-version"].to_str().unwrap().to_owned();
                assert_eq!(e.headers["x-version"], v);
                Some((e.body.clone(), v))
            }
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_purged_or_rewritten_object_never_answers_from_a_held_head() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let key = CacheKey::primary(0, "https://tiles.example/1/2/3.png".parse().unwrap());
        fill_version(&c, &key, b"first", "1").await;
        written(&c, &key).await;
        assert!(!disk.holds_head(&key));
        for _ in 0..2 {
            let (body, v) = from_disk(&c, &key).await.expect("a disk hit");
            assert_eq!((&body[..], &v[..]), (&b"first"[..], "1"));
            assert!(disk.holds_head(&key), "held once read");
        }
        // Rewritten (a newer version of the same key, as a refresh stores it): the next read
        // is of the new file, its head decoded anew; the old head is let go.
        let before = disk.heads_bytes();
        disk.store(&key, &version_entry(b"second", "2")).await;
        written(&c, &key).await;
        assert!(!disk.holds_head(&key));
        assert!(
            disk.heads_bytes() < before,
            "the old head is let go with its file"
        );
        let (body, v) = from_disk(&c, &key).await.expect("a disk hit");
        assert_eq!((&body[..], &v[..]), (&b"second"[..], "2"));
        assert!(disk.holds_head(&key));
        // Purged: gone from disk, its head with it; filled again, the new answer is read.
        assert_eq!(c.purge(0, "/1/2/3.png", false).await, 1);
        assert_eq!(disk.heads_bytes(), 0);
        assert!(from_disk(&c, &key).await.is_none());
        fill_version(&c, &key, b"third", "3").await;
        written(&c, &key).await;
        let (body, v) = from_disk(&c, &key).await.expect("a disk hit");
        assert_eq!((&body[..], &v[..]), (&b"third"[..], "3"));
    }

    #[tokio::test]
    async fn a_damaged_file_is_refused_though_its_head_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let key = CacheKey::primary(0, "https://tiles.example/d.png".parse().unwrap());
        let body: &'static [u8] = &[7u8; 4096];
        fill_version(&c, &key, body, "1").await;
        written(&c, &key).await;
        assert!(from_disk(&c, &key).await.is_some());
        assert!(disk.holds_head(&key));
        let file = walk(dir.path())
            .into_iter()
            .find(|p| !p.starts_with(dir.path().join("tmp")))
            .unwrap();
        // One byte of the body flipped; the head, its length and its name as they were.
        let mut bytes = std::fs::read(&file).unwrap();
        let n = bytes.len();
        bytes[n - 100] ^= 1;
        assert_eq!(disk.open_files(), 1, "its file kept open");
        // Written in place (the same file, open here): the open descriptor reads the damage.
        std::fs::write(&file, &bytes).unwrap();
        assert!(
            from_disk(&c, &key).await.is_none(),
            "a damaged file answered"
        );
        assert!(!file.exists(), "removed as corrupt");
        assert_eq!(disk.heads_bytes(), 0, "its head let go");
        assert_eq!(disk.open_files(), 0, "its file closed");
        assert_eq!(open_under(dir.path()), 0);
    }

    /// Files under `dir` this process has open (removed ones included: those hold their blocks).
    fn open_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.starts_with(dir))
            .count()
    }

    #[tokio::test]
    async fn a_file_kept_open_closes_when_its_object_leaves_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let key = CacheKey::primary(0, "https://tiles.example/o.png".parse().unwrap());
        fill_version(&c, &key, b"first", "1").await;
        written(&c, &key).await;
        assert_eq!(open_under(dir.path()), 0, "the writer closed it");
        for _ in 0..3 {
            let (body, _) = from_disk(&c, &key).await.expect("a disk hit");
            assert_eq!(&body[..], b"first");
            assert_eq!(disk.open_files(), 1, "one file, kept open once");
            assert_eq!(open_under(dir.path()), 1);
        }
        // Replaced by a newer version: the old file is removed and closed.
        disk.store(&key, &version_entry(b"second", "2")).await;
        written(&c, &key).await;
        assert_eq!(disk.open_files(), 0);
        assert_eq!(open_under(dir.path()), 0, "a removed file held open");
        let (body, _) = from_disk(&c, &key).await.expect("a disk hit");
        assert_eq!(&body[..], b"second");
        assert_eq!(open_under(dir.path()), 1);
        // Purged: removed and closed, so its blocks are free.
        assert_eq!(c.purge(0, "/o.png", false).await, 1);
        assert_eq!(disk.open_files(), 0);
        assert_eq!(open_under(dir.path()), 0, "a purged file held open");
    }

    #[tokio::test]
    async fn a_file_removed_or_replaced_by_hand_is_not_read_through_its_open_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let objects = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
            walk(d)
                .into_iter()
                .filter(|p| !p.starts_with(d.join("tmp")))
                .collect()
        };
        // Removed: a miss once the open file is asked again (within `RELINK`, its verified
        // bytes may still answer), as when the file was not open.
        let key = CacheKey::primary(0, "https://tiles.example/r.png".parse().unwrap());
        fill_version(&c, &key, b"kept", "1").await;
        written(&c, &key).await;
        assert!(from_disk(&c, &key).await.is_some());
        assert_eq!(disk.open_files(), 1);
        let [file] = &objects(dir.path())[..] else {
            panic!()
        };
        std::fs::remove_file(file).unwrap();
        tokio::time::sleep(disk::RELINK + Duration::from_millis(100)).await;
        assert!(
            from_disk(&c, &key).await.is_none(),
            "a removed file answered"
        );
        assert_eq!(disk.open_files(), 0);
        assert_eq!(open_under(dir.path()), 0);
        // Replaced under its name by a damaged copy (a rename, a new file): never served, not
        // even the good bytes the open descriptor still reads.
        fill_version(&c, &key, b"again", "2").await;
        written(&c, &key).await;
        assert!(from_disk(&c, &key).await.is_some());
        assert_eq!(disk.open_files(), 1);
        let [file] = &objects(dir.path())[..] else {
            panic!()
        };
        let mut bytes = std::fs::read(file).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        let copy = dir.path().join("copy");
        std::fs::write(&copy, &bytes).unwrap();
        std::fs::rename(&copy, file).unwrap();
        tokio::time::sleep(disk::RELINK + Duration::from_millis(100)).await;
        assert!(
            from_disk(&c, &key).await.is_none(),
            "a replaced file answered"
        );
        assert!(!file.exists(), "removed");
        assert_eq!(open_under(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_stale_copy_on_disk_is_read_from_its_file_once_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let disk = c.disk().unwrap().clone();
        let key = CacheKey::primary(0, "https://tiles.example/old.png".parse().unwrap());
        fill_stale(&c, &key, b"stale bytes").await;
        written(&c, &key).await;
        let [file] = &walk(dir.path())
            .into_iter()
            .filter(|p| !p.starts_with(dir.path().join("tmp")))
            .collect::<Vec<_>>()[..]
        else {
            panic!()
        };
        let len = std::fs::metadata(file).unwrap().len();
        let lead_with_stale = |l: Lookup<'_>| match l {
            Lookup::Lead { stale: Some(s), .. } => assert_eq!(&s.body[..], b"stale bytes"),
            _ => panic!("expected a lead with the stale copy"),
        };
        // cache_hit's look (fresh_or_disk), then the lookup that takes the lead to revalidate
        // (and looks again once it has it): one read of the file in all.
        c.store.invalidate(&key).await;
        let before = disk.bytes_read();
        assert!(c.fresh_or_disk(&key).await.is_none(), "stale: not a hit");
        lead_with_stale(c.lookup(&key, &HeaderMap::new()).await);
        assert_eq!(disk.bytes_read() - before, len, "read more than once");
        // A route keyed by parts skips fresh_or_disk: the lookup alone, one read too.
        c.store.invalidate(&key).await;
        let before = disk.bytes_read();
        lead_with_stale(c.lookup(&key, &HeaderMap::new()).await);
        assert_eq!(disk.bytes_read() - before, len, "read more than once");
    }

    #[tokio::test]
    async fn only_a_fresh_copy_that_varies_on_nothing_answers_before_the_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path());
        settled(&c, 0).await;
        let key = CacheKey::primary(0, "https://tiles.example/f.png".parse().unwrap());
        assert!(c.fresh_or_disk(&key).await.is_none(), "nothing anywhere");
        fill_version(&c, &key, b"tile", "1").await;
        assert!(matches!(c.fresh_or_disk(&key).await, Some((_, false))));
        written(&c, &key).await;
        c.store.invalidate(&key).await;
        let (e, from_disk) = c.fresh_or_disk(&key).await.expect("a disk hit");
        assert!(from_disk);
        assert_eq!(&e.body[..], b"tile");
        // A hit-for-miss marker in memory: the lookup decides, not the copy on disk.
        c.store.invalidate(&key).await;
        let keep = Duration::from_secs(60);
        c.store.insert(key.clone(), Slot::Pass { keep }).await;
        assert!(c.fresh_or_disk(&key).await.is_none());
        c.store.invalidate(&key).await;

        // Stale on disk (kept for stale-if-error): left to the lookup.
        let stale = CacheKey::primary(0, "https://tiles.example/s.png".parse().unwrap());
        fill_stale(&c, &stale, b"stale").await;
        written(&c, &stale).await;
        c.store.invalidate(&stale).await;
        assert!(c.fresh_or_disk(&stale).await.is_none());

        // Varied: its primary key holds a Vary list, on disk as in memory.
        let varied = CacheKey::primary(0, "https://tiles.example/v.png".parse().unwrap());
        let names = [header::ACCEPT_ENCODING];
        let mut br = HeaderMap::new();
        br.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        let Lookup::Lead { guard, .. } = c.lookup(&varied, &br).await else {
            panic!("expected a miss")
        };
        let e = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"br bytes"),
            Rendition::AsSent,
            Lifetimes {
                fresh_for: keep,
                ..Lifetimes::default()
            },
            vary_values(&names, &br),
            Duration::ZERO,
            true,
        );
        guard.finish(Fill::Stored(Arc::new(e)), &names).await;
        let disk = c.disk().unwrap().clone();
        let left = tokio::task::spawn_blocking(move || disk.flush(Duration::from_secs(10)));
        assert_eq!(left.await.unwrap(), 0);
        assert!(c.fresh_or_disk(&varied).await.is_none(), "in memory");
        c.store.invalidate_all();
        assert!(c.fresh_or_disk(&varied).await.is_none(), "on disk");
        assert!(matches!(
            c.lookup(&varied, &br).await,
            Lookup::FreshFromDisk(_)
        ));
    }

    /// Every file under `dir`.
    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}

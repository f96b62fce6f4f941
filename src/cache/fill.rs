//! Request coalescing: one upstream fetch per key at a time, its result handed to those
//! waiting on it, and hit-for-miss markers where waiting would only delay them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tokio::sync::watch;

use super::disk::may_write_variants;
use super::entry::Entry;
use super::key::{variant_hash, CacheKey};
use super::storable::NotStored;
use super::{Cache, Slot};

/// What a fill (the one upstream fetch for a key) ended with, as seen by those waiting on it.
#[derive(Clone, Debug)]
pub enum Fill {
    /// Stored: serve it (if it answers the waiter's Vary values).
    Stored(Arc<Entry>),
    /// Not storable: each waiter fetches on its own.
    NotStored,
    /// The upstream failed: waiters answer with their stale copy if allowed, else this status.
    Failed(StatusCode),
}

/// Where a fill's result appears.
pub type FillState = watch::Receiver<Option<Fill>>;

/// The result of a lookup.
pub enum Lookup<'c> {
    /// A fresh stored copy.
    Fresh(Arc<Entry>),
    /// A fresh copy the disk tier held (memory did not): now in memory too.
    FreshFromDisk(Arc<Entry>),
    /// Stale within stale-while-revalidate: serve it and refresh in the background.
    StaleWhileRevalidate(Arc<Entry>, CacheKey),
    /// Nobody is fetching this key: the caller must, and report through the guard. `stale` is
    /// a stored copy to revalidate, or to fall back on if the upstream fails.
    Lead {
        stale: Option<Arc<Entry>>,
        guard: FillGuard<'c>,
    },
    /// Another request is fetching it.
    Wait {
        stale: Option<Arc<Entry>>,
        fill: FillState,
    },
}

/// What waiting on another request's fill gave.
pub enum Waited {
    Fill(Fill),
    /// The leader went away without a result (client gone) or took too long: look up again.
    Retry,
}

/// Held by the one request fetching a key; dropping it without [`FillGuard::finish`] (client
/// gone, task cancelled) releases the waiters, who then look up again.
pub struct FillGuard<'c> {
    pub(super) cache: &'c Cache,
    pub(super) key: CacheKey,
    pub(super) tx: watch::Sender<Option<Fill>>,
    pub(super) done: bool,
}

impl FillGuard<'_> {
    /// The key being filled.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Publishes the fill's result: stores first, then wakes the waiters, then leaves the
    /// table. `vary` is the Vary list of a stored response (empty when none).
    pub async fn finish(mut self, fill: Fill, vary: &[HeaderName]) {
        if let Fill::Stored(entry) = &fill {
            let disk = self.cache.disk_for(self.key.route);
            if vary.is_empty() {
                // At the primary key, replacing any Vary list a former version had.
                self.cache
                    .store
                    .insert(self.key.with_variant(0), Slot::Object(entry.clone()))
                    .await;
                if let Some(disk) = disk {
                    disk.store(&self.key.with_variant(0), entry).await;
                }
            } else {
                let primary = self.key.with_variant(0);
                let keep = match self.cache.store.get(&primary).await {
                    Some(Slot::Vary { keep, .. }) => keep.max(entry.time_to_keep()),
                    _ => entry.time_to_keep(),
                };
                let variant = primary.with_variant(variant_hash(&entry.vary));
                match disk {
                    Some(disk) if may_write_variants(vary) => {
                        disk.store(&variant, entry).await;
                        disk.store_vary(&primary, vary, keep).await;
                    }
                    // Varied on a value the visitor wrote: memory only, and an older copy on
                    // disk must not answer in its place once memory lets it go.
                    Some(disk) => disk.invalidate(&primary),
                    None => {}
                }
                self.cache
                    .store
                    .insert(variant, Slot::Object(entry.clone()))
                    .await;
                self.cache
                    .store
                    .insert(
                        primary,
                        Slot::Vary {
                            names: vary.into(),
                            keep,
                        },
                    )
                    .await;
            }
        }
        self.tx.send_replace(Some(fill));
        self.release();
    }

    /// Publishes that the answer (`status`) could not be stored, for `why`. When that lasts,
    /// leaves a hit-for-miss marker for `hit_for_miss` (zero: none), so the next requests for
    /// the key do not queue behind one fetch only to fetch on their own after it.
    pub async fn not_stored(self, why: NotStored, status: StatusCode, hit_for_miss: Duration) {
        if why.lasts(status) && !hit_for_miss.is_zero() {
            let marker = Slot::Pass { keep: hit_for_miss };
            self.cache.markers.fetch_add(1, Ordering::Relaxed);
            self.cache.store.insert(self.key.clone(), marker).await;
        }
        self.finish(Fill::NotStored, &[]).await;
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

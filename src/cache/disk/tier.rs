//! The disk tier's index and files: a moka index keyed like the memory store, weighed in
//! bytes on disk, whose eviction hook removes the file; writer threads that write each record
//! to `tmp/` and rename it into place; reads that verify before serving.
//!
//! An object waiting for its writer is already the tier's: a lookup finds it in the queue
//! (`queued`), as nginx finds an object whose temporary file is still being written, so an
//! object memory lets go before the disk caught up is not fetched again. A purge or a newer
//! version takes it out of the queue, and its writer then leaves it unwritten.
//!
//! Each version of an object gets a file name of its own (`ab/cd/<key hash>.<generation>`),
//! so removing an old version (evicted, replaced, purged) can never remove a newer one that a
//! rename put in its place: the eviction hook removes exactly the file it indexed.
//!
//! The bound is kept on measured file lengths: `used` counts every byte of every file tamis
//! has on disk, `tmp/` included. A write reserves its length first and is dropped when that
//! would pass `max_disk_bytes`; the index holds at most `max_disk_bytes - headroom`, so that
//! the writes in progress (one per writer) fit once moka has applied its evictions (which each
//! writer runs before reserving).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderName;
use moka::notification::RemovalCause;
use moka::sync::Cache as Moka;

use super::super::entry::{Entry, Rendition};
use super::super::key::CacheKey;
use super::heads::{Head, Heads, HEADS_BYTES};
use super::names::{digest_path, digest_path_in, key_digest, KeyDigest, PATH_ROOM};
use super::record::{self, Kept, Object, Record, RecordError};

/// Where the disk tier is and how large it may grow.
#[derive(Clone, Debug)]
pub struct DiskSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// The largest body the memory tier stores (a record is at most this plus its head).
    pub max_object_bytes: u64,
    /// Body bytes the writers' queue may hold (`None`: 64 MiB; tests make it small).
    pub queue_bytes: Option<u64>,
    /// Files kept open for the next read of their object (`cache.disk_open_files`), at most;
    /// fewer when `RLIMIT_NOFILE` leaves less room ([`open_files_allowed`]).
    pub open_files: u64,
}

/// Told why a file left (`size`, `expired`, `purged`, `corrupt`) or why a write failed
/// (`full`, `denied`, `other`).
pub type DiskHook = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The disk tier's counters, kept by whoever exports them.
#[derive(Clone)]
pub struct DiskHooks {
    pub evicted: DiskHook,
    pub write_failed: DiskHook,
}

/// What the index holds for one key.
#[derive(Debug)]
pub(super) struct Indexed {
    /// This version's generation: part of its file name.
    pub(super) generation: u64,
    /// Its key's digest, the rest of its file name ([`key_digest`]): kept so that a read or
    /// a removal only formats the path (hashing the key cost ~5 k instructions per disk hit).
    pub(super) digest: KeyDigest,
    /// Its file's length.
    pub(super) bytes: u64,
    /// A Vary list's names (none for an object).
    pub(super) vary: Option<Arc<[HeaderName]>>,
    pub(super) keep_until: SystemTime,
    /// Set before removing a file found bad, so the hook counts it as corrupt.
    pub(super) corrupt: AtomicBool,
    /// [`DiskTier::read_bytes`] when it was last read (0: never, this process).
    pub(super) last_read: AtomicU64,
    /// Set by the eviction hook before it lets go of the file's head (and open file), so a
    /// read that held one for it meanwhile lets go of it too ([`DiskTier::read_held`]).
    pub(super) gone: AtomicBool,
}

/// The disk tier's figures for `/metrics` and `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskStats {
    pub dir: String,
    pub bytes: u64,
    pub max_bytes: u64,
    pub entries: u64,
    pub loading: bool,
    pub loaded: u64,
    /// Files kept open for their next read, and the bound on them (`cache.disk_open_files`,
    /// lowered to a quarter of `RLIMIT_NOFILE` if need be).
    pub open_files: u64,
    pub max_open_files: u64,
    /// Objects waiting for a writer or being written, their body bytes, and the bound on those
    /// bytes (a fill finding it full waits briefly, then keeps its object in memory only).
    pub write_queue_objects: u64,
    pub write_queue_bytes: u64,
    pub write_queue_max_bytes: u64,
}

/// What the index holds for a key.
pub enum Held {
    /// The headers the objects under this primary key vary on, and how long that holds.
    Vary(Arc<[HeaderName]>, Duration),
    /// An object, to read with [`DiskTier::read_held`].
    Object(HeldObject),
    /// An object waiting for its writer: the very entry memory held.
    Queued(Arc<Entry>),
}

/// An indexed object, not read yet.
pub struct HeldObject(Arc<Indexed>);

/// An object read back from disk.
pub struct Read {
    pub entry: Arc<Entry>,
    /// Bytes the tier read for other lookups since this object was last read (since the
    /// process started, if it was not): the memory a cache would have needed to still hold it.
    pub reuse: u64,
}

/// One record for a writer thread.
pub(super) struct Job {
    pub(super) record: Record,
    pub(super) body: Bytes,
    /// What lookups see until the file is indexed. The job is written only while the queue
    /// still holds this very ticket: a purge or a newer version takes it away.
    ticket: Arc<Queued>,
}

/// A record waiting for its writer, as a lookup sees it.
#[derive(Debug)]
enum Queued {
    /// The entry the memory tier stored: a lookup answers with it as memory would have.
    Object(Arc<Entry>),
    Vary {
        names: Arc<[HeaderName]>,
        keep_until: SystemTime,
    },
}

/// Writer threads. Writing a tile is mostly system calls (create, write, close, rename), so a
/// second thread keeps the disk up with a miss rate one thread could not (about 2 300 files/s
/// on the 2-core test VM, benches/RESULTS.md); each adds one record to the bound's headroom.
const WRITERS: usize = 2;

/// How many writes may wait, and how many body bytes: past either, a write is dropped rather
/// than a visitor delayed (a burst of misses after a restart once overflowed 1 024 writes).
/// Bodies are shared with the memory tier, but one that memory has let go is held by the
/// queue alone: the bytes bound is what the tier may add to tamis's memory beyond
/// `cache.max_bytes` (sized so the shipped Kubernetes limit still holds).
const QUEUE: usize = 16_384;
const QUEUE_BYTES: u64 = 64 << 20;

/// How long a fill waits for room in a full queue before its object stays in memory only.
const QUEUE_WAIT: Duration = Duration::from_millis(100);

/// Files up to this size are read on the worker that asks (see [`DiskTier::read`]).
const INLINE_READ: u64 = 256 << 10;

/// The disk tier.
pub struct DiskTier {
    pub(super) dir: PathBuf,
    max_bytes: u64,
    pub(super) index: Moka<CacheKey, Arc<Indexed>>,
    /// Bytes of tamis's files on disk (and reserved for the one being written).
    pub(super) used: Arc<AtomicU64>,
    /// Objects indexed (Vary lists not).
    pub(super) objects: Arc<AtomicU64>,
    queue: Mutex<Option<SyncSender<Box<Job>>>>,
    /// The records in the queue by key (the newest per key), until written or dropped.
    waiting: Mutex<HashMap<CacheKey, Arc<Queued>>>,
    next_generation: AtomicU64,
    /// Generations from here on were written by this process (the loader skips them).
    pub(super) first_generation: u64,
    pub(super) loading: AtomicBool,
    pub(super) loaded: AtomicU64,
    /// Set once the loader has listed (and counted) every file: from then on, a lookup may
    /// index a file of its own key before the loader reaches it.
    pub(super) listed: AtomicBool,
    /// Files a lookup indexed ahead of the loader, which it must skip.
    pub(super) early: Mutex<HashSet<PathBuf>>,
    /// Body bytes waiting in the writer's queue.
    queued: AtomicU64,
    /// The bound on `queued` (`QUEUE_BYTES`; smaller in tests).
    queue_bytes: u64,
    /// Told each time a writer takes a job: room for a fill waiting on a full queue.
    room: tokio::sync::Notify,
    /// Set when a fill waited `QUEUE_WAIT` in vain; cleared once the queue is half empty.
    stalled: AtomicBool,
    /// Jobs sent to the writers and not yet done with (written, refused or failed).
    jobs: AtomicU64,
    /// Held by a test to keep the writers from starting a write.
    #[cfg(test)]
    pub(crate) hold: Mutex<()>,
    /// Bytes of files read on lookups so far: the clock of [`Read::reuse`].
    read_bytes: AtomicU64,
    hooks: DiskHooks,
    /// The last write failure's class, logged once per change (not once per write).
    write_state: Mutex<Option<&'static str>>,
    /// The route parts (`cache_id`s) that use the tier, once the running state says so: what
    /// the loader finds of any other route (changed or dropped while tamis was down) goes.
    live: Mutex<Option<Arc<[u64]>>>,
    /// The decoded heads of objects read lately, each let go when its file leaves the index.
    pub(super) heads: Arc<Heads>,
}

impl DiskTier {
    /// Opens (creating) the directory and starts the writer and the index loader. A directory
    /// that cannot be created or written gives `Err`, for the caller to say once and go on
    /// with the memory tier alone.
    pub fn open(settings: &DiskSettings, hooks: DiskHooks) -> io::Result<Arc<DiskTier>> {
        let dir = settings.dir.clone();
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        // Leftovers of a process that died mid-write: never whole, never indexed.
        for e in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        // Writable at all? Better known now, in one line, than at the first fill.
        let probe = tmp.join("probe");
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)?;

        let used = Arc::new(AtomicU64::new(0));
        let objects = Arc::new(AtomicU64::new(0));
        let max_record = settings.max_object_bytes.saturating_add(64 << 10);
        let headroom = (max_record * WRITERS as u64).min(settings.max_bytes / 8);
        let heads = Arc::new(Heads::new(
            HEADS_BYTES,
            open_files_allowed(settings.open_files),
        ));
        let index = {
            let dir = dir.clone();
            let used = used.clone();
            let objects = objects.clone();
            let evicted = hooks.evicted.clone();
            let heads = heads.clone();
            Moka::builder()
                .max_capacity(settings.max_bytes - headroom)
                .weigher(|_: &CacheKey, v: &Arc<Indexed>| {
                    u32::try_from(v.bytes).unwrap_or(u32::MAX)
                })
                .expire_after(KeepUntil)
                .eviction_listener(move |_: Arc<CacheKey>, v: Arc<Indexed>, cause| {
                    match fs::remove_file(v.path(&dir)) {
                        Ok(()) => {
                            used.fetch_sub(v.bytes, Ordering::Relaxed);
                        }
                        // Gone already (removed by hand): its bytes are no longer there.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            used.fetch_sub(v.bytes, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Still there: still counted, so the bound stays true.
                            tracing::warn!(error = %e, "cannot remove a disk cache file");
                        }
                    }
                    if v.vary.is_some() {
                        return;
                    }
                    // Its head goes, and with it the file it keeps open: an unlinked file
                    // holds its blocks while open.
                    v.gone.store(true, Ordering::SeqCst);
                    heads.forget(&v.digest, v.generation);
                    objects.fetch_sub(1, Ordering::Relaxed);
                    if v.corrupt.load(Ordering::Relaxed) {
                        evicted("corrupt");
                        return;
                    }
                    match cause {
                        RemovalCause::Size => evicted("size"),
                        RemovalCause::Expired => evicted("expired"),
                        RemovalCause::Explicit => evicted("purged"),
                        RemovalCause::Replaced => {}
                    }
                })
                .build()
        };
        // Unique across restarts: names of this process sort after those of the last.
        let first_generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let (tx, rx) = sync_channel::<Box<Job>>(QUEUE);
        let tier = Arc::new(DiskTier {
            dir,
            max_bytes: settings.max_bytes,
            index,
            used,
            objects,
            queue: Mutex::new(Some(tx)),
            waiting: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(first_generation),
            first_generation,
            loading: AtomicBool::new(true),
            loaded: AtomicU64::new(0),
            listed: AtomicBool::new(false),
            early: Mutex::new(HashSet::new()),
            queued: AtomicU64::new(0),
            queue_bytes: settings.queue_bytes.unwrap_or(QUEUE_BYTES),
            room: tokio::sync::Notify::new(),
            stalled: AtomicBool::new(false),
            jobs: AtomicU64::new(0),
            #[cfg(test)]
            hold: Mutex::new(()),
            read_bytes: AtomicU64::new(0),
            hooks,
            write_state: Mutex::new(None),
            live: Mutex::new(None),
            heads,
        });
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..WRITERS {
            let writer = Arc::downgrade(&tier);
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("tamis-disk-writer-{n}"))
                .spawn(move || {
                    while let Some(job) = next_job(&rx) {
                        match writer.upgrade() {
                            Some(tier) => {
                                tier.write(*job);
                                tier.jobs.fetch_sub(1, Ordering::Release);
                            }
                            None => return,
                        }
                    }
                })?;
        }
        let loader = Arc::downgrade(&tier);
        std::thread::Builder::new()
            .name("tamis-disk-loader".into())
            .spawn(move || DiskTier::load(loader))?;
        Ok(tier)
    }

    /// Figures for `/metrics` and `/status`.
    pub fn stats(&self) -> DiskStats {
        self.index.run_pending_tasks();
        DiskStats {
            dir: self.dir.display().to_string(),
            bytes: self.used.load(Ordering::Relaxed),
            max_bytes: self.max_bytes,
            entries: self.objects.load(Ordering::Relaxed),
            loading: self.loading.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            open_files: self.heads.open_files(),
            max_open_files: self.heads.max_open_files(),
            write_queue_objects: self.jobs.load(Ordering::Relaxed),
            write_queue_bytes: self.queued.load(Ordering::Relaxed),
            write_queue_max_bytes: self.queue_bytes,
        }
    }

    /// The bound, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Queues `entry` (stored under `key`) to be written; waits only while the queue is full
    /// (see `enqueue`).
    pub async fn store(&self, key: &CacheKey, entry: &Arc<Entry>) {
        let now = Instant::now();
        let resident = entry.resident(now);
        let stored = SystemTime::now()
            .checked_sub(resident)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let record = Record {
            key: key.clone(),
            stored,
            keep: entry.keep_in_all(),
            kept: Kept::Object(Box::new(Object {
                status: entry.status,
                headers: (*entry.headers).clone(),
                stylesheet: entry.rendition == Rendition::Stylesheet,
                own_head: entry.own_head(),
                upstream_etag: entry.upstream_etag.clone(),
                last_modified: entry.last_modified.clone(),
                vary: entry.vary.clone(),
                lifetimes: entry.lifetimes,
                keep_for_revalidation: entry.keep_for_revalidation(),
            })),
        };
        self.enqueue(Box::new(Job {
            record,
            body: entry.body.clone(),
            ticket: Arc::new(Queued::Object(entry.clone())),
        }))
        .await;
    }

    /// Queues the Vary list of a primary key.
    pub async fn store_vary(&self, primary: &CacheKey, names: &[HeaderName], keep: Duration) {
        let record = Record {
            key: primary.clone(),
            stored: SystemTime::now(),
            keep,
            kept: Kept::Vary(names.to_vec()),
        };
        let ticket = Arc::new(Queued::Vary {
            names: Arc::from(names),
            keep_until: record.keep_until(),
        });
        self.enqueue(Box::new(Job {
            record,
            body: Bytes::new(),
            ticket,
        }))
        .await;
    }

    /// Queues `job`. When the queue is full, waits (at most `QUEUE_WAIT`) for a writer to
    /// take one, as nginx's worker waits on its own write: a burst of misses is written at the
    /// disk's pace rather than dropped. A disk that took nothing in that time is left alone
    /// until it catches up: the next writes are dropped at once, so no visitor waits on a
    /// stuck disk twice.
    async fn enqueue(&self, mut job: Box<Job>) {
        let until = Instant::now() + QUEUE_WAIT;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before trying, so a writer taking a job in between still wakes it.
            room.as_mut().enable();
            match self.try_enqueue(job) {
                Ok(()) => return,
                Err(Some(back)) if !self.stalled.load(Ordering::Relaxed) => {
                    job = back;
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || tokio::time::timeout(left, room).await.is_err() {
                        self.stalled.store(true, Ordering::Relaxed);
                        tracing::debug!("the disk cache's writers are behind: writes dropped until they catch up");
                        (self.hooks.write_failed)("other");
                        return;
                    }
                }
                // The disk is behind: this object stays in memory only.
                Err(Some(_)) => return (self.hooks.write_failed)("other"),
                Err(None) => return,
            }
        }
    }

    /// Queues `job` if there is room; gives it back when the queue is full (`None` once the
    /// tier is closed).
    fn try_enqueue(&self, job: Box<Job>) -> Result<(), Option<Box<Job>>> {
        let len = job.body.len() as u64;
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = queue.as_ref() else {
            return Err(None);
        };
        if self.queued.load(Ordering::Relaxed).saturating_add(len) > self.queue_bytes {
            return Err(Some(job));
        }
        let key = job.record.key.clone();
        let ticket = job.ticket.clone();
        // Seen by lookups before a writer can take it, so none finds it in neither place; and
        // counted before a writer can count it out.
        self.waiting_now().insert(key.clone(), ticket.clone());
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let back = match tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(job)) => Some(job),
            Err(TrySendError::Disconnected(_)) => None,
        };
        drop(queue);
        self.queued.fetch_sub(len, Ordering::Relaxed);
        self.jobs.fetch_sub(1, Ordering::Relaxed);
        // Not queued after all. An older version it replaced in `waiting` is not put back:
        // its writer may have passed it over already.
        self.unqueue(&key, &ticket);
        Err(back)
    }

    /// Whether the writers are behind enough that fills no longer wait for them.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    fn waiting_now(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Queued>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the index holds for `key`, if anything.
    pub(super) fn indexed(&self, key: &CacheKey) -> Option<Arc<Indexed>> {
        match self.index.get(key) {
            Some(slot) => Some(slot),
            // Right after a start, the file may be there but not indexed yet: nginx finds a
            // file by its key's name whether or not its loader has passed; so does tamis.
            None if self.loading.load(Ordering::Relaxed) && self.listed.load(Ordering::Relaxed) => {
                self.index_early(key)
            }
            None => None,
        }
    }

    /// The Vary list indexed for a primary key, if that is what it holds.
    pub fn vary_of(&self, primary: &CacheKey) -> Option<(Arc<[HeaderName]>, Duration)> {
        match self.held(primary)? {
            Held::Vary(names, keep) => Some((names, keep)),
            Held::Object(_) | Held::Queued(_) => None,
        }
    }

    /// What the tier holds for `key`: a Vary list, an object waiting for its writer, or an
    /// object to [`read_held`] (one lookup for all three questions). What waits in the queue is
    /// newer than what the index holds, so it is asked first.
    ///
    /// [`read_held`]: Self::read_held
    pub fn held(&self, key: &CacheKey) -> Option<Held> {
        match self.waiting_now().get(key).map(|t| &**t) {
            Some(Queued::Vary { names, keep_until }) => {
                let keep = keep_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                return Some(Held::Vary(names.clone(), keep));
            }
            Some(Queued::Object(e)) => return Some(Held::Queued(e.clone())),
            None => {}
        }
        let slot = self.indexed(key)?;
        Some(match &slot.vary {
            Some(names) => {
                let keep = slot
                    .keep_until
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                Held::Vary(names.clone(), keep)
            }
            None => Held::Object(HeldObject(slot)),
        })
    }

    /// Reads the object indexed for `key` back, verified whole; a bad or vanished file is
    /// removed (counted as corrupt) and reads as a miss.
    pub async fn read(&self, key: &CacheKey) -> Option<Read> {
        match self.held(key)? {
            Held::Object(o) => self.read_held(key, o).await,
            // Just let go by memory: as hot as an object gets, so promoted again.
            Held::Queued(entry) => Some(Read { entry, reuse: 0 }),
            Held::Vary(..) => None,
        }
    }

    /// [`read`](Self::read), of the object [`held`](Self::held) found for `key`.
    pub async fn read_held(&self, key: &CacheKey, held: HeldObject) -> Option<Read> {
        let slot = held.0;
        let len = slot.bytes;
        // The head read last time, and the file it keeps open if it does: read in place. Only
        // small files are kept open, as only they are read on the worker.
        let kept = self.heads.find(&slot.digest, slot.generation);
        let file = match &kept {
            Some(h) if len <= INLINE_READ => self.heads.open_file(h),
            _ => Ok(None),
        };
        let read = match file {
            Err(e) => Err(e),
            Ok(Some(file)) => pread_whole(file, len).map(|b| (b, None)),
            // A small file is read in place, as nginx's workers read theirs: handing each tile
            // to the blocking pool cost two thread switches per hit (2.8 x nginx's CPU per disk
            // hit, benches/RESULTS.md); a large one still goes to the pool so a worker never
            // blocks long.
            Ok(None) if len <= INLINE_READ => {
                // Its path spelled on the stack: no allocation for it.
                let mut room = [0u8; PATH_ROOM];
                match digest_path_in(&mut room, &self.dir, &slot.digest, slot.generation) {
                    Some(path) => open_read(path, len),
                    None => open_read(&slot.path(&self.dir), len),
                }
                .map(|(b, f)| (b, Some(f)))
            }
            Ok(None) => {
                let path = slot.path(&self.dir);
                match tokio::task::spawn_blocking(move || open_read(&path, len)).await {
                    // Closed at once: a large file is read off the worker, by its path, each time.
                    Ok(r) => r.map(|(b, _)| (b, None)),
                    Err(_) => return None,
                }
            }
        };
        let (bytes, opened) = match read {
            Ok(b) => b,
            // Out of file descriptors: nothing wrong with the file, a miss this once.
            Err(e) if out_of_files(&e) => {
                tracing::debug!(error = %e, "a disk cache file could not be opened");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a disk cache file could not be read; removed from the index");
                self.drop_bad(key, &slot);
                return None;
            }
        };
        // Verified whole on every read, whether its head is decoded or held already, its file
        // opened now or kept open.
        let decoded = record::check(&bytes).and_then(|body| {
            let raw = &bytes[..body.start];
            match kept.filter(|h| h.starts(raw)) {
                Some(head) => Ok(Some((head, body))),
                None => self
                    .decode_head(key, &slot, raw)
                    .map(|h| h.map(|h| (h, body))),
            }
        });
        match decoded {
            Ok(Some((head, body))) => {
                if let Some(file) = opened {
                    self.heads.keep_open(&head, file);
                }
                // Left the index while read: its head (and file) must not stay behind it.
                if slot.gone.load(Ordering::SeqCst) {
                    self.heads.forget(&slot.digest, slot.generation);
                }
                let now = self.read_bytes.fetch_add(len, Ordering::Relaxed);
                let last = slot.last_read.swap(now, Ordering::Relaxed);
                Some(Read {
                    entry: Arc::new(head.entry(Bytes::from(bytes).slice(body))),
                    reuse: now.saturating_sub(last),
                })
            }
            Ok(None) => None,
            Err(RecordError::Key) => {
                tracing::warn!("a disk cache file holds another key; removed");
                self.drop_bad(key, &slot);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "a disk cache file is damaged; removed, asking the upstream");
                self.drop_bad(key, &slot);
                None
            }
        }
    }

    /// Bytes read from files so far (tests).
    #[cfg(test)]
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Files kept open for the next read of their object now (tests).
    #[cfg(test)]
    pub(crate) fn open_files(&self) -> u64 {
        self.heads.open_files()
    }

    /// Decodes the head `raw` of `slot`'s file (checked whole) read for `key`, and holds it
    /// for the next read (`None`: a Vary list, which no read asks for).
    fn decode_head(
        &self,
        key: &CacheKey,
        slot: &Indexed,
        raw: &[u8],
    ) -> Result<Option<Arc<Head>>, RecordError> {
        // A copy of the head alone: the held values are slices of it, so holding them pins a
        // few hundred bytes, not the file's buffer.
        let raw = Bytes::copy_from_slice(raw);
        let rec = record::decode_head_for(&raw, key)?;
        let Kept::Object(o) = rec.kept else {
            return Ok(None);
        };
        let entry = restore(*o, Bytes::new(), rec.stored);
        let head = Arc::new(Head::new(
            slot.digest,
            slot.generation,
            raw,
            rec.stored,
            entry,
        ));
        self.heads.put(head.clone());
        Ok(Some(head))
    }

    /// Whether the head of the file indexed for `key` is held (tests).
    #[cfg(test)]
    pub(crate) fn holds_head(&self, key: &CacheKey) -> bool {
        self.index
            .get(key)
            .is_some_and(|s| self.heads.holds(&s.digest, s.generation))
    }

    /// Weight of the heads held (tests).
    #[cfg(test)]
    pub(crate) fn heads_bytes(&self) -> u64 {
        self.heads.bytes()
    }

    fn drop_bad(&self, key: &CacheKey, slot: &Arc<Indexed>) {
        slot.corrupt.store(true, Ordering::Relaxed);
        self.unindex(key, slot);
        self.index.run_pending_tasks();
    }

    /// Removes `slot` from the index, only if it still indexes that very version (a newer one
    /// may have replaced it).
    fn unindex(&self, key: &CacheKey, slot: &Arc<Indexed>) {
        self.index
            .entry(key.clone())
            .and_compute_with(|held| match held {
                Some(e) if Arc::ptr_eq(e.value(), slot) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Which route parts use the tier now; returns the object keys of other routes removed.
    pub fn set_live(&self, routes: Arc<[u64]>) -> Vec<CacheKey> {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(routes.clone());
        self.remove_where(|k| !routes.contains(&k.route))
    }

    /// The route parts that use the tier, if the running state has said.
    pub(super) fn live(&self) -> Option<Arc<[u64]>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Removes `key` (an unsafe method succeeded on its URL).
    pub fn invalidate(&self, key: &CacheKey) {
        self.waiting_now().remove(key);
        self.index.invalidate(key);
    }

    /// Removes every key that matches; returns the object keys removed.
    pub fn remove_where(&self, doomed: impl Fn(&CacheKey) -> bool) -> Vec<CacheKey> {
        let mut objects = Vec::new();
        self.waiting_now().retain(|k, t| {
            let keep = !doomed(k);
            if !keep && matches!(**t, Queued::Object(_)) {
                objects.push(k.clone());
            }
            keep
        });
        let keys: Vec<(CacheKey, bool)> = self
            .index
            .iter()
            .filter(|(k, _)| doomed(k))
            .map(|(k, v)| ((*k).clone(), v.vary.is_none()))
            .collect();
        for (k, object) in keys {
            if self.index.remove(&k).is_some() && object {
                objects.push(k);
            }
        }
        self.index.run_pending_tasks();
        objects
    }

    /// Stops the writers after what is queued (tests, shutdown).
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Closes the queue and waits, at most `within`, for the writers to finish what it held
    /// (at most `QUEUE_BYTES` of bodies), so that a graceful stop keeps every object filled
    /// before it. Returns how many jobs were left unwritten. Blocks: call it off the runtime.
    pub fn flush(&self, within: Duration) -> u64 {
        self.close();
        let until = Instant::now() + within;
        loop {
            let left = self.jobs.load(Ordering::Acquire);
            if left == 0 || Instant::now() >= until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether `ticket` is still the one waiting for its key (not purged, not replaced).
    fn still_waiting(&self, key: &CacheKey, ticket: &Arc<Queued>) -> bool {
        self.waiting_now()
            .get(key)
            .is_some_and(|t| Arc::ptr_eq(t, ticket))
    }

    /// Writes one record: reserve, write to tmp, rename into place, index. Runs on the writer
    /// threads, one record each at a time (the headroom has room for one per writer).
    fn write(&self, job: Job) {
        #[cfg(test)]
        drop(self.hold.lock().unwrap_or_else(|p| p.into_inner()));
        let len = job.body.len() as u64;
        let left = self
            .queued
            .fetch_sub(len, Ordering::Relaxed)
            .saturating_sub(len);
        if left <= self.queue_bytes / 2 {
            self.stalled.store(false, Ordering::Relaxed);
        }
        self.room.notify_waiters();
        let key = &job.record.key;
        let ticket = &job.ticket;
        let keep = match job.record.keep_until().duration_since(SystemTime::now()) {
            Ok(d) if !d.is_zero() && self.still_waiting(key, ticket) => d,
            // Purged or replaced while queued, or no longer worth keeping.
            _ => {
                self.unqueue(key, ticket);
                return;
            }
        };
        let head = record::encode_head(&job.record, job.body.len() as u64);
        let trailer = record::trailer(&head, &job.body);
        let len = (head.len() + job.body.len() + trailer.len()) as u64;
        self.index.run_pending_tasks();
        if !self.reserve(len) {
            // Larger than the room the bound leaves now: memory only. Not a failure.
            self.unqueue(key, ticket);
            return;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join("tmp").join(format!("{generation:016x}"));
        let digest = key_digest(key);
        let dest = digest_path(&self.dir, &digest, generation);
        let written = (|| -> io::Result<()> {
            // One write: a tile's head and trailer are small beside the cost of a system call.
            let mut whole = Vec::with_capacity(len as usize);
            whole.extend_from_slice(&head);
            whole.extend_from_slice(&job.body);
            whole.extend_from_slice(&trailer);
            let mut f = fs::File::create_new(&tmp)?;
            f.write_all(&whole)?;
            drop(f);
            // The directory is there but for an object's first file in it: try the rename
            // first, one system call, and create the directory only when it says so.
            match fs::rename(&tmp, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    fs::rename(&tmp, &dest)
                }
                r => r,
            }
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            self.used.fetch_sub(len, Ordering::Relaxed);
            self.write_failed(&e);
            self.unqueue(key, ticket);
            return;
        }
        self.write_ok();
        let vary = match &job.record.kept {
            Kept::Vary(names) => Some(Arc::from(names.as_slice())),
            Kept::Object(_) => {
                self.objects.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        let slot = Arc::new(Indexed {
            generation,
            digest,
            bytes: len,
            vary,
            keep_until: SystemTime::now() + keep,
            corrupt: AtomicBool::new(false),
            last_read: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        });
        self.index.insert(key.clone(), slot.clone());
        // Purged (or replaced) while its file was written: the file must not answer for it.
        if !self.unqueue(key, ticket) {
            self.unindex(key, &slot);
        }
    }

    /// Lets go of a job that will not be written.
    /// Whether `ticket` was still the one waiting for its key (not purged, not replaced).
    fn unqueue(&self, key: &CacheKey, ticket: &Arc<Queued>) -> bool {
        let mut waiting = self.waiting_now();
        let ours = waiting.get(key).is_some_and(|t| Arc::ptr_eq(t, ticket));
        if ours {
            waiting.remove(key);
        }
        ours
    }

    /// Counts an eviction (the loader's corrupt and expired files).
    pub(super) fn evicted(&self, why: &'static str) {
        (self.hooks.evicted)(why)
    }

    /// Counts `len` bytes in if they fit under the bound.
    pub(super) fn reserve(&self, len: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(len).filter(|&n| n <= self.max_bytes)
            })
            .is_ok()
    }

    fn write_failed(&self, e: &io::Error) {
        let class = write_error_class(e);
        (self.hooks.write_failed)(class);
        let mut state = self.write_state.lock().unwrap_or_else(|p| p.into_inner());
        if *state != Some(class) {
            *state = Some(class);
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write to the disk cache ({class}); objects stay in memory until it can");
        }
    }

    fn write_ok(&self) {
        let mut state = self.write_state.lock().unwrap_or_else(|p| p.into_inner());
        if state.take().is_some() {
            tracing::info!(dir = %self.dir.display(), "the disk cache is written to again");
        }
    }
}

/// The next job for a writer; `None` once the tier is closed and the queue empty.
fn next_job(rx: &Mutex<Receiver<Box<Job>>>) -> Option<Box<Job>> {
    rx.lock().unwrap_or_else(|p| p.into_inner()).recv().ok()
}

/// `full`, `denied` or `other`: the label of a write failure.
pub fn write_error_class(e: &io::Error) -> &'static str {
    match e.kind() {
        // A size limit (RLIMIT_FSIZE, a file system's largest file) refuses bytes as a full
        // disk does.
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            "full"
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => "denied",
        _ => "other",
    }
}

/// A file the index says is `len` bytes long, opened and read in one buffer of that size
/// (no `statx` for its size, no zeroed buffer), and kept open for the next read.
fn open_read(path: &Path, len: u64) -> io::Result<(Vec<u8>, fs::File)> {
    let file = fs::File::open(path)?;
    Ok((pread_whole(&file, len)?, file))
}

/// The first `len` bytes of `file` (fewer if it is shorter, which decoding refuses; a longer
/// one has its first `len` bytes decoded and checked, as for any file), read from its start
/// whatever its position: one file may be read by several workers at once.
fn pread_whole(file: &fs::File, len: u64) -> io::Result<Vec<u8>> {
    let cap = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut buf = Vec::with_capacity(cap);
    while buf.len() < cap {
        // Into the buffer's spare room (exactly what is left of `len`): not zeroed first.
        let at = buf.len() as u64;
        let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if n == 0 {
            break;
        }
    }
    buf.truncate(cap);
    Ok(buf)
}

/// Whether a read failed for want of file descriptors (the process's or the system's), not
/// because of the file.
fn out_of_files(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| {
        n == rustix::io::Errno::MFILE.raw_os_error() || n == rustix::io::Errno::NFILE.raw_os_error()
    })
}

/// The files the heads may keep open: `wanted`, but at most a quarter of the soft
/// `RLIMIT_NOFILE`, so that connections, upstreams and the writers keep the rest (tamis does
/// not raise the limit; the systemd unit sets 65 536).
pub fn open_files_allowed(wanted: u64) -> u64 {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let allowed = limit.map_or(wanted, |l| wanted.min(l / 4));
    if allowed < wanted {
        tracing::info!(
            wanted,
            allowed,
            "cache.disk_open_files lowered to a quarter of the open files limit (RLIMIT_NOFILE)"
        );
    }
    allowed
}

/// An object read back from disk, as the memory tier holds it.
fn restore(o: Object, body: Bytes, stored: SystemTime) -> Entry {
    // A clock set back reads as no time at all, never as a negative one.
    let resident = SystemTime::now().duration_since(stored).unwrap_or_default();
    Entry::restored(
        o.status,
        o.headers,
        body,
        if o.stylesheet {
            Rendition::Stylesheet
        } else {
            Rendition::AsSent
        },
        (o.upstream_etag, o.last_modified),
        o.lifetimes,
        o.vary,
        o.keep_for_revalidation,
        o.own_head,
        resident,
    )
}

/// Index entries leave when their record's keep time is over.
struct KeepUntil;

impl moka::Expiry<CacheKey, Arc<Indexed>> for KeepUntil {
    fn expire_after_create(&self, _: &CacheKey, v: &Arc<Indexed>, _: Instant) -> Option<Duration> {
        Some(
            v.keep_until
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }
}

impl Indexed {
    /// Its file's path under `dir` ([`digest_path`]).
    pub(super) fn path(&self, dir: &Path) -> PathBuf {
        digest_path(dir, &self.digest, self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::super::names::{digest_name, file_path, key_name};
    use super::*;

    #[test]
    fn the_path_kept_in_the_index_is_the_path_of_the_key() {
        // What a read, a removal and the loader use (the stored digest) names the very file
        // the key's name gives, for every kind of key.
        for k in super::super::names::tests::sample_keys() {
            let digest = key_digest(&k);
            assert_eq!(digest_name(&digest), key_name(&k));
            let slot = Indexed {
                generation: 0x0123_4567_89ab_cdef,
                digest,
                bytes: 1,
                vary: None,
                keep_until: SystemTime::now(),
                corrupt: AtomicBool::new(false),
                last_read: AtomicU64::new(0),
                gone: AtomicBool::new(false),
            };
            let dir = Path::new("/c");
            assert_eq!(slot.path(dir), file_path(dir, &k, slot.generation));
        }
    }

    #[test]
    fn write_failures_are_classed() {
        let full = io::Error::from_raw_os_error(28); // ENOSPC
        assert_eq!(write_error_class(&full), "full");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(write_error_class(&denied), "denied");
        assert_eq!(write_error_class(&io::Error::from_raw_os_error(27)), "full"); // EFBIG
        let rofs = io::Error::from_raw_os_error(30); // EROFS
        assert_eq!(write_error_class(&rofs), "denied");
        assert_eq!(
            write_error_class(&io::Error::from(io::ErrorKind::NotFound)),
            "other"
        );
    }
}

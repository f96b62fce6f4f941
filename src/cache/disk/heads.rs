//! The decoded heads of objects read from disk lately, so that reading one again skips
//! decoding its head and building its answer's head (~11 k instructions of a disk hit's ~51 k,
//! benches/RESULTS.md). The file is still read whole and its checksum still verified on every
//! hit: a head is reused only for a file that checks out and starts with the very bytes it was
//! decoded from, so an answer from here is exactly what decoding that file gives.
//!
//! Two places per hash of a file's name (its key's digest and its generation), in one set: a
//! lookup is one uncontended lock and two compares; a new head takes the first place and moves
//! the one there to the second. Three files whose names fall in one set all miss when read in
//! turn, so there are three sets per head the bound holds: of 2 000 tiles read round-robin,
//! one place per hash (as many places) lost 22 % of the heads, two per set in 4 096 sets 8 %,
//! in 8 192 sets about 2 %. Bounded by bytes ([`HEADS_BYTES`]), weighed as the memory tier
//! weighs an entry's headers, plus the head's bytes.
//!
//! A head also keeps its file open (nginx's `open_file_cache`), at most `max_open` files in
//! all: a hit on a kept file is then one `pread` (and an `fstat`), not `open`, `read` and
//! `close`. The file closes when its head goes: with its index entry (whose eviction hook
//! removes the file, so an unlinked file never holds its blocks past `max_disk_bytes` for
//! longer than a read in progress), or when a newer head takes its place.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::super::entry::Entry;
use super::names::KeyDigest;

/// Bytes the heads may take: 1/64 of the default memory tier (256 MiB). A tile's head weighs
/// about 1.7 KB here (its headers twice, as stored and as answered, and its bytes), so this
/// holds those of some 2 500 objects (50 MB of 20 KB tiles) read again from disk: the working
/// set that a memory tier too small for it leaves to the disk.
pub(super) const HEADS_BYTES: u64 = 4 << 20;

/// Sets of two places: about three per head the bytes hold (192 KiB when empty).
const SETS: usize = 8_192;

/// The head of one file, decoded.
pub(super) struct Head {
    digest: KeyDigest,
    generation: u64,
    /// The file's prefix and head, as read (its header values are slices of these bytes).
    raw: Bytes,
    /// When the object began its residence (from the head).
    stored: SystemTime,
    /// The entry the head decodes to, without a body.
    entry: Entry,
    weight: u64,
    /// The file, kept open while the head is held (when the bound on open files allowed).
    file: OnceLock<OpenFile>,
}

/// A file a head keeps open, counted in [`Heads::open`] until closed.
struct OpenFile {
    file: File,
    open: Arc<AtomicU64>,
    /// When it was last known to have a name ([`Heads::epoch`] + this many ms).
    linked_at: AtomicU64,
}

/// How often a kept file is asked (`fstat`) whether it still has a name: a file removed or
/// replaced by hand is served from the open file at most this long after (its verified bytes,
/// the ones tamis wrote), then is a miss as if it had not been open. nginx's
/// `open_file_cache_valid` is 60 s. Once per hit cost ~0.6 µs of a ~22 µs disk hit (a 20 KB
/// `pread` ~4.5, `open` + `close` ~1.4, benches/RESULTS.md).
pub(crate) const RELINK: Duration = Duration::from_secs(1);

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Head {
    /// The head of the file `digest.generation`, decoded from `raw` into `entry` (no body).
    pub(super) fn new(
        digest: KeyDigest,
        generation: u64,
        raw: Bytes,
        stored: SystemTime,
        entry: Entry,
    ) -> Head {
        let weight = u64::from(entry.weight()) + raw.len() as u64;
        Head {
            digest,
            generation,
            raw,
            stored,
            entry,
            weight,
            file: OnceLock::new(),
        }
    }

    /// Its file, if it keeps it open (tests).
    #[cfg(test)]
    pub(super) fn file(&self) -> Option<&File> {
        self.file.get().map(|f| &f.file)
    }

    /// Whether the file it was decoded from starts with `raw` (the file read now).
    pub(super) fn starts(&self, raw: &[u8]) -> bool {
        self.raw[..] == *raw
    }

    /// Whether it is the head of file `digest.generation`.
    fn is(&self, digest: &KeyDigest, generation: u64) -> bool {
        self.generation == generation && self.digest == *digest
    }

    /// The entry for `body`, read now from the file this head is of.
    pub(super) fn entry(&self, body: Bytes) -> Entry {
        // A clock set back reads as no time at all, never as a negative one.
        let resident = SystemTime::now()
            .duration_since(self.stored)
            .unwrap_or(Duration::ZERO);
        self.entry.with_body(body, resident)
    }
}

/// Two places, the newer head first.
type Set = [Option<Arc<Head>>; 2];

/// The heads, in sets of two places.
pub(super) struct Heads {
    sets: Box<[Mutex<Set>]>,
    /// Weight of the heads held.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Files the heads keep open (counted down as each closes, even by a head let go).
    open: Arc<AtomicU64>,
    max_open: u64,
    /// What [`OpenFile::linked_at`] counts from.
    epoch: Instant,
}

impl Heads {
    /// An empty set holding at most `max_bytes` and keeping at most `max_open` files open.
    pub(super) fn new(max_bytes: u64, max_open: u64) -> Heads {
        Heads {
            sets: (0..SETS).map(|_| Mutex::new([None, None])).collect(),
            bytes: AtomicU64::new(0),
            max_bytes,
            open: Arc::new(AtomicU64::new(0)),
            max_open,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The file `head` keeps open, if any, once known to still have a name (asked at most
    /// every [`RELINK`]); a file without one any more is `NotFound`, as by its path.
    pub(super) fn open_file<'h>(&self, head: &'h Head) -> std::io::Result<Option<&'h File>> {
        let Some(f) = head.file.get() else {
            return Ok(None);
        };
        let now = self.now_ms();
        if now.saturating_sub(f.linked_at.load(Ordering::Relaxed)) >= RELINK.as_millis() as u64 {
            if rustix::fs::fstat(&f.file)?.st_nlink == 0 {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            f.linked_at.store(now, Ordering::Relaxed);
        }
        Ok(Some(&f.file))
    }

    /// Lets `head` keep `file` (the file it was decoded from, opened by the read that found it
    /// without one) if the bound on open files allows; closed at once otherwise.
    pub(super) fn keep_open(&self, head: &Head, file: File) {
        if head.file.get().is_some() {
            return;
        }
        let room = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_open).then_some(n + 1)
            })
            .is_ok();
        if room {
            // Counted from here: a head given one meanwhile drops this one, counted out.
            // Opened by its path just now: it has a name.
            let _ = head.file.set(OpenFile {
                file,
                open: self.open.clone(),
                linked_at: AtomicU64::new(self.now_ms()),
            });
        }
    }

    /// Files kept open now.
    pub(super) fn open_files(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The most files kept open at once.
    pub(super) fn max_open_files(&self) -> u64 {
        self.max_open
    }

    fn set(&self, digest: &KeyDigest, generation: u64) -> MutexGuard<'_, Set> {
        // The digest is a hash already; the generation tells a key's versions apart.
        let mut d = [0u8; 8];
        d.copy_from_slice(&digest[..8]);
        let n =
            (u64::from_le_bytes(d) ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % SETS as u64;
        self.sets[n as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The head of file `digest.generation`, if held (whether the file still starts with its
    /// bytes is [`Head::starts`], asked once the file is read).
    pub(super) fn find(&self, digest: &KeyDigest, generation: u64) -> Option<Arc<Head>> {
        self.set(digest, generation)
            .iter()
            .flatten()
            .find(|h| h.is(digest, generation))
            .cloned()
    }

    /// The head of file `digest.generation` if held and the file starts with `raw` (tests).
    #[cfg(test)]
    pub(super) fn get(&self, digest: &KeyDigest, generation: u64, raw: &[u8]) -> Option<Arc<Head>> {
        self.find(digest, generation).filter(|h| h.starts(raw))
    }

    /// Holds `head` first in its set, instead of any head of the same file; the head that was
    /// first goes second, the second goes. Not at all if the bound does not allow it.
    pub(super) fn put(&self, head: Arc<Head>) {
        let mut set = self.set(&head.digest, head.generation);
        let same = set.iter().position(|h| {
            h.as_ref()
                .is_some_and(|h| h.is(&head.digest, head.generation))
        });
        // The place freed: that of the same file's head, else the second.
        let out = same.unwrap_or(1);
        let freed = set[out].as_ref().map_or(0, |h| h.weight);
        let fits = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let b = b.saturating_sub(freed).saturating_add(head.weight);
                (b <= self.max_bytes).then_some(b)
            })
            .is_ok();
        if fits {
            set[out] = None;
            if out == 1 {
                set.swap(0, 1);
            }
            set[0] = Some(head);
        }
    }

    /// Lets go of the head of file `digest.generation` (its object left the index).
    pub(super) fn forget(&self, digest: &KeyDigest, generation: u64) {
        let mut set = self.set(digest, generation);
        for place in set.iter_mut() {
            if place.as_ref().is_some_and(|h| h.is(digest, generation)) {
                if let Some(h) = place.take() {
                    self.bytes.fetch_sub(h.weight, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether the head of file `digest.generation` is held (tests).
    #[cfg(test)]
    pub(super) fn holds(&self, digest: &KeyDigest, generation: u64) -> bool {
        self.set(digest, generation)
            .iter()
            .flatten()
            .any(|h| h.is(digest, generation))
    }

    /// Weight of the heads held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use http::{header, HeaderMap, HeaderValue, StatusCode};

    use super::super::super::entry::Rendition;
    use super::super::super::freshness::Lifetimes;
    use super::*;

    fn head(digest: KeyDigest, generation: u64, raw: &'static [u8], ct: &'static str) -> Arc<Head> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        let entry = Entry::restored(
            StatusCode::OK,
            headers,
            Bytes::new(),
            Rendition::AsSent,
            (None, None),
            Lifetimes::default(),
            Vec::new(),
            Duration::ZERO,
            true,
            Duration::ZERO,
        );
        Arc::new(Head::new(
            digest,
            generation,
            Bytes::from_static(raw),
            SystemTime::now(),
            entry,
        ))
    }

    #[test]
    fn a_head_answers_only_its_own_file_with_its_own_bytes() {
        let heads = Heads::new(HEADS_BYTES, 16);
        let d = [7u8; 16];
        heads.put(head(d, 1, b"head one", "image/png"));
        let got = heads.get(&d, 1, b"head one").expect("held");
        let e = got.entry(Bytes::from_static(b"body"));
        assert_eq!(&e.body[..], b"body");
        assert_eq!(e.head[header::CONTENT_TYPE], "image/png");
        // Another version of the key (one in the same set), another key, or a file whose head
        // differs: none.
        let other = 1 + SETS as u64;
        assert!(heads.get(&d, other, b"head one").is_none());
        assert!(heads.get(&[8u8; 16], 1, b"head one").is_none());
        assert!(heads.get(&d, 1, b"head One").is_none());
        assert!(heads.get(&d, 1, b"head on").is_none());
        // Forgotten with its file.
        heads.forget(&d, other);
        assert!(heads.holds(&d, 1), "another version's removal leaves it");
        heads.forget(&d, 1);
        assert!(heads.get(&d, 1, b"head one").is_none());
        assert_eq!(heads.bytes(), 0);
    }

    #[test]
    fn the_bound_holds_and_a_newer_head_takes_its_place() {
        let one = head([1u8; 16], 1, b"h", "image/png");
        let heads = Heads::new(one.weight * 2, 16);
        heads.put(one.clone());
        // The same file: replaced, counted once.
        heads.put(head([1u8; 16], 1, b"h", "image/gif"));
        assert_eq!(heads.bytes(), one.weight);
        let e = heads.get(&[1u8; 16], 1, b"h").unwrap().entry(Bytes::new());
        assert_eq!(e.head[header::CONTENT_TYPE], "image/gif");
        for n in 2..64u8 {
            heads.put(head([n; 16], u64::from(n), b"h", "image/png"));
            assert!(heads.bytes() <= one.weight * 2);
        }
        let held = (1..64u8)
            .filter(|&m| heads.holds(&[m; 16], u64::from(m)))
            .count();
        assert_eq!(held, 2, "as many as the bound allows");
    }

    #[test]
    fn a_set_holds_the_two_newest_heads_of_its_files() {
        let heads = Heads::new(HEADS_BYTES, 16);
        let d = [3u8; 16];
        // Three files whose names hash to one set.
        let g = [1, 1 + SETS as u64, 1 + 2 * SETS as u64];
        for &g in &g {
            heads.put(head(d, g, b"h", "image/png"));
        }
        assert!(!heads.holds(&d, g[0]), "the oldest goes");
        assert!(heads.holds(&d, g[1]) && heads.holds(&d, g[2]));
        let one = head(d, 0, b"h", "image/png").weight;
        assert_eq!(heads.bytes(), 2 * one);
        // A forgotten head goes alone.
        heads.forget(&d, g[2]);
        assert!(heads.holds(&d, g[1]) && !heads.holds(&d, g[2]));
        assert_eq!(heads.bytes(), one);
    }

    #[test]
    fn files_kept_open_are_bounded_and_close_with_their_heads() {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: u8| File::create(dir.path().join(n.to_string())).unwrap();
        let heads = Heads::new(HEADS_BYTES, 2);
        let mut held: Vec<Arc<Head>> = (1..=3u8)
            .map(|n| head([n; 16], 1, b"h", "image/png"))
            .collect();
        for (h, n) in held.iter().zip(1..) {
            heads.put(h.clone());
            heads.keep_open(h, file(n));
        }
        assert_eq!(heads.open_files(), 2);
        assert!(held[0].file().is_some() && held[1].file().is_some());
        assert!(held[2].file().is_none(), "past the bound: closed at once");
        // A head with a file keeps the one it has.
        heads.keep_open(&held[0], file(9));
        assert_eq!(heads.open_files(), 2);
        // Forgotten: closed once the read holding it too lets go, and the room is free again.
        heads.forget(&[1; 16], 1);
        assert_eq!(heads.open_files(), 2, "still read");
        held.remove(0);
        assert_eq!(heads.open_files(), 1);
        heads.keep_open(&held[1], file(3));
        assert_eq!(heads.open_files(), 2);
        drop(held);
        heads.forget(&[2; 16], 1);
        heads.forget(&[3; 16], 1);
        assert_eq!(heads.open_files(), 0);
    }
}

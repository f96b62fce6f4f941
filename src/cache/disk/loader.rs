//! The start-up loader: rebuilds the disk tier's index from the files, in the background
//! (tamis serves meanwhile, and what is not indexed yet is a miss), as nginx's cache loader
//! does. It reads each file's head only; a file whose head, length or name is wrong is
//! removed and counted as corrupt, one whose keep time passed while tamis was down as expired.
//! Only files named as tamis names them are touched: a `disk_dir` shared with anything else
//! loses nothing else.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use moka::ops::compute::Op;

use super::super::key::CacheKey;
use super::names::{digest_name, key_digest, key_name, leaf_dir};
use super::record::{self, Kept, PREFIX_LEN};
use super::tier::{DiskTier, Indexed};

/// One file found: its path, the key hash and generation in its name, its length.
struct Found {
    path: PathBuf,
    key_hash: String,
    generation: u64,
    len: u64,
}

// The loader's two entry points are the tier's own (it starts one, its lookups call the
// other), so the tier names no function of this file.
impl DiskTier {
    /// Indexes every file under the tier's directory, then marks loading done.
    pub(super) fn load(tier: Weak<DiskTier>) {
        let Some(t) = tier.upgrade() else {
            return;
        };
        let files = walk(&t.dir, t.first_generation);
        // Counted before they are indexed: the bound then holds while the index fills.
        let total: u64 = files.iter().map(|f| f.len).sum();
        t.used.fetch_add(total, Ordering::Relaxed);
        t.listed.store(true, Ordering::Relaxed);
        drop(t);
        for (n, f) in files.into_iter().enumerate() {
            let Some(t) = tier.upgrade() else {
                return;
            };
            let early = t
                .early
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&f.path);
            if !early {
                index_one(&t, f);
            }
            t.loaded.fetch_add(1, Ordering::Relaxed);
            if n % 256 == 255 {
                t.index.run_pending_tasks();
            }
        }
        if let Some(t) = tier.upgrade() {
            // Files of routes changed or dropped while tamis was down: nothing will ask for them.
            if let Some(live) = t.live() {
                t.remove_where(|k| !live.contains(&k.route));
            }
            t.index.run_pending_tasks();
            t.loading.store(false, Ordering::Relaxed);
            let stats = t.stats();
            tracing::info!(
                dir = %stats.dir,
                entries = stats.entries,
                bytes = stats.bytes,
                "disk cache loaded"
            );
        }
    }

    /// While loading, for a lookup the loader has not reached: the newest file an earlier process
    /// left for `key`, indexed now (verified as the loader verifies it); the loader then skips it.
    pub(super) fn index_early(&self, key: &CacheKey) -> Option<Arc<Indexed>> {
        let name = key_name(key);
        let leaf = leaf_dir(&self.dir, &name);
        let newest = fs::read_dir(&leaf)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let (hash, generation) = e.file_name().to_str().and_then(parse_name)?;
                (hash == name && generation < self.first_generation).then_some((generation, e))
            })
            .max_by_key(|(generation, _)| *generation)?;
        let (generation, e) = newest;
        let len = e.metadata().ok().filter(|m| m.is_file())?.len();
        let path = e.path();
        {
            let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
            if !early.insert(path.clone()) {
                // Another lookup has just indexed it.
                drop(early);
                return self.index.get(key);
            }
        }
        index_one(
            self,
            Found {
                path,
                key_hash: name,
                generation,
                len,
            },
        );
        self.index.get(key)
    }
}

fn index_one(t: &DiskTier, f: Found) {
    let head = match read_head(&f.path) {
        Ok(h) => h,
        Err(e) => return discard(t, &f, Some(&e.to_string())),
    };
    let (rec, lengths) = match record::decode_head(&head) {
        Ok(r) => r,
        Err(e) => return discard(t, &f, Some(&e.to_string())),
    };
    if lengths.file() != f.len {
        return discard(t, &f, Some("truncated or too long"));
    }
    let digest = key_digest(&rec.key);
    if digest_name(&digest) != f.key_hash {
        return discard(t, &f, Some("named for another key"));
    }
    let keep_until = rec.keep_until();
    if keep_until <= SystemTime::now() {
        // Expired while tamis was down: nothing could use it any more.
        return discard(t, &f, None);
    }
    let object = matches!(rec.kept, Kept::Object(_));
    let slot = Arc::new(Indexed {
        generation: f.generation,
        digest,
        bytes: f.len,
        vary: match rec.kept {
            Kept::Vary(names) => Some(Arc::from(names.as_slice())),
            Kept::Object(_) => None,
        },
        keep_until,
        corrupt: AtomicBool::new(false),
        last_read: AtomicU64::new(0),
        gone: AtomicBool::new(false),
    });
    // Two versions of one key (a kill between a rename and the old file's removal), or one
    // this process wrote meanwhile: the newest generation stays.
    let generation = f.generation;
    let result = t.index.entry(rec.key).and_compute_with(|held| match held {
        Some(e) if e.value().generation >= generation => Op::Nop,
        _ => Op::Put(slot),
    });
    use moka::ops::compute::CompResult;
    match result {
        CompResult::Inserted(_) | CompResult::ReplacedWith(_) => {
            if object {
                t.objects.fetch_add(1, Ordering::Relaxed);
            }
        }
        // This very file, indexed already: nothing to undo.
        CompResult::Unchanged(e) if e.value().generation == generation => {}
        _ => {
            // An older version: its bytes go, without an eviction to count.
            if fs::remove_file(&f.path).is_ok() {
                t.used.fetch_sub(f.len, Ordering::Relaxed);
            }
        }
    }
}

/// Removes a file that cannot be indexed: corrupt (`why`) or expired (none).
fn discard(t: &DiskTier, f: &Found, why: Option<&str>) {
    match fs::remove_file(&f.path) {
        Ok(()) => {
            t.used.fetch_sub(f.len, Ordering::Relaxed);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            t.used.fetch_sub(f.len, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(path = %f.path.display(), error = %e, "cannot remove a disk cache file")
        }
    }
    match why {
        Some(why) => {
            tracing::warn!(path = %f.path.display(), why, "a damaged disk cache file was removed");
            t.evicted("corrupt");
        }
        None => t.evicted("expired"),
    }
}

/// The prefix and head of a file, no more.
fn read_head(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; PREFIX_LEN];
    f.read_exact(&mut buf)?;
    let lengths =
        record::decode_prefix(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    buf.resize(PREFIX_LEN + lengths.head as usize, 0);
    f.read_exact(&mut buf[PREFIX_LEN..])?;
    Ok(buf)
}

/// Every file named as tamis names them (`ab/cd/<32 hex>.<16 hex>`) that an earlier process
/// wrote.
fn walk(dir: &Path, first_generation: u64) -> Vec<Found> {
    let mut out = Vec::new();
    for a in subdirs(dir, 1) {
        for b in subdirs(&a, 2) {
            let Ok(entries) = fs::read_dir(&b) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some((key_hash, generation)) = name.to_str().and_then(parse_name) else {
                    continue;
                };
                if generation >= first_generation {
                    continue;
                }
                let Ok(meta) = e.metadata() else {
                    continue;
                };
                if meta.is_file() {
                    out.push(Found {
                        path: e.path(),
                        key_hash,
                        generation,
                        len: meta.len(),
                    });
                }
            }
        }
    }
    out
}

/// The two-hex-digit directories under `dir`.
fn subdirs(dir: &Path, len: usize) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.len() == len
                    && n.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// `<32 hex>.<16 hex>` → (key hash, generation).
fn parse_name(name: &str) -> Option<(String, u64)> {
    let (hash, generation) = name.split_once('.')?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if hash.len() != 32 || generation.len() != 16 || !hex(hash) || !hex(generation) {
        return None;
    }
    Some((hash.to_owned(), u64::from_str_radix(generation, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, StatusCode};

    use super::super::super::freshness::Lifetimes;
    use super::super::names::file_path;
    use super::super::record::{Object, Record};
    use super::super::tier::{DiskHooks, DiskSettings};
    use super::*;

    /// A record an earlier process wrote for `key`, fresh for an hour.
    fn earlier(key: &CacheKey, body: &[u8]) -> Vec<u8> {
        let record = Record {
            key: key.clone(),
            stored: SystemTime::now(),
            keep: Duration::from_secs(3600),
            kept: Kept::Object(Box::new(Object {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                stylesheet: false,
                own_head: true,
                upstream_etag: None,
                last_modified: None,
                vary: vec![],
                lifetimes: Lifetimes {
                    fresh_for: Duration::from_secs(3600),
                    ..Lifetimes::default()
                },
                keep_for_revalidation: Duration::ZERO,
            })),
        };
        record::encode(&record, body)
    }

    #[tokio::test]
    async fn a_lookup_finds_a_file_the_loader_has_not_reached() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = DiskHooks {
            evicted: Arc::new(|_| {}),
            write_failed: Arc::new(|_| {}),
        };
        let settings = DiskSettings {
            dir: dir.path().to_owned(),
            max_bytes: 1 << 20,
            max_object_bytes: 1 << 16,
            queue_bytes: None,
            open_files: 64,
        };
        let t = DiskTier::open(&settings, hooks).unwrap();
        while t.loading.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Files of an earlier process, listed but not indexed yet: the loader is mid-way.
        let key = CacheKey::primary(3, "https://tile.example/1/2/3.png".parse().unwrap());
        let older = file_path(dir.path(), &key, 1);
        let newest = file_path(dir.path(), &key, 2);
        fs::create_dir_all(older.parent().unwrap()).unwrap();
        fs::write(&older, earlier(&key, b"old tile")).unwrap();
        fs::write(&newest, earlier(&key, b"new tile")).unwrap();
        let len = fs::metadata(&newest).unwrap().len();
        t.listed.store(true, Ordering::Relaxed);
        t.loading.store(true, Ordering::Relaxed);

        let e = t.read(&key).await.expect("found by its name").entry;
        assert_eq!(&e.body[..], b"new tile", "the newest version");
        assert_eq!(t.stats().entries, 1);
        // The loader reaching the same file later leaves it (and the count) alone.
        assert!(t.early.lock().unwrap().contains(&newest));
        index_one(
            &t,
            Found {
                path: newest.clone(),
                key_hash: key_name(&key),
                generation: 2,
                len,
            },
        );
        assert!(newest.exists());
        assert_eq!(t.stats().entries, 1);
        // An older version it reaches goes.
        let old_len = fs::metadata(&older).unwrap().len();
        index_one(
            &t,
            Found {
                path: older.clone(),
                key_hash: key_name(&key),
                generation: 1,
                len: old_len,
            },
        );
        assert!(!older.exists());
        // Once loaded, nothing is looked up by name: a file put there by hand is not served.
        t.loading.store(false, Ordering::Relaxed);
        let other = CacheKey::primary(3, "https://tile.example/4/5/6.png".parse().unwrap());
        let path = file_path(dir.path(), &other, 1);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, earlier(&other, b"x")).unwrap();
        assert!(t.read(&other).await.is_none());
    }

    #[test]
    fn only_tamis_names_are_taken() {
        let good = format!("{}.{:016x}", "ab".repeat(16), 5u64);
        assert_eq!(parse_name(&good), Some(("ab".repeat(16), 5)));
        for bad in [
            "notes.txt",
            &format!("{}.{:016x}", "AB".repeat(16), 5u64),
            &format!("{}.{:08x}", "ab".repeat(16), 5u64),
            &format!("{}-{:016x}", "ab".repeat(16), 5u64),
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}

//! The disk tier: objects of disk-enabled routes kept in files under `cache.disk_dir`, bounded
//! by `cache.max_disk_bytes`, looked up on a memory miss and promoted to memory on a hit that
//! memory would still hold at its next read;
//! rebuilt from the files at start, so the cache survives restarts.

pub mod record;

mod heads;
mod loader;
mod names;
mod tier;

/// How long a file removed by hand may still be read through its open descriptor (tests).
#[cfg(test)]
pub(crate) use heads::RELINK;
pub use tier::{
    write_error_class, DiskHook, DiskHooks, DiskSettings, DiskStats, DiskTier, Held, HeldObject,
    Read,
};

use http::{header, HeaderName};

/// The request headers a stored answer may vary on and still be written to disk: those whose
/// value in the key is tamis's own (Accept-Encoding, normalised to one of four values). An
/// answer that varies on a value the visitor wrote (Accept, sent as the browser sent it) is
/// kept in memory only: nothing a visitor sent outlives the process.
pub const DISK_VARY: &[HeaderName] = &[header::ACCEPT_ENCODING];

/// Whether an answer varying on `names` may be written to disk (see [`DISK_VARY`]).
pub fn may_write_variants(names: &[HeaderName]) -> bool {
    names.iter().all(|n| DISK_VARY.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_varying_on_tamis_own_values_go_to_disk() {
        assert!(may_write_variants(&[]));
        assert!(may_write_variants(&[header::ACCEPT_ENCODING]));
        assert!(!may_write_variants(&[header::ACCEPT]));
        assert!(!may_write_variants(&[
            header::ACCEPT_ENCODING,
            HeaderName::from_static("x-operator-forwarded"),
        ]));
    }
}

//! The disk tier: objects of disk-enabled routes kept in files under `cache.disk_dir`, bounded
//! by `cache.max_disk_bytes`, looked up on a memory miss and promoted to memory on a hit;
//! rebuilt from the files at start, so the cache survives restarts.

pub mod record;

mod loader;
mod tier;

pub use tier::{write_error_class, DiskHook, DiskHooks, DiskSettings, DiskStats, DiskTier};

//! Live reload (SIGHUP, `POST /reload`): re-read and validate the config file; if it is valid,
//! swap the running state atomically, keeping connections, the cache and the metrics; if it is
//! not, keep running on the old one and say why.
//!
//! Each request takes the state current when it arrives and keeps it to the end, so a reload
//! never changes the rules under a request in flight. Entries of routes the new config removed
//! or changed are dropped from the cache; unchanged routes keep theirs.

use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::config::{Config, ConfigError};
use crate::state::{State, StateError};

/// Why a reload was refused; the running config stays in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    State(#[from] StateError),
    /// Settings that are fixed for the life of the process.
    #[error("{0} changed: this needs a restart, not a reload")]
    NeedsRestart(String),
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The new config's hash.
    pub hash: String,
    /// Whether the file was the same as the running one (nothing swapped).
    pub unchanged: bool,
    /// Cache entries dropped because their route was removed or changed.
    pub dropped: usize,
    /// What the reload did to each analytics route's pseudonym key.
    pub keys: Vec<(String, crate::routes::KeyFate)>,
}

/// The running state, swappable.
pub struct Live {
    current: ArcSwap<State>,
    /// One reload at a time: two racing reloads could otherwise swap in the older file last.
    reloading: Mutex<()>,
    /// Set on SIGTERM for `server.drain`: `/healthz` answers 503 while requests are served.
    draining: std::sync::atomic::AtomicBool,
    /// This server's instance id: random, made at start, telling replicas apart (an admin
    /// action relayed to every peer must not be done twice by the one that relays it).
    instance: String,
}

impl Live {
    /// Wraps the state built at start.
    pub fn new(state: State) -> Live {
        Live {
            current: ArcSwap::from_pointee(state),
            reloading: Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
            instance: {
                let mut k = [0u8; 8];
                // Without OS randomness, the process id and a count still tell servers apart.
                if getrandom::fill(&mut k).is_err() {
                    static MADE: std::sync::atomic::AtomicU32 =
                        std::sync::atomic::AtomicU32::new(0);
                    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    k[..4].copy_from_slice(&std::process::id().to_be_bytes());
                    k[4..].copy_from_slice(&n.to_be_bytes());
                }
                k.iter().map(|b| format!("{b:02x}")).collect()
            },
        }
    }

    /// This server's instance id (random, made at start).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The state to answer a request with.
    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Whether the server is draining before it stops (`/healthz` then answers 503).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the drain: from now on `/healthz` answers 503.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Re-reads the config file the running config came from and swaps it in if valid.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().await;
        let old = self.load();
        let result = Config::load(&old.config.source)
            .map_err(ReloadError::from)
            .and_then(|config| {
                fixed_settings(&old.config, &config)?;
                Ok(config)
            });
        let config = match result {
            Ok(c) => c,
            Err(e) => return Err(self.refused(e)),
        };
        if config.hash == old.config.hash && !depends_on_files(&config) {
            old.metrics.reload(true);
            tracing::info!(hash = %config.hash, "config reloaded: unchanged");
            return Ok(Reloaded {
                hash: config.hash,
                unchanged: true,
                dropped: 0,
                keys: Vec::new(),
            });
        }
        let next = match old.next(config) {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(self.refused(e.into())),
        };
        // A route with a new key takes it from the store before its first request.
        next.keep_keys().await;
        // Disk routes first: a route part that stopped using the disk tier loses its files.
        next.cache.set_disk_routes(next.disk_routes());
        self.current.store(next.clone());
        let live: Vec<u64> = next.router.routes().iter().map(|r| r.cache_id).collect();
        let dropped = next.cache.retain_routes(&live).await;
        next.metrics
            .config_loaded(&next.config.hash, next.cache.max_bytes());
        next.metrics.reload(true);
        tracing::info!(
            hash = %next.config.hash,
            routes = next.config.routes.len(),
            dropped,
            "config reloaded"
        );
        for w in &next.config.warnings {
            tracing::warn!(at = %w.at, key = %w.key, "{}", w.message);
        }
        for (route, fate) in &next.router.key_fates {
            match fate {
                crate::routes::KeyFate::Kept => {
                    tracing::info!(route = %route, "pseudonym key kept for the rest of the period")
                }
                crate::routes::KeyFate::New(why) => {
                    tracing::warn!(route = %route, why = %why, "pseudonym key reset: visitors get new pseudonyms from now on")
                }
            }
        }
        Ok(Reloaded {
            hash: next.config.hash.clone(),
            unchanged: false,
            dropped,
            keys: next.router.key_fates.clone(),
        })
    }

    fn refused(&self, e: ReloadError) -> ReloadError {
        let state = self.load();
        state.metrics.reload(false);
        tracing::error!(
            running = %state.config.hash,
            "config reload refused, still running the previous config: {e}"
        );
        e
    }
}

/// The key keeper: every tick (shorter for short periods), the running state's analytics routes
/// get their current and next pseudonym keys from the store. Ends with the server.
pub async fn keep_keys(live: std::sync::Weak<Live>) {
    loop {
        let Some(state) = live.upgrade().map(|l| l.load()) else {
            return;
        };
        let shortest = state
            .analytics_runtimes()
            .iter()
            .map(|(_, rt)| rt.pseudonyms.period_secs())
            .min()
            .unwrap_or(86400);
        state.keep_keys().await;
        drop(state);
        tokio::time::sleep(crate::analytics::shared::tick(shortest)).await;
    }
}

/// Certificates, keys, salts, tokens and the location database live in their own files: the
/// same config text may name new contents, so such a config is always rebuilt (a renewed
/// certificate, a monthly GeoLite2 update are picked up).
fn depends_on_files(config: &Config) -> bool {
    config.server.tls.is_some()
        || !config.upstream.extra_ca.is_empty()
        || config.geo.is_some()
        || config.routes.iter().any(|r| {
            r.analytics
                .as_ref()
                .is_some_and(|a| a.salt.is_some() || a.token.is_some())
        })
}

/// Listeners, worker threads and the cache's bounds are fixed at start: refuse a reload that
/// changes them rather than half-apply it.
fn fixed_settings(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let mut changed = String::new();
    let mut note = |what: &str| {
        if !changed.is_empty() {
            changed.push_str(", ");
        }
        let _ = write!(changed, "{what}");
    };
    if old.server.listen != new.server.listen {
        note("server.listen");
    }
    if old.server.tls.as_ref().map(|t| t.listen) != new.server.tls.as_ref().map(|t| t.listen) {
        note("server.tls_listen");
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        note("admin.listen");
    }
    if old.server.workers != new.server.workers {
        note("server.workers");
    }
    if old.limits.max_connections != new.limits.max_connections {
        note("limits.max_connections");
    }
    if old.cache.max_bytes != new.cache.max_bytes {
        note("cache.max_bytes");
    }
    if old.cache.max_object_bytes != new.cache.max_object_bytes {
        note("cache.max_object_bytes");
    }
    if old.cache.disk != new.cache.disk {
        note("cache.disk_dir/max_disk_bytes/disk_open_files");
    }
    if old.log.format != new.log.format {
        note("log.format");
    }
    // One connection to one store per process.
    let store = |c: &Config| {
        c.cluster
            .as_ref()
            .and_then(|c| c.store.as_ref())
            .map(|s| format!("{s:?}"))
    };
    if store(old) != store(new) {
        note("cluster.store");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart(changed))
    }
}

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
}

/// The running state, swappable.
pub struct Live {
    current: ArcSwap<State>,
    /// One reload at a time: two racing reloads could otherwise swap in the older file last.
    reloading: Mutex<()>,
    /// Set on SIGTERM for `server.drain`: `/healthz` answers 503 while requests are served.
    draining: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Wraps the state built at start.
    pub fn new(state: State) -> Live {
        Live {
            current: ArcSwap::from_pointee(state),
            reloading: Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
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
            });
        }
        let next = match old.next(config) {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(self.refused(e.into())),
        };
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
        Ok(Reloaded {
            hash: next.config.hash.clone(),
            unchanged: false,
            dropped,
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
    if old.log.format != new.log.format {
        note("log.format");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart(changed))
    }
}

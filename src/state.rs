//! The running state: everything a request needs, built from a checked config (routes, the
//! cache, the upstream client, metrics, tamis's own public pages). A reload builds the next one
//! from the last (see the reload module).

use std::sync::Arc;

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::routes::Router;
use crate::upstream::Upstream;

/// Everything a request needs, built from a validated config. A reload builds a new one that
/// shares the cache and the metrics with the one it replaces (see the reload module).
pub struct State {
    pub config: Config,
    pub router: Router,
    pub cache: Arc<Cache>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// The public page disclosing what each route does.
    pub transparency: Option<crate::transparency::page::Page>,
    /// The public dry-run probe (`transparency.probe`).
    pub probe: Option<crate::transparency::probe::Endpoint>,
    /// Indexed like the router's routes.
    pub(crate) route_metrics: Vec<RouteMetrics>,
    /// The shared key store (`[cluster] store`), one per process, kept across reloads.
    pub store: Option<Arc<crate::store::Store>>,
}

/// Something in the config that could not be turned into a running state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Tls(#[from] crate::config::tls::TlsError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl State {
    /// The paths tamis answers itself ahead of the routes (the transparency page, the probe).
    pub fn own_paths(&self) -> Vec<&str> {
        let page = self.transparency.as_ref().map(|p| p.path.as_str());
        let probe = self.probe.as_ref().map(|p| p.path.as_str());
        page.into_iter().chain(probe).collect()
    }

    /// Whether `path` is one of tamis's own public pages (answered ahead of the routes).
    pub fn is_own_page(&self, path: &str) -> bool {
        self.transparency.as_ref().is_some_and(|p| p.path == path)
            || self.probe.as_ref().is_some_and(|p| p.path == path)
    }

    /// The `cache_id`s of the route parts that keep objects on the disk tier.
    pub fn disk_routes(&self) -> Vec<u64> {
        self.router
            .routes()
            .iter()
            .filter(|r| r.uses_disk())
            .map(|r| r.cache_id)
            .collect()
    }

    /// The metrics of the route at `index` in the router.
    pub fn route_metrics(&self, index: usize) -> Option<&RouteMetrics> {
        self.route_metrics.get(index)
    }

    /// Builds routes, cache, upstream client and metrics.
    pub fn new(config: Config) -> Result<State, StateError> {
        let metrics = Arc::new(Metrics::new()?);
        let disk = config.cache.disk.as_ref().and_then(|d| {
            let settings = crate::cache::disk::DiskSettings {
                dir: d.dir.clone(),
                max_bytes: d.max_bytes,
                max_object_bytes: config.cache.max_object_bytes,
                queue_bytes: None,
                open_files: d.open_files,
            };
            match crate::cache::disk::DiskTier::open(&settings, metrics.disk_hooks()) {
                Ok(tier) => Some(tier),
                Err(e) => {
                    // One line, and tamis goes on: a cache is worth having in memory alone.
                    tracing::warn!(
                        dir = %d.dir.display(),
                        error = %e,
                        "cache.disk_dir cannot be used; caching in memory only"
                    );
                    None
                }
            }
        });
        let cache = Arc::new(
            Cache::new(
                config.cache.max_bytes,
                config.cache.max_object_bytes,
                metrics.eviction_hook(),
            )
            .with_disk(disk),
        );
        let store = match config.cluster.as_ref().and_then(|c| c.store.as_ref()) {
            Some(s) => {
                let store = Arc::new(crate::store::Store::new(s)?);
                for c in store.metrics.collectors() {
                    metrics.register(c)?;
                }
                Some(store)
            }
            None => None,
        };
        let state = State::build(config, None, cache, metrics, store)?;
        state.cache.set_disk_routes(state.disk_routes());
        state
            .metrics
            .config_loaded(&state.config.hash, state.cache.max_bytes());
        Ok(state)
    }

    /// The state for a reloaded `config`: same cache and metrics, routes rebuilt (an unchanged
    /// route keeps its cache entries, upstream permits and pseudonym key).
    pub fn next(&self, config: Config) -> Result<State, StateError> {
        State::build(
            config,
            Some(&self.router),
            self.cache.clone(),
            self.metrics.clone(),
            self.store.clone(),
        )
    }

    /// Every analytics route's name and runtime (for the key keeper).
    pub fn analytics_runtimes(&self) -> Vec<(String, Arc<crate::analytics::Runtime>)> {
        let mut out: Vec<(String, Arc<crate::analytics::Runtime>)> = Vec::new();
        for r in self.router.routes() {
            if let Some(rt) = &r.analytics {
                if !out.iter().any(|(_, o)| Arc::ptr_eq(o, rt)) {
                    out.push((r.config.name.clone(), rt.clone()));
                }
            }
        }
        out
    }

    /// One pass of the key keeper: each analytics route taking its key from the store has
    /// the current period's (and near its end, the next period's) key at hand.
    pub async fn keep_keys(&self) {
        if let Some(store) = &self.store {
            // Routes with a salt_file take no key from the store but share their location
            // counts through it: someone must notice when it answers again.
            if store.is_up() != Some(true) {
                let _ = store.ping().await;
            }
            crate::analytics::shared::keep_keys(
                &self.analytics_runtimes(),
                std::time::SystemTime::now(),
            )
            .await;
        }
    }

    pub(crate) fn build(
        config: Config,
        previous: Option<&Router>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        store: Option<Arc<crate::store::Store>>,
    ) -> Result<State, StateError> {
        let router = Router::with_store(&config, previous, store.as_ref());
        let upstream = Upstream::new(&config.upstream)?;
        let route_metrics = router
            .routes()
            .iter()
            .map(|r| metrics.route(&r.config.name, &r.prefix, r.uses_cache()))
            .collect();
        let transparency = crate::transparency::page::Page::new(&config, &router);
        let probe = crate::transparency::probe::Endpoint::new(&config);
        Ok(State {
            transparency,
            probe,
            config,
            router,
            cache,
            upstream,
            metrics,
            route_metrics,
            store,
        })
    }
}

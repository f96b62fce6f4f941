//! Prometheus metrics, served on the admin listener only. Labels are `route`, `status`,
//! `result` and the config's `hash`: never a client address, never a raw path.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// What the cache did for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from a fresh stored copy.
    Hit,
    /// Served from a fresh copy the disk tier held (memory did not).
    DiskHit,
    /// Nothing stored: fetched upstream, and stored.
    Miss,
    /// Served a stale copy (stale-while-revalidate, or stale-if-error on an upstream failure).
    Stale,
    /// A stale copy was revalidated with the upstream (304: its body is reused).
    Revalidated,
    /// Another request was already fetching it; this one waited and shared its result.
    Coalesced,
    /// Fetched upstream, but the answer may not be stored.
    Uncacheable,
    /// The request is not one the cache answers (route with `cache = false`, unsafe method).
    Bypass,
}

impl CacheResult {
    /// Every result, for pre-registering label values.
    pub const ALL: [CacheResult; 8] = [
        CacheResult::Hit,
        CacheResult::DiskHit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Coalesced,
        CacheResult::Uncacheable,
        CacheResult::Bypass,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::DiskHit => "disk_hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Uncacheable => "uncacheable",
            CacheResult::Bypass => "bypass",
        }
    }

    /// Whether the body came from memory rather than from the upstream.
    pub fn from_cache(self) -> bool {
        matches!(
            self,
            CacheResult::Hit
                | CacheResult::DiskHit
                | CacheResult::Stale
                | CacheResult::Coalesced
                | CacheResult::Revalidated
        )
    }
}

/// Why an upstream exchange failed (the `result` label of `tamis_upstream_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Timeout,
    Protocol,
    Body,
    Redirect,
    /// Not sent: the route's circuit breaker is open.
    CircuitOpen,
    /// The upstream's certificate was refused.
    Tls,
}

impl UpstreamFailure {
    /// Every failure, for pre-registering label values.
    pub const ALL: [UpstreamFailure; 7] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Timeout,
        UpstreamFailure::Protocol,
        UpstreamFailure::Body,
        UpstreamFailure::Redirect,
        UpstreamFailure::CircuitOpen,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
            UpstreamFailure::Body => "body",
            UpstreamFailure::Redirect => "redirect_outside",
            UpstreamFailure::CircuitOpen => "circuit_open",
            UpstreamFailure::Tls => "tls",
        }
    }
}

/// The disk tier's series (exported at zero when there is no disk tier).
struct DiskMetrics {
    bytes: IntGauge,
    max_bytes: IntGauge,
    entries: IntGauge,
    loading: IntGauge,
    loaded: IntGauge,
    open_files: IntGauge,
    max_open_files: IntGauge,
    write_queue_objects: IntGauge,
    write_queue_bytes: IntGauge,
    write_queue_max_bytes: IntGauge,
    evictions: IntCounterVec,
    write_errors: IntCounterVec,
}

/// Why an object left the disk tier (`tamis_cache_disk_evictions_total{result}`).
const DISK_EVICTIONS: [&str; 4] = ["size", "expired", "purged", "corrupt"];
/// Why a write to the disk tier failed (`tamis_cache_disk_write_errors_total{result}`).
const DISK_WRITE_ERRORS: [&str; 3] = ["full", "denied", "other"];

impl DiskMetrics {
    fn new(registry: &Registry) -> Result<DiskMetrics, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: String, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &["result"])?;
            for v in values {
                c.with_label_values(&[v]);
            }
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(DiskMetrics {
            bytes: gauge(
                "tamis_cache_disk_bytes",
                "Bytes of the disk tier's files (their lengths, headers included).",
            )?,
            max_bytes: gauge(
                "tamis_cache_disk_max_bytes",
                "The disk tier's configured bound (cache.max_disk_bytes); 0 without a disk tier.",
            )?,
            entries: gauge("tamis_cache_disk_entries", "Objects held by the disk tier.")?,
            loading: gauge(
                "tamis_cache_disk_loading",
                "1 while the disk tier's index is rebuilt from its files at start, then 0.",
            )?,
            loaded: gauge(
                "tamis_cache_disk_loaded_objects",
                "Files the start-up loader has indexed so far.",
            )?,
            open_files: gauge(
                "tamis_cache_disk_open_files",
                "Disk tier files kept open for their next read (nginx's open_file_cache).",
            )?,
            max_open_files: gauge(
                "tamis_cache_disk_max_open_files",
                "The bound on kept files: cache.disk_open_files, at most a quarter of the open \
                 files limit (RLIMIT_NOFILE); 0 without a disk tier.",
            )?,
            write_queue_objects: gauge(
                "tamis_cache_disk_write_queue_objects",
                "Objects waiting for a disk writer or being written.",
            )?,
            write_queue_bytes: gauge(
                "tamis_cache_disk_write_queue_bytes",
                "Body bytes of the objects waiting for a disk writer or being written.",
            )?,
            write_queue_max_bytes: gauge(
                "tamis_cache_disk_write_queue_max_bytes",
                "The bound on tamis_cache_disk_write_queue_bytes: a fill that finds the queue full \
                 waits briefly, then keeps its object in memory only (counted in \
                 tamis_cache_disk_write_errors_total{result=\"other\"}); 0 without a disk tier.",
            )?,
            evictions: counter(
                "tamis_cache_disk_evictions_total",
                format!(
                    "Objects that left the disk tier, by result: the cause {}.",
                    listed(DISK_EVICTIONS)
                ),
                &DISK_EVICTIONS,
            )?,
            write_errors: counter(
                "tamis_cache_disk_write_errors_total",
                format!(
                    "Writes to the disk tier that failed (the object stays in memory), by result: \
                     the cause {}.",
                    listed(DISK_WRITE_ERRORS)
                ),
                &DISK_WRITE_ERRORS,
            )?,
        })
    }
}

/// All of tamis's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    disk: DiskMetrics,
    requests: IntCounterVec,
    duration: HistogramVec,
    cache_lookups: IntCounterVec,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    upstream_requests: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_duration: HistogramVec,
    evictions: IntCounterVec,
    served_bytes: IntCounterVec,
    analytics_params: IntCounterVec,
    analytics_location: IntCounterVec,
    cache_max_bytes: IntGauge,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_loaded_at: Gauge,
    shed: IntCounter,
    in_flight: IntGauge,
    /// The public listeners' count of requests being answered, read at scrape time.
    in_flight_source: OnceLock<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    circuit_open: IntGaugeVec,
    /// Cache lookups per route part (a fonts route's CSS and files apart, which the `route`
    /// label merges), for `/status`; kept across reloads like the registry's series.
    part_lookups: std::sync::Mutex<std::collections::HashMap<(String, String), PartLookups>>,
}

/// One route part's cache lookups by result (in [`CacheResult::ALL`]'s order).
type PartLookups = std::sync::Arc<[std::sync::atomic::AtomicU64; 8]>;

/// `(a, b, c)`: label values for a HELP text.
fn listed<const N: usize>(values: [&str; N]) -> String {
    format!("({})", values.join(", "))
}

/// One route's counters since tamis started (they outlive reloads), as the transparency page
/// publishes them next to the route's policy.
#[derive(Debug, Default, serde::Serialize)]
pub struct RouteTotals {
    pub route: String,
    /// Requests answered, whatever the status (`tamis_requests_total`).
    pub requests: u64,
    /// Requests sent to the upstream that it answered (`tamis_upstream_requests_total`).
    pub forwarded: u64,
    /// Analytics parameters by what the scrub did (`tamis_analytics_params_total`).
    pub analytics_params: ParamTotals,
}

/// [`RouteTotals::analytics_params`] by outcome.
#[derive(Debug, Default, serde::Serialize)]
pub struct ParamTotals {
    pub kept: u64,
    pub pseudonymised: u64,
    pub generalised: u64,
    pub dropped: u64,
}

/// The sum of a counter family's series for `route`, and the `result` label when asked.
fn sum_for(vec: &IntCounterVec, route: &str, result: Option<&str>) -> u64 {
    use prometheus::core::Collector;
    let label = |m: &prometheus::proto::Metric, name: &str| {
        m.get_label()
            .iter()
            .find(|l| l.name() == name)
            .map(|l| l.value().to_owned())
    };
    vec.collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| label(m, "route").as_deref() == Some(route))
        .filter(|m| result.is_none() || label(m, "result").as_deref() == result)
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Handles resolved once per route, so the hot path does no label lookups for them.
pub struct RouteMetrics {
    route: String,
    requests: IntCounterVec,
    cache_lookups: IntCounterVec,
    /// `tamis_requests_total{route, status}` by status code (100..=599), resolved on first use.
    by_status: Box<[OnceLock<IntCounter>]>,
    upstream_requests: IntCounterVec,
    /// `tamis_upstream_requests_total{route, status}`, the same way.
    upstream_by_status: Box<[OnceLock<IntCounter>]>,
    duration: Histogram,
    upstream_duration: Histogram,
    /// `tamis_cache_lookups_total{route, result}` in [`CacheResult::ALL`]'s order: all resolved
    /// (exported at zero) for a route that uses the cache, only `bypass` for one that never does
    /// (so a hit ratio has no 0/0 series for it); any other resolved on first use.
    lookups: [OnceLock<IntCounter>; 8],
    /// This part's own lookups (see [`Metrics::part_lookups`]).
    part_lookups: PartLookups,
    /// Body bytes sent to visitors: from the cache, from the upstream.
    pub bytes_from_cache: IntCounter,
    pub bytes_from_upstream: IntCounter,
    /// Analytics parameters by outcome (kept, pseudonymised, generalised, dropped).
    analytics_params: [IntCounter; 4],
    analytics_location: IntCounterVec,
    /// `tamis_analytics_location_total{route, released}` (region, country, none), resolved on
    /// first use: only routes with a `location` ever show the series.
    location: [OnceLock<IntCounter>; 3],
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn buckets(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tamis_requests_total",
                "Requests answered, by route and status.",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            buckets(
                "tamis_request_duration_seconds",
                "Time from request to response head, by route.",
            ),
            &["route"],
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "tamis_cache_lookups_total",
                format!(
                    "Cache lookups by route and result {}.",
                    listed(CacheResult::ALL.map(CacheResult::as_str))
                ),
            ),
            &["route", "result"],
        )?;
        let cache_bytes = IntGauge::new(
            "tamis_cache_bytes",
            "Bytes held by the cache (bodies and headers).",
        )?;
        let cache_entries = IntGauge::new("tamis_cache_entries", "Objects held by the cache.")?;
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "tamis_upstream_requests_total",
                "Requests sent upstream, by route and response status.",
            ),
            &["route", "status"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tamis_upstream_errors_total",
                format!(
                    "Upstream exchanges that failed, by route and result: the kind of failure {}.",
                    listed(UpstreamFailure::ALL.map(UpstreamFailure::as_str))
                ),
            ),
            &["route", "result"],
        )?;
        let upstream_duration = HistogramVec::new(
            buckets(
                "tamis_upstream_duration_seconds",
                "Time to the upstream response head, by route.",
            ),
            &["route"],
        )?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "tamis_cache_evictions_total",
                "Objects that left the cache, by result: the cause (size, expired, purged).",
            ),
            &["result"],
        )?;
        let served_bytes = IntCounterVec::new(
            Opts::new(
                "tamis_served_bytes_total",
                "Body bytes sent to visitors, by route and result: where from (cache, upstream).",
            ),
            &["route", "result"],
        )?;
        let analytics_params = IntCounterVec::new(
            Opts::new(
                "tamis_analytics_params_total",
                "Analytics parameters seen, by route and result: what the scrubber did (kept, pseudonymised, generalised, dropped).",
            ),
            &["route", "result"],
        )?;
        let analytics_location = IntCounterVec::new(
            Opts::new(
                "tamis_analytics_location_total",
                "Tracking requests of routes with a location, by what the k-anonymity gate released (region, country, none).",
            ),
            &["route", "released"],
        )?;
        let cache_max_bytes = IntGauge::new(
            "tamis_cache_max_bytes",
            "The cache's configured bound (cache.max_bytes).",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tamis_config_reloads_total",
                "Config reloads (SIGHUP, POST /reload), by result (success, failure).",
            ),
            &["result"],
        )?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "tamis_config_info",
                "1 for the running config, labelled with its hash (as /.well-known/tamis shows it).",
            ),
            &["hash"],
        )?;
        let config_loaded_at = Gauge::new(
            "tamis_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (Unix time).",
        )?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let shed = IntCounter::new(
            "tamis_load_shed_total",
            "Requests answered 503 at once because limits.max_requests_in_flight were in flight.",
        )?;
        let in_flight = IntGauge::new(
            "tamis_requests_in_flight",
            "Requests the public listeners are answering now.",
        )?;
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "tamis_upstream_circuit_open",
                "1 while a route's circuit breaker keeps its failing upstream from being asked.",
            ),
            &["route"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tamis_build_info",
                "1, labelled with the running binary's version and git revision.",
            ),
            &["version", "revision"],
        )?;
        build_info
            .with_label_values(&[crate::VERSION, crate::REVISION])
            .set(1);
        // Resident memory, CPU seconds, open and maximum descriptors, start time, threads
        // (`process_*`, as every Prometheus exporter names them).
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(circuit_open.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(cache_max_bytes.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_info.clone()))?;
        registry.register(Box::new(config_loaded_at.clone()))?;
        registry.register(Box::new(analytics_params.clone()))?;
        registry.register(Box::new(analytics_location.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        let disk = DiskMetrics::new(&registry)?;
        registry.register(Box::new(served_bytes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        Ok(Metrics {
            registry,
            disk,
            requests,
            duration,
            cache_lookups,
            cache_bytes,
            cache_entries,
            upstream_requests,
            upstream_errors,
            upstream_duration,
            evictions,
            served_bytes,
            analytics_params,
            analytics_location,
            cache_max_bytes,
            config_reloads,
            config_info,
            config_loaded_at,
            shed,
            in_flight,
            in_flight_source: OnceLock::new(),
            circuit_open,
            part_lookups: Default::default(),
        })
    }

    /// Adds collectors of another module's (the key store's) to the registry.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// Where `tamis_requests_in_flight` is read from (the server's own count, set once).
    pub fn count_in_flight(&self, source: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let _ = self.in_flight_source.set(source);
    }

    /// Sets each route's breaker gauge (called at scrape time); `routes` may name a route
    /// twice (a fonts route's two parts share one breaker).
    pub fn set_breakers<'a>(&self, routes: impl Iterator<Item = (&'a str, bool)>) {
        self.circuit_open.reset();
        for (route, open) in routes {
            self.circuit_open
                .with_label_values(&[route])
                .set(i64::from(open));
        }
    }

    /// Counts one request shed for overload.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// Records the config now running (at start and after each successful reload).
    pub fn config_loaded(&self, hash: &str, cache_max_bytes: u64) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.cache_max_bytes
            .set(i64::try_from(cache_max_bytes).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.config_loaded_at.set(now);
    }

    /// Counts one reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// A callback counting cache evictions by cause.
    pub fn eviction_hook(&self) -> crate::cache::EvictionHook {
        let evictions = self.evictions.clone();
        for cause in ["size", "expired", "purged"] {
            evictions.with_label_values(&[cause]);
        }
        std::sync::Arc::new(move |cause: &'static str| evictions.with_label_values(&[cause]).inc())
    }

    /// The disk tier's counters: evictions by cause, write failures by cause.
    pub fn disk_hooks(&self) -> crate::cache::disk::DiskHooks {
        let evictions = self.disk.evictions.clone();
        let errors = self.disk.write_errors.clone();
        crate::cache::disk::DiskHooks {
            evicted: std::sync::Arc::new(move |c: &'static str| {
                evictions.with_label_values(&[c]).inc()
            }),
            write_failed: std::sync::Arc::new(move |c: &'static str| {
                errors.with_label_values(&[c]).inc()
            }),
        }
    }

    /// Sets the disk tier's gauges (all zero without one).
    pub fn set_disk(&self, stats: Option<&crate::cache::disk::DiskStats>) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let s = stats.cloned().unwrap_or_default();
        self.disk.bytes.set(n(s.bytes));
        self.disk.max_bytes.set(n(s.max_bytes));
        self.disk.entries.set(n(s.entries));
        self.disk.loading.set(i64::from(s.loading));
        self.disk.loaded.set(n(s.loaded));
        self.disk.open_files.set(n(s.open_files));
        self.disk.max_open_files.set(n(s.max_open_files));
        self.disk.write_queue_objects.set(n(s.write_queue_objects));
        self.disk.write_queue_bytes.set(n(s.write_queue_bytes));
        self.disk
            .write_queue_max_bytes
            .set(n(s.write_queue_max_bytes));
    }

    /// Each route's counters since start, read from the registry's own series.
    pub fn route_totals(&self, routes: &[&str]) -> Vec<RouteTotals> {
        routes
            .iter()
            .map(|&route| {
                let p = |o: &str| sum_for(&self.analytics_params, route, Some(o));
                RouteTotals {
                    route: route.to_owned(),
                    requests: sum_for(&self.requests, route, None),
                    forwarded: sum_for(&self.upstream_requests, route, None),
                    analytics_params: ParamTotals {
                        kept: p("kept"),
                        pseudonymised: p("pseudonymised"),
                        generalised: p("generalised"),
                        dropped: p("dropped"),
                    },
                }
            })
            .collect()
    }

    /// Resolves (and so exports, at zero) the per-route series of one route part (`part`: its
    /// prefix); `caches`: whether the route ever asks the cache.
    pub fn route(&self, route: &str, part: &str, caches: bool) -> RouteMetrics {
        let lookups = CacheResult::ALL.map(|r| {
            let slot = OnceLock::new();
            if caches || r == CacheResult::Bypass {
                let _ = slot.set(self.cache_lookups.with_label_values(&[route, r.as_str()]));
            }
            slot
        });
        for f in UpstreamFailure::ALL {
            self.upstream_errors.with_label_values(&[route, f.as_str()]);
        }
        let part_lookups = self
            .part_lookups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((route.to_owned(), part.to_owned()))
            .or_default()
            .clone();
        RouteMetrics {
            route: route.to_owned(),
            requests: self.requests.clone(),
            cache_lookups: self.cache_lookups.clone(),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
            upstream_requests: self.upstream_requests.clone(),
            upstream_by_status: (100..600).map(|_| OnceLock::new()).collect(),
            duration: self.duration.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
            lookups,
            part_lookups,
            bytes_from_cache: self.served_bytes.with_label_values(&[route, "cache"]),
            bytes_from_upstream: self.served_bytes.with_label_values(&[route, "upstream"]),
            analytics_params: crate::analytics::Outcome::ALL.map(|o| {
                self.analytics_params
                    .with_label_values(&[route, o.as_str()])
            }),
            analytics_location: self.analytics_location.clone(),
            location: Default::default(),
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, status: http::StatusCode) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }

    /// Counts one upstream response.
    pub fn upstream_response(&self, rm: &RouteMetrics, status: http::StatusCode, seconds: f64) {
        inc_by_status(
            &rm.upstream_by_status,
            &rm.upstream_requests,
            &rm.route,
            status,
        );
        rm.upstream_duration.observe(seconds);
    }

    /// Counts one failed upstream exchange.
    pub fn upstream_error(&self, rm: &RouteMetrics, failure: UpstreamFailure) {
        self.upstream_errors
            .with_label_values(&[rm.route.as_str(), failure.as_str()])
            .inc();
    }

    /// Sets the cache size gauges (called at scrape time).
    pub fn set_cache_size(&self, bytes: u64, entries: u64) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        if let Some(n) = self.in_flight_source.get() {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

impl RouteMetrics {
    /// Counts one answered request (no label lookup once a status has been seen).
    pub fn request(&self, status: http::StatusCode) {
        inc_by_status(&self.by_status, &self.requests, &self.route, status);
    }

    /// How many of this part's lookups had `result` so far (a fonts route's CSS and files
    /// apart).
    pub fn lookups(&self, result: CacheResult) -> u64 {
        self.part_lookups[result_index(result)].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one cache lookup.
    pub fn lookup(&self, result: CacheResult) {
        let i = result_index(result);
        self.lookups[i]
            .get_or_init(|| {
                self.cache_lookups
                    .with_label_values(&[self.route.as_str(), result.as_str()])
            })
            .inc();
        self.part_lookups[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts what location one tracking request carried (routes with a `location` only).
    pub fn location(&self, released: &crate::analytics::geo::Released) {
        let (i, label) = match (released.region, released.country) {
            (Some(_), _) => (0, "region"),
            (None, Some(_)) => (1, "country"),
            (None, None) => (2, "none"),
        };
        self.location[i]
            .get_or_init(|| {
                self.analytics_location
                    .with_label_values(&[self.route.as_str(), label])
            })
            .inc();
    }

    /// Counts what scrubbing did to one tracking request.
    pub fn analytics(&self, tally: &crate::analytics::Tally) {
        for (i, o) in crate::analytics::Outcome::ALL.iter().enumerate() {
            self.analytics_params[i].inc_by(tally.get(*o));
        }
    }

    /// Records one request's duration.
    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }
}

/// `result`'s position in [`CacheResult::ALL`].
fn result_index(result: CacheResult) -> usize {
    CacheResult::ALL
        .iter()
        .position(|r| *r == result)
        .unwrap_or(0)
}

/// A `{route, status}` counter from its slot, resolved on first use: a label lookup (a hash and
/// a lock) only the first time a route sees a status.
fn inc_by_status(
    slots: &[OnceLock<IntCounter>],
    vec: &IntCounterVec,
    route: &str,
    status: http::StatusCode,
) {
    let resolve = || vec.with_label_values(&[route, status.as_str()]);
    match slots.get(usize::from(status.as_u16()).wrapping_sub(100)) {
        Some(slot) => slot.get_or_init(resolve).inc(),
        None => resolve().inc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_with_only_allowed_labels() {
        let m = Metrics::new().unwrap();
        let r = m.route("cdn", "/cdn/", true);
        r.lookup(CacheResult::Hit);
        m.request("cdn", http::StatusCode::OK);
        m.upstream_error(&r, UpstreamFailure::Timeout);
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        assert!(
            text.contains("tamis_cache_lookups_total{result=\"hit\",route=\"cdn\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tamis_requests_total{route=\"cdn\",status=\"200\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // tamis's own, or the standard process metrics (which carry no label).
            assert!(
                line.starts_with("tamis_") || (line.starts_with("process_") && !line.contains('{')),
                "{line}"
            );
            let build = line.starts_with("tamis_build_info{");
            if let Some(labels) = line.split('{').nth(1) {
                for pair in labels.split('}').next().unwrap().split(',') {
                    let key = pair.split('=').next().unwrap();
                    let allowed: &[&str] = if build {
                        &["version", "revision"]
                    } else {
                        &["route", "status", "result", "le"]
                    };
                    assert!(allowed.contains(&key), "{line}");
                }
            }
        }
        assert!(
            text.contains(&format!(
                "tamis_build_info{{revision=\"{}\",version=\"{}\"}} 1",
                crate::REVISION,
                crate::VERSION
            )),
            "{text}"
        );
    }
}

//! The schema as written in TOML: the `Raw*` structs serde fills (values `Spanned`, so a
//! problem can name its line), and the defaults a key left out takes.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::model::{ClientIpLog, LogFormat, RouteKind};
use super::size::RawSize;
use crate::policy::Jurisdiction;
use crate::store::PersistencePolicy;

// The schema as written in TOML. `deny_unknown_fields` everywhere: a typo is an error, never a
// silently ignored setting.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) transparency: RawTransparency,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) geo: RawGeo,
    pub(super) cluster: Option<RawCluster>,
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGeo {
    pub(super) database: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) max_requests_in_flight: Option<Spanned<usize>>,
    pub(super) max_header_bytes: Option<Spanned<RawSize>>,
    pub(super) max_headers: Option<Spanned<usize>>,
    pub(super) max_uri_bytes: Option<Spanned<RawSize>>,
    pub(super) max_body_bytes: Option<Spanned<RawSize>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) h2_max_concurrent_streams: Option<Spanned<u32>>,
    pub(super) h2_max_pending_reset_streams: Option<Spanned<usize>>,
    pub(super) h2_max_local_error_reset_streams: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransparency {
    pub(super) enabled: Option<bool>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) probe: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) tls_listen: Option<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
    pub(super) shutdown_timeout: Option<Spanned<String>>,
    pub(super) drain: Option<Spanned<String>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(super) workers: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) max_bytes: Option<Spanned<RawSize>>,
    pub(super) max_object_bytes: Option<Spanned<RawSize>>,
    pub(super) status_header: Option<bool>,
    pub(super) heuristic_max: Option<Spanned<String>>,
    pub(super) negative_ttl: Option<Spanned<String>>,
    pub(super) keep: Option<Spanned<String>>,
    pub(super) hit_for_miss: Option<Spanned<String>>,
    pub(super) disk_dir: Option<Spanned<String>>,
    pub(super) max_disk_bytes: Option<Spanned<RawSize>>,
    pub(super) disk_open_files: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) user_agent: Option<Spanned<String>>,
    pub(super) extra_ca_file: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<u32>>,
    pub(super) keepalive: Option<Spanned<u32>>,
    pub(super) keepalive_timeout: Option<Spanned<String>>,
    pub(super) breaker_failures: Option<Spanned<u32>>,
    pub(super) breaker_cooldown: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) access: Option<bool>,
    pub(super) client_ip: Option<ClientIpLog>,
    pub(super) format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Spanned<String>,
    pub(super) kind: RouteKind,
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Spanned<String>,
    pub(super) jurisdiction: Option<Jurisdiction>,
    pub(super) eu_reason: Option<Spanned<String>>,
    pub(super) user_agent: Option<Spanned<String>>,
    pub(super) forward_headers: Option<Spanned<Vec<String>>>,
    pub(super) forward_query: Option<bool>,
    pub(super) cache: Option<bool>,
    pub(super) min_ttl: Option<Spanned<String>>,
    pub(super) max_ttl: Option<Spanned<String>>,
    pub(super) stale_if_error: Option<Spanned<String>>,
    pub(super) negative_ttl: Option<Spanned<String>>,
    pub(super) pass_through: Option<Spanned<bool>>,
    pub(super) disk_cache: Option<Spanned<bool>>,
    pub(super) files_prefix: Option<Spanned<String>>,
    pub(super) files_upstream: Option<Spanned<String>>,
    pub(super) subdomains: Option<Vec<String>>,
    pub(super) max_zoom: Option<Spanned<u8>>,
    pub(super) referer: Option<Spanned<String>>,
    pub(super) max_upstream_connections: Option<Spanned<usize>>,
    pub(super) allow_event_params: Option<Spanned<Vec<String>>>,
    pub(super) allow_url_params: Option<Spanned<Vec<String>>>,
    pub(super) rotate: Option<Spanned<String>>,
    pub(super) salt_file: Option<Spanned<String>>,
    pub(super) max_body: Option<Spanned<RawSize>>,
    pub(super) client_ip: Option<Spanned<crate::analytics::visitor::ClientAddress>>,
    pub(super) pseudonym_bits: Option<Spanned<u8>>,
    pub(super) location: Option<Spanned<crate::analytics::geo::Precision>>,
    pub(super) min_visitors: Option<Spanned<usize>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) rate_limit: Option<Spanned<String>>,
    pub(super) rate_burst: Option<Spanned<u32>>,
}

/// `[cluster]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) peers: Option<Vec<Spanned<String>>>,
    pub(super) store: Option<Spanned<String>>,
    pub(super) store_password_file: Option<Spanned<String>>,
    pub(super) store_ca_file: Option<Spanned<String>>,
    pub(super) store_timeout: Option<Spanned<String>>,
    pub(super) store_persistence: Option<Spanned<PersistencePolicy>>,
    pub(super) store_prefix: Option<Spanned<String>>,
}

/// User-Agent sent to upstreams when the config names none.
pub const DEFAULT_USER_AGENT: &str = concat!("tamis/", env!("CARGO_PKG_VERSION"));

pub(super) const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub(super) const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// `cache.max_disk_bytes` when `disk_dir` is set without it.
pub(super) const DEFAULT_MAX_DISK_BYTES: u64 = 1 << 30;
/// `cache.disk_open_files`: disk tier files kept open for their next read (nginx's
/// `open_file_cache max=`); more than the heads kept (~2 500 tiles' worth) is never used.
pub(super) const DEFAULT_DISK_OPEN_FILES: u32 = 4096;
/// Idle connections kept per upstream host, like nginx's `keepalive` in an upstream block.
pub(super) const DEFAULT_KEEPALIVE: usize = 64;
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Long enough for a load balancer checking `/healthz` every second or two to notice.
pub(super) const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_KEEP: Duration = Duration::from_secs(3600);
/// Varnish's builtin figure for its hit-for-miss objects.
pub(super) const DEFAULT_HIT_FOR_MISS: Duration = Duration::from_secs(120);

/// One worker per core this process may run on (its CPU affinity and cgroup quota).
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

//! The checked configuration, typed: [`Config`] and its sections, what the rest of tamis reads
//! once a file has loaded (nothing here parses TOML or reports problems).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Uri};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::policy::Jurisdiction;
use crate::secret::Secret;

/// One bad value in a parsed configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Where: file and line when known.
    pub at: String,
    /// The key, e.g. `route[1].upstream`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// A validated configuration, ready to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was loaded from (for messages, and to reload).
    pub source: PathBuf,
    /// SHA-256 of the file's text (first 16 hex digits): which config is running.
    pub hash: String,
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub cache: CacheConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    /// The public page that discloses what each route does (`None`: off).
    pub transparency: Option<TransparencyConfig>,
    /// Bounds on what clients may send and hold.
    pub limits: Limits,
    /// The location database (`[geo] database`), read into memory at each load.
    pub geo: Option<std::sync::Arc<crate::analytics::geo::Database>>,
    /// Several replicas as one (`[cluster]`): peers for admin actions, the shared key store.
    pub cluster: Option<super::ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    /// What is allowed but probably not meant, with where it is (`tamis check` prints them,
    /// and `run` logs them at start and at each reload).
    pub warnings: Vec<Problem>,
    /// Every file the config names (secrets, certificates, CA, location database), by the key
    /// naming it, resolved: `tamis check` says which of them the service's user cannot read.
    pub files: Vec<(String, std::path::PathBuf)>,
}

/// Bounds on clients: sizes, counts, time. Defaults are safe for a public listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Requests being answered at once; more get 503 with Retry-After (load shedding).
    pub max_requests_in_flight: usize,
    /// Size of a request head (HTTP/1.1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Number of request header fields (HTTP/1.1).
    pub max_headers: usize,
    /// Length of the request target; longer gets 414.
    pub max_uri_bytes: usize,
    /// Request body forwarded on a pass-through route; larger gets 413.
    pub max_body_bytes: usize,
    /// Time to send a complete request head (slowloris guard); on HTTP/1.1 it also bounds how
    /// long a kept-alive connection waits for its next request.
    pub header_read_timeout: Duration,
    /// A connection with no bytes in either direction this long, or no request begun or being
    /// answered, is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted (rapid-reset guard).
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams tamis may reset for a client's protocol errors before closing it.
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            max_requests_in_flight: 2048,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_uri_bytes: 4096,
            max_body_bytes: 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 128,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

/// A per-client request rate: one request per `period`, in bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub period: Duration,
    pub burst: u32,
}

impl RateLimit {
    /// Tiles' default: a visitor panning a map gets bursts of 200 tiles and 10 a second
    /// sustained; a bulk downloader gets no more than that.
    pub const TILES: RateLimit = RateLimit {
        period: Duration::from_millis(100),
        burst: 200,
    };
}

/// Where the public transparency page is served.
#[derive(Clone, Debug)]
pub struct TransparencyConfig {
    /// The path on the public listeners (default `/.well-known/tamis`).
    pub path: String,
    /// `POST <path>/probe` answers what tamis would send upstream for a request (default off).
    pub probe: bool,
}

/// The transparency page's default path.
pub const DEFAULT_TRANSPARENCY_PATH: &str = "/.well-known/tamis";

/// The public listeners.
#[derive(Clone)]
pub struct ServerConfig {
    /// Plain HTTP listener.
    pub listen: Option<SocketAddr>,
    /// HTTPS listener with its loaded certificate.
    pub tls: Option<TlsListen>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long tamis goes on serving while `/healthz` answers 503, so a load
    /// balancer stops sending first; then the shutdown proper.
    pub drain: Duration,
    /// Peers whose `X-Forwarded-For`/`Forwarded` names the client (a TLS terminator in front).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Worker threads serving the public listeners (default: one per core).
    pub workers: usize,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("tls_listen", &self.tls.as_ref().map(|t| t.listen))
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("drain", &self.drain)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("workers", &self.workers)
            .finish()
    }
}

/// An HTTPS listener: address, and the rustls config built from `tls_cert`/`tls_key`.
#[derive(Clone)]
pub struct TlsListen {
    pub listen: SocketAddr,
    pub cert_path: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// The admin listener (metrics, health, reload, purge).
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, `POST /reload` and `POST /cache/purge` need `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token)
            .finish()
    }
}

/// Cache bounds.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Total weight (bodies + headers) held in memory.
    pub max_bytes: u64,
    /// Larger responses stream through uncached.
    pub max_object_bytes: u64,
    /// Whether responses carry an RFC 9211 `Cache-Status` header.
    pub status_header: bool,
    /// Cap on heuristic freshness (10 % of the time since Last-Modified); zero disables it.
    pub heuristic_max: Duration,
    /// Lifetime of 404/410 answers that state none (routes may override).
    pub negative_ttl: Duration,
    /// How long a stale entry with validators is kept to be revalidated rather than refetched.
    pub keep: Duration,
    /// How long a URL whose answer could not be stored is fetched without coalescing
    /// (Varnish's hit-for-miss); zero disables it.
    pub hit_for_miss: Duration,
    /// The disk tier (`disk_dir`, `max_disk_bytes`); none: memory only.
    pub disk: Option<DiskConfig>,
}

/// `cache.disk_dir`, `cache.max_disk_bytes` and `cache.disk_open_files`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub dir: std::path::PathBuf,
    /// Bound on the bytes of its files (lengths, headers included).
    pub max_bytes: u64,
    /// Files kept open for the next read of their object, at most (`disk_open_files`).
    pub open_files: u64,
}

/// Settings shared by every upstream request.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// User-Agent sent instead of the visitor's.
    pub user_agent: HeaderValue,
    /// Extra trust anchors (private PKI, tests), already parsed.
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the whole upstream exchange (head and buffered body).
    pub timeout: Duration,
    /// Extra attempts for a GET or HEAD whose connection failed before any answer.
    pub retries: u32,
    /// Idle HTTP/1.1 connections kept open per upstream host (0: a new one per request).
    pub keepalive: usize,
    /// How long an idle upstream connection is kept.
    pub keepalive_timeout: Duration,
    /// Consecutive failures that open a route's circuit breaker (0: never).
    pub breaker_failures: u32,
    /// How long an open breaker answers without asking the upstream.
    pub breaker_cooldown: Duration,
}

/// What tamis writes to its own log.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// One line per request.
    pub access: bool,
    /// Whether (and how) the client address appears in that line.
    pub client_ip: ClientIpLog,
    /// Text lines, or one JSON object per line (fixed at start).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-04T… INFO tamis::access: route="cdn" …` (journald, a terminal).
    #[default]
    Text,
    /// One JSON object per line, for Loki, Elasticsearch, Vector and the like.
    Json,
}

/// Client address in tamis's own logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientIpLog {
    /// Never logged (default).
    #[default]
    None,
    /// IPv4 truncated to /24, IPv6 to /48, an IPv6 address carrying an IPv4 as that IPv4 /24.
    Truncated,
}

/// What a route does with requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Files mirrored as they are (CDN scripts, stylesheets, images).
    Static,
    /// A web-font CSS API (Google Fonts, Bunny Fonts) and its font files.
    Fonts,
    /// Map tiles from a URL template.
    Tiles,
    /// Google Analytics 4 (`/g/collect`).
    Ga4,
    /// Matomo (`matomo.php`, `piwik.php`).
    Matomo,
    /// Plausible (`/api/event`).
    Plausible,
    /// Umami (`/api/send`).
    Umami,
}

impl RouteKind {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Static => "static",
            RouteKind::Fonts => "fonts",
            RouteKind::Tiles => "tiles",
            RouteKind::Ga4 => "ga4",
            RouteKind::Matomo => "matomo",
            RouteKind::Plausible => "plausible",
            RouteKind::Umami => "umami",
        }
    }

    /// The analytics protocol this kind speaks, if any.
    pub fn analytics(self) -> Option<crate::analytics::Protocol> {
        use crate::analytics::Protocol;
        match self {
            RouteKind::Ga4 => Some(Protocol::Ga4),
            RouteKind::Matomo => Some(Protocol::Matomo),
            RouteKind::Plausible => Some(Protocol::Plausible),
            RouteKind::Umami => Some(Protocol::Umami),
            _ => None,
        }
    }
}

/// An analytics route's settings.
#[derive(Clone)]
pub struct AnalyticsConfig {
    pub protocol: crate::analytics::Protocol,
    pub settings: crate::analytics::Settings,
    /// How often the pseudonym key changes.
    pub rotate: Duration,
    /// Shared secret for replicas that must agree on pseudonyms (read from `salt_file`).
    pub salt: Option<Secret>,
    /// Largest request body accepted (413 above).
    pub max_body: usize,
    /// What goes in place of the visitor's address (only EU routes send one).
    pub client_ip: crate::analytics::visitor::ClientAddress,
    /// Hash bits a synthetic address keeps (`client_ip = "pseudonym"`).
    pub pseudonym_bits: u8,
    /// How precise a location is released (`location`).
    pub location: crate::analytics::geo::Precision,
    /// Distinct visitors a cell needs this period before it is released.
    pub min_visitors: usize,
    /// Matomo's `token_auth`, read from `token_file` (never from a browser): letters and
    /// digits, checked at load.
    pub token: Option<Secret>,
}

impl fmt::Debug for AnalyticsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets print as what they are (Secret's Debug); the route's fingerprint adds
        // the token's bytes itself (see Router::reloaded).
        f.debug_struct("AnalyticsConfig")
            .field("protocol", &self.protocol)
            .field("settings", &self.settings)
            .field("rotate", &self.rotate)
            .field("salt", &self.salt)
            .field("max_body", &self.max_body)
            .field("client_ip", &self.client_ip)
            .field("pseudonym_bits", &self.pseudonym_bits)
            .field("location", &self.location)
            .field("min_visitors", &self.min_visitors)
            .field("token", &self.token)
            .finish()
    }
}

/// Where a fonts route serves the font files its CSS names.
#[derive(Clone, Debug)]
pub struct FontFiles {
    pub prefix: String,
    pub upstream: UpstreamBase,
}

/// A tiles route's template and limits.
#[derive(Clone, Debug)]
pub struct TilesConfig {
    pub template: crate::mirrors::tiles::Template,
    pub max_zoom: u8,
}

/// One `[[route]]`: a path prefix mirrored from one upstream.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub kind: RouteKind,
    /// Starts and ends with `/`.
    pub prefix: String,
    pub upstream: UpstreamBase,
    pub jurisdiction: Jurisdiction,
    /// `eu_reason`: why an EU route's upstream is under EU law although the table of non-EU
    /// hosts lists it (`tamis check` and the transparency page print it).
    pub eu_reason: Option<String>,
    /// Per-route User-Agent, replacing the global one (and, on an EU route, the visitor's).
    pub user_agent: Option<HeaderValue>,
    /// Extra visitor headers forwarded as they are (EU routes only).
    pub forward_headers: Vec<HeaderName>,
    /// Whether the visitor's query string is appended to the upstream URL.
    pub forward_query: bool,
    /// Cache settings of this route.
    pub cache: RouteCache,
    /// EU only: forward every method, body and end-to-end header (a plain reverse proxy).
    pub pass_through: bool,
    /// Fonts: where the font files are served from.
    pub font_files: Option<FontFiles>,
    /// Tiles: the template and zoom limit.
    pub tiles: Option<TilesConfig>,
    /// A fixed Referer sent upstream (the site's origin, never the visitor's page).
    pub referer: Option<HeaderValue>,
    /// At most this many upstream requests at once for this route.
    pub max_upstream_connections: Option<usize>,
    /// Per-client request rate on this route (`None`: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Analytics kinds: what the scrubber keeps, and pseudonym settings.
    pub analytics: Option<AnalyticsConfig>,
}

/// Per-route cache settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCache {
    /// `cache = false`: nothing is stored; requests go straight through.
    pub enabled: bool,
    pub min_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    /// Serve a stale copy this long past freshness when the upstream fails (unless the
    /// response says otherwise or forbids it).
    pub stale_if_error: Duration,
    pub negative_ttl: Duration,
    /// `disk_cache`: as written (`None`: tiles and font files yes, the rest no).
    pub disk: Option<bool>,
}

/// An upstream base URL: scheme, authority and a path ending in `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamBase {
    pub scheme: Scheme,
    pub authority: Authority,
    pub path: String,
}

impl fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// Parses an upstream base URL: `http(s)://host[:port]/path/`.
pub fn parse_upstream(s: &str) -> Result<UpstreamBase, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not a valid URL ({e})"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::HTTPS,
        Some("http") => Scheme::HTTP,
        Some(other) => return Err(format!("{s:?}: scheme {other:?} is not http or https")),
        None => return Err(format!("{s:?} must be an absolute http:// or https:// URL")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{s:?}: user information in an upstream URL is not allowed"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?}: an upstream base URL cannot have a query"));
    }
    let path = uri.path().to_owned();
    if !path.ends_with('/') {
        return Err(format!(
            "{s:?} must end with '/' (the visitor's path after the prefix is appended to it)"
        ));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{s:?} has a '.' or '..' segment"));
    }
    Ok(UpstreamBase {
        scheme,
        authority,
        path,
    })
}

//! The TOML configuration: the public schema, parsed strictly and validated as a whole.
//!
//! Loading either yields a complete, checked [`Config`] (certificates and CA files read and
//! parsed) or an error naming every bad key, so tamis never starts half-configured.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderValue, Uri};
use toml::Spanned;
use zeroize::Zeroizing;

use crate::policy::{self, Jurisdiction};
use crate::secret::Secret;
use crate::tls;

mod model;
mod raw;

pub use model::{
    parse_upstream, AdminConfig, AnalyticsConfig, CacheConfig, ClientIpLog, Config, FontFiles,
    Limits, LogConfig, LogFormat, Problem, RateLimit, RouteCache, RouteConfig, RouteKind,
    ServerConfig, TilesConfig, TlsListen, TransparencyConfig, UpstreamBase, UpstreamConfig,
    DEFAULT_TRANSPARENCY_PATH,
};
pub use raw::DEFAULT_USER_AGENT;
use raw::*;

/// Where `tamis` looks for its configuration when `--config` is not given, in order: the
/// repository's (or a working directory's) own, then the system one the Debian package installs.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["config/tamis.toml", "/etc/tamis/tamis.toml"];

/// The config file to read: the one given, else the first of [`DEFAULT_CONFIG_PATHS`] that
/// exists, else the last (whose absence the load then reports).
pub fn config_path(given: Option<&Path>, exists: impl Fn(&Path) -> bool) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    DEFAULT_CONFIG_PATHS
        .iter()
        .map(Path::new)
        .find(|p| exists(p))
        .unwrap_or(Path::new(DEFAULT_CONFIG_PATHS[1]))
        .to_owned()
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (unknown key, wrong type…).
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The file parsed, but some values are wrong; every problem found is listed.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", p.at, p.key, p.message)?;
        }
        Ok(())
    }
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;
/// Highest `max_upstream_connections`. The router makes a semaphore of that many permits, and
/// tokio's `Semaphore::new` panics above `Semaphore::MAX_PERMITS` (2^61 - 1); far below that,
/// a cap of more than a million concurrent requests to one upstream is no cap: a larger value
/// is a mistake, refused at load like any other.
pub const MAX_UPSTREAM_CONNECTIONS: usize = 1_000_000;

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used for messages and to resolve relative files.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().to_owned();
            let hint = did_you_mean(&message)
                .map(|k| format!("\ndid you mean `{k}`?"))
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                message: message + &hint,
            }
        })?;
        let mut v = Validator {
            text,
            path,
            problems: Vec::new(),
            warnings: Vec::new(),
            has_geo: false,
        };
        let config = v.config(raw);
        if v.problems.is_empty() {
            config
                .map(|c| Config {
                    warnings: v.warnings,
                    ..c
                })
                .ok_or_else(|| ConfigError::Invalid(Vec::new()))
        } else {
            Err(ConfigError::Invalid(v.problems))
        }
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`…": the expected key closest to
/// the one written, when it is a plausible typo (at most a third of its letters off).
fn did_you_mean(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected one of ")?.1;
    expected
        .split(", ")
        .filter_map(|k| k.trim().strip_prefix('`')?.strip_suffix('`'))
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d > 0 && *d <= unknown.len().max(k.len()) / 3 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Identifies a config text in metrics, logs and the transparency page.
/// A non-reversible tag of a secret, so that a changed secret changes a route's Debug form.
fn text_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks the raw config, collecting every problem instead of stopping at the first.
struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    problems: Vec<Problem>,
    /// What is allowed but probably not meant (`tamis check` and the start-up log show them).
    warnings: Vec<Problem>,
    /// Whether `[geo] database` is set (routes' `location` needs it).
    has_geo: bool,
}

impl Validator<'_> {
    fn at(&self, span: Option<std::ops::Range<usize>>) -> String {
        match span {
            Some(span) => {
                let line = self.text[..span.start.min(self.text.len())]
                    .bytes()
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1;
                format!("{} line {}", self.path.display(), line)
            }
            None => self.path.display().to_string(),
        }
    }

    fn problem(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let at = self.at(span);
        self.problems.push(Problem {
            at,
            key: key.into(),
            message: msg.into(),
        });
    }

    fn warning(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) {
        let at = self.at(span);
        self.warnings.push(Problem {
            at,
            key: key.into(),
            message: msg.into(),
        });
    }

    /// Resolves a file named in the config relative to the config's own folder.
    fn file(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            return p.to_owned();
        }
        match self.path.parent() {
            Some(dir) => dir.join(p),
            None => p.to_owned(),
        }
    }

    /// The bytes of a secret file the config names (a token, a salt), or a problem naming
    /// `key` when it cannot be read; what the bytes must hold is the caller's to check, and
    /// its messages never quote them. The buffer is wiped when dropped.
    fn secret_file(&mut self, f: &Spanned<String>, key: &str) -> Option<Zeroizing<Vec<u8>>> {
        match std::fs::read(self.file(f.get_ref())) {
            Ok(bytes) => Some(Zeroizing::new(bytes)),
            Err(e) => {
                self.problem(
                    Some(f.span()),
                    key,
                    format!("cannot read {:?}: {e}", f.get_ref()),
                );
                None
            }
        }
    }

    fn socket_addr(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    Some(value.span()),
                    key,
                    format!(
                        "{:?} is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(Some(value.span()), key, "must be greater than zero");
                default
            }
            Err(e) => {
                self.problem(
                    Some(value.span()),
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"5s\" or \"250ms\"",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// A duration where zero is meaningful ("off").
    fn duration_or_zero(
        &mut self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(_) if value.get_ref().trim() == "0" => Duration::ZERO,
            Err(e) => {
                self.problem(
                    Some(value.span()),
                    key,
                    format!(
                        "{:?} is not a duration ({e}); write e.g. \"30s\", \"7d\" or \"0s\"",
                        value.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn user_agent(&mut self, value: &Spanned<String>, key: &str) -> Option<HeaderValue> {
        let s = value.get_ref().trim();
        if s.is_empty() {
            self.problem(Some(value.span()), key, "must not be empty");
            return None;
        }
        // Visible ASCII only: a header value must survive every hop unchanged.
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            self.problem(Some(value.span()), key, "must be printable ASCII");
            return None;
        }
        HeaderValue::from_str(s).ok()
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let server = self.server(raw.server);
        let admin = raw.admin.and_then(|a| {
            let token = a.token_file.as_ref().and_then(|f| {
                let bytes = self.secret_file(f, "admin.token_file")?;
                match std::str::from_utf8(&bytes).map(str::trim) {
                    Ok(t) if t.len() >= 16 => Some(Secret::new("admin token", t)),
                    Ok(_) => {
                        self.problem(
                            Some(f.span()),
                            "admin.token_file",
                            "must hold a token of at least 16 characters",
                        );
                        None
                    }
                    Err(e) => {
                        self.problem(
                            Some(f.span()),
                            "admin.token_file",
                            format!("cannot read {:?}: {e}", f.get_ref()),
                        );
                        None
                    }
                }
            });
            self.socket_addr(&a.listen, "admin.listen")
                .map(|listen| (listen, a.listen.span(), token))
        });
        // The admin listener never shares a port with a public one: one of the two would
        // not start, and metrics or reloads would answer the public.
        let admin = admin.map(|(listen, span, token)| {
            let public = server.iter().flat_map(|s| {
                s.listen
                    .into_iter()
                    .chain(s.tls.as_ref().map(|t| t.listen))
            });
            for p in public.collect::<Vec<_>>() {
                let shared_ip = p.ip() == listen.ip() || p.ip().is_unspecified() || listen.ip().is_unspecified();
                if p.port() == listen.port() && listen.port() != 0 && shared_ip {
                    self.problem(
                        Some(span.clone()),
                        "admin.listen",
                        format!("{listen} takes the port of the public listener {p}: give the admin listener its own port"),
                    );
                }
            }
            AdminConfig { listen, token }
        });
        let cache = self.cache(raw.cache);
        let upstream = self.upstream(raw.upstream);
        let log = LogConfig {
            access: raw.log.access.unwrap_or(true),
            client_ip: raw.log.client_ip.unwrap_or_default(),
            format: raw.log.format.unwrap_or_default(),
        };
        let transparency = self.transparency(raw.transparency);
        let idle_span = raw.limits.idle_timeout.as_ref().map(|v| v.span());
        let limits = self.limits(raw.limits);
        // An idle connection is closed without waiting for its requests: none may wait on an
        // upstream that long.
        if limits.idle_timeout <= upstream.timeout {
            self.problem(
                idle_span,
                "limits.idle_timeout",
                format!(
                    "{} must be longer than upstream.timeout ({})",
                    humantime::format_duration(limits.idle_timeout),
                    humantime::format_duration(upstream.timeout)
                ),
            );
        }
        let geo = raw.geo.database.as_ref().and_then(|d| {
            match crate::geo::Database::open(&self.file(d.get_ref())) {
                Ok(db) => Some(std::sync::Arc::new(db)),
                Err(e) => {
                    self.problem(Some(d.span()), "geo.database", e.to_string());
                    None
                }
            }
        });
        self.has_geo = raw.geo.database.is_some();
        let routes = self.routes(raw.route, &cache, &upstream.user_agent);
        Some(Config {
            source: self.path.to_owned(),
            hash: text_hash(self.text),
            server: server?,
            admin,
            cache,
            upstream,
            log,
            transparency,
            limits,
            geo,
            routes,
            warnings: Vec::new(),
        })
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        let mut count = |v: &Option<Spanned<usize>>, key: &str, default: usize, min: usize| match v
        {
            None => default,
            Some(n) if *n.get_ref() < min => {
                self.problem(Some(n.span()), key, format!("must be at least {min}"));
                default
            }
            Some(n) => *n.get_ref(),
        };
        let max_connections = count(
            &raw.max_connections,
            "limits.max_connections",
            d.max_connections,
            1,
        );
        let max_requests_in_flight = count(
            &raw.max_requests_in_flight,
            "limits.max_requests_in_flight",
            d.max_requests_in_flight,
            1,
        );
        // hyper's HTTP/1.1 read buffer cannot be smaller than 8 KiB.
        let max_header_bytes = count(
            &raw.max_header_bytes,
            "limits.max_header_bytes",
            d.max_header_bytes,
            8192,
        );
        let max_headers = count(&raw.max_headers, "limits.max_headers", d.max_headers, 8);
        let max_uri_bytes = count(
            &raw.max_uri_bytes,
            "limits.max_uri_bytes",
            d.max_uri_bytes,
            64,
        );
        let max_body_bytes = count(
            &raw.max_body_bytes,
            "limits.max_body_bytes",
            d.max_body_bytes,
            0,
        );
        let h2_max_pending_reset_streams = count(
            &raw.h2_max_pending_reset_streams,
            "limits.h2_max_pending_reset_streams",
            d.h2_max_pending_reset_streams,
            1,
        );
        let h2_max_local_error_reset_streams = count(
            &raw.h2_max_local_error_reset_streams,
            "limits.h2_max_local_error_reset_streams",
            d.h2_max_local_error_reset_streams,
            1,
        );
        let h2_max_concurrent_streams = match &raw.h2_max_concurrent_streams {
            Some(n) if *n.get_ref() == 0 => {
                self.problem(
                    Some(n.span()),
                    "limits.h2_max_concurrent_streams",
                    "must be at least 1",
                );
                d.h2_max_concurrent_streams
            }
            Some(n) => *n.get_ref(),
            None => d.h2_max_concurrent_streams,
        };
        Limits {
            max_connections,
            max_requests_in_flight,
            max_header_bytes,
            max_headers,
            max_uri_bytes,
            max_body_bytes,
            header_read_timeout: self.duration(
                raw.header_read_timeout.as_ref(),
                "limits.header_read_timeout",
                d.header_read_timeout,
            ),
            idle_timeout: self.duration(
                raw.idle_timeout.as_ref(),
                "limits.idle_timeout",
                d.idle_timeout,
            ),
            h2_max_concurrent_streams,
            h2_max_pending_reset_streams,
            h2_max_local_error_reset_streams,
        }
    }

    fn trusted_proxies(&mut self, raw: Option<&Vec<Spanned<String>>>) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for item in raw.into_iter().flatten() {
            let s = item.get_ref().trim();
            // A bare address is a single host.
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.problem(
                    Some(item.span()),
                    "server.trusted_proxies",
                    format!("{s:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\", \"::1\")"),
                ),
            }
        }
        out
    }

    fn transparency(&mut self, raw: RawTransparency) -> Option<TransparencyConfig> {
        if raw.enabled == Some(false) {
            if let Some(p) = raw.probe.filter(|p| *p.get_ref()) {
                self.problem(
                    Some(p.span()),
                    "transparency.probe",
                    "the probe is served under the transparency page, which transparency.enabled = false turns off",
                );
            }
            return None;
        }
        let probe = raw.probe.is_some_and(|p| p.into_inner());
        let path = match raw.path {
            None => DEFAULT_TRANSPARENCY_PATH.to_owned(),
            Some(p) => {
                let ok = p.get_ref().starts_with('/')
                    && p.get_ref().len() > 1
                    && p.get_ref().parse::<http::uri::PathAndQuery>().is_ok()
                    && !p.get_ref().contains(['?', '#']);
                if !ok {
                    self.problem(
                        Some(p.span()),
                        "transparency.path",
                        "must be an absolute path such as \"/.well-known/tamis\"",
                    );
                }
                p.into_inner()
            }
        };
        Some(TransparencyConfig { path, probe })
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let listen = raw
            .listen
            .as_ref()
            .and_then(|l| self.socket_addr(l, "server.listen"));
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout.as_ref(),
            "server.shutdown_timeout",
            DEFAULT_SHUTDOWN_TIMEOUT,
        );
        let drain = self.duration_or_zero(raw.drain.as_ref(), "server.drain", DEFAULT_DRAIN);
        let tls = match (&raw.tls_listen, &raw.tls_cert, &raw.tls_key) {
            (None, None, None) => None,
            (Some(l), Some(cert), Some(key)) => {
                let listen = self.socket_addr(l, "server.tls_listen");
                let cert_path = self.file(cert.get_ref());
                let key_path = self.file(key.get_ref());
                let loaded = match tls::server_config(&cert_path, &key_path) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let span = match e {
                            tls::TlsError::Key { .. } => key.span(),
                            _ => cert.span(),
                        };
                        let which = match e {
                            tls::TlsError::Key { .. } => "server.tls_key",
                            _ => "server.tls_cert",
                        };
                        self.problem(Some(span), which, e.to_string());
                        None
                    }
                };
                match (listen, loaded) {
                    (Some(listen), Some(server_config)) => Some(TlsListen {
                        listen,
                        cert_path,
                        server_config,
                    }),
                    _ => None,
                }
            }
            _ => {
                let span = [&raw.tls_listen, &raw.tls_cert, &raw.tls_key]
                    .into_iter()
                    .flatten()
                    .next()
                    .map(|s| s.span());
                self.problem(
                    span,
                    "server.tls_listen",
                    "tls_listen, tls_cert and tls_key go together: set all three or none",
                );
                None
            }
        };
        if raw.listen.is_none() && raw.tls_listen.is_none() {
            self.problem(
                None,
                "server",
                "no listener: set server.listen and/or server.tls_listen",
            );
        }
        let trusted_proxies = self.trusted_proxies(raw.trusted_proxies.as_ref());
        let workers = match raw.workers {
            None => default_workers(),
            Some(n) if (1..=MAX_WORKERS).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                self.problem(
                    Some(n.span()),
                    "server.workers",
                    format!("must be between 1 and {MAX_WORKERS} (leave it out for one per core)"),
                );
                default_workers()
            }
        };
        Some(ServerConfig {
            listen,
            tls,
            shutdown_timeout,
            drain,
            trusted_proxies,
            workers,
        })
    }

    fn cache(&mut self, raw: RawCache) -> CacheConfig {
        let max_bytes = raw
            .max_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_BYTES, |v| *v.get_ref());
        let max_object_bytes = raw
            .max_object_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_OBJECT_BYTES, |v| *v.get_ref());
        if max_object_bytes > max_bytes {
            let span = raw.max_object_bytes.as_ref().map(|v| v.span());
            self.problem(
                span,
                "cache.max_object_bytes",
                format!("{max_object_bytes} is larger than cache.max_bytes ({max_bytes})"),
            );
        }
        // moka weighs entries in u32; an object must fit one weight.
        if max_object_bytes > u64::from(u32::MAX) / 2 {
            let span = raw.max_object_bytes.as_ref().map(|v| v.span());
            self.problem(span, "cache.max_object_bytes", "must be below 2 GiB");
        }
        CacheConfig {
            max_bytes,
            max_object_bytes,
            status_header: raw.status_header.unwrap_or(true),
            heuristic_max: self.duration_or_zero(
                raw.heuristic_max.as_ref(),
                "cache.heuristic_max",
                DEFAULT_HEURISTIC_MAX,
            ),
            negative_ttl: self.duration_or_zero(
                raw.negative_ttl.as_ref(),
                "cache.negative_ttl",
                DEFAULT_NEGATIVE_TTL,
            ),
            keep: self.duration_or_zero(raw.keep.as_ref(), "cache.keep", DEFAULT_KEEP),
            hit_for_miss: self.duration_or_zero(
                raw.hit_for_miss.as_ref(),
                "cache.hit_for_miss",
                DEFAULT_HIT_FOR_MISS,
            ),
        }
    }

    fn upstream(&mut self, raw: RawUpstream) -> UpstreamConfig {
        let user_agent = raw
            .user_agent
            .as_ref()
            .and_then(|ua| self.user_agent(ua, "upstream.user_agent"))
            .unwrap_or(HeaderValue::from_static(DEFAULT_USER_AGENT));
        let extra_ca = match &raw.extra_ca_file {
            None => Vec::new(),
            Some(file) => match tls::ca_certificates(&self.file(file.get_ref())) {
                Ok(certs) => certs,
                Err(e) => {
                    self.problem(Some(file.span()), "upstream.extra_ca_file", e.to_string());
                    Vec::new()
                }
            },
        };
        UpstreamConfig {
            user_agent,
            extra_ca,
            connect_timeout: self.duration(
                raw.connect_timeout.as_ref(),
                "upstream.connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
            ),
            timeout: self.duration(raw.timeout.as_ref(), "upstream.timeout", DEFAULT_TIMEOUT),
            retries: match &raw.retries {
                Some(n) if *n.get_ref() > 3 => {
                    self.problem(Some(n.span()), "upstream.retries", "at most 3");
                    1
                }
                Some(n) => *n.get_ref(),
                None => 1,
            },
            keepalive: match &raw.keepalive {
                Some(n) if *n.get_ref() > 10_000 => {
                    self.problem(Some(n.span()), "upstream.keepalive", "at most 10000");
                    DEFAULT_KEEPALIVE
                }
                Some(n) => usize::try_from(*n.get_ref()).unwrap_or(DEFAULT_KEEPALIVE),
                None => DEFAULT_KEEPALIVE,
            },
            keepalive_timeout: self.duration(
                raw.keepalive_timeout.as_ref(),
                "upstream.keepalive_timeout",
                Duration::from_secs(60),
            ),
            breaker_failures: raw.breaker_failures.as_ref().map_or(5, |n| *n.get_ref()),
            breaker_cooldown: self.duration(
                raw.breaker_cooldown.as_ref(),
                "upstream.breaker_cooldown",
                Duration::from_secs(10),
            ),
        }
    }

    /// `rate_limit = "10/s"` (or `/min`, `/h`), `"off"`; tiles routes default to
    /// [`RateLimit::TILES`].
    fn rate_limit(&mut self, r: &RawRoute, key: &dyn Fn(&str) -> String) -> Option<RateLimit> {
        let default = (r.kind == RouteKind::Tiles).then_some(RateLimit::TILES);
        let burst = r.rate_burst.as_ref().map(|b| *b.get_ref());
        if let Some(b) = &r.rate_burst {
            if *b.get_ref() == 0 {
                self.problem(Some(b.span()), key("rate_burst"), "must be at least 1");
                return default;
            }
        }
        let Some(spec) = &r.rate_limit else {
            return match (default, burst) {
                (Some(d), Some(b)) => Some(RateLimit { burst: b, ..d }),
                (d, _) => d,
            };
        };
        let text = spec.get_ref().trim();
        if text == "off" {
            return None;
        }
        let parsed = text.split_once('/').and_then(|(n, unit)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let per = match unit.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                _ => return None,
            };
            Some((n, per / n))
        });
        match parsed {
            Some((n, period)) if !period.is_zero() => Some(RateLimit {
                period,
                // A burst of one second's worth unless set; on a tiles route never less than
                // the default's, since one map view loads dozens of tiles at once: a rate set
                // alone must not quietly turn that into 429s.
                burst: burst.unwrap_or(n.max(default.map_or(1, |d| d.burst))),
            }),
            _ => {
                self.problem(
                    Some(spec.span()),
                    key("rate_limit"),
                    format!("{text:?} is not a rate: write e.g. \"10/s\", \"600/min\" or \"off\""),
                );
                default
            }
        }
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        cache: &CacheConfig,
        global_ua: &HeaderValue,
    ) -> Vec<RouteConfig> {
        if raw.is_empty() {
            self.problem(None, "route", "no [[route]]: tamis has nothing to serve");
        }
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.len());
        let mut prefixes: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            // Routes are named in messages by their `name`, as the operator wrote it (by
            // position only when it has none a message can show).
            let label = match r.name.get_ref() {
                n if !n.is_empty() && !n.contains(['"', '\n']) => format!("route {n:?}"),
                _ => format!("route[{i}]"),
            };
            let key = |field: &str| format!("{label}.{field}");
            let problems_before = self.problems.len();
            let name = r.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.problem(
                    Some(r.name.span()),
                    key("name"),
                    format!(
                        "{name:?}: use letters, digits, '-' and '_' (it becomes a metrics label)"
                    ),
                );
            } else if names.contains(&name) {
                self.problem(
                    Some(r.name.span()),
                    key("name"),
                    format!("{name:?} is used by another route"),
                );
            }
            names.push(name.clone());

            let prefix = r.prefix.get_ref().clone();
            if let Err(msg) = check_prefix(&prefix) {
                self.problem(Some(r.prefix.span()), key("prefix"), msg);
            } else if let Some((_, other)) = prefixes.iter().find(|(p, _)| *p == prefix) {
                let line = self.at(Some(other.clone()));
                self.problem(
                    Some(r.prefix.span()),
                    key("prefix"),
                    format!("{prefix:?} is already the prefix of another route ({line})"),
                );
            }
            prefixes.push((prefix.clone(), r.prefix.span()));

            let mut tiles = None;
            let upstream = match r.kind {
                RouteKind::Tiles => {
                    match crate::routes::tiles::Template::new(
                        r.upstream.get_ref(),
                        r.subdomains.clone().unwrap_or_default(),
                    ) {
                        Ok(t) => {
                            let max_zoom = r.max_zoom.as_ref().map_or(19, |z| *z.get_ref());
                            if max_zoom > crate::routes::tiles::ZOOM_LIMIT {
                                let span = r.max_zoom.as_ref().map(|z| z.span());
                                self.problem(
                                    span,
                                    key("max_zoom"),
                                    format!("at most {}", crate::routes::tiles::ZOOM_LIMIT),
                                );
                            }
                            // The route's base is the template's own scheme and authority:
                            // where its tiles go.
                            let base = format!("{}://{}/", t.scheme(), t.sample_host());
                            tiles = Some(TilesConfig {
                                template: t,
                                max_zoom,
                            });
                            match parse_upstream(&base) {
                                Ok(base) => Some(base),
                                Err(msg) => {
                                    self.problem(Some(r.upstream.span()), key("upstream"), msg);
                                    None
                                }
                            }
                        }
                        Err(e) => {
                            self.problem(Some(r.upstream.span()), key("upstream"), e.to_string());
                            None
                        }
                    }
                }
                _ => match parse_upstream(r.upstream.get_ref()) {
                    Ok(u) => Some(u),
                    Err(msg) => {
                        self.problem(Some(r.upstream.span()), key("upstream"), msg);
                        None
                    }
                },
            };
            if r.kind != RouteKind::Tiles {
                if let Some(z) = &r.max_zoom {
                    self.problem(Some(z.span()), key("max_zoom"), "only for kind = \"tiles\"");
                }
                if r.subdomains.is_some() {
                    self.problem(
                        Some(r.upstream.span()),
                        key("subdomains"),
                        "only for kind = \"tiles\"",
                    );
                }
            }
            let font_files = match (r.kind, &r.files_prefix, &r.files_upstream) {
                (RouteKind::Fonts, Some(fp), Some(fu)) => {
                    let mut ok = true;
                    if let Err(msg) = check_prefix(fp.get_ref()) {
                        self.problem(Some(fp.span()), key("files_prefix"), msg);
                        ok = false;
                    } else if let Some((_, other)) =
                        prefixes.iter().find(|(p, _)| p == fp.get_ref())
                    {
                        let line = self.at(Some(other.clone()));
                        self.problem(
                            Some(fp.span()),
                            key("files_prefix"),
                            format!("{:?} is already a prefix ({line})", fp.get_ref()),
                        );
                        ok = false;
                    }
                    prefixes.push((fp.get_ref().clone(), fp.span()));
                    let up = match parse_upstream(fu.get_ref()) {
                        Ok(u) => Some(u),
                        Err(msg) => {
                            self.problem(Some(fu.span()), key("files_upstream"), msg);
                            None
                        }
                    };
                    match (ok, up) {
                        (true, Some(upstream)) => Some(FontFiles {
                            prefix: fp.get_ref().clone(),
                            upstream,
                        }),
                        _ => None,
                    }
                }
                (RouteKind::Fonts, None, None) => {
                    self.problem(
                        Some(r.upstream.span()),
                        key("files_upstream"),
                        "a fonts route needs files_prefix and files_upstream: the font files its CSS \
                         names are served from there (Google Fonts: files_upstream = \
                         \"https://fonts.gstatic.com/\"; a host serving both, like Bunny Fonts: \
                         the same URL as upstream)",
                    );
                    None
                }
                (RouteKind::Fonts, _, _) => {
                    let span = r
                        .files_prefix
                        .as_ref()
                        .or(r.files_upstream.as_ref())
                        .map(|s| s.span());
                    self.problem(
                        span,
                        key("files_prefix"),
                        "files_prefix and files_upstream go together",
                    );
                    None
                }
                (_, Some(s), _) | (_, _, Some(s)) => {
                    self.problem(
                        Some(s.span()),
                        key("files_prefix"),
                        "only for kind = \"fonts\"",
                    );
                    None
                }
                _ => None,
            };
            let referer = r.referer.as_ref().and_then(|v| match v.get_ref().parse::<Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.authority().is_some() => {
                    HeaderValue::from_str(v.get_ref()).ok()
                }
                _ => {
                    self.problem(Some(v.span()), key("referer"), format!("{:?} is not an http(s) URL (use the site's origin, e.g. \"https://site.example/\")", v.get_ref()));
                    None
                }
            });
            let max_upstream_connections = match &r.max_upstream_connections {
                Some(n) if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(n.get_ref()) => {
                    self.problem(
                        Some(n.span()),
                        key("max_upstream_connections"),
                        format!(
                            "{}: must be between 1 and {MAX_UPSTREAM_CONNECTIONS}",
                            n.get_ref()
                        ),
                    );
                    None
                }
                Some(n) => Some(*n.get_ref()),
                None => None,
            };
            let rate_limit = self.rate_limit(&r, &key);
            let jurisdiction = r.jurisdiction.unwrap_or(Jurisdiction::NonEu);
            if jurisdiction == Jurisdiction::NonEu {
                for (field, v) in [
                    ("upstream", Some(&r.upstream)),
                    ("files_upstream", r.files_upstream.as_ref()),
                ] {
                    if let Some(v) = v.filter(|v| plain_http_elsewhere(v.get_ref())) {
                        self.warning(
                            Some(v.span()),
                            key(field),
                            "plain http:// to a host outside the EU: anyone on the way reads what \
                             tamis sends and can change what comes back (a stylesheet, a script); \
                             use https://",
                        );
                    }
                }
            }
            let user_agent = r
                .user_agent
                .as_ref()
                .and_then(|ua| self.user_agent(ua, &key("user_agent")));
            let mut forward_headers = Vec::new();
            if let Some(list) = &r.forward_headers {
                if jurisdiction != Jurisdiction::Eu && !list.get_ref().is_empty() {
                    self.problem(
                        Some(list.span()),
                        key("forward_headers"),
                        "only an EU route (jurisdiction = \"eu\") may forward visitor headers beyond the allowlist",
                    );
                }
                for h in list.get_ref() {
                    match policy::check_forwardable(h) {
                        Ok(name) => forward_headers.push(name),
                        Err(msg) => self.problem(Some(list.span()), key("forward_headers"), msg),
                    }
                }
            }
            if let Some(t) = &tiles {
                if crate::routes::tiles::is_osm_host(&t.template.sample_host()) {
                    let ua = user_agent.as_ref().unwrap_or(global_ua);
                    if !crate::routes::tiles::has_contact(ua.to_str().unwrap_or("")) {
                        self.problem(
                            Some(r.upstream.span()),
                            key("user_agent"),
                            "OpenStreetMap's tile usage policy requires a User-Agent with a contact (a URL or an e-mail): set user_agent here or in [upstream]",
                        );
                    }
                    if r.referer.is_none() {
                        self.problem(
                            Some(r.upstream.span()),
                            key("referer"),
                            "OpenStreetMap's tile usage policy requires a Referer: set referer = \"https://your-site.example/\" (the site's origin, never the visitor's page)",
                        );
                    }
                }
            }
            let analytics = match r.kind.analytics() {
                Some(protocol) => {
                    let salt = r.salt_file.as_ref().and_then(|f| {
                        let bytes = self.secret_file(f, &key("salt_file"))?;
                        if bytes.len() < 16 {
                            self.problem(
                                Some(f.span()),
                                key("salt_file"),
                                "must hold at least 16 bytes of secret",
                            );
                            return None;
                        }
                        Some(Secret::new("pseudonym salt", &bytes[..]))
                    });
                    use crate::geo::Precision;
                    use crate::routes::analytics::visitor::{ClientAddress, DEFAULT_BITS};
                    use crate::routes::analytics::Protocol;
                    let client_ip = r
                        .client_ip
                        .as_ref()
                        .map_or(ClientAddress::None, |c| *c.get_ref());
                    let ip_span = r.client_ip.as_ref().map(|c| c.span());
                    if client_ip != ClientAddress::None && jurisdiction != Jurisdiction::Eu {
                        self.problem(ip_span.clone(), key("client_ip"), "a client address, even truncated or pseudonymous, only goes to an EU upstream (jurisdiction = \"eu\")");
                    }
                    let pseudonym_bits = r
                        .pseudonym_bits
                        .as_ref()
                        .map_or(DEFAULT_BITS, |b| *b.get_ref());
                    if let Some(b) = &r.pseudonym_bits {
                        if !(8..=32).contains(b.get_ref()) {
                            self.problem(Some(b.span()), key("pseudonym_bits"), "between 8 and 32");
                        } else if client_ip != ClientAddress::Pseudonym {
                            self.problem(
                                Some(b.span()),
                                key("pseudonym_bits"),
                                "is for client_ip = \"pseudonym\"",
                            );
                        }
                    }
                    let location = r
                        .location
                        .as_ref()
                        .map_or(Precision::None, |l| *l.get_ref());
                    let location_span = r.location.as_ref().map(|l| l.span());
                    if location != Precision::None {
                        // Computed from the address: like the address, it only goes to an
                        // EU upstream, and a non-EU one gets nothing beyond its allowlist.
                        if jurisdiction != Jurisdiction::Eu {
                            self.problem(
                                location_span.clone(),
                                key("location"),
                                "a location computed from the visitor's address only goes to an EU upstream (jurisdiction = \"eu\")",
                            );
                        }
                        if !self.has_geo {
                            self.problem(location_span.clone(), key("location"), "needs a location database: set [geo] database = \"/path/to/GeoLite2-City.mmdb\" (or a DB-IP Lite file)");
                        }
                        match protocol {
                            Protocol::Ga4 => self.problem(location_span.clone(), key("location"), "GA4's collect protocol has no location field (Google locates hits by the sending address, which is tamis's): use none"),
                            Protocol::Plausible => self.problem(location_span.clone(), key("location"), "Plausible's event API has no location field (it locates by the address it receives): use none, or client_ip = \"truncated\" on an EU Plausible"),
                            Protocol::Matomo | Protocol::Umami => {}
                        }
                    }
                    // Umami reads CDN location headers only after the address it reads has
                    // passed its local-address check: with no address at all it may skip them.
                    if protocol == Protocol::Umami
                        && location != Precision::None
                        && client_ip != ClientAddress::Pseudonym
                    {
                        self.warning(location_span.clone(), key("location"), "Umami reads the location headers only beside a client address it does not take for a local one: pair location with client_ip = \"pseudonym\" (EU routes), or check that Umami records the countries");
                    }
                    let min_visitors = r.min_visitors.as_ref().map_or(10, |m| *m.get_ref());
                    if let Some(m) = &r.min_visitors {
                        if !(2..=1000).contains(m.get_ref()) {
                            self.problem(
                                Some(m.span()),
                                key("min_visitors"),
                                "between 2 and 1000 (a cell of one visitor would identify them; the counts are held in memory)",
                            );
                        } else if location == Precision::None {
                            self.problem(
                                Some(m.span()),
                                key("min_visitors"),
                                "is for location = \"country\" or \"region\"",
                            );
                        }
                    }
                    let token = r.token_file.as_ref().and_then(|f| {
                        if protocol != Protocol::Matomo {
                            self.problem(
                                Some(f.span()),
                                key("token_file"),
                                "is for matomo routes (Matomo's token_auth)",
                            );
                            return None;
                        }
                        let bytes = self.secret_file(f, &key("token_file"))?;
                        let t = String::from_utf8_lossy(&bytes);
                        let t = t.trim();
                        if (1..=256).contains(&t.len())
                            && t.bytes().all(|b| b.is_ascii_alphanumeric())
                        {
                            Some(Secret::new("operator token_auth", t))
                        } else {
                            self.problem(
                                Some(f.span()),
                                key("token_file"),
                                "must hold one Matomo token_auth (letters and digits)",
                            );
                            None
                        }
                    });
                    // Matomo only accepts cip, country and region with a token_auth.
                    if protocol == Protocol::Matomo && r.token_file.is_none() {
                        if client_ip == ClientAddress::Pseudonym {
                            self.problem(ip_span.clone(), key("client_ip"), "Matomo only accepts a visitor address (cip) with the operator's token_auth: set token_file");
                        }
                        if location != Precision::None {
                            self.problem(location_span.clone(), key("location"), "Matomo only accepts country and region with the operator's token_auth: set token_file");
                        }
                    }
                    let max_body = r.max_body.as_ref().map_or(64 * 1024, |m| *m.get_ref());
                    if max_body == 0 || max_body > 16 * 1024 * 1024 {
                        let span = r.max_body.as_ref().map(|m| m.span());
                        self.problem(span, key("max_body"), "between 1 byte and 16 MiB");
                    }
                    Some(AnalyticsConfig {
                        protocol,
                        settings: crate::routes::analytics::Settings {
                            allow_event_params: r.allow_event_params.clone().unwrap_or_default(),
                            allow_url_params: r.allow_url_params.clone().unwrap_or_default(),
                        },
                        rotate: self.duration(
                            r.rotate.as_ref(),
                            &key("rotate"),
                            Duration::from_secs(86400),
                        ),
                        salt,
                        max_body,
                        client_ip,
                        pseudonym_bits,
                        location,
                        min_visitors,
                        token,
                    })
                }
                None => {
                    let analytics_only = [
                        r.allow_event_params.is_some(),
                        r.allow_url_params.is_some(),
                        r.rotate.is_some(),
                        r.salt_file.is_some(),
                        r.max_body.is_some(),
                        r.client_ip.is_some(),
                        r.pseudonym_bits.is_some(),
                        r.location.is_some(),
                        r.min_visitors.is_some(),
                        r.token_file.is_some(),
                    ];
                    if analytics_only.iter().any(|b| *b) {
                        self.problem(
                            Some(r.name.span()),
                            key("kind"),
                            "allow_event_params, allow_url_params, rotate, salt_file, max_body, client_ip, pseudonym_bits, location, min_visitors and token_file are for analytics kinds (ga4, matomo, plausible, umami)",
                        );
                    }
                    None
                }
            };
            let min_ttl = r
                .min_ttl
                .as_ref()
                .map(|v| self.duration_or_zero(Some(v), &key("min_ttl"), Duration::ZERO));
            let max_ttl = r
                .max_ttl
                .as_ref()
                .map(|v| self.duration_or_zero(Some(v), &key("max_ttl"), Duration::ZERO));
            if let (Some(min), Some(max), Some(span)) =
                (min_ttl, max_ttl, r.max_ttl.as_ref().map(|m| m.span()))
            {
                if min > max {
                    self.problem(Some(span), key("max_ttl"), "is smaller than min_ttl");
                }
            }
            let route_cache = RouteCache {
                // Tracking requests are never stored.
                enabled: r.cache.unwrap_or(true) && analytics.is_none(),
                min_ttl,
                max_ttl,
                // A tile outage should not blank the map: tiles serve stale for a week by default.
                stale_if_error: self.duration_or_zero(
                    r.stale_if_error.as_ref(),
                    &key("stale_if_error"),
                    if r.kind == RouteKind::Tiles {
                        Duration::from_secs(7 * 86400)
                    } else {
                        Duration::ZERO
                    },
                ),
                negative_ttl: self.duration_or_zero(
                    r.negative_ttl.as_ref(),
                    &key("negative_ttl"),
                    cache.negative_ttl,
                ),
            };
            let pass_through = r.pass_through.as_ref().is_some_and(|p| *p.get_ref());
            if pass_through && jurisdiction != Jurisdiction::Eu {
                let span = r.pass_through.as_ref().map(|p| p.span());
                self.problem(
                    span,
                    key("pass_through"),
                    "forwards every header, cookies included: only allowed with jurisdiction = \"eu\"",
                );
            }
            let Some(upstream) = upstream else {
                // Every [[route]] written is served or the config refused: each way of getting
                // no upstream records its problem; were one ever not to, refuse here rather
                // than serve the config without this route.
                if self.problems.len() == problems_before {
                    self.problem(
                        Some(r.upstream.span()),
                        key("upstream"),
                        format!(
                            "{:?}: no upstream URL can be made of it",
                            r.upstream.get_ref()
                        ),
                    );
                }
                continue;
            };
            routes.push(RouteConfig {
                name,
                kind: r.kind,
                prefix,
                upstream,
                jurisdiction,
                user_agent,
                forward_headers,
                forward_query: r.forward_query.unwrap_or(true),
                cache: route_cache,
                pass_through,
                font_files,
                tiles,
                referer,
                max_upstream_connections,
                rate_limit,
                analytics,
            });
        }
        routes
    }
}

/// A prefix is an absolute path of plain segments ending in `/`.
/// Whether an upstream URL is plain `http://` to a host that is not this machine.
fn plain_http_elsewhere(url: &str) -> bool {
    let Some(rest) = url
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !local
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must start and end with '/' (e.g. \"/cdn/\")"
        ));
    }
    if prefix.contains("//") {
        return Err(format!("{prefix:?} has an empty segment"));
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~/".contains(&b);
    if !prefix.bytes().all(plain) {
        return Err(format!(
            "{prefix:?}: use letters, digits and - . _ ~ only (no percent-encoding)"
        ));
    }
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{prefix:?} has a '.' or '..' segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_config_the_local_file_wins_then_the_system_one() {
        let given = Path::new("/srv/t.toml");
        assert_eq!(config_path(Some(given), |_| false), given);
        assert_eq!(
            config_path(None, |p| p == Path::new("config/tamis.toml")),
            Path::new("config/tamis.toml")
        );
        assert_eq!(config_path(None, |_| true), Path::new("config/tamis.toml"));
        assert_eq!(
            config_path(None, |p| p.is_absolute()),
            Path::new("/etc/tamis/tamis.toml")
        );
        // Neither: the system path, so the error names the file a package would have put there.
        assert_eq!(
            config_path(None, |_| false),
            Path::new("/etc/tamis/tamis.toml")
        );
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "cdn"
kind = "static"
prefix = "/cdn/"
upstream = "https://cdn.example/npm/"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn problems(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_config_prints_its_secrets_by_name_and_its_errors_never_quote_a_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (token, admin, salt) = (
            "s3cr3tOperatorToken0123456789",
            "s3cr3t-admin-token-0123456789",
            "s3cr3t-pseudonym-salt-0123456789",
        );
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             token_file = {:?}\n[[route]]\nname = \"m\"\nkind = \"matomo\"\nprefix = \"/m/\"\n\
             upstream = \"https://matomo.example/\"\njurisdiction = \"eu\"\n\
             client_ip = \"pseudonym\"\ntoken_file = {:?}\nsalt_file = {:?}\n",
            file("admin", admin),
            file("token", token),
            file("salt", salt),
        );
        let c = parse(&text).unwrap();
        let a = c.routes[0].analytics.as_ref().unwrap();
        assert_eq!(a.token.as_ref().unwrap().expose(), token.as_bytes());
        let shown = format!("{c:?} {c:#?}");
        for secret in [token, admin, salt] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<operator token_auth>"), "{shown}");
        assert!(shown.contains("<admin token>"), "{shown}");
        assert!(shown.contains("<pseudonym salt>"), "{shown}");
        // Files that hold something else than they must: the messages say what is wrong,
        // never what is there.
        let bad = [
            ("token", "s3cr3t-Operator-token!0123456789"),
            ("admin", "s3cr3t-short"),
            ("salt", "s3cr3t-salt"),
        ];
        for (name, content) in bad {
            file(name, content);
            let msg = problems(&text);
            assert!(msg.contains("_file"), "{msg}");
            assert!(!msg.contains(content) && !msg.contains("s3cr3t"), "{msg}");
        }
        std::fs::write(
            dir.path().join("admin"),
            b"s3cr3t-admin-token-\xff-0123456789",
        )
        .unwrap();
        let msg = problems(&text);
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn the_probe_is_off_by_default_and_lives_under_the_transparency_page() {
        let base =
            "[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\nkind = \"static\"\n\
                    prefix = \"/r/\"\nupstream = \"https://r.example/\"\n";
        let t = parse(base).unwrap().transparency.unwrap();
        assert!(!t.probe);
        let t = parse(&format!("{base}[transparency]\nprobe = true\n"))
            .unwrap()
            .transparency
            .unwrap();
        assert!(t.probe);
        let e = problems(&format!(
            "{base}[transparency]\nenabled = false\nprobe = true\n"
        ));
        assert!(e.contains("transparency.probe"), "{e}");
        let e = problems(&format!("{base}[transparency]\nprobes = true\n"));
        assert!(e.contains("did you mean `probe`"), "{e}");
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse(MINIMAL).unwrap();
        let r = &c.routes[0];
        assert_eq!(r.jurisdiction, Jurisdiction::NonEu);
        assert_eq!(r.upstream.to_string(), "https://cdn.example/npm/");
        assert_eq!(c.upstream.user_agent, DEFAULT_USER_AGENT);
        assert_eq!(c.log.client_ip, ClientIpLog::None);
        assert_eq!(c.cache.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(c.cache.hit_for_miss, Duration::from_secs(120));
    }

    #[test]
    fn hit_for_miss_can_be_shortened_or_turned_off() {
        for (value, want) in [("\"30s\"", 30), ("\"0s\"", 0)] {
            let c = parse(&format!("[cache]\nhit_for_miss = {value}\n{MINIMAL}")).unwrap();
            assert_eq!(c.cache.hit_for_miss, Duration::from_secs(want));
        }
        let msg = problems(&format!("[cache]\nhit_for_miss = \"soon\"\n{MINIMAL}"));
        assert!(msg.contains("cache.hit_for_miss"), "{msg}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = MINIMAL.replace("kind = \"static\"", "kind = \"static\"\nupstrem = \"x\"");
        let msg = problems(&text);
        assert!(msg.contains("upstrem"), "{msg}");
        assert!(msg.contains("line 8"), "{msg}");
    }

    #[test]
    fn an_unknown_key_gets_the_key_it_was_probably_meant_to_be() {
        let text = MINIMAL.replace(
            "kind = \"static\"",
            "kind = \"static\"\nrefere = \"https://s.example/\"",
        );
        let msg = problems(&text);
        assert!(msg.contains("did you mean `referer`?"), "{msg}");
        // Nothing close: no guess.
        let msg =
            problems(&MINIMAL.replace("kind = \"static\"", "kind = \"static\"\nfrobnicate = 1"));
        assert!(!msg.contains("did you mean"), "{msg}");
        assert_eq!(edit_distance("refere", "referer"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_fonts_route_without_its_files_side_is_refused_naming_the_route() {
        let msg = problems(&format!(
            "{MINIMAL}[[route]]\nname = \"gf\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\nupstream = \"https://fonts.googleapis.com/\"\n"
        ));
        assert!(msg.contains("route \"gf\".files_upstream"), "{msg}");
        assert!(msg.contains("fonts.gstatic.com"), "{msg}");
    }

    #[test]
    fn an_admin_listener_on_a_public_port_is_refused() {
        for (public, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
        ] {
            let text = MINIMAL.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{public}\"\n[admin]\nlisten = \"{admin}\""),
            );
            let msg = problems(&text);
            assert!(
                msg.contains("admin.listen") && msg.contains("own port"),
                "{public} {admin}: {msg}"
            );
        }
        // Another port, or another address on the same port: fine.
        for admin in ["127.0.0.1:9180", "127.0.0.2:8080"] {
            let text = MINIMAL.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:8080\"\n[admin]\nlisten = \"{admin}\""),
            );
            assert!(parse(&text).is_ok(), "{admin}");
        }
    }

    #[test]
    fn a_tiles_rate_never_lowers_the_default_burst_unless_asked() {
        let tiles = |extra: &str| {
            let c = parse(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"t\"\nkind = \"tiles\"\nprefix = \"/t/\"\nupstream = \"https://tile.example/{{z}}/{{x}}/{{y}}.png\"\n{extra}\n"
            ))
            .unwrap();
            c.routes[0].rate_limit.map(|l| (l.period, l.burst))
        };
        assert_eq!(tiles(""), Some((Duration::from_millis(100), 200)));
        assert_eq!(
            tiles("rate_limit = \"5/s\""),
            Some((Duration::from_millis(200), 200))
        );
        assert_eq!(
            tiles("rate_limit = \"500/s\""),
            Some((Duration::from_millis(2), 500))
        );
        assert_eq!(
            tiles("rate_limit = \"5/s\"\nrate_burst = 20"),
            Some((Duration::from_millis(200), 20))
        );
        assert_eq!(
            tiles("rate_burst = 50"),
            Some((Duration::from_millis(100), 50))
        );
        // Other kinds: a second's worth.
        let c = parse(&format!("{MINIMAL}rate_limit = \"5/s\"\n")).unwrap();
        assert_eq!(c.routes[0].rate_limit.map(|l| l.burst), Some(5));
    }

    #[test]
    fn plain_http_to_a_non_eu_host_is_warned_about() {
        let c =
            parse(&MINIMAL.replace("https://cdn.example/npm/", "http://cdn.example/npm/")).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "route \"cdn\".upstream");
        assert!(c.warnings[0].message.contains("https://"));
        for quiet in [
            MINIMAL.to_owned(),
            MINIMAL.replace("https://cdn.example/npm/", "http://127.0.0.1:8081/"),
            MINIMAL.replace("https://cdn.example/npm/", "http://localhost:8081/"),
            format!(
                "{}jurisdiction = \"eu\"\n",
                MINIMAL.replace("https://", "http://")
            ),
        ] {
            assert!(parse(&quiet).unwrap().warnings.is_empty(), "{quiet}");
        }
    }

    #[test]
    fn unknown_kind_and_jurisdiction_are_refused() {
        let msg = problems(&MINIMAL.replace("\"static\"", "\"magic\""));
        assert!(msg.contains("magic"), "{msg}");
        let msg = problems(&format!("{MINIMAL}jurisdiction = \"us\"\n"));
        assert!(msg.contains("us"), "{msg}");
    }

    #[test]
    fn bad_upstreams_are_refused() {
        for bad in [
            "ftp://x/",
            "https://cdn.example/npm",
            "cdn.example/npm/",
            "https://user@cdn.example/",
            "https://cdn.example/?a=b",
            "https://cdn.example/a/../",
        ] {
            let msg = problems(&MINIMAL.replace("https://cdn.example/npm/", bad));
            assert!(msg.contains("route \"cdn\".upstream"), "{bad}: {msg}");
        }
    }

    #[test]
    fn workers_default_to_one_per_core_and_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(MINIMAL).unwrap().server.workers, cores);
        let three = MINIMAL.replace("[server]\n", "[server]\nworkers = 3\n");
        assert_eq!(parse(&three).unwrap().server.workers, 3);
        for bad in ["0", "1025"] {
            let msg =
                problems(&MINIMAL.replace("[server]\n", &format!("[server]\nworkers = {bad}\n")));
            assert!(msg.contains("server.workers"), "{bad}: {msg}");
            assert!(msg.contains("between 1 and 1024"), "{bad}: {msg}");
        }
    }

    #[test]
    fn upstream_keepalive_is_bounded_and_timed() {
        let c = parse(&format!(
            "[upstream]\nkeepalive = 0\nkeepalive_timeout = \"2s\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.upstream.keepalive, 0);
        assert_eq!(c.upstream.keepalive_timeout, Duration::from_secs(2));
        let msg = problems(&format!("[upstream]\nkeepalive = 100000\n{MINIMAL}"));
        assert!(msg.contains("upstream.keepalive"), "{msg}");
        let msg = problems(&format!(
            "[upstream]\nkeepalive_timeout = \"0s\"\n{MINIMAL}"
        ));
        assert!(msg.contains("upstream.keepalive_timeout"), "{msg}");
    }

    #[test]
    fn duplicate_prefix_names_both_lines() {
        let text = format!(
            "{MINIMAL}\n[[route]]\nname = \"b\"\nkind = \"static\"\nprefix = \"/cdn/\"\nupstream = \"https://b.example/\"\n"
        );
        let msg = problems(&text);
        assert!(msg.contains("route \"b\".prefix"), "{msg}");
        assert!(msg.contains("line 8"), "{msg}");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in ["cdn/", "/cdn", "/c%64n/", "/a/../", "//"] {
            let msg = problems(&MINIMAL.replace("\"/cdn/\"", &format!("{bad:?}")));
            assert!(msg.contains("route \"cdn\".prefix"), "{bad}: {msg}");
        }
    }

    #[test]
    fn forward_headers_only_on_eu_routes_and_never_credentials() {
        let msg = problems(&format!(
            "{MINIMAL}forward_headers = [\"Accept-Language\"]\n"
        ));
        assert!(msg.contains("only an EU route"), "{msg}");
        let msg = problems(&format!(
            "{MINIMAL}jurisdiction = \"eu\"\nforward_headers = [\"Cookie\"]\n"
        ));
        assert!(msg.contains("Cookie"), "{msg}");
        let c = parse(&format!(
            "{MINIMAL}jurisdiction = \"eu\"\nforward_headers = [\"Accept-Language\"]\n"
        ))
        .unwrap();
        assert_eq!(c.routes[0].forward_headers, vec!["accept-language"]);
    }

    #[test]
    fn pass_through_only_on_eu_routes() {
        let msg = problems(&format!("{MINIMAL}pass_through = true\n"));
        assert!(msg.contains("route \"cdn\".pass_through"), "{msg}");
        let c = parse(&format!(
            "{MINIMAL}jurisdiction = \"eu\"\npass_through = true\n"
        ))
        .unwrap();
        assert!(c.routes[0].pass_through);
    }

    #[test]
    fn route_cache_settings() {
        let c = parse(&format!(
            "{MINIMAL}cache = false\nmin_ttl = \"1h\"\nmax_ttl = \"7d\"\nstale_if_error = \"7d\"\nnegative_ttl = \"0s\"\n"
        ))
        .unwrap();
        let rc = &c.routes[0].cache;
        assert!(!rc.enabled);
        assert_eq!(rc.min_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(rc.max_ttl, Some(Duration::from_secs(7 * 86400)));
        assert_eq!(rc.stale_if_error, Duration::from_secs(7 * 86400));
        assert_eq!(rc.negative_ttl, Duration::ZERO);
        let msg = problems(&format!("{MINIMAL}min_ttl = \"2d\"\nmax_ttl = \"1d\"\n"));
        assert!(msg.contains("route \"cdn\".max_ttl"), "{msg}");
        let msg = problems(&format!("{MINIMAL}stale_if_error = \"soon\"\n"));
        assert!(msg.contains("route \"cdn\".stale_if_error"), "{msg}");
    }

    const FONTS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[route]]
name = "google-fonts"
kind = "fonts"
prefix = "/fonts/"
upstream = "https://fonts.googleapis.com/"
files_prefix = "/fonts/files/"
files_upstream = "https://fonts.gstatic.com/"
"#;

    const OSM: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstream]
user_agent = "site tiles (+https://site.example/privacy)"

[[route]]
name = "osm"
kind = "tiles"
prefix = "/tiles/osm/"
upstream = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
referer = "https://site.example/"
"#;

    #[test]
    fn fonts_routes() {
        let c = parse(FONTS).unwrap();
        let f = c.routes[0].font_files.as_ref().unwrap();
        assert_eq!(
            (f.prefix.as_str(), f.upstream.to_string().as_str()),
            ("/fonts/files/", "https://fonts.gstatic.com/")
        );
        let msg = problems(&FONTS.replace("files_prefix = \"/fonts/files/\"\n", ""));
        assert!(msg.contains("go together"), "{msg}");
        let msg = problems(&FONTS.replace("\"/fonts/files/\"", "\"/fonts/\""));
        assert!(msg.contains("route \"google-fonts\".files_prefix"), "{msg}");
        let msg = problems(&MINIMAL.replace(
            "kind = \"static\"",
            "kind = \"static\"\nfiles_prefix = \"/x/\"",
        ));
        assert!(msg.contains("only for kind = \"fonts\""), "{msg}");
    }

    #[test]
    fn osm_tiles_need_a_contact_and_a_referer() {
        let c = parse(OSM).unwrap();
        assert_eq!(c.routes[0].tiles.as_ref().unwrap().max_zoom, 19);
        assert_eq!(
            c.routes[0].cache.stale_if_error,
            Duration::from_secs(7 * 86400)
        );
        let msg = problems(&OSM.replace(
            "user_agent = \"site tiles (+https://site.example/privacy)\"",
            "user_agent = \"site tiles\"",
        ));
        assert!(
            msg.contains("route \"osm\".user_agent") && msg.contains("contact"),
            "{msg}"
        );
        let msg = problems(&OSM.replace(
            "[upstream]\nuser_agent = \"site tiles (+https://site.example/privacy)\"\n",
            "",
        ));
        assert!(
            msg.contains("contact"),
            "the default User-Agent has none: {msg}"
        );
        let msg = problems(&OSM.replace("referer = \"https://site.example/\"\n", ""));
        assert!(msg.contains("route \"osm\".referer"), "{msg}");
        let msg = problems(&OSM.replace("\"https://site.example/\"", "\"site.example\""));
        assert!(msg.contains("route \"osm\".referer"), "{msg}");
        // Other tile hosts are not bound by OSM's policy.
        let other = OSM
            .replace("tile.openstreetmap.org", "tiles.example")
            .replace("referer = \"https://site.example/\"\n", "");
        assert!(parse(&other).is_ok());
        let msg = problems(&OSM.replace("{y}.png", ".png"));
        assert!(msg.contains("route \"osm\".upstream"), "{msg}");
        let msg = problems(&format!("{OSM}max_zoom = 40\n"));
        assert!(msg.contains("route \"osm\".max_zoom"), "{msg}");
        let msg = problems(&format!("{OSM}max_upstream_connections = 0\n"));
        assert!(
            msg.contains("route \"osm\".max_upstream_connections"),
            "{msg}"
        );
    }

    #[test]
    fn a_tiles_route_whose_host_makes_no_base_is_refused_not_dropped() {
        // Both were once accepted, then left out of the router without a word.
        for upstream in [
            "https://h?x/{z}/{x}/{y}.png",
            "http:{r}//tiles.example/{z}/{x}/{y}.png",
            "https://tiles.example#/{z}/{x}/{y}.png",
        ] {
            let text = OSM.replace("https://tile.openstreetmap.org/{z}/{x}/{y}.png", upstream);
            let msg = problems(&format!(
                "{text}\n{}",
                &MINIMAL[MINIMAL.find("[[route]]").unwrap()..]
            ));
            assert!(
                msg.contains("route \"osm\".upstream") && msg.contains("line 12"),
                "{upstream}: {msg}"
            );
        }
        // Whatever is accepted keeps every route written.
        let c = parse(&format!(
            "{OSM}\n{}",
            &MINIMAL[MINIMAL.find("[[route]]").unwrap()..]
        ))
        .unwrap();
        assert_eq!(c.routes.len(), 2);
        let t = c.routes[0].tiles.as_ref().unwrap();
        assert_eq!(
            c.routes[0].upstream.to_string(),
            format!("{}://{}/", t.template.scheme(), t.template.sample_host())
        );
    }

    #[test]
    fn max_upstream_connections_is_bounded() {
        // Above tokio's Semaphore::MAX_PERMITS, the router would panic building the route.
        for n in ["1000001", "2305843009213693952", "9223372036854775807"] {
            let msg = problems(&format!("{MINIMAL}max_upstream_connections = {n}\n"));
            assert!(
                msg.contains("route \"cdn\".max_upstream_connections")
                    && msg.contains("line 10")
                    && msg.contains("between 1 and 1000000"),
                "{n}: {msg}"
            );
        }
        let c = parse(&format!("{MINIMAL}max_upstream_connections = 1000000\n")).unwrap();
        assert_eq!(c.routes[0].max_upstream_connections, Some(1_000_000));
        assert_eq!(crate::routes::Router::new(&c).routes().len(), 1);
    }

    #[test]
    fn analytics_routes() {
        let ga = MINIMAL.replace("kind = \"static\"", "kind = \"ga4\"");
        let c = parse(&format!(
            "{ga}allow_event_params = [\"ep.page_type\"]\nrotate = \"12h\"\n"
        ))
        .unwrap();
        let a = c.routes[0].analytics.as_ref().unwrap();
        assert_eq!(a.settings.allow_event_params, vec!["ep.page_type"]);
        assert_eq!(a.rotate, Duration::from_secs(12 * 3600));
        assert_eq!(a.max_body, 64 * 1024);
        assert!(
            !c.routes[0].cache.enabled,
            "tracking requests are never cached"
        );
        let msg = problems(&format!("{ga}client_ip = \"truncated\"\n"));
        assert!(
            msg.contains("route \"cdn\".client_ip") && msg.contains("EU"),
            "{msg}"
        );
        assert!(parse(&format!(
            "{ga}jurisdiction = \"eu\"\nclient_ip = \"truncated\"\n"
        ))
        .is_ok());
        let msg = problems(&format!("{MINIMAL}allow_url_params = [\"utm_source\"]\n"));
        assert!(msg.contains("analytics kinds"), "{msg}");
        let msg = problems(&format!("{ga}salt_file = \"/nonexistent/salt\"\n"));
        assert!(msg.contains("route \"cdn\".salt_file"), "{msg}");
        let msg = problems(&format!("{ga}max_body = 0\n"));
        assert!(msg.contains("route \"cdn\".max_body"), "{msg}");
    }

    #[test]
    fn location_and_synthetic_addresses_are_checked_at_load() {
        let kind = |k: &str| MINIMAL.replace("kind = \"static\"", &format!("kind = \"{k}\""));
        let eu = "jurisdiction = \"eu\"\n";
        // A location needs a database, and a protocol with a field for it.
        let msg = problems(&format!("{}location = \"region\"\n", kind("umami")));
        assert!(
            msg.contains("route \"cdn\".location") && msg.contains("[geo] database"),
            "{msg}"
        );
        for k in ["ga4", "plausible"] {
            let msg = problems(&format!("{}location = \"country\"\n", kind(k)));
            assert!(msg.contains("no location field"), "{k}: {msg}");
        }
        // Computed from the address, a location only goes to an EU upstream.
        let msg = problems(&format!(
            "{}location = \"country\"\n\n[geo]\ndatabase = \"/nonexistent/city.mmdb\"\n",
            kind("umami")
        ));
        assert!(
            msg.contains("route \"cdn\".location") && msg.contains("only goes to an EU upstream"),
            "{msg}"
        );
        // A missing database file is named.
        let msg = problems(&format!(
            "{}location = \"country\"\n\n[geo]\ndatabase = \"/nonexistent/city.mmdb\"\n",
            kind("umami")
        ));
        assert!(
            msg.contains("geo.database") && msg.contains("/nonexistent/city.mmdb"),
            "{msg}"
        );
        // A synthetic address, like a truncated one, only goes to an EU upstream.
        let msg = problems(&format!("{}client_ip = \"pseudonym\"\n", kind("umami")));
        assert!(msg.contains("only goes to an EU upstream"), "{msg}");
        assert!(parse(&format!("{}{eu}client_ip = \"pseudonym\"\n", kind("umami"))).is_ok());
        // Matomo takes cip only with the operator's token.
        let msg = problems(&format!(
            "{}{eu}client_ip = \"pseudonym\"\n",
            kind("matomo")
        ));
        assert!(msg.contains("set token_file"), "{msg}");
        let msg = problems(&format!("{}token_file = \"/etc/passwd\"\n", kind("umami")));
        assert!(msg.contains("is for matomo routes"), "{msg}");
        // A cell of one visitor would identify them; bits are bounded.
        let msg = problems(&format!(
            "{}min_visitors = 1\nlocation = \"country\"\n",
            kind("umami")
        ));
        assert!(msg.contains("route \"cdn\".min_visitors"), "{msg}");
        let msg = problems(&format!(
            "{}{eu}client_ip = \"pseudonym\"\npseudonym_bits = 40\n",
            kind("umami")
        ));
        assert!(msg.contains("between 8 and 32"), "{msg}");
        // The log's client_ip knows no pseudonym.
        assert!(parse(
            &MINIMAL.replace("[[route]]", "[log]\nclient_ip = \"pseudonym\"\n\n[[route]]")
        )
        .is_err());
        let msg = problems(&format!("{MINIMAL}location = \"country\"\n"));
        assert!(msg.contains("analytics kinds"), "{msg}");
        // Umami without an address beside its location headers: a warning, naming the key.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("empty.mmdb");
        let mut w = maxminddb_writer::Database::default();
        w.metadata.binary_format_major_version = 2;
        let fr = w
            .insert_value(std::collections::BTreeMap::from([("country", "FR")]))
            .unwrap();
        w.insert_node(
            "192.0.2.0/24"
                .parse::<maxminddb_writer::paths::IpAddrWithMask>()
                .unwrap(),
            fr,
        );
        std::fs::write(&db, w.write_to(Vec::new()).unwrap()).unwrap();
        let with_db = |extra: &str| {
            format!(
                "{}{eu}location = \"country\"\n{extra}\n[geo]\ndatabase = \"{}\"\n",
                kind("umami"),
                db.display()
            )
        };
        let c = parse(&with_db("")).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "route \"cdn\".location");
        assert!(c.warnings[0].message.contains("client_ip = \"pseudonym\""));
        let c = parse(&with_db("client_ip = \"pseudonym\"\n")).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.geo.is_some());
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = MINIMAL
            .replace("127.0.0.1:0", "nowhere")
            .replace("https://cdn.example/npm/", "ftp://x/");
        let msg = problems(&text);
        assert!(msg.contains("server.listen"), "{msg}");
        assert!(msg.contains("route \"cdn\".upstream"), "{msg}");
    }

    #[test]
    fn missing_tls_files_are_refused() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"",
        );
        let msg = problems(&text);
        assert!(msg.contains("server.tls_cert"), "{msg}");
        assert!(msg.contains("/nonexistent/cert.pem"), "{msg}");
    }

    #[test]
    fn no_listener_and_no_route_are_refused() {
        let msg = problems("[server]\n");
        assert!(msg.contains("no listener"), "{msg}");
        assert!(msg.contains("no [[route]]"), "{msg}");
    }
}

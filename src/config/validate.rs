//! The validator's core: where a problem is (`file line N`), reading files, durations and
//! addresses, and the global sections ([server], [admin], [cache], [upstream], [limits]…).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use toml::Spanned;
use zeroize::Zeroizing;

use super::model::{
    AdminConfig, CacheConfig, DiskConfig, Limits, Problem, ServerConfig, TlsListen,
    TransparencyConfig, UpstreamConfig, DEFAULT_TRANSPARENCY_PATH,
};
use super::raw::{
    default_workers, RawAdmin, RawCache, RawGeo, RawLimits, RawServer, RawTransparency,
    RawUpstream, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DISK_OPEN_FILES, DEFAULT_DRAIN,
    DEFAULT_HEURISTIC_MAX, DEFAULT_HIT_FOR_MISS, DEFAULT_KEEP, DEFAULT_KEEPALIVE,
    DEFAULT_MAX_BYTES, DEFAULT_MAX_DISK_BYTES, DEFAULT_MAX_OBJECT_BYTES, DEFAULT_NEGATIVE_TTL,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_TIMEOUT, DEFAULT_USER_AGENT,
};
use super::size::{parse_size, RawSize};
use crate::config::tls;
use crate::secret::Secret;

/// A key's name in messages, e.g. `route "cdn".upstream`.
pub(super) type Key<'k> = &'k dyn Fn(&str) -> String;

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// Walks the raw config, collecting every problem instead of stopping at the first.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) problems: Vec<Problem>,
    /// What is allowed but probably not meant (`tamis check` and the start-up log show them).
    pub(super) warnings: Vec<Problem>,
    /// Whether `[geo] database` is set (routes' `location` needs it).
    pub(super) has_geo: bool,
    /// The paths tamis answers itself on the public listeners (no route may cover them).
    pub(super) own_pages: Vec<String>,
    /// Every file the config names, by the key naming it (`Config::files`).
    pub(super) files: Vec<(String, PathBuf)>,
}

impl Validator<'_> {
    pub(super) fn at(&self, span: Option<std::ops::Range<usize>>) -> String {
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

    pub(super) fn problem(
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

    pub(super) fn warning(
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

    /// [`Self::file`], noted under `key` among the files the config makes tamis read.
    fn named_file(&mut self, value: &str, key: &str) -> PathBuf {
        let path = self.file(value);
        self.files.push((key.to_owned(), path.clone()));
        path
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
    pub(super) fn secret_file(
        &mut self,
        f: &Spanned<String>,
        key: &str,
    ) -> Option<Zeroizing<Vec<u8>>> {
        match std::fs::read(self.named_file(f.get_ref(), key)) {
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

    pub(super) fn duration(
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
    pub(super) fn duration_or_zero(
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

    pub(super) fn user_agent(&mut self, value: &Spanned<String>, key: &str) -> Option<HeaderValue> {
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
    pub(super) fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        // Sizes may carry a unit ("16 KiB"); then they are bounded like the counts.
        let max_header_bytes =
            self.size_usize(raw.max_header_bytes.as_ref(), "limits.max_header_bytes");
        let max_uri_bytes = self.size_usize(raw.max_uri_bytes.as_ref(), "limits.max_uri_bytes");
        let max_body_bytes = self.size_usize(raw.max_body_bytes.as_ref(), "limits.max_body_bytes");
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
            &max_header_bytes,
            "limits.max_header_bytes",
            d.max_header_bytes,
            8192,
        );
        let max_headers = count(&raw.max_headers, "limits.max_headers", d.max_headers, 8);
        let max_uri_bytes = count(&max_uri_bytes, "limits.max_uri_bytes", d.max_uri_bytes, 64);
        let max_body_bytes = count(
            &max_body_bytes,
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

    pub(super) fn transparency(&mut self, raw: RawTransparency) -> Option<TransparencyConfig> {
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

    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
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
                let cert_path = self.named_file(cert.get_ref(), "server.tls_cert");
                let key_path = self.named_file(key.get_ref(), "server.tls_key");
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

    pub(super) fn cache(&mut self, raw: RawCache) -> CacheConfig {
        let max_bytes = self.size(raw.max_bytes.as_ref(), "cache.max_bytes", DEFAULT_MAX_BYTES);
        let max_object_bytes = self.size(
            raw.max_object_bytes.as_ref(),
            "cache.max_object_bytes",
            DEFAULT_MAX_OBJECT_BYTES,
        );
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
        let disk = raw.disk_dir.as_ref().map(|dir| {
            if dir.get_ref().trim().is_empty() {
                self.problem(
                    Some(dir.span()),
                    "cache.disk_dir",
                    "is empty: leave it out for a memory-only cache",
                );
            }
            DiskConfig {
                dir: std::path::PathBuf::from(dir.get_ref()),
                max_bytes: self.size(
                    raw.max_disk_bytes.as_ref(),
                    "cache.max_disk_bytes",
                    DEFAULT_MAX_DISK_BYTES,
                ),
                open_files: u64::from(
                    raw.disk_open_files
                        .as_ref()
                        .map_or(DEFAULT_DISK_OPEN_FILES, |n| *n.get_ref()),
                ),
            }
        });
        if let (None, Some(m)) = (&disk, &raw.max_disk_bytes) {
            self.problem(
                Some(m.span()),
                "cache.max_disk_bytes",
                "has no effect without cache.disk_dir",
            );
        }
        if let (None, Some(n)) = (&disk, &raw.disk_open_files) {
            self.problem(
                Some(n.span()),
                "cache.disk_open_files",
                "has no effect without cache.disk_dir",
            );
        }
        CacheConfig {
            disk,
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

    pub(super) fn upstream(&mut self, raw: RawUpstream) -> UpstreamConfig {
        let user_agent = raw
            .user_agent
            .as_ref()
            .and_then(|ua| self.user_agent(ua, "upstream.user_agent"))
            .unwrap_or(HeaderValue::from_static(DEFAULT_USER_AGENT));
        let extra_ca = match &raw.extra_ca_file {
            None => Vec::new(),
            Some(file) => match tls::ca_certificates(
                &self.named_file(file.get_ref(), "upstream.extra_ca_file"),
            ) {
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

    /// `[admin]`: the token file's token, and a listen address no public listener takes.
    pub(super) fn admin(
        &mut self,
        raw: Option<RawAdmin>,
        server: &Option<ServerConfig>,
    ) -> Option<AdminConfig> {
        let admin = raw.and_then(|a| {
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
        admin.map(|(listen, span, token)| {
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
            self.exposed_admin(listen, span, token.is_some());
            AdminConfig { listen, token }
        })
    }

    /// `[geo] database`, read into memory; also notes whether one is set (routes' `location`
    /// needs it).
    pub(super) fn geo(&mut self, raw: &RawGeo) -> Option<Arc<crate::analytics::geo::Database>> {
        let geo = raw.database.as_ref().and_then(|d| {
            match crate::analytics::geo::Database::open(
                &self.named_file(d.get_ref(), "geo.database"),
            ) {
                Ok(db) => Some(std::sync::Arc::new(db)),
                Err(e) => {
                    self.problem(Some(d.span()), "geo.database", e.to_string());
                    None
                }
            }
        });
        self.has_geo = raw.database.is_some();
        geo
    }
}

/// Size keys (`"256 MiB"` or a plain integer of bytes), read with `size::parse_size`.
impl Validator<'_> {
    /// A size key: `default` when absent; a problem naming `key` when it does not parse.
    pub(super) fn size(
        &mut self,
        value: Option<&Spanned<RawSize>>,
        key: &str,
        default: u64,
    ) -> u64 {
        let Some(value) = value else { return default };
        match value.get_ref() {
            RawSize::Bytes(n) => *n,
            RawSize::Text(t) => match parse_size(t) {
                Ok(n) => n,
                Err(msg) => {
                    self.problem(Some(value.span()), key, msg);
                    default
                }
            },
        }
    }

    /// A size key held in a `usize` (a count of bytes in memory), with its span for the
    /// caller's bounds; `None` when absent or unreadable (the problem is recorded).
    pub(super) fn size_usize(
        &mut self,
        value: Option<&Spanned<RawSize>>,
        key: &str,
    ) -> Option<Spanned<usize>> {
        let v = value?;
        let before = self.problems.len();
        let n = self.size(Some(v), key, 0);
        if self.problems.len() > before {
            return None;
        }
        match usize::try_from(n) {
            Ok(n) => Some(Spanned::new(v.span(), n)),
            Err(_) => {
                self.problem(
                    Some(v.span()),
                    key,
                    format!("{n} bytes is more than this machine can address"),
                );
                None
            }
        }
    }
}

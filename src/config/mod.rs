//! The TOML configuration: the public schema, parsed strictly and validated as a whole.
//!
//! Loading either yields a complete, checked [`Config`] (certificates and CA files read and
//! parsed) or an error naming every bad key, so tamis never starts half-configured.
//!
//! The pipeline, one file per step: the text → `raw.rs` (serde: `deny_unknown_fields`, values
//! `Spanned`) → the validator (`validate.rs`: its core and the global sections; `route.rs` and
//! `analytics.rs`: each `[[route]]`), run in order by `Validator::config` here → the typed
//! [`Config`] of `model.rs`. Every problem is collected with its line, none stops the walk.

use std::fmt;
use std::path::{Path, PathBuf};

mod analytics;
mod cluster;
mod mistakes;
mod model;
mod raw;
mod route;
mod size;
pub mod tls;
mod validate;

pub use crate::store::{PersistencePolicy, StoreConfig};
pub use cluster::ClusterConfig;
pub use mistakes::{event_param_hint, placeholder_in, referer_origin};
pub use model::{
    parse_upstream, AdminConfig, AnalyticsConfig, CacheConfig, ClientIpLog, Config, FontFiles,
    Limits, LogConfig, LogFormat, Problem, RateLimit, RouteCache, RouteConfig, RouteKind,
    ServerConfig, TilesConfig, TlsListen, TransparencyConfig, UpstreamBase, UpstreamConfig,
    DEFAULT_TRANSPARENCY_PATH,
};
use raw::RawConfig;
pub use raw::DEFAULT_USER_AGENT;
pub use route::MAX_UPSTREAM_CONNECTIONS;
pub use size::parse_size;
use validate::Validator;

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

/// What to tell of the file read when no `--config` was given: its name, and, when both
/// [`DEFAULT_CONFIG_PATHS`] exist (a source checkout on a machine with the package), that the
/// other one is there too and which one the packaged service reads.
pub fn default_config_note(read: &Path, exists: impl Fn(&Path) -> bool) -> String {
    let mut note = format!("no --config given, reading {}", read.display());
    let system = Path::new(DEFAULT_CONFIG_PATHS[1]);
    if read != system && exists(system) {
        note.push_str(&format!(
            "; {} exists too, and is the one the packaged service reads: check it with -c {}",
            system.display(),
            system.display()
        ));
    }
    note
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
            own_pages: Vec::new(),
            files: Vec::new(),
        };
        let config = v.config(raw);
        if v.problems.is_empty() {
            config
                .map(|c| Config {
                    warnings: v.warnings,
                    files: v.files,
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

impl Validator<'_> {
    /// The orchestrator: the global sections in turn (validate.rs) with the checks across them,
    /// then the routes; problems are reported in this order.
    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let server = self.server(raw.server);
        let admin = self.admin(raw.admin, &server);
        let cache = self.cache(raw.cache);
        let upstream = self.upstream(raw.upstream);
        let log = LogConfig {
            access: raw.log.access.unwrap_or(true),
            client_ip: raw.log.client_ip.unwrap_or_default(),
            format: raw.log.format.unwrap_or_default(),
        };
        let transparency = self.transparency(raw.transparency);
        // The pages tamis answers ahead of the routes (`State::own_paths`): the transparency
        // page, and its probe when on (`transparency::probe::probe_path`).
        self.own_pages = transparency
            .iter()
            .flat_map(|t| {
                let probe = format!("{}/probe", t.path.trim_end_matches('/'));
                std::iter::once(t.path.clone()).chain(t.probe.then_some(probe))
            })
            .collect();
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
        let geo = self.geo(&raw.geo);
        let routes = self.routes(raw.route, &cache, &upstream.user_agent);
        let cluster = self.cluster(raw.cluster, &routes);
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
            cluster,
            routes,
            warnings: Vec::new(),
            files: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::raw::DEFAULT_MAX_BYTES;
    use super::*;
    use crate::policy::Jurisdiction;

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

    #[test]
    fn without_config_both_files_present_are_named() {
        let local = Path::new("config/tamis.toml");
        assert_eq!(
            default_config_note(local, |p| p == local),
            "no --config given, reading config/tamis.toml"
        );
        let both = default_config_note(local, |_| true);
        assert!(
            both.starts_with(
                "no --config given, reading config/tamis.toml; /etc/tamis/tamis.toml exists too"
            ) && both.ends_with("check it with -c /etc/tamis/tamis.toml"),
            "{both}"
        );
        let system = Path::new("/etc/tamis/tamis.toml");
        assert_eq!(
            default_config_note(system, |_| true),
            "no --config given, reading /etc/tamis/tamis.toml"
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
    fn the_disk_tier_is_off_unless_a_directory_is_given() {
        assert_eq!(parse(MINIMAL).unwrap().cache.disk, None);
        let c = parse(&format!(
            "[cache]\ndisk_dir = \"/var/cache/tamis\"\n{MINIMAL}"
        ))
        .unwrap();
        let d = c.cache.disk.unwrap();
        assert_eq!(d.dir, Path::new("/var/cache/tamis"));
        assert_eq!(d.max_bytes, 1 << 30, "1 GiB by default");
        let c = parse(&format!(
            "[cache]\ndisk_dir = \"/d\"\nmax_disk_bytes = \"20 GiB\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.cache.disk.unwrap().max_bytes, 20 << 30);
        let msg = problems(&format!("[cache]\nmax_disk_bytes = \"1 GiB\"\n{MINIMAL}"));
        assert!(
            msg.contains("cache.max_disk_bytes") && msg.contains("disk_dir"),
            "{msg}"
        );
        let msg = problems(&format!(
            "[cache]\ndisk_dir = \"/d\"\nmax_disk_bytes = \"1g\"\n{MINIMAL}"
        ));
        assert!(msg.contains("line 3: cache.max_disk_bytes"), "{msg}");
    }

    #[test]
    fn disk_open_files_defaults_and_needs_a_disk_dir() {
        let c = parse(&format!("[cache]\ndisk_dir = \"/d\"\n{MINIMAL}")).unwrap();
        assert_eq!(c.cache.disk.unwrap().open_files, 4096);
        let c = parse(&format!(
            "[cache]\ndisk_dir = \"/d\"\ndisk_open_files = 0\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.cache.disk.unwrap().open_files, 0);
        let msg = problems(&format!("[cache]\ndisk_open_files = 10\n{MINIMAL}"));
        assert!(
            msg.contains("cache.disk_open_files") && msg.contains("disk_dir"),
            "{msg}"
        );
    }

    #[test]
    fn disk_cache_is_refused_where_answers_are_not_the_same_for_everyone() {
        assert_eq!(parse(MINIMAL).unwrap().routes[0].cache.disk, None);
        let on = parse(&format!("{MINIMAL}disk_cache = true\n")).unwrap();
        assert_eq!(on.routes[0].cache.disk, Some(true));
        let off = parse(&format!("{MINIMAL}disk_cache = false\n")).unwrap();
        assert_eq!(off.routes[0].cache.disk, Some(false));
        let ga = MINIMAL.replace("kind = \"static\"", "kind = \"ga4\"");
        for (text, why) in [
            (format!("{ga}disk_cache = true\n"), "analytics"),
            (
                format!("{MINIMAL}cache = false\ndisk_cache = true\n"),
                "cache = false",
            ),
            (
                format!(
                    "{MINIMAL}jurisdiction = \"eu\"\nforward_headers = [\"Accept-Language\"]\n\
                     disk_cache = true\n"
                ),
                "forward_headers",
            ),
        ] {
            let msg = problems(&text);
            assert!(
                msg.contains("route \"cdn\".disk_cache") && msg.contains(why),
                "{why}: {msg}"
            );
        }
    }

    #[test]
    fn sizes_are_written_with_a_unit_or_as_plain_bytes() {
        let c = parse(&format!(
            "[cache]\nmax_bytes = \"20 GiB\"\nmax_object_bytes = \"8 MiB\"\n\
             [limits]\nmax_header_bytes = \"32 KiB\"\nmax_body_bytes = 2048\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.cache.max_bytes, 20 << 30);
        assert_eq!(c.cache.max_object_bytes, 8 << 20);
        assert_eq!(c.limits.max_header_bytes, 32 << 10);
        assert_eq!(c.limits.max_body_bytes, 2048);
        let ga = MINIMAL.replace("kind = \"static\"", "kind = \"ga4\"");
        let c = parse(&format!("{ga}max_body = \"128 KiB\"\n")).unwrap();
        assert_eq!(c.routes[0].analytics.as_ref().unwrap().max_body, 128 << 10);
        // A bad size names its key and line, and says what to write; bounds still apply.
        let msg = problems(&format!("[cache]\nmax_bytes = \"256m\"\n{MINIMAL}"));
        assert!(
            msg.contains("line 2: cache.max_bytes") && msg.contains("\"256 MiB\""),
            "{msg}"
        );
        let msg = problems(&format!("[cache]\nmax_bytes = -1\n{MINIMAL}"));
        assert!(msg.contains("cache.max_bytes"), "{msg}");
        let msg = problems(&format!(
            "[limits]\nmax_header_bytes = \"1 KiB\"\n{MINIMAL}"
        ));
        assert!(
            msg.contains("limits.max_header_bytes") && msg.contains("at least 8192"),
            "{msg}"
        );
        let msg = problems(&format!("{ga}max_body = \"1 GiB\"\n"));
        assert!(msg.contains("route \"cdn\".max_body"), "{msg}");
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
    fn eu_on_a_well_known_non_eu_host_needs_its_reason() {
        // Issue 31, item 1: accepted before, and the visitor's User-Agent went to Google.
        for (upstream, host) in [
            ("https://fonts.googleapis.com/", "fonts.googleapis.com"),
            (
                "https://www.google-analytics.com/",
                "www.google-analytics.com",
            ),
            (
                "https://cdnjs.cloudflare.com/ajax/libs/",
                "cdnjs.cloudflare.com",
            ),
        ] {
            let text = format!(
                "{}jurisdiction = \"eu\"\n",
                MINIMAL.replace("https://cdn.example/npm/", upstream)
            );
            let msg = problems(&text);
            assert!(
                msg.contains("route \"cdn\".jurisdiction")
                    && msg.contains(host)
                    && msg.contains("(United States)")
                    && msg.contains("eu_reason"),
                "{upstream}: {msg}"
            );
            // Stated, it is accepted, and the reason kept for check and the page.
            let c = parse(&format!(
                "{text}eu_reason = \"EU-only endpoint under our DPA of 2026-01\"\n"
            ))
            .unwrap();
            assert_eq!(
                c.routes[0].eu_reason.as_deref(),
                Some("EU-only endpoint under our DPA of 2026-01")
            );
        }
        // A fonts route's files host counts too.
        let msg = problems(&format!(
            "{}jurisdiction = \"eu\"\n",
            FONTS.replace("https://fonts.googleapis.com/", "https://fonts.bunny.net/")
        ));
        assert!(msg.contains("files_upstream fonts.gstatic.com"), "{msg}");
        // Hosts the table does not list, and non-EU routes, are left alone.
        assert!(parse(&format!("{MINIMAL}jurisdiction = \"eu\"\n")).is_ok());
        assert!(parse(
            &MINIMAL.replace("https://cdn.example/npm/", "https://fonts.googleapis.com/")
        )
        .is_ok());
        // eu_reason only with eu, and never empty.
        let msg = problems(&format!("{MINIMAL}eu_reason = \"x\"\n"));
        assert!(msg.contains("route \"cdn\".eu_reason"), "{msg}");
        let msg = problems(&format!(
            "{MINIMAL}jurisdiction = \"eu\"\neu_reason = \" \"\n"
        ));
        assert!(
            msg.contains("route \"cdn\".eu_reason") && msg.contains("empty"),
            "{msg}"
        );
    }

    #[test]
    fn an_admin_listener_off_loopback_needs_a_token() {
        // Issue 31, item 2: anyone on the network could purge and reload.
        for listen in ["0.0.0.0:9180", "[::]:9180", "192.0.2.7:9180"] {
            let text = format!("[admin]\nlisten = \"{listen}\"\n{MINIMAL}");
            let msg = problems(&text);
            assert!(
                msg.contains("line 2: admin.listen") && msg.contains("token_file"),
                "{listen}: {msg}"
            );
        }
        for listen in ["127.0.0.1:9180", "[::1]:9180", "127.0.0.2:9180"] {
            assert!(parse(&format!("[admin]\nlisten = \"{listen}\"\n{MINIMAL}")).is_ok());
        }
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "0123456789abcdef0123").unwrap();
        let c = parse(&format!(
            "[admin]\nlisten = \"0.0.0.0:9180\"\ntoken_file = {:?}\n{MINIMAL}",
            token.display().to_string()
        ))
        .unwrap();
        assert!(c.admin.unwrap().token.is_some());
    }

    #[test]
    fn the_shipped_placeholders_are_flagged_but_run() {
        // Issue 31, item 3: the shipped config's site.example went to OpenStreetMap unflagged.
        let c = parse(OSM).unwrap();
        let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["route \"osm\".user_agent", "route \"osm\".referer"],
            "{:?}",
            c.warnings
        );
        for w in &c.warnings {
            assert!(
                w.message.contains("site.example")
                    && w.message.contains("placeholder")
                    && w.message
                        .contains("OpenStreetMap's tile usage policy forbids"),
                "{w:?}"
            );
        }
        let real = OSM.replace("site.example", "shop.fr");
        assert!(parse(&real).unwrap().warnings.is_empty());
        // Another route's own Referer is told of a site that is not the operator's.
        let c = parse(&format!(
            "{MINIMAL}referer = \"https://www.example.com/\"\n"
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].message.contains("not yours"),
            "{:?}",
            c.warnings
        );
        // The global User-Agent reaches every non-EU upstream, but only an OSM route's policy
        // forbids the placeholder: other routes are not warned about it once each.
        let c = parse(&format!(
            "[upstream]\nuser_agent = \"t (+https://site.example/)\"\n{MINIMAL}"
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // The shipped config itself loads, with those warnings.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tamis.toml");
        let c = Config::load(&shipped).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.key == "route \"osm\".referer"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn a_ga4_allow_list_name_ga4_never_sends_is_warned_about() {
        // Issue 31, item 4: `page_type` (no `ep.`) kept nothing, silently.
        let ga = MINIMAL.replace("kind = \"static\"", "kind = \"ga4\"");
        let c = parse(&format!(
            "{ga}allow_event_params = [\"ep.plan\", \"page_type\"]\nallow_url_params = [\"utm_source=\"]\n"
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "route \"cdn\".allow_event_params");
        assert!(c.warnings[0]
            .message
            .contains("did you mean \"ep.page_type\"?"));
        assert!(c.warnings[0].at.ends_with("line 10"), "{:?}", c.warnings[0]);
        assert_eq!(c.warnings[1].key, "route \"cdn\".allow_url_params");
        assert!(c.warnings[1]
            .message
            .contains("did you mean \"utm_source\"?"));
        let c = parse(&format!(
            "{ga}allow_event_params = [\"ep.plan\", \"epn.value\"]\n"
        ))
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Plausible's props are named freely.
        let p = MINIMAL.replace("kind = \"static\"", "kind = \"plausible\"");
        assert!(parse(&format!("{p}allow_event_params = [\"author\"]\n"))
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn a_referer_is_an_origin_max_zoom_fits_the_grid_and_own_pages_stay_tamis() {
        // Issue 31, item 5. A page as Referer was sent as written.
        let msg = problems(&OSM.replace(
            "\"https://site.example/\"",
            "\"https://shop.fr/maps/?id=3\"",
        ));
        assert!(
            msg.contains("route \"osm\".referer")
                && msg.contains("did you mean \"https://shop.fr/\"?"),
            "{msg}"
        );
        let c = parse(&OSM.replace("\"https://site.example/\"", "\"https://shop.fr\"")).unwrap();
        assert_eq!(c.routes[0].referer.as_ref().unwrap(), "https://shop.fr/");
        // OpenStreetMap's standard layer stops at 19; other grids keep the general bound.
        let msg = problems(&format!("{OSM}max_zoom = 20\n"));
        assert!(
            msg.contains("route \"osm\".max_zoom") && msg.contains("stop at zoom 19"),
            "{msg}"
        );
        assert!(parse(&format!("{OSM}max_zoom = 18\n")).is_ok());
        let other = OSM.replace("tile.openstreetmap.org", "tiles.example");
        assert!(parse(&format!("{other}max_zoom = 22\n")).is_ok());
        // A prefix covering the transparency page (or its probe) would never get it.
        for (prefix, extra) in [
            ("/.well-known/", ""),
            ("/.well-known/tamis/", ""),
            ("/pub/", "[transparency]\npath = \"/pub/tamis\"\n"),
            ("/t/", "[transparency]\npath = \"/t\"\nprobe = true\n"),
        ] {
            let text = format!(
                "{extra}{}",
                MINIMAL.replace("\"/cdn/\"", &format!("{prefix:?}"))
            );
            let msg = problems(&text);
            assert!(
                msg.contains("route \"cdn\".prefix") && msg.contains("answers itself"),
                "{prefix}: {msg}"
            );
        }
        let fonts = FONTS.replace("\"/fonts/files/\"", "\"/.well-known/\"");
        let msg = problems(&fonts);
        assert!(msg.contains("route \"google-fonts\".files_prefix"), "{msg}");
        // The catch-all, a page turned off, or a probe left off, shadow nothing.
        assert!(parse(&MINIMAL.replace("\"/cdn/\"", "\"/\"")).is_ok());
        let off = format!(
            "[transparency]\nenabled = false\n{}",
            MINIMAL.replace("\"/cdn/\"", "\"/.well-known/\"")
        );
        assert!(parse(&off).is_ok());
        assert!(parse(&MINIMAL.replace("\"/cdn/\"", "\"/.well-known/tamis/probe/\"")).is_ok());
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

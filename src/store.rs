//! The shared key store: a Valkey/Redis server, run without persistence, through which replicas
//! agree on each period's pseudonym key (set-if-absent, expiring at the period's end) and count
//! the k-anonymity gate's distinct visitors (sets of keyed hashes, expiring with the period).
//!
//! Every call is bounded by `cluster.store_timeout`; a failed or late call marks the store
//! down (logged once per change of state, counted, shown in `/status`) and callers go on
//! without it: a local key, the local gate. Requests never connect: only the key keeper does,
//! so a store that is down costs a request nothing. This module knows nothing of pseudonyms or
//! places: names and bytes in, bytes and counts out.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use crate::secret::Secret;

/// What to do when the store says it writes its data to disk (`store_persistence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistencePolicy {
    /// Refuse to start (and `tamis check` fails): a key on disk outlives its period.
    #[default]
    Refuse,
    /// Start, and say so in the log and in `tamis check` (e.g. a managed offering that
    /// snapshots regardless, accepted knowingly).
    Warn,
}

/// The key store: where it is and how to reach it.
#[derive(Clone)]
pub struct StoreConfig {
    /// `redis://[user@]host:port[/db]` or `rediss://…` (TLS); never holds a password, so it
    /// may be shown.
    pub url: String,
    /// The password (`store_password_file`).
    pub password: Option<Secret>,
    /// A PEM CA bundle to trust instead of the public roots (`store_ca_file`).
    pub ca: Option<Vec<u8>>,
    /// The longest any request or key fetch waits for the store before going on without it.
    pub timeout: Duration,
    /// What a persisting store makes tamis do.
    pub persistence: PersistencePolicy,
    /// Every key tamis writes starts with this (an ACL `~tamis:*` limits tamis's user to them).
    pub prefix: String,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("password", &self.password)
            .field("ca", &self.ca.is_some())
            .field("timeout", &self.timeout)
            .field("persistence", &self.persistence)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Why the store could not be used (the message never holds its password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cluster.store {url}: {why}")]
    Config { url: String, why: String },
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store is down (the key keeper reconnects)")]
    Down,
    #[error("the store answered: {0}")]
    Answer(String),
    #[error("the store holds a malformed key under {0}")]
    Malformed(String),
}

/// What the store says of its own persistence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing goes to disk; the text says how tamis knows.
    Off(String),
    /// Keys reach a disk; the text says how.
    On(String),
    /// The store would not say (a managed offering refusing `CONFIG`); the text says why.
    Unknown(String),
}

/// The store's metrics, registered in tamis's registry when a store is configured.
pub struct StoreMetrics {
    /// `tamis_store_up`: 1 while the last call answered in time.
    pub up: IntGauge,
    /// `tamis_store_fallbacks_total{what}`: a period begun on a local key (`key`), a location
    /// counted by this replica alone (`gate`).
    pub fallbacks: IntCounterVec,
    /// `tamis_store_errors_total`: calls that failed or came too late.
    pub errors: IntCounter,
}

impl StoreMetrics {
    fn new() -> Result<StoreMetrics, prometheus::Error> {
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "tamis_store_fallbacks_total",
                "Times a replica went on without the shared key store, by what: key (a period begun on a local pseudonym key), gate (a location counted by this replica alone)",
            ),
            &["what"],
        )?;
        for what in ["key", "gate"] {
            fallbacks.with_label_values(&[what]);
        }
        Ok(StoreMetrics {
            up: IntGauge::new(
                "tamis_store_up",
                "1 while the shared key store answers within cluster.store_timeout, else 0",
            )?,
            fallbacks,
            errors: IntCounter::new(
                "tamis_store_errors_total",
                "Calls to the shared key store that failed or did not answer in time",
            )?,
        })
    }

    /// The collectors, to register.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.up.clone()),
            Box::new(self.fallbacks.clone()),
            Box::new(self.errors.clone()),
        ]
    }
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// A connection to the key store, shared by every route and kept across reloads.
pub struct Store {
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    prefix: String,
    url: String,
    /// Kept only to take it out of any message the client library might echo.
    password: Option<Secret>,
    persistence: PersistencePolicy,
    state: AtomicU8,
    /// The store's metrics.
    pub metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// A store for `config`; nothing is connected yet (see [`connect`](Self::connect)).
    pub fn new(config: &StoreConfig) -> Result<Store, StoreError> {
        let fail = |why: String| StoreError::Config {
            url: config.url.clone(),
            why,
        };
        let info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| fail(e.to_string()))?;
        let info = match &config.password {
            Some(p) => {
                let text = std::str::from_utf8(p.expose())
                    .map_err(|_| fail("the password is not UTF-8".into()))?;
                let settings = info.redis_settings().clone().set_password(text);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let client = match &config.ca {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| fail(e.to_string()))?;
        let metrics = StoreMetrics::new().map_err(|e| fail(e.to_string()))?;
        Ok(Store {
            client,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            timeout: config.timeout,
            prefix: config.prefix.clone(),
            url: config.url.clone(),
            password: config.password.clone(),
            persistence: config.persistence,
            state: AtomicU8::new(UNKNOWN),
            metrics,
        })
    }

    /// The store's URL (never with a password).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The longest any call waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What a persisting store makes tamis do.
    pub fn persistence_policy(&self) -> PersistencePolicy {
        self.persistence
    }

    /// Whether the last call answered in time (`None` before any).
    pub fn is_up(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            UP => Some(true),
            DOWN => Some(false),
            _ => None,
        }
    }

    /// Records the outcome of a call; the log and the gauge change only when the state does.
    fn mark(&self, up: bool) {
        let new = if up { UP } else { DOWN };
        let old = self.state.swap(new, Ordering::Relaxed);
        if !up {
            self.metrics.errors.inc();
        }
        if old == new {
            return;
        }
        self.metrics.up.set(i64::from(up));
        if up {
            tracing::info!(store = %self.url, "key store reachable: replicas share pseudonym keys and location counts");
        } else {
            tracing::warn!(store = %self.url, "key store unreachable: this replica goes on with local pseudonym keys and location counts until it answers again");
        }
    }

    /// Counts one fallback (`key` or `gate`).
    pub fn fell_back(&self, what: &str) {
        self.metrics.fallbacks.with_label_values(&[what]).inc();
    }

    /// A message from the client library, without the password should it ever appear.
    fn redact(&self, e: &redis::RedisError) -> String {
        let mut text = e.to_string();
        if let Some(p) = &self.password {
            if let Ok(p) = std::str::from_utf8(p.expose()) {
                if !p.is_empty() {
                    text = text.replace(p, "<store password>");
                }
            }
        }
        text
    }

    /// Connects if not connected (the key keeper calls this; requests never do).
    pub async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        // The connection's own timeouts bound each step; this bounds the handshake as a whole.
        let made = tokio::time::timeout(
            self.timeout * 4,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                self.conn.store(Some(std::sync::Arc::new(c.clone())));
                Ok(c)
            }
            Ok(Err(e)) => {
                self.mark(false);
                Err(StoreError::Answer(self.redact(&e)))
            }
            Err(_) => {
                self.mark(false);
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    /// Runs one pipeline within the timeout, marking the store up or down.
    async fn run<T: redis::FromRedisValue>(
        &self,
        mut conn: ConnectionManager,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.mark(true);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark(false);
                Err(StoreError::Answer(self.redact(&e)))
            }
            Err(_) => {
                self.mark(false);
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    /// Connects if needed and asks `PING`: whether the store answers in time (the key keeper,
    /// while the store is down or not yet asked).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.connect().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        let (_,): (String,) = self.run(conn, &pipe).await?;
        Ok(())
    }

    /// Proposes `proposal` as the value of `name` unless one is there already (set-if-absent,
    /// expiring after `ttl`), and returns the value there: the first proposal wins, every
    /// replica reads the same. For the key keeper.
    pub async fn propose(
        &self,
        name: &str,
        proposal: &[u8; 32],
        ttl: Duration,
    ) -> Result<[u8; 32], StoreError> {
        let conn = self.connect().await?;
        let key = format!("{}{name}", self.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(&proposal[..])
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .ignore();
        pipe.cmd("GET").arg(&key);
        let (value,): (Option<Vec<u8>>,) = self.run(conn, &pipe).await?;
        value
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or(StoreError::Malformed(key))
    }

    /// Adds `member` to each of the sets `names` (each expiring after `ttl`) and returns how
    /// many members each now has. On a request's path: a store known to be down, or never
    /// connected, is not asked at all.
    pub async fn count(
        &self,
        names: &[String],
        member: i64,
        ttl: Duration,
    ) -> Result<Vec<u64>, StoreError> {
        if self.is_up() == Some(false) {
            return Err(StoreError::Down);
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::Down);
        };
        let mut pipe = redis::pipe();
        for name in names {
            let key = format!("{}{name}", self.prefix);
            pipe.cmd("SADD").arg(&key).arg(member).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(millis(ttl)).ignore();
            pipe.cmd("SCARD").arg(&key);
        }
        self.run((*conn).clone(), &pipe).await
    }

    /// Asks the store whether it writes to disk: `CONFIG GET save` and `appendonly` where the
    /// user may ask, else what `INFO persistence` tells.
    pub async fn persistence(&self) -> Result<Persistence, StoreError> {
        let conn = self.connect().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG").arg("GET").arg("save");
        pipe.cmd("CONFIG").arg("GET").arg("appendonly");
        let asked: Result<(Vec<String>, Vec<String>), _> = self.run(conn.clone(), &pipe).await;
        if let Ok((save, aof)) = asked {
            let save = save.get(1).cloned().unwrap_or_default();
            let aof = aof.get(1).cloned().unwrap_or_default();
            return Ok(if aof == "yes" {
                Persistence::On(
                    "appendonly yes: every write, keys included, goes to an append-only file"
                        .into(),
                )
            } else if !save.trim().is_empty() {
                Persistence::On(format!(
                    "save {save:?}: snapshots, keys included, go to disk"
                ))
            } else {
                Persistence::Off("save \"\" and appendonly no (CONFIG GET)".into())
            });
        }
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("persistence");
        let (info,): (String,) = self.run(conn, &pipe).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .map(str::to_owned)
        };
        if field("aof_enabled").as_deref() == Some("1") {
            return Ok(Persistence::On(
                "INFO persistence says aof_enabled:1: every write goes to an append-only file"
                    .into(),
            ));
        }
        if let Some(n) = field("rdb_saves").filter(|n| n != "0") {
            return Ok(Persistence::On(format!(
                "INFO persistence says it wrote {n} snapshots since it started"
            )));
        }
        Ok(Persistence::Unknown(
            "the store's user may not run CONFIG GET (managed offerings often refuse it): no append-only file and no snapshot yet, but whether snapshots are scheduled cannot be told".into(),
        ))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What start-up and `tamis check` conclude from [`Store::persistence`]: `Ok` with a line to
/// print or log (a warning when `warn` is set), `Err` with why tamis refuses.
pub fn judge(
    url: &str,
    policy: PersistencePolicy,
    found: &Result<Persistence, StoreError>,
) -> Result<(String, bool), String> {
    match found {
        Ok(Persistence::Off(how)) => Ok((format!("store {url}: persistence off ({how})"), false)),
        Ok(Persistence::On(how)) => {
            let why = format!(
                "store {url} persists: {how}; a pseudonym key on disk outlives its period. Turn persistence off (save \"\", appendonly no: see deploy/valkey/), or set cluster.store_persistence = \"warn\" to accept it knowingly"
            );
            match policy {
                PersistencePolicy::Refuse => Err(why),
                PersistencePolicy::Warn => Ok((why, true)),
            }
        }
        Ok(Persistence::Unknown(why)) => Ok((
            format!("store {url}: cannot tell whether it persists: {why}"),
            true,
        )),
        Err(e) => Ok((
            format!(
                "store {url}: not reachable ({e}); replicas fall back on local keys until it is"
            ),
            true,
        )),
    }
}

/// `tamis check`'s question to the key store the config names: the line to print
/// (`warning: …` when it is a warning), or why the store is refused.
pub fn check(cfg: &StoreConfig) -> Result<String, String> {
    let store = Store::new(cfg).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let found = runtime.block_on(store.persistence());
    let (line, warning) = judge(store.url(), cfg.persistence, &found)?;
    Ok(if warning {
        format!("warning: {line}")
    } else {
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisting_store_is_refused_unless_accepted() {
        let on = Ok(Persistence::On("appendonly yes".into()));
        let refused = judge("redis://v:1", PersistencePolicy::Refuse, &on).unwrap_err();
        assert!(
            refused.contains("appendonly yes") && refused.contains("warn"),
            "{refused}"
        );
        let (line, warn) = judge("redis://v:1", PersistencePolicy::Warn, &on).unwrap();
        assert!(warn && line.contains("persists"), "{line}");
        let off = Ok(Persistence::Off("save \"\"".into()));
        assert!(
            !judge("redis://v:1", PersistencePolicy::Refuse, &off)
                .unwrap()
                .1
        );
        let down = Err(StoreError::Timeout(Duration::from_millis(5)));
        assert!(
            judge("redis://v:1", PersistencePolicy::Refuse, &down)
                .unwrap()
                .1
        );
    }
}

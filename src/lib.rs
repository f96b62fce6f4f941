//! tamis: a privacy reverse proxy that serves third-party fonts, tiles, scripts and analytics
//! from the site's own domain, and sifts personal data out of every request it forwards.
//!
//! The map: every module, in the order a request meets it. Imports point down this list
//! (a module uses those below it, never one above).
//!
//! | module | concern |
//! | --- | --- |
//! | `server` | the front door: bind every listener first, accept, HTTP/1.1 + HTTP/2, TLS, public vs admin, drain |
//! | `admin` | the operator's listener: `/metrics`, `/healthz`, `/status`, `/reload`, `/cache/purge` |
//! | `reload` | live reload: validate, swap atomically, keep what unchanged routes own |
//! | `proxy` | one visitor request, phase by phase (its module doc is the phase table), and the access line |
//! | `state` | the running state built from a checked config (routes, cache, client, metrics, own pages) |
//! | `transparency` | what tamis says of itself: the per-route disclosure, `tamis check`, the public page, the dry-run probe |
//! | `egress` | what leaves, decided without I/O: request_filter, route_filter, the upstream request, dry_run |
//! | `refusal` | tamis's own answers, one table of statuses and messages |
//! | `audit` | `tamis audit`: the third-party resources a page loads and the route that covers each |
//! | `body` | response bodies (in memory, streamed with an idle timeout), tamis's short text answers |
//! | `routes` | the routing table: longest prefix, each route's policy, path confinement, stylesheet rewriting, rate limits |
//! | `upstream` | tamis's own client: connection pool, DNS/TCP/TLS, per-route circuit breaker |
//! | `metrics` | the Prometheus registry and per-route counters |
//! | `config` | config file → raw TOML → checked `Config` (every problem with its line), TLS material |
//! | `mirrors` | fonts (the CSS API, font types) and tiles (z/x/y, templates) |
//! | `analytics` | GA4, Matomo, Plausible, Umami: scrubbers, pseudonyms, what the upstream learns, what the browser gets back, location with k-anonymity |
//! | `store` | the shared key store (Valkey/Redis without persistence): each period's pseudonym key and the location counts, agreed between replicas |
//! | `cache` | the RFC 9111 store: keys, entries, storability, coalescing, freshness, conditionals |
//! | `conn` | one connection's life: worker threads, idleness, graceful close |
//! | `policy` | the privacy rules as tables and pure functions: request and response headers, the client's address, what a URL makes the browser reach |
//! | `secret` | operator secrets: a type whose Debug and Display redact |

/// The version, as `tamis --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binary was built from (see `build.rs`), or "unknown".
pub const REVISION: &str = env!("TAMIS_REVISION");

/// The operator's listener: metrics, health, status, reload, purge.
pub mod admin;
/// The analytics protocols.
pub mod analytics;
/// `tamis audit`: third-party resources in an HTML page.
pub mod audit;
/// Response bodies and tamis's short text answers.
pub mod body;
/// The shared cache (RFC 9111).
pub mod cache;
/// The configuration: TOML in, a checked `Config` out.
pub mod config;
/// One connection's life.
pub mod conn;
/// What leaves: the checks before anything is sent, and the upstream request.
pub mod egress;
/// The Prometheus registry and per-route counters.
pub mod metrics;
/// Fonts and tiles.
pub mod mirrors;
/// The privacy rules, as data.
pub mod policy;
/// One visitor request, phase by phase.
pub mod proxy;
/// tamis's own answers, in one table.
pub mod refusal;
/// Live reload: a new state from a new config, swapped atomically.
pub mod reload;
/// The routing table and each route's policy.
pub mod routes;
/// Operator secrets (admin token, salts, Matomo token_auth): a type whose Debug/Display redact.
pub mod secret;
/// The front door: listeners, TLS, HTTP/1.1 and HTTP/2, connection caps, drain.
pub mod server;
/// The running state built from a checked config.
pub mod state;
/// The shared key store: pseudonym keys and location counts agreed between replicas.
pub mod store;
/// The disclosure, `tamis check`, the public page and the dry-run probe.
pub mod transparency;
/// tamis's own upstream client.
pub mod upstream;

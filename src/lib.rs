//! tamis: a privacy reverse proxy that serves third-party fonts, tiles, scripts and analytics
//! from the site's own domain, and sifts personal data out of every request it forwards.

/// The version, as `tamis --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binary was built from (see `build.rs`), or "unknown".
pub const REVISION: &str = env!("TAMIS_REVISION");

pub mod admin;
pub mod audit;
pub mod body;
pub mod cache;
pub mod client_addr;
pub mod config;
pub mod conn;
pub mod egress;
pub mod geo;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod ratelimit;
pub mod reach;
pub mod refusal;
pub mod reload;
pub mod report;
pub mod routes;
/// Operator secrets (admin token, salts, Matomo token_auth): a type whose Debug/Display redact.
pub mod secret;
pub mod server;
pub mod state;
pub mod tls;
pub mod transparency;
pub mod upstream;

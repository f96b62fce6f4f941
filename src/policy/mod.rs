//! The privacy policy, as data: which request headers may leave tamis for an upstream, and
//! which response headers may reach the visitor. Every header rule lives here, in tables read
//! by pure functions; `tamis check` prints the same tables.
//!
//! `request` says what leaves, `response` what comes back, `address` how a visitor's address
//! is cut down; `link` and `csp` filter two response headers' values; `jurisdiction` lists
//! well-known hosts run from outside the EU. The public names of the
//! first three are re-exported here: `policy::X` is the one path to each.

use serde::Deserialize;

mod address;
pub mod client_addr;
pub mod csp;
pub mod jurisdiction;
pub mod link;
pub mod reach;
mod request;
mod response;

pub use address::truncate_ip;
pub use request::{
    check_forwardable, generalise_user_agent, removal_reason, AcceptEncoding, Allowed, Removed,
    RequestPolicy, UserAgent, REQUEST_ALLOWLIST, REQUEST_REMOVED, REQUEST_REMOVED_PREFIXES,
};
pub use response::{
    is_relative_reference, refresh, scrub_response, withheld, withheld_names, Kinds, ResponseKind,
    Stripped, REFRESHED_BY_NOT_MODIFIED, RESPONSE_ALLOWLIST, RESPONSE_STRIPPED,
    RESPONSE_STRIPPED_PREFIXES,
};

/// Where an upstream's operator is, legally. Outside the EU unless the config says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
pub enum Jurisdiction {
    /// Under EU law, in the EU.
    #[serde(rename = "eu")]
    Eu,
    /// Anywhere else (the default).
    #[default]
    #[serde(rename = "non-eu")]
    NonEu,
}

impl Jurisdiction {
    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Jurisdiction::Eu => "eu",
            Jurisdiction::NonEu => "non-eu",
        }
    }
}

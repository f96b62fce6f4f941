//! Analytics endpoints scrubbed to the CNIL proxy standard (2022): no visitor IP, the user
//! identifier replaced by a keyed pseudonym, external referrers and URL parameters removed,
//! fingerprinting data generalised, no durable identifier, everything else dropped.
//!
//! Each protocol module holds its parameter table (what is kept, pseudonymised, generalised or
//! dropped) and pure functions over it; this module holds the types they share, and its private
//! submodules the rules, re-exported here: `query` (query strings), `url` (page URLs, referrers,
//! languages), `json` (JSON bodies) and `pseudonym` (keyed, rotating pseudonyms).

pub mod answer;
pub mod ga4;
pub mod geo;
pub mod matomo;
pub mod plausible;
pub mod shared;
pub mod umami;
pub mod visitor;

mod json;
mod pseudonym;
mod query;
mod url;

use crate::secret::Secret;

pub use crate::policy::generalise_user_agent;
pub use json::{
    field, json_kept, json_page_url, json_referrer, object_json, raw_object, raw_str, raw_string,
    read_object, respelt, scalar, write_object, Field, Json, Key, Raw, RawObject,
};
pub use pseudonym::{KeySource, Pseudonymizer};
pub use query::{parse_query, push_pair, push_raw, raw_pairs, to_query, Pair};
pub use url::{
    host_of, parse_absolute, primary_language, same_site, same_site_referrer, scrub_page_url,
    without_path_params, AbsoluteUrl,
};
// ga4 reads a page path as the URL rule does.
use url::is_page_path;

/// The analytics protocols tamis speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Ga4,
    Matomo,
    Plausible,
    Umami,
}

impl Protocol {
    /// The tracking endpoints (path after the prefix) this protocol forwards; nothing else is.
    pub fn endpoints(self) -> &'static [&'static str] {
        match self {
            Protocol::Ga4 => &["g/collect"],
            Protocol::Matomo => &["matomo.php", "piwik.php"],
            Protocol::Plausible => &["api/event"],
            Protocol::Umami => &["api/send"],
        }
    }

    /// What links one visitor's requests within one rotation period, and across periods.
    pub fn linkage(self) -> &'static str {
        match self {
            Protocol::Ga4 => ga4::LINKAGE,
            Protocol::Matomo => matomo::LINKAGE,
            Protocol::Plausible => plausible::LINKAGE,
            Protocol::Umami => umami::LINKAGE,
        }
    }

    /// The methods the endpoints accept.
    pub fn allows(self, method: &http::Method) -> bool {
        match self {
            Protocol::Ga4 | Protocol::Matomo => {
                method == http::Method::GET || method == http::Method::POST
            }
            Protocol::Plausible | Protocol::Umami => method == http::Method::POST,
        }
    }
}

/// What a rule did with one parameter (the `result` label of `tamis_analytics_params_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Kept,
    Pseudonymised,
    Generalised,
    Dropped,
}

impl Outcome {
    /// Every outcome, for pre-registering label values.
    pub const ALL: [Outcome; 4] = [
        Outcome::Kept,
        Outcome::Pseudonymised,
        Outcome::Generalised,
        Outcome::Dropped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Kept => "kept",
            Outcome::Pseudonymised => "pseudonymised",
            Outcome::Generalised => "generalised",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Counts of what scrubbing did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally([u64; 4]);

impl Tally {
    /// Records one parameter's outcome.
    pub fn add(&mut self, o: Outcome) {
        self.0[o as usize] += 1;
    }

    /// How many parameters had this outcome.
    pub fn get(&self, o: Outcome) -> u64 {
        self.0[o as usize]
    }
}

/// A request that cannot be scrubbed: answered 4xx, nothing forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScrubError {
    #[error("invalid percent-encoding")]
    Encoding,
    #[error("too many parameters")]
    TooManyParameters,
    #[error("malformed body: {0}")]
    Body(String),
    #[error("not a tracking endpoint")]
    Endpoint,
}

/// Most parameters one query string or body line may carry.
pub const MAX_PARAMS: usize = 512;

/// The operator's choices for one analytics route.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Custom fields kept as they are (GA4 ep./epn./up./upn. names, Matomo custom variable
    /// names and dimensionN, Plausible props, Umami data keys); all others dropped.
    pub allow_event_params: Vec<String>,
    /// URL query parameters kept in page URLs (e.g. utm_source); all others dropped.
    pub allow_url_params: Vec<String>,
}

/// An analytics route at run time: its settings, its pseudonym key, its limits.
pub struct Runtime {
    pub protocol: Protocol,
    pub settings: Settings,
    /// Shared with the runtime this one replaces when a reload leaves what the key protects
    /// unchanged (see `routes::build`).
    pub pseudonyms: std::sync::Arc<Pseudonymizer>,
    pub max_body: usize,
    /// What goes in place of the visitor's address (validated: only EU routes send one).
    pub address: visitor::ClientAddress,
    /// Hash bits a synthetic address keeps.
    pub bits: u8,
    /// How precise a location is released.
    pub location: crate::analytics::geo::Precision,
    /// The k-anonymity counts of this route's locations, this period.
    pub gate: std::sync::Arc<crate::analytics::geo::Gate>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Everything a scrubber needs besides the request.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub pseudonyms: &'a Pseudonymizer,
    /// Route name: part of every pseudonym, so routes never share one.
    pub route: &'a str,
    /// What this request may tell of its visitor (address, location): Matomo carries it in
    /// parameters.
    pub visitor: &'a visitor::Visitor,
    /// The operator's Matomo `token_auth` (from `token_file`), which Matomo requires before it
    /// accepts `cip`, `country` or `region`; in a probe, its placeholder.
    pub matomo_token: Option<&'a Secret>,
}

/// The names a table keeps as they are (`a, b` rows split), sorted for binary search.
pub fn kept_index(rules: &'static [(&'static str, Outcome, &'static str)]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = rules
        .iter()
        .filter(|(_, o, _)| *o == Outcome::Kept)
        .flat_map(|(names, _, _)| names.split(", "))
        .collect();
    v.sort_unstable();
    v
}

/// One line of `tamis check` for a parameter table: names by outcome.
pub fn describe(rules: &[(&str, Outcome, &str)]) -> Vec<(Outcome, Vec<String>)> {
    let mut out: Vec<(Outcome, Vec<String>)> = Vec::new();
    for (name, outcome, note) in rules {
        let item = if note.is_empty() {
            (*name).to_owned()
        } else {
            format!("{name} ({note})")
        };
        match out.iter_mut().find(|(o, _)| o == outcome) {
            Some((_, v)) => v.push(item),
            None => out.push((*outcome, vec![item])),
        }
    }
    out
}

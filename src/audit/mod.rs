//! `tamis audit`: which third-party resources an HTML page loads, and whether a route covers
//! each (with the first-party URL to use instead) or not (with a suggested route).
//!
//! The pipeline is pure except for reading the page: [`scan`] lists every absolute URL the page
//! makes the browser contact, [`classify`] keeps the third-party ones and matches them against
//! the routes, [`suggest`] writes `[[route]]` blocks for the rest and [`render`] prints it all.

//!
//! One file per step, each importing only the ones before it: `url.rs` (URLs as a browser
//! reads them), `fetch.rs`, `scan.rs`, `classify.rs`, `suggest.rs`, `render.rs`; this file
//! holds the types they share and runs them in order.

use crate::config::Config;
use crate::routes::Router;

mod classify;
mod fetch;
mod render;
mod scan;
mod suggest;
mod url;

pub use classify::classify;
pub use fetch::MAX_PAGE_BYTES;
use fetch::{fetch, is_url, parse_site};
pub use render::render;
pub use scan::{canonical_site, scan};
pub use suggest::suggest;
pub use url::absolute;

/// Why an audit could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The page file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The page URL or `--site` is not an http(s) URL.
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    /// The page could not be fetched (connection, status, redirect elsewhere, size, time).
    #[error("cannot fetch {url}: {why}")]
    Fetch { url: String, why: String },
    /// The HTML rewriter gave up on the page.
    #[error("cannot parse the page: {0}")]
    Html(String),
}

/// How the browser reaches a URL the page names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Load {
    /// A connection hint (`preconnect`, `dns-prefetch`): nothing is fetched, but the browser
    /// still connects to the host, so it must go.
    Hint,
    /// Not in the markup: a tracker script sends its hits there.
    Implied,
    /// Fetched by the browser (or by a script the page runs).
    Resource,
}

/// One absolute URL found in the page, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Canonical form: lowercase scheme and host, `\` read as `/`, no fragment; `//host/…` when
    /// written scheme-relative.
    pub url: String,
    /// Where it was found, e.g. `<script src>` or `inline <style> @import`.
    pub place: String,
    /// Fetched, implied or only connected to.
    pub load: Load,
}

/// Whether, and how, a third-party URL is served first-party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// A route serves it at `first_party`.
    Covered {
        /// The route's name.
        route: String,
        /// The path to use instead, on the site's own origin.
        first_party: String,
        /// What else to change for it to work (e.g. gtag's `server_container_url`).
        note: Option<String>,
    },
    /// A connection hint: remove it; `serving` names a route that mirrors its host, if any.
    Hint { serving: Option<String> },
    /// A video player (`YouTube`, `Vimeo`): no route can cover it, even one mirroring its host,
    /// as the player then loads its scripts, thumbnails and the video from the provider; the
    /// page needs a click-to-load facade.
    Facade { player: &'static str },
    /// No route serves it.
    NotCovered,
}

/// A deduplicated third-party URL with its coverage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The canonical URL (see [`Found::url`]).
    pub url: String,
    /// Every place it was found, in page order, without repeats.
    pub places: Vec<String>,
    /// The strongest of its loads (a URL both preloaded and hinted is a resource).
    pub load: Load,
    /// Whether a route serves it.
    pub coverage: Coverage,
}

impl Finding {
    /// Whether a route serves it.
    pub fn covered(&self) -> bool {
        matches!(self.coverage, Coverage::Covered { .. })
    }
}

/// A `[[route]]` block to add for URLs no route covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// The route name, unused in the config.
    pub name: String,
    /// The block, with comments, ready to append to the config.
    pub toml: String,
    /// (third-party URL, first-party URL once the route is added).
    pub serves: Vec<(String, String)>,
}

/// Runs the audit of `page` (a file, or a URL on the site) and prints the report; returns the
/// process exit code: 0 when everything is covered, 1 when something is not, 2 on error.
pub fn command(config: &Config, page: &str, site: Option<&str>) -> u8 {
    match audit(config, page, site) {
        Ok((report, uncovered)) => {
            print!("{report}");
            if uncovered == 0 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// The whole audit: reads or fetches the page, and returns the report and how many URLs no
/// route covers.
pub fn audit(
    config: &Config,
    page: &str,
    site: Option<&str>,
) -> Result<(String, usize), AuditError> {
    let mut site = site.map(parse_site).transpose()?;
    let html = if is_url(page) {
        let (body, final_url) = fetch(config, page)?;
        if site.is_none() {
            site = Some(parse_site(&final_url)?);
        }
        body
    } else if page.contains("://") {
        return Err(AuditError::InvalidUrl {
            url: page.to_owned(),
            why: "only http:// and https:// pages can be fetched".into(),
        });
    } else {
        std::fs::read(page).map_err(|source| AuditError::Read {
            path: page.to_owned(),
            source,
        })?
    };
    let mut label = site.as_ref().map(|s| s.host.clone());
    if site.is_none() {
        // A saved page usually names its own address; without it every absolute URL, the
        // site's own included, would count as third-party.
        site = canonical_site(&html).and_then(|u| parse_site(&u).ok());
        label = site.as_ref().map(|s| {
            format!(
                "{}, from the page's canonical URL; --site to change",
                s.host
            )
        });
    }
    let found = scan(&html)?;
    let router = Router::new(config);
    let site_host = site.as_ref().map(|s| s.host.as_str());
    let findings = classify(&found, site_host, &router);
    let origin = site.as_ref().map(|s| s.origin.as_str());
    let suggestions = suggest(&findings, config, origin);
    let uncovered = findings.iter().filter(|f| !f.covered()).count();
    Ok((
        render(page, label.as_deref(), &findings, &suggestions),
        uncovered,
    ))
}

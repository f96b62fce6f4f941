//! Routes: which configured upstream serves a visitor's path, how its URL is built, and what
//! each kind adds to the common flow (font CSS rewriting, tile parsing, fixed headers).
//! The table itself is built from a checked config, and kept across reloads, in `build`.

pub mod confine;
pub mod css;
pub mod ratelimit;

use crate::analytics;
use crate::mirrors::{fonts, tiles};

mod build;
pub use build::KeyFate;

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use tokio::sync::Semaphore;

use crate::cache;
use crate::config::{Config, RouteConfig, UpstreamBase};
use crate::policy::{RequestPolicy, ResponseKind};

pub use confine::Confinement;

/// Why a visitor's path was refused (400, nothing sent upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(transparent)]
    Confinement(#[from] Confinement),
    #[error(transparent)]
    Tile(#[from] tiles::TileError),
}

/// What part of a configured route a prefix serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Mirrored as is.
    Static,
    /// A font CSS API: fixed browser User-Agent, CSS rewritten to first-party URLs.
    FontCss,
    /// The font files a fonts route's CSS names.
    FontFiles,
    /// Map tiles from a template.
    Tiles,
    /// An analytics tracking endpoint, scrubbed per protocol.
    Analytics(analytics::Protocol),
}

/// One prefix of a configured route, with its derived policy.
#[derive(Debug)]
pub struct Route {
    /// Position in the router (indexes the running state's per-route metrics).
    pub index: usize,
    /// Names what this route stores in the cache: a fingerprint of everything that shapes its
    /// upstream requests and stored answers, so a reload that leaves the route as it was keeps
    /// its entries, and one that changes it starts afresh.
    pub cache_id: u64,
    pub config: RouteConfig,
    pub role: Role,
    /// The prefix this part answers, and the upstream base it maps to.
    pub prefix: String,
    pub upstream: UpstreamBase,
    pub policy: RequestPolicy,
    /// Lifetime rules for what this route stores.
    pub rules: cache::Rules,
    /// Bounds concurrent upstream requests (shared by the parts of one route).
    pub permits: Option<Arc<Semaphore>>,
    /// Per-client request rate (shared by the parts of one route).
    pub rate: Option<Arc<crate::routes::ratelimit::RateLimiter>>,
    /// Stops asking a failing upstream for a while (shared by the parts of one route).
    pub breaker: Arc<crate::upstream::breaker::Breaker>,
    /// How third-party URLs in a stylesheet this route serves map to first-party ones: its own
    /// bases first, then every other mirror's.
    pub css_map: css::UrlMap,
    /// Analytics: settings, pseudonym key and limits.
    pub analytics: Option<Arc<analytics::Runtime>>,
    /// Analytics: each endpoint's upstream URL without a query, as
    /// [`upstream_uri`](Self::upstream_uri) builds it, built once: Plausible's and Umami's
    /// events never carry a query, so their URL is always one of these (a clone shares its
    /// bytes), and building it per event cost a check, a copy, a parse and their drops.
    pub endpoint_uris: Vec<(&'static str, Uri)>,
    /// The `Host` tamis sends this route's upstream over HTTP/1.1, built once (`None` for
    /// tiles, whose host comes from the template per tile).
    pub upstream_host: Option<HeaderValue>,
}

impl Route {
    /// Whether this route ever asks the cache (analytics and `cache = false` routes never do).
    pub fn uses_cache(&self) -> bool {
        self.config.cache.enabled && self.analytics.is_none()
    }

    /// Whether this part keeps its objects on the disk tier too: as `disk_cache` says, else
    /// tiles and a fonts route's files (answers the same for every visitor).
    pub fn uses_disk(&self) -> bool {
        let c = &self.config;
        self.uses_cache()
            && c.cache.disk.unwrap_or(
                matches!(self.role, Role::Tiles | Role::FontFiles)
                    && c.forward_headers.is_empty()
                    && !c.pass_through,
            )
    }

    /// The upstream URL for the visitor's path after the prefix; never leaves the route's base.
    pub fn upstream_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, PathError> {
        match self.role {
            // Analytics queries are scrubbed first, then passed here as the query.
            Role::Static | Role::FontCss | Role::Analytics(_) => {
                let query = if self.config.forward_query || matches!(self.role, Role::Analytics(_))
                {
                    query
                } else {
                    None
                };
                Ok(confine::upstream_uri(&self.upstream, rest, query)?)
            }
            // Font files and tiles are addressed by path alone.
            Role::FontFiles => Ok(confine::upstream_uri(&self.upstream, rest, None)?),
            Role::Tiles => {
                let Some(t) = &self.config.tiles else {
                    return Err(Confinement::InvalidUrl.into());
                };
                let tile = tiles::parse(rest, t.max_zoom)?;
                t.template.accepts(&tile)?;
                t.template.uri(&tile).ok_or(Confinement::InvalidUrl.into())
            }
        }
    }

    /// [`upstream_uri`](Self::upstream_uri) for the visitor's request `target`, whose path is
    /// this route's prefix then `rest`. A mirror mounted at its base's own path (prefix and
    /// base path alike) whose query goes on as sent (or that has none) asks upstream for the
    /// visitor's own path and query: the URL shares the target's parsed bytes instead of
    /// writing them out and parsing them again. Same checks, same URL.
    pub fn upstream_uri_at(&self, target: &Uri, rest: &str) -> Result<Uri, PathError> {
        let query = target.query();
        let query_as_sent = query.is_none()
            || (self.config.forward_query && matches!(self.role, Role::Static | Role::FontCss));
        let mounted = matches!(self.role, Role::Static | Role::FontCss | Role::FontFiles)
            && query_as_sent
            && self.prefix == self.upstream.path;
        match target.path_and_query() {
            Some(pq) if mounted && pq.path().strip_prefix(self.prefix.as_str()) == Some(rest) => {
                Ok(confine::upstream_uri_mounted(
                    &self.upstream,
                    rest,
                    query,
                    pq,
                )?)
            }
            _ => self.upstream_uri(rest, query),
        }
    }

    /// The upstream URL of an analytics endpoint (`rest`) with no query, built ahead
    /// ([`Route::endpoint_uris`]).
    pub fn endpoint_uri(&self, rest: &str) -> Option<&Uri> {
        self.endpoint_uris
            .iter()
            .find(|(e, _)| *e == rest)
            .map(|(_, uri)| uri)
    }

    /// The cache's primary key for the visitor's path after the prefix, in parts that borrow
    /// from the route and the request (see [`cache::KeyParts`]): exactly the key of the URL
    /// [`upstream_uri`](Self::upstream_uri) builds, without building it. Only for roles whose
    /// URL is the base followed by the path (`None` for tiles, built from a template, and for
    /// analytics, never cached). Confinement is not checked: what it would refuse was never
    /// stored, so its key finds nothing, and the request goes on to be refused.
    pub fn key_parts<'a>(
        &'a self,
        rest: &'a str,
        query: Option<&'a str>,
    ) -> Option<cache::KeyParts<'a>> {
        if !self.keyed_by_parts() {
            return None;
        }
        let query = match self.role {
            Role::Static | Role::FontCss if self.config.forward_query => query,
            _ => None,
        };
        let (mark, query) = match query {
            Some(q) => ("?", q),
            None => ("", ""),
        };
        Some(cache::KeyParts::primary(
            self.cache_id,
            self.upstream.scheme.as_str(),
            self.upstream.authority.as_str(),
            [&self.upstream.path, rest, mark, query],
        ))
    }

    /// Whether [`key_parts`](Self::key_parts) gives this route's cache keys.
    pub fn keyed_by_parts(&self) -> bool {
        matches!(self.role, Role::Static | Role::FontCss | Role::FontFiles)
    }

    /// The request headers sent upstream: the route's policy, plus what the role needs.
    pub fn scrub(&self, visitor: &HeaderMap) -> HeaderMap {
        self.for_role(self.policy.scrub(visitor))
    }

    /// As [`scrub`](Self::scrub), for a caller done with the visitor's headers (no copy on a
    /// pass-through route).
    pub fn scrub_owned(&self, visitor: HeaderMap) -> HeaderMap {
        self.for_role(self.policy.scrub_owned(visitor))
    }

    /// As [`scrub_owned`](Self::scrub_owned), with the upstream's own `host` in place of the
    /// visitor's on a pass-through route (see [`RequestPolicy::scrub_owned_to`]).
    pub fn scrub_owned_to(&self, visitor: HeaderMap, host: &HeaderValue) -> HeaderMap {
        self.for_role(self.policy.scrub_owned_to(visitor, host))
    }

    /// Adds what the route's role needs to scrubbed headers.
    fn for_role(&self, mut out: HeaderMap) -> HeaderMap {
        if self.role == Role::FontCss {
            // The CSS is rewritten, so it must arrive as plain text.
            out.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        out
    }

    /// Whether a stored response may vary on this request header.
    pub fn varyable(&self, name: &HeaderName) -> bool {
        // tamis's CSS request is the same for every visitor (fixed User-Agent, no other
        // visitor header), so a Vary on anything it does not send is a constant: safe.
        self.role == Role::FontCss || self.policy.forwards(name)
    }

    /// The response headers as the cache judges them. The font CSS API marks its answer
    /// `private` because it tailors it to the User-Agent; tamis's is fixed, so the answer is
    /// the same for every visitor and may be shared.
    pub fn cache_view<'h>(&self, headers: &'h HeaderMap) -> Cow<'h, HeaderMap> {
        if self.role != Role::FontCss || !headers.contains_key(header::CACHE_CONTROL) {
            return Cow::Borrowed(headers);
        }
        let mut h = headers.clone();
        let kept: Vec<String> = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|d| !d.eq_ignore_ascii_case("private") && !d.is_empty())
            .map(str::to_owned)
            .collect();
        h.remove(header::CACHE_CONTROL);
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            h.insert(header::CACHE_CONTROL, v);
        }
        Cow::Owned(h)
    }

    /// What the visitor may get from this route's answers (see [`crate::policy::RESPONSE_ALLOWLIST`]).
    pub fn response_kind(&self) -> ResponseKind {
        if self.config.pass_through {
            return ResponseKind::PassThrough;
        }
        match self.role {
            Role::Static => ResponseKind::Static,
            Role::FontCss => ResponseKind::FontCss,
            Role::FontFiles => ResponseKind::FontFiles,
            Role::Tiles => ResponseKind::Tiles,
            Role::Analytics(_) => ResponseKind::Analytics,
        }
    }

    /// What tamis adds to an answer once the policy has scrubbed it.
    /// `requested_path` gives the path requested upstream, asked only for a font's type.
    pub fn adjust_response<'p>(
        &self,
        headers: &mut HeaderMap,
        requested_path: impl FnOnce() -> &'p str,
    ) {
        if self.config.pass_through {
            return;
        }
        // No body is read as another type than it states. Without nosniff, Chromium applies a
        // body with no Content-Type as a stylesheet even in standards mode, and any
        // same-origin body in quirks mode: a stylesheet the rewriter never saw would load.
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if self.role == Role::FontFiles {
            // Fonts load cross-origin under CORS rules; they are public.
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
            let generic = headers.get(header::CONTENT_TYPE).is_none_or(|v| {
                let v = v.as_bytes();
                v.starts_with(b"application/octet-stream")
                    || v.starts_with(b"binary/")
                    || v.starts_with(b"text/plain")
            });
            if generic {
                if let Some(ct) = fonts::font_content_type(requested_path()) {
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                }
            }
        }
    }

    /// Whether this answer's body is a stylesheet to rewrite before anyone sees it: on a fonts
    /// route's CSS side, everything (the route's role decides, not the upstream's word); on
    /// any other route, whatever a browser may apply as a stylesheet (see
    /// [`css::may_be_stylesheet`]). A pass-through route is a plain reverse proxy: left as is.
    pub fn rewrites(&self, headers: &HeaderMap) -> bool {
        match self.role {
            Role::FontCss => true,
            _ => !self.config.pass_through && css::may_be_stylesheet(headers),
        }
    }

    /// Rewrites a body [`rewrites`](Self::rewrites) selected, and its headers to match (no
    /// content coding, a UTF-8 CSS type, its length); `None` when it cannot be rewritten (the
    /// caller answers 502, never the body as it came).
    pub fn rewrite(
        &self,
        status: http::StatusCode,
        headers: &mut HeaderMap,
        body: &[u8],
        max: u64,
    ) -> Option<bytes::Bytes> {
        match css::stylesheet(status, headers, body, &self.css_map, max) {
            Ok(out) => {
                headers.remove(header::CONTENT_ENCODING);
                headers.remove(header::TRANSFER_ENCODING);
                headers.insert(header::CONTENT_TYPE, css::CSS_CONTENT_TYPE);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                Some(out)
            }
            Err(why) => {
                tracing::warn!(route = %self.config.name, "upstream stylesheet refused: {why}");
                None
            }
        }
    }
}

/// Matches request paths to routes by longest prefix.
#[derive(Debug)]
pub struct Router {
    /// In config order (a fonts route contributes its CSS part, then its files part).
    routes: Vec<Arc<Route>>,
    /// Indexes into `routes`, longest prefix first.
    by_length: Vec<usize>,
    /// What this build did to each analytics route's pseudonym key (empty at start).
    pub key_fates: Vec<(String, build::KeyFate)>,
}

impl Router {
    /// Builds the routing table from a validated config.
    pub fn new(config: &Config) -> Router {
        Router::reloaded(config, None)
    }

    /// The route whose prefix is the longest one `path` starts with, and the rest of the path.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        self.by_length.iter().find_map(|&i| {
            let route = &self.routes[i];
            path.strip_prefix(route.prefix.as_str())
                .map(|rest| (route, rest))
        })
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(text: &str) -> Router {
        Router::new(&Config::parse(text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn an_endpoint_url_built_ahead_is_the_one_built_per_request() {
        let router = router(
            r#"
[server]
listen = "127.0.0.1:0"
[[route]]
name = "plausible"
kind = "plausible"
prefix = "/p/"
upstream = "https://plausible.example/base/"
[[route]]
name = "matomo"
kind = "matomo"
prefix = "/m/"
upstream = "https://matomo.example/"
[[route]]
name = "cdn"
kind = "static"
prefix = "/cdn/"
upstream = "https://b.example/npm/"
"#,
        );
        let mut seen = 0;
        for route in router.routes() {
            let Role::Analytics(protocol) = route.role else {
                assert!(route.endpoint_uris.is_empty());
                continue;
            };
            for endpoint in protocol.endpoints() {
                let built = route.upstream_uri(endpoint, None).unwrap();
                assert_eq!(route.endpoint_uri(endpoint), Some(&built));
                seen += 1;
            }
            assert_eq!(route.endpoint_uri("other"), None);
        }
        // Plausible's one endpoint and Matomo's two.
        assert_eq!(seen, 3);
        assert_eq!(
            router.routes()[0]
                .endpoint_uri("api/event")
                .map(Uri::to_string),
            Some("https://plausible.example/base/api/event".to_owned())
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let router = router(
            r#"
[server]
listen = "127.0.0.1:0"
[[route]]
name = "all"
kind = "static"
prefix = "/"
upstream = "https://a.example/"
[[route]]
name = "cdn"
kind = "static"
prefix = "/cdn/"
upstream = "https://b.example/npm/"
[[route]]
name = "cdnx"
kind = "static"
prefix = "/cdn/x/"
upstream = "https://c.example/"
"#,
        );
        let name = |p| {
            router
                .find(p)
                .map(|(r, rest)| (r.config.name.as_str(), rest))
        };
        assert_eq!(name("/cdn/x/y"), Some(("cdnx", "y")));
        assert_eq!(name("/cdn/y"), Some(("cdn", "y")));
        assert_eq!(name("/cdn"), Some(("all", "cdn")));
        assert_eq!(name("/other"), Some(("all", "other")));
    }

    #[test]
    fn a_fonts_route_has_a_css_part_and_a_files_part() {
        let router = router(
            r#"
[server]
listen = "127.0.0.1:0"
[[route]]
name = "google-fonts"
kind = "fonts"
prefix = "/fonts/"
upstream = "https://fonts.googleapis.com/"
files_prefix = "/fonts/files/"
files_upstream = "https://fonts.gstatic.com/"
"#,
        );
        let (css, rest) = router.find("/fonts/css2").unwrap();
        assert_eq!((css.role, rest), (Role::FontCss, "css2"));
        let uri = css
            .upstream_uri(rest, Some("family=Roboto:wght@400;700&display=swap"))
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://fonts.googleapis.com/css2?family=Roboto:wght@400;700&display=swap"
        );
        let scrubbed = css.scrub(&HeaderMap::new());
        assert_eq!(scrubbed["user-agent"], fonts::CSS_USER_AGENT);
        assert_eq!(scrubbed["accept-encoding"], "identity");
        let (files, rest) = router.find("/fonts/files/s/roboto/v47/x.woff2").unwrap();
        assert_eq!(files.role, Role::FontFiles);
        assert_eq!(
            files.upstream_uri(rest, Some("q=1")).unwrap().to_string(),
            "https://fonts.gstatic.com/s/roboto/v47/x.woff2"
        );
        let mut cc = HeaderMap::new();
        cc.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=86400"),
        );
        assert_eq!(css.cache_view(&cc)[header::CACHE_CONTROL], "max-age=86400");
        assert_eq!(
            files.cache_view(&cc)[header::CACHE_CONTROL],
            "private, max-age=86400"
        );
    }

    #[test]
    fn tile_routes_build_urls_from_the_template() {
        let router = router(
            r#"
[server]
listen = "127.0.0.1:0"
[upstream]
user_agent = "site tiles (+https://site.example/; ops@site.example)"
[[route]]
name = "osm"
kind = "tiles"
prefix = "/tiles/osm/"
upstream = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
referer = "https://site.example/"
"#,
        );
        let (r, rest) = router.find("/tiles/osm/3/4/5.png").unwrap();
        assert_eq!(
            r.upstream_uri(rest, Some("evil=1")).unwrap().to_string(),
            "https://tile.openstreetmap.org/3/4/5.png"
        );
        assert!(r.upstream_uri("20/0/0.png", None).is_err());
        assert!(r.upstream_uri("../../x", None).is_err());
        assert_eq!(
            r.scrub(&HeaderMap::new())["referer"],
            "https://site.example/"
        );
        assert_eq!(
            r.rules.stale_if_error,
            std::time::Duration::from_secs(7 * 86400)
        );
    }
}

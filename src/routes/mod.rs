//! Routes: which configured upstream serves a visitor's path, how its URL is built, and what
//! each kind adds to the common flow (font CSS rewriting, tile parsing, fixed headers).

pub mod analytics;
pub mod confine;
pub mod css;
pub mod fonts;
pub mod tiles;

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use tokio::sync::Semaphore;

use crate::cache;
use crate::config::{Config, RouteConfig, RouteKind, UpstreamBase};
use crate::policy::{RequestPolicy, ResponseKind};
use crate::secret::Secret;

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
    pub rate: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// Stops asking a failing upstream for a while (shared by the parts of one route).
    pub breaker: Arc<crate::upstream::breaker::Breaker>,
    /// How third-party URLs in a stylesheet this route serves map to first-party ones: its own
    /// bases first, then every other mirror's.
    pub css_map: css::UrlMap,
    /// Analytics: settings, pseudonym key and limits.
    pub analytics: Option<Arc<analytics::Runtime>>,
}

impl Route {
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

    /// The request headers sent upstream: the route's policy, plus what the role needs.
    pub fn scrub(&self, visitor: &HeaderMap) -> HeaderMap {
        self.for_role(self.policy.scrub(visitor))
    }

    /// As [`scrub`](Self::scrub), for a caller done with the visitor's headers (no copy on a
    /// pass-through route).
    pub fn scrub_owned(&self, visitor: HeaderMap) -> HeaderMap {
        self.for_role(self.policy.scrub_owned(visitor))
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
    pub fn adjust_response(&self, headers: &mut HeaderMap, requested: &Uri) {
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
                if let Some(ct) = fonts::font_content_type(requested.path()) {
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

/// The (upstream base, first-party prefix) pairs a route mirrors, files before CSS on a fonts
/// route; none for tiles (a template, not a base), analytics (no stylesheet may point the
/// browser at a tracking endpoint) and pass-through routes (not a mirror).
fn route_bases(rc: &RouteConfig) -> Vec<(UpstreamBase, String)> {
    let mut bases = Vec::new();
    match rc.kind {
        RouteKind::Static if !rc.pass_through => {
            bases.push((rc.upstream.clone(), rc.prefix.clone()));
        }
        RouteKind::Fonts => {
            if let Some(f) = &rc.font_files {
                bases.push((f.upstream.clone(), f.prefix.clone()));
            }
            bases.push((rc.upstream.clone(), rc.prefix.clone()));
        }
        _ => {}
    }
    bases
}

/// Every mirror's bases, in config order.
fn mirror_bases(config: &Config) -> Vec<(UpstreamBase, String)> {
    config.routes.iter().flat_map(route_bases).collect()
}

/// Matches request paths to routes by longest prefix.
#[derive(Debug)]
pub struct Router {
    /// In config order (a fonts route contributes its CSS part, then its files part).
    routes: Vec<Arc<Route>>,
    /// Indexes into `routes`, longest prefix first.
    by_length: Vec<usize>,
}

impl Router {
    /// Builds the routing table from a validated config.
    pub fn new(config: &Config) -> Router {
        Router::reloaded(config, None)
    }

    /// Builds the routing table for a reloaded config: a route that did not change keeps the
    /// previous one's upstream permits and analytics pseudonym key (so visitors' pseudonyms
    /// do not change at a reload).
    pub fn reloaded(config: &Config, previous: Option<&Router>) -> Router {
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let mirrors = mirror_bases(config);
        for rc in &config.routes {
            let fingerprint = |role: Role, prefix: &str| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                // The route's own settings (its Debug form names every one, secrets only by
                // what they are), plus the global ones that reach its upstream requests or its
                // lifetimes.
                format!("{rc:?}").hash(&mut h);
                // A new Matomo token changes what the route sends: a new route. Hashed here,
                // in memory, rather than shown in any form (the id is never printed).
                let token = rc.analytics.as_ref().and_then(|a| a.token.as_ref());
                token.map(Secret::expose).hash(&mut h);
                format!("{role:?}").hash(&mut h);
                prefix.hash(&mut h);
                config.upstream.user_agent.as_bytes().hash(&mut h);
                config.cache.heuristic_max.hash(&mut h);
                // Everything a CSS API stores is mapped through every mirror's base. (Other
                // routes store a stylesheet seldom: one mapped by an older map still only
                // names first-party paths, so they keep their entries when a mirror changes.)
                if role == Role::FontCss {
                    format!("{mirrors:?}").hash(&mut h);
                }
                h.finish()
            };
            let before = |id: u64| {
                previous.and_then(|p| p.routes.iter().find(|r| r.cache_id == id).cloned())
            };
            let first_role = match rc.kind {
                RouteKind::Static => Role::Static,
                RouteKind::Tiles => Role::Tiles,
                RouteKind::Fonts => Role::FontCss,
                k => Role::Analytics(k.analytics().unwrap_or(analytics::Protocol::Ga4)),
            };
            let first_id = fingerprint(first_role, &rc.prefix);
            let kept = before(first_id);
            let rules = cache::Rules {
                heuristic_max: config.cache.heuristic_max,
                negative_ttl: rc.cache.negative_ttl,
                min_ttl: rc.cache.min_ttl,
                max_ttl: rc.cache.max_ttl,
                stale_if_error: rc.cache.stale_if_error,
                // Only an EU pass-through route forwards the visitor's Cookie and Authorization.
                cookie_free: !(rc.pass_through
                    && rc.jurisdiction == crate::policy::Jurisdiction::Eu),
            };
            let permits = match &kept {
                Some(r) => r.permits.clone(),
                None => rc
                    .max_upstream_connections
                    .map(|n| Arc::new(Semaphore::new(n))),
            };
            let rate = match &kept {
                Some(r) => r.rate.clone(),
                None => rc
                    .rate_limit
                    .map(|l| Arc::new(crate::ratelimit::RateLimiter::new(l))),
            };
            let breaker_settings = (
                config.upstream.breaker_failures,
                config.upstream.breaker_cooldown,
            );
            let breaker = match &kept {
                Some(r) if r.breaker.settings() == breaker_settings => r.breaker.clone(),
                _ => Arc::new(crate::upstream::breaker::Breaker::new(
                    config.upstream.breaker_failures,
                    config.upstream.breaker_cooldown,
                )),
            };
            let policy = |ua: Option<&HeaderValue>| {
                let mut p = RequestPolicy::new(
                    rc.jurisdiction,
                    &config.upstream.user_agent,
                    ua,
                    &rc.forward_headers,
                );
                if rc.pass_through {
                    p = p.pass_through();
                }
                if let Some(referer) = &rc.referer {
                    p = p.with_referer(referer.clone());
                }
                p
            };
            let fresh_runtime = rc.analytics.as_ref().map(|a| {
                Arc::new(analytics::Runtime {
                    protocol: a.protocol,
                    settings: a.settings.clone(),
                    pseudonyms: analytics::Pseudonymizer::new(a.rotate, a.salt.clone()),
                    max_body: a.max_body,
                    // Validated at load: only an EU route sends an address.
                    address: if rc.jurisdiction == crate::policy::Jurisdiction::Eu {
                        a.client_ip
                    } else {
                        analytics::visitor::ClientAddress::None
                    },
                    bits: a.pseudonym_bits,
                    location: a.location,
                    gate: crate::geo::Gate::new(a.min_visitors),
                })
            });
            let analytics_runtime = match &kept {
                Some(r) if r.analytics.is_some() => r.analytics.clone(),
                _ => fresh_runtime,
            };
            // A stylesheet names this route's own upstreams first (a host serving both Bunny
            // Fonts' CSS and files maps to the files), then every other mirror's.
            let own = route_bases(rc);
            let css_map = css::UrlMap::new(
                own.iter()
                    .chain(mirrors.iter().filter(|m| !own.contains(m)))
                    .cloned()
                    .collect(),
            );
            let mut add =
                |role: Role, prefix: &str, upstream: &UpstreamBase, policy: RequestPolicy| {
                    routes.push(Arc::new(Route {
                        index: routes.len(),
                        cache_id: fingerprint(role, prefix),
                        config: rc.clone(),
                        role,
                        prefix: prefix.to_owned(),
                        upstream: upstream.clone(),
                        policy,
                        rules: rules.clone(),
                        permits: permits.clone(),
                        rate: rate.clone(),
                        breaker: breaker.clone(),
                        css_map: css_map.clone(),
                        analytics: analytics_runtime.clone(),
                    }));
                };
            match rc.kind {
                RouteKind::Static => add(
                    Role::Static,
                    &rc.prefix,
                    &rc.upstream,
                    policy(rc.user_agent.as_ref()),
                ),
                RouteKind::Tiles => add(
                    Role::Tiles,
                    &rc.prefix,
                    &rc.upstream,
                    policy(rc.user_agent.as_ref()),
                ),
                RouteKind::Ga4 | RouteKind::Matomo | RouteKind::Plausible | RouteKind::Umami => {
                    let mut p = policy(rc.user_agent.as_ref());
                    if rc.user_agent.is_none() {
                        p = p.with_user_agent(crate::policy::UserAgent::Generalised);
                    }
                    let protocol = rc.kind.analytics().unwrap_or(analytics::Protocol::Ga4);
                    add(Role::Analytics(protocol), &rc.prefix, &rc.upstream, p);
                }
                RouteKind::Fonts => {
                    let css_ua = HeaderValue::from_static(fonts::CSS_USER_AGENT);
                    add(
                        Role::FontCss,
                        &rc.prefix,
                        &rc.upstream,
                        policy(Some(&css_ua)),
                    );
                    if let Some(f) = &rc.font_files {
                        add(
                            Role::FontFiles,
                            &f.prefix,
                            &f.upstream,
                            policy(rc.user_agent.as_ref()),
                        );
                    }
                }
            }
        }
        let mut by_length: Vec<usize> = (0..routes.len()).collect();
        by_length.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
        Router { routes, by_length }
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
    fn a_reload_keeps_what_an_unchanged_route_owns_and_renews_a_changed_one() {
        let text = |analytics_extra: &str, cdn_upstream: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\n\
                 upstream = \"https://region1.google-analytics.com/\"\n{analytics_extra}\n\
                 [[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\n\
                 upstream = \"{cdn_upstream}\"\nmax_upstream_connections = 4\n"
            )
        };
        let parse = |t: String| Config::parse(&t, Path::new("t.toml")).unwrap();
        let first = Router::new(&parse(text("", "https://a.example/")));
        // Only the CDN route changes.
        let moved = parse(text("", "https://b.example/"));
        let second = Router::reloaded(&moved, Some(&first));
        let by_name = |r: &Router, n: &str| {
            r.routes()
                .iter()
                .find(|x| x.config.name == n)
                .cloned()
                .unwrap()
        };
        let (ga1, ga2) = (by_name(&first, "ga"), by_name(&second, "ga"));
        assert_eq!(ga1.cache_id, ga2.cache_id);
        // Same pseudonym key: a visitor's pseudonym does not change at a reload.
        assert!(Arc::ptr_eq(
            ga1.analytics.as_ref().unwrap(),
            ga2.analytics.as_ref().unwrap()
        ));
        let (cdn1, cdn2) = (by_name(&first, "cdn"), by_name(&second, "cdn"));
        assert_ne!(cdn1.cache_id, cdn2.cache_id);
        assert!(!Arc::ptr_eq(
            cdn1.permits.as_ref().unwrap(),
            cdn2.permits.as_ref().unwrap()
        ));
        // A changed analytics setting renews the runtime too.
        let third = Router::reloaded(
            &parse(text("rotate = \"1h\"", "https://b.example/")),
            Some(&second),
        );
        let ga3 = by_name(&third, "ga");
        assert_ne!(ga2.cache_id, ga3.cache_id);
        assert!(!Arc::ptr_eq(
            ga2.analytics.as_ref().unwrap(),
            ga3.analytics.as_ref().unwrap()
        ));
    }

    #[test]
    fn a_new_matomo_token_makes_a_new_route_though_its_debug_form_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"m\"\nkind = \"matomo\"\n\
             prefix = \"/m/\"\nupstream = \"https://matomo.example/\"\ntoken_file = {:?}\n",
            token.display()
        );
        let load = |t: &str| {
            std::fs::write(&token, t).unwrap();
            Config::parse(&text, Path::new("t.toml")).unwrap()
        };
        let (one, same, other) = (
            load("tokenOne0001"),
            load("tokenOne0001"),
            load("tokenTwo0002"),
        );
        assert_eq!(
            format!("{:?}", one.routes[0]),
            format!("{:?}", other.routes[0])
        );
        let first = Router::new(&one);
        let id = |c: &Config| Router::reloaded(c, Some(&first)).routes()[0].cache_id;
        assert_eq!(first.routes()[0].cache_id, id(&same));
        assert_ne!(first.routes()[0].cache_id, id(&other));
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

//! One `[[route]]`, checked concern by concern: name and prefix, upstream, what only some
//! kinds take, headers, referer, rate, analytics (analytics.rs), cache.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::model::{
    parse_upstream, AnalyticsConfig, CacheConfig, FontFiles, RateLimit, RouteCache, RouteConfig,
    RouteKind, TilesConfig, UpstreamBase,
};
use super::raw::RawRoute;
use super::validate::{Key, Validator};
use crate::policy::{self, Jurisdiction};

/// Highest `max_upstream_connections`. The router makes a semaphore of that many permits, and
/// tokio's `Semaphore::new` panics above `Semaphore::MAX_PERMITS` (2^61 - 1); far below that,
/// a cap of more than a million concurrent requests to one upstream is no cap: a larger value
/// is a mistake, refused at load like any other.
pub const MAX_UPSTREAM_CONNECTIONS: usize = 1_000_000;

/// The prefixes taken so far, with where each was written.
type Prefixes = Vec<(String, std::ops::Range<usize>)>;

impl Validator<'_> {
    /// Every `[[route]]`, in order. Each concern is a function below, called in the order the
    /// checks always ran, so problems are reported in the same order.
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        cache: &CacheConfig,
        global_ua: &HeaderValue,
    ) -> Vec<RouteConfig> {
        if raw.is_empty() {
            self.problem(None, "route", "no [[route]]: tamis has nothing to serve");
        }
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(raw.len());
        let mut prefixes: Prefixes = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            // Routes are named in messages by their `name`, as the operator wrote it (by
            // position only when it has none a message can show).
            let label = match r.name.get_ref() {
                n if !n.is_empty() && !n.contains(['"', '\n']) => format!("route {n:?}"),
                _ => format!("route[{i}]"),
            };
            let key = |field: &str| format!("{label}.{field}");
            let problems_before = self.problems.len();
            let name = self.route_name(&r, &key, &mut names);
            let prefix = self.route_prefix(&r, &key, &mut prefixes);
            let (upstream, tiles) = self.route_upstream(&r, &key);
            self.tiles_only(&r, &key);
            let font_files = self.font_files(&r, &key, &mut prefixes);
            let referer = self.referer(&r, &key);
            let max_upstream_connections = self.max_upstream_connections(&r, &key);
            let rate_limit = self.rate_limit(&r, &key);
            let jurisdiction = self.jurisdiction(&r, &key);
            let eu_reason = self.eu_claim(&r, &key, jurisdiction);
            let user_agent = r
                .user_agent
                .as_ref()
                .and_then(|ua| self.user_agent(ua, &key("user_agent")));
            let forward_headers = self.forward_headers(&r, &key, jurisdiction);
            self.tile_usage_policy(&r, &key, tiles.as_ref(), user_agent.as_ref(), global_ua);
            let analytics = match r.kind.analytics() {
                Some(protocol) => Some(self.analytics(&r, &key, protocol, jurisdiction)),
                None => {
                    self.analytics_only(&r, &key);
                    None
                }
            };
            let mut route_cache = self.route_cache(&r, &key, cache, analytics.as_ref());
            let pass_through = self.pass_through(&r, &key, jurisdiction);
            route_cache.disk =
                self.disk_cache(&r, &key, &route_cache, &forward_headers, pass_through);
            let Some(upstream) = upstream else {
                // Every [[route]] written is served or the config refused: each way of getting
                // no upstream records its problem; were one ever not to, refuse here rather
                // than serve the config without this route.
                if self.problems.len() == problems_before {
                    self.problem(
                        Some(r.upstream.span()),
                        key("upstream"),
                        format!(
                            "{:?}: no upstream URL can be made of it",
                            r.upstream.get_ref()
                        ),
                    );
                }
                continue;
            };
            routes.push(RouteConfig {
                name,
                kind: r.kind,
                prefix,
                upstream,
                jurisdiction,
                eu_reason,
                user_agent,
                forward_headers,
                forward_query: r.forward_query.unwrap_or(true),
                cache: route_cache,
                pass_through,
                font_files,
                tiles,
                referer,
                max_upstream_connections,
                rate_limit,
                analytics,
            });
        }
        routes
    }

    /// `name`: a metrics label, unique among the routes.
    fn route_name(&mut self, r: &RawRoute, key: Key, names: &mut Vec<String>) -> String {
        let name = r.name.get_ref().clone();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.problem(
                Some(r.name.span()),
                key("name"),
                format!("{name:?}: use letters, digits, '-' and '_' (it becomes a metrics label)"),
            );
        } else if names.contains(&name) {
            self.problem(
                Some(r.name.span()),
                key("name"),
                format!("{name:?} is used by another route"),
            );
        }
        names.push(name.clone());
        name
    }

    /// `prefix`: a plain path, unique among the routes (and fonts routes' files prefixes).
    fn route_prefix(&mut self, r: &RawRoute, key: Key, prefixes: &mut Prefixes) -> String {
        let prefix = r.prefix.get_ref().clone();
        if let Err(msg) = check_prefix(&prefix) {
            self.problem(Some(r.prefix.span()), key("prefix"), msg);
        } else if let Some((_, other)) = prefixes.iter().find(|(p, _)| *p == prefix) {
            let line = self.at(Some(other.clone()));
            self.problem(
                Some(r.prefix.span()),
                key("prefix"),
                format!("{prefix:?} is already the prefix of another route ({line})"),
            );
        } else {
            self.shadows_own_page(&r.prefix, &key("prefix"));
        }
        prefixes.push((prefix.clone(), r.prefix.span()));
        prefix
    }

    /// `upstream`: a base URL, or for tiles a template (with `subdomains` and `max_zoom`) whose
    /// scheme and host make the base.
    fn route_upstream(
        &mut self,
        r: &RawRoute,
        key: Key,
    ) -> (Option<UpstreamBase>, Option<TilesConfig>) {
        let mut tiles = None;
        let upstream = match r.kind {
            RouteKind::Tiles => {
                match crate::mirrors::tiles::Template::new(
                    r.upstream.get_ref(),
                    r.subdomains.clone().unwrap_or_default(),
                ) {
                    Ok(t) => {
                        let max_zoom = r.max_zoom.as_ref().map_or(19, |z| *z.get_ref());
                        if max_zoom > crate::mirrors::tiles::ZOOM_LIMIT {
                            let span = r.max_zoom.as_ref().map(|z| z.span());
                            self.problem(
                                span,
                                key("max_zoom"),
                                format!("at most {}", crate::mirrors::tiles::ZOOM_LIMIT),
                            );
                        }
                        self.grid_zoom(r, key, &t.sample_host(), max_zoom);
                        // The route's base is the template's own scheme and authority:
                        // where its tiles go.
                        let base = format!("{}://{}/", t.scheme(), t.sample_host());
                        tiles = Some(TilesConfig {
                            template: t,
                            max_zoom,
                        });
                        match parse_upstream(&base) {
                            Ok(base) => Some(base),
                            Err(msg) => {
                                self.problem(Some(r.upstream.span()), key("upstream"), msg);
                                None
                            }
                        }
                    }
                    Err(e) => {
                        self.problem(Some(r.upstream.span()), key("upstream"), e.to_string());
                        None
                    }
                }
            }
            _ => match parse_upstream(r.upstream.get_ref()) {
                Ok(u) => Some(u),
                Err(msg) => {
                    self.problem(Some(r.upstream.span()), key("upstream"), msg);
                    None
                }
            },
        };
        (upstream, tiles)
    }

    /// The tiles keys on a route of another kind.
    fn tiles_only(&mut self, r: &RawRoute, key: Key) {
        if r.kind != RouteKind::Tiles {
            if let Some(z) = &r.max_zoom {
                self.problem(Some(z.span()), key("max_zoom"), "only for kind = \"tiles\"");
            }
            if r.subdomains.is_some() {
                self.problem(
                    Some(r.upstream.span()),
                    key("subdomains"),
                    "only for kind = \"tiles\"",
                );
            }
        }
    }

    /// Fonts: `files_prefix` and `files_upstream`, where the font files are served from.
    fn font_files(&mut self, r: &RawRoute, key: Key, prefixes: &mut Prefixes) -> Option<FontFiles> {
        match (r.kind, &r.files_prefix, &r.files_upstream) {
            (RouteKind::Fonts, Some(fp), Some(fu)) => {
                let mut ok = true;
                if let Err(msg) = check_prefix(fp.get_ref()) {
                    self.problem(Some(fp.span()), key("files_prefix"), msg);
                    ok = false;
                } else if let Some((_, other)) = prefixes.iter().find(|(p, _)| p == fp.get_ref()) {
                    let line = self.at(Some(other.clone()));
                    self.problem(
                        Some(fp.span()),
                        key("files_prefix"),
                        format!("{:?} is already a prefix ({line})", fp.get_ref()),
                    );
                    ok = false;
                } else {
                    self.shadows_own_page(fp, &key("files_prefix"));
                }
                prefixes.push((fp.get_ref().clone(), fp.span()));
                let up = match parse_upstream(fu.get_ref()) {
                    Ok(u) => Some(u),
                    Err(msg) => {
                        self.problem(Some(fu.span()), key("files_upstream"), msg);
                        None
                    }
                };
                match (ok, up) {
                    (true, Some(upstream)) => Some(FontFiles {
                        prefix: fp.get_ref().clone(),
                        upstream,
                    }),
                    _ => None,
                }
            }
            (RouteKind::Fonts, None, None) => {
                self.problem(
                    Some(r.upstream.span()),
                    key("files_upstream"),
                    "a fonts route needs files_prefix and files_upstream: the font files its CSS \
                     names are served from there (Google Fonts: files_upstream = \
                     \"https://fonts.gstatic.com/\"; a host serving both, like Bunny Fonts: \
                     the same URL as upstream)",
                );
                None
            }
            (RouteKind::Fonts, _, _) => {
                let span = r
                    .files_prefix
                    .as_ref()
                    .or(r.files_upstream.as_ref())
                    .map(|s| s.span());
                self.problem(
                    span,
                    key("files_prefix"),
                    "files_prefix and files_upstream go together",
                );
                None
            }
            (_, Some(s), _) | (_, _, Some(s)) => {
                self.problem(
                    Some(s.span()),
                    key("files_prefix"),
                    "only for kind = \"fonts\"",
                );
                None
            }
            _ => None,
        }
    }

    /// `referer`: the site's origin, sent as `scheme://host[:port]/` (a page is refused).
    fn referer(&mut self, r: &RawRoute, key: Key) -> Option<HeaderValue> {
        r.referer
            .as_ref()
            .and_then(|v| match super::mistakes::referer_origin(v.get_ref()) {
                Ok(origin) => HeaderValue::from_str(&origin).ok(),
                Err(msg) => {
                    self.problem(Some(v.span()), key("referer"), msg);
                    None
                }
            })
    }

    /// `max_upstream_connections`, bounded by [`MAX_UPSTREAM_CONNECTIONS`].
    fn max_upstream_connections(&mut self, r: &RawRoute, key: Key) -> Option<usize> {
        match &r.max_upstream_connections {
            Some(n) if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(n.get_ref()) => {
                self.problem(
                    Some(n.span()),
                    key("max_upstream_connections"),
                    format!(
                        "{}: must be between 1 and {MAX_UPSTREAM_CONNECTIONS}",
                        n.get_ref()
                    ),
                );
                None
            }
            Some(n) => Some(*n.get_ref()),
            None => None,
        }
    }

    /// `rate_limit = "10/s"` (or `/min`, `/h`), `"off"`; tiles routes default to
    /// [`RateLimit::TILES`].
    fn rate_limit(&mut self, r: &RawRoute, key: Key) -> Option<RateLimit> {
        let default = (r.kind == RouteKind::Tiles).then_some(RateLimit::TILES);
        let burst = r.rate_burst.as_ref().map(|b| *b.get_ref());
        if let Some(b) = &r.rate_burst {
            if *b.get_ref() == 0 {
                self.problem(Some(b.span()), key("rate_burst"), "must be at least 1");
                return default;
            }
        }
        let Some(spec) = &r.rate_limit else {
            return match (default, burst) {
                (Some(d), Some(b)) => Some(RateLimit { burst: b, ..d }),
                (d, _) => d,
            };
        };
        let text = spec.get_ref().trim();
        if text == "off" {
            return None;
        }
        let parsed = text.split_once('/').and_then(|(n, unit)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let per = match unit.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                _ => return None,
            };
            Some((n, per / n))
        });
        match parsed {
            Some((n, period)) if !period.is_zero() => Some(RateLimit {
                period,
                // A burst of one second's worth unless set; on a tiles route never less than
                // the default's, since one map view loads dozens of tiles at once: a rate set
                // alone must not quietly turn that into 429s.
                burst: burst.unwrap_or(n.max(default.map_or(1, |d| d.burst))),
            }),
            _ => {
                self.problem(
                    Some(spec.span()),
                    key("rate_limit"),
                    format!("{text:?} is not a rate: write e.g. \"10/s\", \"600/min\" or \"off\""),
                );
                default
            }
        }
    }

    /// `jurisdiction` (non-EU unless said), with a warning for plain http:// to a non-EU host.
    fn jurisdiction(&mut self, r: &RawRoute, key: Key) -> Jurisdiction {
        let jurisdiction = r.jurisdiction.unwrap_or(Jurisdiction::NonEu);
        if jurisdiction == Jurisdiction::NonEu {
            for (field, v) in [
                ("upstream", Some(&r.upstream)),
                ("files_upstream", r.files_upstream.as_ref()),
            ] {
                if let Some(v) = v.filter(|v| plain_http_elsewhere(v.get_ref())) {
                    self.warning(
                        Some(v.span()),
                        key(field),
                        "plain http:// to a host outside the EU: anyone on the way reads what \
                         tamis sends and can change what comes back (a stylesheet, a script); \
                         use https://",
                    );
                }
            }
        }
        jurisdiction
    }

    /// `forward_headers`: EU routes only, and never a header the policy keeps back.
    fn forward_headers(
        &mut self,
        r: &RawRoute,
        key: Key,
        jurisdiction: Jurisdiction,
    ) -> Vec<HeaderName> {
        let mut forward_headers = Vec::new();
        if let Some(list) = &r.forward_headers {
            if jurisdiction != Jurisdiction::Eu && !list.get_ref().is_empty() {
                self.problem(
                    Some(list.span()),
                    key("forward_headers"),
                    "only an EU route (jurisdiction = \"eu\") may forward visitor headers beyond the allowlist",
                );
            }
            for h in list.get_ref() {
                match policy::check_forwardable(h) {
                    Ok(name) => forward_headers.push(name),
                    Err(msg) => self.problem(Some(list.span()), key("forward_headers"), msg),
                }
            }
        }
        forward_headers
    }

    /// OpenStreetMap's tile usage policy: a User-Agent with a contact, and a Referer; and the
    /// shipped placeholders on any route.
    fn tile_usage_policy(
        &mut self,
        r: &RawRoute,
        key: Key,
        tiles: Option<&TilesConfig>,
        user_agent: Option<&HeaderValue>,
        global_ua: &HeaderValue,
    ) {
        // Any route's own User-Agent or Referer may still hold the shipped placeholder; an OSM
        // route's (the global User-Agent included) is against the tile usage policy.
        let osm =
            tiles.is_some_and(|t| crate::mirrors::tiles::is_osm_host(&t.template.sample_host()));
        self.placeholders(r, key, osm, user_agent, global_ua);
        if osm {
            let ua = user_agent.unwrap_or(global_ua);
            if !crate::mirrors::tiles::has_contact(ua.to_str().unwrap_or("")) {
                self.problem(
                    Some(r.upstream.span()),
                    key("user_agent"),
                    "OpenStreetMap's tile usage policy requires a User-Agent with a contact (a URL or an e-mail): set user_agent here or in [upstream]",
                );
            }
            if r.referer.is_none() {
                self.problem(
                    Some(r.upstream.span()),
                    key("referer"),
                    "OpenStreetMap's tile usage policy requires a Referer: set referer = \"https://your-site.example/\" (the site's origin, never the visitor's page)",
                );
            }
        }
    }

    /// The route's cache keys: `cache`, `min_ttl`/`max_ttl`, `stale_if_error`, `negative_ttl`.
    fn route_cache(
        &mut self,
        r: &RawRoute,
        key: Key,
        cache: &CacheConfig,
        analytics: Option<&AnalyticsConfig>,
    ) -> RouteCache {
        let min_ttl = r
            .min_ttl
            .as_ref()
            .map(|v| self.duration_or_zero(Some(v), &key("min_ttl"), Duration::ZERO));
        let max_ttl = r
            .max_ttl
            .as_ref()
            .map(|v| self.duration_or_zero(Some(v), &key("max_ttl"), Duration::ZERO));
        if let (Some(min), Some(max), Some(span)) =
            (min_ttl, max_ttl, r.max_ttl.as_ref().map(|m| m.span()))
        {
            if min > max {
                self.problem(Some(span), key("max_ttl"), "is smaller than min_ttl");
            }
        }
        RouteCache {
            // Tracking requests are never stored.
            enabled: r.cache.unwrap_or(true) && analytics.is_none(),
            min_ttl,
            max_ttl,
            // A tile outage should not blank the map: tiles serve stale for a week by default.
            stale_if_error: self.duration_or_zero(
                r.stale_if_error.as_ref(),
                &key("stale_if_error"),
                if r.kind == RouteKind::Tiles {
                    Duration::from_secs(7 * 86400)
                } else {
                    Duration::ZERO
                },
            ),
            negative_ttl: self.duration_or_zero(
                r.negative_ttl.as_ref(),
                &key("negative_ttl"),
                cache.negative_ttl,
            ),
            disk: None,
        }
    }

    /// `disk_cache`: only for answers that are the same for every visitor. Never analytics,
    /// never a route whose answers may vary on a visitor's header (`forward_headers`,
    /// `pass_through`), and not without the cache.
    fn disk_cache(
        &mut self,
        r: &RawRoute,
        key: Key,
        cache: &RouteCache,
        forward_headers: &[http::HeaderName],
        pass_through: bool,
    ) -> Option<bool> {
        let asked = r.disk_cache.as_ref()?;
        if !*asked.get_ref() {
            return Some(false);
        }
        let why = if r.kind.analytics().is_some() {
            Some("an analytics route's requests are never stored")
        } else if !cache.enabled {
            Some("the route has cache = false")
        } else if pass_through {
            Some("a pass_through route's answers may vary on any header a visitor sends")
        } else if !forward_headers.is_empty() {
            Some("its answers may vary on the visitor headers it forwards (forward_headers)")
        } else {
            None
        };
        if let Some(why) = why {
            self.problem(
                Some(asked.span()),
                key("disk_cache"),
                format!(
                    "cannot be true: {why}; only what is the same for every visitor goes to disk"
                ),
            );
            return Some(false);
        }
        Some(true)
    }

    /// `pass_through`: EU routes only.
    fn pass_through(&mut self, r: &RawRoute, key: Key, jurisdiction: Jurisdiction) -> bool {
        let pass_through = r.pass_through.as_ref().is_some_and(|p| *p.get_ref());
        if pass_through && jurisdiction != Jurisdiction::Eu {
            let span = r.pass_through.as_ref().map(|p| p.span());
            self.problem(
                span,
                key("pass_through"),
                "forwards every header, cookies included: only allowed with jurisdiction = \"eu\"",
            );
        }
        pass_through
    }
}

/// Whether an upstream URL is plain `http://` to a host that is not this machine.
fn plain_http_elsewhere(url: &str) -> bool {
    let Some(rest) = url
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !local
}

/// A prefix is an absolute path of plain segments ending in `/`.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must start and end with '/' (e.g. \"/cdn/\")"
        ));
    }
    if prefix.contains("//") {
        return Err(format!("{prefix:?} has an empty segment"));
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~/".contains(&b);
    if !prefix.bytes().all(plain) {
        return Err(format!(
            "{prefix:?}: use letters, digits and - . _ ~ only (no percent-encoding)"
        ));
    }
    if prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{prefix:?} has a '.' or '..' segment"));
    }
    Ok(())
}

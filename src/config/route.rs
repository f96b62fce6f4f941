//! One `[[route]]`, checked concern by concern: name and prefix, upstream, what only some
//! kinds take, headers, referer, rate, analytics, cache.

use std::time::Duration;

use http::{HeaderValue, Uri};

use super::model::{
    parse_upstream, AnalyticsConfig, CacheConfig, FontFiles, RateLimit, RouteCache, RouteConfig,
    RouteKind, TilesConfig,
};
use super::raw::RawRoute;
use super::validate::Validator;
use crate::policy::{self, Jurisdiction};
use crate::secret::Secret;

/// Highest `max_upstream_connections`. The router makes a semaphore of that many permits, and
/// tokio's `Semaphore::new` panics above `Semaphore::MAX_PERMITS` (2^61 - 1); far below that,
/// a cap of more than a million concurrent requests to one upstream is no cap: a larger value
/// is a mistake, refused at load like any other.
pub const MAX_UPSTREAM_CONNECTIONS: usize = 1_000_000;

impl Validator<'_> {
    /// `rate_limit = "10/s"` (or `/min`, `/h`), `"off"`; tiles routes default to
    /// [`RateLimit::TILES`].
    fn rate_limit(&mut self, r: &RawRoute, key: &dyn Fn(&str) -> String) -> Option<RateLimit> {
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
        let mut prefixes: Vec<(String, std::ops::Range<usize>)> = Vec::new();
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
            let name = r.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.problem(
                    Some(r.name.span()),
                    key("name"),
                    format!(
                        "{name:?}: use letters, digits, '-' and '_' (it becomes a metrics label)"
                    ),
                );
            } else if names.contains(&name) {
                self.problem(
                    Some(r.name.span()),
                    key("name"),
                    format!("{name:?} is used by another route"),
                );
            }
            names.push(name.clone());

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
            }
            prefixes.push((prefix.clone(), r.prefix.span()));

            let mut tiles = None;
            let upstream = match r.kind {
                RouteKind::Tiles => {
                    match crate::routes::tiles::Template::new(
                        r.upstream.get_ref(),
                        r.subdomains.clone().unwrap_or_default(),
                    ) {
                        Ok(t) => {
                            let max_zoom = r.max_zoom.as_ref().map_or(19, |z| *z.get_ref());
                            if max_zoom > crate::routes::tiles::ZOOM_LIMIT {
                                let span = r.max_zoom.as_ref().map(|z| z.span());
                                self.problem(
                                    span,
                                    key("max_zoom"),
                                    format!("at most {}", crate::routes::tiles::ZOOM_LIMIT),
                                );
                            }
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
            let font_files = match (r.kind, &r.files_prefix, &r.files_upstream) {
                (RouteKind::Fonts, Some(fp), Some(fu)) => {
                    let mut ok = true;
                    if let Err(msg) = check_prefix(fp.get_ref()) {
                        self.problem(Some(fp.span()), key("files_prefix"), msg);
                        ok = false;
                    } else if let Some((_, other)) =
                        prefixes.iter().find(|(p, _)| p == fp.get_ref())
                    {
                        let line = self.at(Some(other.clone()));
                        self.problem(
                            Some(fp.span()),
                            key("files_prefix"),
                            format!("{:?} is already a prefix ({line})", fp.get_ref()),
                        );
                        ok = false;
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
            };
            let referer = r.referer.as_ref().and_then(|v| match v.get_ref().parse::<Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.authority().is_some() => {
                    HeaderValue::from_str(v.get_ref()).ok()
                }
                _ => {
                    self.problem(Some(v.span()), key("referer"), format!("{:?} is not an http(s) URL (use the site's origin, e.g. \"https://site.example/\")", v.get_ref()));
                    None
                }
            });
            let max_upstream_connections = match &r.max_upstream_connections {
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
            };
            let rate_limit = self.rate_limit(&r, &key);
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
            let user_agent = r
                .user_agent
                .as_ref()
                .and_then(|ua| self.user_agent(ua, &key("user_agent")));
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
            if let Some(t) = &tiles {
                if crate::routes::tiles::is_osm_host(&t.template.sample_host()) {
                    let ua = user_agent.as_ref().unwrap_or(global_ua);
                    if !crate::routes::tiles::has_contact(ua.to_str().unwrap_or("")) {
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
            let analytics = match r.kind.analytics() {
                Some(protocol) => {
                    let salt = r.salt_file.as_ref().and_then(|f| {
                        let bytes = self.secret_file(f, &key("salt_file"))?;
                        if bytes.len() < 16 {
                            self.problem(
                                Some(f.span()),
                                key("salt_file"),
                                "must hold at least 16 bytes of secret",
                            );
                            return None;
                        }
                        Some(Secret::new("pseudonym salt", &bytes[..]))
                    });
                    use crate::geo::Precision;
                    use crate::routes::analytics::visitor::{ClientAddress, DEFAULT_BITS};
                    use crate::routes::analytics::Protocol;
                    let client_ip = r
                        .client_ip
                        .as_ref()
                        .map_or(ClientAddress::None, |c| *c.get_ref());
                    let ip_span = r.client_ip.as_ref().map(|c| c.span());
                    if client_ip != ClientAddress::None && jurisdiction != Jurisdiction::Eu {
                        self.problem(ip_span.clone(), key("client_ip"), "a client address, even truncated or pseudonymous, only goes to an EU upstream (jurisdiction = \"eu\")");
                    }
                    let pseudonym_bits = r
                        .pseudonym_bits
                        .as_ref()
                        .map_or(DEFAULT_BITS, |b| *b.get_ref());
                    if let Some(b) = &r.pseudonym_bits {
                        if !(8..=32).contains(b.get_ref()) {
                            self.problem(Some(b.span()), key("pseudonym_bits"), "between 8 and 32");
                        } else if client_ip != ClientAddress::Pseudonym {
                            self.problem(
                                Some(b.span()),
                                key("pseudonym_bits"),
                                "is for client_ip = \"pseudonym\"",
                            );
                        }
                    }
                    let location = r
                        .location
                        .as_ref()
                        .map_or(Precision::None, |l| *l.get_ref());
                    let location_span = r.location.as_ref().map(|l| l.span());
                    if location != Precision::None {
                        // Computed from the address: like the address, it only goes to an
                        // EU upstream, and a non-EU one gets nothing beyond its allowlist.
                        if jurisdiction != Jurisdiction::Eu {
                            self.problem(
                                location_span.clone(),
                                key("location"),
                                "a location computed from the visitor's address only goes to an EU upstream (jurisdiction = \"eu\")",
                            );
                        }
                        if !self.has_geo {
                            self.problem(location_span.clone(), key("location"), "needs a location database: set [geo] database = \"/path/to/GeoLite2-City.mmdb\" (or a DB-IP Lite file)");
                        }
                        match protocol {
                            Protocol::Ga4 => self.problem(location_span.clone(), key("location"), "GA4's collect protocol has no location field (Google locates hits by the sending address, which is tamis's): use none"),
                            Protocol::Plausible => self.problem(location_span.clone(), key("location"), "Plausible's event API has no location field (it locates by the address it receives): use none, or client_ip = \"truncated\" on an EU Plausible"),
                            Protocol::Matomo | Protocol::Umami => {}
                        }
                    }
                    // Umami reads CDN location headers only after the address it reads has
                    // passed its local-address check: with no address at all it may skip them.
                    if protocol == Protocol::Umami
                        && location != Precision::None
                        && client_ip != ClientAddress::Pseudonym
                    {
                        self.warning(location_span.clone(), key("location"), "Umami reads the location headers only beside a client address it does not take for a local one: pair location with client_ip = \"pseudonym\" (EU routes), or check that Umami records the countries");
                    }
                    let min_visitors = r.min_visitors.as_ref().map_or(10, |m| *m.get_ref());
                    if let Some(m) = &r.min_visitors {
                        if !(2..=1000).contains(m.get_ref()) {
                            self.problem(
                                Some(m.span()),
                                key("min_visitors"),
                                "between 2 and 1000 (a cell of one visitor would identify them; the counts are held in memory)",
                            );
                        } else if location == Precision::None {
                            self.problem(
                                Some(m.span()),
                                key("min_visitors"),
                                "is for location = \"country\" or \"region\"",
                            );
                        }
                    }
                    let token = r.token_file.as_ref().and_then(|f| {
                        if protocol != Protocol::Matomo {
                            self.problem(
                                Some(f.span()),
                                key("token_file"),
                                "is for matomo routes (Matomo's token_auth)",
                            );
                            return None;
                        }
                        let bytes = self.secret_file(f, &key("token_file"))?;
                        let t = String::from_utf8_lossy(&bytes);
                        let t = t.trim();
                        if (1..=256).contains(&t.len())
                            && t.bytes().all(|b| b.is_ascii_alphanumeric())
                        {
                            Some(Secret::new("operator token_auth", t))
                        } else {
                            self.problem(
                                Some(f.span()),
                                key("token_file"),
                                "must hold one Matomo token_auth (letters and digits)",
                            );
                            None
                        }
                    });
                    // Matomo only accepts cip, country and region with a token_auth.
                    if protocol == Protocol::Matomo && r.token_file.is_none() {
                        if client_ip == ClientAddress::Pseudonym {
                            self.problem(ip_span.clone(), key("client_ip"), "Matomo only accepts a visitor address (cip) with the operator's token_auth: set token_file");
                        }
                        if location != Precision::None {
                            self.problem(location_span.clone(), key("location"), "Matomo only accepts country and region with the operator's token_auth: set token_file");
                        }
                    }
                    let max_body = r.max_body.as_ref().map_or(64 * 1024, |m| *m.get_ref());
                    if max_body == 0 || max_body > 16 * 1024 * 1024 {
                        let span = r.max_body.as_ref().map(|m| m.span());
                        self.problem(span, key("max_body"), "between 1 byte and 16 MiB");
                    }
                    Some(AnalyticsConfig {
                        protocol,
                        settings: crate::routes::analytics::Settings {
                            allow_event_params: r.allow_event_params.clone().unwrap_or_default(),
                            allow_url_params: r.allow_url_params.clone().unwrap_or_default(),
                        },
                        rotate: self.duration(
                            r.rotate.as_ref(),
                            &key("rotate"),
                            Duration::from_secs(86400),
                        ),
                        salt,
                        max_body,
                        client_ip,
                        pseudonym_bits,
                        location,
                        min_visitors,
                        token,
                    })
                }
                None => {
                    let analytics_only = [
                        r.allow_event_params.is_some(),
                        r.allow_url_params.is_some(),
                        r.rotate.is_some(),
                        r.salt_file.is_some(),
                        r.max_body.is_some(),
                        r.client_ip.is_some(),
                        r.pseudonym_bits.is_some(),
                        r.location.is_some(),
                        r.min_visitors.is_some(),
                        r.token_file.is_some(),
                    ];
                    if analytics_only.iter().any(|b| *b) {
                        self.problem(
                            Some(r.name.span()),
                            key("kind"),
                            "allow_event_params, allow_url_params, rotate, salt_file, max_body, client_ip, pseudonym_bits, location, min_visitors and token_file are for analytics kinds (ga4, matomo, plausible, umami)",
                        );
                    }
                    None
                }
            };
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
            let route_cache = RouteCache {
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
            };
            let pass_through = r.pass_through.as_ref().is_some_and(|p| *p.get_ref());
            if pass_through && jurisdiction != Jurisdiction::Eu {
                let span = r.pass_through.as_ref().map(|p| p.span());
                self.problem(
                    span,
                    key("pass_through"),
                    "forwards every header, cookies included: only allowed with jurisdiction = \"eu\"",
                );
            }
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
}

/// A prefix is an absolute path of plain segments ending in `/`.
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

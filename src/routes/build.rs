//! The routing table built from a checked config: each route's parts, policy and cache
//! fingerprint, and what a route that did not change keeps across a reload.

use std::sync::Arc;

use http::header::HeaderValue;
use tokio::sync::Semaphore;

use super::{analytics, css, fonts, Role, Route, Router};
use crate::cache;
use crate::config::{Config, RouteConfig, RouteKind, UpstreamBase};
use crate::policy::RequestPolicy;
use crate::secret::Secret;

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

impl Router {
    /// Builds the routing table for a reloaded config: a route that did not change keeps the
    /// previous one's upstream permits and analytics pseudonym key (so visitors' pseudonyms
    /// do not change at a reload).
    pub fn reloaded(config: &Config, previous: Option<&Router>) -> Router {
        Router::with_store(config, previous, None)
    }

    /// [`reloaded`](Self::reloaded), the analytics routes' keys and location counts shared
    /// through `store` when there is one. An analytics route that changed keeps its pseudonym
    /// key (and its location counts) unless what the key protects changed; `key_fates` says
    /// which way each went.
    pub fn with_store(
        config: &Config,
        previous: Option<&Router>,
        store: Option<&Arc<crate::store::Store>>,
    ) -> Router {
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let mut key_fates = Vec::new();
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
                    .map(|l| Arc::new(crate::routes::ratelimit::RateLimiter::new(l))),
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
            // A changed analytics route: the key (and the counts made under it) of the route of
            // that name before, when what the key protects is the same.
            let earlier = previous.and_then(|p| {
                p.routes.iter().find(|r| {
                    r.config.name == rc.name && r.analytics.is_some() && r.role != Role::FontFiles
                })
            });
            let inherited = match (&rc.analytics, earlier) {
                (Some(a), Some(before)) if kept.is_none() => match key_change(rc, a, before) {
                    None => {
                        key_fates.push((rc.name.clone(), KeyFate::Kept));
                        before.analytics.as_ref().map(|rt| {
                            let gate = (before.config.analytics.as_ref().map(|b| b.min_visitors)
                                == Some(a.min_visitors))
                            .then(|| rt.gate.clone());
                            (rt.pseudonyms.clone(), gate)
                        })
                    }
                    Some(why) => {
                        key_fates.push((rc.name.clone(), KeyFate::New(why)));
                        None
                    }
                },
                (Some(_), None) if previous.is_some() => {
                    key_fates.push((rc.name.clone(), KeyFate::New("a new route".into())));
                    None
                }
                (Some(_), Some(_)) => {
                    key_fates.push((rc.name.clone(), KeyFate::Kept));
                    None
                }
                _ => None,
            };
            let (inherited_key, inherited_gate) = match inherited {
                Some((k, g)) => (Some(k), g),
                None => (None, None),
            };
            let fresh_runtime = rc.analytics.as_ref().map(|a| {
                Arc::new(analytics::Runtime {
                    protocol: a.protocol,
                    settings: a.settings.clone(),
                    pseudonyms: inherited_key.clone().unwrap_or_else(|| {
                        Arc::new(
                            analytics::Pseudonymizer::new(a.rotate, a.salt.clone())
                                .with_store(store.cloned()),
                        )
                    }),
                    max_body: a.max_body,
                    // Validated at load: only an EU route sends an address.
                    address: if rc.jurisdiction == crate::policy::Jurisdiction::Eu {
                        a.client_ip
                    } else {
                        analytics::visitor::ClientAddress::None
                    },
                    bits: a.pseudonym_bits,
                    location: a.location,
                    gate: inherited_gate.clone().unwrap_or_else(|| {
                        Arc::new(crate::analytics::geo::Gate::new(a.min_visitors))
                    }),
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
                    let mut route = Route {
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
                        endpoint_uris: Vec::new(),
                        upstream_host: None,
                    };
                    if role != Role::Tiles {
                        route.upstream_host = super::confine::upstream_uri(upstream, "", None)
                            .ok()
                            .and_then(|uri| crate::upstream::host_header(&uri));
                    }
                    if let Role::Analytics(protocol) = role {
                        route.endpoint_uris = protocol
                            .endpoints()
                            .iter()
                            .filter_map(|e| Some((*e, route.upstream_uri(e, None).ok()?)))
                            .collect();
                    }
                    routes.push(Arc::new(route));
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
        Router {
            routes,
            by_length,
            key_fates,
        }
    }
}

/// What a reload did to an analytics route's pseudonym key (the reload's answer and log say).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFate {
    /// The same key for the rest of the period: visitors keep their pseudonyms.
    Kept,
    /// A new key, and why.
    New(String),
}

/// Why a changed analytics route needs a new key, if it does: the key protects the link
/// between one visitor's hits within a period, for one recipient. A new recipient (upstream
/// host, protocol), a new period length or a new salt breaks what the old key promised;
/// anything else (allow-lists, body size, location, the address's form) does not.
fn key_change(
    rc: &RouteConfig,
    a: &crate::config::AnalyticsConfig,
    before: &Route,
) -> Option<String> {
    let Some(b) = before.config.analytics.as_ref() else {
        return Some("the route was not an analytics route".into());
    };
    if b.protocol != a.protocol {
        return Some("kind changed".into());
    }
    if before.config.upstream.authority != rc.upstream.authority {
        return Some("upstream host changed (a new recipient)".into());
    }
    if b.rotate != a.rotate {
        return Some("rotate changed".into());
    }
    let salt = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_vec());
    if salt(&b.salt) != salt(&a.salt) {
        return Some("salt_file changed".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn tiles_and_font_files_use_the_disk_by_default_and_nothing_else() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tamis.toml");
        let config = Config::load(&shipped).unwrap();
        assert!(
            config.cache.disk.is_some(),
            "the shipped config turns the tier on"
        );
        let router = Router::new(&config);
        let mut seen = (0, 0);
        for r in router.routes() {
            let want = matches!(r.role, Role::Tiles | Role::FontFiles);
            assert_eq!(r.uses_disk(), want, "{} {:?}", r.config.name, r.role);
            match r.role {
                Role::Tiles => seen.0 += 1,
                Role::FontFiles => seen.1 += 1,
                _ => {}
            }
        }
        assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
    }

    #[test]
    fn a_changed_analytics_route_keeps_its_key_unless_what_the_key_protects_changed() {
        let text = |host: &str, extra: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\
                 [[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\n\
                 upstream = \"https://{host}/\"\n{extra}\n"
            )
        };
        let parse = |t: String| Config::parse(&t, Path::new("t.toml")).unwrap();
        let first = Router::new(&parse(text("region1.google-analytics.com", "")));
        assert!(first.key_fates.is_empty(), "nothing to say at start");
        let key = |r: &Router| r.routes()[0].analytics.as_ref().unwrap().pseudonyms.clone();
        // An allow-list changes what is forwarded, not whom the key hides from: kept.
        let second = Router::reloaded(
            &parse(text(
                "region1.google-analytics.com",
                "allow_event_params = [\"ep.plan\"]",
            )),
            Some(&first),
        );
        assert_ne!(first.routes()[0].cache_id, second.routes()[0].cache_id);
        assert!(Arc::ptr_eq(&key(&first), &key(&second)));
        assert_eq!(second.key_fates, [("ga".to_owned(), KeyFate::Kept)]);
        // A new recipient, a new period length: a new key, and why.
        for (host, extra, why) in [
            (
                "www.google-analytics.com",
                "allow_event_params = [\"ep.plan\"]",
                "upstream host",
            ),
            ("region1.google-analytics.com", "rotate = \"1h\"", "rotate"),
        ] {
            let third = Router::reloaded(&parse(text(host, extra)), Some(&second));
            assert!(!Arc::ptr_eq(&key(&second), &key(&third)), "{why}");
            match &third.key_fates[..] {
                [(name, KeyFate::New(said))] => {
                    assert_eq!(name, "ga");
                    assert!(said.contains(why), "{said}");
                }
                other => panic!("{other:?}"),
            }
        }
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
}

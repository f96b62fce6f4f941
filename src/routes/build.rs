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
                    gate: crate::analytics::geo::Gate::new(a.min_visitors),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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

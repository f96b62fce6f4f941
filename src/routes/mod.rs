//! Routes: which configured upstream serves a visitor's path, and how its URL is built.

pub mod confine;

use std::sync::Arc;

use http::Uri;

use crate::cache;
use crate::config::{Config, RouteConfig, RouteKind};
use crate::policy::RequestPolicy;

pub use confine::Confinement;

/// A configured route with its derived request policy.
#[derive(Debug)]
pub struct Route {
    /// Position in the config (stable id for cache keys).
    pub index: usize,
    pub config: RouteConfig,
    pub policy: RequestPolicy,
    /// Lifetime rules for what this route stores.
    pub rules: cache::Rules,
}

impl Route {
    /// The upstream URL for the visitor's path after the prefix; never leaves the route's base.
    pub fn upstream_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, Confinement> {
        match self.config.kind {
            RouteKind::Static => {
                let query = if self.config.forward_query {
                    query
                } else {
                    None
                };
                confine::upstream_uri(&self.config.upstream, rest, query)
            }
        }
    }
}

/// Matches request paths to routes by longest prefix.
#[derive(Debug)]
pub struct Router {
    /// In config order.
    routes: Vec<Arc<Route>>,
    /// Indexes into `routes`, longest prefix first.
    by_length: Vec<usize>,
}

impl Router {
    /// Builds the routing table from a validated config.
    pub fn new(config: &Config) -> Router {
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, rc)| {
                let mut policy = RequestPolicy::new(
                    rc.jurisdiction,
                    &config.upstream.user_agent,
                    rc.user_agent.as_ref(),
                    &rc.forward_headers,
                );
                if rc.pass_through {
                    policy = policy.pass_through();
                }
                let rules = cache::Rules {
                    heuristic_max: config.cache.heuristic_max,
                    negative_ttl: rc.cache.negative_ttl,
                    min_ttl: rc.cache.min_ttl,
                    max_ttl: rc.cache.max_ttl,
                    stale_if_error: rc.cache.stale_if_error,
                };
                Arc::new(Route {
                    index,
                    policy,
                    rules,
                    config: rc.clone(),
                })
            })
            .collect();
        let mut by_length: Vec<usize> = (0..routes.len()).collect();
        by_length.sort_by_key(|&i| std::cmp::Reverse(routes[i].config.prefix.len()));
        Router { routes, by_length }
    }

    /// The route whose prefix is the longest one `path` starts with, and the rest of the path.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        self.by_length.iter().find_map(|&i| {
            let route = &self.routes[i];
            path.strip_prefix(route.config.prefix.as_str())
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

    #[test]
    fn longest_prefix_wins() {
        let text = r#"
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
"#;
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        let router = Router::new(&config);
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
}

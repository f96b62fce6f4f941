//! `GET /status` on the admin listener: what is running, for a human with a browser (HTML) or
//! a script (`?format=json`): the build, the config's hash, the cache's size, and per route its
//! hit ratio and whether its circuit breaker is open. Nothing about any visitor.

use std::fmt::Write as _;

use serde::Serialize;

use crate::metrics::CacheResult;
use crate::routes::Role;
use crate::state::State;
use crate::transparency::page::esc;

/// The page's content.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub revision: &'static str,
    pub config: String,
    pub config_hash: String,
    pub draining: bool,
    pub cache_bytes: u64,
    pub cache_max_bytes: u64,
    pub cache_objects: u64,
    /// The disk tier, when `cache.disk_dir` is set and usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<crate::cache::disk::DiskStats>,
    pub routes: Vec<RouteStatus>,
    /// The shared key store, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreStatus>,
    /// The replicas `[cluster] peers` names, and which answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<crate::admin::fanout::Peer>,
}

/// The key store as this replica sees it (never its password).
#[derive(Debug, Serialize)]
pub struct StoreStatus {
    pub url: String,
    /// Whether its last call answered in time (`None`: not asked yet).
    pub up: Option<bool>,
    /// Each analytics route's current key: where it came from.
    pub keys: Vec<KeyStatus>,
}

/// One analytics route's current pseudonym key.
#[derive(Debug, Serialize)]
pub struct KeyStatus {
    pub route: String,
    pub source: &'static str,
}

/// One route part: a fonts route has two (its CSS and its font files), each with its own
/// numbers.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    pub kind: &'static str,
    /// Which part of a fonts route (`css`, `files`); absent for a route of one part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<&'static str>,
    pub prefix: String,
    pub upstream_host: String,
    pub jurisdiction: &'static str,
    /// This part's lookups the cache answered (hit, stale, coalesced, revalidated) among those
    /// it was asked (bypasses left out, as in the shipped recording rule); `None` before any.
    pub hit_ratio: Option<f64>,
    pub lookups: u64,
    pub circuit_open: bool,
}

/// Reads the running state.
pub async fn status(state: &State, draining: bool, instance: &str) -> Status {
    let (cache_bytes, cache_objects) = state.cache.size().await;
    let routes = state
        .router
        .routes()
        .iter()
        .map(|r| {
            let (answered, asked) = state.route_metrics(r.index).map_or((0, 0), |m| {
                CacheResult::ALL
                    .iter()
                    .filter(|c| **c != CacheResult::Bypass)
                    .fold((0, 0), |(a, t), c| {
                        let n = m.lookups(*c);
                        (a + if c.from_cache() { n } else { 0 }, t + n)
                    })
            });
            RouteStatus {
                name: r.config.name.clone(),
                kind: r.config.kind.as_str(),
                part: match r.role {
                    Role::FontCss => Some("css"),
                    Role::FontFiles => Some("files"),
                    _ => None,
                },
                prefix: r.prefix.clone(),
                upstream_host: r.upstream.authority.to_string(),
                jurisdiction: r.config.jurisdiction.as_str(),
                hit_ratio: (asked > 0).then(|| answered as f64 / asked as f64),
                lookups: asked,
                circuit_open: r.breaker.is_open(),
            }
        })
        .collect();
    let store = state.store.as_ref().map(|s| StoreStatus {
        url: s.url().to_owned(),
        up: s.is_up(),
        keys: state
            .analytics_runtimes()
            .iter()
            .map(|(route, rt)| KeyStatus {
                route: route.clone(),
                source: rt.pseudonyms.source().as_str(),
            })
            .collect(),
    });
    let replicas = match state.config.cluster.as_ref() {
        Some(c) if !c.peers.is_empty() => crate::admin::fanout::reach(instance, &c.peers).await,
        _ => Vec::new(),
    };
    Status {
        store,
        replicas,
        version: crate::VERSION,
        revision: crate::REVISION,
        config: state.config.source.display().to_string(),
        config_hash: state.config.hash.clone(),
        draining,
        cache_bytes,
        cache_max_bytes: state.cache.max_bytes(),
        cache_objects,
        disk: state.cache.disk().map(|d| d.stats()),
        routes,
    }
}

/// The page, as HTML.
pub fn html(s: &Status) -> String {
    let mut o = String::with_capacity(4096);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tamis status</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}\
         .bad{{color:#b00}}</style></head><body>\n<h1>tamis {} <small>({})</small></h1>\n",
        esc(s.version),
        esc(s.revision)
    );
    let _ = writeln!(
        o,
        "<p>Config <code>{}</code>, hash <code>{}</code>{}.</p>",
        esc(&s.config),
        esc(&s.config_hash),
        if s.draining {
            " <strong class=\"bad\">draining: stopping soon</strong>"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "<p>Cache: {} objects, {:.1} MiB of {:.1} MiB.</p>",
        s.cache_objects,
        s.cache_bytes as f64 / 1048576.0,
        s.cache_max_bytes as f64 / 1048576.0
    );
    if let Some(d) = &s.disk {
        let _ = writeln!(
            o,
            "<p>Disk: <code>{}</code>, {} objects, {:.1} MiB of {:.1} MiB, open files \
             kept {} of at most {}, {} objects ({:.1} MiB of at most {:.1} MiB) waiting to be \
             written{}.</p>",
            esc(&d.dir),
            d.entries,
            d.bytes as f64 / 1048576.0,
            d.max_bytes as f64 / 1048576.0,
            d.open_files,
            d.max_open_files,
            d.write_queue_objects,
            d.write_queue_bytes as f64 / 1048576.0,
            d.write_queue_max_bytes as f64 / 1048576.0,
            if d.loading {
                format!(" (loading: {} files indexed so far)", d.loaded)
            } else {
                String::new()
            }
        );
    }
    o.push_str(
        "<table><tr><th>route</th><th>kind</th><th>prefix</th><th>upstream</th>\
         <th>jurisdiction</th><th>hit ratio</th><th>lookups</th><th>upstream</th></tr>\n",
    );
    for r in &s.routes {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            r.part
                .map_or(r.kind.to_owned(), |p| format!("{} ({p})", r.kind)),
            esc(&r.prefix),
            esc(&r.upstream_host),
            r.jurisdiction,
            r.hit_ratio
                .map_or("-".to_owned(), |h| format!("{:.1} %", h * 100.0)),
            r.lookups,
            if r.circuit_open {
                "<span class=\"bad\">circuit open</span>"
            } else {
                "ok"
            }
        );
    }
    o.push_str("</table>\n");
    if let Some(st) = &s.store {
        let _ = writeln!(
            o,
            "<h2>Key store</h2>\n<p><code>{}</code>: {}.</p>\n<ul>",
            esc(&st.url),
            match st.up {
                Some(true) => "reachable",
                Some(false) => "<span class=\"bad\">unreachable: local keys and counts</span>",
                None => "not asked yet",
            }
        );
        for k in &st.keys {
            let _ = writeln!(o, "<li>{}: {}</li>", esc(&k.route), esc(k.source));
        }
        o.push_str("</ul>\n");
    }
    if !s.replicas.is_empty() {
        o.push_str("<h2>Replicas</h2>\n<ul>\n");
        for p in &s.replicas {
            let _ = writeln!(
                o,
                "<li><code>{}</code>: {}{}</li>",
                esc(&p.address),
                if p.reached {
                    "reached"
                } else {
                    "<span class=\"bad\">not reached</span>"
                },
                if p.this {
                    " (this replica)".to_owned()
                } else {
                    p.error
                        .as_deref()
                        .map_or(String::new(), |e| format!(" ({})", esc(e)))
                }
            );
        }
        o.push_str("</ul>\n");
    }
    o.push_str("<p>Metrics: <a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n");
    o
}

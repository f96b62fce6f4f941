//! What tamis does with each route's traffic, as data ([`Disclosure`]), built from the running
//! routes and policy tables so it cannot drift from what the proxy does. `tamis check` prints it
//! for the operator ([`check_report`], written in `check`); `/.well-known/tamis` publishes it (see
//! [`crate::transparency`]).

mod check;
pub mod frontend;
pub mod page;
pub mod probe;
pub mod service_user;

use serde::Serialize;

use crate::analytics::{self, Protocol};
use crate::config::{ClientIpLog, Config, RouteCache};
use crate::policy::{
    Allowed, Jurisdiction, Removed, ResponseKind, UserAgent, REQUEST_ALLOWLIST, REQUEST_REMOVED,
    REQUEST_REMOVED_PREFIXES, RESPONSE_STRIPPED, RESPONSE_STRIPPED_PREFIXES,
};
use crate::routes::{Role, Route, Router};

pub use check::{check_report, check_summary};

/// Header names as people write them.
fn display_name(name: &str) -> String {
    const UPPER: &[&str] = &[
        "cf", "dnt", "te", "nel", "dpr", "ect", "rtt", "ch", "ip", "gpc", "ct",
    ];
    if name == "etag" {
        return "ETag".to_owned();
    }
    name.split('-')
        .map(|part| {
            if UPPER.contains(&part) {
                part.to_ascii_uppercase()
            } else {
                let mut c = part.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Groups table rows by their reason, in the table's order.
fn grouped<R: Copy + PartialEq>(rows: impl Iterator<Item = (String, R)>) -> Vec<(R, Vec<String>)> {
    let mut groups: Vec<(R, Vec<String>)> = Vec::new();
    for (name, why) in rows {
        match groups.iter_mut().find(|(r, _)| *r == why) {
            Some((_, names)) => names.push(name),
            None => groups.push((why, vec![name])),
        }
    }
    groups
}

/// What one route does, as published: no secret (keys, salts, file paths) in it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteDisclosure {
    pub name: String,
    pub kind: &'static str,
    /// For a fonts route: which part ("CSS", "font files").
    pub part: Option<&'static str>,
    /// The first-party prefix visitors use.
    pub prefix: String,
    /// Where requests go: the upstream base URL (or a tile URL template).
    pub upstream: String,
    /// The host tamis connects to.
    pub upstream_host: String,
    pub jurisdiction: &'static str,
    pub jurisdiction_note: &'static str,
    /// Why an EU route's upstream, though listed among well-known non-EU hosts, is under EU law
    /// (the operator's `eu_reason`).
    pub eu_reason: Option<String>,
    /// Role-specific handling (tile bounds, CSS rewriting, font files).
    pub handling: Vec<String>,
    pub query: &'static str,
    pub cache: String,
    /// EU only: everything is forwarded as sent (no scrubbing).
    pub pass_through: bool,
    /// Request headers that go upstream, and how.
    pub sent: Vec<HeaderRow>,
    /// Request headers that never go upstream, by reason.
    pub removed: Vec<Group>,
    /// Response headers that may reach the visitor (the route's allowlist), and why; empty on
    /// a pass-through route, which passes all but `response_removed`.
    pub response_allowed: Vec<HeaderRow>,
    /// Response headers that never reach the visitor, by reason: on a route with an
    /// allowlist, the notable ones among everything it does not list.
    pub response_removed: Vec<Group>,
    pub response_notes: Vec<String>,
    pub max_upstream_connections: Option<usize>,
    /// Per-client request rate, if any.
    pub rate_limit: Option<String>,
    pub analytics: Option<AnalyticsDisclosure>,
}

/// One request header that goes upstream.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderRow {
    pub header: String,
    pub value: String,
}

/// Names sharing one reason or outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub reason: String,
    pub names: Vec<String>,
}

/// What an analytics route does with tracking requests.
#[derive(Clone, Debug, Serialize)]
pub struct AnalyticsDisclosure {
    pub endpoints: Vec<&'static str>,
    pub methods: &'static str,
    pub max_body: usize,
    /// Protocol parameters by outcome (kept, pseudonymised, generalised, dropped).
    pub parameters: Vec<Group>,
    pub custom_fields_kept: Vec<String>,
    pub url_params_kept: Vec<String>,
    pub pseudonyms: String,
    /// What links one visitor's requests within one rotation period, and across periods.
    pub linkage: &'static str,
    /// What is sent in place of the visitor's address.
    pub client_address: String,
    /// What location is sent, computed by tamis.
    pub location: String,
    /// Identifiers removed from the upstream's answer.
    pub answer_removed: Vec<&'static str>,
}

/// What the log keeps.
pub fn log_line(config: &Config) -> &'static str {
    match (config.log.access, config.log.client_ip) {
        (false, _) => "no access log",
        (true, ClientIpLog::None) => "one line per request, no client address",
        (true, ClientIpLog::Truncated) => {
            "one line per request, client address truncated (IPv4 /24, IPv6 /48, an embedded IPv4 /24)"
        }
    }
}

/// Every route of a router, disclosed; `cache` says whether there is a disk tier and how long
/// stale answers are kept.
pub fn disclose(router: &Router, cache: &crate::config::CacheConfig) -> Vec<RouteDisclosure> {
    router
        .routes()
        .iter()
        .map(|r| disclose_route(r, cache))
        .collect()
}

fn disclose_route(route: &Route, cache: &crate::config::CacheConfig) -> RouteDisclosure {
    let c = &route.config;
    let mut handling = Vec::new();
    let upstream = match (&c.tiles, route.role) {
        (Some(t), Role::Tiles) => {
            handling.push(format!(
                "tiles          z <= {}, x and y in 0..2^z, anything else 400 without an upstream request; URL built from the template{}",
                t.max_zoom,
                if t.template.as_str().contains("{s}") { ", one fixed subdomain per tile" } else { "" }
            ));
            t.template.public()
        }
        _ => route.upstream.to_string(),
    };
    match route.role {
        Role::FontCss => handling.push(format!(
            "css            fetched as plain text with a fixed browser User-Agent; every URL in it mapped under {} (or another mirror's prefix) or blocked",
            c.font_files
                .as_ref()
                .map_or(route.prefix.clone(), |f| format!("{} or {}", f.prefix, route.prefix))
        )),
        Role::FontFiles => handling.push(
            "font files     font/* types, Access-Control-Allow-Origin: *, query dropped".to_owned(),
        ),
        _ => {}
    }
    let forwards_query = c.forward_query && matches!(route.role, Role::Static | Role::FontCss);
    let upstream_host = match (&c.tiles, route.role) {
        (Some(t), Role::Tiles) => t.template.sample_host(),
        _ => route.upstream.authority.to_string(),
    };
    let mut sent = Vec::new();
    if !c.pass_through {
        for (name, how, why) in REQUEST_ALLOWLIST {
            let value = match how {
                Allowed::AsSent => format!("as sent by the browser ({why})"),
                Allowed::Normalized if route.role == Role::FontCss => {
                    "identity (the CSS is rewritten)".to_owned()
                }
                Allowed::Normalized => (*why).to_owned(),
            };
            sent.push(HeaderRow {
                header: display_name(name.as_str()),
                value,
            });
        }
        let ua = match &route.policy.user_agent {
            UserAgent::Fixed(ua) => format!("replaced by {:?}", ua.to_str().unwrap_or("")),
            UserAgent::Generalised => {
                "the visitor's, generalised to browser family and major version".to_owned()
            }
            UserAgent::Visitor => "as sent by the browser (EU route)".to_owned(),
        };
        sent.push(HeaderRow {
            header: "User-Agent".to_owned(),
            value: ua,
        });
        if let Some(referer) = &route.policy.referer {
            sent.push(HeaderRow {
                header: "Referer".to_owned(),
                value: format!(
                    "fixed: {:?} (the site's origin, never the visitor's page)",
                    referer.to_str().unwrap_or("")
                ),
            });
        }
        for extra in &route.policy.extra {
            sent.push(HeaderRow {
                header: display_name(extra.as_str()),
                value: "as sent by the browser (forward_headers, EU route)".to_owned(),
            });
        }
        sent.push(HeaderRow {
            header: "Host".to_owned(),
            value: format!("{upstream_host} (from the config, never the visitor's)"),
        });
    }
    let mut removed = Vec::new();
    if !c.pass_through {
        let rows = REQUEST_REMOVED
            .iter()
            .filter(|(n, _)| !route.policy.extra.iter().any(|e| e.as_str() == *n))
            .map(|(n, why)| (display_name(n), *why))
            .chain(
                REQUEST_REMOVED_PREFIXES
                    .iter()
                    .map(|(p, why)| (format!("{}*", display_name(p)), *why)),
            );
        removed = grouped(rows)
            .into_iter()
            .map(|(why, names)| Group {
                reason: why.reason().to_owned(),
                names,
            })
            .collect();
        removed.push(Group {
            reason: Removed::NotAllowlisted.reason().to_owned(),
            names: vec!["every other header".to_owned()],
        });
    }
    let kind = route.response_kind();
    // A tracking endpoint's answer is tamis's own: no upstream header passes at all.
    let tracking = matches!(route.role, Role::Analytics(_));
    let response_allowed = if tracking {
        analytics::answer::HEADERS
            .iter()
            .map(|(name, why)| HeaderRow {
                header: display_name(name),
                value: (*why).to_owned(),
            })
            .collect()
    } else {
        kind.allowlist()
            .map(|(name, _, why)| HeaderRow {
                header: display_name(name),
                value: (*why).to_owned(),
            })
            .collect()
    };
    let response_removed = grouped(
        RESPONSE_STRIPPED
            .iter()
            .map(|(n, why)| (display_name(n), *why))
            .chain(
                RESPONSE_STRIPPED_PREFIXES
                    .iter()
                    .map(|(p, why)| (format!("{}*", display_name(p)), *why)),
            ),
    )
    .into_iter()
    .map(|(why, names)| Group {
        reason: why.reason().to_owned(),
        names,
    })
    .collect();
    let mut response_notes = Vec::new();
    if kind != ResponseKind::PassThrough {
        response_notes.push(
            "X-Content-Type-Options: nosniff on every answer (no body is read as another type than it states)"
                .to_owned(),
        );
    }
    if kind != ResponseKind::PassThrough && !tracking {
        response_notes.push(if route.role == Role::FontCss {
            "every answer is a stylesheet: rewritten (URLs mapped or blocked), UTF-8, or a 502".to_owned()
        } else {
            "an answer whose Content-Type names CSS is rewritten (URLs mapped or blocked), UTF-8, or a 502".to_owned()
        });
        response_notes.push(
            "ETag: tamis's own, from the bytes, on stored answers; none on others".to_owned(),
        );
    }
    if matches!(kind, ResponseKind::Static | ResponseKind::PassThrough) {
        response_notes.push(
            "Link: entries a browser would follow to another host dropped, the rest rewritten plainly"
                .to_owned(),
        );
        response_notes.push("Content-Security-Policy: report-uri and report-to removed".to_owned());
    }
    if tracking {
        response_notes.push(analytics::answer::DISCLOSURE.to_owned());
    } else {
        response_notes.push(format!(
            "Location: mapped back under {}; a redirect anywhere else is answered 502",
            c.prefix
        ));
        if c.cache.enabled && route.analytics.is_none() {
            let refreshed: Vec<String> = crate::policy::REFRESHED_BY_NOT_MODIFIED
                .iter()
                .map(|(n, _)| display_name(n))
                .collect();
            response_notes.push(if kind == ResponseKind::PassThrough {
                "answers from the cache (hit, stale, coalesced, HEAD, range) carry the stored headers; an upstream 304 updates those it carries but Content-Length (RFC 9111 §3.2), filtered as a fresh answer's".to_owned()
            } else {
                format!(
                "answers from the cache (hit, stale, coalesced, HEAD, range) carry the stored headers, filtered as a fresh answer's; an upstream 304 changes only {}: how the body is read (Content-Type, Content-Encoding, …) and whether it was rewritten stay as stored",
                refreshed.join(", ")
            )
            });
            response_notes.push(if kind == ResponseKind::PassThrough {
                "Set-Cookie: withheld; an answer that sets one is not stored (the visitor's cookies reach this upstream)".to_owned()
            } else {
                "Set-Cookie: withheld, and the answer stored all the same (no visitor cookie ever reaches this upstream)".to_owned()
            });
        }
    }
    let analytics = match (&route.analytics, &c.analytics) {
        (Some(rt), Some(a)) => Some(disclose_analytics(
            rt.protocol,
            a,
            rt.pseudonyms.key_store().is_some(),
        )),
        _ => None,
    };
    RouteDisclosure {
        name: c.name.clone(),
        kind: c.kind.as_str(),
        part: match route.role {
            Role::FontCss => Some("CSS"),
            Role::FontFiles => Some("font files"),
            _ => None,
        },
        prefix: route.prefix.clone(),
        upstream,
        upstream_host,
        jurisdiction: c.jurisdiction.as_str(),
        jurisdiction_note: match c.jurisdiction {
            Jurisdiction::NonEu => "outside the EU, only the allowlist below leaves",
            Jurisdiction::Eu => {
                "under EU law; allowlist plus the visitor's User-Agent and any forward_headers"
            }
        },
        eu_reason: c.eu_reason.clone(),
        handling,
        query: match route.role {
            Role::Analytics(_) => "scrubbed parameter by parameter (see parameters)",
            _ if forwards_query => "forwarded as is",
            _ => "dropped",
        },
        cache: if c.analytics.is_some() {
            "never (tracking requests)".to_owned()
        } else if cache.disk.is_some() && route.uses_disk() {
            format!("{}; {}", cache_line(&c.cache), disk_line(&c.cache, cache))
        } else {
            cache_line(&c.cache)
        },
        pass_through: c.pass_through,
        sent,
        removed,
        response_allowed,
        response_removed,
        response_notes,
        max_upstream_connections: c.max_upstream_connections,
        rate_limit: c.rate_limit.map(|l| {
            let per_second = 1.0 / l.period.as_secs_f64().max(f64::MIN_POSITIVE);
            format!(
                "{per_second:.3} requests/s per client (address kept in memory only), bursts of {}",
                l.burst
            )
            .replace(".000 ", " ")
        }),
        analytics,
    }
}

fn disclose_analytics(
    protocol: Protocol,
    a: &crate::config::AnalyticsConfig,
    shared: bool,
) -> AnalyticsDisclosure {
    let rules = match protocol {
        Protocol::Ga4 => analytics::ga4::RULES,
        Protocol::Matomo => analytics::matomo::RULES,
        Protocol::Plausible => analytics::plausible::RULES,
        Protocol::Umami => analytics::umami::RULES,
    };
    AnalyticsDisclosure {
        endpoints: protocol.endpoints().to_vec(),
        methods: if protocol.allows(&http::Method::GET) {
            "GET, POST"
        } else {
            "POST"
        },
        max_body: a.max_body,
        parameters: analytics::describe(rules)
            .into_iter()
            .map(|(o, names)| Group {
                reason: o.as_str().to_owned(),
                names,
            })
            .collect(),
        custom_fields_kept: a.settings.allow_event_params.clone(),
        url_params_kept: a.settings.allow_url_params.clone(),
        pseudonyms: format!(
            "HMAC-SHA-256, 32 bits, key in memory only, rotated every {}{}",
            humantime::format_duration(a.rotate),
            if a.salt.is_some() {
                " (derived from salt_file: replicas agree)"
            } else if shared {
                " (one random key per period, shared by the replicas through a key store that \
                 writes nothing to disk and forgets it when the period ends; location counts \
                 likewise)"
            } else {
                ""
            }
        ),
        linkage: protocol.linkage(),
        client_address: analytics::visitor::describe_address(
            protocol,
            a.client_ip,
            a.pseudonym_bits,
        ),
        location: analytics::visitor::describe_location(protocol, a.location, a.min_visitors),
        answer_removed: if matches!(protocol, Protocol::Umami) {
            analytics::umami::ANSWER_IDENTIFIERS.to_vec()
        } else {
            Vec::new()
        },
    }
}

/// What a disk route keeps on disk, and for how long at most.
fn disk_line(rc: &RouteCache, cache: &crate::config::CacheConfig) -> String {
    let lifetime = match rc.max_ttl {
        Some(max) => format!("its lifetime (at most {})", humantime::format_duration(max)),
        None => "its lifetime".to_owned(),
    };
    format!(
        "stored answers also kept on disk (cache.disk_dir, across restarts; the same scrubbed \
         headers and body as in memory, nothing a visitor sent) for {lifetime} plus its stale \
         windows and {} for revalidation, or less when max_disk_bytes evicts it",
        humantime::format_duration(cache.keep)
    )
}

fn cache_line(rc: &RouteCache) -> String {
    if !rc.enabled {
        return "off (cache = false): every request goes upstream".into();
    }
    let mut parts = vec!["on".to_owned()];
    if let Some(min) = rc.min_ttl {
        parts.push(format!("min_ttl {}", humantime::format_duration(min)));
    }
    if let Some(max) = rc.max_ttl {
        parts.push(format!("max_ttl {}", humantime::format_duration(max)));
    }
    if !rc.stale_if_error.is_zero() {
        parts.push(format!(
            "stale_if_error {}",
            humantime::format_duration(rc.stale_if_error)
        ));
    }
    parts.push(if rc.negative_ttl.is_zero() {
        "404/410 without a lifetime not kept".to_owned()
    } else {
        format!(
            "404/410 without a lifetime kept {}",
            humantime::format_duration(rc.negative_ttl)
        )
    });
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(display_name("x-forwarded-for"), "X-Forwarded-For");
        assert_eq!(display_name("sec-ch-"), "Sec-CH-");
        assert_eq!(display_name("dnt"), "DNT");
        assert_eq!(display_name("x-real-ip"), "X-Real-IP");
    }
}

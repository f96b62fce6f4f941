//! `tamis check`: the operator's proof of what leaves. Generated from the running policy
//! tables, so it cannot drift from what the proxy does.

use std::fmt::Write as _;

use crate::config::{ClientIpLog, Config, RouteCache};
use crate::policy::{
    Allowed, Jurisdiction, Removed, UserAgent, REQUEST_ALLOWLIST, REQUEST_REMOVED,
    REQUEST_REMOVED_PREFIXES, RESPONSE_STRIPPED,
};
use crate::routes::analytics::{self, Protocol};
use crate::routes::{Role, Route, Router};

/// Header names as people write them.
fn display_name(name: &str) -> String {
    const UPPER: &[&str] = &[
        "cf", "dnt", "te", "nel", "dpr", "ect", "rtt", "ch", "ip", "gpc", "ct",
    ];
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

/// The full report for a valid config.
pub fn check_report(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", config.source.display());
    let _ = writeln!(out);
    let _ = writeln!(out, "listeners");
    if let Some(a) = config.server.listen {
        let _ = writeln!(out, "  http   {a}");
    }
    if let Some(t) = &config.server.tls {
        let _ = writeln!(
            out,
            "  https  {} (h2, http/1.1; certificate {})",
            t.listen,
            t.cert_path.display()
        );
    }
    match &config.admin {
        Some(a) => {
            let _ = writeln!(out, "  admin  {} (/metrics, /healthz)", a.listen);
        }
        None => {
            let _ = writeln!(out, "  admin  none (no metrics endpoint)");
        }
    }
    let _ = writeln!(
        out,
        "cache    {} bytes in memory, objects up to {} bytes",
        config.cache.max_bytes, config.cache.max_object_bytes
    );
    let _ = writeln!(
        out,
        "         heuristic freshness {}, stale entries kept {} for revalidation",
        if config.cache.heuristic_max.is_zero() {
            "off".to_owned()
        } else {
            format!(
                "up to {}",
                humantime::format_duration(config.cache.heuristic_max)
            )
        },
        humantime::format_duration(config.cache.keep)
    );
    let _ = writeln!(
        out,
        "log      {}",
        match (config.log.access, config.log.client_ip) {
            (false, _) => "no access log",
            (true, ClientIpLog::None) => "one line per request, no client address",
            (true, ClientIpLog::Truncated) =>
                "one line per request, client address truncated (IPv4 /24, IPv6 /48)",
        }
    );
    let _ = writeln!(
        out,
        "upstream timeouts: connect {:?}, total {:?}",
        config.upstream.connect_timeout, config.upstream.timeout
    );
    let router = Router::new(config);
    for route in router.routes() {
        let _ = writeln!(out);
        route_report(&mut out, route);
    }
    out
}

fn route_report(out: &mut String, route: &Route) {
    let c = &route.config;
    let part = match route.role {
        Role::FontCss => ", CSS",
        Role::FontFiles => ", font files",
        _ => "",
    };
    let _ = writeln!(out, "route {} ({}{part})", c.name, c.kind.as_str());
    match (&c.tiles, route.role) {
        (Some(t), Role::Tiles) => {
            let _ = writeln!(
                out,
                "  {}{{z}}/{{x}}/{{y}}.ext -> {}",
                route.prefix,
                t.template.as_str()
            );
            let _ = writeln!(
                out,
                "  tiles          z <= {}, x and y in 0..2^z, anything else 400 without an upstream request; URL built from the template{}",
                t.max_zoom,
                if t.template.as_str().contains("{s}") { ", one fixed subdomain per tile" } else { "" }
            );
        }
        _ => {
            let _ = writeln!(out, "  {} -> {}", route.prefix, route.upstream);
        }
    }
    match route.role {
        Role::FontCss => {
            let _ = writeln!(
                out,
                "  css            fetched as plain text with a fixed browser User-Agent; every URL in it mapped under {} or blocked",
                c.font_files
                    .as_ref()
                    .map_or(route.prefix.clone(), |f| format!("{} or {}", f.prefix, route.prefix))
            );
        }
        Role::FontFiles => {
            let _ = writeln!(
                out,
                "  font files     font/* types, Access-Control-Allow-Origin: *, query dropped"
            );
        }
        _ => {}
    }
    if let (Some(rt), Some(a)) = (&route.analytics, &c.analytics) {
        analytics_report(out, rt.protocol, a);
    }
    if let Some(n) = c.max_upstream_connections {
        let _ = writeln!(out, "  upstream       at most {n} requests at once");
    }
    let _ = writeln!(
        out,
        "  jurisdiction   {}",
        match c.jurisdiction {
            Jurisdiction::NonEu => "non-eu: outside the EU, only the allowlist below leaves",
            Jurisdiction::Eu =>
                "eu: under EU law; allowlist plus the visitor's User-Agent and any forward_headers",
        }
    );
    let forwards_query = c.forward_query && matches!(route.role, Role::Static | Role::FontCss);
    let _ = writeln!(
        out,
        "  query string   {}",
        match route.role {
            Role::Analytics(_) => "scrubbed parameter by parameter (see parameters)",
            _ if forwards_query => "forwarded as is",
            _ => "dropped",
        }
    );
    let cache = if c.analytics.is_some() {
        "never (tracking requests)".to_owned()
    } else {
        cache_line(&c.cache)
    };
    let _ = writeln!(out, "  cache          {cache}");
    if c.pass_through {
        let _ = writeln!(
            out,
            "  !! PASS-THROUGH: every method, body and request header (Cookie and Authorization included)"
        );
        let _ = writeln!(
            out,
            "  !! goes to {} as sent; only hop-by-hop headers are removed. EU upstreams only.",
            route.upstream.authority
        );
        let _ = writeln!(out, "  kept from the visitor (response):");
        response_rows(out, c);
        return;
    }
    let _ = writeln!(out, "  sent upstream:");
    for (name, how, why) in REQUEST_ALLOWLIST {
        let line = match how {
            Allowed::AsSent => format!("as sent by the browser ({why})"),
            Allowed::Normalized if route.role == Role::FontCss => {
                "identity (the CSS is rewritten)".to_owned()
            }
            Allowed::Normalized => (*why).to_owned(),
        };
        let _ = writeln!(out, "    {:<18} {line}", display_name(name.as_str()));
    }
    match &route.policy.user_agent {
        UserAgent::Fixed(ua) => {
            let _ = writeln!(
                out,
                "    {:<18} replaced by {:?}",
                "User-Agent",
                ua.to_str().unwrap_or("")
            );
        }
        UserAgent::Generalised => {
            let _ = writeln!(
                out,
                "    {:<18} the visitor's, generalised to browser family and major version",
                "User-Agent"
            );
        }
        UserAgent::Visitor => {
            let _ = writeln!(
                out,
                "    {:<18} as sent by the browser (EU route)",
                "User-Agent"
            );
        }
    }
    if let Some(referer) = &route.policy.referer {
        let _ = writeln!(
            out,
            "    {:<18} fixed: {:?} (the site's origin, never the visitor's page)",
            "Referer",
            referer.to_str().unwrap_or("")
        );
    }
    for extra in &route.policy.extra {
        let _ = writeln!(
            out,
            "    {:<18} as sent by the browser (forward_headers, EU route)",
            display_name(extra.as_str())
        );
    }
    let _ = writeln!(
        out,
        "    {:<18} {} (from the config, never the visitor's)",
        "Host",
        match (&c.tiles, route.role) {
            (Some(t), Role::Tiles) => t.template.sample_host(),
            _ => route.upstream.authority.to_string(),
        }
    );
    let _ = writeln!(out, "  removed:");
    let rows = REQUEST_REMOVED
        .iter()
        .filter(|(n, _)| !route.policy.extra.iter().any(|e| e.as_str() == *n))
        .map(|(n, why)| (display_name(n), *why))
        .chain(
            REQUEST_REMOVED_PREFIXES
                .iter()
                .map(|(p, why)| (format!("{}*", display_name(p)), *why)),
        );
    for (why, names) in grouped(rows) {
        let _ = writeln!(out, "    {}: {}", why.reason(), names.join(", "));
    }
    let _ = writeln!(
        out,
        "    {}: every other header",
        Removed::NotAllowlisted.reason()
    );
    let _ = writeln!(out, "  kept from the visitor (response):");
    response_rows(out, c);
}

fn analytics_report(out: &mut String, protocol: Protocol, a: &crate::config::AnalyticsConfig) {
    let rules = match protocol {
        Protocol::Ga4 => analytics::ga4::RULES,
        Protocol::Matomo => analytics::matomo::RULES,
        Protocol::Plausible => analytics::plausible::RULES,
        Protocol::Umami => analytics::umami::RULES,
    };
    let _ = writeln!(
        out,
        "  tracking       only {} is forwarded ({}), bodies up to {} bytes, never cached",
        protocol.endpoints().join(", "),
        if protocol.allows(&http::Method::GET) {
            "GET, POST"
        } else {
            "POST"
        },
        a.max_body
    );
    let _ = writeln!(out, "  parameters:");
    for (outcome, names) in analytics::describe(rules) {
        let _ = writeln!(out, "    {:<14} {}", outcome.as_str(), names.join(", "));
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "    custom fields kept (allow_event_params): {}",
        list(&a.settings.allow_event_params)
    );
    let _ = writeln!(
        out,
        "    URL parameters kept (allow_url_params): {}",
        list(&a.settings.allow_url_params)
    );
    let _ = writeln!(
        out,
        "    pseudonyms: HMAC-SHA-256, 32 bits, key in memory only, rotated every {}{}",
        humantime::format_duration(a.rotate),
        if a.salt.is_some() {
            " (derived from salt_file: replicas agree)"
        } else {
            ""
        }
    );
    if a.client_ip == ClientIpLog::Truncated {
        let _ = writeln!(
            out,
            "    client address: sent truncated (IPv4 /24, IPv6 /48) in X-Forwarded-For (EU route)"
        );
    } else {
        let _ = writeln!(out, "    client address: never sent");
    }
    if matches!(protocol, Protocol::Umami) {
        let _ = writeln!(
            out,
            "    answer: {} removed before it reaches the visitor",
            analytics::umami::ANSWER_IDENTIFIERS.join(", ")
        );
    }
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

fn response_rows(out: &mut String, c: &crate::config::RouteConfig) {
    let rows = RESPONSE_STRIPPED
        .iter()
        .map(|(n, why)| (display_name(n), *why));
    for (why, names) in grouped(rows) {
        let _ = writeln!(out, "    {}: {}", why.reason(), names.join(", "));
    }
    let _ = writeln!(out, "    Link: entries naming another host");
    let _ = writeln!(
        out,
        "    Location: mapped back under {}; a redirect anywhere else is answered 502",
        c.prefix
    );
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

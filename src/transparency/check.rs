//! `tamis check`'s text for the operator: one line per route part (`--quiet`) or the full
//! report, written from the same disclosures `/.well-known/tamis` publishes.

use std::fmt::Write as _;

use super::{disclose, log_line, AnalyticsDisclosure, RouteDisclosure};
use crate::config::Config;
use crate::routes::Router;

/// `tamis check --quiet`: the config's line, its warnings, then one line per route part.
pub fn check_summary(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid (hash {}), {} routes",
        config.source.display(),
        config.hash,
        config.routes.len()
    );
    for w in &config.warnings {
        let _ = writeln!(out, "warning: {}: {}: {}", w.at, w.key, w.message);
    }
    for r in disclose(&Router::new(config), &config.cache) {
        let part = r.part.map(|p| format!(", {p}")).unwrap_or_default();
        let ua = r
            .sent
            .iter()
            .find(|h| h.header == "User-Agent")
            .map_or("as sent", |h| {
                if h.value.starts_with("replaced") {
                    "fixed"
                } else if h.value.contains("generalised") {
                    "generalised"
                } else {
                    "the visitor's"
                }
            });
        let sending = if r.pass_through {
            "!! PASS-THROUGH: every header".to_owned()
        } else {
            format!(
                "{} headers leave, User-Agent {ua}",
                r.sent.iter().filter(|h| h.header != "Host").count()
            )
        };
        let cache = r.cache.split([',', ':']).next().unwrap_or("");
        // What an analytics route tells of the visitor besides the payload, when it tells any.
        let mut visitor = String::new();
        let analytics = config.routes.iter().find(|c| c.name == r.name);
        if let Some(a) = analytics.and_then(|c| c.analytics.as_ref()) {
            use crate::analytics::visitor::ClientAddress;
            if a.client_ip != ClientAddress::None {
                let _ = write!(visitor, "; address {}", a.client_ip.as_str());
            }
            if a.location != crate::analytics::geo::Precision::None {
                let _ = write!(
                    visitor,
                    "; location {} past {} visitors",
                    a.location.as_str(),
                    a.min_visitors
                );
            }
        }
        let jurisdiction = match &r.eu_reason {
            Some(why) => format!("{} ({why:?})", r.jurisdiction),
            None => r.jurisdiction.to_owned(),
        };
        let _ = writeln!(
            out,
            "route {} ({}{part}): {} -> {} [{jurisdiction}; {sending}; cache {cache}{visitor}]",
            r.name, r.kind, r.prefix, r.upstream
        );
    }
    out
}

/// The full report for a valid config.
pub fn check_report(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid (hash {})",
        config.source.display(),
        config.hash
    );
    for w in &config.warnings {
        let _ = writeln!(out, "warning: {}: {}: {}", w.at, w.key, w.message);
    }
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
    if !config.server.trusted_proxies.is_empty() {
        let list: Vec<String> = config
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        let _ = writeln!(
            out,
            "  proxy  {} (their X-Forwarded-For names the client, for rate limits only)",
            list.join(", ")
        );
    }
    match &config.admin {
        Some(a) => {
            let _ = writeln!(
                out,
                "  admin  {} (/metrics, /healthz, /status, POST /reload, POST /cache/purge)",
                a.listen
            );
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
    match &config.cache.disk {
        Some(d) => {
            let routes: Vec<String> = Router::new(config)
                .routes()
                .iter()
                .filter(|r| r.uses_disk())
                .map(|r| match r.role {
                    crate::routes::Role::FontFiles => format!("{} (files)", r.config.name),
                    crate::routes::Role::FontCss => format!("{} (css)", r.config.name),
                    _ => r.config.name.clone(),
                })
                .collect();
            let _ = writeln!(
                out,
                "disk     {}, up to {} bytes (file lengths); kept there: {}; each answer as long \
                 as memory would keep it, or less when the bound evicts it",
                d.dir.display(),
                d.max_bytes,
                if routes.is_empty() {
                    "nothing (no route uses it)".to_owned()
                } else {
                    routes.join(", ")
                }
            );
        }
        None => {
            let _ = writeln!(out, "disk     none (cache.disk_dir not set): memory only");
        }
    }
    let _ = writeln!(out, "log      {}", log_line(config));
    let _ = writeln!(
        out,
        "public   {}",
        config.transparency.as_ref().map_or(
            "no transparency page (transparency.enabled = false)".to_owned(),
            |t| {
                let probe = if t.probe {
                    format!(
                        "; POST {} answers what a request would send upstream, sending nothing",
                        crate::transparency::probe::probe_path(&t.path)
                    )
                } else {
                    "; dry-run probe off (transparency.probe)".to_owned()
                };
                format!("{} discloses what follows (HTML, or JSON){probe}", t.path)
            }
        )
    );
    let _ = writeln!(
        out,
        "upstream timeouts: connect {:?}, total {:?}; idle connections kept: {} per host, {:?}",
        config.upstream.connect_timeout,
        config.upstream.timeout,
        config.upstream.keepalive,
        config.upstream.keepalive_timeout
    );
    for route in disclose(&Router::new(config), &config.cache) {
        let _ = writeln!(out);
        route_text(&mut out, &route);
    }
    out
}

fn route_text(out: &mut String, r: &RouteDisclosure) {
    let part = r.part.map(|p| format!(", {p}")).unwrap_or_default();
    let _ = writeln!(out, "route {} ({}{part})", r.name, r.kind);
    if r.kind == "tiles" {
        let _ = writeln!(out, "  {}{{z}}/{{x}}/{{y}}.ext -> {}", r.prefix, r.upstream);
    } else {
        let _ = writeln!(out, "  {} -> {}", r.prefix, r.upstream);
    }
    for h in &r.handling {
        let _ = writeln!(out, "  {h}");
    }
    if let Some(a) = &r.analytics {
        analytics_text(out, a);
    }
    if let Some(n) = r.max_upstream_connections {
        let _ = writeln!(out, "  upstream       at most {n} requests at once");
    }
    let _ = writeln!(
        out,
        "  jurisdiction   {}: {}",
        r.jurisdiction, r.jurisdiction_note
    );
    if let Some(why) = &r.eu_reason {
        let _ = writeln!(out, "  eu reason      {why} (the operator's eu_reason)");
    }
    let _ = writeln!(out, "  query string   {}", r.query);
    let _ = writeln!(out, "  cache          {}", r.cache);
    if let Some(rate) = &r.rate_limit {
        let _ = writeln!(out, "  rate limit     {rate}");
    }
    if r.pass_through {
        let _ = writeln!(
            out,
            "  !! PASS-THROUGH: every method, body and request header (Cookie and Authorization included)"
        );
        let _ = writeln!(
            out,
            "  !! goes to {} as sent; only hop-by-hop headers are removed. EU upstreams only.",
            r.upstream_host
        );
    } else {
        let _ = writeln!(out, "  sent upstream:");
        for row in &r.sent {
            let _ = writeln!(out, "    {:<18} {}", row.header, row.value);
        }
        let _ = writeln!(out, "  removed:");
        for g in &r.removed {
            let _ = writeln!(out, "    {}: {}", g.reason, g.names.join(", "));
        }
    }
    if r.pass_through {
        let _ = writeln!(
            out,
            "  passed to the visitor (response): every end-to-end header but those withheld"
        );
        let _ = writeln!(out, "  withheld from the visitor (response):");
    } else {
        let _ = writeln!(out, "  passed to the visitor (response), nothing else:");
        for row in &r.response_allowed {
            let _ = writeln!(out, "    {:<29} {}", row.header, row.value);
        }
        let _ = writeln!(
            out,
            "  withheld from the visitor (response): every other header, among them"
        );
    }
    for g in &r.response_removed {
        let _ = writeln!(out, "    {}: {}", g.reason, g.names.join(", "));
    }
    let _ = writeln!(out, "  also:");
    for n in &r.response_notes {
        let _ = writeln!(out, "    {n}");
    }
}

fn analytics_text(out: &mut String, a: &AnalyticsDisclosure) {
    let _ = writeln!(
        out,
        "  tracking       only {} is forwarded ({}), bodies up to {} bytes, never cached",
        a.endpoints.join(", "),
        a.methods,
        a.max_body
    );
    let _ = writeln!(out, "  parameters:");
    for g in &a.parameters {
        let _ = writeln!(out, "    {:<14} {}", g.reason, g.names.join(", "));
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
        list(&a.custom_fields_kept)
    );
    let _ = writeln!(
        out,
        "    URL parameters kept (allow_url_params): {}",
        list(&a.url_params_kept)
    );
    let _ = writeln!(out, "    pseudonyms: {}", a.pseudonyms);
    let _ = writeln!(out, "    linkage: {}", a.linkage);
    let _ = writeln!(out, "    client address: {}", a.client_address);
    let _ = writeln!(out, "    location: {}", a.location);
    if !a.answer_removed.is_empty() {
        let _ = writeln!(
            out,
            "    answer: {} removed before it reaches the visitor",
            a.answer_removed.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_states_what_a_304_may_change_and_what_set_cookie_does() {
        let config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\n\
             upstream = \"https://cdn.example/\"\n\
             [[route]]\nname = \"app\"\nkind = \"static\"\nprefix = \"/app/\"\n\
             upstream = \"https://app.example/\"\njurisdiction = \"eu\"\npass_through = true\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let text = check_report(&config);
        let rule = "an upstream 304 changes only Cache-Control, Expires, Date, Age, ETag, \
                    Last-Modified: how the body is read";
        assert_eq!(text.matches(rule).count(), 1, "{text}");
        assert!(text.contains("an upstream 304 updates those it carries but Content-Length"));
        assert!(
            text.contains("Set-Cookie: withheld, and the answer stored all the same"),
            "{text}"
        );
        assert!(
            text.contains("Set-Cookie: withheld; an answer that sets one is not stored"),
            "{text}"
        );
    }
}

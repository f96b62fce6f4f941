//! `[[route]]` blocks for what no route covers: a plan per kind of third party, names and
//! prefixes made unique, each block checked by parsing it as a config.

use std::fmt::Write as _;

use super::classify::{coverage, is_ga_host, is_gravatar, strip_subdomain, GRAVATAR_NOTE};
use super::url::{authority_of, host_of, path_of};
use super::{Coverage, Finding, Load, Suggestion};
use crate::config::Config;
use crate::mirrors::tiles;
use crate::routes::Router;

/// A route to suggest, before its name and prefix are made unique.
struct Plan {
    key: String,
    name: String,
    prefix: String,
    kind: &'static str,
    upstream: String,
    /// Fonts: (files_prefix under the prefix, files_upstream).
    files: Option<(&'static str, String)>,
    /// Extra `key = value` lines (values already TOML).
    extra: Vec<(&'static str, String)>,
    /// Comment lines; `{prefix}` and `{origin}` are filled in.
    comments: Vec<String>,
    urls: Vec<String>,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Sanitised host, for route names and prefixes: `images.cdn.example:8443` → `images-cdn-example-8443`.
fn slug(authority: &str) -> String {
    let mut out = String::new();
    for c in authority.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "third-party".into()
    } else {
        out
    }
}

/// What kind of route would serve `url`.
fn plan_for(url: &str, places: &[String], config: &Config, origin: Option<&str>) -> Option<Plan> {
    let authority = authority_of(url)?.to_owned();
    let host = host_of(url)?.to_owned();
    let scheme = if url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let path = path_of(url);
    let path_only = path.split('?').next().unwrap_or("/");
    let file = path_only.rsplit('/').next().unwrap_or("");
    let dir = &path_only[..path_only.len() - file.len()];
    let plan = |key: &str, name: &str, prefix: &str, kind: &'static str, upstream: String| Plan {
        key: key.to_owned(),
        name: name.to_owned(),
        prefix: prefix.to_owned(),
        kind,
        upstream,
        files: None,
        extra: Vec::new(),
        comments: Vec::new(),
        urls: Vec::new(),
    };
    let whole_host = format!("{scheme}://{authority}/");
    let script_comment = "this mirrors the script only, its hits need their own route";

    if host == "fonts.googleapis.com" || host == "fonts.gstatic.com" {
        let mut p = plan(
            "google-fonts",
            "google-fonts",
            "/fonts/",
            "fonts",
            "https://fonts.googleapis.com/".into(),
        );
        p.files = Some(("files/", "https://fonts.gstatic.com/".into()));
        p.comments
            .push("Google Fonts: <link rel=\"stylesheet\" href=\"{prefix}css2?family=…\">".into());
        return Some(p);
    }
    if host == "fonts.bunny.net" {
        let mut p = plan(
            "bunny-fonts",
            "bunny-fonts",
            "/bunny-fonts/",
            "fonts",
            "https://fonts.bunny.net/".into(),
        );
        p.files = Some(("files/", "https://fonts.bunny.net/".into()));
        p.extra.push(("jurisdiction", toml_str("eu")));
        return Some(p);
    }
    if let Some(p) = tile_plan(url, &host, config, origin) {
        return Some(p);
    }
    if is_ga_host(&host) {
        if path_only.ends_with("/g/collect") {
            let mut p = plan("ga4", "ga", "/a/", "ga4", whole_host);
            p.extra.push(("allow_event_params", "[]".into()));
            p.extra.push(("allow_url_params", "[]".into()));
            p.comments.push("GA4 hits, scrubbed: in gtag's config set server_container_url: '{origin}{prefix_no_slash}'".into());
            return Some(p);
        }
        let mut p = plan(
            &format!("static {whole_host}"),
            &slug(&host),
            &format!("/{}/", slug(&host)),
            "static",
            whole_host,
        );
        p.comments.push(script_comment.into());
        return Some(p);
    }
    if host.ends_with("googletagmanager.com") {
        if path_only.starts_with("/gtag/") {
            let mut p = plan(
                "gtag",
                "gtag",
                "/gtag/",
                "static",
                format!("{scheme}://{authority}/gtag/"),
            );
            p.comments.push("the gtag.js script: <script async src=\"{prefix}js?id=G-…\"> (its hits need a kind = \"ga4\" route)".into());
            return Some(p);
        }
        let mut p = plan("gtm", "gtm", "/gtm/", "static", whole_host);
        p.comments.push(
            "Google Tag Manager: the container loads further third-party tags of its own".into(),
        );
        return Some(p);
    }
    let is_umami = places.iter().any(|p| p.contains("Umami")) || host.contains("umami");
    let is_plausible = places.iter().any(|p| p.contains("Plausible")) || host == "plausible.io";
    if path_only == "/api/send" && is_umami {
        let mut p = plan(
            &format!("umami {whole_host}"),
            "umami",
            "/u/",
            "umami",
            whole_host,
        );
        p.comments.push(
            "Umami hits, scrubbed: on the script set data-host-url=\"{origin}{prefix_no_slash}\""
                .into(),
        );
        return Some(p);
    }
    if path_only == "/api/event" && is_plausible {
        let mut p = plan(
            &format!("plausible {whole_host}"),
            "plausible",
            "/p/",
            "plausible",
            whole_host,
        );
        p.comments.push(
            "Plausible hits, scrubbed: on the script set data-api=\"{prefix}api/event\"".into(),
        );
        if host == "plausible.io" {
            p.extra.push(("jurisdiction", toml_str("eu")));
        }
        return Some(p);
    }
    if file == "matomo.php" || file == "piwik.php" {
        let mut p = plan(
            &format!("matomo {scheme}://{authority}{dir}"),
            "matomo",
            "/m/",
            "matomo",
            format!("{scheme}://{authority}{dir}"),
        );
        p.comments.push(format!(
            "Matomo hits, scrubbed: in the snippet _paq.push(['setTrackerUrl', '{{prefix}}{file}'])"
        ));
        return Some(p);
    }
    if host == "plausible.io" && path_only.starts_with("/js/") {
        let mut p = plan(
            "plausible-js",
            "plausible-js",
            "/plausible-js/",
            "static",
            "https://plausible.io/js/".into(),
        );
        p.extra.push(("jurisdiction", toml_str("eu")));
        p.comments.push(format!("the Plausible script: <script defer data-domain=… src=\"{{prefix}}{file}\">; {script_comment}"));
        return Some(p);
    }
    if file == "matomo.js" || file == "piwik.js" || (is_umami && file == "script.js") {
        let (name, prefix) = if is_umami {
            ("umami-js", "/umami-js/")
        } else {
            ("matomo-js", "/matomo-js/")
        };
        let mut p = plan(
            &format!("{name} {scheme}://{authority}{dir}"),
            name,
            prefix,
            "static",
            format!("{scheme}://{authority}{dir}"),
        );
        let how = if is_umami {
            format!("<script defer src=\"{{prefix}}{file}\" data-website-id=…>")
        } else {
            format!("in the snippet g.src='{{prefix}}{file}'")
        };
        p.comments
            .push(format!("the script: {how}; {script_comment}"));
        return Some(p);
    }
    if host == "cdn.jsdelivr.net" {
        let seg = path_only
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if !seg.is_empty() && path_only.len() > seg.len() + 1 {
            let (name, prefix) = if seg == "npm" {
                ("jsdelivr".to_owned(), "/cdn/".to_owned())
            } else {
                (
                    format!("jsdelivr-{}", slug(seg)),
                    format!("/cdn-{}/", slug(seg)),
                )
            };
            let up = format!("https://cdn.jsdelivr.net/{seg}/");
            return Some(plan(&up, &name, &prefix, "static", up.clone()));
        }
    }
    if is_gravatar(&host) && path_only.starts_with("/avatar/") {
        let up = "https://secure.gravatar.com/avatar/".to_owned();
        let mut p = plan(&up, "gravatar", "/avatars/", "static", up.clone());
        // `s`, `d` and `r` (size, default image, rating) shape the answer.
        p.extra.push(("forward_query", "true".into()));
        p.comments.push(format!(
            "Gravatar: this hides the visitor from Gravatar; but {GRAVATAR_NOTE}"
        ));
        return Some(p);
    }
    if host == "cdnjs.cloudflare.com" && path_only.starts_with("/ajax/libs/") {
        let up = "https://cdnjs.cloudflare.com/ajax/libs/".to_owned();
        return Some(plan(&up, "cdnjs", "/cdnjs/", "static", up.clone()));
    }
    if host == "unpkg.com" {
        return Some(plan(
            "https://unpkg.com/",
            "unpkg",
            "/unpkg/",
            "static",
            "https://unpkg.com/".into(),
        ));
    }
    let mut p = plan(
        &format!("static {whole_host}"),
        &slug(&authority),
        &format!("/{}/", slug(&authority)),
        "static",
        whole_host,
    );
    if places.iter().any(|p| {
        p.starts_with("<iframe") || p.starts_with("<frame") || p.starts_with("<noscript> <iframe")
    }) {
        p.comments.push(
            "an embedded page makes third-party requests of its own: this covers its document only"
                .into(),
        );
    }
    Some(p)
}

/// A tiles route for a `{z}/{x}/{y}` template string, or a tile from an OpenStreetMap host.
fn tile_plan(url: &str, host: &str, config: &Config, origin: Option<&str>) -> Option<Plan> {
    let scheme = if url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    let authority = authority_of(url)?;
    let path = path_of(url).split('?').next().unwrap_or("/");
    let osm = tiles::is_osm_host(host);
    let had_query = url.contains('?');
    let template = if ["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p)) {
        format!("{scheme}://{authority}{path}")
    } else if osm {
        // A concrete tile: /…/z/x/y[@2x].ext
        let segs: Vec<&str> = path.rsplitn(4, '/').collect();
        let [file, x, z, lead] = segs.as_slice() else {
            return None;
        };
        let (stem, ext) = file.rsplit_once('.')?;
        let y = stem.trim_end_matches("@2x");
        if ![z, x, &y]
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        let r = if stem.ends_with("@2x") { "{r}" } else { "" };
        format!("{scheme}://{authority}{lead}/{{z}}/{{x}}/{{y}}{r}.{ext}")
    } else {
        return None;
    };
    // OpenStreetMap asks not to use the old a/b/c subdomains of tile.openstreetmap.org.
    let bare_host = strip_subdomain(authority, &[]);
    let template = if bare_host == "tile.openstreetmap.org" {
        template.replacen(authority, bare_host, 1)
    } else {
        template
    };
    let subs: Vec<String> = if template.contains("{s}") {
        vec!["a".into(), "b".into(), "c".into()]
    } else {
        Vec::new()
    };
    tiles::Template::new(&template, subs.clone()).ok()?;
    let (name, prefix) = if bare_host == "tile.openstreetmap.org" {
        ("osm".to_owned(), "/tiles/osm/".to_owned())
    } else {
        let s = slug(&strip_subdomain(authority, &[]).replace("{s}.", ""));
        (s.clone(), format!("/tiles/{s}/"))
    };
    let mut p = Plan {
        key: format!("tiles {template}"),
        name,
        prefix,
        kind: "tiles",
        upstream: template,
        files: None,
        extra: Vec::new(),
        comments: vec!["map tiles: L.tileLayer('{prefix}{z}/{x}/{y}.png', …)".into()],
        urls: Vec::new(),
    };
    if had_query {
        p.comments.push("the page's URL had a query (an API key?): add it to upstream if the provider needs one".into());
    }
    if !subs.is_empty() {
        let list: Vec<String> = subs.iter().map(|s| toml_str(s)).collect();
        p.extra
            .push(("subdomains", format!("[{}]", list.join(", "))));
    }
    p.extra.push(("max_zoom", "19".into()));
    let site = origin.map_or_else(|| "https://site.example/".to_owned(), |o| format!("{o}/"));
    p.extra.push(("referer", toml_str(&site)));
    p.extra.push(("max_upstream_connections", "4".into()));
    if osm {
        let ua = config.upstream.user_agent.to_str().unwrap_or("");
        if !tiles::has_contact(ua) {
            p.comments.push("OpenStreetMap's tile policy asks for a contact in the User-Agent: a page or e-mail of yours".into());
            p.extra
                .push(("user_agent", toml_str(&format!("tamis (+{site})"))));
        }
    }
    Some(p)
}

/// `[[route]]` blocks serving the URLs no route covers, with names and prefixes unused in
/// `config`, each checked by parsing it as a config; `origin` is the site's (for referers and
/// hints).
pub fn suggest(findings: &[Finding], config: &Config, origin: Option<&str>) -> Vec<Suggestion> {
    let mut plans: Vec<Plan> = Vec::new();
    for f in findings {
        if f.load == Load::Hint || !matches!(f.coverage, Coverage::NotCovered) {
            continue;
        }
        let Some(plan) = plan_for(&f.url, &f.places, config, origin) else {
            continue;
        };
        match plans.iter_mut().find(|p| p.key == plan.key) {
            Some(p) => p.urls.push(f.url.clone()),
            None => {
                let mut plan = plan;
                plan.urls.push(f.url.clone());
                plans.push(plan);
            }
        }
    }
    let mut names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    let mut prefixes: Vec<String> = config
        .routes
        .iter()
        .flat_map(|r| {
            std::iter::once(r.prefix.clone()).chain(r.font_files.as_ref().map(|f| f.prefix.clone()))
        })
        .collect();
    let ua = config
        .upstream
        .user_agent
        .to_str()
        .unwrap_or(crate::config::DEFAULT_USER_AGENT);
    let header = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nuser_agent = {}\n",
        toml_str(ua)
    );
    let mut out: Vec<Suggestion> = Vec::new();
    for plan in plans {
        let name = unique(&plan.name, &names, |base, n| format!("{base}-{n}"));
        let free = |p: &str| {
            !prefixes.iter().any(|x| x == p)
                && plan
                    .files
                    .as_ref()
                    .is_none_or(|(f, _)| !prefixes.iter().any(|x| *x == format!("{p}{f}")))
        };
        let mut prefix = plan.prefix.clone();
        let mut n = 2;
        while !free(&prefix) {
            prefix = format!("{}-{n}/", plan.prefix.trim_end_matches('/'));
            n += 1;
        }
        let fill = |s: &str| {
            s.replace("{prefix_no_slash}", prefix.trim_end_matches('/'))
                .replace("{prefix}", &prefix)
                .replace("{origin}", origin.unwrap_or("https://SITE"))
        };
        let mut toml = String::new();
        for c in &plan.comments {
            let _ = writeln!(toml, "# {}", fill(c));
        }
        let _ = writeln!(toml, "[[route]]");
        let _ = writeln!(toml, "name = {}", toml_str(&name));
        let _ = writeln!(toml, "kind = {}", toml_str(plan.kind));
        let _ = writeln!(toml, "prefix = {}", toml_str(&prefix));
        let _ = writeln!(toml, "upstream = {}", toml_str(&plan.upstream));
        if let Some((files, up)) = &plan.files {
            let _ = writeln!(
                toml,
                "files_prefix = {}",
                toml_str(&format!("{prefix}{files}"))
            );
            let _ = writeln!(toml, "files_upstream = {}", toml_str(up));
        }
        for (k, v) in &plan.extra {
            let _ = writeln!(toml, "{k} = {v}");
        }
        // Never suggest what `tamis check` would refuse.
        let text = format!("{header}{toml}");
        let Ok(alone) = Config::parse(&text, std::path::Path::new("suggestion.toml")) else {
            continue;
        };
        let router = Router::new(&alone);
        let serves = plan
            .urls
            .iter()
            .filter_map(|u| match coverage(u, Load::Resource, None, &router) {
                Coverage::Covered { first_party, .. } => Some((u.clone(), first_party)),
                _ => None,
            })
            .collect();
        names.push(name.clone());
        prefixes.push(prefix.clone());
        if let Some((files, _)) = &plan.files {
            prefixes.push(format!("{prefix}{files}"));
        }
        out.push(Suggestion { name, toml, serves });
    }
    out
}

fn unique(base: &str, taken: &[String], numbered: impl Fn(&str, usize) -> String) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| numbered(base, n))
        .find(|c| !taken.iter().any(|t| t == c))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::audit::classify::classify;
    use crate::audit::classify::tests::{config, CONFIG};
    use crate::audit::scan::scan;

    #[test]
    fn suggestions_are_valid_routes_that_cover_what_they_were_made_for() {
        let html = br#"<link rel=stylesheet href="https://fonts.googleapis.com/css2?family=Inter">
<script src="https://www.googletagmanager.com/gtag/js?id=G-1"></script>
<script src="https://cdn.jsdelivr.net/npm/leaflet@1.9.4/dist/leaflet.js"></script>
<script src="https://cdn.jsdelivr.net/gh/user/repo@1/x.js"></script>
<script src="https://unpkg.com/htmx.org@2.0.0"></script>
<script>L.tileLayer('https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png');
L.tileLayer('https://{s}.basemaps.cartocdn.com/light_all/{z}/{x}/{y}{r}.png');
L.tileLayer('https://api.maptiler.com/maps/{z}/{x}/{y}.png?key={accessToken}');</script>
<img src="https://tile.openstreetmap.de/3/4/5.png">
<img src="https://images.example-cdn.net:8443/a.jpg"><iframe src="https://www.youtube-nocookie.com/embed/x"></iframe>
<script defer data-domain="site.example" src="https://plausible.io/js/script.js"></script>
<script defer src="https://cloud.umami.is/script.js" data-website-id="1"></script>
<script>var _paq=[];var u="https://stats.other.example/";_paq.push(['setTrackerUrl', u+'matomo.php']);g.src=u+'matomo.js';</script>
<img src="https://fonts.gstatic.com/s/inter/v1/a.woff2">"#;
        let cfg = config();
        let found = scan(html).unwrap();
        let findings = classify(&found, Some("site.example"), &Router::new(&cfg));
        let suggestions = suggest(&findings, &cfg, Some("https://site.example"));
        let all: String = suggestions
            .iter()
            .map(|s| s.toml.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        // Appended to the running config, every suggestion passes `tamis check`.
        let combined = format!("{CONFIG}\n{all}");
        let checked = Config::parse(&combined, Path::new("t.toml"));
        assert!(checked.is_ok(), "{all}\n{:?}", checked.err());
        let names: Vec<&str> = suggestions.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "google-fonts",
                "gtag",
                "jsdelivr",
                "jsdelivr-gh",
                "unpkg",
                "osm",
                "basemaps-cartocdn-com",
                "api-maptiler-com",
                "tile-openstreetmap-de",
                "images-example-cdn-net-8443",
                "plausible-js",
                "plausible",
                "umami-js",
                "umami",
                "matomo-js",
                "matomo",
            ],
            "the gtag hits are covered by the config's ga route (another GA region): {all}"
        );
        // With the suggestions added, everything the page loads is covered.
        let router = Router::new(&checked.unwrap());
        let after = classify(&found, Some("site.example"), &router);
        let left: Vec<&str> = after
            .iter()
            .filter(|f| !f.covered())
            .map(|f| f.url.as_str())
            .collect();
        // The player needs a facade, not a route.
        assert_eq!(left, ["https://www.youtube-nocookie.com/embed/x"]);
        let serves = |url: &str| {
            suggestions
                .iter()
                .flat_map(|s| &s.serves)
                .find(|(u, _)| u == url)
                .map(|(_, p)| p.as_str())
        };
        assert_eq!(
            serves("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"),
            Some("/tiles/osm/{z}/{x}/{y}.png")
        );
        assert_eq!(
            serves("https://fonts.googleapis.com/css2?family=Inter"),
            Some("/fonts/css2?family=Inter")
        );
        assert_eq!(
            serves("https://fonts.gstatic.com/s/inter/v1/a.woff2"),
            Some("/fonts/files/s/inter/v1/a.woff2")
        );
        assert!(
            all.contains("upstream = \"https://tile.openstreetmap.org/{z}/{x}/{y}.png\""),
            "{all}"
        );
        assert!(all.contains("referer = \"https://site.example/\""), "{all}");
    }

    #[test]
    fn ga_suggestion_when_the_config_has_none() {
        let cfg = Config::parse("[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"ga\"\nkind = \"static\"\nprefix = \"/a/\"\nupstream = \"https://x.example/\"\n[[route]]\nname = \"osm\"\nkind = \"static\"\nprefix = \"/tiles/osm/\"\nupstream = \"https://y.example/\"\n", Path::new("t.toml")).unwrap();
        let found = scan(b"<script>gtag('config','G-1')</script><script>L.tileLayer('//tile.openstreetmap.org/{z}/{x}/{y}.png')</script>").unwrap();
        let findings = classify(&found, None, &Router::new(&cfg));
        let s = suggest(&findings, &cfg, None);
        assert_eq!(s.len(), 2);
        assert!(
            s[0].toml.contains("name = \"osm-2\"")
                && s[0].toml.contains("prefix = \"/tiles/osm-2/\""),
            "{}",
            s[0].toml
        );
        assert!(
            s[0].toml
                .contains("user_agent = \"tamis (+https://site.example/)\""),
            "OSM needs a contact: {}",
            s[0].toml
        );
        assert!(
            s[1].toml.contains("name = \"ga-2\"") && s[1].toml.contains("prefix = \"/a-2/\""),
            "{}",
            s[1].toml
        );
        assert_eq!(
            s[1].serves,
            vec![(
                "https://www.google-analytics.com/g/collect".to_owned(),
                "/a-2/g/collect".to_owned()
            )]
        );
    }
}

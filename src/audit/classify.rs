//! Which found URLs are third-party, merged per URL, and which route serves each (with
//! the first-party URL), tile templates matched against a tiles route's template.

use super::url::{authority_of, host_of, normal_host, path_of};
use super::{Coverage, Finding, Found, Load};
use crate::analytics::Protocol;
use crate::mirrors::{fonts, tiles};
use crate::routes::{css, Role, Route, Router};

/// Keeps the third-party URLs (host other than `site_host`; all of them without a site),
/// merges repeats, and matches each against the routes.
pub fn classify(found: &[Found], site_host: Option<&str>, router: &Router) -> Vec<Finding> {
    let site = site_host.map(normal_host);
    let mut out: Vec<Finding> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for f in found {
        let Some(host) = host_of(&f.url) else {
            continue;
        };
        if site.as_deref() == Some(host) {
            continue;
        }
        match index.get(f.url.as_str()).and_then(|&i| out.get_mut(i)) {
            Some(x) => {
                if !x.places.contains(&f.place) {
                    x.places.push(f.place.clone());
                }
                x.load = x.load.max(f.load);
            }
            None => {
                index.insert(&f.url, out.len());
                out.push(Finding {
                    url: f.url.clone(),
                    places: vec![f.place.clone()],
                    load: f.load,
                    coverage: Coverage::NotCovered,
                });
            }
        }
    }
    for x in &mut out {
        x.coverage = coverage(&x.url, x.load, site.as_deref(), router);
    }
    out
}

pub(super) fn coverage(url: &str, load: Load, site: Option<&str>, router: &Router) -> Coverage {
    if let Some(player) = host_of(url).and_then(video_player) {
        if load != Load::Hint {
            return Coverage::Facade { player };
        }
    }
    if load == Load::Hint {
        let host = host_of(url).unwrap_or("");
        let serving = router
            .routes()
            .iter()
            .find(|r| serves_host(r, host))
            .map(|r| r.config.name.clone());
        return Coverage::Hint { serving };
    }
    let font_file =
        fonts::font_content_type(path_of(url).split('?').next().unwrap_or("")).is_some();
    let path = path_of(url).split('?').next().unwrap_or("");
    let tracking = [
        Protocol::Ga4,
        Protocol::Matomo,
        Protocol::Plausible,
        Protocol::Umami,
    ]
    .iter()
    .flat_map(|p| p.endpoints())
    .any(|e| path.ends_with(&format!("/{e}")));
    let mut best: Option<((bool, usize, u8), Coverage)> = None;
    for route in router.routes() {
        let route: &Route = route;
        let Some((first_party, note)) = map_url(route, url, site) else {
            continue;
        };
        let analytics = matches!(route.role, Role::Analytics(_));
        // Tracking hits through a mirror would reach the tool unscrubbed: only an analytics
        // route covers them.
        if !analytics && tracking {
            continue;
        }
        // Analytics first, then the most specific upstream base; a font file goes to the
        // files part.
        let role_fit = match (route.role, font_file) {
            (Role::FontFiles, true) => 1,
            (Role::FontFiles, false) => 0,
            (_, true) => 0,
            (_, false) => 1,
        };
        let rank = (analytics, route.upstream.path.len(), role_fit);
        if best.as_ref().is_none_or(|(r, ..)| rank > *r) {
            let covered = Coverage::Covered {
                route: route.config.name.clone(),
                first_party,
                note,
            };
            best = Some((rank, covered));
        }
    }
    match best {
        Some((
            _,
            Coverage::Covered {
                route,
                first_party,
                note,
            },
        )) if host_of(url).is_some_and(is_gravatar) => Coverage::Covered {
            route,
            first_party,
            note: Some(note.map_or(GRAVATAR_NOTE.to_owned(), |n| {
                format!("{n}; {GRAVATAR_NOTE}")
            })),
        },
        Some((_, c)) => c,
        None => Coverage::NotCovered,
    }
}

/// What a mirror of Gravatar leaves: the visitor is hidden, the commenter is not.
pub(super) const GRAVATAR_NOTE: &str = "a Gravatar URL is a hash of the commenter's e-mail \
     address, which the page still publishes (and which a lookup of known addresses reverses): \
     avatars stored on the site, or generated ones, publish none";

/// The video player a host serves, if it is one: its embeds, player scripts and API load the
/// video, thumbnails and further scripts from the provider, which no route can mirror.
pub(super) fn video_player(host: &str) -> Option<&'static str> {
    let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
    if ["youtube.com", "youtube-nocookie.com", "youtu.be"]
        .iter()
        .any(|d| under(d))
    {
        Some("YouTube")
    } else if under("vimeo.com") {
        Some("Vimeo")
    } else {
        None
    }
}

/// Gravatar's hosts (`gravatar.com`, `secure.gravatar.com`, `0.gravatar.com`…).
pub(super) fn is_gravatar(host: &str) -> bool {
    host == "gravatar.com" || host.ends_with(".gravatar.com")
}

/// The first-party URL `route` serves `url` at, and what else to change, if it serves it.
fn map_url(route: &Route, url: &str, site: Option<&str>) -> Option<(String, Option<String>)> {
    let site_origin = site.map_or_else(|| "https://SITE".to_owned(), |s| format!("https://{s}"));
    match route.role {
        Role::Static | Role::FontCss | Role::FontFiles => {
            let map = css::UrlMap::new(vec![(route.upstream.clone(), route.prefix.clone())]);
            let first_party = map.map(url)?;
            let note =
                (route.role == Role::Static && !route.config.forward_query && url.contains('?'))
                    .then(|| "the route drops the query (forward_query = false)".to_owned());
            Some((first_party, note))
        }
        Role::Tiles => tile_map(route, url),
        Role::Analytics(protocol) => {
            let host = host_of(url)?;
            let upstream_host = normal_host(route.upstream.authority.as_str());
            let same = authority_of(url)?.eq_ignore_ascii_case(route.upstream.authority.as_str())
                || (protocol == Protocol::Ga4 && is_ga_host(host) && is_ga_host(&upstream_host));
            if !same {
                return None;
            }
            let path = path_of(url);
            let (p, query) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            let tail = p.strip_prefix(route.upstream.path.as_str())?;
            if !protocol.endpoints().contains(&tail) {
                return None;
            }
            let mut first_party = format!("{}{tail}", route.prefix);
            if let Some(q) = query {
                first_party.push('?');
                first_party.push_str(q);
            }
            let base = route.prefix.trim_end_matches('/');
            let note = match protocol {
                Protocol::Ga4 => {
                    format!("in gtag's config set server_container_url: '{site_origin}{base}'")
                }
                Protocol::Matomo => format!("in the snippet set the tracker URL to {first_party}"),
                Protocol::Plausible => format!("on the script set data-api=\"{first_party}\""),
                Protocol::Umami => {
                    format!("on the script set data-host-url=\"{site_origin}{base}\"")
                }
            };
            Some((first_party, Some(note)))
        }
    }
}

/// Google Analytics collection hosts (any region), interchangeable for a GA4 route.
pub(super) fn is_ga_host(host: &str) -> bool {
    host == "google-analytics.com"
        || host.ends_with(".google-analytics.com")
        || host == "analytics.google.com"
}

/// Whether a route mirrors resources of `host` (for connection hints).
fn serves_host(route: &Route, host: &str) -> bool {
    match (&route.role, &route.config.tiles) {
        (Role::Tiles, Some(t)) => {
            let (tpl_host, _) = split_template(t.template.as_str());
            let subs = subdomains(&t.template);
            strip_subdomain(&normal_host(tpl_host), &subs) == strip_subdomain(host, &subs)
        }
        (Role::Analytics(Protocol::Ga4), _) if is_ga_host(host) => true,
        _ => normal_host(route.upstream.authority.as_str()) == host,
    }
}

/// A template's host pattern and path (without query).
fn split_template(raw: &str) -> (&str, &str) {
    let after = raw.split_once("://").map_or(raw, |(_, r)| r);
    let (host, path) = after.find('/').map_or((after, "/"), |i| after.split_at(i));
    (host, path.split('?').next().unwrap_or(path))
}

/// The values a template uses for `{s}` (it exposes them only per tile).
fn subdomains(t: &tiles::Template) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in 0..32 {
        let tile = tiles::Tile {
            z: 5,
            x,
            y: 0,
            retina: false,
            ext: "png",
        };
        if let Some(s) = t.subdomain(&tile) {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_owned());
            }
        }
    }
    out
}

/// A tile host without its rotating subdomain: `{s}.tile.example`, `a.tile.example` and
/// `tile.example` name the same tile server.
pub(super) fn strip_subdomain<'h>(host: &'h str, subs: &[String]) -> &'h str {
    match host.split_once('.') {
        Some((first, rest))
            if rest.contains('.')
                && (first == "{s}"
                    || subs.iter().any(|s| s == first)
                    || (first.len() == 1 && first.as_bytes()[0].is_ascii_lowercase())) =>
        {
            rest
        }
        _ => host,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece<'a> {
    Lit(&'a str),
    Var(char),
}

fn template_pieces(path: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        let next = ["{z}", "{x}", "{y}", "{r}", "{s}"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .min();
        match next {
            Some((i, p)) => {
                if i > 0 {
                    out.push(Piece::Lit(&rest[..i]));
                }
                out.push(Piece::Var(p.as_bytes()[1] as char));
                rest = &rest[i + 3..];
            }
            None => {
                out.push(Piece::Lit(rest));
                rest = "";
            }
        }
    }
    out
}

/// Matches a URL path against template pieces; each variable takes its own `{v}` placeholder
/// (a template string in the page's JavaScript) or a value (digits; `@2x` or nothing for `r`).
fn match_pieces(pieces: &[Piece<'_>], s: &str, caps: &mut Vec<(char, String)>) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return s.is_empty();
    };
    match first {
        Piece::Lit(l) => s
            .strip_prefix(l)
            .is_some_and(|t| match_pieces(rest, t, caps)),
        Piece::Var(v) => {
            let mut options: Vec<usize> = Vec::new();
            let placeholder = format!("{{{v}}}");
            if s.starts_with(&placeholder) {
                options.push(placeholder.len());
            }
            match v {
                'r' => {
                    if s.starts_with("@2x") {
                        options.push(3);
                    }
                    options.push(0);
                }
                's' => {
                    let n = s.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
                    options.extend((1..=n).rev());
                }
                _ => {
                    let n = s.bytes().take_while(u8::is_ascii_digit).take(10).count();
                    options.extend((1..=n).rev());
                }
            }
            for len in options {
                caps.push((*v, s[..len].to_owned()));
                if match_pieces(rest, &s[len..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// A tile URL (or a `{z}/{x}/{y}` template string) under a tiles route's template.
fn tile_map(route: &Route, url: &str) -> Option<(String, Option<String>)> {
    let t = route.config.tiles.as_ref()?;
    let (tpl_host, tpl_path) = split_template(t.template.as_str());
    let subs = subdomains(&t.template);
    let url_host = authority_of(url)?;
    if strip_subdomain(&tpl_host.to_ascii_lowercase(), &subs) != strip_subdomain(url_host, &subs) {
        return None;
    }
    let path = path_of(url).split('?').next().unwrap_or("");
    // Leaflet's {r} (@2x on high-density screens) where the route serves no @2x tiles: the
    // first-party template leaves it out.
    let dropped_r = path.contains("{r}") && !t.template.retina();
    let path = path.replace("{r}", if dropped_r { "" } else { "{r}" });
    let mut caps = Vec::new();
    if !match_pieces(&template_pieces(tpl_path), &path, &mut caps) {
        return None;
    }
    let get = |v: char| caps.iter().find(|(c, _)| *c == v).map(|(_, s)| s.as_str());
    let (z, x, y) = (get('z')?, get('x')?, get('y')?);
    let r = get('r').unwrap_or("");
    let ext = t.template.ext().unwrap_or("png");
    let rest = format!("{z}/{x}/{y}{r}.{ext}");
    let placeholders = [z, x, y].iter().any(|v| v.starts_with('{'));
    if !placeholders {
        // A concrete tile: only covered if the route would serve it.
        let tile = tiles::parse(&rest, t.max_zoom).ok()?;
        t.template.accepts(&tile).ok()?;
    }
    let note = dropped_r.then(|| "the route serves no @2x tiles: {r} left out".to_owned());
    Some((format!("{}{rest}", route.prefix), note))
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use super::*;
    use crate::audit::scan::scan;
    use crate::audit::url::absolute;
    use crate::config::Config;

    pub(in crate::audit) const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
[upstream]
user_agent = "tamis (+https://site.example/)"
[[route]]
name = "cdnjs"
kind = "static"
prefix = "/cdnjs/"
upstream = "https://cdnjs.cloudflare.com/ajax/libs/"
[[route]]
name = "bunny"
kind = "fonts"
prefix = "/bunny/"
upstream = "https://fonts.bunny.net/"
files_prefix = "/bunny/files/"
files_upstream = "https://fonts.bunny.net/"
jurisdiction = "eu"
[[route]]
name = "osmfr"
kind = "tiles"
prefix = "/tiles/fr/"
upstream = "https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}.png"
subdomains = ["a", "b", "c"]
referer = "https://site.example/"
max_zoom = 18
[[route]]
name = "ga"
kind = "ga4"
prefix = "/a/"
upstream = "https://region1.google-analytics.com/"
[[route]]
name = "stats"
kind = "matomo"
prefix = "/m/"
upstream = "https://stats.example.org/"
[[route]]
name = "stats-files"
kind = "static"
prefix = "/stats-files/"
upstream = "https://stats.example.org/"
[[route]]
name = "tracker-mirror"
kind = "static"
prefix = "/tm/"
upstream = "https://tracker.example/"
"#;

    pub(in crate::audit) fn config() -> Config {
        Config::parse(CONFIG, Path::new("t.toml")).unwrap()
    }

    fn cover(url: &str) -> Coverage {
        let found = vec![Found {
            url: absolute(url).unwrap(),
            place: "t".into(),
            load: Load::Resource,
        }];
        classify(&found, Some("site.example"), &Router::new(&config()))
            .remove(0)
            .coverage
    }

    fn first_party(url: &str) -> Option<String> {
        match cover(url) {
            Coverage::Covered { first_party, .. } => Some(first_party),
            _ => None,
        }
    }

    #[test]
    fn coverage_by_route_kind() {
        assert_eq!(
            first_party("//cdnjs.cloudflare.com/ajax/libs/jquery/3.7.1/jquery.min.js").as_deref(),
            Some("/cdnjs/jquery/3.7.1/jquery.min.js")
        );
        assert_eq!(first_party("https://cdnjs.cloudflare.com/other/x.js"), None);
        assert_eq!(
            first_party("https://cdnjs.cloudflare.com/ajax/libs/../../etc/passwd"),
            None
        );
        // Bunny serves CSS and files from one host: the CSS maps to the CSS part.
        assert_eq!(
            first_party("https://fonts.bunny.net/css?family=roboto:400").as_deref(),
            Some("/bunny/css?family=roboto:400")
        );
        assert_eq!(
            first_party("https://fonts.bunny.net/roboto/files/roboto-latin-400-normal.woff2")
                .as_deref(),
            Some("/bunny/files/roboto/files/roboto-latin-400-normal.woff2")
        );
        // Tiles: templates, any subdomain, concrete tiles the route would serve.
        assert_eq!(
            first_party("https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}.png").as_deref(),
            Some("/tiles/fr/{z}/{x}/{y}.png")
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/3/4/5.png").as_deref(),
            Some("/tiles/fr/3/4/5.png")
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/19/4/5.png"),
            None,
            "above max_zoom"
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/osmfr/3/4/5.jpg"),
            None,
            "other extension"
        );
        assert_eq!(
            first_party("https://b.tile.openstreetmap.fr/other/3/4/5.png"),
            None
        );
        match cover("https://{s}.tile.openstreetmap.fr/osmfr/{z}/{x}/{y}{r}.png") {
            Coverage::Covered {
                first_party, note, ..
            } => {
                assert_eq!(first_party, "/tiles/fr/{z}/{x}/{y}.png");
                assert!(note.unwrap().contains("@2x"));
            }
            c => panic!("{c:?}"),
        }
        // Analytics: only the tracking endpoint; GA regions are interchangeable.
        match cover("https://www.google-analytics.com/g/collect") {
            Coverage::Covered {
                route,
                first_party,
                note,
            } => {
                assert_eq!(
                    (route.as_str(), first_party.as_str()),
                    ("ga", "/a/g/collect")
                );
                assert_eq!(
                    note.as_deref(),
                    Some("in gtag's config set server_container_url: 'https://site.example/a'")
                );
            }
            c => panic!("{c:?}"),
        }
        assert_eq!(
            first_party("//stats.example.org/matomo.php?idsite=1&rec=1").as_deref(),
            Some("/m/matomo.php?idsite=1&rec=1")
        );

        // A mirror of the tracker's host serves its script, never its hits (they would go
        // through unscrubbed), even when no analytics route exists for that host.
        assert_eq!(
            first_party("https://stats.example.org/js/matomo.js").as_deref(),
            Some("/stats-files/js/matomo.js")
        );
        assert_eq!(
            first_party("https://stats.example.org/matomo.php").as_deref(),
            Some("/m/matomo.php")
        );
        for hit in [
            "https://tracker.example/matomo.php?idsite=1",
            "https://tracker.example/sub/piwik.php",
            "https://tracker.example/g/collect?v=2",
            "https://tracker.example/api/event",
            "https://tracker.example/api/send",
        ] {
            assert_eq!(first_party(hit), None, "{hit}");
        }
        assert_eq!(
            first_party("https://tracker.example/js/script.js").as_deref(),
            Some("/tm/js/script.js")
        );
        assert_eq!(
            first_party("https://www.google-analytics.com/analytics.js"),
            None
        );
    }

    #[test]
    fn site_resources_are_first_party_and_repeats_merge() {
        let found = scan(br#"<img src="https://Site.Example/a.png"><img src="https://x.example/a.png"><link rel=preload href="https://x.example/a.png" as=image><link rel=preconnect href="https://fonts.bunny.net">"#).unwrap();
        let f = classify(&found, Some("site.example"), &Router::new(&config()));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].places, vec!["<img src>", "<link rel=preload href>"]);
        assert_eq!(f[0].coverage, Coverage::NotCovered);
        assert_eq!(
            f[1].coverage,
            Coverage::Hint {
                serving: Some("bunny".into())
            }
        );
        assert_eq!(classify(&found, None, &Router::new(&config())).len(), 3);
    }
}

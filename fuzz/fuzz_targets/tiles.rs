//! Tile paths and templates. Properties: `tiles::parse` accepts only z <= max_zoom (and <= 30),
//! x and y < 2^z, a known extension, and reads exactly the numbers written; a tile route's
//! upstream URL is its template filled in (no query, the template's host); a template accepted
//! by `Template::new` makes a valid http(s) URL with no user information for every tile.
//! Input: line 1 the tile path, line 2 max_zoom, line 3 a template, line 4 subdomains (a,b,c).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tamis::mirrors::tiles;
use tamis::routes::{Role, Router};
use tamis_fuzz::oracles::{check_route_uri, check_tile, test_router};

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(test_router)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let rest = lines.next().unwrap_or("");
    let max_zoom = lines
        .next()
        .and_then(|z| z.trim().parse::<u8>().ok())
        .unwrap_or((data.len() % 32) as u8);
    let parsed = tiles::parse(rest, max_zoom);
    check_tile(rest, max_zoom, &parsed);
    for route in router().routes() {
        if route.role == Role::Tiles {
            check_route_uri(route, rest, Some("evil=1"));
        }
    }
    let Some(raw) = lines.next() else {
        return;
    };
    let subdomains: Vec<String> = lines
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let Ok(template) = tiles::Template::new(raw, subdomains) else {
        return;
    };
    let Ok(tile) = parsed else {
        return;
    };
    if template.accepts(&tile).is_err() {
        return;
    }
    let Some(uri) = template.uri(&tile) else {
        panic!("template {raw:?} accepted but {tile:?} makes no URL");
    };
    assert!(
        matches!(uri.scheme_str(), Some("http" | "https")),
        "{raw:?} -> {uri}"
    );
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    assert!(
        !authority.is_empty() && !authority.contains('@'),
        "{raw:?} -> {uri}: authority {authority:?}"
    );
    // The host tamis reads from the template (policy check, reports) is where the tile goes.
    let expected = template
        .authority()
        .replace("{s}", template.subdomain(&tile).unwrap_or(""));
    assert_eq!(
        authority, expected,
        "{raw:?} -> {uri}: not the template's host"
    );
    if template.subdomain(&tile)
        == template.subdomain(&tiles::Tile {
            x: 0,
            y: 0,
            ..tile.clone()
        })
    {
        assert_eq!(
            authority,
            template.sample_host(),
            "{raw:?} -> {uri}: sample host"
        );
    }
    // The host never depends on the tile (but for {s}, which picks among the subdomains).
    if !raw.contains("{s}") {
        let first = tiles::Tile {
            z: 0,
            x: 0,
            y: 0,
            retina: false,
            ext: tile.ext,
        };
        let origin = template.uri(&first).expect("tile 0/0/0");
        assert_eq!(
            uri.authority(),
            origin.authority(),
            "{raw:?}: host changes with the tile"
        );
    }
});

//! Path confinement and URL building: a request target routed and built as the proxy does, the
//! same path handed to every route's `upstream_uri`, and an upstream `Location` mapped back.
//! Properties: the upstream URL starts with the route's base and names no other authority (also
//! as a browser's WHATWG URL parser reads it), adds no `.`/`..` segment; a mapped Location stays
//! under the route prefix. Input: line 1 the request target (path[?query]), line 2 a Location.
#![no_main]

use std::sync::OnceLock;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use tamis::routes::confine::{self, Redirect};
use tamis::routes::{Role, Router};
use tamis_fuzz::oracles::{check_location, check_request_target, check_route_uri, test_router};

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(test_router)
}

/// The WHATWG reading of a built URL keeps the base's origin and path.
fn whatwg(base: &tamis::config::UpstreamBase, uri: &Uri) {
    let base_url = url::Url::parse(&base.to_string()).expect("base");
    let Ok(u) = url::Url::parse(&uri.to_string()) else {
        panic!("built URL {uri} is not a WHATWG URL");
    };
    assert_eq!(u.origin(), base_url.origin(), "WHATWG origin of {uri}");
    assert!(
        u.path().starts_with(base_url.path()),
        "WHATWG path of {uri} left {}: {}",
        base_url.path(),
        u.path()
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let router = router();
    let (target, location) = match text.split_once('\n') {
        Some((t, l)) => (t, Some(l.trim_end_matches('\n'))),
        None => (text, None),
    };
    // As a request target, under several prefixes, through hyper's URI parser and the router.
    for prefix in [
        "",
        "/cdn/",
        "/cdn/noquery/",
        "/fonts/files/",
        "/tiles/fr/",
        "/ga/",
    ] {
        check_request_target(router, &format!("{prefix}{target}"));
    }
    // As a raw rest-of-path on every route (the library's own contract).
    let (rest, query) = match target.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (target, None),
    };
    for route in router.routes() {
        check_route_uri(route, rest, query);
        if route.role != Role::Tiles {
            if let Ok(uri) = route.upstream_uri(rest, query) {
                whatwg(&route.upstream, &uri);
            }
        }
    }
    // An upstream redirect, mapped back for the visitor.
    if let Some(loc) = location {
        let site = url::Url::parse("https://site.example/").expect("site");
        for route in router.routes() {
            if route.role == Role::Tiles {
                continue;
            }
            let Ok(requested) = confine::upstream_uri(&route.upstream, "a/b/c.js", None) else {
                continue;
            };
            check_location(&route.upstream, &route.prefix, &requested, loc);
            if let Redirect::FirstParty(out) =
                confine::map_location(&route.upstream, &route.prefix, &requested, loc)
            {
                if let Ok(u) = site.join(&out) {
                    assert_eq!(
                        u.host_str(),
                        Some("site.example"),
                        "Location {loc:?} mapped to {out:?} leaves the site"
                    );
                }
            }
        }
    }
});

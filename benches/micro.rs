//! Micro-benchmarks of the hot pure functions: header policy, each analytics scrubber on a
//! real-shaped request, CSS rewriting, tile parsing, cache key building.
//!
//!   cargo bench --bench micro             # full run
//!   cargo bench --bench micro -- --test   # smoke: each benchmark once (CI)

use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use tamis::analytics::{ga4, matomo, plausible, umami, Context, Pseudonymizer, Settings, Tally};
use tamis::cache::CacheKey;
use tamis::config::{parse_upstream, Config};
use tamis::mirrors::tiles;
use tamis::policy::{self, Jurisdiction, RequestPolicy};
use tamis::routes::{css, Router};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("accept", "text/css,*/*;q=0.1"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "fr-FR,fr;q=0.9,en;q=0.8"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"),
        ("cookie", "session=abc; _ga=GA1.1.123.456"),
        ("referer", "https://site.example/page?id=1"),
        ("sec-ch-ua", "\"Chromium\";v=\"131\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("sec-fetch-dest", "style"),
        ("sec-fetch-mode", "no-cors"),
        ("sec-fetch-site", "same-origin"),
        ("if-none-match", "\"abc\""),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn headers(c: &mut Criterion) {
    let visitor = browser_headers();
    let ua = HeaderValue::from_static("tamis (+https://site.example/)");
    let p = RequestPolicy::new(Jurisdiction::NonEu, &ua, None, &[]);
    c.bench_function("request header policy (14 browser headers)", |b| {
        b.iter(|| p.scrub(black_box(&visitor)))
    });
    let mut upstream = HeaderMap::new();
    for (k, v) in [
        ("content-type", "font/woff2"),
        ("cache-control", "public, max-age=31536000"),
        ("set-cookie", "NID=1"),
        ("alt-svc", "h3=\":443\""),
        ("nel", "{}"),
        ("report-to", "{}"),
        ("link", "<https://fonts.gstatic.com>; rel=preconnect"),
        ("etag", "\"x\""),
        ("date", "Tue, 24 Nov 2026 08:00:00 GMT"),
    ] {
        upstream.append(k, HeaderValue::from_static(v));
    }
    c.bench_function("response header policy (9 headers)", |b| {
        b.iter(|| {
            let mut h = upstream.clone();
            policy::scrub_response(black_box(&mut h), policy::ResponseKind::FontFiles);
            h
        })
    });
}

fn analytics(c: &mut Criterion) {
    let settings = Settings {
        allow_event_params: vec!["ep.page_type".into(), "plan".into()],
        allow_url_params: vec![],
    };
    let p = Pseudonymizer::new(Duration::from_secs(86400), None);
    let ctx = Context {
        settings: &settings,
        pseudonyms: &p,
        route: "ga",
        visitor: &tamis::analytics::visitor::Visitor::NONE,
        matomo_token: None,
    };
    let raw = fixture("ga4-collect-batch.http");
    let query = raw
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    let now = SystemTime::now();
    c.bench_function("GA4 batch scrub (40 query params, 2 events)", |b| {
        b.iter(|| {
            ga4::scrub(
                black_box(&query),
                black_box(body.as_bytes()),
                &ctx,
                now,
                &mut Tally::default(),
            )
        })
    });
    let matomo_get = fixture("matomo-track-get.txt");
    let mq = matomo_get
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    c.bench_function("Matomo GET scrub", |b| {
        b.iter(|| matomo::scrub_query(black_box(&mq), &ctx, now, &mut Tally::default()))
    });
    let bulk = fixture("matomo-bulk.json");
    c.bench_function("Matomo bulk JSON scrub", |b| {
        b.iter(|| matomo::scrub_body(black_box(bulk.as_bytes()), &ctx, now, &mut Tally::default()))
    });
    let pl = fixture("plausible-event.json");
    c.bench_function("Plausible event scrub", |b| {
        b.iter(|| plausible::scrub(black_box(pl.as_bytes()), &ctx, &mut Tally::default()))
    });
    let um = fixture("umami-send.json");
    c.bench_function("Umami event scrub", |b| {
        b.iter(|| umami::scrub(black_box(um.as_bytes()), &ctx, &mut Tally::default()))
    });
}

fn mirrors(c: &mut Criterion) {
    let css = fixture("google-fonts-css2-roboto.css");
    let map = css::UrlMap::new(vec![
        (
            parse_upstream("https://fonts.gstatic.com/").unwrap(),
            "/fonts/files/".into(),
        ),
        (
            parse_upstream("https://fonts.googleapis.com/").unwrap(),
            "/fonts/".into(),
        ),
    ]);
    c.bench_function("CSS rewrite (Google Fonts Roboto, 7 faces)", |b| {
        b.iter(|| css::rewrite_css(black_box(&css), &map))
    });
    c.bench_function("tile path parse", |b| {
        b.iter(|| tiles::parse(black_box("15/16384/10923@2x.png"), 19))
    });
    let template = tiles::Template::new(
        "https://{s}.tile.example/{z}/{x}/{y}{r}.png",
        vec!["a".into(), "b".into(), "c".into()],
    )
    .unwrap();
    let tile = tiles::parse("15/16384/10923@2x.png", 19).unwrap();
    c.bench_function("tile upstream URL from its template", |b| {
        b.iter(|| template.uri(black_box(&tile)))
    });
    let config = Config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\nupstream = \"https://cdn.jsdelivr.net/npm/\"\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let router = Router::new(&config);
    c.bench_function("route + confine + cache key", |b| {
        b.iter(|| {
            let (route, rest) = router
                .find(black_box("/cdn/leaflet@1.9.4/dist/leaflet.js"))
                .unwrap();
            let uri = route.upstream_uri(rest, None).unwrap();
            CacheKey::primary(route.cache_id, uri)
        })
    });
}

criterion_group!(benches, headers, analytics, mirrors);
criterion_main!(benches);

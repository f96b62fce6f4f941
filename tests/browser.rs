//! The proof in a real browser: headless Chromium loads a demo page (Leaflet map, a web font,
//! Leaflet itself from a CDN route) through tamis, with every upstream played by a local
//! recording server. Every request the browser makes must go to tamis, the tiles and the font
//! must actually load, and no upstream may receive a visitor header.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or $CHROMIUM) and `npm ci` in tests/browser;
//! `.ci/run` installs them. Set TAMIS_SKIP_BROWSER=1 to skip it on a machine without them.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(here().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e} (run `npm ci` in tests/browser)"))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("js") => "application/javascript",
        Some("css") => "text/css",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_only_ever_talks_to_tamis() {
    if std::env::var_os("TAMIS_SKIP_BROWSER").is_some() {
        eprintln!("TAMIS_SKIP_BROWSER set: browser proof skipped");
        return;
    }
    let demo = file("demo.html");
    let site = Upstream::http(move |_| {
        Reply::ok(demo.clone()).header("content-type", "text/html; charset=utf-8")
    })
    .await;
    let cdn = Upstream::http(|s| {
        let Some(rest) = s.uri.strip_prefix("/npm/leaflet@1.9.4/") else {
            return Reply::ok("not here").status(404);
        };
        match std::fs::read(here().join("node_modules/leaflet").join(rest)) {
            Ok(bytes) => Reply::ok(bytes)
                .header("content-type", content_type(rest))
                .header("cache-control", "public, max-age=31536000, immutable"),
            Err(_) => Reply::ok("not here").status(404),
        }
    })
    .await;
    let woff2 = file("node_modules/@fontsource/roboto/files/roboto-latin-400-normal.woff2");
    let gstatic = Upstream::http(move |_| {
        Reply::ok(woff2.clone())
            .header("content-type", "font/woff2")
            .header("cache-control", "public, max-age=31536000")
    })
    .await;
    let gstatic_base = gstatic.url("/");
    let googleapis = Upstream::http(move |_| {
        Reply::ok(
            include_str!("fixtures/google-fonts-css2-roboto.css")
                .replace("https://fonts.gstatic.com/", &gstatic_base),
        )
        .header("content-type", "text/css; charset=utf-8")
        .header("cache-control", "private, max-age=86400")
    })
    .await;
    let png = file("tile.png");
    let tiles = Upstream::http(move |_| {
        Reply::ok(png.clone())
            .header("content-type", "image/png")
            .header("cache-control", "max-age=600")
    })
    .await;

    let config = format!(
        r#"{LISTEN}[upstream]
user_agent = "tamis-test (+https://operator.test/; ops@operator.test)"

[[route]]
name = "site"
kind = "static"
prefix = "/demo/"
upstream = "{site}"
jurisdiction = "eu"

[[route]]
name = "jsdelivr"
kind = "static"
prefix = "/cdn/"
upstream = "{cdn}"

[[route]]
name = "google-fonts"
kind = "fonts"
prefix = "/fonts/"
upstream = "{googleapis}"
files_prefix = "/fonts/files/"
files_upstream = "{gstatic}"

[[route]]
name = "osm"
kind = "tiles"
prefix = "/tiles/osm/"
upstream = "{tiles}{{z}}/{{x}}/{{y}}.png"
referer = "https://mysite.test/"
"#,
        site = site.url("/"),
        cdn = cdn.url("/npm/"),
        googleapis = googleapis.url("/"),
        gstatic = gstatic.url("/"),
        tiles = tiles.url("/"),
    );
    let t = Tamis::start(&config).await;
    let origin = format!("http://127.0.0.1:{}", t.http.port());
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("browser-proof.png");

    let page = format!("{origin}/demo/index.html");
    let script = here().join("proof.mjs");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(&page)
            .arg(&shot)
            .output()
    })
    .await
    .unwrap()
    .expect("node must be installed (see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report");

    // Every request the browser made went to the tamis origin.
    let requests: Vec<&str> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(requests.len() >= 8, "{requests:?}");
    for url in &requests {
        assert!(
            url.starts_with(&format!("{origin}/")) || url.starts_with("data:"),
            "the browser contacted {url}"
        );
    }
    assert_eq!(
        report["failed"].as_array().unwrap().len(),
        0,
        "failed requests: {}",
        report["failed"]
    );
    // The map's tiles and the font actually loaded.
    assert!(report["tiles"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(report["tileErrors"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["fontLoaded"],
        serde_json::Value::Bool(true),
        "{report}"
    );
    assert!(
        requests.iter().any(|u| u.contains("/fonts/files/")),
        "the font file came through tamis"
    );

    // The upstreams received no visitor header.
    for (name, up) in [
        ("cdn", &cdn),
        ("googleapis", &googleapis),
        ("gstatic", &gstatic),
        ("tiles", &tiles),
    ] {
        let seen = up.seen();
        assert!(!seen.is_empty(), "{name} was never asked");
        for s in seen {
            for h in [
                "cookie",
                "accept-language",
                "origin",
                "sec-ch-ua",
                "sec-ch-ua-platform",
                "sec-ch-ua-mobile",
                "sec-fetch-mode",
                "sec-fetch-site",
                "x-forwarded-for",
                "forwarded",
                "if-none-match",
            ] {
                assert!(s.headers.get(h).is_none(), "{name} got {h} for {}", s.uri);
            }
            let ua = s.header("user-agent").unwrap_or("");
            assert!(
                !ua.contains("HeadlessChrome"),
                "{name} got the browser's User-Agent: {ua}"
            );
            match name {
                "tiles" => assert_eq!(s.header("referer"), Some("https://mysite.test/")),
                _ => assert!(s.headers.get("referer").is_none(), "{name} got a Referer"),
            }
        }
    }
    eprintln!(
        "screenshot: tests/artifacts/browser-proof.png; {} requests, all first-party",
        requests.len()
    );
}

/// Serves npm packages from tests/browser/node_modules the way a CDN's ESM endpoint would:
/// `/npm/PACKAGE@VERSION/path`, extensionless module imports resolved to `.js`.
fn npm_cdn(s: &Seen) -> Reply {
    let Some(rest) = s.uri.strip_prefix("/npm/") else {
        return Reply::ok("not here").status(404);
    };
    let Some((package, path)) = rest.split_once('/') else {
        return Reply::ok("not here").status(404);
    };
    let name = package.rsplit_once('@').map_or(package, |(n, _)| n);
    let mut file = here().join("node_modules").join(name).join(path);
    if file.extension().is_none() {
        file.set_extension("js");
    }
    match std::fs::read(&file) {
        Ok(bytes) => Reply::ok(bytes)
            .header("content-type", content_type(&file.to_string_lossy()))
            .header("cache-control", "public, max-age=3600"),
        Err(_) => Reply::ok("not here").status(404),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_plausible_tracker_posts_through_tamis_and_is_scrubbed() {
    if std::env::var_os("TAMIS_SKIP_BROWSER").is_some() {
        eprintln!("TAMIS_SKIP_BROWSER set: browser proof skipped");
        return;
    }
    let page = file("analytics.html");
    let site = Upstream::http(move |_| {
        Reply::ok(page.clone()).header("content-type", "text/html; charset=utf-8")
    })
    .await;
    let cdn = Upstream::http(npm_cdn).await;
    let plausible = Upstream::http(|_| {
        Reply::ok("ok")
            .status(202)
            .header("set-cookie", "tracker=1")
    })
    .await;
    let config = format!(
        r#"{LISTEN}[[route]]
name = "site"
kind = "static"
prefix = "/demo/"
upstream = "{site}"
jurisdiction = "eu"

[[route]]
name = "jsdelivr"
kind = "static"
prefix = "/cdn/"
upstream = "{cdn}"

[[route]]
name = "plausible"
kind = "plausible"
prefix = "/p/"
upstream = "{plausible}"
allow_event_params = ["plan"]
"#,
        site = site.url("/"),
        cdn = cdn.url("/npm/"),
        plausible = plausible.url("/"),
    );
    let t = Tamis::start(&config).await;
    let origin = format!("http://127.0.0.1:{}", t.http.port());
    // The page URL carries what a tracker would leak: a query with an e-mail, a fragment.
    let url = format!("{origin}/demo/analytics.html?email=alice%40mail.example#inbox");
    let script = here().join("tracker.mjs");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .arg(&url)
            .output()
    })
    .await
    .unwrap()
    .expect("node must be installed (see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tracker run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report");
    for u in report["requests"].as_array().unwrap() {
        let u = u.as_str().unwrap();
        assert!(
            u.starts_with(&format!("{origin}/")),
            "the browser contacted {u}"
        );
    }

    let seen = plausible.last();
    assert_eq!(seen.uri, "/api/event");
    let event: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(event["n"], "signup");
    assert_eq!(event["d"], "blog.example");
    assert_eq!(
        event["u"],
        format!("{origin}/demo/analytics.html"),
        "no query, no fragment"
    );
    assert_eq!(
        event["p"],
        serde_json::json!({"plan": "pro"}),
        "only allowlisted props"
    );
    assert!(event.get("w").is_none(), "screen width dropped");
    let body = String::from_utf8_lossy(&seen.body);
    assert!(!body.contains("alice") && !body.contains("inbox"), "{body}");
    for h in [
        "cookie",
        "accept-language",
        "referer",
        "origin",
        "sec-ch-ua",
        "x-forwarded-for",
    ] {
        assert!(seen.headers.get(h).is_none(), "plausible got {h}");
    }
    let ua = seen.header("user-agent").unwrap_or("");
    assert!(
        ua.contains("Chrome/") && !ua.contains("Headless") && !ua.contains("Linux"),
        "generalised: {ua}"
    );
}

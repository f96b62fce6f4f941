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
    let report = run_script("proof.mjs", vec![page, shot.to_string_lossy().into_owned()]).await;

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
    let report = run_script("tracker.mjs", vec![url]).await;
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

/// Runs one of tests/browser's scripts and reads the JSON report on its last line.
async fn run_script(script: &str, args: Vec<String>) -> serde_json::Value {
    let script = here().join(script);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .args(args)
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
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON report")
}

/// Every upstream misbehaves the ways issue 19 lists, each aiming the browser at `evil.test`
/// (a recording server on loopback, by Chromium's host-resolver rules): font CSS typed `Text/CSS`,
/// untyped, `text/plain`, in ISO-2022-JP, `@import`ing a stylesheet from the files side; CDN
/// stylesheets without a type or typed `text/plain` on a quirks-mode page (which applies any
/// same-origin body without nosniff); `Link` hints written to slip past a naive filter; a CSP
/// that reports. Each stylesheet also names a first-party image, so the run proves each one was
/// applied, and still nothing reached `evil.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_behind_hostile_upstreams_contacts_no_one_else() {
    if std::env::var_os("TAMIS_SKIP_BROWSER").is_some() {
        eprintln!("TAMIS_SKIP_BROWSER set: browser proof skipped");
        return;
    }
    let evil = Upstream::http(|_| Reply::ok("").status(204)).await;
    let e = format!("//evil.test:{}", evil.addr.port());
    // A stylesheet that fetches `ok-CASE.png` from tamis and `CASE.png` from evil.test.
    let sheet = {
        let e = e.clone();
        move |case: &str| {
            format!(
                "#ok-{case}{{background-image:url(/cdn/ok-{case}.png)}}\n\
                 #{case}{{background-image:url({e}/{case}.png)}}\n"
            )
        }
    };
    let png = file("tile.png");
    let cdn = Upstream::http({
        let sheet = sheet.clone();
        move |s| match s.uri.as_str() {
            "/untyped.css" => Reply::ok(sheet("cdn-untyped")).without("content-type"),
            "/textplain.css" => {
                Reply::ok(sheet("cdn-textplain")).header("content-type", "text/plain")
            }
            "/lib.css" => Reply::ok(sheet("lib")).header("content-type", "text/css"),
            "/ok.css" => Reply::ok("").header("content-type", "text/css"),
            _ => Reply::ok(png.clone()).header("content-type", "image/png"),
        }
    })
    .await;
    let files = Upstream::http({
        let sheet = sheet.clone();
        move |_| Reply::ok(sheet("import")).header("content-type", "text/css")
    })
    .await;
    let files_url = files.url("/");
    let fonts = Upstream::http({
        let e = e.clone();
        move |s| {
            let case = s.uri.rsplit('=').next().unwrap_or("");
            match case {
                "upper" => Reply::ok(sheet(case)).header("content-type", "Text/CSS"),
                "none" => Reply::ok(sheet(case)).without("content-type"),
                "plain" => Reply::ok(sheet(case)).header("content-type", "text/plain"),
                // Read as ISO-2022-JP, `ESC $ B "` is one broken character, not a string.
                "jp" => Reply::ok(
                    [
                        sheet(case).as_bytes(),
                        b"#jp{color:\x1b$B\"\x1b(B;background-image:url(",
                        e.as_bytes(),
                        b"/jp-hidden.png)}",
                    ]
                    .concat(),
                )
                .header("content-type", "text/css; charset=iso-2022-jp"),
                _ => Reply::ok(format!("@import url({files_url}import.css);"))
                    .header("content-type", "text/css"),
            }
        }
    })
    .await;
    let port = evil.addr.port();
    let page = r#"<html><head><title>hostile upstreams</title>
<link rel="stylesheet" href="/fonts/css?t=upper">
<link rel="stylesheet" href="/fonts/css?t=none">
<link rel="stylesheet" href="/fonts/css?t=plain">
<link rel="stylesheet" href="/fonts/css?t=jp">
<link rel="stylesheet" href="/fonts/css?t=import">
<link rel="stylesheet" href="/cdn/untyped.css">
<link rel="stylesheet" href="/cdn/textplain.css">
<link rel="stylesheet" href="/cdn/lib.css">
</head><body>
<div id="upper">a</div><div id="ok-upper">a</div><div id="none">b</div><div id="ok-none">b</div>
<div id="plain">c</div><div id="ok-plain">c</div><div id="jp">d</div><div id="ok-jp">d</div>
<div id="import">e</div><div id="ok-import">e</div><div id="lib">f</div><div id="ok-lib">f</div>
<div id="cdn-untyped">g</div><div id="ok-cdn-untyped">g</div>
<div id="cdn-textplain">h</div><div id="ok-cdn-textplain">h</div>
<iframe src="/hostile/frame.html"></iframe>
</body></html>"#;
    let site = Upstream::http(move |s| match s.uri.as_str() {
        "/page.html" => Reply::ok(page)
            .header("content-type", "text/html; charset=utf-8")
            .header(
                "content-security-policy",
                &format!("frame-src 'none'; report-uri http://evil.test:{port}/csp"),
            )
            .header(
                "link",
                &format!("</\t/evil.test:{port}/tab.png>; rel=preload; as=image"),
            )
            .header(
                "link",
                &format!(
                    "</cdn/ok-srcset.png>; rel=preload; as=image; \
                     imagesrcset=\"http://evil.test:{port}/srcset.png 1x, /cdn/ok-srcset.png 2x\""
                ),
            )
            .header(
                "link",
                &format!("</b,<//evil.test:{port}/comma.png>; rel=preload; as=image>; rel=preload"),
            )
            .header("link", "</cdn/ok.css>; rel=preload; as=style"),
        _ => Reply::ok("<p>framed</p>").header("content-type", "text/html"),
    })
    .await;
    let config = format!(
        "{LISTEN}{}{}[[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\n\
         upstream = \"{}\"\nfiles_prefix = \"/fonts/files/\"\nfiles_upstream = \"{}\"\n",
        route("site", "/hostile/", &site.url("/"), ""),
        route("cdn", "/cdn/", &cdn.url("/"), ""),
        fonts.url("/"),
        files.url("/"),
    );
    let t = Tamis::start(&config).await;
    let origin = format!("http://127.0.0.1:{}", t.http.port());
    let report = run_script("hostile.mjs", vec![format!("{origin}/hostile/page.html")]).await;
    assert_eq!(report["mode"], "BackCompat", "the page is in quirks mode");
    let requests = only_tamis_was_contacted(&report, &origin, &evil);
    // Every stylesheet tamis serves was applied (its first-party image loaded), the CDN's
    // untyped ones were not (nosniff), and the first-party hints were followed.
    for case in ["upper", "none", "plain", "jp", "import", "lib"] {
        let ok = format!("{origin}/cdn/ok-{case}.png");
        assert!(
            requests.contains(&ok.as_str()),
            "{ok} not requested: {requests:?}"
        );
    }
    for case in ["cdn-untyped", "cdn-textplain"] {
        let never = format!("{origin}/cdn/ok-{case}.png");
        assert!(!requests.contains(&never.as_str()), "{never} was applied");
    }
    assert!(requests.contains(&format!("{origin}/cdn/ok.css").as_str()));
}

/// A stylesheet that turned hostile through a revalidation: stored typed `text/plain` (so kept
/// as the upstream sent it, and never applied), it comes back from its upstream as a 304 that
/// says `text/css`. A rewritten stylesheet's 304 says `text/plain` in turn. Chromium loads the
/// page after both were refreshed: the first must still not apply, the second still must, and
/// nothing may reach `evil.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stylesheet_turned_hostile_by_a_revalidation_contacts_no_one_else() {
    if std::env::var_os("TAMIS_SKIP_BROWSER").is_some() {
        eprintln!("TAMIS_SKIP_BROWSER set: browser proof skipped");
        return;
    }
    let evil = Upstream::http(|_| Reply::ok("").status(204)).await;
    let e = format!("//evil.test:{}", evil.addr.port());
    let sheet = move |case: &str| {
        format!(
            "#ok-{case}{{background-image:url(/cdn/ok-{case}.png)}}\n\
             #{case}{{background-image:url({e}/{case}.png)}}\n"
        )
    };
    let png = file("tile.png");
    let cdn = Upstream::http(move |s| {
        let revalidating = s.header("if-none-match") == Some("\"v1\"");
        let (case, first_type, then_type) = match s.uri.as_str() {
            "/turned.css" => ("turned", "text/plain", "text/css"),
            "/kept.css" => ("kept", "text/css", "text/plain"),
            _ => return Reply::ok(png.clone()).header("content-type", "image/png"),
        };
        if revalidating {
            return Reply::ok("")
                .status(304)
                .header("content-type", then_type)
                .header("cache-control", "max-age=1")
                .header("etag", "\"v1\"");
        }
        Reply::ok(sheet(case))
            .header("content-type", first_type)
            .header("cache-control", "max-age=1")
            .header("etag", "\"v1\"")
    })
    .await;
    let page = "<!doctype html><html><head><title>turned</title>\
<link rel=\"stylesheet\" href=\"/cdn/turned.css\">\
<link rel=\"stylesheet\" href=\"/cdn/kept.css\"></head><body>\
<div id=\"turned\">a</div><div id=\"ok-turned\">a</div>\
<div id=\"kept\">b</div><div id=\"ok-kept\">b</div></body></html>";
    let site =
        Upstream::http(move |_| Reply::ok(page).header("content-type", "text/html; charset=utf-8"))
            .await;
    let config = format!(
        "{LISTEN}[cache]\nstatus_header = true\n\n{}{}",
        route("site", "/turn/", &site.url("/"), ""),
        route("cdn", "/cdn/", &cdn.url("/"), ""),
    );
    let t = Tamis::start(&config).await;
    // Stored first, then stale: the browser's requests make tamis revalidate them.
    for p in ["/cdn/turned.css", "/cdn/kept.css"] {
        assert_eq!(t.get(p).await.status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let origin = format!("http://127.0.0.1:{}", t.http.port());
    let report = run_script("hostile.mjs", vec![format!("{origin}/turn/page.html")]).await;
    let revalidated = cdn
        .seen()
        .iter()
        .filter(|s| s.header("if-none-match").is_some())
        .count();
    assert_eq!(revalidated, 2, "both stylesheets were revalidated");
    let requests = only_tamis_was_contacted(&report, &origin, &evil);
    let ok_kept = format!("{origin}/cdn/ok-kept.png");
    assert!(
        requests.contains(&ok_kept.as_str()),
        "the rewritten stylesheet still applies: {requests:?}"
    );
    let ok_turned = format!("{origin}/cdn/ok-turned.png");
    assert!(
        !requests.contains(&ok_turned.as_str()),
        "a body stored as text/plain was applied as a stylesheet"
    );
}

/// The requests a hostile page made, once it is asserted that `evil.test` got none and that
/// every one went to tamis (`about:invalid` is what tamis puts in place of a blocked URL: no
/// request leaves).
fn only_tamis_was_contacted<'r>(
    report: &'r serde_json::Value,
    origin: &str,
    evil: &Upstream,
) -> Vec<&'r str> {
    let requests: Vec<&str> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let evil_seen: Vec<String> = evil.seen().iter().map(|s| s.uri.clone()).collect();
    assert!(
        evil_seen.is_empty(),
        "evil.test was contacted: {evil_seen:?}"
    );
    for url in &requests {
        assert!(
            url.starts_with(&format!("{origin}/")) || *url == "about:invalid",
            "the browser contacted {url}"
        );
    }
    requests
}

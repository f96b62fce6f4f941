//! Fonts and tiles mirrors against recording upstreams: what the third party receives, and that
//! what the visitor gets names no third-party host.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tamis::mirrors::fonts::CSS_USER_AGENT;

const FIXTURE: &str = include_str!("fixtures/google-fonts-css2-roboto.css");

/// The visitor headers that must never reach a fonts or tiles upstream (User-Agent is checked
/// separately: the fonts CSS request carries a fixed Chrome one).
fn assert_no_visitor_headers(seen: &Seen) {
    for name in [
        "cookie",
        "authorization",
        "accept-language",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "via",
        "sec-ch-ua",
        "x-client-data",
        "if-none-match",
        "origin",
        "dnt",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream at {}",
            seen.uri
        );
    }
    if let Some(r) = seen.header("referer") {
        assert!(!r.contains("account"), "the visitor's page leaked: {r}");
    }
}

async fn fonts_setup(
    css_reply: impl Fn(&Seen, &str) -> Reply + Send + Sync + 'static,
) -> (Upstream, Upstream, Tamis) {
    let files = Upstream::http(|_| {
        Reply::ok(&b"wOF2 font bytes"[..])
            .header("content-type", "application/octet-stream")
            .header("cache-control", "public, max-age=31536000")
    })
    .await;
    let files_base = files.url("/");
    let css = Upstream::http(move |s| css_reply(s, &files_base)).await;
    let config = format!(
        "{LISTEN}[[route]]\nname = \"google-fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\nupstream = \"{}\"\nfiles_prefix = \"/fonts/files/\"\nfiles_upstream = \"{}\"\n",
        css.url("/"),
        files.url("/")
    );
    let t = Tamis::start(&config).await;
    (css, files, t)
}

/// The Google Fonts answer, as if its files host were the local one.
fn google_css(_: &Seen, files_base: &str) -> Reply {
    Reply::ok(FIXTURE.replace("https://fonts.gstatic.com/", files_base))
        .header("content-type", "text/css; charset=utf-8")
        .header(
            "cache-control",
            "private, max-age=86400, stale-while-revalidate=604800",
        )
        .header("vary", "Sec-Fetch-Dest, User-Agent, X-Client-Data")
        .header(
            "link",
            "<https://fonts.gstatic.com>; rel=preconnect; crossorigin",
        )
}

#[tokio::test]
async fn font_css_is_fetched_as_a_fixed_browser_and_served_first_party() {
    let (css, files, t) = fonts_setup(google_css).await;
    let a = t
        .get_with(
            "/fonts/css2?family=Roboto:wght@400;700&display=swap",
            VISITOR,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/css; charset=utf-8"));
    let body = a.text();
    assert!(body.contains("url(/fonts/files/s/roboto/v47/"), "{body}");
    assert!(body.contains("unicode-range"), "{body}");
    assert!(!body.contains("://"), "an absolute URL is left: {body}");
    assert!(!body.contains(&files.addr.to_string()), "{body}");
    assert!(
        a.headers.get("link").is_none(),
        "preconnect to the third party dropped"
    );
    assert_eq!(
        a.header("content-length"),
        Some(body.len().to_string().as_str())
    );

    let seen = css.last();
    assert_eq!(
        seen.uri, "/css2?family=Roboto:wght@400;700&display=swap",
        "the query goes as is"
    );
    assert_eq!(
        seen.header("user-agent"),
        Some(CSS_USER_AGENT),
        "a fixed modern browser, never the visitor's"
    );
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_no_visitor_headers(&seen);

    // Every visitor gets the same CSS: it is shared despite `private` and Vary on what tamis never sends.
    let b = t
        .get("/fonts/css2?family=Roboto:wght@400;700&display=swap")
        .await;
    assert_eq!(b.header("cache-status"), Some("tamis; hit"));
    assert_eq!(b.text(), body);
    assert_eq!(css.count(), 1);
}

#[tokio::test]
async fn font_files_get_a_font_type_cors_and_a_long_life() {
    let (_css, files, t) = fonts_setup(google_css).await;
    let a = t
        .get_with(
            "/fonts/files/s/roboto/v47/KFO7CnqEu92Fr1ME7kSn66aGLdTylUAMa3yUBA.woff2?v=1",
            VISITOR,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("font/woff2"));
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    let seen = files.last();
    assert_eq!(
        seen.uri, "/s/roboto/v47/KFO7CnqEu92Fr1ME7kSn66aGLdTylUAMa3yUBA.woff2",
        "no query to the files host"
    );
    assert_no_visitor_headers(&seen);
    assert!(
        !seen
            .header("user-agent")
            .unwrap_or("")
            .contains("Chrome/131.0.0.0 Safari"),
        "the operator's User-Agent, not a browser's"
    );
    let b = t
        .get("/fonts/files/s/roboto/v47/KFO7CnqEu92Fr1ME7kSn66aGLdTylUAMa3yUBA.woff2")
        .await;
    assert_eq!(b.header("cache-status"), Some("tamis; hit"));
    assert_eq!(files.count(), 1);
}

#[tokio::test]
async fn css_that_cannot_be_rewritten_is_never_served() {
    let (_css, _files, t) = fonts_setup(|_, base| {
        Reply::ok(format!("@font-face {{ src: url({base}x.woff2) }}"))
            .header("content-type", "text/css")
            .header("content-encoding", "gzip")
    })
    .await;
    let a = t.get("/fonts/css2?family=X").await;
    assert_eq!(a.status, 502);
    assert!(!a.text().contains("x.woff2"));
}

#[tokio::test]
async fn unknown_hosts_in_css_are_blocked_and_uncacheable_css_is_still_rewritten() {
    let (_css, _files, t) = fonts_setup(|_, base| {
        Reply::ok(format!(
            "@import url(https://tracker.example/t.css);\n@font-face {{ src: url({base}a.woff2), url(//cdn.example/b.woff) }}"
        ))
        .header("content-type", "text/css")
        .header("cache-control", "no-store")
    })
    .await;
    let a = t.get("/fonts/css?family=X").await;
    let body = a.text();
    assert!(body.contains("url(/fonts/files/a.woff2)"), "{body}");
    assert_eq!(body.matches("about:invalid").count(), 2, "{body}");
    assert!(
        !body.contains("tracker") && !body.contains("cdn.example"),
        "{body}"
    );
    assert_eq!(
        a.header("cache-status"),
        Some("tamis; fwd=miss; detail=forbidden")
    );
}

async fn tiles_setup(
    extra: &str,
    reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> (Upstream, Tamis) {
    let up = Upstream::http(reply).await;
    let config = format!(
        "{LISTEN}[upstream]\nuser_agent = \"tamis-test tiles (+https://operator.test/; ops@operator.test)\"\n\n[[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/tiles/\"\nupstream = \"{}{{z}}/{{x}}/{{y}}{{r}}.png\"\nreferer = \"https://mysite.test/\"\nmax_zoom = 18\n{extra}\n",
        up.url("/")
    );
    let t = Tamis::start(&config).await;
    (up, t)
}

#[tokio::test]
async fn tiles_are_fetched_from_the_template_with_the_site_as_referer() {
    let (up, t) = tiles_setup("", |_| {
        Reply::ok(&b"\x89PNG tile"[..])
            .header("content-type", "image/png")
            .header("cache-control", "max-age=600")
    })
    .await;
    let a = t.get_with("/tiles/3/4/5.png?session=abc", VISITOR).await;
    assert_eq!(
        (a.status, a.header("content-type")),
        (200, Some("image/png"))
    );
    let seen = up.last();
    assert_eq!(
        seen.uri, "/3/4/5.png",
        "built from the template; the visitor's query is not sent"
    );
    assert_eq!(
        seen.header("referer"),
        Some("https://mysite.test/"),
        "the site's origin, never the visitor's page"
    );
    assert_eq!(
        seen.header("user-agent"),
        Some("tamis-test tiles (+https://operator.test/; ops@operator.test)")
    );
    assert!(
        seen.headers.get("cache-control").is_none() && seen.headers.get("pragma").is_none(),
        "never no-cache"
    );
    assert_no_visitor_data(&seen);
    let retina = t.get("/tiles/3/4/5@2x.png").await;
    assert_eq!(retina.status, 200);
    assert_eq!(up.last().uri, "/3/4/5@2x.png");
    assert_eq!(
        t.get("/tiles/3/4/5.png").await.header("cache-status"),
        Some("tamis; hit")
    );
}

#[tokio::test]
async fn bad_tile_paths_are_400_and_contact_nobody() {
    let (up, t) = tiles_setup("", |_| Reply::ok("tile")).await;
    for p in [
        "/tiles/19/0/0.png",
        "/tiles/3/8/0.png",
        "/tiles/3/0/-1.png",
        "/tiles/3/0/0.jpg",
        "/tiles/3/0/0.gif",
        "/tiles/3/0/0",
        "/tiles/3/0/0.png/x",
        "/tiles/a/b/c.png",
        "/tiles/3/0/%30.png",
        "/tiles/../../etc/passwd",
        "/tiles/3/0/0.png%00",
    ] {
        assert_eq!(t.get(p).await.status, 400, "{p}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_tile_outage_does_not_blank_the_map() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let (_up, t) = tiles_setup("", move |_| {
        match c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Reply::ok("tile v1").header("cache-control", "max-age=1"),
            _ => Reply::ok("overloaded").status(503),
        }
    })
    .await;
    t.get("/tiles/1/0/0.png").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = t.get("/tiles/1/0/0.png").await;
    assert_eq!(
        (a.status, a.text().as_str()),
        (200, "tile v1"),
        "stale-if-error is on for tiles by default"
    );
}

#[tokio::test]
async fn upstream_concurrency_is_capped_per_route() {
    let (up, t) = tiles_setup("max_upstream_connections = 2", |_| {
        Reply::ok("tile")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(150))
    })
    .await;
    let addr = t.http;
    let tasks: Vec<_> = (0..8u32)
        .map(|x| tokio::spawn(async move { get(addr, &format!("/tiles/3/{x}/0.png"), &[]).await }))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(up.count(), 8);
    assert!(up.max_in_flight() <= 2, "{} at once", up.max_in_flight());
}

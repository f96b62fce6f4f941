//! What a hostile, compromised or sloppy upstream can make the visitor's browser do through
//! tamis: fetch from a third party (a stylesheet tamis did not rewrite, a `Link` hint), report
//! to one (CSP, the Reporting API), store state for one (unknown headers), or round-trip an
//! identifier (validators). Every answer here is built to do one of those; none may.

mod common;

use std::io::Write as _;

use common::*;

fn config(routes: &str) -> String {
    format!("{LISTEN}{routes}")
}

/// A fonts route whose CSS and files sides are `css` and `files`.
fn fonts_route(css: &Upstream, files: &Upstream) -> String {
    format!(
        "[[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\nupstream = \"{}\"\n\
         files_prefix = \"/fonts/files/\"\nfiles_upstream = \"{}\"\n\n",
        css.url("/"),
        files.url("/")
    )
}

/// Font CSS naming its files on `files`, and a third party.
fn font_css(files: &str) -> String {
    format!(
        "@font-face {{ font-family: 'T'; src: url({files}s/t.woff2) format('woff2'); }}\n\
         .x {{ background: url(https://evil.example/pixel.png); }}\n"
    )
}

/// The answer is a stylesheet as tamis serves every one: rewritten, UTF-8 and saying so, never
/// sniffed as anything else.
fn assert_rewritten(a: &Answer, what: &str) {
    assert_eq!(a.status, 200, "{what}: {}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("text/css; charset=utf-8"),
        "{what}"
    );
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    let body = a.text();
    assert!(
        !body.contains("evil.example") && !body.contains("://"),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn font_css_is_rewritten_whatever_type_the_upstream_claims() {
    let files = Upstream::http(|_| Reply::ok("font")).await;
    let files_url = files.url("/");
    let css = Upstream::http(move |s| {
        let body = font_css(&files_url);
        match s.uri.as_str() {
            "/css?t=upper" => Reply::ok(body).header("content-type", "Text/CSS"),
            "/css?t=none" => Reply::ok(body).without("content-type"),
            "/css?t=plain" => Reply::ok(body).header("content-type", "text/plain"),
            "/css?t=octets" => Reply::ok(body).header("content-type", "application/octet-stream"),
            "/css?t=list" => Reply::ok(body).header("content-type", "text/plain, text/css"),
            // An error page: the browser applies no stylesheet with a 404, but it is answered
            // from the CSS side all the same.
            _ => Reply::ok(format!("<a href=\"https://evil.example/help\">{body}</a>"))
                .status(404)
                .header("content-type", "text/html"),
        }
    })
    .await;
    let t = Tamis::start(&config(&fonts_route(&css, &files))).await;
    for t_ in ["upper", "none", "plain", "octets", "list"] {
        let a = t.get(&format!("/fonts/css?t={t_}")).await;
        assert_rewritten(&a, t_);
        assert!(
            a.text().contains("url(/fonts/files/s/t.woff2)"),
            "{t_}: {}",
            a.text()
        );
    }
    let a = t.get("/fonts/css?t=error").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(!a.text().contains("evil.example"), "{}", a.text());
}

/// In ISO-2022-JP, `ESC $ B` starts two-byte characters: the `"` after it is half of one, so
/// the browser sees no string, and a url() after `ESC ( B`. Read as UTF-8, the same bytes open
/// a string that hides the url().
const ISO_2022_JP_TRAP: &[u8] = b".x{b:\x1b$B\"\x1b(B url(https://evil.example/jp.png)}";

#[tokio::test]
async fn css_in_another_charset_is_read_as_the_browser_reads_it() {
    let files = Upstream::http(|_| Reply::ok("font")).await;
    let css = Upstream::http(|s| match s.uri.as_str() {
        "/css?c=jp" => {
            Reply::ok(ISO_2022_JP_TRAP).header("content-type", "text/css; charset=iso-2022-jp")
        }
        "/css?c=jp-rule" => {
            Reply::ok([b"@charset \"iso-2022-jp\";".as_slice(), ISO_2022_JP_TRAP].concat())
                .header("content-type", "text/css")
        }
        "/css?c=utf16" => {
            let utf16: Vec<u8> = [0xfe, 0xff]
                .into_iter()
                .chain(
                    ".x{b:url(https://evil.example/16.png)}"
                        .encode_utf16()
                        .flat_map(u16::to_be_bytes),
                )
                .collect();
            Reply::ok(utf16).header("content-type", "text/css; charset=utf-8")
        }
        _ => Reply::ok(".x{b:+AHs-}").header("content-type", "text/css; charset=utf-7"),
    })
    .await;
    let t = Tamis::start(&config(&fonts_route(&css, &files))).await;
    for c in ["jp", "jp-rule", "utf16"] {
        let a = t.get(&format!("/fonts/css?c={c}")).await;
        assert_rewritten(&a, c);
        assert!(a.text().contains("url(about:invalid)"), "{c}: {}", a.text());
    }
    // UTF-7 is no encoding a browser knows: what it would read is anyone's guess.
    let a = t.get("/fonts/css?c=utf7").await;
    assert_eq!(a.status, 502, "{}", a.text());
}

#[tokio::test]
async fn a_stylesheet_on_any_route_is_rewritten() {
    let evil_css = ".x{background:url(https://evil.example/a.png)} .y{src:url(//evil.example/b)}";
    // The files side: a stylesheet reached through a rewritten @import.
    let files = Upstream::http(move |s| match s.uri.as_str() {
        "/import.css" => Reply::ok(evil_css).header("content-type", "text/css"),
        _ => Reply::ok("font").header("content-type", "font/woff2"),
    })
    .await;
    let files_url = files.url("/");
    let css = Upstream::http(move |_| {
        Reply::ok(format!("@import url({files_url}import.css);")).header("content-type", "text/css")
    })
    .await;
    // A CDN: a library's stylesheet, compressed as CDNs send them.
    let cdn = Upstream::http(move |s| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(evil_css.as_bytes()).unwrap();
        match s.uri.as_str() {
            "/lib/leaflet.css" => Reply::ok(gz.finish().unwrap())
                .header("content-type", "TEXT/CSS; charset=utf-8")
                .header("content-encoding", "gzip"),
            _ => Reply::ok(evil_css).header("content-type", "text/css"),
        }
    })
    .await;
    // A tile server answering with a stylesheet.
    let tiles =
        Upstream::http(move |_| Reply::ok(evil_css).header("content-type", "text/css")).await;
    let routes = fonts_route(&css, &files)
        + &route("cdn", "/cdn/", &cdn.url("/"), "")
        + &format!(
            "[[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/tiles/\"\n\
             upstream = \"{}{{z}}/{{x}}/{{y}}.png\"\n",
            tiles.url("/")
        );
    let t = Tamis::start(&config(&routes)).await;
    let a = t.get("/fonts/css2?family=T").await;
    assert_rewritten(&a, "fonts CSS");
    assert_eq!(a.text(), "@import url(/fonts/files/import.css);");
    for path in [
        "/fonts/files/import.css",
        "/cdn/lib/leaflet.css",
        "/cdn/x.css",
        "/tiles/1/0/0.png",
    ] {
        let a = t.get(path).await;
        assert_rewritten(&a, path);
        assert!(a.header("content-encoding").is_none(), "{path}");
        assert_eq!(
            a.text(),
            ".x{background:url(about:invalid)} .y{src:url(about:invalid)}",
            "{path}"
        );
        // From the cache too.
        assert_eq!(t.get(path).await.body, a.body, "{path}");
    }
    // What is not a stylesheet is not touched, and is never sniffed as one.
    let a = t.get("/fonts/files/s/t.woff2").await;
    assert_eq!(a.text(), "font");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn link_entries_a_browser_would_follow_off_site_never_reach_it() {
    let up = Upstream::http(|_| {
        Reply::ok("<!doctype html>")
            .header("content-type", "text/html")
            // The URL parser deletes the tab: `/\t/evil.example` is `//evil.example`.
            .header("link", "</\t/evil.example/tab.png>; rel=preload; as=image")
            .header(
                "link",
                "</a.png>; rel=preload; as=image; imagesrcset=\"/a.png 1x, https://evil.example/2x.png 2x\"",
            )
            .header("link", "</a>; rel=preload; as=fetch; anchor=\"https://evil.example/\"")
            // Split on every comma outside quotes, this is a second entry for //evil.example.
            .header("link", "</b,<//evil.example/comma.png>; rel=preload; as=image>; rel=preload")
            .header("link", "</ok.css>;rel=\"preload\";   as=style, <https://evil.example/>; rel=preconnect")
    })
    .await;
    let t = Tamis::start(&config(&route("cdn", "/cdn/", &up.url("/"), ""))).await;
    let a = t.get("/cdn/page.html").await;
    let links: Vec<&str> = a
        .headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(links, ["</ok.css>; rel=preload; as=style"]);
}

#[tokio::test]
async fn reporting_and_unknown_headers_never_reach_the_browser() {
    let up = Upstream::http(|_| {
        Reply::ok("x")
            .header("content-type", "text/html")
            .header("cache-control", "max-age=60")
            .header(
                "content-security-policy",
                "default-src 'self'; report-uri https://evil.example/csp; report-to csp",
            )
            .header(
                "content-security-policy-report-only",
                "img-src 'none'; report-uri https://evil.example/csp-ro",
            )
            .header(
                "attribution-reporting-register-os-source",
                "\"https://evil.example/a\"",
            )
            .header("attribution-reporting-info", "preferred-platform=os")
            .header(
                "shared-storage-write",
                "set;key=\"id\";value=\"visitor-42\"",
            )
            .header(
                "sec-session-registration",
                "(ES256);path=\"https://evil.example/reg\"",
            )
            .header("observe-browsing-topics", "?1")
            .header("x-visitor-id", "visitor-42")
            .header("timing-allow-origin", "*")
            .header("sourcemap", "https://evil.example/x.map")
    })
    .await;
    let routes = route("cdn", "/cdn/", &up.url("/"), "")
        + &format!(
            "[[route]]\nname = \"tiles\"\nkind = \"tiles\"\nprefix = \"/tiles/\"\n\
             upstream = \"{}{{z}}/{{x}}/{{y}}.png\"\n",
            up.url("/")
        );
    let t = Tamis::start(&config(&routes)).await;
    let a = t.get("/cdn/page.html").await;
    let mut names: Vec<&str> = a.headers.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "accept-ranges",
            "age",
            "cache-control",
            "cache-status",
            "content-length",
            "content-security-policy",
            "content-type",
            "date",
            "etag",
            "x-content-type-options"
        ]
    );
    assert_eq!(
        a.header("content-security-policy"),
        Some("default-src 'self'")
    );
    // A tile needs no page protection: not even the policy passes.
    let a = t.get("/tiles/1/0/0.png").await;
    assert!(a.header("content-security-policy").is_none());
    assert!(a.header("x-visitor-id").is_none());
}

#[tokio::test]
async fn browser_validators_never_reach_an_uncached_upstream_and_its_etag_never_reaches_the_browser(
) {
    let up = Upstream::http(|s| match s.uri.as_str() {
        "/missing" => Reply::ok("gone")
            .status(404)
            .header("etag", "\"visitor-42-404\"")
            .header("cache-control", "max-age=60"),
        _ => Reply::ok("0123456789")
            .header("etag", "\"visitor-42\"")
            .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
    })
    .await;
    let routes = route("live", "/live/", &up.url("/"), "cache = false")
        + &route("cdn", "/cdn/", &up.url("/"), "");
    let t = Tamis::start(&config(&routes)).await;
    let a = t
        .get_with(
            "/live/file",
            &[
                ("range", "bytes=0-3"),
                ("if-range", "\"visitor-42\""),
                ("if-none-match", "\"visitor-42\""),
                ("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ],
        )
        .await;
    let seen = up.last();
    for h in ["if-range", "if-none-match", "if-modified-since"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.header("range"), Some("bytes=0-3"));
    assert!(a.header("etag").is_none(), "{:?}", a.header("etag"));
    // A stored answer shows tamis's own ETag (from the bytes) or, on other statuses, none.
    let a = t.get("/cdn/file").await;
    assert!(a.header("etag").is_some_and(|e| !e.contains("visitor")));
    for _ in 0..2 {
        let a = t.get("/cdn/missing").await;
        assert_eq!(a.status, 404);
        assert!(a.header("etag").is_none(), "{:?}", a.header("etag"));
    }
}

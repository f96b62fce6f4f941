//! `tamis audit`: saved pages (`tests/pages/`) against the shipped config, suggested routes that
//! `tamis check` accepts, exit codes, and the URL mode against a page served on loopback. The
//! audit fetches only the page it is given; nothing here contacts a host outside this machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use tamis::audit::{classify, scan, Coverage, Load};
use tamis::config::Config;
use tamis::routes::Router;

const BIN: &str = env!("CARGO_BIN_EXE_tamis");

fn root(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn shipped() -> PathBuf {
    root("config/tamis.toml")
}

fn page(name: &str) -> PathBuf {
    root(&format!("tests/pages/{name}"))
}

fn audit(args: &[&str], config: &Path) -> (i32, String, String) {
    let out: Output = Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn page_arg(name: &str) -> String {
    page(name).to_string_lossy().into_owned()
}

/// The suggested `[[route]]` blocks of a report.
fn suggested_blocks(report: &str) -> String {
    let start = report
        .find("suggested routes (")
        .map(|i| i + report[i..].find('\n').unwrap() + 1)
        .unwrap_or(report.len());
    let end = report.rfind("\n\n").unwrap();
    report[start..end].to_owned()
}

/// Third-party URLs of a page and their coverage, through the library.
fn findings(name: &str, site: &str) -> Vec<tamis::audit::Finding> {
    let html = std::fs::read(page(name)).unwrap();
    let config = Config::load(&shipped()).unwrap();
    classify(&scan(&html).unwrap(), Some(site), &Router::new(&config))
}

#[test]
fn wordpress_page_finds_exactly_its_third_party_urls() {
    let f = findings("wordpress.html", "boulangerie-du-port.example");
    let mut got: Vec<&str> = f.iter().map(|f| f.url.as_str()).collect();
    got.sort();
    let mut want = vec![
        // connection hints
        "//fonts.googleapis.com",
        "https://fonts.gstatic.com",
        // WordPress's emoji loader (JSON with escaped slashes in an inline script)
        "https://s.w.org/images/core/emoji/15.0.3/72x72/",
        "https://s.w.org/images/core/emoji/15.0.3/svg/",
        // Google Fonts: <link> (with &#038;) and @import in an inline <style>
        "https://fonts.googleapis.com/css?family=Open+Sans:400italic,700italic,400,700&subset=latin,latin-ext&display=fallback",
        "https://fonts.googleapis.com/css2?family=Playfair+Display:wght@700&display=swap",
        // cdnjs, scheme-relative and absolute
        "//cdnjs.cloudflare.com/ajax/libs/leaflet/1.9.4/leaflet.min.css",
        "//cdnjs.cloudflare.com/ajax/libs/leaflet/1.9.4/leaflet.min.js",
        "https://cdnjs.cloudflare.com/ajax/libs/jquery/3.7.1/jquery.min.js",
        // gtag.js and where it sends hits
        "https://www.googletagmanager.com/gtag/js?id=G-7XK2PLM9QZ",
        "https://www.google-analytics.com/g/collect",
        // Matomo: its script, its tracker URL, and the <noscript> pixel
        "//stats.example.org/matomo.js",
        "//stats.example.org/matomo.php",
        "//stats.example.org/matomo.php?idsite=3&rec=1",
        // Leaflet's tile template in an inline script
        "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png",
        // Jetpack's image CDN (style url(), img src and srcset) and an unquoted <IMG SRC=…>
        "https://i0.wp.com/boulangerie-du-port.example/wp-content/uploads/2024/03/banniere.jpg?w=1600&ssl=1",
        "https://i0.wp.com/boulangerie-du-port.example/wp-content/uploads/2024/03/vitrine.jpg?resize=1024%2C683&ssl=1",
        "https://i0.wp.com/boulangerie-du-port.example/wp-content/uploads/2024/03/vitrine.jpg?w=1600&ssl=1",
        "https://static.tacdn.com/img2/brand_refresh/Tripadvisor_lockup_horizontal_secondary.svg",
    ];
    want.sort();
    // Not there: the site's own URLs, links (<a href>, canonical, alternate, api.w.org), JSON-LD,
    // comments in CSS and JS, text in CSS strings, and the attribution link inside a JS string.
    assert_eq!(got, want);
    let places = |url: &str| {
        f.iter()
            .find(|x| x.url == url)
            .map(|x| x.places.join(" | "))
            .unwrap()
    };
    assert_eq!(
        places("//stats.example.org/matomo.php?idsite=3&rec=1"),
        "<noscript> <img src>"
    );
    assert_eq!(
        places("https://i0.wp.com/boulangerie-du-port.example/wp-content/uploads/2024/03/vitrine.jpg?resize=1024%2C683&ssl=1"),
        "<img src> | <img srcset>"
    );
    let hints: Vec<&str> = f
        .iter()
        .filter(|x| x.load == Load::Hint)
        .map(|x| x.url.as_str())
        .collect();
    assert_eq!(
        hints,
        ["//fonts.googleapis.com", "https://fonts.gstatic.com"]
    );
}

#[test]
fn covered_resources_map_to_first_party_urls_with_the_shipped_config() {
    let f = findings("wordpress.html", "boulangerie-du-port.example");
    let mapped = |url: &str| match &f.iter().find(|x| x.url == url).unwrap().coverage {
        Coverage::Covered {
            route, first_party, ..
        } => Some((route.as_str(), first_party.as_str())),
        _ => None,
    };
    assert_eq!(
        mapped("https://fonts.googleapis.com/css?family=Open+Sans:400italic,700italic,400,700&subset=latin,latin-ext&display=fallback"),
        Some(("google-fonts", "/fonts/css?family=Open+Sans:400italic,700italic,400,700&subset=latin,latin-ext&display=fallback"))
    );
    assert_eq!(
        mapped("https://fonts.googleapis.com/css2?family=Playfair+Display:wght@700&display=swap"),
        Some((
            "google-fonts",
            "/fonts/css2?family=Playfair+Display:wght@700&display=swap"
        ))
    );
    assert_eq!(
        mapped("//cdnjs.cloudflare.com/ajax/libs/leaflet/1.9.4/leaflet.min.js"),
        Some(("cdnjs", "/cdnjs/leaflet/1.9.4/leaflet.min.js"))
    );
    assert_eq!(
        mapped("https://cdnjs.cloudflare.com/ajax/libs/jquery/3.7.1/jquery.min.js"),
        Some(("cdnjs", "/cdnjs/jquery/3.7.1/jquery.min.js"))
    );
    assert_eq!(
        mapped("https://www.googletagmanager.com/gtag/js?id=G-7XK2PLM9QZ"),
        Some(("gtag", "/gtag/js?id=G-7XK2PLM9QZ"))
    );
    // The shipped GA4 route (region1) covers gtag's hits to www.google-analytics.com.
    assert_eq!(
        mapped("https://www.google-analytics.com/g/collect"),
        Some(("ga", "/a/g/collect"))
    );
    // {s}.tile.openstreetmap.org is the same server as the route's tile.openstreetmap.org.
    assert_eq!(
        mapped("https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png"),
        Some(("osm", "/tiles/osm/{z}/{x}/{y}.png"))
    );
    for uncovered in [
        "//stats.example.org/matomo.php",
        "https://s.w.org/images/core/emoji/15.0.3/svg/",
        "https://static.tacdn.com/img2/brand_refresh/Tripadvisor_lockup_horizontal_secondary.svg",
    ] {
        assert_eq!(mapped(uncovered), None, "{uncovered}");
    }
    let hint = &f
        .iter()
        .find(|x| x.url == "https://fonts.gstatic.com")
        .unwrap()
        .coverage;
    assert_eq!(
        *hint,
        Coverage::Hint {
            serving: Some("google-fonts".into())
        }
    );
}

#[test]
fn the_binary_reports_covered_and_uncovered_and_exits_1() {
    let (code, out, err) = audit(&[&page_arg("wordpress.html")], &shipped());
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    // The site comes from the page's canonical URL: its own absolute URLs are first-party.
    assert!(
        out.lines().next().unwrap().ends_with(
            "(site boulangerie-du-port.example, from the page's canonical URL; --site to change)"
        ),
        "{out}"
    );
    assert!(
        !out.contains("  https://boulangerie-du-port.example/"),
        "{out}"
    );
    assert!(out.contains("\ncovered (8):\n"), "{out}");
    assert!(out.contains("\nNOT COVERED (11):\n"), "{out}");
    assert!(out.contains(
        "  https://cdnjs.cloudflare.com/ajax/libs/jquery/3.7.1/jquery.min.js -> /cdnjs/jquery/3.7.1/jquery.min.js (route cdnjs; <script src>)\n"
    ), "{out}");
    assert!(out.contains(
        "  https://www.google-analytics.com/g/collect -> /a/g/collect (route ga; gtag.js (sends hits here)); in gtag's config set server_container_url: 'https://boulangerie-du-port.example/a'\n"
    ), "{out}");
    assert!(out.contains(
        "  //stats.example.org/matomo.php?idsite=3&rec=1 (<noscript> <img src>) -> no route; with the suggested route matomo: /m/matomo.php?idsite=3&rec=1\n"
    ), "{out}");
    assert!(out.contains(
        "  //fonts.googleapis.com (<link rel=dns-prefetch href>) -> remove this connection hint (route google-fonts already serves this host first-party)\n"
    ), "{out}");
    assert!(
        out.ends_with("\n19 third-party resources: 8 covered, 11 not covered\n"),
        "{out}"
    );
    // --site wins over the canonical URL.
    let (code, out, _) = audit(
        &[
            &page_arg("wordpress.html"),
            "--site",
            "https://other.example",
        ],
        &shipped(),
    );
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!(
        "{}: third-party resources (site other.example)\n",
        page_arg("wordpress.html")
    )));
    assert!(out.contains("  https://boulangerie-du-port.example/wp-includes/css/dist/block-library/style.min.css?ver=6.5.2 (<link rel=stylesheet href>)"), "{out}");
}

#[test]
fn suggested_routes_pass_check_and_cover_everything_but_the_hints() {
    let (code, out, _) = audit(&[&page_arg("wordpress.html")], &shipped());
    assert_eq!(code, 1);
    let blocks = suggested_blocks(&out);
    for name in [
        "s-w-org",
        "i0-wp-com",
        "matomo-js",
        "matomo",
        "static-tacdn-com",
    ] {
        assert!(
            blocks.contains(&format!("name = \"{name}\"")),
            "{name}: {blocks}"
        );
    }
    // Appended to the running config they are valid for Config::parse and for `tamis check`.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\n{blocks}", std::fs::read_to_string(shipped()).unwrap());
    let combined = dir.path().join("tamis.toml");
    std::fs::write(&combined, &text).unwrap();
    Config::parse(&text, &combined).unwrap_or_else(|e| panic!("{e}\n{blocks}"));
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&combined)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // With them, only the connection hints are left, and they are to be removed, not routed.
    let (code, out, _) = audit(&[&page_arg("wordpress.html")], &combined);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.ends_with("\n19 third-party resources: 17 covered, 2 not covered\n"),
        "{out}"
    );
    assert!(!out.contains("suggested routes"), "{out}");
    assert!(out.contains(
        "  //stats.example.org/matomo.php -> /m/matomo.php (route matomo; inline <script> (Matomo tracker URL)); in the snippet set the tracker URL to /m/matomo.php\n"
    ), "{out}");
}

#[test]
fn a_page_whose_resources_are_all_covered_exits_0() {
    let (code, out, err) = audit(&[&page_arg("covered.html")], &shipped());
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "  https://fonts.gstatic.com/s/roboto/v47/KFO7CnqEu92Fr1ME7kSn66aGLdTylUAMa3yUBA.woff2 -> /fonts/files/s/roboto/v47/KFO7CnqEu92Fr1ME7kSn66aGLdTylUAMa3yUBA.woff2 (route google-fonts; <link rel=preload href>)",
        "  https://fonts.bunny.net/css?family=inter:400,700 -> /bunny-fonts/css?family=inter:400,700 (route bunny-fonts; inline <style> @import)",
        "  https://tile.openstreetmap.org/16/33004/23907.png -> /tiles/osm/16/33004/23907.png (route osm; <img src>)",
        "  https://tile.openstreetmap.org/{z}/{x}/{y}.png -> /tiles/osm/{z}/{x}/{y}.png (route osm; inline <script>)",
    ] {
        assert!(out.contains(&format!("{line}\n")), "{line}\n{out}");
    }
    assert!(
        out.ends_with("\n5 third-party resources: 5 covered, 0 not covered\n"),
        "{out}"
    );
    // gtag is first-party and pointed at tamis (server_container_url): no hit goes to Google.
    assert!(!out.contains("google-analytics"), "{out}");
}

#[test]
fn malformed_markup_is_read_as_a_browser_reads_it() {
    let html = std::fs::read(page("malformed.html")).unwrap();
    let found = scan(&html).unwrap();
    let got: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.url.as_str(), f.place.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "//cdn.jsdelivr.net/npm/bootstrap@5.3.3/dist/css/bootstrap.min.css",
                "<link rel=stylesheet href>"
            ),
            (
                "https://icons.example.net/favicon.ico",
                "<link rel=icon href>"
            ),
            // `<body <div … style=…>`: the attributes belong to <body>.
            ("//img.example.net/bg.png", "<body style> url()"),
            ("https://img.example.net/a.png", "<img src>"),
            // Unquoted: the slash before `>` is part of the value.
            ("https://img.example.net/b.png/", "<img src>"),
            ("https://img.example.net/c.png", "<img src>"),
            ("https://select.example.org/in-select.js", "inline <script>"),
            ("https://svg.example.org/pic.svg", "<image xlink:href>"),
            // An iframe's content is text: the img and link inside it are not loaded.
            (
                "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ",
                "<iframe src>"
            ),
            // A page saved mid-script still counts what the script had.
            (
                "https://unpkg.com/htmx.org@2.0.4/dist/htmx.min.js",
                "inline <script>"
            ),
        ]
    );
    let (code, out, _) = audit(&[&page_arg("malformed.html")], &shipped());
    assert_eq!(code, 1);
    assert!(
        out.ends_with("\n10 third-party resources: 1 covered, 9 not covered\n"),
        "{out}"
    );
}

#[test]
fn errors_exit_2_with_a_message() {
    let (code, out, err) = audit(&["tests/pages/no-such-page.html"], &shipped());
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: cannot read tests/pages/no-such-page.html: "),
        "{err}"
    );
    let (code, _, err) = audit(&["ftp://site.example/index.html"], &shipped());
    assert_eq!(code, 2);
    assert!(err.contains("only http:// and https:// pages"), "{err}");
    let (code, _, err) = audit(&["http://exa mple/"], &shipped());
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: invalid URL \"http://exa mple/\""),
        "{err}"
    );
    let (code, _, err) = audit(
        &[&page_arg("covered.html"), "--site", "ftp://site.example"],
        &shipped(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("not an http:// or https:// URL"), "{err}");
}

/// Runs the binary off the async runtime (the loopback server runs on it meanwhile).
async fn audit_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        audit(&args, &shipped())
    })
    .await
    .unwrap()
}

const SERVED: &str = r#"<!doctype html><html><head>
<link rel="stylesheet" href="http://HOST/assets/site.css">
<link rel="stylesheet" href="https://fonts.googleapis.com/css2?family=Inter&display=swap">
<script src="//HOST/assets/app.js"></script>
<script src="https://cdn.example-cdn.net/lib.js"></script>
</head><body><img src="/img/a.png"><img src="http://HOST/img/b.png"></body></html>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_mode_fetches_the_page_and_counts_its_host_as_first_party() {
    let host = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let h = host.clone();
    let site = Upstream::http(move |seen| {
        let body = SERVED.replace("HOST", h.get().unwrap());
        match seen.uri.as_str() {
            "/old" => Reply::ok("").status(301).header("location", "/page.html"),
            "/page.html" => Reply::ok(body).header("content-type", "text/html; charset=utf-8"),
            _ => Reply::ok("not found").status(404),
        }
    })
    .await;
    host.set(site.addr.to_string()).unwrap();
    // A same-host redirect is followed.
    let (code, out, err) = audit_async(vec![site.url("/old")]).await;
    assert_eq!(code, 1, "{out}{err}");
    let (first, rest) = out.split_once('\n').unwrap();
    assert_eq!(
        first,
        format!(
            "{}: third-party resources (site 127.0.0.1)",
            site.url("/old")
        )
    );
    assert!(rest.contains(
        "  https://fonts.googleapis.com/css2?family=Inter&display=swap -> /fonts/css2?family=Inter&display=swap (route google-fonts; <link rel=stylesheet href>)\n"
    ), "{out}");
    assert!(rest.contains(
        "  https://cdn.example-cdn.net/lib.js (<script src>) -> no route; with the suggested route cdn-example-cdn-net: /cdn-example-cdn-net/lib.js\n"
    ), "{out}");
    assert!(
        !rest.contains("127.0.0.1"),
        "same-host resources are first-party: {out}"
    );
    assert!(
        out.ends_with("\n2 third-party resources: 1 covered, 1 not covered\n"),
        "{out}"
    );
    // Only the page was fetched: the redirect and the page, nothing it names.
    let uris: Vec<String> = site.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/old", "/page.html"]);
    let ua = site.last().header("user-agent").unwrap_or("").to_owned();
    assert!(ua.starts_with("tamis"), "{ua}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_mode_refuses_other_hosts_errors_and_huge_pages() {
    let other = Upstream::http(|_| Reply::ok("<p>elsewhere</p>")).await;
    let target = other.url("/landing");
    let big = "x".repeat(tamis::audit::MAX_PAGE_BYTES + 1);
    let site = Upstream::http(move |seen| match seen.uri.as_str() {
        // Another port on the same machine is the same host: use a name for the other host.
        "/away" => Reply::ok("")
            .status(302)
            .header("location", &target.replace("127.0.0.1", "localhost")),
        "/big" => Reply::ok(big.clone()),
        "/broken" => Reply::ok("oops").status(500),
        _ => Reply::ok("not found").status(404),
    })
    .await;
    let (code, out, err) = audit_async(vec![site.url("/away")]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("redirects to another host (http://localhost:"),
        "{err}"
    );
    assert_eq!(other.count(), 0, "the redirect is not followed");
    for (path, why) in [
        ("/missing", "answered 404 Not Found"),
        ("/broken", "answered 500 Internal Server Error"),
        ("/big", "larger than 10485760 bytes"),
    ] {
        let (code, _, err) = audit_async(vec![site.url(path)]).await;
        assert_eq!(code, 2, "{path}");
        assert!(
            err.starts_with(&format!("error: cannot fetch {}: ", site.url(path)))
                && err.contains(why),
            "{path}: {err}"
        );
    }
    // Nothing listening: a clear fetch error, not a hang.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (code, _, err) = audit_async(vec![format!("http://{closed}/")]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot fetch"), "{err}");
}

/// A video player is never "covered", even by a route mirroring its host: the player would
/// load its scripts, thumbnails and the video from the provider. It needs a click-to-load
/// facade, and no route is suggested for it. A Gravatar image is its own case: a suggested
/// route that forwards the size and default, and a note that its path still publishes a hash
/// of the commenter's e-mail address.
#[test]
fn video_players_need_a_facade_and_gravatar_is_its_own_case() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tamis.toml");
    let mirror_youtube = "\n[[route]]\nname = \"youtube\"\nkind = \"static\"\nprefix = \"/yt/\"\n\
                          upstream = \"https://www.youtube.com/\"\n";
    std::fs::write(
        &config,
        format!(
            "{}{mirror_youtube}",
            std::fs::read_to_string(shipped()).unwrap()
        ),
    )
    .unwrap();
    let (code, out, err) = audit(&[&page_arg("embeds.html")], &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        !out.contains("\ncovered ("),
        "nothing here is covered: {out}"
    );
    for (url, player) in [
        ("https://www.youtube.com/iframe_api", "YouTube"),
        ("https://www.youtube.com/embed/dQw4w9WgXcQ", "YouTube"),
        (
            "https://www.youtube-nocookie.com/embed/aqz-KE-bpKQ?rel=0",
            "YouTube",
        ),
        (
            "https://player.vimeo.com/video/76979871?h=8272103f6e",
            "Vimeo",
        ),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("  {url} (")))
            .unwrap_or_else(|| panic!("{url}: {out}"));
        assert!(
            line.contains(&format!("-> a {player} player: no route can cover it"))
                && line.contains("click-to-load facade"),
            "{line}"
        );
    }
    let blocks = suggested_blocks(&out);
    assert!(
        !blocks.contains("youtube") && !blocks.contains("vimeo"),
        "{blocks}"
    );
    assert!(blocks.contains("name = \"gravatar\""), "{blocks}");
    assert!(
        blocks.contains("upstream = \"https://secure.gravatar.com/avatar/\"")
            && blocks.contains("forward_query = true")
            && blocks.contains("hash of the commenter's e-mail address"),
        "{blocks}"
    );
    assert!(
        out.ends_with("\n5 third-party resources: 0 covered, 5 not covered\n"),
        "{out}"
    );

    // With the suggested route, the avatar is covered (with the note); the players are not.
    let combined = dir.path().join("with-gravatar.toml");
    std::fs::write(
        &combined,
        format!("{}\n{blocks}", std::fs::read_to_string(&config).unwrap()),
    )
    .unwrap();
    let (code, out, _) = audit(&[&page_arg("embeds.html")], &combined);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(
        "  https://secure.gravatar.com/avatar/5658ffccee7f0ebfda2b226238b1eb6e?s=96&d=mm&r=g -> /avatars/5658ffccee7f0ebfda2b226238b1eb6e?s=96&d=mm&r=g (route gravatar; <img src>); a Gravatar URL is a hash of the commenter's e-mail address"
    ), "{out}");
    assert!(
        out.ends_with("\n5 third-party resources: 1 covered, 4 not covered\n"),
        "{out}"
    );
}

//! The public transparency page: on by default, HTML and JSON from the running config, the same
//! data `tamis check` prints, no secret in it, and it follows a reload.

mod common;

use common::*;

fn config(up: &str, salt: &std::path::Path, ca: &std::path::Path, extra: &str) -> String {
    format!(
        "{LISTEN}[upstream]\nuser_agent = \"tamis-test (ops@site.example)\"\nextra_ca_file = {ca:?}\n\n{extra}\n\
         {}\
         [[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\nupstream = \"{up}\"\nsalt_file = {salt:?}\n\n\
         [[route]]\nname = \"map\"\nkind = \"tiles\"\nprefix = \"/map/\"\n\
         upstream = \"{up}{{z}}/{{x}}/{{y}}.png?key=tile-api-key-secret\"\n\n\
         {}",
        route("cdn", "/cdn/", up, ""),
        route(
            "eu",
            "/eu/",
            up,
            "jurisdiction = \"eu\"\nforward_headers = [\"accept-language\"]"
        ),
        ca = ca.display().to_string(),
        salt = salt.display().to_string(),
    )
}

struct Setup {
    t: Tamis,
    up: Upstream,
    _dir: tempfile::TempDir,
    secrets: Vec<String>,
}

async fn setup(extra: &str) -> Setup {
    let up = Upstream::http(|_| Reply::ok("x")).await;
    let dir = tempfile::tempdir().unwrap();
    let salt = dir.path().join("pseudonym-salt");
    std::fs::write(&salt, "very-secret-salt-value").unwrap();
    let ca = TestCa::new();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let t = Tamis::start(&config(&up.url("/"), &salt, &ca_file, extra)).await;
    let secrets = vec![
        "very-secret-salt-value".to_owned(),
        // A tile provider's API key, in the template's query.
        "tile-api-key-secret".to_owned(),
        salt.display().to_string(),
        ca_file.display().to_string(),
        "pseudonym-salt".to_owned(),
        "private-ca".to_owned(),
        t.admin.unwrap().to_string(),
        t.http.to_string(),
    ];
    Setup {
        t,
        up,
        _dir: dir,
        secrets,
    }
}

#[tokio::test]
async fn the_page_discloses_every_route_in_html_and_json_and_names_no_secret() {
    let s = setup("").await;
    let html = s.t.get("/.well-known/tamis").await;
    assert_eq!(html.status, 200);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(html
        .header("content-security-policy")
        .is_some_and(|v| v.contains("default-src 'none'")));
    let page = html.text();
    for needle in [
        "/cdn/",
        "/eu/",
        "/a/",
        "non-eu",
        "Cookie, Authorization",
        "X-Forwarded-For",
        "Set-Cookie",
        "replaced by &quot;tamis-test (ops@site.example)&quot;",
        "pseudonymised",
        "derived from salt_file: replicas agree",
        "within one rotation period",
        "Accept-Language",
    ] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    let json =
        s.t.get_with("/.well-known/tamis", &[("accept", "application/json")])
            .await;
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.header("vary"), Some("Accept"));
    let doc: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let same: serde_json::Value =
        serde_json::from_slice(&s.t.get("/.well-known/tamis?format=json").await.body).unwrap();
    assert_eq!(doc, same);
    let routes = doc["routes"].as_array().unwrap();
    assert_eq!(
        routes
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["cdn", "ga", "map", "eu"]
    );
    // The tile template is shown, its API key is not.
    assert!(routes[2]["upstream"]
        .as_str()
        .is_some_and(|u| u.ends_with("{z}/{x}/{y}.png?key=…")));
    let eu = &routes[3];
    assert_eq!(eu["jurisdiction"], "eu");
    assert!(eu["sent"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["header"] == "Accept-Language"));
    let cdn = &routes[0];
    assert_eq!(cdn["jurisdiction"], "non-eu");
    assert!(!cdn["sent"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["header"] == "Accept-Language" || h["header"] == "Cookie"));
    assert_eq!(
        routes[1]["analytics"]["endpoints"],
        serde_json::json!(["g/collect"])
    );

    // The config hash is the one the metrics export.
    let hash = doc["config_hash"].as_str().unwrap();
    assert!(s
        .t
        .metrics()
        .await
        .contains(&format!("tamis_config_info{{hash=\"{hash}\"}} 1")));

    for text in [&page, &json.text()] {
        for secret in &s.secrets {
            assert!(!text.contains(secret.as_str()), "page names {secret}");
        }
    }
    assert_eq!(s.up.count(), 0, "the page contacts no upstream");
}

#[tokio::test]
async fn the_page_and_tamis_check_say_the_same() {
    let s = setup("").await;
    let doc: serde_json::Value =
        serde_json::from_slice(&s.t.get("/.well-known/tamis?format=json").await.body).unwrap();
    let config = tamis::config::Config::load(&s.t.config_path).unwrap();
    let check = tamis::transparency::check_report(&config);
    for r in doc["routes"].as_array().unwrap() {
        if r["kind"] == "ga4" {
            let linkage = r["analytics"]["linkage"].as_str().unwrap();
            assert!(
                check.contains(&format!("    linkage: {linkage}\n")),
                "check lacks {linkage:?}"
            );
        }
        for row in r["sent"].as_array().unwrap() {
            let line = format!(
                "    {:<18} {}",
                row["header"].as_str().unwrap(),
                row["value"].as_str().unwrap()
            );
            assert!(check.contains(&line), "check lacks {line:?}");
        }
        for g in r["removed"].as_array().unwrap() {
            let names: Vec<&str> = g["names"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let line = format!(
                "    {}: {}",
                g["reason"].as_str().unwrap(),
                names.join(", ")
            );
            assert!(check.contains(&line), "check lacks {line:?}");
        }
    }
}

#[tokio::test]
async fn conditional_head_and_unsafe_methods() {
    let s = setup("").await;
    let first = s.t.get("/.well-known/tamis").await;
    let etag = first.header("etag").unwrap().to_owned();
    let again =
        s.t.get_with("/.well-known/tamis", &[("if-none-match", &etag)])
            .await;
    assert_eq!((again.status, again.body.len()), (304, 0));
    let head = request(s.t.http, http::Method::HEAD, "/.well-known/tamis", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    let post = request(s.t.http, http::Method::POST, "/.well-known/tamis", &[]).await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn the_path_is_configurable_and_the_page_can_be_turned_off() {
    let moved = setup("[transparency]\npath = \"/privacy/proxy\"\n").await;
    assert_eq!(moved.t.get("/privacy/proxy").await.status, 200);
    assert_eq!(moved.t.get("/.well-known/tamis").await.status, 404);

    let off = setup("[transparency]\nenabled = false\n").await;
    assert_eq!(off.t.get("/.well-known/tamis").await.status, 404);
}

#[tokio::test]
async fn the_page_follows_a_reload() {
    let up = Upstream::http(|_| Reply::ok("x")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    assert!(!t.get("/.well-known/tamis").await.text().contains("/maps/"));
    let r = t
        .reload(&format!(
            "{LISTEN}{}{}",
            route("cdn", "/cdn/", &up.url("/"), ""),
            route("maps", "/maps/", &up.url("/"), "")
        ))
        .await;
    assert_eq!(r.status, 200);
    let page = t.get("/.well-known/tamis").await.text();
    assert!(page.contains("/maps/"), "{page}");
}

#[tokio::test]
async fn the_json_counts_what_each_route_did_and_the_page_links_to_the_probe() {
    let s = setup("[transparency]\nprobe = true\n").await;
    let doc = |t: &Tamis| {
        let t = t.http;
        async move {
            let a = get(t, "/.well-known/tamis?format=json", &[]).await;
            serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()
        }
    };
    let counters = |d: &serde_json::Value, route: &str| {
        d["counters"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .cloned()
            .unwrap()
    };
    let before = doc(&s.t).await;
    assert_eq!(counters(&before, "cdn")["requests"], 0);
    assert_eq!(counters(&before, "cdn")["forwarded"], 0);
    assert_eq!(s.t.get("/cdn/x.js").await.status, 200);
    let a =
        s.t.get("/a/g/collect?v=2&tid=G-1&cid=1.2&uid=bob&sr=1x1&en=page_view")
            .await;
    assert_eq!(a.status, 200);
    let after = doc(&s.t).await;
    let cdn = counters(&after, "cdn");
    assert_eq!(
        (&cdn["requests"], &cdn["forwarded"]),
        (&1.into(), &1.into())
    );
    let ga = counters(&after, "ga");
    assert_eq!(ga["forwarded"], 1);
    // v, tid and en kept; cid pseudonymised; uid and sr dropped (the GA4 table).
    let p = &ga["analytics_params"];
    assert_eq!(p["pseudonymised"], 1, "{ga:#}");
    assert_eq!(p["dropped"], 2, "{ga:#}");
    assert!(p["kept"].as_u64().unwrap() >= 3, "{ga:#}");
    // Nothing counted for a route nobody used.
    assert_eq!(counters(&after, "map")["requests"], 0);

    assert_eq!(after["probe"]["path"], "/.well-known/tamis/probe");
    let html = s.t.get("/.well-known/tamis").await.text();
    assert!(
        html.contains("https://THIS-SITE/.well-known/tamis/probe"),
        "{html}"
    );
    assert!(html.contains("/cdn/example"));
    let off = setup("").await;
    assert!(doc(&off.t).await["probe"].is_null());
    assert!(!off
        .t
        .get("/.well-known/tamis")
        .await
        .text()
        .contains("/probe"));
}

#[tokio::test]
async fn the_page_and_the_status_page_never_show_an_operator_secret() {
    let up = Upstream::http(|_| Reply::ok("").header("cache-control", "no-store")).await;
    let dir = tempfile::tempdir().unwrap();
    let (token, admin_token, salt) = (
        "s3cr3tOperatorToken0123456789",
        "s3cr3t-admin-token-0123456789",
        "s3cr3t-pseudonym-salt-0123456789",
    );
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    // An EU Matomo route sending a synthetic address: it forwards the operator's token.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"0s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         token_file = {:?}\n\n[transparency]\nprobe = true\n\n\
         [[route]]\nname = \"matomo\"\nkind = \"matomo\"\nprefix = \"/m/\"\nupstream = \"{}\"\n\
         jurisdiction = \"eu\"\nclient_ip = \"pseudonym\"\ntoken_file = {:?}\nsalt_file = {:?}\n",
        file("admin.token", admin_token),
        up.url("/"),
        file("matomo.token", token),
        file("salt", salt),
    );
    let t = Tamis::start(&config).await;
    let a = t
        .get("/m/matomo.php?idsite=1&rec=1&url=https%3A%2F%2Fsite.example%2F&_id=0123456789abcdef")
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        String::from_utf8_lossy(&up.last().body).contains(token),
        "the upstream got no token"
    );
    let admin = t.admin.unwrap();
    let auth = format!("Bearer {admin_token}");
    let reloaded = request(
        admin,
        http::Method::POST,
        "/reload",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let mut pages = vec![reloaded];
    for page in ["/.well-known/tamis", "/.well-known/tamis?format=json"] {
        pages.push(t.get(page).await);
    }
    for page in ["/status", "/status?format=json", "/metrics"] {
        pages.push(get(admin, page, &[]).await);
    }
    for p in &pages {
        assert_eq!(p.status, 200);
        let text = p.text();
        // Each page describes the route (the reload's answer names the new config's hash).
        assert!(
            text.contains("matomo") || text.contains("reloaded"),
            "{text}"
        );
        for secret in [token, admin_token, salt] {
            assert!(!text.contains(secret), "shows {secret}: {text}");
        }
    }
}

#[tokio::test]
async fn the_page_says_a_tracking_answer_is_tamiss_own_and_passes_no_upstream_header() {
    let s = setup("").await;
    let doc: serde_json::Value =
        serde_json::from_slice(&s.t.get("/.well-known/tamis?format=json").await.body).unwrap();
    let routes = doc["routes"].as_array().unwrap();
    let headers = |r: &serde_json::Value| -> Vec<String> {
        r["response_allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["header"].as_str().unwrap().to_owned())
            .collect()
    };
    let notes = |r: &serde_json::Value| r["response_notes"].to_string();
    let ga = &routes[1];
    assert_eq!(
        headers(ga),
        ["Content-Type", "Content-Length", "Cache-Control"]
    );
    assert!(
        notes(ga).contains("never the upstream's bytes or headers"),
        "{}",
        notes(ga)
    );
    assert!(!notes(ga).contains("mapped back under"), "{}", notes(ga));
    // Other routes keep their allowlist and their redirect rule.
    let cdn = &routes[0];
    assert!(headers(cdn).contains(&"Location".to_owned()));
    assert!(notes(cdn).contains("mapped back under"));
}

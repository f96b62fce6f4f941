//! Live reload: a valid config is swapped in without dropping connections or the cache of the
//! routes it kept; an invalid one is refused and the old one keeps running; certificates reload.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn cacheable(seen: &Seen) -> Reply {
    Reply::ok(format!("from {}", seen.uri)).header("cache-control", "public, max-age=600")
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.text()))
}

fn metric(metrics: &str, line_start: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn a_reload_keeps_unchanged_routes_cached_and_drops_changed_ones() {
    let up = Upstream::http(cacheable).await;
    let base = up.url("/");
    let before = format!(
        "{LISTEN}{}{}",
        route("keep", "/k/", &base, ""),
        route("change", "/c/", &base, "")
    );
    let t = Tamis::start(&before).await;
    assert_eq!(t.get("/k/a").await.status, 200);
    assert_eq!(t.get("/c/a").await.status, 200);
    assert_eq!(up.count(), 2);
    let m = t.metrics().await;
    let hash_before = m
        .lines()
        .find_map(|l| l.strip_prefix("tamis_config_info{hash=\""))
        .and_then(|l| l.split('"').next())
        .expect("config hash exported")
        .to_owned();

    let after = format!(
        "{LISTEN}{}{}{}",
        route("keep", "/k/", &base, ""),
        route("change", "/c/", &base, "max_ttl = \"60s\""),
        route("new", "/n/", &base, "")
    );
    let r = t.reload(&after).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = json(&r);
    assert_eq!(r["reloaded"], true);
    assert_eq!(r["cache_entries_dropped"], 1, "{r}");
    let hash_after = r["hash"].as_str().unwrap().to_owned();
    assert_ne!(hash_after, hash_before);

    // The unchanged route answers from the cache; the changed one fetches again.
    let k = t.get("/k/a").await;
    assert_eq!(k.header("cache-status"), Some("tamis; hit"));
    assert_eq!(up.count(), 2);
    let c = t.get("/c/a").await;
    assert_eq!(
        (c.status, c.header("cache-status")),
        (200, Some("tamis; fwd=miss; stored"))
    );
    assert_eq!(up.count(), 3);
    assert_eq!(t.get("/n/a").await.text(), "from /a");

    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "tamis_config_reloads_total{result=\"success\"}").as_deref(),
        Some("1")
    );
    assert!(
        m.contains(&format!("tamis_config_info{{hash=\"{hash_after}\"}} 1")),
        "{m}"
    );
    assert!(!m.contains(&hash_before), "the old hash is still exported");
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_old_one_keeps_running() {
    let up = Upstream::http(cacheable).await;
    let good = format!("{LISTEN}{}", route("cdn", "/cdn/", &up.url("/"), ""));
    let t = Tamis::start(&good).await;
    assert_eq!(t.get("/cdn/a").await.status, 200);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    for (bad, why) in [
        (
            format!(
                "{LISTEN}{}",
                route("cdn", "/cdn/", &up.url("/"), "max_tll = \"1s\"")
            ),
            "max_tll",
        ),
        ("this is not toml".to_owned(), "tamis.toml"),
        (
            format!(
                "{}{}",
                LISTEN.replace(
                    "[admin]\nlisten = \"127.0.0.1:0\"",
                    "[admin]\nlisten = \"127.0.0.1:1\""
                ),
                route("cdn", "/cdn/", &up.url("/"), "")
            ),
            "admin.listen changed: this needs a restart",
        ),
        (
            good.replace("[server]", "[cache]\nmax_bytes = 100000000\n\n[server]"),
            "cache.max_bytes changed",
        ),
        (
            // One more than the default of one per core.
            good.replacen(
                "[server]\n",
                &format!("[server]\nworkers = {}\n", cores + 1),
                1,
            ),
            "server.workers changed",
        ),
    ] {
        let r = t.reload(&bad).await;
        assert_eq!(r.status, 409, "{}", r.text());
        let r = json(&r);
        assert_eq!(r["reloaded"], false);
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(why), "{error} should mention {why}");
        // Still serving the old routes, from the cache.
        let a = t.get("/cdn/a").await;
        assert_eq!(
            (a.status, a.header("cache-status")),
            (200, Some("tamis; hit"))
        );
    }
    assert_eq!(up.count(), 1);
    let m = t.metrics().await;
    assert_eq!(
        metric(&m, "tamis_config_reloads_total{result=\"failure\"}").as_deref(),
        Some("5")
    );
    assert_eq!(
        metric(&m, "tamis_config_reloads_total{result=\"success\"}").as_deref(),
        Some("0")
    );

    // Only POST reloads.
    let get = get(t.admin.unwrap(), "/reload", &[]).await;
    assert_eq!(get.status, 405);
}

#[tokio::test]
async fn an_open_keep_alive_connection_survives_a_reload_and_sees_the_new_routes() {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!("{LISTEN}{}", route("a", "/a/", &up.url("/"), ""))).await;
    let stream = tokio::net::TcpStream::connect(t.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = |path: &str| {
        http::Request::get(path)
            .header("host", "site.example")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let first = sender.send_request(req("/a/x")).await.unwrap();
    assert_eq!(first.status(), 200);
    first.into_body().collect().await.unwrap();

    let r = t
        .reload(&format!(
            "{LISTEN}{}{}",
            route("a", "/a/", &up.url("/"), ""),
            route("b", "/b/", &up.url("/"), "")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Same connection, new route.
    let second = sender.send_request(req("/b/y")).await.unwrap();
    assert_eq!(second.status(), 200);
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"from /y");
}

#[tokio::test]
async fn a_reload_picks_up_a_renewed_certificate() {
    let old_ca = TestCa::new();
    let new_ca = TestCa::new();
    let (cert, key) = old_ca.issue_files(&["localhost"]);
    let up = Upstream::http(cacheable).await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        cert.display().to_string(),
        key.display().to_string(),
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let t = Tamis::start(&config).await;
    let port = t.https.unwrap().port();
    // A client that trusts only the new CA.
    let fetch = |trusted: &TestCa| {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        roots
            .add(
                rustls_pki_types::CertificateDer::from_pem_slice(trusted.pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        async move {
            client
                .request(
                    http::Request::get(format!("https://localhost:{port}/cdn/a"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(fetch(&old_ca).await.unwrap(), 200);
    assert!(
        fetch(&new_ca).await.is_err(),
        "new CA trusted before renewal"
    );

    // Renew in place (what certbot does), same config text, then reload.
    let (new_cert, new_key) = new_ca.issue(&["localhost"]);
    std::fs::write(&cert, new_cert).unwrap();
    std::fs::write(&key, new_key).unwrap();
    let r = t.reload(&config).await;
    assert_eq!(r.status, 200, "{}", r.text());

    assert_eq!(fetch(&new_ca).await.unwrap(), 200);
    assert!(
        fetch(&old_ca).await.is_err(),
        "old certificate still served"
    );
}

#[tokio::test]
async fn with_an_admin_token_only_its_holder_may_reload_or_purge() {
    let up = Upstream::http(cacheable).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token-0123456789\n").unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\n{}",
        token_file.display().to_string(),
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let t = Tamis::start(&config).await;
    let admin = t.admin.unwrap();
    let post = |path: &'static str, auth: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        request(admin, http::Method::POST, path, &headers).await
    };
    for path in ["/reload", "/cache/purge?route=cdn&prefix=/cdn/"] {
        let a = post(path, None).await;
        assert_eq!(
            (a.status, a.header("www-authenticate")),
            (401, Some("Bearer"))
        );
        assert_eq!(
            post(path, Some("Bearer wrong-token-0123456789-x"))
                .await
                .status,
            401
        );
        let ok = post(path, Some("Bearer s3cret-admin-token-0123456789")).await;
        assert_eq!(ok.status, 200, "{path}: {}", ok.text());
    }
    // Reading stays open for scrapers and probes.
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    assert!(t.metrics().await.contains("tamis_config_reloads_total"));
    // A short token is refused at load.
    std::fs::write(&token_file, "short").unwrap();
    let r = post("/reload", Some("Bearer s3cret-admin-token-0123456789")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("admin.token_file"));
}

/// tamis with a cached route `cdn` and an admin listener (needing `token` when given), one
/// object stored, and its config file rewritten with a second route: a reload would serve
/// `/b/`, a purge would fetch `/cdn/a` again.
async fn admin_with_one_stored_object(token: Option<&str>) -> (Upstream, Tamis, tempfile::TempDir) {
    let up = Upstream::http(cacheable).await;
    let dir = tempfile::tempdir().unwrap();
    let token_line = token.map_or(String::new(), |token| {
        let file = dir.path().join("admin.token");
        std::fs::write(&file, token).unwrap();
        format!("token_file = {:?}\n", file.display().to_string())
    });
    let admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token_line}\n");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n{admin}{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let t = Tamis::start(&config).await;
    assert_eq!(t.get("/cdn/a").await.status, 200);
    std::fs::write(
        &t.config_path,
        format!("{config}{}", route("b", "/b/", &up.url("/"), "")),
    )
    .unwrap();
    (up, t, dir)
}

/// Asserts that no reload was attempted and no purge happened.
async fn admin_changed_nothing(up: &Upstream, t: &Tamis) {
    let m = t.metrics().await;
    for result in ["success", "failure"] {
        assert_eq!(
            metric(
                &m,
                &format!("tamis_config_reloads_total{{result=\"{result}\"}}")
            )
            .as_deref(),
            Some("0"),
            "{result}"
        );
    }
    assert_eq!(t.get("/b/x").await.status, 404, "reloaded");
    let a = t.get("/cdn/a").await;
    assert_eq!(a.header("cache-status"), Some("tamis; hit"), "purged");
    assert_eq!(up.count(), 1);
}

const STATE_CHANGING: [&str; 2] = ["/reload", "/cache/purge?route=cdn&prefix=/cdn/"];

#[tokio::test]
async fn without_a_token_a_browser_on_another_site_can_neither_reload_nor_purge() {
    let (up, t, _dir) = admin_with_one_stored_object(None).await;
    let admin = t.admin.unwrap();
    let own = format!("http://{admin}");
    let rebound = format!("rebind.example:{}", admin.port());
    let rebound_origin = format!("http://{rebound}");
    let other_port = format!("http://127.0.0.1:{}", t.http.port());
    let browsers: [&[(&str, &str)]; 7] = [
        // A form or fetch() on any website (CSRF).
        &[
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        &[("origin", "https://evil.example")],
        &[("sec-fetch-site", "cross-site")],
        // A sandboxed frame or a data: URL.
        &[("origin", "null")],
        // A page on another port of this host: same site, another origin.
        &[("origin", &other_port), ("sec-fetch-site", "same-site")],
        &[("sec-fetch-site", "same-site")],
        // DNS rebinding: the attacker's name now resolves here, so the page is same-origin.
        &[
            ("host", &rebound),
            ("origin", &rebound_origin),
            ("sec-fetch-site", "same-origin"),
        ],
    ];
    for path in STATE_CHANGING {
        for headers in browsers {
            let a = request(admin, http::Method::POST, path, headers).await;
            assert_eq!(a.status, 403, "{path} {headers:?}: {}", a.text());
        }
    }
    admin_changed_nothing(&up, &t).await;
    // Scripts (no Origin, no Sec-Fetch-Site) and the listener's own origin still may.
    let r = request(
        admin,
        http::Method::POST,
        "/reload",
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.get("/b/x").await.status, 200);
    for (path, headers) in [
        ("/cache/purge?route=cdn&path=/cdn/a", &[][..]),
        (
            "/reload",
            &[("sec-fetch-site", "none"), ("host", "localhost")][..],
        ),
    ] {
        let a = request(admin, http::Method::POST, path, headers).await;
        assert_eq!(a.status, 200, "{path} {headers:?}: {}", a.text());
    }
}

#[tokio::test]
async fn get_and_head_on_reload_or_purge_are_405_and_change_nothing() {
    for token in [None, Some("s3cret-admin-token-0123456789")] {
        let (up, t, _dir) = admin_with_one_stored_object(token).await;
        let admin = t.admin.unwrap();
        let bearer = token.map(|token| format!("Bearer {token}"));
        let auth: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        for path in STATE_CHANGING {
            for method in [http::Method::GET, http::Method::HEAD] {
                for headers in [&[][..], &auth[..]] {
                    let a = request(admin, method.clone(), path, headers).await;
                    assert_eq!(
                        (a.status, a.header("allow")),
                        (405, Some("POST")),
                        "{method} {path} {headers:?} (token {token:?})"
                    );
                }
            }
        }
        admin_changed_nothing(&up, &t).await;
    }
}

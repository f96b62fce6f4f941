//! No path, Host or request-target trick makes tamis contact anything but the configured
//! upstream, under the configured base path.

mod common;

use common::*;

/// A route upstream that records, and a canary no request may ever reach.
async fn setup() -> (Upstream, Upstream, Tamis) {
    let up = Upstream::http(|_| Reply::ok("route").header("cache-control", "no-store")).await;
    let canary = Upstream::http(|_| Reply::ok("CANARY")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/npm/"), "")
    ))
    .await;
    (up, canary, t)
}

fn req(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn traversal_probes_are_refused() {
    let (up, canary, t) = setup().await;
    let c = canary.addr;
    let probes = [
        "/cdn/../secret",
        "/cdn/a/../../secret",
        "/cdn/%2e%2e/secret",
        "/cdn/%2E%2E/secret",
        "/cdn/.%2e/secret",
        "/cdn/%2e%2e%2fsecret",
        "/cdn/a%2f..%2f..%2fsecret",
        "/cdn/..%5csecret",
        "/cdn/..%5Csecret",
        "/cdn/./x",
        "/cdn//evil.example/x",
        &format!("/cdn//{c}/x"),
        "/cdn/a%00b",
        "/cdn/a%0d%0aHost:%20evil.example",
        "/cdn/%zz",
    ];
    for p in probes {
        let answer = raw(t.http, &req(p, "site.example")).await;
        assert_eq!(raw_status(&answer), 400, "{p}: {answer}");
    }
    // Raw backslashes and spaces are refused before routing, by the HTTP parser or by us.
    for p in ["/cdn/..\\secret", "/cdn/a\\..\\..\\secret"] {
        let answer = raw(t.http, &req(p, "site.example")).await;
        assert_eq!(raw_status(&answer), 400, "{p}: {answer}");
    }
    assert_eq!(
        up.count(),
        0,
        "refused probes reached the upstream: {:?}",
        up.seen()
    );
    assert_eq!(canary.count(), 0);
}

#[tokio::test]
async fn at_signs_and_hosts_in_the_path_stay_in_the_path() {
    let (up, canary, t) = setup().await;
    let c = canary.addr;
    for p in [
        format!("/cdn/@{c}/x"),
        format!("/cdn/x@{c}"),
        "/cdn/a:b@evil.example/c".to_string(),
    ] {
        let answer = raw(t.http, &req(&p, "site.example")).await;
        assert_eq!(raw_status(&answer), 200, "{p}: {answer}");
        assert!(answer.ends_with("route"), "{answer}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert!(s.uri.starts_with("/npm/"), "{}", s.uri);
        assert_eq!(s.header("host"), Some(up.addr.to_string().as_str()));
    }
    assert_eq!(canary.count(), 0);
}

#[tokio::test]
async fn forged_host_absolute_form_and_connect_never_reach_another_host() {
    let (up, canary, t) = setup().await;
    let c = canary.addr.to_string();
    // A forged Host changes nothing: the route's upstream is contacted, with its own Host.
    let answer = raw(t.http, &req("/cdn/x", &c)).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().header("host"), Some(up.addr.to_string().as_str()));
    // Absolute-form targets (what an open proxy would follow) are refused.
    for target in [
        format!("http://{c}/x"),
        format!("http://{c}/cdn/x"),
        "https://evil.example/cdn/x".into(),
    ] {
        let answer = raw(t.http, &req(&target, &c)).await;
        assert_eq!(raw_status(&answer), 400, "{target}: {answer}");
    }
    // CONNECT tunnels are refused.
    let answer = raw(
        t.http,
        &format!("CONNECT {c} HTTP/1.1\r\nHost: {c}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(canary.count(), 0);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn unknown_paths_are_404_and_contact_nobody() {
    let (up, canary, t) = setup().await;
    for p in [
        "/", "/cdn", "/CDN/x", "/%63dn/x", "/other/x", "/metrics", "/healthz",
    ] {
        let answer = raw(t.http, &req(p, "site.example")).await;
        assert_eq!(raw_status(&answer), 404, "{p}: {answer}");
    }
    assert_eq!(up.count(), 0);
    assert_eq!(canary.count(), 0);
}

//! What leaves tamis, header by header, and what comes back to the visitor.

mod common;

use common::*;

const UA: &str = "tamis-test (+https://site.example/privacy; ops@site.example)";

fn config(routes: &str) -> String {
    format!("{LISTEN}[upstream]\nuser_agent = \"tamis-test (+https://operator.test/privacy; ops@operator.test)\"\n\n{routes}")
}

#[tokio::test]
async fn a_non_eu_upstream_gets_only_the_allowlist() {
    let up = Upstream::http(|_| Reply::ok("body").header("cache-control", "no-store")).await;
    let t = Tamis::start(&config(&route("cdn", "/cdn/", &up.url("/npm/"), ""))).await;
    let a = t.get_with("/cdn/pkg@1/x.css?v=3", VISITOR).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "body");

    let seen = up.last();
    assert_eq!(seen.uri, "/npm/pkg@1/x.css?v=3");
    assert_eq!(
        seen.header_names(),
        ["accept", "accept-encoding", "host", "user-agent"]
    );
    assert_eq!(
        seen.header("user-agent"),
        Some("tamis-test (+https://operator.test/privacy; ops@operator.test)")
    );
    assert_eq!(seen.header("accept"), Some("text/css,*/*;q=0.1"));
    assert_eq!(seen.header("accept-encoding"), Some("br, gzip"));
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_no_visitor_data(&seen);
    let _ = UA;
}

#[tokio::test]
async fn no_form_of_the_client_address_reaches_the_upstream() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let t = Tamis::start(&config(&route("cdn", "/cdn/", &up.url("/"), ""))).await;
    t.get_with(
        "/cdn/a",
        &[
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("x-client-ip", "203.0.113.7"),
            ("x-cluster-client-ip", "203.0.113.7"),
            ("fastly-client-ip", "203.0.113.7"),
            ("forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    let seen = up.last();
    for (name, value) in &seen.headers {
        if name == "host" {
            continue;
        }
        let v = value.to_str().unwrap_or("");
        assert!(
            !v.contains("127.0.0.1") && !v.contains("203.0.113"),
            "{name}: {v}"
        );
    }
    assert_eq!(
        seen.header_names(),
        ["accept-encoding", "host", "user-agent"]
    );
}

#[tokio::test]
async fn an_eu_upstream_gets_the_visitor_user_agent_and_explicit_extras_only() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let t = Tamis::start(&config(&route(
        "eu",
        "/eu/",
        &up.url("/"),
        "jurisdiction = \"eu\"\nforward_headers = [\"Accept-Language\"]",
    )))
    .await;
    t.get_with("/eu/a", VISITOR).await;
    let seen = up.last();
    assert_eq!(
        seen.header_names(),
        [
            "accept",
            "accept-encoding",
            "accept-language",
            "host",
            "user-agent"
        ]
    );
    assert!(seen.header("user-agent").unwrap().contains("Chrome/131"));
    assert_eq!(
        seen.header("accept-language"),
        Some("fr-FR,fr;q=0.9,en;q=0.8")
    );
}

#[tokio::test]
async fn an_eu_route_with_its_own_user_agent_sends_that() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let t = Tamis::start(&config(&route(
        "eu",
        "/eu/",
        &up.url("/"),
        "jurisdiction = \"eu\"\nuser_agent = \"route-agent/1\"",
    )))
    .await;
    t.get_with("/eu/a", VISITOR).await;
    assert_eq!(up.last().header("user-agent"), Some("route-agent/1"));
    assert_no_visitor_data(&up.last());
}

#[tokio::test]
async fn the_query_can_be_dropped() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "no-store")).await;
    let t = Tamis::start(&config(&route(
        "cdn",
        "/cdn/",
        &up.url("/"),
        "forward_query = false",
    )))
    .await;
    t.get("/cdn/a.js?uid=12345").await;
    assert_eq!(up.last().uri, "/a.js");
}

#[tokio::test]
async fn third_party_state_never_reaches_the_visitor() {
    let up = Upstream::http(|_| {
        Reply::ok("x")
            .header("cache-control", "no-store")
            .header("set-cookie", "NID=511; Domain=.upstream.test; Path=/")
            .header("set-cookie", "AEC=abc")
            .header("nel", "{\"report_to\":\"default\",\"max_age\":2592000}")
            .header(
                "report-to",
                "{\"group\":\"default\",\"endpoints\":[{\"url\":\"https://r.upstream.test\"}]}",
            )
            .header("reporting-endpoints", "default=\"https://r.upstream.test\"")
            .header("alt-svc", "h3=\":443\"; ma=2592000")
            .header("accept-ch", "Sec-CH-UA-Model, Sec-CH-UA-Platform-Version")
            .header("critical-ch", "Sec-CH-UA-Model")
            .header("server-timing", "gfet4t7; dur=12")
            .header(
                "strict-transport-security",
                "max-age=31536000; includeSubDomains; preload",
            )
            .header("clear-site-data", "\"cookies\"")
            .header(
                "link",
                "<https://fonts.gstatic.test>; rel=preconnect; crossorigin",
            )
            .header("link", "</cdn/local.css>; rel=preload; as=style")
            .header("x-content-type-options", "nosniff")
    })
    .await;
    let t = Tamis::start(&config(&route("cdn", "/cdn/", &up.url("/"), ""))).await;
    let a = t.get("/cdn/a").await;
    assert_eq!(a.status, 200);
    for stripped in [
        "set-cookie",
        "nel",
        "report-to",
        "reporting-endpoints",
        "alt-svc",
        "accept-ch",
        "critical-ch",
        "server-timing",
        "strict-transport-security",
        "clear-site-data",
    ] {
        assert!(
            a.headers.get(stripped).is_none(),
            "{stripped} reached the visitor"
        );
    }
    let links: Vec<&str> = a
        .headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(links, ["</cdn/local.css>; rel=preload; as=style"]);
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn redirects_stay_first_party() {
    let up = Upstream::http(|s| match s.uri.as_str() {
        "/npm/jquery" => Reply::ok("")
            .status(302)
            .header("location", "/npm/jquery@3.7.1/"),
        "/npm/away" => Reply::ok("")
            .status(302)
            .header("location", "https://evil.example/x"),
        "/npm/up" => Reply::ok("").status(302).header("location", "/other/x"),
        _ => Reply::ok("ok"),
    })
    .await;
    // An upstream names itself in absolute redirects: it learns its own address once bound.
    let own = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let own2 = own.clone();
    let up2 = Upstream::http(move |s| match s.uri.as_str() {
        "/npm/abs" => Reply::ok("").status(301).header(
            "location",
            &format!("http://{}/npm/abs/", own2.get().unwrap()),
        ),
        "/npm/elsewhere" => Reply::ok("")
            .status(301)
            .header("location", &format!("http://{}/npm/x", "127.0.0.2:1")),
        _ => Reply::ok("ok"),
    })
    .await;
    own.set(up2.addr.to_string()).unwrap();
    let routes = route("cdn", "/cdn/", &up.url("/npm/"), "")
        + &route("cdn2", "/cdn2/", &up2.url("/npm/"), "");
    let t = Tamis::start(&config(&routes)).await;
    let a = t.get("/cdn/jquery").await;
    assert_eq!(a.status, 302);
    assert_eq!(a.header("location"), Some("/cdn/jquery@3.7.1/"));
    let a = t.get("/cdn/away").await;
    assert_eq!(
        a.status, 502,
        "a redirect to a third party is never handed to the browser"
    );
    assert!(a.header("location").is_none());
    let a = t.get("/cdn/up").await;
    assert_eq!(a.status, 502);
    // Absolute redirects to the upstream's own host map back; to another host, never.
    let a = t.get("/cdn2/abs").await;
    assert_eq!(a.status, 301, "{}", a.text());
    assert_eq!(a.header("location"), Some("/cdn2/abs/"));
    assert_eq!(t.get("/cdn2/elsewhere").await.status, 502);
}

#[tokio::test]
async fn methods_other_than_get_and_head_are_refused_without_contacting_the_upstream() {
    let up = Upstream::http(|_| Reply::ok("x")).await;
    let t = Tamis::start(&config(&route("cdn", "/cdn/", &up.url("/"), ""))).await;
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"] {
        let a = request(
            t.http,
            http::Method::from_bytes(m.as_bytes()).unwrap(),
            "/cdn/a",
            &[],
        )
        .await;
        assert_eq!(a.status, 405, "{m}");
        assert_eq!(a.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(up.count(), 0);
}

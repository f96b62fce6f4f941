//! The admin listener: Prometheus text that parses, the series operators need, labels that
//! never carry an address or a path, and a health check.

mod common;

use common::*;

#[tokio::test]
async fn metrics_parse_and_count_what_happened() {
    let up = Upstream::http(|s| match s.uri.as_str() {
        "/missing" => Reply::ok("no").status(404),
        _ => Reply::ok("x").header("cache-control", "max-age=60"),
    })
    .await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("tiles", "/tiles/", &up.url("/"), "")
    ))
    .await;
    t.get("/tiles/1/2/3.png?secret=1").await;
    t.get("/tiles/1/2/3.png?secret=1").await;
    t.get("/tiles/missing").await;
    t.get("/nowhere/203.0.113.7").await;

    let text = t.metrics().await;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(
        value(
            "tamis_requests_total",
            &[("route", "tiles"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "tamis_requests_total",
            &[("route", "tiles"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tamis_requests_total",
            &[("route", "none"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tamis_cache_lookups_total",
            &[("route", "tiles"), ("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tamis_cache_lookups_total",
            &[("route", "tiles"), ("result", "miss")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "tamis_cache_lookups_total",
            &[("route", "tiles"), ("result", "coalesced")]
        ),
        0.0
    );
    assert_eq!(
        value(
            "tamis_upstream_requests_total",
            &[("route", "tiles"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value("tamis_cache_entries", &[]),
        2.0,
        "the 200 and the negatively cached 404"
    );
    assert!(value("tamis_cache_bytes", &[]) > 0.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "tamis_request_duration_seconds_count"));
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "tamis_upstream_duration_seconds_count"));

    for s in &scrape.samples {
        assert!(
            s.metric.starts_with("tamis_") || s.metric.starts_with("process_"),
            "{}",
            s.metric
        );
        for (k, v) in s.labels.iter() {
            let allowed: &[&str] = if s.metric == "tamis_build_info" {
                &["version", "revision"]
            } else {
                &["route", "status", "result", "le", "quantile", "hash"]
            };
            assert!(allowed.contains(&k.as_str()), "label {k}");
            assert!(
                !v.contains('/') && !v.contains("203.0.113") && !v.contains("127.0.0.1"),
                "{k}={v}"
            );
        }
    }
}

#[tokio::test]
async fn healthz_answers_on_the_admin_listener_only() {
    let up = Upstream::http(|_| Reply::ok("x")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let h = get(t.admin.unwrap(), "/healthz", &[]).await;
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    assert_eq!(
        get(t.admin.unwrap(), "/cdn/x", &[]).await.status,
        404,
        "the admin listener proxies nothing"
    );
    assert_eq!(t.get("/metrics").await.status, 404);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn operations_metrics_show_the_process_the_build_and_what_is_happening_now() {
    // An upstream that is down, and a breaker that opens at the first failure.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/", down.local_addr().unwrap());
    drop(down);
    let slow = Upstream::http(|_| {
        Reply::ok("slow")
            .header("cache-control", "no-store")
            .delay(std::time::Duration::from_millis(600))
    })
    .await;
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\nbreaker_failures = 1\nretries = 0\n{}{}",
        route("dead", "/dead/", &dead, ""),
        route("slow", "/slow/", &slow.url("/"), "cache = false")
    ))
    .await;
    assert_eq!(t.get("/dead/a").await.status, 502);
    // One request still being answered while Prometheus scrapes.
    let http = t.http;
    let pending = tokio::spawn(async move { get(http, "/slow/a", &[]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let text = t.metrics().await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"))
    };
    assert_eq!(value("tamis_requests_in_flight", None), 1.0);
    assert_eq!(
        value("tamis_upstream_circuit_open", Some(("route", "dead"))),
        1.0
    );
    assert_eq!(
        value("tamis_upstream_circuit_open", Some(("route", "slow"))),
        0.0
    );
    assert_eq!(
        value(
            "tamis_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        1.0
    );
    // This test process is tamis: its memory, CPU time, descriptors and start.
    assert!(value("process_resident_memory_bytes", None) > 1e6);
    assert!(value("process_open_fds", None) >= 3.0);
    assert!(value("process_max_fds", None) >= value("process_open_fds", None));
    assert!(value("process_cpu_seconds_total", None) >= 0.0);
    assert!(value("process_start_time_seconds", None) > 1.7e9);
    assert_eq!(pending.await.unwrap().status, 200);
}

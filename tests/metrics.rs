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

/// Every HELP text names the labels its series carry (and, for `result`, every value seen);
/// an analytics route and a `cache = false` route export no cache-result series but `bypass`
/// (so the shipped hit-ratio rule has no 0/0 for them); `tamis_upstream_errors_total` has its
/// series from the start; docs/operations.md lists every metric family once.
#[tokio::test]
async fn help_texts_name_their_labels_and_the_docs_list_every_metric_once() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}{}[[route]]\nname = \"ga\"\nkind = \"ga4\"\nprefix = \"/a/\"\nupstream = \"{}\"\n",
        route("cdn", "/cdn/", &up.url("/"), ""),
        route("direct", "/direct/", &up.url("/"), "cache = false"),
        up.url("/")
    ))
    .await;
    // Before any request: one series per failure kind, per route, at zero.
    let text = t.metrics().await;
    for route in ["cdn", "direct", "ga"] {
        for result in [
            "connect",
            "tls",
            "timeout",
            "protocol",
            "body",
            "redirect_outside",
            "circuit_open",
        ] {
            let line =
                format!("tamis_upstream_errors_total{{result=\"{result}\",route=\"{route}\"}} 0");
            assert!(text.contains(&line), "{line}\n{text}");
        }
    }
    t.get("/cdn/a").await;
    t.get("/cdn/a").await;
    t.get("/direct/a").await;
    t.get("/a/g/collect?v=2&tid=G-1&cid=1.2&en=page_view").await;
    let text = t.metrics().await;

    let mut help: std::collections::HashMap<&str, &str> = Default::default();
    let mut histograms: Vec<&str> = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap();
            help.insert(name, h);
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            if rest.ends_with(" histogram") {
                histograms.push(rest.split(' ').next().unwrap());
            }
        }
    }
    let family = |sample: &str| -> String {
        let name = sample.split(['{', ' ']).next().unwrap();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if histograms.contains(&base) {
                    return base.to_owned();
                }
            }
        }
        name.to_owned()
    };
    let mut families: Vec<String> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let f = family(l);
        let h = help
            .get(f.as_str())
            .unwrap_or_else(|| panic!("no HELP for {f}"));
        if let Some(labels) = l.split_once('{').map(|(_, r)| r.split('}').next().unwrap()) {
            for pair in labels.split(',') {
                let (key, value) = pair.split_once('=').unwrap();
                if key == "le" {
                    continue;
                }
                assert!(
                    h.contains(key),
                    "{f}: HELP {h:?} does not name its label {key}"
                );
                if key == "result" || key == "released" {
                    let value = value.trim_matches('"');
                    assert!(
                        h.contains(value),
                        "{f}: HELP {h:?} does not list the {key} value {value:?}"
                    );
                }
            }
        }
        if !families.contains(&f) {
            families.push(f);
        }
    }

    // Only the route that uses the cache has cache-result series other than bypass.
    for l in text
        .lines()
        .filter(|l| l.starts_with("tamis_cache_lookups_total{"))
    {
        if !l.contains("route=\"cdn\"") {
            assert!(l.contains("result=\"bypass\""), "{l}");
        }
    }
    for route in ["direct", "ga"] {
        let line = format!("tamis_cache_lookups_total{{result=\"bypass\",route=\"{route}\"}} 1");
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert!(text.contains("tamis_cache_lookups_total{result=\"revalidated\",route=\"cdn\"} 0"));

    // docs/operations.md: each family in the first cell of one table row, exactly once.
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"),
    )
    .unwrap();
    let mut documented: Vec<String> = Vec::new();
    for row in docs.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        for name in cell.split('`').skip(1).step_by(2) {
            if name.starts_with("tamis_") || name.starts_with("process_") {
                documented.push(name.to_owned());
            }
        }
    }
    for f in &families {
        let n = documented.iter().filter(|d| *d == f).count();
        assert_eq!(n, 1, "{f} is listed {n} times in docs/operations.md");
    }
    for d in &documented {
        // The location counter appears once a route with a `location` counts a request.
        assert!(
            families.contains(d) || d == "tamis_analytics_location_total",
            "docs/operations.md lists {d}, which /metrics does not export"
        );
    }
}

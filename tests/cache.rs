//! The cache against a recording upstream: what is stored, for how long, coalescing, HEAD,
//! Vary, large objects and the memory bound.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;

async fn one_route(
    reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    cache: &str,
) -> (Upstream, Tamis) {
    let up = Upstream::http(reply).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{cache}\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    (up, t)
}

#[tokio::test]
async fn a_fresh_response_is_served_from_memory() {
    let (up, t) = one_route(
        |_| Reply::ok("hello").header("cache-control", "public, max-age=60"),
        "",
    )
    .await;
    // Same encoding bucket as VISITOR (br, gzip); every other visitor header differs.
    let a = t
        .get_with("/cdn/a.js", &[("accept-encoding", "br, gzip")])
        .await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello"));
    assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss; stored"));
    let b = t.get_with("/cdn/a.js", VISITOR).await;
    assert_eq!((b.status, b.text().as_str()), (200, "hello"));
    assert_eq!(b.header("cache-status"), Some("tamis; hit"));
    assert_eq!(b.header("age"), Some("0"));
    assert_eq!(b.header("content-length"), Some("5"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn the_key_holds_path_query_and_encoding_but_no_stripped_header() {
    let (up, t) = one_route(
        |_| {
            Reply::ok("x")
                .header("cache-control", "max-age=60")
                .header("vary", "Accept-Encoding")
        },
        "",
    )
    .await;
    t.get("/cdn/a?v=1").await;
    t.get("/cdn/a?v=2").await;
    t.get("/cdn/b").await;
    t.get_with("/cdn/b", &[("accept-encoding", "gzip")]).await;
    assert_eq!(up.count(), 4);
    // Cookies, languages, user agents differ: still the same object.
    t.get_with(
        "/cdn/b",
        &[
            ("accept-encoding", "gzip"),
            ("cookie", "a=1"),
            ("accept-language", "de"),
        ],
    )
    .await;
    t.get_with(
        "/cdn/b",
        &[
            ("accept-encoding", "gzip;q=1, identity"),
            ("user-agent", "x"),
        ],
    )
    .await;
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn entries_expire_with_their_lifetime() {
    let (up, t) = one_route(|_| Reply::ok("x").header("cache-control", "max-age=1"), "").await;
    t.get("/cdn/a").await;
    assert_eq!(
        t.get("/cdn/a").await.header("cache-status"),
        Some("tamis; hit")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        t.get("/cdn/a").await.header("cache-status"),
        Some("tamis; fwd=miss; stored")
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn the_upstream_age_counts_against_freshness() {
    let (up, t) = one_route(
        |_| {
            Reply::ok("x")
                .header("cache-control", "max-age=100")
                .header("age", "40")
        },
        "",
    )
    .await;
    t.get("/cdn/a").await;
    let a = t.get("/cdn/a").await;
    assert_eq!(a.header("age"), Some("40"));
    assert_eq!(up.count(), 1);
    // Already older than its lifetime: not stored.
    let (up, t) = one_route(
        |_| {
            Reply::ok("x")
                .header("cache-control", "max-age=10")
                .header("age", "40")
        },
        "",
    )
    .await;
    t.get("/cdn/a").await;
    t.get("/cdn/a").await;
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn what_a_shared_cache_must_not_keep_is_not_kept() {
    for (name, headers) in [
        ("no-store", vec![("cache-control", "no-store, max-age=60")]),
        ("private", vec![("cache-control", "private, max-age=60")]),
        ("no-cache", vec![("cache-control", "no-cache, max-age=60")]),
        (
            "set-cookie",
            vec![("cache-control", "max-age=60"), ("set-cookie", "id=1")],
        ),
        (
            "vary-star",
            vec![("cache-control", "max-age=60"), ("vary", "*")],
        ),
        (
            "vary-cookie",
            vec![("cache-control", "max-age=60"), ("vary", "Cookie")],
        ),
        (
            "no-lifetime",
            vec![("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
        ),
        (
            "expires-past",
            vec![("expires", "Mon, 01 Jan 2001 00:00:00 GMT")],
        ),
    ] {
        let headers: Vec<(&'static str, &'static str)> = headers;
        let (up, t) = one_route(
            move |_| {
                let mut r = Reply::ok("x");
                for (k, v) in &headers {
                    r = r.header(k, v);
                }
                r
            },
            "",
        )
        .await;
        let a = t.get("/cdn/a").await;
        assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss"), "{name}");
        assert!(a.headers.get("set-cookie").is_none());
        t.get("/cdn/a").await;
        assert_eq!(up.count(), 2, "{name} was cached");
    }
}

#[tokio::test]
async fn not_found_is_cached_only_when_the_upstream_says_so() {
    let (up, t) = one_route(
        |s| match s.uri.as_str() {
            "/gone" => Reply::ok("no")
                .status(404)
                .header("cache-control", "max-age=30"),
            _ => Reply::ok("no").status(404),
        },
        "",
    )
    .await;
    t.get("/cdn/gone").await;
    assert_eq!(t.get("/cdn/gone").await.status, 404);
    t.get("/cdn/other").await;
    t.get("/cdn/other").await;
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let (up, t) = one_route(
        |_| {
            Reply::ok(vec![b'x'; 20_000])
                .header("cache-control", "max-age=60")
                .delay(Duration::from_millis(300))
        },
        "",
    )
    .await;
    let addr = t.http;
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { get(addr, "/cdn/tile.png", &[]).await }))
        .collect();
    let mut statuses = std::collections::HashMap::new();
    for task in tasks {
        let a = task.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 20_000);
        *statuses
            .entry(a.header("cache-status").unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(up.count(), 1, "{statuses:?}");
    assert_eq!(
        statuses.get("tamis; fwd=miss; stored"),
        Some(&1),
        "{statuses:?}"
    );
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("tamis_cache_lookups_total{result=\"miss\",route=\"cdn\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_misses_on_an_uncacheable_answer_each_get_it() {
    let (up, t) = one_route(
        |_| {
            Reply::ok("x")
                .header("cache-control", "no-store")
                .delay(Duration::from_millis(100))
        },
        "",
    )
    .await;
    let addr = t.http;
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/cdn/a", &[]).await }))
        .collect();
    for task in tasks {
        let a = task.await.unwrap();
        assert_eq!((a.status, a.text().as_str()), (200, "x"));
    }
    assert_eq!(
        up.count(),
        10,
        "an uncacheable answer is never shared between visitors"
    );
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let (up, t) = one_route(
        |_| Reply::ok("0123456789").header("cache-control", "max-age=60"),
        "",
    )
    .await;
    let h = request(t.http, Method::HEAD, "/cdn/a", &[]).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("10"));
    assert!(h.body.is_empty());
    assert_eq!(
        up.last().method,
        Method::GET,
        "a HEAD miss fetches with GET so it can be stored"
    );
    let g = t.get("/cdn/a").await;
    assert_eq!(
        (g.text().as_str(), g.header("cache-status")),
        ("0123456789", Some("tamis; hit"))
    );
    let h = request(t.http, Method::HEAD, "/cdn/a", &[]).await;
    assert_eq!(h.header("cache-status"), Some("tamis; hit"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn range_requests_go_straight_through() {
    let (up, t) = one_route(
        |s| {
            if s.headers.contains_key("range") {
                Reply::ok("01")
                    .status(206)
                    .header("content-range", "bytes 0-1/10")
                    .header("cache-control", "max-age=60")
            } else {
                Reply::ok("0123456789").header("cache-control", "max-age=60")
            }
        },
        "",
    )
    .await;
    let a = t
        .get_with("/cdn/font.woff2", &[("range", "bytes=0-1")])
        .await;
    assert_eq!((a.status, a.text().as_str()), (206, "01"));
    assert_eq!(a.header("cache-status"), Some("tamis; fwd=bypass"));
    assert_eq!(up.last().header("range"), Some("bytes=0-1"));
    let b = t.get("/cdn/font.woff2").await;
    assert_eq!(
        (b.status, b.text().as_str()),
        (200, "0123456789"),
        "a partial answer is never stored"
    );
}

#[tokio::test]
async fn browser_validators_never_reach_the_upstream_and_a_full_answer_comes_back() {
    let (up, t) = one_route(
        |_| {
            Reply::ok("x")
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\"")
        },
        "",
    )
    .await;
    let a = t
        .get_with(
            "/cdn/a",
            &[
                ("if-none-match", "\"supercookie\""),
                ("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ],
        )
        .await;
    assert_eq!(a.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("if-none-match").is_none());
    assert!(seen.headers.get("if-modified-since").is_none());
}

#[tokio::test]
async fn objects_over_max_object_bytes_stream_through_uncached() {
    const BIG: usize = 3 * 1024 * 1024;
    let (up, t) = one_route(
        |_| Reply::ok(vec![b'z'; BIG]).header("cache-control", "max-age=60"),
        "[cache]\nmax_bytes = 4194304\nmax_object_bytes = 1048576\n",
    )
    .await;
    for _ in 0..2 {
        let a = t.get("/cdn/big.bin").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), BIG);
        assert!(a.body.iter().all(|&b| b == b'z'));
        assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss"));
    }
    assert_eq!(up.count(), 2);
    let m = t.metrics().await;
    assert!(m.contains("tamis_cache_entries 0"), "{m}");
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_stream_too() {
    // No Content-Length known in advance: tamis starts buffering, then switches to streaming.
    let up =
        Upstream::http(|_| Reply::ok(vec![b'q'; 300_000]).header("cache-control", "max-age=60"))
            .await;
    let t = Tamis::start(&format!(
        "{LISTEN}[cache]\nmax_bytes = 1048576\nmax_object_bytes = 100000\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let a = t.get("/cdn/x").await;
    assert_eq!(a.body.len(), 300_000);
    t.get("/cdn/x").await;
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn the_memory_bound_holds_under_many_objects() {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let (up, t) = one_route(
        move |_| {
            c.fetch_add(1, Ordering::Relaxed);
            Reply::ok(vec![b't'; 20_000]).header("cache-control", "max-age=600")
        },
        "[cache]\nmax_bytes = 1000000\nmax_object_bytes = 100000\n",
    )
    .await;
    for i in 0..200 {
        assert_eq!(t.get(&format!("/cdn/{i}.png")).await.status, 200);
    }
    let m = t.metrics().await;
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    let bytes = value("tamis_cache_bytes ");
    let entries = value("tamis_cache_entries ");
    assert!(bytes <= 1_000_000, "{bytes}");
    assert!(entries > 10 && entries < 200, "{entries}");
    assert_eq!(up.count(), 200);
}

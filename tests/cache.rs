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
            "vary-star",
            vec![("cache-control", "max-age=60"), ("vary", "*")],
        ),
        (
            "vary-cookie",
            vec![("cache-control", "max-age=60"), ("vary", "Cookie")],
        ),
        ("no-lifetime", vec![("content-language", "en")]),
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
        let cs = a.header("cache-status").unwrap_or("");
        assert!(cs.starts_with("tamis; fwd=miss; detail="), "{name}: {cs}");
        assert!(a.headers.get("set-cookie").is_none());
        t.get("/cdn/a").await;
        assert_eq!(up.count(), 2, "{name} was cached");
    }
}

/// No visitor cookie ever reaches a third party through tamis, so a third party's Set-Cookie
/// cannot mean the answer was personalised: it is stripped and the answer stored (a CDN that
/// sets a cookie on every answer no longer makes its tiles and fonts uncacheable). On a
/// pass-through route, where the visitor's Cookie does reach the upstream, it is not stored.
#[tokio::test]
async fn a_third_party_set_cookie_is_stripped_and_the_answer_stored() {
    let reply = |_: &Seen| {
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("set-cookie", "__cf_bm=abc; Path=/; HttpOnly")
    };
    let (up, t) = one_route(reply, "").await;
    let a = t.get_with("/cdn/a", &[("cookie", "session=s3cr3t")]).await;
    assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss; stored"));
    assert!(a.headers.get("set-cookie").is_none());
    assert!(up.last().headers.get("cookie").is_none());
    let b = t.get("/cdn/a").await;
    assert_eq!(b.header("cache-status"), Some("tamis; hit"));
    assert!(b.headers.get("set-cookie").is_none());
    assert_eq!(up.count(), 1);

    let own = Upstream::http(reply).await;
    let t = Tamis::start(&format!(
        "{LISTEN}\n{}",
        route(
            "app",
            "/app/",
            &own.url("/"),
            "jurisdiction = \"eu\"\npass_through = true"
        )
    ))
    .await;
    let a = t.get_with("/app/a", &[("cookie", "session=s3cr3t")]).await;
    assert_eq!(
        a.header("cache-status"),
        Some("tamis; fwd=miss; detail=set-cookie")
    );
    assert!(a.headers.get("set-cookie").is_none());
    t.get("/app/a").await;
    assert_eq!(
        own.count(),
        2,
        "a pass-through answer that sets a cookie is not kept"
    );
}

#[tokio::test]
async fn not_found_is_cached_briefly_unless_told_otherwise() {
    let reply = |s: &Seen| match s.uri.as_str() {
        "/gone" => Reply::ok("no")
            .status(404)
            .header("cache-control", "max-age=30"),
        "/private" => Reply::ok("no")
            .status(404)
            .header("cache-control", "no-store"),
        _ => Reply::ok("no").status(404),
    };
    let (up, t) = one_route(reply, "[cache]\nnegative_ttl = \"1s\"\n").await;
    t.get("/cdn/gone").await;
    assert_eq!(t.get("/cdn/gone").await.status, 404);
    t.get("/cdn/missing").await;
    let again = t.get("/cdn/missing").await;
    assert_eq!(
        (again.status, again.header("cache-status")),
        (404, Some("tamis; hit"))
    );
    t.get("/cdn/private").await;
    t.get("/cdn/private").await;
    assert_eq!(up.count(), 4, "gone once, missing once, private twice");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.get("/cdn/missing").await;
    assert_eq!(up.count(), 5, "the negative lifetime ran out");

    let (up, t) = one_route(reply, "[cache]\nnegative_ttl = \"0s\"\n").await;
    t.get("/cdn/missing").await;
    t.get("/cdn/missing").await;
    assert_eq!(up.count(), 2, "negative caching off");
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
async fn after_an_uncacheable_answer_requests_do_not_queue_behind_one_fetch() {
    // (config, how many of six concurrent requests reach the upstream at once)
    for (cache, at_once) in [("", 6), ("[cache]\nhit_for_miss = \"0s\"\n", 5)] {
        let storable = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = storable.clone();
        let (up, t) = one_route(
            move |_| {
                let cc = if flag.load(Ordering::Relaxed) {
                    "max-age=60"
                } else {
                    "private"
                };
                Reply::ok("x")
                    .header("cache-control", cc)
                    .delay(Duration::from_millis(300))
            },
            cache,
        )
        .await;
        assert_eq!(t.get("/cdn/a").await.status, 200);
        let addr = t.http;
        let tasks: Vec<_> = (0..6)
            .map(|_| tokio::spawn(async move { get(addr, "/cdn/a", &[]).await }))
            .collect();
        for task in tasks {
            let a = task.await.unwrap();
            assert_eq!((a.status, a.text().as_str()), (200, "x"));
        }
        // With the hit-for-miss marker the first answer left, all six fetch at once. Without
        // it, one fetches and five wait for it, only to fetch on their own after.
        assert_eq!(up.max_in_flight(), at_once, "{cache:?}");
        assert_eq!(up.count(), 7);
        // The answer becomes storable: the next fetch stores it, and the one after is a hit.
        storable.store(true, Ordering::Relaxed);
        let a = t.get("/cdn/a").await;
        assert_eq!(a.header("cache-status"), Some("tamis; fwd=miss; stored"));
        let b = t.get("/cdn/a").await;
        assert_eq!(b.header("cache-status"), Some("tamis; hit"));
        assert_eq!(up.count(), 8);
    }
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
async fn ranges_are_answered_from_the_stored_whole() {
    let (up, t) = one_route(
        |_| Reply::ok("0123456789").header("cache-control", "max-age=60"),
        "",
    )
    .await;
    let a = t
        .get_with("/cdn/font.woff2", &[("range", "bytes=2-4")])
        .await;
    assert_eq!((a.status, a.text().as_str()), (206, "234"));
    assert_eq!(a.header("content-range"), Some("bytes 2-4/10"));
    assert!(
        up.last().headers.get("range").is_none(),
        "the upstream is asked for the whole"
    );
    let b = t
        .get_with("/cdn/font.woff2", &[("range", "bytes=-3")])
        .await;
    assert_eq!(
        (b.status, b.text().as_str(), b.header("cache-status")),
        (206, "789", Some("tamis; hit"))
    );
    let c = t
        .get_with("/cdn/font.woff2", &[("range", "bytes=50-")])
        .await;
    assert_eq!(
        (c.status, c.header("content-range")),
        (416, Some("bytes */10"))
    );
    let etag = t
        .get("/cdn/font.woff2")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let d = t
        .get_with(
            "/cdn/font.woff2",
            &[("range", "bytes=0-0"), ("if-range", &etag)],
        )
        .await;
    assert_eq!((d.status, d.text().as_str()), (206, "0"));
    let e = t
        .get_with(
            "/cdn/font.woff2",
            &[("range", "bytes=0-0"), ("if-range", "\"old\"")],
        )
        .await;
    assert_eq!((e.status, e.text().as_str()), (200, "0123456789"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_route_without_cache_forwards_ranges() {
    let (up, t) = one_route(
        |s| match s.header("range") {
            Some(_) => Reply::ok("01")
                .status(206)
                .header("content-range", "bytes 0-1/10"),
            None => Reply::ok("0123456789").header("cache-control", "max-age=60"),
        },
        "",
    )
    .await;
    drop(t);
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/"), "cache = false")
    ))
    .await;
    let a = t.get_with("/cdn/x", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (a.status, a.header("cache-status")),
        (206, Some("tamis; fwd=bypass"))
    );
    assert_eq!(up.last().header("range"), Some("bytes=0-1"));
    t.get("/cdn/x").await;
    t.get("/cdn/x").await;
    assert_eq!(up.count(), 3, "cache = false stores nothing");
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
        assert_eq!(
            a.header("cache-status"),
            Some("tamis; fwd=miss; detail=too-large")
        );
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
    let evicted = value("tamis_cache_evictions_total{result=\"size\"} ");
    assert!(evicted > 0, "size evictions are counted");
    assert_eq!(up.count(), 200);
}

#[tokio::test]
async fn heuristic_freshness_is_capped_and_can_be_switched_off() {
    let reply = |_: &Seen| Reply::ok("x").header("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT");
    let (up, t) = one_route(reply, "[cache]\nheuristic_max = \"1s\"\n").await;
    t.get("/cdn/a").await;
    let hit = t.get("/cdn/a").await;
    assert_eq!(hit.header("cache-status"), Some("tamis; hit"));
    assert_eq!(
        hit.header("cache-control"),
        Some("public, max-age=1"),
        "browsers get the lifetime tamis uses"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.get("/cdn/a").await;
    assert_eq!(up.count(), 2, "capped at heuristic_max");
    let (up, t) = one_route(reply, "[cache]\nheuristic_max = \"0s\"\n").await;
    t.get("/cdn/a").await;
    let again = t.get("/cdn/a").await;
    assert_eq!(
        up.count(),
        2,
        "no lifetime: kept only to revalidate with Last-Modified"
    );
    assert_eq!(
        again.header("cache-status"),
        Some("tamis; fwd=stale; fwd-status=200; stored")
    );
    assert_eq!(
        up.last().header("if-modified-since"),
        Some("Mon, 01 Jan 2001 00:00:00 GMT")
    );
}

#[tokio::test]
async fn stale_entries_are_revalidated_with_tamis_own_validators() {
    let (up, t) = one_route(
        |s| match s.header("if-none-match") {
            Some("\"v1\"") => Reply::ok("")
                .status(304)
                .header("cache-control", "max-age=1")
                .header("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")
                .header("content-language", "fr"),
            _ => Reply::ok("body v1")
                .header("cache-control", "max-age=1")
                .header("etag", "\"v1\""),
        },
        "",
    )
    .await;
    let first = t
        .get_with("/cdn/a", &[("if-none-match", "\"supercookie\"")])
        .await;
    assert_eq!(first.text(), "body v1");
    assert!(
        up.last().headers.get("if-none-match").is_none(),
        "never the browser's validator"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = t.get("/cdn/a").await;
    assert_eq!((a.status, a.text().as_str()), (200, "body v1"));
    assert_eq!(
        a.header("cache-status"),
        Some("tamis; fwd=stale; fwd-status=304; stored")
    );
    assert_eq!(
        a.header("last-modified"),
        Some("Mon, 01 Jan 2001 00:00:00 GMT"),
        "a 304's validators update the stored ones"
    );
    assert_eq!(
        a.header("content-language"),
        None,
        "a 304 never changes how the stored body is read"
    );
    assert_eq!(up.last().header("if-none-match"), Some("\"v1\""));
    let b = t.get("/cdn/a").await;
    assert_eq!(
        b.header("cache-status"),
        Some("tamis; hit"),
        "the 304 renewed the lifetime"
    );
    assert_eq!(up.count(), 2);
    let m = t.metrics().await;
    assert!(
        m.contains("tamis_cache_lookups_total{result=\"revalidated\",route=\"cdn\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn last_modified_revalidates_with_if_modified_since() {
    let lm = "Mon, 01 Jan 2024 00:00:00 GMT";
    let (up, t) = one_route(
        move |s| match s.header("if-modified-since") {
            Some(v) if v == lm => Reply::ok("").status(304),
            _ => Reply::ok("x")
                .header("cache-control", "max-age=1")
                .header("last-modified", lm),
        },
        "",
    )
    .await;
    t.get("/cdn/a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = t.get("/cdn/a").await;
    assert_eq!(a.text(), "x");
    assert_eq!(up.last().header("if-modified-since"), Some(lm));
    assert_eq!(
        a.header("cache-status"),
        Some("tamis; fwd=stale; fwd-status=304; stored")
    );
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let (up, t) = one_route(
        move |_| {
            let v = n2.fetch_add(1, Ordering::SeqCst);
            Reply::ok(format!("v{v}"))
                .header("cache-control", "max-age=1, stale-while-revalidate=30")
                .delay(Duration::from_millis(if v == 0 { 0 } else { 300 }))
        },
        "",
    )
    .await;
    assert_eq!(t.get("/cdn/a").await.text(), "v0");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let addr = t.http;
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/cdn/a", &[]).await }))
        .collect();
    for task in tasks {
        let a = task.await.unwrap();
        assert_eq!(a.text(), "v0", "stale served at once");
        assert_eq!(
            a.header("cache-status"),
            Some("tamis; hit; detail=stale-while-revalidate")
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.count(), 2, "one background refresh for ten stale hits");
    let fresh = t.get("/cdn/a").await;
    assert_eq!(
        (fresh.text().as_str(), fresh.header("cache-status")),
        ("v1", Some("tamis; hit"))
    );
}

#[tokio::test]
async fn stale_if_error_covers_5xx_timeouts_and_refused_connections() {
    // An upstream that answers once, then fails in the way the test asks.
    for failure in ["500", "timeout", "refused"] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let up = Upstream::http(move |_| {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            let ok = Reply::ok("good copy")
                .header("cache-control", "max-age=1")
                .header("connection", "close");
            match (first, failure) {
                (true, _) => ok,
                (false, "500") => Reply::ok("boom").status(500),
                (false, _) => ok.delay(Duration::from_secs(5)),
            }
        })
        .await;
        let t = Tamis::start(&format!(
            "{LISTEN}[upstream]\ntimeout = \"1s\"\n{}",
            route("cdn", "/cdn/", &up.url("/"), "stale_if_error = \"1h\"")
        ))
        .await;
        assert_eq!(t.get("/cdn/a").await.text(), "good copy");
        if failure == "refused" {
            drop(up);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let a = t.get("/cdn/a").await;
        assert_eq!(
            (a.status, a.text().as_str()),
            (200, "good copy"),
            "{failure}"
        );
        assert_eq!(
            a.header("cache-status"),
            Some("tamis; fwd=stale; detail=stale-if-error"),
            "{failure}"
        );
    }
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (_up, t) = one_route(
        move |_| match c.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::ok("x").header(
                "cache-control",
                "max-age=1, must-revalidate, stale-if-error=60",
            ),
            _ => Reply::ok("down").status(503),
        },
        "",
    )
    .await;
    t.get("/cdn/a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.get("/cdn/a").await.status, 503);
}

#[tokio::test]
async fn vary_on_forwarded_headers_keeps_variants_apart() {
    let (up, t) = one_route(
        |s| {
            Reply::ok(format!("for {}", s.header("accept").unwrap_or("-")))
                .header("cache-control", "max-age=60")
                .header("vary", "Accept")
        },
        "",
    )
    .await;
    for accept in ["image/webp", "image/png", "image/webp", "image/png"] {
        let a = t.get_with("/cdn/tile", &[("accept", accept)]).await;
        assert_eq!(a.text(), format!("for {accept}"));
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn browsers_revalidate_against_one_validator_for_everyone() {
    let (up, t) = one_route(
        |_| {
            Reply::ok("font bytes")
                .header("cache-control", "max-age=60")
                .header("etag", "\"upstream-tag\"")
        },
        "",
    )
    .await;
    let a = t.get_with("/cdn/f.woff2", VISITOR).await;
    let etag = a.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with("\"t-"),
        "tamis shows its own validator, not the upstream's: {etag}"
    );
    let b = t.get("/cdn/f.woff2").await;
    assert_eq!(
        b.header("etag"),
        Some(etag.as_str()),
        "the same for every visitor"
    );
    let c = t
        .get_with("/cdn/f.woff2", &[("if-none-match", &etag)])
        .await;
    assert_eq!((c.status, c.body.len()), (304, 0));
    assert_eq!(c.header("etag"), Some(etag.as_str()));
    let d = t
        .get_with("/cdn/f.woff2", &[("if-none-match", "\"upstream-tag\"")])
        .await;
    assert_eq!(d.status, 200);
    let lm_less = t
        .get_with(
            "/cdn/f.woff2",
            &[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")],
        )
        .await;
    assert_eq!(
        lm_less.status, 200,
        "no Last-Modified: If-Modified-Since cannot match"
    );
    // An unencoded body suits every client: one upstream fetch for the browser and the rest.
    assert_eq!(up.count(), 1);
    assert!(up
        .seen()
        .iter()
        .all(|s| s.headers.get("if-none-match").is_none()));
}

#[tokio::test]
async fn route_lifetime_bounds() {
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "max-age=1")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/"), "min_ttl = \"1h\"")
    ))
    .await;
    t.get("/cdn/a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        t.get("/cdn/a").await.header("cache-status"),
        Some("tamis; hit"),
        "min_ttl raised the lifetime"
    );
    let up = Upstream::http(|_| Reply::ok("x").header("cache-control", "max-age=3600")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &up.url("/"), "max_ttl = \"1s\"")
    ))
    .await;
    t.get("/cdn/a").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.get("/cdn/a").await;
    assert_eq!(up.count(), 2, "max_ttl capped the lifetime");
}

#[tokio::test]
async fn purge_on_the_admin_listener() {
    let (up, t) = one_route(
        |_| Reply::ok("x").header("cache-control", "max-age=600"),
        "",
    )
    .await;
    for p in ["/cdn/a/1", "/cdn/a/2", "/cdn/b/1"] {
        t.get(p).await;
    }
    let admin = t.admin.unwrap();
    let r = request(
        admin,
        http::Method::POST,
        "/cache/purge?route=cdn&path=/cdn/a/1",
        &[],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "{\"purged\":1}\n"));
    let r = request(
        admin,
        http::Method::POST,
        "/cache/purge?route=cdn&prefix=/cdn/a/",
        &[],
    )
    .await;
    assert_eq!(r.text(), "{\"purged\":1}\n");
    assert_eq!(
        request(
            admin,
            http::Method::POST,
            "/cache/purge?route=nope&path=/x",
            &[]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        request(admin, http::Method::POST, "/cache/purge?path=/cdn/b/1", &[])
            .await
            .status,
        400,
        "no route named"
    );
    assert_eq!(
        request(
            admin,
            http::Method::GET,
            "/cache/purge?route=cdn&path=/cdn/b/1",
            &[]
        )
        .await
        .status,
        405
    );
    for p in ["/cdn/a/1", "/cdn/a/2", "/cdn/b/1"] {
        t.get(p).await;
    }
    assert_eq!(up.count(), 5, "a/1 and a/2 fetched again, b/1 still cached");
    let m = t.metrics().await;
    assert!(
        m.contains("tamis_cache_evictions_total{result=\"purged\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("tamis_served_bytes_total{result=\"cache\",route=\"cdn\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn pass_through_forwards_everything_and_invalidates_on_writes() {
    let up = Upstream::http(|s| match s.method.as_str() {
        "GET" => Reply::ok("doc").header("cache-control", "max-age=600"),
        _ => Reply::ok("written"),
    })
    .await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route(
            "eu",
            "/",
            &up.url("/"),
            "jurisdiction = \"eu\"\npass_through = true"
        )
    ))
    .await;
    t.get("/doc").await;
    assert_eq!(
        t.get("/doc").await.header("cache-status"),
        Some("tamis; hit")
    );
    let mut req = http::Request::post("/doc")
        .header("host", "x")
        .header("cookie", "a=1")
        .header("x-custom", "y");
    req = req.header("content-type", "text/plain");
    let a = send(
        t.http,
        req.body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap(),
    )
    .await;
    assert_eq!(a.text(), "written");
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), &seen.body[..]),
        ("POST", &b"payload"[..])
    );
    assert_eq!(
        (seen.header("cookie"), seen.header("x-custom")),
        (Some("a=1"), Some("y"))
    );
    assert_eq!(
        t.get("/doc").await.header("cache-status"),
        Some("tamis; fwd=miss; stored"),
        "the POST invalidated it"
    );
}

#[tokio::test]
async fn an_encoded_body_only_reaches_clients_that_accept_it() {
    // This upstream compresses when asked but forgets `Vary: Accept-Encoding`.
    let (up, t) = one_route(
        |s| match s.header("accept-encoding") {
            Some(ae) if ae.contains("gzip") => Reply::ok("GZIPPED")
                .header("content-encoding", "gzip")
                .header("cache-control", "max-age=60"),
            _ => Reply::ok("plain").header("cache-control", "max-age=60"),
        },
        "",
    )
    .await;
    assert_eq!(
        t.get_with("/cdn/a.js", &[("accept-encoding", "gzip")])
            .await
            .text(),
        "GZIPPED"
    );
    let plain = t.get("/cdn/a.js").await;
    assert_eq!(
        (plain.text().as_str(), plain.header("content-encoding")),
        ("plain", None)
    );
    assert_eq!(
        t.get_with("/cdn/a.js", &[("accept-encoding", "gzip, br")])
            .await
            .text(),
        "plain",
        "identity suits everyone"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn purging_a_route_by_name_alone_empties_every_part_of_it() {
    let files = Upstream::http(|_| {
        Reply::ok("font")
            .header("content-type", "font/woff2")
            .header("cache-control", "max-age=600")
    })
    .await;
    let files_url = files.url("/");
    let css = Upstream::http(move |_| {
        Reply::ok(format!("a{{src:url({files_url}f.woff2)}}"))
            .header("content-type", "text/css")
            .header("cache-control", "max-age=600")
    })
    .await;
    let other = Upstream::http(|_| Reply::ok("x").header("cache-control", "max-age=600")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\nupstream = \"{}\"\n\
         files_prefix = \"/fonts/files/\"\nfiles_upstream = \"{}\"\n{}",
        css.url("/"),
        files.url("/"),
        route("other", "/other/", &other.url("/"), "")
    ))
    .await;
    for p in [
        "/fonts/css?family=A",
        "/fonts/css?family=B",
        "/fonts/files/f.woff2",
        "/other/x",
    ] {
        assert_eq!(t.get(p).await.status, 200);
    }
    let r = request(
        t.admin.unwrap(),
        http::Method::POST,
        "/cache/purge?route=fonts",
        &[],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "{\"purged\":3}\n"));
    for p in [
        "/fonts/css?family=A",
        "/fonts/css?family=B",
        "/fonts/files/f.woff2",
        "/other/x",
    ] {
        t.get(p).await;
    }
    // Both parts of the fonts route were fetched again; the other route kept its copy.
    assert_eq!((css.count(), files.count(), other.count()), (4, 2, 1));
}

#[tokio::test]
async fn the_status_page_shows_each_part_of_a_fonts_route_with_its_own_numbers() {
    let files = Upstream::http(|_| {
        Reply::ok("font")
            .header("content-type", "font/woff2")
            .header("cache-control", "max-age=600")
    })
    .await;
    let files_url = files.url("/");
    let css = Upstream::http(move |_| {
        Reply::ok(format!("a{{src:url({files_url}f.woff2)}}"))
            .header("content-type", "text/css")
            .header("cache-control", "max-age=600")
    })
    .await;
    let t = Tamis::start(&format!(
        "{LISTEN}[[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\nupstream = \"{}\"\n\
         files_prefix = \"/fonts/files/\"\nfiles_upstream = \"{}\"\n",
        css.url("/"),
        files.url("/"),
    ))
    .await;
    // The CSS: one miss, three hits; the font file: one miss.
    for _ in 0..4 {
        assert_eq!(t.get("/fonts/css?family=A").await.status, 200);
    }
    assert_eq!(t.get("/fonts/files/f.woff2").await.status, 200);
    let json = get(t.admin.unwrap(), "/status?format=json", &[]).await;
    let s: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    let part = |prefix: &str| {
        s["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prefix"] == prefix)
            .unwrap_or_else(|| panic!("{prefix}: {s}"))
            .clone()
    };
    let (c, f) = (part("/fonts/"), part("/fonts/files/"));
    assert_eq!(
        (c["name"].as_str(), c["part"].as_str()),
        (Some("fonts"), Some("css"))
    );
    assert_eq!(
        (f["name"].as_str(), f["part"].as_str()),
        (Some("fonts"), Some("files"))
    );
    assert_eq!(
        (c["lookups"].as_u64(), c["hit_ratio"].as_f64()),
        (Some(4), Some(0.75))
    );
    assert_eq!(
        (f["lookups"].as_u64(), f["hit_ratio"].as_f64()),
        (Some(1), Some(0.0))
    );
    let page = get(t.admin.unwrap(), "/status", &[]).await.text();
    assert!(
        page.contains("fonts (css)") && page.contains("fonts (files)"),
        "{page}"
    );
}

#[tokio::test]
async fn the_status_page_shows_the_build_the_cache_and_each_routes_hit_ratio_and_breaker() {
    let (_up, t) = one_route(
        |_| Reply::ok("x").header("cache-control", "max-age=600"),
        "",
    )
    .await;
    for _ in 0..4 {
        t.get("/cdn/a").await;
    }
    let admin = t.admin.unwrap();
    let json = get(admin, "/status?format=json", &[]).await;
    assert_eq!(json.status, 200);
    let s: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config_hash"].as_str().unwrap().len(), 16);
    assert_eq!(s["cache_objects"], 1);
    assert!(s["cache_bytes"].as_u64().unwrap() > 0);
    let cdn = &s["routes"][0];
    assert_eq!(
        (cdn["name"].as_str(), cdn["lookups"].as_u64()),
        (Some("cdn"), Some(4))
    );
    assert_eq!(cdn["hit_ratio"], 0.75, "one miss, three hits");
    assert_eq!(cdn["circuit_open"], false);
    let html = get(admin, "/status", &[]).await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = html.text();
    assert!(
        page.contains("75.0 %") && page.contains("<td>cdn</td>"),
        "{page}"
    );
    // Never on the public listener.
    assert_eq!(t.get("/status").await.status, 404);
}

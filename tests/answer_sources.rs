//! Every answer the browser gets passes the same privacy rules, whatever produced it: a fresh
//! answer, a hit, a 304 refresh, stale-while-revalidate, stale-if-error, a coalesced waiter,
//! HEAD and a range. A hostile upstream sends, on every answer and on its 304s, headers that
//! would set state in the browser, report to a third party or point it elsewhere; its 304s also
//! try to change how the stored body is read. Each source must hand the visitor the same
//! headers and bytes as the fresh answer did.

mod common;

use std::time::Duration;

use common::*;
use http::Method;

/// A body that would fetch from a third party if a browser applied it as a stylesheet.
const BODY: &str = "#x{background:url(https://evil.example/pixel.png)}\n";

/// Headers a hostile upstream adds to every answer, 304s included.
const HOSTILE: &[(&str, &str)] = &[
    ("set-cookie", "track=1; Path=/; Max-Age=31536000"),
    ("nel", "{\"report_to\":\"default\",\"max_age\":31536000}"),
    (
        "report-to",
        "{\"group\":\"default\",\"endpoints\":[{\"url\":\"https://evil.example/r\"}]}",
    ),
    ("reporting-endpoints", "default=\"https://evil.example/r\""),
    ("alt-svc", "h3=\"evil.example:443\""),
    ("accept-ch", "Sec-CH-UA-Model"),
    ("server-timing", "db;dur=53"),
    ("clear-site-data", "\"cookies\""),
    (
        "link",
        "<https://evil.example/x.css>; rel=preload; as=style",
    ),
    (
        "content-security-policy",
        "default-src 'self'; report-uri https://evil.example/csp",
    ),
    ("x-tracking-id", "u-42"),
];

/// What a 304 adds on top: an attempt to change how the stored body is read.
const RETYPE: &[(&str, &str)] = &[
    ("content-type", "text/css"),
    ("content-encoding", "gzip"),
    ("content-language", "fr"),
    ("content-disposition", "attachment; filename=\"x.css\""),
    ("x-content-type-options", "none"),
];

fn hostile(mut r: Reply) -> Reply {
    for (k, v) in HOSTILE {
        r = r.header(k, v);
    }
    r
}

/// The upstream: each path names its own lifetime; a revalidation gets a hostile 304, except
/// on `/sie.txt`, whose upstream then fails.
fn upstream(s: &Seen) -> Reply {
    let path = s.uri.as_str();
    let cc = match path {
        "/refresh.txt" | "/sheet.css" => "max-age=1",
        "/swr.txt" => "max-age=1, stale-while-revalidate=30",
        "/sie.txt" => "max-age=1, stale-if-error=60",
        _ => "max-age=60",
    };
    let (content_type, etag) = match path {
        "/sheet.css" => ("text/css", "\"s1\""),
        _ => ("text/plain", "\"v1\""),
    };
    if s.header("if-none-match") == Some(etag) {
        if path == "/sie.txt" {
            return hostile(Reply::ok("<h1>down</h1>").status(500))
                .header("content-type", "text/html");
        }
        let mut r = hostile(Reply::ok("").status(304))
            .without("content-type")
            .header("cache-control", cc)
            .header("etag", etag);
        for (k, v) in RETYPE {
            r = r.header(k, v);
        }
        if path == "/sheet.css" {
            r = r.header("content-type", "text/plain");
        }
        return r;
    }
    let delay = if path == "/slow.txt" {
        Duration::from_millis(300)
    } else {
        Duration::ZERO
    };
    hostile(Reply::ok(BODY))
        .header("content-type", content_type)
        .header("cache-control", cc)
        .header("etag", etag)
        .delay(delay)
}

/// An answer as compared across sources: status, headers (but those that say when, or which
/// source: Date, Age, Cache-Status) and body.
type Seen2 = (u16, Vec<(String, String)>, String);

fn view(a: &Answer, leave_out: &[&str]) -> Seen2 {
    let mut headers: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(k, _)| {
            !["date", "age", "cache-status"].contains(&k.as_str())
                && !leave_out.contains(&k.as_str())
        })
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    (a.status, headers, a.text())
}

/// What every answer holds whatever its source: none of the hostile headers, never a
/// stylesheet made of the upstream's bytes, `nosniff`.
fn assert_safe(a: &Answer, what: &str) {
    for (name, _) in HOSTILE {
        // A mirrored page keeps its CSP and first-party Link hints, filtered.
        if *name == "content-security-policy" || *name == "link" {
            let v = a.header(name).unwrap_or("");
            assert!(!v.contains("evil.example"), "{what}: {name}: {v}");
            continue;
        }
        assert!(
            a.header(name).is_none(),
            "{what}: {name} reached the visitor"
        );
    }
    for name in [
        "content-encoding",
        "content-language",
        "content-disposition",
    ] {
        assert!(
            a.header(name).is_none(),
            "{what}: {name} reached the visitor"
        );
    }
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    let ct = a.header("content-type").unwrap_or("");
    if ct.contains("css") {
        assert_eq!(ct, "text/css; charset=utf-8", "{what}");
        assert!(!a.text().contains("evil.example"), "{what}: {}", a.text());
    } else {
        assert_eq!(ct, "text/plain", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_source_hands_the_visitor_the_same_headers_and_bytes() {
    let up = Upstream::http(upstream).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[cache]\nstatus_header = true\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let status = |a: &Answer| a.header("cache-status").unwrap_or("").to_owned();

    // Fresh, then a hit, HEAD and a range from the same entry.
    let fresh = t.get("/cdn/fresh.txt").await;
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    assert_eq!(fresh.text(), BODY);
    assert_safe(&fresh, "fresh");
    let reference = view(&fresh, &[]);
    let hit = t.get("/cdn/fresh.txt").await;
    assert_eq!(status(&hit), "tamis; hit");
    assert_eq!(view(&hit, &[]), reference, "hit");
    let head = request(t.http, Method::HEAD, "/cdn/fresh.txt", &[]).await;
    assert_safe(&head, "HEAD");
    let (s, h, body) = view(&head, &[]);
    assert_eq!((s, &h, body.as_str()), (200, &reference.1, ""), "HEAD");
    let range = t
        .get_with("/cdn/fresh.txt", &[("range", "bytes=0-4")])
        .await;
    assert_eq!(range.status, 206);
    assert_safe(&range, "range");
    let partial = ["content-range", "content-length"];
    assert_eq!(
        view(&range, &partial).1,
        view(&fresh, &partial).1,
        "range headers"
    );
    assert_eq!(range.text(), &BODY[..5]);

    // A 304 refresh: only validators and freshness may change, and they come back the same.
    for path in ["/cdn/refresh.txt", "/cdn/sheet.css"] {
        let first = t.get(path).await;
        assert_safe(&first, path);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let refreshed = t.get(path).await;
        assert_eq!(
            status(&refreshed),
            "tamis; fwd=stale; fwd-status=304; stored",
            "{path}"
        );
        assert_safe(&refreshed, &format!("{path} refreshed by a 304"));
        assert_eq!(view(&refreshed, &[]), view(&first, &[]), "{path} refreshed");
        let hit = t.get(path).await;
        assert_eq!(status(&hit), "tamis; hit", "{path}");
        assert_eq!(
            view(&hit, &[]),
            view(&first, &[]),
            "{path} hit after refresh"
        );
    }

    // stale-while-revalidate: the stale copy, then what the background 304 refreshed.
    let first = t.get("/cdn/swr.txt").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = t.get("/cdn/swr.txt").await;
    assert_eq!(status(&stale), "tamis; hit; detail=stale-while-revalidate");
    assert_safe(&stale, "stale-while-revalidate");
    assert_eq!(
        view(&stale, &[]),
        view(&first, &[]),
        "stale-while-revalidate"
    );
    let mut refreshed = t.get("/cdn/swr.txt").await;
    for _ in 0..50 {
        if status(&refreshed) == "tamis; hit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        refreshed = t.get("/cdn/swr.txt").await;
    }
    assert_eq!(
        status(&refreshed),
        "tamis; hit",
        "the background refresh landed"
    );
    assert!(up
        .seen()
        .iter()
        .any(|s| s.uri == "/swr.txt" && s.header("if-none-match").is_some()));
    assert_eq!(
        view(&refreshed, &[]),
        view(&first, &[]),
        "after the background 304"
    );

    // stale-if-error: the upstream fails with a hostile error page; the stale copy answers.
    let first = t.get("/cdn/sie.txt").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = t.get("/cdn/sie.txt").await;
    assert_eq!(status(&stale), "tamis; fwd=stale; detail=stale-if-error");
    assert_safe(&stale, "stale-if-error");
    assert_eq!(view(&stale, &[]), view(&first, &[]), "stale-if-error");

    // Coalesced waiters: one fetch, every waiter the same answer.
    let (a, b, c) = tokio::join!(
        t.get("/cdn/slow.txt"),
        t.get("/cdn/slow.txt"),
        t.get("/cdn/slow.txt")
    );
    assert_eq!(up.seen().iter().filter(|s| s.uri == "/slow.txt").count(), 1);
    let statuses: Vec<String> = [&a, &b, &c].iter().map(|x| status(x)).collect();
    assert!(
        statuses.iter().any(|s| s.contains("collapsed")),
        "{statuses:?}"
    );
    for (i, x) in [&a, &b, &c].iter().enumerate() {
        assert_safe(x, &format!("coalesced {i}"));
        assert_eq!(view(x, &[]), view(&a, &[]), "coalesced {i}");
    }
    assert_eq!(
        view(&a, &[]).1,
        reference.1,
        "slow.txt has the same lifetime as fresh.txt"
    );
}

/// tamis's own answers (refusals, its pages) pass the same last step: never sniffed.
#[tokio::test]
async fn tamis_own_answers_are_never_sniffed() {
    let up = Upstream::http(upstream).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[transparency]\npath = \"/.well-known/tamis\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    for path in ["/nowhere", "/cdn/../x", "/.well-known/tamis"] {
        let a = t.get(path).await;
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert!(a.header("set-cookie").is_none(), "{path}");
    }
}

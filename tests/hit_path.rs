//! The fresh-copy shortcut (issue 32): a hit is looked up by the cache key's parts, before the
//! upstream URL is built, and answered from a head prepared when the entry was stored: `Age`
//! is replaced by each answer, `X-Content-Type-Options` is final, and `Cache-Status` holds the
//! hit's value, which the response step leaves on a hit and replaces or removes otherwise.
//! Neither may change what the visitor gets.

mod common;

use common::*;

/// Header names and values but those that say when or which source (Date, Age,
/// Cache-Status), sorted.
fn head(a: &Answer) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(k, _)| !["date", "age", "cache-status"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    h.sort();
    h
}

/// Each of `names` at most once.
fn once_each(a: &Answer, names: &[&str], what: &str) {
    for name in names {
        assert!(
            a.headers.get_all(*name).iter().count() <= 1,
            "{what}: {name} repeated: {:?}",
            a.headers
        );
    }
}

#[tokio::test]
async fn a_hit_without_the_status_header_carries_no_placeholder() {
    let up = Upstream::http(|_| Reply::ok("tile").header("cache-control", "max-age=60")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[cache]\nstatus_header = false\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let miss = t.get("/cdn/a.png").await;
    let hit = t.get("/cdn/a.png").await;
    assert_eq!(up.count(), 1, "the second answer is a hit");
    for (a, what) in [(&miss, "miss"), (&hit, "hit")] {
        assert_eq!(a.status, 200, "{what}");
        assert_eq!(a.header("cache-status"), None, "{what}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert!(
            a.header("age").is_some_and(|v| v.parse::<u64>().is_ok()),
            "{what}"
        );
        once_each(
            a,
            &["age", "x-content-type-options", "content-length"],
            what,
        );
    }
    assert_eq!(head(&hit), head(&miss));
    assert_eq!(hit.body, miss.body);
    // HEAD from the same head, without the body.
    let head_only = request(t.http, http::Method::HEAD, "/cdn/a.png", &[]).await;
    assert_eq!(head(&head_only), head(&miss));
    assert_eq!(head_only.header("cache-status"), None);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_pass_through_hit_gets_no_nosniff_its_upstream_did_not_send() {
    let up = Upstream::http(|_| Reply::ok("page").header("cache-control", "max-age=60")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[cache]\nstatus_header = true\n\n{}",
        route(
            "own",
            "/own/",
            &up.url("/"),
            "jurisdiction = \"eu\"\npass_through = true"
        )
    ))
    .await;
    let miss = t.get("/own/p").await;
    let hit = t.get("/own/p").await;
    assert_eq!(up.count(), 1, "the second answer is a hit");
    assert_eq!(hit.header("cache-status"), Some("tamis; hit"));
    for (a, what) in [(&miss, "miss"), (&hit, "hit")] {
        assert_eq!(a.header("x-content-type-options"), None, "{what}");
        once_each(a, &["age", "cache-status"], what);
    }
    assert_eq!(head(&hit), head(&miss));
}

#[tokio::test]
async fn the_shortcut_finds_only_what_the_route_would_fetch() {
    let up =
        Upstream::http(|s: &Seen| Reply::ok(s.uri.clone()).header("cache-control", "max-age=60"))
            .await;
    let t = Tamis::start(&format!(
        "{LISTEN}[cache]\nstatus_header = true\n\n{}{}",
        route("cdn", "/cdn/", &up.url("/base/"), "forward_query = false"),
        route("q", "/q/", &up.url("/base/"), ""),
    ))
    .await;
    assert_eq!(t.get("/cdn/b").await.text(), "/base/b");
    // A path confinement refuses is refused, though its pieces spell a stored target's
    // neighbour; nothing reaches the upstream.
    for bad in ["/cdn/a/../b", "/cdn/./b", "/cdn//b", "/cdn/%2e%2e/b"] {
        assert_eq!(t.get(bad).await.status, 400, "{bad}");
    }
    // Without forward_query the query is not part of the key: the same object.
    let hit = t.get("/cdn/b?x=1").await;
    assert_eq!(hit.header("cache-status"), Some("tamis; hit"));
    assert_eq!(hit.text(), "/base/b");
    // With it (the default), each query is its own object, and none is the query-less one.
    assert_eq!(t.get("/q/b").await.text(), "/base/b");
    assert_eq!(t.get("/q/b?x=1").await.text(), "/base/b?x=1");
    let again = t.get("/q/b?x=1").await;
    assert_eq!(again.header("cache-status"), Some("tamis; hit"));
    let other = t.get("/q/b?x=2").await;
    assert_ne!(other.header("cache-status"), Some("tamis; hit"));
    assert_eq!(other.text(), "/base/b?x=2");
    let empty = t.get("/q/b?").await;
    assert_ne!(empty.header("cache-status"), Some("tamis; hit"));
    assert_eq!(up.count(), 5);
}

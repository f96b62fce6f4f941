//! Limits and abuse: oversized requests, load shedding, the connection cap, per-client rates,
//! trusted proxies, the circuit breaker, bounded retries, slow request heads (slowloris), idle
//! connections, and HTTP/2 stream limits and reset floods (spoken in raw frames).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cacheable(seen: &Seen) -> Reply {
    Reply::ok(format!("from {}", seen.uri)).header("cache-control", "public, max-age=600")
}

#[tokio::test]
async fn oversized_heads_and_targets_are_refused_before_anything_is_forwarded() {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[limits]\nmax_header_bytes = 8192\nmax_headers = 20\nmax_uri_bytes = 200\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let big = "x".repeat(9000);
    let a = raw(
        t.http,
        &format!("GET /cdn/a HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(raw_status(&a), 431, "{a}");
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let a = raw(
        t.http,
        &format!("GET /cdn/a HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(raw_status(&a), 431, "{a}");
    let long = format!("/cdn/{}", "a".repeat(300));
    assert_eq!(t.get(&long).await.status, 414);
    assert_eq!(up.count(), 0);
    // Within the limits all is well.
    assert_eq!(t.get("/cdn/a").await.status, 200);
}

/// An upstream answering after `delay`, behind an uncached `/cdn/` route with these `[limits]`.
async fn slow_cdn(limits: &str, delay: Duration) -> (Upstream, Tamis) {
    let up = Upstream::http(move |s| Reply::ok(format!("slow {}", s.uri)).delay(delay)).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[limits]\n{limits}\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "cache = false")
    ))
    .await;
    (up, t)
}

#[tokio::test]
async fn too_many_requests_in_flight_are_shed_with_retry_after() {
    let (up, t) = slow_cdn("max_requests_in_flight = 2", Duration::from_millis(400)).await;
    let addr = t.http;
    let answers: Vec<Answer> =
        futures_join((0..6).map(|i| async move { get(addr, &format!("/cdn/{i}"), &[]).await }))
            .await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let shed: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!(
        ok,
        2,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(shed.len(), 4);
    assert!(shed.iter().all(|a| a.header("retry-after") == Some("1")));
    assert_eq!(up.count(), 2, "shed requests never reach the upstream");
    assert!(t.metrics().await.contains("tamis_load_shed_total 4"));
    // Once they are done, requests are served again.
    assert_eq!(t.get("/cdn/again").await.status, 200);
}

/// Runs futures concurrently, answers in order.
async fn futures_join<F: std::future::Future<Output = Answer> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<Answer> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn connections_over_the_cap_wait_their_turn() {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[limits]\nmax_connections = 2\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    // Two connections that hold their slot without sending anything.
    let hold1 = TcpStream::connect(t.http).await.unwrap();
    let hold2 = TcpStream::connect(t.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = t.http;
    let third = tokio::spawn(async move { get(addr, "/cdn/a", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served over the cap"
    );
    drop(hold1);
    let a = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(a.status, 200);
    drop(hold2);
}

#[tokio::test]
async fn per_client_rate_with_trusted_proxies_and_spoofing_ignored() {
    let up = Upstream::http(cacheable).await;
    let config = |trusted: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [{trusted}]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            route("cdn", "/cdn/", &up.url("/"), "rate_limit = \"1/min\"\nrate_burst = 3")
        )
    };
    // Behind a trusted terminator: each forwarded client has its own allowance.
    let t = Tamis::start(&config("\"127.0.0.1/32\"")).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..3 {
        assert_eq!(t.get_with("/cdn/a", &from("203.0.113.1")).await.status, 200);
    }
    let limited = t.get_with("/cdn/a", &from("203.0.113.1")).await;
    assert_eq!(limited.status, 429);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // A client that puts a fake address on the left still gets its own, true, bucket.
    assert_eq!(
        t.get_with(
            "/cdn/a",
            &[("x-forwarded-for", "198.51.100.9, 203.0.113.1")]
        )
        .await
        .status,
        429
    );
    assert_eq!(t.get_with("/cdn/a", &from("203.0.113.2")).await.status, 200);
    let m = t.metrics().await;
    assert!(
        m.contains("tamis_requests_total{route=\"cdn\",status=\"429\"} 2"),
        "{m}"
    );
    assert!(!m.contains("203.0.113"), "a client address in the metrics");

    // From an untrusted peer the header is ignored: rotating it gains nothing.
    let t = Tamis::start(&config("\"10.0.0.0/8\"")).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..5 {
            let ip = format!("203.0.113.{i}");
            v.push(
                t.get_with("/cdn/a", &[("x-forwarded-for", &ip)])
                    .await
                    .status,
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // And nothing of it went upstream.
    for seen in up.seen() {
        assert!(seen.header("x-forwarded-for").is_none());
    }
}

/// An EU Plausible route on `/p/` that forwards the truncated address, behind `trusted`.
fn eu_plausible_behind(up: &Upstream, trusted: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [{trusted}]\n\n\
         [[route]]\nname = \"p\"\nkind = \"plausible\"\nprefix = \"/p/\"\nupstream = \"{}\"\njurisdiction = \"eu\"\nclient_ip = \"truncated\"\n",
        up.url("/")
    )
}

/// A Plausible pageview relayed by a proxy that names `client` in `X-Forwarded-For`.
async fn pageview_for(t: &Tamis, client: &str) -> Answer {
    let body = r#"{"n":"pageview","u":"https://site.example/","d":"site.example"}"#;
    send(
        t.http,
        http::Request::post("/p/api/event")
            .header("host", "site.example")
            .header("content-type", "application/json")
            .header("x-forwarded-for", client)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn the_truncated_address_an_eu_route_may_send_comes_from_a_trusted_proxy_only() {
    let up = Upstream::http(|_| Reply::ok("").status(202)).await;
    let t = Tamis::start(&eu_plausible_behind(&up, "\"127.0.0.1\"")).await;
    assert_eq!(pageview_for(&t, "203.0.113.77").await.status, 202);
    assert_eq!(up.last().header("x-forwarded-for"), Some("203.0.113.0"));
    let t = Tamis::start(&eu_plausible_behind(&up, "\"10.0.0.0/8\"")).await;
    assert_eq!(pageview_for(&t, "203.0.113.77").await.status, 202);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("127.0.0.0"),
        "spoofed header used"
    );
}

#[tokio::test]
async fn an_ipv6_address_embedding_an_ipv4_is_forwarded_as_that_ipv4_cut_to_24() {
    let up = Upstream::http(|_| Reply::ok("").status(202)).await;
    let t = Tamis::start(&eu_plausible_behind(&up, "\"127.0.0.1\"")).await;
    for client in EMBEDDING_203_0_113_7 {
        assert_eq!(pageview_for(&t, client).await.status, 202, "{client}");
        let seen = up.last();
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("203.0.113.0"),
            "{client}"
        );
        // All of the request but Host, the upstream's own address (its port could hold 7107).
        let mut headers = seen.headers.clone();
        headers.remove("host");
        let sent = format!(
            "{} {headers:?} {}",
            seen.uri,
            String::from_utf8_lossy(&seen.body)
        );
        for form in EMBEDDED_203_0_113_7_FORMS {
            assert!(!sent.contains(form), "{client}: {form} sent in {sent}");
        }
    }
}

#[tokio::test]
async fn a_failing_upstream_opens_the_circuit_serves_stale_then_recovers() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let up = Upstream::http(move |_| {
        if h.load(Ordering::Relaxed) {
            Reply::ok("fresh").header("cache-control", "max-age=1, stale-if-error=600")
        } else {
            Reply::ok("boom").status(500)
        }
    })
    .await;
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\nbreaker_failures = 3\nbreaker_cooldown = \"1s\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    assert_eq!(t.get("/cdn/kept").await.text(), "fresh");
    healthy.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Three failures (the cached one is served stale each time).
    for i in 0..3 {
        let a = t.get(&format!("/cdn/x{i}")).await;
        assert_eq!(
            a.status, 500,
            "an upstream 5xx without a stale copy passes as is"
        );
    }
    let before = up.count();
    // Open: no upstream request; 503 with Retry-After, or the stale copy.
    let started = Instant::now();
    let a = t.get("/cdn/new").await;
    assert_eq!(a.status, 503);
    assert!(a.header("retry-after").is_some());
    let s = t.get("/cdn/kept").await;
    assert_eq!((s.status, s.text().as_str()), (200, "fresh"));
    assert!(started.elapsed() < Duration::from_millis(500), "not fast");
    assert_eq!(
        up.count(),
        before,
        "the upstream was asked while the circuit was open"
    );
    let m = t.metrics().await;
    assert!(m.contains("result=\"circuit_open\""), "{m}");

    // Cooldown over and upstream back: one probe closes it.
    healthy.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.get("/cdn/new").await.status, 200);
    assert_eq!(t.get("/cdn/other").await.status, 200);
}

/// An upstream on raw TCP that resets the first `resets` connections, then answers.
async fn flaky_upstream(resets: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            if n <= resets {
                // SO_LINGER 0: the drop sends a reset at once (the deprecation is about
                // non-zero lingers blocking the thread).
                #[allow(deprecated)]
                let _ = c.set_linger(Some(Duration::ZERO));
                drop(c);
                continue;
            }
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await;
                s.fetch_add(1, Ordering::Relaxed);
                let _ = c
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn idempotent_requests_are_retried_a_bounded_number_of_times() {
    let (addr, served) = flaky_upstream(1).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route("cdn", "/cdn/", &format!("http://{addr}/"), "cache = false")
    ))
    .await;
    let a = t.get("/cdn/a").await;
    assert_eq!((a.status, a.text().as_str()), (200, "ok"));
    assert_eq!(served.load(Ordering::Relaxed), 1);

    // retries = 0: the reset reaches the visitor as a 502.
    let (addr, served) = flaky_upstream(1).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\nretries = 0\n\n{}",
        route("cdn", "/cdn/", &format!("http://{addr}/"), "cache = false")
    ))
    .await;
    assert_eq!(t.get("/cdn/a").await.status, 502);
    assert_eq!(served.load(Ordering::Relaxed), 0);

    // A POST is never retried (pass-through EU route).
    let (addr, served) = flaky_upstream(1).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route(
            "eu",
            "/eu/",
            &format!("http://{addr}/"),
            "jurisdiction = \"eu\"\npass_through = true"
        )
    ))
    .await;
    let a = request(t.http, http::Method::POST, "/eu/form", &[]).await;
    assert_eq!(a.status, 502);
    assert_eq!(served.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\ntimeout = \"1s\"\n\n[limits]\nidle_timeout = \"2s\"\nheader_read_timeout = \"30s\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let mut c = TcpStream::connect(t.http).await.unwrap();
    c.write_all(b"GET /cdn/a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Now silent: closed after about two seconds, not before.
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("idle connection kept open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}

/// A tamis whose heads must arrive within one second, in front of a cacheable CDN.
async fn one_second_heads() -> (Upstream, Tamis) {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[limits]\nheader_read_timeout = \"1s\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    (up, t)
}

/// Reads until the connection closes (or 10 s pass): what came, and when it ended.
async fn read_until_closed(
    r: &mut (impl AsyncReadExt + Unpin),
    started: Instant,
) -> (String, Duration) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = started + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 10 s: {}", String::from_utf8_lossy(&out)),
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_request_head_trickled_in_is_cut_off_and_never_forwarded() {
    let (up, t) = one_second_heads().await;
    let c = TcpStream::connect(t.http).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let started = Instant::now();
    wr.write_all(b"GET /cdn/a HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    // Slowloris: a header line every 200 ms, so bytes keep moving (the idle timeout never
    // fires) but the head never ends.
    let trickle = tokio::spawn(async move {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut rd, started).await;
    trickle.abort();
    assert!(answer.is_empty() || raw_status(&answer) == 408, "{answer}");
    assert!(
        closed >= Duration::from_millis(900),
        "closed early: {closed:?}"
    );
    assert!(closed < Duration::from_secs(4), "closed late: {closed:?}");
    assert_eq!(up.count(), 0, "an unfinished head was forwarded");
}

#[tokio::test]
async fn a_kept_alive_connection_waits_for_its_next_head_no_longer_than_the_head_timeout() {
    let (up, t) = one_second_heads().await;
    let mut c = TcpStream::connect(t.http).await.unwrap();
    c.write_all(b"GET /cdn/a HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), 200);
    // Silent after its answer: closed by the head timeout, not the 60 s idle timeout.
    let (rest, closed) = read_until_closed(&mut c, Instant::now()).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(
        closed >= Duration::from_millis(900),
        "closed early: {closed:?}"
    );
    assert!(closed < Duration::from_secs(4), "closed late: {closed:?}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn each_request_gets_its_own_head_timeout() {
    let (up, t) = one_second_heads().await;
    let mut c = TcpStream::connect(t.http).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // Four requests 600 ms apart: the connection outlives the timeout, no head takes that long.
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        c.write_all(format!("GET /cdn/{i} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(
            raw_status(&String::from_utf8_lossy(&buf[..n])),
            200,
            "request {i}"
        );
    }
    assert_eq!(up.count(), 4);
}

#[test]
fn idle_timeout_must_outlast_the_upstream_timeout() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ntimeout = \"30s\"\n[limits]\nidle_timeout = \"20s\"\n";
    let err = tamis::config::Config::parse(text, std::path::Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.idle_timeout"), "{err}");
}

#[tokio::test]
async fn a_request_body_that_breaks_off_is_never_forwarded() {
    let up = Upstream::http(|_| Reply::ok("ok")).await;
    let t = Tamis::start(&format!(
        "{LISTEN}{}",
        route(
            "eu",
            "/eu/",
            &up.url("/"),
            "jurisdiction = \"eu\"\npass_through = true\ncache = false\n"
        )
    ))
    .await;
    let mut s = TcpStream::connect(t.http).await.unwrap();
    s.write_all(
        b"POST /eu/form HTTP/1.1\r\nhost: t\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await
    .unwrap();
    // The rest of the body never comes: the client closes its side.
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    // 400: the visitor's fault, not 413 (it was not too large).
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(up.count(), 0, "a truncated body was forwarded");
}

#[tokio::test]
async fn a_stopping_server_tells_http2_clients_and_finishes_their_streams() {
    let (up, t) = slow_cdn("", Duration::from_millis(800)).await;
    let (c, _) = h2raw::connect(t.http).await;
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(&h2raw::get(1, "/cdn/slow")).await.unwrap();
    while up.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(t.stop());
    // A well-behaved client: it answers the server's PINGs, so the graceful close can go on
    // from "going away" to naming the last stream it will process.
    let (mut goaways, mut answered, mut ended) = (Vec::new(), false, false);
    let read_all = async {
        while let Some(f) = h2raw::next(&mut rd).await {
            match f.kind {
                h2raw::GOAWAY => goaways.push(f.payload),
                h2raw::PING if f.flags & 0x1 == 0 => {
                    let ack = h2raw::frame(h2raw::PING, 0x1, 0, &f.payload);
                    let _ = wr.write_all(&ack).await;
                }
                h2raw::HEADERS if f.stream == 1 => {
                    // The answer comes after the server said it was going away.
                    answered = !goaways.is_empty();
                    ended |= f.flags & 0x1 != 0;
                }
                h2raw::DATA if f.stream == 1 => ended |= f.flags & 0x1 != 0,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the connection was not closed");
    assert!(answered, "no answer after the GOAWAY: {goaways:?}");
    assert!(ended, "stream 1 never ended");
    // The last GOAWAY names stream 1 as processed, with NO_ERROR.
    let last = goaways.last().expect("no GOAWAY");
    assert_eq!(
        last.get(..8),
        Some(&[0, 0, 0, 1, 0, 0, 0, 0][..]),
        "{goaways:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server did not stop")
        .unwrap();
}

/// HTTP/2 written frame by frame, the way an attacker's client would: no library between the
/// test and what goes on the wire.
mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const CANCEL: u32 = 0x8;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// A GET for `path` with END_STREAM: HPACK static entries for `:method GET` and
    /// `:scheme http`, literal values for `:path` and `:authority` (never indexed).
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend(path.as_bytes());
        block.extend([0x01, 1, b't']);
        frame(HEADERS, 0x1 | 0x4, stream, &block)
    }

    pub fn reset(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// Connects with the client preface and an empty SETTINGS, and acknowledges the server's
    /// SETTINGS (its limits apply from then on), which it returns.
    pub async fn connect(addr: std::net::SocketAddr) -> (TcpStream, Frame) {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        c.write_all(&hello).await.unwrap();
        loop {
            let f = next(&mut c).await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & 0x1 == 0 {
                c.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
                return (c, f);
            }
        }
    }

    /// The next frame, or None once the server closed the connection.
    pub async fn next(c: &mut (impl AsyncReadExt + Unpin)) -> Option<Frame> {
        let mut head = [0u8; 9];
        c.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        c.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// A SETTINGS frame's value for `id`.
    pub fn setting(f: &Frame, id: u16) -> Option<u32> {
        f.payload.chunks_exact(6).find_map(|s| {
            (u16::from_be_bytes([s[0], s[1]]) == id)
                .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        })
    }

    /// A 4-byte error code at `at` in a frame's payload.
    pub fn code(f: &Frame, at: usize) -> u32 {
        u32::from_be_bytes([
            f.payload[at],
            f.payload[at + 1],
            f.payload[at + 2],
            f.payload[at + 3],
        ])
    }
}

/// Reads frames until stream `stream` ends; false if the connection closed or said GOAWAY.
async fn h2_answered(rd: &mut (impl AsyncReadExt + Unpin), stream: u32) -> bool {
    while let Some(f) = h2raw::next(rd).await {
        if f.kind == h2raw::GOAWAY {
            return false;
        }
        if f.stream == stream
            && matches!(f.kind, h2raw::HEADERS | h2raw::DATA)
            && f.flags & 0x1 != 0
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn an_http2_connection_waits_for_its_next_request_past_the_head_timeout() {
    // The head timeout is HTTP/1.1's keep-alive wait; a browser keeps an HTTP/2 connection
    // for the next page, which only the idle timeout (60 s here) ends.
    let (up, t) = one_second_heads().await;
    let (c, _) = h2raw::connect(t.http).await;
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(&h2raw::get(1, "/cdn/a")).await.unwrap();
    assert!(h2_answered(&mut rd, 1).await);
    // Silent for two and a half head timeouts: nothing comes, the connection stays.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), h2raw::next(&mut rd)).await;
    assert!(
        quiet.is_err(),
        "the server spoke or closed: {}",
        quiet.is_ok()
    );
    wr.write_all(&h2raw::get(3, "/cdn/b")).await.unwrap();
    assert!(
        h2_answered(&mut rd, 3).await,
        "closed after the head timeout"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn an_http2_connection_that_only_pings_is_closed_when_idle() {
    let up = Upstream::http(cacheable).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\ntimeout = \"1s\"\n\n[limits]\nidle_timeout = \"2s\"\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "")
    ))
    .await;
    let (c, _) = h2raw::connect(t.http).await;
    let started = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    // Bytes move both ways (a PING every 300 ms, and its ACK), but no request is ever made:
    // the connection holds a slot for nothing.
    let pinger = tokio::spawn(async move {
        for i in 0..100u64 {
            let ping = h2raw::frame(h2raw::PING, 0, 0, &i.to_be_bytes());
            if wr.write_all(&ping).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let (mut acks, mut goaway) = (0, None);
    let read_all = async {
        while let Some(f) = h2raw::next(&mut rd).await {
            acks += usize::from(f.kind == h2raw::PING);
            if f.kind == h2raw::GOAWAY {
                goaway = Some(f.payload);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("a connection that only pings was kept open");
    pinger.abort();
    let closed = started.elapsed();
    assert!(acks > 0, "the pings were answered");
    // Closed gracefully, not dropped: a GOAWAY with NO_ERROR. (The first of a graceful
    // close names the highest stream id; this client never answers the PING that would bring
    // the second, so the connection goes once its grace is up.)
    let goaway = goaway.expect("closed without a GOAWAY");
    assert_eq!(
        goaway.get(4..8),
        Some(&[0u8; 4][..]),
        "error code: {goaway:?}"
    );
    assert!(
        closed >= Duration::from_millis(1500),
        "closed early: {closed:?}"
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_body_still_streaming_in_keeps_its_connection_past_the_idle_timeout() {
    // An upstream that sends its body in eight pieces 400 ms apart: 3.2 s, longer than the
    // 2 s idle timeout, with one request on the connection the whole time.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = origin.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = origin.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for i in 0..8 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    let piece = format!("piece-{i};");
                    let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let t = Tamis::start(&format!(
        "{LISTEN}[upstream]\ntimeout = \"1s\"\n\n[limits]\nidle_timeout = \"2s\"\n\n{}",
        route(
            "slow",
            "/slow/",
            &format!("http://{addr}/"),
            "cache = false"
        )
    ))
    .await;
    let a = t.get("/slow/feed").await;
    assert_eq!(a.status, 200);
    let want: String = (0..8).map(|i| format!("piece-{i};")).collect();
    assert_eq!(a.text(), want, "the body was cut off");
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_closes_the_connection_and_spares_the_upstream() {
    let up = Upstream::http(|s| Reply::ok(format!("from {}", s.uri))).await;
    let t = Tamis::start(&format!(
        "{LISTEN}[limits]\nh2_max_pending_reset_streams = 20\n\n{}",
        route("cdn", "/cdn/", &up.url("/"), "cache = false")
    ))
    .await;
    let (mut c, _) = h2raw::connect(t.http).await;
    // CVE-2023-44487: open a stream and cancel it at once, a thousand times in one burst.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(h2raw::get(id, &format!("/cdn/{i}")));
        burst.extend(h2raw::reset(id, h2raw::CANCEL));
    }
    // The server may close while the burst is still going out.
    let _ = c.write_all(&burst).await;
    let mut goaway = None;
    let read_all = async {
        while let Some(f) = h2raw::next(&mut c).await {
            if f.kind == h2raw::GOAWAY {
                goaway = Some(h2raw::code(&f, 4));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the flooding connection was never closed");
    assert_eq!(
        goaway,
        Some(h2raw::ENHANCE_YOUR_CALM),
        "closed with GOAWAY ENHANCE_YOUR_CALM"
    );
    assert!(
        up.count() < 100,
        "{} of 1000 cancelled requests reached the upstream",
        up.count()
    );
    // Everyone else is still served.
    assert_eq!(t.get("/cdn/after").await.status, 200);
}

#[tokio::test]
async fn http2_streams_over_the_configured_limit_are_refused() {
    let (up, t) = slow_cdn("h2_max_concurrent_streams = 4", Duration::from_millis(500)).await;
    let (mut c, settings) = h2raw::connect(t.http).await;
    assert_eq!(
        h2raw::setting(&settings, h2raw::MAX_CONCURRENT_STREAMS),
        Some(4)
    );
    // Ten at once while the upstream is slow: four are served, the others refused.
    let burst: Vec<u8> = (0..10u32)
        .flat_map(|i| h2raw::get(2 * i + 1, &format!("/cdn/{i}")))
        .collect();
    c.write_all(&burst).await.unwrap();
    let (mut refused, mut answered) = (Vec::new(), Vec::new());
    let read = async {
        while refused.len() + answered.len() < 10 {
            let Some(f) = h2raw::next(&mut c).await else {
                break;
            };
            match f.kind {
                h2raw::RST_STREAM if h2raw::code(&f, 0) == h2raw::REFUSED_STREAM => {
                    refused.push(f.stream)
                }
                // The response head; its body follows in DATA frames.
                h2raw::HEADERS => answered.push(f.stream),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("every stream answered or refused");
    assert_eq!(
        answered.len(),
        4,
        "answered {answered:?}, refused {refused:?}"
    );
    assert_eq!(
        refused.len(),
        6,
        "answered {answered:?}, refused {refused:?}"
    );
    assert_eq!(up.count(), 4, "refused streams never reach the upstream");
}

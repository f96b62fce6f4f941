//! Kept-alive upstream connections: reused across requests (HTTP/1.1 one exchange at a time,
//! HTTP/2 multiplexed on one), replaced without losing a request when the upstream closed them,
//! and never reused while an abandoned answer is still on them.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the scripted upstream treats a connection after answering.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request (keep-alive).
    KeepOpen,
    /// Closes it, without having said `Connection: close` (its idle timeout fired).
    Close,
}

/// What the scripted upstream saw: connections accepted, connections it saw closed by tamis,
/// and the request lines in order.
#[derive(Default)]
struct Log {
    accepted: AtomicUsize,
    closed_by_peer: AtomicUsize,
    requests: Mutex<Vec<String>>,
    /// Each request's path, by the number of the connection it came on (from 0).
    by_connection: Mutex<Vec<(usize, String)>>,
}

/// Reads one request (head and `Content-Length` body); `None` at end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + length);
            return Some(head.lines().next().unwrap_or("").to_string());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An HTTP/1.1 upstream written by hand, to control the connection itself. `/big` starts a
/// 1 MB answer, sends 1 KB of it and stalls; `/slow` answers after 300 ms; anything else gets
/// `ok <path>` at once.
async fn scripted_upstream(after: After) -> (std::net::SocketAddr, Arc<Log>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let connection = l.accepted.fetch_add(1, Ordering::SeqCst);
            let l = l.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(line) = read_request(&mut s, &mut buf).await else {
                        l.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    l.requests.lock().unwrap().push(line.clone());
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    l.by_connection
                        .lock()
                        .unwrap()
                        .push((connection, path.clone()));
                    if path.ends_with("/slow") {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    if path.ends_with("/big") {
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
                        let _ = s.write_all(head.as_bytes()).await;
                        let _ = s.write_all(&[b'x'; 1024]).await;
                        // Stalls; notices when tamis gives the connection up.
                        let mut rest = [0u8; 64];
                        if let Ok(0) | Err(_) = s.read(&mut rest).await {
                            l.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                    let body = format!("ok {path}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if let After::Close = after {
                        // Leaves time for tamis to have pooled the connection first.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, log)
}

fn config(addr: std::net::SocketAddr) -> String {
    config_with(addr, "")
}

fn config_with(addr: std::net::SocketAddr, upstream: &str) -> String {
    format!(
        "{LISTEN}[upstream]\ntimeout = \"2s\"\n{upstream}\n{}",
        route(
            "api",
            "/api/",
            &format!("http://{addr}/api/"),
            "jurisdiction = \"eu\"\npass_through = true\ncache = false\n"
        )
    )
}

async fn post(addr: std::net::SocketAddr, path: &str, body: &'static str) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(addr, req).await
}

#[tokio::test]
async fn requests_in_turn_share_one_upstream_connection() {
    let (addr, log) = scripted_upstream(After::KeepOpen).await;
    let tamis = Tamis::start(&config(addr)).await;
    for i in 0..10 {
        let a = if i % 2 == 0 {
            tamis.get(&format!("/api/get{i}")).await
        } else {
            post(tamis.http, &format!("/api/post{i}"), "{\"n\":1}").await
        };
        assert_eq!(a.status, 200, "request {i}");
        let expected = if i % 2 == 0 {
            format!("ok /api/get{i}")
        } else {
            format!("ok /api/post{i}")
        };
        assert_eq!(a.text(), expected);
    }
    assert_eq!(log.requests.lock().unwrap().len(), 10);
    assert_eq!(
        log.accepted.load(Ordering::SeqCst),
        1,
        "each request opened its own upstream connection"
    );
    tamis.stop().await;
}

/// A kept-alive visitor connection that sends one request at a time.
struct Visitor(TcpStream);

impl Visitor {
    async fn connect(addr: std::net::SocketAddr) -> Visitor {
        Visitor(TcpStream::connect(addr).await.unwrap())
    }

    /// GETs `path` and returns the answer's body.
    async fn get(&mut self, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        self.0.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).await.unwrap();
            assert!(n > 0, "tamis closed the connection");
            got.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return body.to_string();
            }
        }
    }
}

#[tokio::test]
async fn each_worker_reuses_the_upstream_connection_it_opened() {
    let (addr, log) = scripted_upstream(After::KeepOpen).await;
    let two_workers = config(addr).replacen("[server]\n", "[server]\nworkers = 2\n", 1);
    let tamis = Tamis::start(&two_workers).await;
    // Two visitors, one on each worker (a new connection goes to the less busy one).
    let mut a = Visitor::connect(tamis.http).await;
    let mut b = Visitor::connect(tamis.http).await;
    // Both at once on an empty pool, so each worker opens an upstream connection of its own.
    let (sa, sb) = tokio::join!(a.get("/api/a/slow"), b.get("/api/b/slow"));
    assert_eq!(
        (sa.as_str(), sb.as_str()),
        ("ok /api/a/slow", "ok /api/b/slow")
    );
    assert_eq!(log.accepted.load(Ordering::SeqCst), 2);
    // Then in turn: each request can have either idle connection, and takes its worker's.
    for i in 1..=5 {
        assert_eq!(a.get(&format!("/api/a{i}")).await, format!("ok /api/a{i}"));
        assert_eq!(b.get(&format!("/api/b{i}")).await, format!("ok /api/b{i}"));
    }
    assert_eq!(log.accepted.load(Ordering::SeqCst), 2);
    let served = log.by_connection.lock().unwrap().clone();
    let on = |visitor: &str| {
        let mut conns: Vec<usize> = served
            .iter()
            .filter(|(_, p)| p.starts_with(visitor))
            .map(|(c, _)| *c)
            .collect();
        conns.dedup();
        conns
    };
    let (on_a, on_b) = (on("/api/a"), on("/api/b"));
    assert_eq!(on_a.len(), 1, "a's requests crossed workers: {served:?}");
    assert_eq!(on_b.len(), 1, "b's requests crossed workers: {served:?}");
    assert_ne!(on_a, on_b, "{served:?}");
    tamis.stop().await;
}

#[tokio::test]
async fn an_upstream_closing_its_idle_connections_costs_no_request() {
    let (addr, log) = scripted_upstream(After::Close).await;
    let tamis = Tamis::start(&config(addr)).await;
    for i in 0..5 {
        // A POST is never retried: it must not be sent on a connection known to be closed.
        let a = post(tamis.http, &format!("/api/e{i}"), "{}").await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
        assert_eq!(a.text(), format!("ok /api/e{i}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(log.requests.lock().unwrap().len(), 5);
    tamis.stop().await;
}

#[tokio::test]
async fn an_answer_abandoned_midway_never_reaches_the_next_request() {
    let (addr, log) = scripted_upstream(After::KeepOpen).await;
    let tamis = Tamis::start(&config(addr)).await;

    // A visitor starts the big answer, reads its beginning and leaves.
    let mut s = TcpStream::connect(tamis.http).await.unwrap();
    s.write_all(b"GET /api/big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 512 {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "tamis closed before sending the beginning");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    drop(s);

    // The rest of that answer is still on its upstream connection: tamis must close it, and
    // the next request must get its own answer on another one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while log.closed_by_peer.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the abandoned upstream connection was kept open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = tamis.get("/api/small").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "ok /api/small");
    assert_eq!(log.accepted.load(Ordering::SeqCst), 2);
    tamis.stop().await;
}

/// Ten requests at once, twice: every request of a burst in flight together.
async fn two_bursts(tamis: &Tamis, path: &str) {
    for round in 0..2 {
        let burst: Vec<_> = (0..10)
            .map(|i| {
                let addr = tamis.http;
                let path = format!("{path}{round}-{i}");
                tokio::spawn(async move { get(addr, &path, &[]).await })
            })
            .collect();
        for answer in burst {
            let a = answer.await.unwrap();
            assert_eq!((a.status, a.text().as_str()), (200, "slow"));
        }
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_http2_connection() {
    let ca = TestCa::new();
    let up = Upstream::https(&ca, |_| Reply::ok("slow").delay(Duration::from_millis(200))).await;
    let tamis = Tamis::start(&format!(
        "{LISTEN}[upstream]\ntimeout = \"2s\"\nextra_ca_file = {:?}\n\n{}",
        ca.ca_file().display().to_string(),
        route(
            "h2",
            "/h2/",
            &format!("https://127.0.0.1:{}/", up.addr.port()),
            "cache = false\n"
        )
    ))
    .await;
    // The first request opens the connection (TLS, ALPN h2); then bursts multiplex on it.
    assert_eq!(tamis.get("/h2/first").await.status, 200);
    two_bursts(&tamis, "/h2/").await;
    assert!(up.seen().iter().all(|s| s.version == http::Version::HTTP_2));
    assert_eq!(up.max_in_flight(), 10, "the burst was not sent at once");
    assert_eq!(
        up.connections(),
        1,
        "HTTP/2 requests opened connections of their own"
    );
    tamis.stop().await;
}

#[tokio::test]
async fn http1_connections_opened_for_a_burst_serve_the_next_one() {
    let up = Upstream::http(|_| Reply::ok("slow").delay(Duration::from_millis(200))).await;
    let tamis = Tamis::start(&format!(
        "{LISTEN}[upstream]\ntimeout = \"2s\"\n\n{}",
        route("h1", "/h1/", &up.url("/"), "cache = false\n")
    ))
    .await;
    two_bursts(&tamis, "/h1/").await;
    assert_eq!(up.max_in_flight(), 10);
    // HTTP/1.1 carries one exchange at a time: ten connections for the first burst, and the
    // second burst reuses them all.
    assert_eq!(up.connections(), 10);
    tamis.stop().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_keepalive_timeout() {
    let (addr, log) = scripted_upstream(After::KeepOpen).await;
    let tamis = Tamis::start(&config_with(addr, "keepalive_timeout = \"300ms\"\n")).await;
    assert_eq!(tamis.get("/api/a").await.status, 200);
    assert_eq!(tamis.get("/api/b").await.status, 200);
    assert_eq!(log.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(log.closed_by_peer.load(Ordering::SeqCst), 0);
    // Idle from now on: tamis closes it between 300 and 450 ms later.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        log.closed_by_peer.load(Ordering::SeqCst),
        1,
        "the idle connection was kept past keepalive_timeout"
    );
    assert_eq!(tamis.get("/api/c").await.status, 200);
    assert_eq!(log.accepted.load(Ordering::SeqCst), 2);
    tamis.stop().await;
}

#[tokio::test]
async fn keepalive_zero_opens_a_connection_per_request() {
    let (addr, log) = scripted_upstream(After::KeepOpen).await;
    let tamis = Tamis::start(&config_with(addr, "keepalive = 0\n")).await;
    for i in 0..3 {
        assert_eq!(tamis.get(&format!("/api/{i}")).await.status, 200);
    }
    assert_eq!(log.accepted.load(Ordering::SeqCst), 3);
    tamis.stop().await;
}

//! Upstream connections: HTTPS with a private CA and HTTP/2, failures mapped to 502/504 without
//! hurting other routes, and the HTTPS + HTTP/2 listener seen by a real TLS client.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP server that accepts, reads the request, then writes `reply` and keeps the socket
/// open (never answering if `reply` is empty). Counts connections.
async fn raw_upstream(reply: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if !reply.is_empty() {
                    let _ = s.write_all(reply).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    (addr, count)
}

fn with_timeout(routes: &str, extra_upstream: &str) -> String {
    format!("{LISTEN}[upstream]\nconnect_timeout = \"1s\"\ntimeout = \"1s\"\n{extra_upstream}\n{routes}")
}

#[tokio::test]
async fn https_upstream_with_a_private_ca_over_http2() {
    let ca = TestCa::new();
    let up = Upstream::https(&ca, |_| {
        Reply::ok("secure").header("cache-control", "no-store")
    })
    .await;
    let t = Tamis::start(&with_timeout(
        &route(
            "s",
            "/s/",
            &format!("https://127.0.0.1:{}/base/", up.addr.port()),
            "",
        ),
        &format!("extra_ca_file = {:?}", ca.ca_file().display().to_string()),
    ))
    .await;
    let a = t.get_with("/s/x", VISITOR).await;
    assert_eq!((a.status, a.text().as_str()), (200, "secure"));
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2, "h2 negotiated by ALPN");
    assert_eq!(seen.uri, "/base/x");
    assert_no_visitor_data(&seen);
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_refused() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    let up = Upstream::https(&other_ca, |_| Reply::ok("should not be read")).await;
    let t = Tamis::start(&with_timeout(
        &route(
            "s",
            "/s/",
            &format!("https://127.0.0.1:{}/", up.addr.port()),
            "",
        ),
        &format!("extra_ca_file = {:?}", ca.ca_file().display().to_string()),
    ))
    .await;
    let a = t.get("/s/x").await;
    assert_eq!(a.status, 502);
    assert_eq!(
        up.count(),
        0,
        "no request is sent over an unverified connection"
    );
    let m = t.metrics().await;
    assert!(
        m.contains("tamis_upstream_errors_total{result=\"tls\",route=\"s\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn refused_blackholed_stalled_and_garbage_upstreams_fail_fast_and_alone() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (blackhole, blackhole_conns) = raw_upstream(b"").await;
    let (stall, _) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\nabc",
    )
    .await;
    let (garbage, _) = raw_upstream(b"this is not http\r\n\r\n").await;
    let healthy = Upstream::http(|_| Reply::ok("fine").header("cache-control", "no-store")).await;
    let routes = [
        route("refused", "/refused/", &format!("http://{refused}/"), ""),
        route(
            "blackhole",
            "/blackhole/",
            &format!("http://{blackhole}/"),
            "",
        ),
        route("stall", "/stall/", &format!("http://{stall}/"), ""),
        route("garbage", "/garbage/", &format!("http://{garbage}/"), ""),
        route("healthy", "/healthy/", &healthy.url("/"), ""),
    ]
    .concat();
    let t = Tamis::start(&with_timeout(&routes, "")).await;

    assert_eq!(t.get("/refused/x").await.status, 502);
    assert_eq!(t.get("/garbage/x").await.status, 502);

    // Several visitors on a blackholed upstream: one connection, all answered 504.
    let addr = t.http;
    let waiting: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, "/blackhole/x", &[]).await }))
        .collect();
    let stalled = tokio::spawn(async move { get(addr, "/stall/x", &[]).await });
    // Meanwhile another route answers at once.
    let ok = t.get("/healthy/x").await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "fine"));
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the healthy route waited for the broken one"
    );
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 504);
    }
    assert_eq!(
        blackhole_conns.load(Ordering::SeqCst),
        1,
        "concurrent misses were not coalesced"
    );
    assert_eq!(
        stalled.await.unwrap().status,
        504,
        "a body stalled mid-way times out"
    );

    let m = t.metrics().await;
    assert!(
        m.contains("tamis_upstream_errors_total{result=\"timeout\",route=\"blackhole\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tamis_requests_total{route=\"blackhole\",status=\"504\"} 5"),
        "{m}"
    );
}

#[tokio::test]
async fn the_https_listener_speaks_h2_and_http1_to_real_clients() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files(&["localhost", "127.0.0.1"]);
    let up = Upstream::http(|_| Reply::ok("over tls").header("cache-control", "max-age=60")).await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\n{}",
        cert.display().to_string(),
        key.display().to_string(),
        route("cdn", "/cdn/", &up.url("/"), "")
    );
    let t = Tamis::start(&config).await;
    let port = t.https.expect("https listener").port();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der(&ca)).unwrap();
    for (h2, expected) in [
        (true, http::Version::HTTP_2),
        (false, http::Version::HTTP_11),
    ] {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = if h2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let resp = client
            .request(
                http::Request::get(format!("https://localhost:{port}/cdn/a"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.version(), expected);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"over tls");
    }
}

fn ca_der(ca: &TestCa) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()
}

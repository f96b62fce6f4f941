//! Test harness: recording upstreams on loopback (HTTP, and HTTPS with an rcgen test CA), tamis
//! started in-process on ephemeral ports, a real HTTP client, and raw sockets for malformed
//! input. Nothing here contacts a host outside this machine.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tamis::config::Config;
use tamis::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as an upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// Header names, sorted.
    pub fn header_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.headers.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a recording upstream answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    /// Adds a header; `content-type` replaces the default one, others accumulate.
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        if k.eq_ignore_ascii_case("content-type") {
            self.headers
                .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        }
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Removes a header (e.g. the default `content-type`).
    pub fn without(mut self, k: &str) -> Reply {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An in-process upstream that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// (requests being answered now, the most there ever were at once)
    in_flight: Arc<Mutex<(usize, usize)>>,
    /// Connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// A plain HTTP upstream.
    pub async fn http(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::start(handler, None).await
    }

    /// An HTTPS upstream (h2 and http/1.1) with a certificate from `ca` for 127.0.0.1/localhost.
    pub async fn https(
        ca: &TestCa,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Upstream::https_named(ca, &["localhost", "127.0.0.1"], handler).await
    }

    /// An HTTPS upstream whose certificate from `ca` names only `names`.
    pub async fn https_named(
        ca: &TestCa,
        names: &[&str],
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let (cert, key) = ca.issue(names);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Upstream::start(
            handler,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(Mutex::new((0usize, 0usize)));
        let handler: Handler = Arc::new(handler);
        let seen2 = seen.clone();
        let in_flight2 = in_flight.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections2 = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen2.clone();
                let handler = handler.clone();
                let tls = tls.clone();
                let in_flight = in_flight2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let handler = handler.clone();
                        let in_flight = in_flight.clone();
                        async move {
                            {
                                let mut f = in_flight.lock().unwrap();
                                f.0 += 1;
                                f.1 = f.1.max(f.0);
                            }
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let reply = handler(&s);
                            seen.lock().unwrap().push(s);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            in_flight.lock().unwrap().0 -= 1;
                            let mut resp = Response::new(Full::new(reply.body));
                            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    http::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            in_flight,
            connections,
            task,
        }
    }

    /// The connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests it was ever answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A throwaway CA, made by rcgen, that signs certificates for loopback names.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tamis test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        TestCa {
            issuer,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to a file and returns its path.
    pub fn ca_file(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// A leaf certificate and key (PEM) for `names`.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A leaf certificate and key written to files.
    pub fn issue_files(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let c = self.dir.path().join("leaf.pem");
        let k = self.dir.path().join("leaf.key");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
}

/// tamis running in-process on ephemeral ports.
pub struct Tamis {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The config file it runs on (rewrite it, then reload).
    pub config_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// The `[server]` and `[admin]` sections for a test: everything on port 0.
pub const LISTEN: &str = "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"2s\"\ndrain = \"0s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n";

/// A free loopback port (bound, read, released), for a tamis binary started on a config file.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports: all are held until all are read, since a port released
/// and asked for again can come back (a public and an admin listener then collide).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A static route to `upstream` (base URL) under `prefix`, with optional extra lines.
pub fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nkind = \"static\"\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

impl Tamis {
    /// Starts tamis on `config` (TOML text).
    pub async fn start(config: &str) -> Tamis {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tamis.toml");
        std::fs::write(&path, config).unwrap();
        let config_path = path.clone();
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("test config refused: {e}\n{config}"),
        };
        let server = Server::bind(config).await.expect("bind");
        let http = server.http_addr().expect("an http listener");
        let https = server.https_addr();
        let admin = server.admin_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Tamis {
            http,
            https,
            admin,
            config_path,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops it and waits for the graceful shutdown to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        get(self.http, path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        get(self.http, path, headers).await
    }

    /// Rewrites the config file and asks for a reload on the admin listener.
    pub async fn reload(&self, config: &str) -> Answer {
        std::fs::write(&self.config_path, config).unwrap();
        request(
            self.admin.expect("admin listener"),
            Method::POST,
            "/reload",
            &[],
        )
        .await
    }

    /// The admin listener's /metrics text.
    pub async fn metrics(&self) -> String {
        let a = get(self.admin.expect("admin listener"), "/metrics", &[]).await;
        assert_eq!(a.status, 200);
        a.text()
    }
}

impl Drop for Tamis {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A response as a client got it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request over a fresh HTTP/1.1 connection (hyper's client).
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// A GET with the given headers (Host is set to the tamis address unless given).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(addr, Method::GET, path, headers).await
}

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", addr.to_string());
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Writes raw bytes and reads until the server closes (send `Connection: close`).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Visitor headers carrying every kind of personal data tamis must strip.
pub const VISITOR: &[(&str, &str)] = &[
    ("accept", "text/css,*/*;q=0.1"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "fr-FR,fr;q=0.9,en;q=0.8"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36",
    ),
    ("cookie", "session=s3cr3t; _ga=GA1.1.123.456"),
    ("authorization", "Bearer s3cr3t"),
    ("referer", "https://site.example/account/orders?id=42"),
    ("origin", "https://site.example"),
    ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
    ("forwarded", "for=203.0.113.7;proto=https"),
    ("x-real-ip", "203.0.113.7"),
    ("true-client-ip", "203.0.113.7"),
    ("cf-connecting-ip", "203.0.113.7"),
    ("via", "1.1 corporate-proxy"),
    ("sec-ch-ua", "\"Chromium\";v=\"131\""),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("sec-ch-ua-model", "\"Pixel 9\""),
    ("sec-fetch-site", "same-origin"),
    ("x-client-data", "CIa2yQEIpLbJAQipncoBCKijygE="),
    ("if-none-match", "\"supercookie-7f3a\""),
    ("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT"),
    ("dnt", "1"),
    ("x-visitor-id", "u-123456"),
];

/// Values from [`VISITOR`] that identify the visitor; none may reach a non-EU upstream.
pub const VISITOR_SECRETS: &[&str] = &[
    "s3cr3t",
    "203.0.113.7",
    "198.51.100.9",
    "site.example",
    "Chrome/131",
    "fr-FR",
    "Chromium",
    "Pixel",
    "CIa2yQEI",
    "supercookie",
    "2030",
    "u-123456",
    "corporate-proxy",
    "same-origin",
];

/// A visitor at 203.0.113.7 (0xcb00_7107) reaching tamis over IPv6 by way of a mechanism that
/// embeds that IPv4: 6to4, Teredo (the client's address inverted: 0x34ff_8ef8; server
/// 65.54.227.120), NAT64's well-known prefix and the deprecated IPv4-compatible form.
pub const EMBEDDING_203_0_113_7: &[&str] = &[
    "2002:cb00:7107::1",
    "2001:0:4136:e378:8000:63bf:34ff:8ef8",
    "64:ff9b::cb00:7107",
    "::203.0.113.7",
];

/// Every spelling of 203.0.113.7's host part (and of the Teredo server) in those addresses:
/// once truncated to 203.0.113.0, none may remain.
pub const EMBEDDED_203_0_113_7_FORMS: &[&str] = &[
    "203.0.113.7",
    "7107",
    "cb00:7107",
    "8ef8",
    "34ff:8ef8",
    "4136:e378",
    "2002:",
    "64:ff9b",
];

/// Asserts that nothing identifying (from [`VISITOR`], or the client's address) reached the
/// upstream in this request, in any header or in the URL.
pub fn assert_no_visitor_data(seen: &Seen) {
    for (name, value) in &seen.headers {
        let v = String::from_utf8_lossy(value.as_bytes());
        for secret in VISITOR_SECRETS {
            assert!(!v.contains(secret), "{name}: {v} leaks {secret}");
        }
    }
    for secret in VISITOR_SECRETS {
        assert!(
            !seen.uri.contains(secret),
            "URL {} leaks {secret}",
            seen.uri
        );
    }
}

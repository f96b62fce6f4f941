//! The ceiling for `benches/peers.sh`: what hyper itself does on this machine, with none of
//! tamis's work (no routing, no policy, no cache semantics, no metrics). Not a benchmark: a
//! reference server that peers.sh measures beside tamis.
//!
//!   bare LISTEN ORIGIN PATH...
//!
//! fetches each PATH from ORIGIN (http://host:port) once and answers GETs for it from memory
//! with the origin's own headers, like a cache hit; forwards any other request to ORIGIN over
//! one kept-alive hyper connection per visitor connection, like an uncached forward. One Tokio
//! worker, as tamis runs in peers.sh.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;
type Error = Box<dyn std::error::Error + Send + Sync>;

struct Stored {
    headers: HeaderMap,
    body: Bytes,
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` runs every bench target with `--bench`: nothing to do here.
    if args.len() < 2 || args[0].starts_with("--") {
        println!("bare: a reference server for benches/peers.sh, not a benchmark");
        return Ok(());
    }
    let listen: SocketAddr = args[0].parse()?;
    let origin: SocketAddr = args[1]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()?;
    let paths = args[2..].to_vec();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(listen, origin, paths))
}

async fn run(listen: SocketAddr, origin: SocketAddr, paths: Vec<String>) -> Result<(), Error> {
    let mut memory = HashMap::new();
    for path in paths {
        let mut up = connect(origin).await?;
        let req = Request::get(path.as_str())
            .header(http::header::HOST, origin.to_string())
            .body(Full::new(Bytes::new()))?;
        let resp = up.send_request(req).await?;
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        memory.insert(path, Stored { headers, body });
    }
    let memory = Arc::new(memory);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let memory = memory.clone();
        tokio::spawn(async move {
            // This visitor connection's own upstream connection, opened on first use.
            let upstream: Arc<Mutex<Option<client::SendRequest<Incoming>>>> = Arc::default();
            let service = service_fn(move |req: Request<Incoming>| {
                let memory = memory.clone();
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(answer(req, &memory, &upstream, origin).await) }
            });
            let _ = server::Builder::new()
                .writev(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn connect(origin: SocketAddr) -> Result<client::SendRequest<Full<Bytes>>, Error> {
    let stream = TcpStream::connect(origin).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn answer(
    req: Request<Incoming>,
    memory: &HashMap<String, Stored>,
    upstream: &Mutex<Option<client::SendRequest<Incoming>>>,
    origin: SocketAddr,
) -> Response<Body> {
    if let Some(stored) = memory.get(req.uri().path()) {
        let mut resp = Response::new(Full::new(stored.body.clone()).map_err(never).boxed_unsync());
        *resp.headers_mut() = stored.headers.clone();
        return resp;
    }
    match forward(req, upstream, origin).await {
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(_) => {
            let mut resp = Response::new(Full::new(Bytes::new()).map_err(never).boxed_unsync());
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    }
}

async fn forward(
    mut req: Request<Incoming>,
    upstream: &Mutex<Option<client::SendRequest<Incoming>>>,
    origin: SocketAddr,
) -> Result<Response<Incoming>, Error> {
    let mut slot = upstream.lock().await;
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(origin).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *slot = Some(sender);
    }
    let Some(sender) = slot.as_mut() else {
        return Err("no upstream connection".into());
    };
    sender.ready().await?;
    req.headers_mut().remove(http::header::CONNECTION);
    Ok(sender.send_request(req).await?)
}

fn never(e: Infallible) -> hyper::Error {
    match e {}
}

//! Listeners and lifecycle: bind everything first (so a bad address fails before anything is
//! served), serve HTTP/1.1 and HTTP/2 (TLS with ALPN, or cleartext), stop gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::body::ProxyBody;
use crate::config::{Config, Limits};
use crate::conn::close;
use crate::conn::idle;
use crate::conn::workers::Workers;
use crate::proxy;
use crate::reload::Live;
use crate::state::{State, StateError};

/// How long a graceful stop waits for the disk cache's queued writes.
const DISK_FLUSH: Duration = Duration::from_secs(10);

/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // `cause` is in the message, so it is deliberately not also the error's `source`
    // (anyhow would print it twice).
    #[error("cannot listen on {addr} ({what}): {cause}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("cannot start {workers} worker threads: {cause}")]
    Workers {
        workers: usize,
        cause: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// The key store writes to disk and `cluster.store_persistence` says to refuse.
    #[error("{0}")]
    PersistentStore(String),
}

/// Which service a listener runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Public,
    Admin,
}

struct Listener {
    socket: TcpListener,
    /// Whether it speaks TLS; the certificate is the running config's (reloadable).
    tls: bool,
    role: Role,
}

/// A bound, not yet running server.
pub struct Server {
    live: Arc<Live>,
    listeners: Vec<Listener>,
    load: Arc<Load>,
    /// Where public connections run (`server.workers` threads).
    workers: Workers,
}

/// What the public listeners hold at once: connections (a cap, fixed at start) and requests
/// being answered (a bound read from the running config, so a reload changes it).
struct Load {
    connections: Arc<Semaphore>,
    /// Also read by `tamis_requests_in_flight`.
    in_flight: Arc<AtomicUsize>,
}

/// Counts one request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| ServerError::Bind { addr, what, cause })
}

impl Server {
    /// Builds the state and binds every listener; on any error nothing is left listening.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let mut listeners = Vec::new();
        if let Some(addr) = config.server.listen {
            listeners.push(Listener {
                socket: bind(addr, "server.listen").await?,
                tls: false,
                role: Role::Public,
            });
        }
        if let Some(tls) = &config.server.tls {
            listeners.push(Listener {
                socket: bind(tls.listen, "server.tls_listen").await?,
                tls: true,
                role: Role::Public,
            });
        }
        if let Some(admin) = &config.admin {
            listeners.push(Listener {
                socket: bind(admin.listen, "admin.listen").await?,
                tls: false,
                role: Role::Admin,
            });
        }
        let load = Arc::new(Load {
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        });
        let workers = config.server.workers;
        let live = Arc::new(Live::new(State::new(config)?));
        // The key store: refused if it keeps keys on disk, then each route's key fetched
        // before the first request, then kept fresh in the background.
        if let Some(store) = live.load().store.clone() {
            let found = store.persistence().await;
            match crate::store::judge(store.url(), store.persistence_policy(), &found) {
                Err(why) => return Err(ServerError::PersistentStore(why)),
                Ok((line, true)) => tracing::warn!("{line}"),
                Ok((line, false)) => tracing::info!("{line}"),
            }
            live.load().keep_keys().await;
            tokio::spawn(crate::reload::keep_keys(Arc::downgrade(&live)));
        }
        live.load().metrics.count_in_flight(load.in_flight.clone());
        let workers =
            Workers::start(workers).map_err(|cause| ServerError::Workers { workers, cause })?;
        Ok(Server {
            live,
            listeners,
            load,
            workers,
        })
    }

    fn addr(&self, role: Role, tls: bool) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.role == role && l.tls == tls)
            .and_then(|l| l.socket.local_addr().ok())
    }

    /// The plain HTTP listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addr(Role::Public, false)
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addr(Role::Public, true)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.addr(Role::Admin, false)
    }

    /// The running state (for tests and tools).
    pub fn state(&self) -> Arc<State> {
        self.live.load()
    }

    /// The swappable state, to reload it (SIGHUP).
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests
    /// finish for at most `server.shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Every accept loop and every connection holds a receiver: `true` tells them to stop,
        // and the channel closes once the last of them is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        let workers = Arc::new(self.workers);
        tracing::info!(workers = workers.len(), "worker threads started");
        for listener in self.listeners {
            let addr = listener.socket.local_addr().ok();
            tracing::info!(
                addr = ?addr,
                role = ?listener.role,
                tls = listener.tls,
                "listening"
            );
            loops.spawn(accept_loop(
                listener,
                self.live.clone(),
                self.load.clone(),
                workers.clone(),
                stop_rx.clone(),
            ));
        }
        drop(stop_rx);
        shutdown.await;
        // First the drain: still serving, but a load balancer watching /healthz sees 503 and
        // stops sending, so no visitor meets a closed port.
        let drain = self.live.load().config.server.drain;
        if !drain.is_zero() {
            self.live.start_draining();
            tracing::info!(
                ?drain,
                "draining: /healthz answers 503, requests still served"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        // Each connection closes gracefully: HTTP/2 gets a GOAWAY, and requests in flight end.
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        // The running config's: a reload may have changed it.
        let shutdown_timeout = self.live.load().config.server.shutdown_timeout;
        match tokio::time::timeout(shutdown_timeout, stop_tx.closed()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                timeout = ?shutdown_timeout,
                "shutdown timeout reached; closing the remaining connections"
            ),
        }
        // The loops are done, so this is the last reference; stopping the workers drops what
        // still runs on them.
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.stop().await;
        }
        // Objects filled before the stop and still waiting for the disk are written now, so
        // the next start finds them (the queue holds at most 64 MiB: seconds, not minutes).
        if let Some(disk) = self.live.load().cache.disk().cloned() {
            let left = tokio::task::spawn_blocking(move || disk.flush(DISK_FLUSH))
                .await
                .unwrap_or(0);
            if left > 0 {
                tracing::warn!(
                    left,
                    "stopping before the disk cache wrote every queued object"
                );
            }
        }
    }
}

async fn accept_loop(
    listener: Listener,
    live: Arc<Live>,
    load: Arc<Load>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // A public listener takes a connection only when under the cap; the rest wait in the
        // kernel's backlog. The admin listener is private and never starved by visitors.
        let permit = if listener.role == Role::Public {
            tokio::select! {
                _ = stop.changed() => break,
                p = load.connections.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            }
        } else {
            None
        };
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // A new connection gets the certificate of the config running now.
                    let tls = if listener.tls {
                        match live.load().config.server.tls.as_ref() {
                            Some(t) => Some(TlsAcceptor::from(t.server_config.clone())),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    let load = load.clone();
                    let live = live.clone();
                    let stopping = stop.clone();
                    let role = listener.role;
                    if role == Role::Admin {
                        // Private and light: it runs beside the accept loops.
                        tokio::spawn(connection(stream, peer, tls, role, live, load, stopping));
                        continue;
                    }
                    // The socket moves to the worker's event loop when the task starts there.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot hand a connection to a worker");
                            continue;
                        }
                    };
                    workers.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                connection(stream, peer, tls, role, live, load, stopping).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "cannot register a connection"),
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The protocol settings for a new connection, from the running config's limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        // The slowloris guard and the keep-alive wait are `limits.header_read_timeout` in the
        // connection's idle sampler (see `idle::Timeouts`), not hyper's per-request timer.
        .header_read_timeout(None)
        // A head larger than this, or with more fields, is answered 431.
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        // Vectored writes: a cached body goes out from its `Bytes`, not copied into a buffer.
        .writev(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid-reset (CVE-2023-44487) and error-reset floods close the connection.
        .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Answers without touching the routes: too many requests in flight already.
fn overloaded() -> Response<ProxyBody> {
    let mut r = crate::refusal::Refusal::Overloaded.response();
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    role: Role,
    live: Arc<Live>,
    load: Arc<Load>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = live.load().config.limits.clone();
    let activity = Arc::new(idle::Activity::default());
    let counted = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let live = live.clone();
        let load = load.clone();
        // Open while the request is handled (and its body streamed): not idle meanwhile.
        let open = counted.begin();
        if req.version() == http::Version::HTTP_2 {
            counted.http2();
        }
        async move {
            let mut response: Response<ProxyBody> = match role {
                Role::Public => {
                    // Each request keeps the state current when it arrived, to its end.
                    let state = live.load();
                    let n = load.in_flight.fetch_add(1, Ordering::Relaxed);
                    let _counted = InFlight(&load.in_flight);
                    if n >= state.config.limits.max_requests_in_flight {
                        state.metrics.shed();
                        overloaded()
                    } else {
                        proxy::handle(state, req, peer).await
                    }
                }
                Role::Admin => admin::handle(&live, req).await,
            };
            // A complete body leaves the request here; a streamed one keeps it open.
            if let Either::Right(streamed) = response.body_mut() {
                streamed.hold(open);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let builder = builder(&limits);
    let stream = idle::IdleIo::new(stream, activity.clone());
    // Borrowed: `stop` lives to the end of this function, as `Server::run` waits for it.
    let timeouts = idle::Timeouts {
        idle: limits.idle_timeout,
        head: limits.header_read_timeout,
    };
    let closing = close::closing(&mut stop, &activity, timeouts);
    // Once closed for being idle, a connection has a while to finish: nothing was moving, so
    // only a request racing the GOAWAY (or a head never finished) can still be under way.
    let grace = || timeouts.grace(&activity);
    let result = match tls {
        None => {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            close::drive(conn, |c| c.graceful_shutdown(), closing, grace).await
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                activity.http2();
            }
            let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
            close::drive(conn, |c| c.graceful_shutdown(), closing, grace).await
        }
    };
    if let Some(Err(e)) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

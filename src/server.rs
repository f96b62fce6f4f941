//! Listeners and lifecycle: bind everything first (so a bad address fails before anything is
//! served), serve HTTP/1.1 and HTTP/2 (TLS with ALPN, or cleartext), stop gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::proxy::{self, State, StateError};
use crate::reload::Live;

/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a complete request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error(transparent)]
    State(#[from] StateError),
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
        let live = Arc::new(Live::new(State::new(config)?));
        Ok(Server { live, listeners })
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
        // Shared by the accept loops, which each hand a watcher to every connection; once the
        // loops are done the last reference comes back here to wait for the connections.
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = JoinSet::new();
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
                graceful.clone(),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop_tx.send(true);
        while loops.join_next().await.is_some() {}
        let Ok(graceful) = Arc::try_unwrap(graceful) else {
            tracing::warn!("connections still referenced; not waiting for them");
            return;
        };
        // The running config's: a reload may have changed it.
        let shutdown_timeout = self.live.load().config.server.shutdown_timeout;
        match tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                timeout = ?shutdown_timeout,
                "shutdown timeout reached; closing the remaining connections"
            ),
        }
    }
}

async fn accept_loop(
    listener: Listener,
    live: Arc<Live>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
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
                    tokio::spawn(connection(
                        stream,
                        peer,
                        tls,
                        listener.role,
                        live.clone(),
                        graceful.watcher(),
                    ));
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

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Vectored writes: a cached body goes out from its `Bytes`, not copied into a buffer.
        .writev(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    role: Role,
    live: Arc<Live>,
    watcher: Watcher,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let live = live.clone();
        async move {
            let response: Response<ProxyBody> = match role {
                // Each request keeps the state current when it arrived, to its end.
                Role::Public => proxy::handle(live.load(), req, peer).await,
                Role::Admin => admin::handle(&live, req).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    let builder = builder();
    let result = match tls {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(stream), service))
                .await
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
            watcher
                .watch(builder.serve_connection(TokioIo::new(tls_stream), service))
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

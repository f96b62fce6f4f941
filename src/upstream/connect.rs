//! Opening a connection to an upstream: DNS, TCP (each address in turn, within the connect
//! timeout), TLS with ALPN h2 / http/1.1 for `https`, then the hyper handshake for the
//! protocol the upstream chose. The connection's I/O runs in its own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::pool::{Key, Sender, H1};
use super::{error_chain, is_tls, UpstreamError};

/// Opens new upstream connections.
pub(super) struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    /// A connector trusting `tls`'s roots, offering h2 and http/1.1 over TLS.
    pub(super) fn new(mut tls: rustls::ClientConfig, connect_timeout: Duration) -> Connector {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Connector {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
        }
    }

    /// A new connection to `key`, ready to send on.
    pub(super) async fn connect(&self, key: &Key) -> Result<Sender, UpstreamError> {
        let connect_timeout = self.connect_timeout;
        let tcp = tokio::time::timeout(connect_timeout, tcp(key))
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!("no connection within {connect_timeout:?}"))
            })??;
        if !key.https {
            return handshake_h1(TokioIo::new(tcp)).await;
        }
        let name = ServerName::try_from(key.host.clone())
            .map_err(|e| UpstreamError::Connect(format!("{}: {e}", key.host)))?;
        let tls = match tokio::time::timeout(connect_timeout, self.tls.connect(name, tcp)).await {
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "no TLS handshake within {connect_timeout:?}"
                )))
            }
            Ok(Err(e)) if is_tls(&e) => return Err(UpstreamError::Tls(error_chain(&e))),
            Ok(Err(e)) => return Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Ok(s)) => s,
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            handshake_h2(io).await
        } else {
            handshake_h1(io).await
        }
    }
}

/// A TCP connection to the first of the host's addresses that answers.
async fn tcp(key: &Key) -> Result<TcpStream, UpstreamError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((key.host.as_str(), key.port))
        .await
        .map_err(|e| UpstreamError::Connect(format!("{}: {e}", key.host)))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Requests are written whole: don't let Nagle hold back their last segment.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(UpstreamError::Connect(last.unwrap_or_else(|| {
        format!("{}: no address found", key.host)
    })))
}

async fn handshake_h1<I>(io: I) -> Result<Sender, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
    drive(conn);
    Ok(Sender::H1(H1::here(sender)))
}

async fn handshake_h2<I>(io: I) -> Result<Sender, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
    drive(conn);
    Ok(Sender::H2(sender))
}

/// Runs a connection's I/O in its own task until it closes.
fn drive(conn: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %error_chain(&e), "upstream connection ended");
        }
    });
}

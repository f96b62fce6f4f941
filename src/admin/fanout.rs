//! Admin actions that reach every replica (`[cluster] peers`): a `POST /reload` or
//! `/cache/purge` on one replica is done there and relayed to every peer's admin listener with
//! the admin token, and the answer says, replica by replica, what each did or why it could not
//! be reached (as Varnish's broadcaster relays purges).
//!
//! Each running server has an instance id ([`crate::reload::Live::instance`]). A relayed
//! request carries [`HEADER`] with the sender's: a replica receiving it
//! acts without relaying again (no loops), and one receiving its own id (a peer list or DNS
//! name naming the sender itself) answers that it is the sender, doing nothing twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::secret::Secret;

/// The header of a relayed request: the sending replica's instance id.
pub const HEADER: &str = "x-tamis-fanout";

/// The header every admin answer carries: this replica's instance id (to recognise itself).
pub const INSTANCE_HEADER: &str = "x-tamis-instance";

/// How long a peer may take to connect and answer a relayed action.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long `/status` waits for a peer's `/healthz`.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What one replica answered a relayed action.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Its status and answer.
    Answered(StatusCode, Bytes),
    /// The replica is this one.
    ThisReplica,
    /// Not reached: why.
    Failed(String),
}

/// Every address the peers name (a host name stands for all it resolves to), each with the
/// peer entry it came from; a name that does not resolve is returned as a failure.
async fn resolve(peers: &[String]) -> (Vec<SocketAddr>, Vec<(String, String)>) {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut failed = Vec::new();
    for peer in peers {
        match tokio::time::timeout(PROBE_TIMEOUT * 2, tokio::net::lookup_host(peer.as_str())).await
        {
            Ok(Ok(found)) => {
                for a in found {
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            Ok(Err(e)) => failed.push((peer.clone(), format!("does not resolve: {e}"))),
            Err(_) => failed.push((peer.clone(), "does not resolve in time".into())),
        }
    }
    (addrs, failed)
}

/// One request to one replica's admin listener.
async fn call(
    instance: &str,
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
    token: Option<&Secret>,
    timeout: Duration,
) -> Reply {
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, addr.to_string())
            .header(HEADER, instance);
        if let Some(t) = token {
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(t.expose());
            let mut value = http::HeaderValue::from_bytes(&value)
                .map_err(|_| "the admin token is not a header value".to_owned())?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let this = resp
            .headers()
            .get(INSTANCE_HEADER)
            .is_some_and(|v| v.as_bytes() == instance.as_bytes());
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP: {e}"))?
            .to_bytes();
        Ok::<_, String>(if this {
            Reply::ThisReplica
        } else {
            Reply::Answered(status, body)
        })
    };
    match tokio::time::timeout(timeout, go).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Reply::Failed(e),
        Err(_) => Reply::Failed(format!("no answer within {timeout:?}")),
    }
}

/// Relays `POST path_and_query` to every peer, at once, and returns each one's reply by
/// address (a name that does not resolve under its own name).
pub async fn relay(
    instance: &str,
    peers: &[String],
    path_and_query: &str,
    token: Option<&Secret>,
) -> BTreeMap<String, Reply> {
    let (addrs, failed) = resolve(peers).await;
    let calls = addrs.iter().map(|a| async move {
        (
            a.to_string(),
            call(instance, *a, Method::POST, path_and_query, token, TIMEOUT).await,
        )
    });
    let mut out: BTreeMap<String, Reply> = futures_join(calls).await.into_iter().collect();
    for (peer, why) in failed {
        out.insert(peer, Reply::Failed(why));
    }
    out
}

/// Runs futures concurrently and collects their outputs in order (a handful of peers: one
/// task each).
async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    // Polled together: each future is mostly waiting on its own socket.
    let mut pending: Vec<Option<_>> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<T>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// One replica as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub address: String,
    pub reached: bool,
    /// The replica answering this `/status`.
    pub this: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which replicas answer `/healthz` now (for `/status`).
pub async fn reach(instance: &str, peers: &[String]) -> Vec<Peer> {
    let (addrs, failed) = resolve(peers).await;
    let calls = addrs.iter().map(|a| async move {
        (
            a.to_string(),
            call(instance, *a, Method::GET, "/healthz", None, PROBE_TIMEOUT).await,
        )
    });
    let mut out: Vec<Peer> = futures_join(calls)
        .await
        .into_iter()
        .map(|(address, reply)| match reply {
            Reply::ThisReplica => Peer {
                address,
                reached: true,
                this: true,
                error: None,
            },
            Reply::Answered(s, _) => Peer {
                address,
                reached: s.is_success(),
                this: false,
                error: (!s.is_success()).then(|| format!("answered {s}")),
            },
            Reply::Failed(e) => Peer {
                address,
                reached: false,
                this: false,
                error: Some(e),
            },
        })
        .collect();
    out.extend(failed.into_iter().map(|(address, e)| Peer {
        address,
        reached: false,
        this: false,
        error: Some(e),
    }));
    out
}

/// The combined answer: this replica's own under the address it is known by among the peers
/// (or `this` when none names it), every other's by address, the unreached named in `failed`.
/// The status is this replica's when its own action failed, else 502 when a peer failed,
/// else 200.
pub fn combine(
    local: (StatusCode, Bytes),
    replies: BTreeMap<String, Reply>,
) -> (StatusCode, serde_json::Value) {
    let as_json = |body: &Bytes| {
        serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).trim().to_owned())
        })
    };
    let entry = |status: StatusCode, body: &Bytes| serde_json::json!({"status": status.as_u16(), "answer": as_json(body)});
    let mut replicas = serde_json::Map::new();
    let mut failed = Vec::new();
    let mut named_self = false;
    let mut peer_failed = false;
    for (addr, reply) in &replies {
        let value = match reply {
            Reply::ThisReplica => {
                named_self = true;
                entry(local.0, &local.1)
            }
            Reply::Answered(status, body) => {
                if !status.is_success() {
                    peer_failed = true;
                    failed.push(addr.clone());
                }
                entry(*status, body)
            }
            Reply::Failed(why) => {
                peer_failed = true;
                failed.push(addr.clone());
                serde_json::json!({"error": why})
            }
        };
        replicas.insert(addr.clone(), value);
    }
    if !named_self {
        replicas.insert("this".into(), entry(local.0, &local.1));
    }
    let status = if !local.0.is_success() {
        local.0
    } else if peer_failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    (
        status,
        serde_json::json!({"replicas": replicas, "failed": failed}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_each_replica_and_every_failure() {
        let mut replies = BTreeMap::new();
        replies.insert("10.0.0.1:8081".to_owned(), Reply::ThisReplica);
        replies.insert(
            "10.0.0.2:8081".to_owned(),
            Reply::Answered(StatusCode::OK, Bytes::from_static(b"{\"purged\":3}\n")),
        );
        replies.insert(
            "10.0.0.3:8081".to_owned(),
            Reply::Failed("cannot connect: refused".into()),
        );
        let (status, v) = combine(
            (StatusCode::OK, Bytes::from_static(b"{\"purged\":2}")),
            replies,
        );
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(v["replicas"]["10.0.0.1:8081"]["answer"]["purged"], 2);
        assert_eq!(v["replicas"]["10.0.0.2:8081"]["answer"]["purged"], 3);
        assert!(v["replicas"]["10.0.0.3:8081"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"));
        assert_eq!(v["failed"], serde_json::json!(["10.0.0.3:8081"]));
        assert!(v["replicas"].get("this").is_none());
        // Not among the peers: under "this"; a local failure keeps its status.
        let (status, v) = combine(
            (StatusCode::CONFLICT, Bytes::from_static(b"{}")),
            BTreeMap::new(),
        );
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(v["replicas"]["this"]["status"], 409);
    }
}

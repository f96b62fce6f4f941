//! The admin listener: Prometheus metrics, a health check, cache purge and config reload. Never
//! exposed on the public listener. Reload and purge are POST only, refused to a browser acting
//! for another site (CSRF, DNS rebinding), and need the bearer token when one is set.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub mod fanout;
pub mod status;

use crate::body::error_response;
use crate::body::{self, ProxyBody};
use crate::reload::Live;
use crate::secret::Secret;
use crate::state::State;

/// The endpoints that change state, with the usage a wrong method is told. They answer POST
/// only, so a GET or HEAD (a link, a prefetch, a crawler) never changes anything.
const STATE_CHANGING: &[(&str, &str)] = &[
    ("/reload", "POST /reload\n"),
    (
        "/cache/purge",
        "POST /cache/purge?route=NAME[&path=/p | &prefix=/p/]\n",
    ),
];

/// Answers one admin request.
pub async fn handle(live: &Live, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path();
    if let Some((path, usage)) = STATE_CHANGING.iter().find(|(p, _)| *p == path) {
        if req.method() != Method::POST {
            return method_not_allowed("POST", usage);
        }
        let state = live.load();
        let token = state.config.admin.as_ref().and_then(|a| a.token.as_ref());
        if let Err(why) = not_from_another_site(&req, token.is_some()) {
            return forbidden(why);
        }
        if !authorised(token, &req) {
            return unauthorised();
        }
        let relayed = req.headers().get(fanout::HEADER).cloned();
        if relayed
            .as_ref()
            .is_some_and(|v| v.as_bytes() == live.instance().as_bytes())
        {
            // Our own relay, reaching us through the peer list: done already.
            return with_instance(
                live,
                text(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from_static(b"{\"this\":true}\n"),
                ),
            );
        }
        let local = match *path {
            "/reload" => reload(live).await,
            _ => purge(&state, req.uri().query().unwrap_or("")).await,
        };
        let peers = state
            .config
            .cluster
            .as_ref()
            .map(|c| c.peers.clone())
            .unwrap_or_default();
        // A relayed request is not relayed again; without peers there is no one to tell.
        if relayed.is_some() || peers.is_empty() {
            return with_instance(live, local);
        }
        let status = local.status();
        let body = match local.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or(*path, |p| p.as_str())
            .to_owned();
        let replies = fanout::relay(live.instance(), &peers, &path_and_query, token).await;
        let (status, answer) = fanout::combine((status, body), replies);
        for (replica, reply) in answer["replicas"].as_object().into_iter().flatten() {
            if reply.get("error").is_some() {
                tracing::warn!(replica = %replica, error = %reply["error"], action = %path, "admin action not relayed to a replica");
            }
        }
        return with_instance(
            live,
            text(
                status,
                "application/json",
                Bytes::from(answer.to_string() + "\n"),
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD", "method not allowed\n");
    }
    let state = &*live.load();
    match req.uri().path() {
        "/status" => {
            let status =
                crate::admin::status::status(state, live.draining(), live.instance()).await;
            if req.uri().query() == Some("format=json") {
                text(
                    StatusCode::OK,
                    "application/json",
                    Bytes::from(serde_json::to_vec(&status).unwrap_or_default()),
                )
            } else {
                text(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    Bytes::from(crate::admin::status::html(&status)),
                )
            }
        }
        "/healthz" if live.draining() => with_instance(
            live,
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"draining\n"),
            ),
        ),
        "/healthz" => with_instance(
            live,
            text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"ok\n"),
            ),
        ),
        "/metrics" => {
            let (bytes, entries) = state.cache.size().await;
            state.metrics.set_cache_size(bytes, entries);
            let disk = state.cache.disk().map(|d| d.stats());
            state.metrics.set_disk(disk.as_ref());
            state.metrics.set_breakers(
                state
                    .router
                    .routes()
                    .iter()
                    .map(|r| (r.config.name.as_str(), r.breaker.is_open())),
            );
            match state.metrics.render() {
                Ok(out) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(out),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot render metrics");
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
                }
            }
        }
        _ => error_response(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Marks an admin answer with this replica's instance id, so a relay reaching its own sender
/// knows it.
fn with_instance(live: &Live, mut r: Response<ProxyBody>) -> Response<ProxyBody> {
    if let Ok(v) = HeaderValue::from_str(live.instance()) {
        r.headers_mut().insert(fanout::INSTANCE_HEADER, v);
    }
    r
}

fn text(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn method_not_allowed(allow: &'static str, usage: &'static str) -> Response<ProxyBody> {
    let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, usage);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Why a state-changing request is refused as coming from a browser on another site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum CrossSite {
    /// `Sec-Fetch-Site` other than `same-origin` or `none`.
    #[error("admin: refused, the request comes from another site (Sec-Fetch-Site)\n")]
    FetchSite,
    /// An `Origin` other than this listener's own (`null` included).
    #[error("admin: refused, the request comes from another origin (Origin)\n")]
    Origin,
    /// No token, and the listener named by something else than an IP address or `localhost`.
    #[error(
        "admin: refused, name this listener by IP address or localhost, or set admin.token_file\n"
    )]
    HostName,
}

/// Refuses what a browser sends when a page on another site asks it to: without a token,
/// any website could make a visitor's browser POST to `127.0.0.1:8081/reload` (CSRF), and
/// one whose name the attacker re-points at this address (DNS rebinding) is even same-origin,
/// so then the listener must be named by IP address or `localhost`. Scripts and curl send
/// neither `Origin` nor `Sec-Fetch-Site` and pass. Checked with a token too: a browser on
/// another site never has a reason to change state here.
fn not_from_another_site<B>(req: &Request<B>, token: bool) -> Result<(), CrossSite> {
    let headers = req.headers();
    // `same-site` is refused too: a page on another port of this host is same-site.
    let fetch_site_ok = |v: &HeaderValue| matches!(v.as_bytes(), b"same-origin" | b"none");
    if !headers.get_all("sec-fetch-site").iter().all(fetch_site_ok) {
        return Err(CrossSite::FetchSite);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let own_origin = |origin: &HeaderValue| {
        let origin = origin.as_bytes();
        host.is_some_and(|host| {
            origin
                .strip_prefix(b"http://")
                .is_some_and(|o| o.eq_ignore_ascii_case(host.as_bytes()))
        })
    };
    if !headers.get_all(header::ORIGIN).iter().all(own_origin) {
        return Err(CrossSite::Origin);
    }
    if !token && !host.is_none_or(names_this_machine) {
        return Err(CrossSite::HostName);
    }
    Ok(())
}

/// Whether a Host names its listener by IP address or as `localhost`: no name an attacker's
/// DNS could point here.
fn names_this_machine(host: &str) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    // An authority's host keeps an IPv6 address's brackets; a Host has no user part.
    let name = authority.host();
    !host.contains('@')
        && (name.eq_ignore_ascii_case("localhost")
            || name.parse::<std::net::Ipv4Addr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok()))
}

fn forbidden(why: CrossSite) -> Response<ProxyBody> {
    text(
        StatusCode::FORBIDDEN,
        "text/plain; charset=utf-8",
        Bytes::from(why.to_string()),
    )
}

/// Whether a request may change things (reload, purge): always, unless `admin.token_file` is
/// set; then only with `Authorization: Bearer <token>`. Reading (metrics, health) stays open
/// for scrapers and probes.
fn authorised<B>(token: Option<&Secret>, req: &Request<B>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    // In constant time: the answer's timing must not reveal a prefix.
    token.matches(given)
}

fn unauthorised() -> Response<ProxyBody> {
    let mut r = error_response(StatusCode::UNAUTHORIZED, "admin token required\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `POST /reload`: 200 with the new config's hash, or 409 with why the running config stays.
async fn reload(live: &Live) -> Response<ProxyBody> {
    match live.reload().await {
        Ok(r) => text(
            StatusCode::OK,
            "application/json",
            Bytes::from(
                serde_json::json!({
                    "reloaded": !r.unchanged,
                    "hash": r.hash,
                    "cache_entries_dropped": r.dropped,
                    "pseudonym_keys": r.keys.iter().map(|(route, fate)| {
                        let said = match fate {
                            crate::routes::KeyFate::Kept => "kept".to_owned(),
                            crate::routes::KeyFate::New(why) => format!("reset: {why}"),
                        };
                        (route.clone(), serde_json::Value::String(said))
                    }).collect::<serde_json::Map<_, _>>(),
                })
                .to_string()
                    + "\n",
            ),
        ),
        Err(e) => {
            let running = live.load().config.hash.clone();
            text(
                StatusCode::CONFLICT,
                "application/json",
                Bytes::from(
                    serde_json::json!({
                        "reloaded": false,
                        "running": running,
                        "error": e.to_string(),
                    })
                    .to_string()
                        + "\n",
                ),
            )
        }
    }
}

/// `POST /cache/purge?route=NAME&path=/visitor/path` (or `&prefix=/visitor/prefix/`): drops
/// the stored objects of one route, by the first-party URL the visitor uses.
async fn purge(state: &State, query: &str) -> Response<ProxyBody> {
    let mut route_name = None;
    let mut target = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("route", v)) => route_name = Some(v),
            Some(("path", v)) => target = Some((v, false)),
            Some(("prefix", v)) => target = Some((v, true)),
            _ => {}
        }
    }
    let Some(route_name) = route_name else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "give route=, and path= or prefix= (or neither: the whole route)\n",
        );
    };
    // A fonts route has two parts (CSS, files): the one whose prefix holds the path.
    let named: Vec<_> = state
        .router
        .routes()
        .iter()
        .filter(|r| r.config.name == route_name)
        .collect();
    if named.is_empty() {
        return error_response(StatusCode::NOT_FOUND, "no such route\n");
    }
    let Some((path, prefix)) = target else {
        // The whole route, every part of it.
        let mut purged = 0;
        for r in named {
            purged += state.cache.purge_route(r.cache_id).await;
        }
        tracing::info!(route = route_name, purged, "cache purge: whole route");
        return purged_answer(purged);
    };
    let route = named
        .into_iter()
        .filter(|r| path.starts_with(r.prefix.as_str()))
        .max_by_key(|r| r.prefix.len());
    // The same confinement as for visitors maps the path to the upstream's; a tile path is
    // purged by its directory, so it goes through confinement too.
    let upstream_path = route.and_then(|route| {
        let rest = path.strip_prefix(route.prefix.as_str())?;
        let uri = crate::routes::confine::upstream_uri(&route.upstream, rest, None).ok()?;
        Some((route, uri.path().to_owned()))
    });
    let Some((route, upstream_path)) = upstream_path else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "path is not under the route's prefix\n",
        );
    };
    let purged = state
        .cache
        .purge(route.cache_id, &upstream_path, prefix)
        .await;
    tracing::info!(route = route_name, path, prefix, purged, "cache purge");
    purged_answer(purged)
}

fn purged_answer(purged: usize) -> Response<ProxyBody> {
    text(
        StatusCode::OK,
        "application/json",
        Bytes::from(format!("{{\"purged\":{purged}}}\n")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request headers as `name: value`, whether a token is set, the verdict.
    type Case = (&'static [&'static str], bool, Result<(), CrossSite>);

    #[test]
    fn only_scripts_and_the_listeners_own_origin_may_change_state() {
        use CrossSite::*;
        #[rustfmt::skip] // One case a line: a table.
        let cases: &[Case] = &[
            (&[], false, Ok(())),
            (&["host: localhost:8081"], false, Ok(())),
            (&["host: [::1]:8081"], false, Ok(())),
            (&["sec-fetch-site: none"], false, Ok(())),
            (&["origin: http://127.0.0.1:8081", "sec-fetch-site: same-origin"], false, Ok(())),
            (&["sec-fetch-site: cross-site"], false, Err(FetchSite)),
            // Another port of this host is the same site.
            (&["sec-fetch-site: same-site"], true, Err(FetchSite)),
            (&["sec-fetch-site: Same-Origin"], false, Err(FetchSite)),
            (&["origin: https://evil.example"], false, Err(Origin)),
            (&["origin: https://evil.example"], true, Err(Origin)),
            (&["origin: null"], false, Err(Origin)),
            (&["origin: https://127.0.0.1:8081"], false, Err(Origin)),
            (&["origin: http://127.0.0.1:8080"], false, Err(Origin)),
            // DNS rebinding: any name, even one that spells an address.
            (&["host: rebind.example:8081"], false, Err(HostName)),
            (&["host: 127.0.0.1.nip.io:8081"], false, Err(HostName)),
            (&["host: u@127.0.0.1:8081"], false, Err(HostName)),
            (&["host: localhost.:8081"], false, Err(HostName)),
            // A token holder may name the listener as it likes.
            (&["host: tamis-admin.internal:8081"], true, Ok(())),
        ];
        for (headers, token, verdict) in cases {
            let mut req = Request::post("/reload");
            if !headers.iter().any(|h| h.starts_with("host:")) {
                req = req.header("host", "127.0.0.1:8081");
            }
            for h in *headers {
                let (name, value) = h.split_once(": ").unwrap();
                req = req.header(name, value);
            }
            let req = req.body(()).unwrap();
            assert_eq!(
                not_from_another_site(&req, *token),
                *verdict,
                "{headers:?}, token {token}"
            );
        }
    }
}

//! Whether an upstream's answer may be stored and for how long (RFC 9111 §3, through
//! `http-cache-semantics`), or why not.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderName, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::freshness::{self, Lifetimes, Rules};
use super::key::{vary_names, VaryRefused};

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// RFC 9111 forbids it (no-store, private, status, method…).
    Forbidden,
    /// No freshness and nothing to revalidate with.
    NoFreshness,
    /// The upstream tried to set a cookie on a route whose visitors' cookies reach it: the
    /// answer may have been meant for one client.
    SetCookie,
    /// `Vary: *`, or a Vary on a header tamis does not forward.
    Vary,
    /// Larger than `max_object_bytes`.
    TooLarge,
    /// The route does not cache.
    Disabled,
}

impl NotStored {
    /// Whether the refusal says something lasting about the URL, so its next requests should
    /// not queue behind one fetch (hit-for-miss): not for an error a retry may not repeat
    /// (5xx, 408, 429), where coalescing is what spares a struggling upstream.
    pub fn lasts(self, status: StatusCode) -> bool {
        let transient = status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS;
        self != NotStored::Disabled && !transient
    }

    /// A short token for logs and `Cache-Status`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Forbidden => "forbidden",
            NotStored::NoFreshness => "no-freshness",
            NotStored::SetCookie => "set-cookie",
            NotStored::Vary => "vary",
            NotStored::TooLarge => "too-large",
            NotStored::Disabled => "disabled",
        }
    }
}

/// What the cache decided about a response: its lifetimes and the headers it varies on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storable {
    pub lifetimes: Lifetimes,
    pub vary: Vec<HeaderName>,
}

/// Decides whether a response to `request` (as sent upstream) may be stored, and for how long.
/// `upstream_headers` are the response headers before scrubbing.
pub fn storability(
    request: &http::request::Parts,
    status: StatusCode,
    upstream_headers: &HeaderMap,
    now: SystemTime,
    rules: &Rules,
    varyable: impl Fn(&HeaderName) -> bool,
) -> Result<Storable, NotStored> {
    // Set-Cookie does not stop a shared cache from storing (RFC 9111 §3 lists what does; a
    // server that minds says `no-cache="set-cookie"` or `private`, §5.2.2.4, §5.2.2.7). It
    // is stripped from every answer anyway. Where the visitor's Cookie and Authorization never
    // reach the upstream, no answer can be personalised, so it is stored; where they do
    // (pass-through), a cookie-setting answer may be one visitor's, so, as nginx and Varnish
    // do by default, it is not.
    if !rules.cookie_free && upstream_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    // CDN-Cache-Control, when valid, speaks for tamis instead of Cache-Control and Expires.
    let targeted = freshness::targeted(upstream_headers);
    let upstream_headers = &*targeted;
    let vary = vary_names(upstream_headers, varyable).map_err(|VaryRefused| NotStored::Vary)?;
    // Any final status may be stored when the response states its lifetime (RFC 9111 §3);
    // the crate only knows a fixed list, so others are judged as a 200 would be. Partial and
    // 304 responses are never stored whole.
    let explicit = freshness::Directives::parse(upstream_headers).explicit(upstream_headers);
    let judged = match status.as_u16() {
        206 | 304 => status,
        200..=599 if explicit => StatusCode::OK,
        _ => status,
    };
    let mut response = http::Response::new(());
    *response.status_mut() = judged;
    *response.headers_mut() = upstream_headers.clone();
    let options = CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        immutable_min_time_to_live: Duration::ZERO,
        ignore_cargo_cult: false,
    };
    let policy = CachePolicy::new_options(request, &response, now, options);
    let negative = matches!(status.as_u16(), 404 | 410) && !rules.negative_ttl.is_zero();
    let storable =
        policy.is_storable() || (negative && storable_but_for_lifetime(upstream_headers));
    if !storable {
        return Err(NotStored::Forbidden);
    }
    let lifetimes = freshness::lifetimes(status, upstream_headers, now, rules);
    let revalidatable = upstream_headers.contains_key(header::ETAG)
        || upstream_headers.contains_key(header::LAST_MODIFIED);
    let stale_use =
        !lifetimes.stale_while_revalidate.is_zero() || !lifetimes.stale_if_error.is_zero();
    if lifetimes.fresh_for.is_zero() && !revalidatable && !stale_use {
        return Err(NotStored::NoFreshness);
    }
    Ok(Storable { lifetimes, vary })
}

/// A 404/410 with no lifetime is refused by `is_storable` only for lacking one; negative caching
/// gives it one, unless something else forbids storing.
fn storable_but_for_lifetime(headers: &HeaderMap) -> bool {
    let d = freshness::Directives::parse(headers);
    !d.no_store && !d.private
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn get(uri: &str) -> http::request::Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn only_accept(n: &HeaderName) -> bool {
        n == header::ACCEPT
    }

    fn decide(status: u16, pairs: &[(&'static str, &'static str)]) -> Result<Storable, NotStored> {
        storability(
            &get("https://cdn.example/a"),
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            SystemTime::now(),
            &Rules::default(),
            only_accept,
        )
    }

    #[test]
    fn explicit_lifetimes_are_stored() {
        let s = decide(200, &[("cache-control", "public, max-age=60")]).unwrap();
        assert_eq!(s.lifetimes.fresh_for, Duration::from_secs(60));
        assert!(decide(404, &[("cache-control", "max-age=30")]).is_ok());
        let s = decide(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept, accept-encoding"),
            ],
        )
        .unwrap();
        assert_eq!(s.vary, vec![header::ACCEPT, header::ACCEPT_ENCODING]);
        let s = decide(
            200,
            &[("cache-control", "max-age=60"), ("content-encoding", "br")],
        )
        .unwrap();
        assert_eq!(
            s.vary,
            vec![header::ACCEPT_ENCODING],
            "an encoded body varies on Accept-Encoding"
        );
        assert!(decide(200, &[("cache-control", "max-age=60")])
            .unwrap()
            .vary
            .is_empty());
        assert!(
            decide(503, &[("cache-control", "max-age=5")]).is_ok(),
            "explicit lifetime: any final status"
        );
        assert!(decide(599, &[("cache-control", "max-age=5")]).is_ok());
        assert_eq!(decide(500, &[]), Err(NotStored::Forbidden));
    }

    #[test]
    fn what_must_not_be_stored_is_not() {
        assert_eq!(
            decide(200, &[("cache-control", "no-store, max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[("cache-control", "private, max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[]),
            Err(NotStored::NoFreshness),
            "no heuristic freshness by default"
        );
        assert_eq!(
            decide(206, &[("cache-control", "max-age=60")]),
            Err(NotStored::Forbidden)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=0")]),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            decide(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStored::Vary)
        );
        assert_eq!(
            decide(200, &[("cache-control", "max-age=60"), ("vary", "Cookie")]),
            Err(NotStored::Vary)
        );
    }

    #[test]
    fn a_cookie_setting_answer_is_stored_where_no_visitor_cookie_reaches_the_upstream() {
        let pairs = [("cache-control", "max-age=60"), ("set-cookie", "a=b")];
        let cookie_free = Rules {
            cookie_free: true,
            ..Rules::default()
        };
        let decided = storability(
            &get("https://cdn.example/a"),
            StatusCode::OK,
            &headers(&pairs),
            SystemTime::now(),
            &cookie_free,
            only_accept,
        );
        assert_eq!(
            decided.map(|s| s.lifetimes.fresh_for),
            Ok(Duration::from_secs(60))
        );
        // The server's own word still counts: private is never stored by a shared cache.
        let private = [
            ("cache-control", "private, max-age=60"),
            ("set-cookie", "a=b"),
        ];
        let decided = storability(
            &get("https://cdn.example/a"),
            StatusCode::OK,
            &headers(&private),
            SystemTime::now(),
            &cookie_free,
            only_accept,
        );
        assert_eq!(decided, Err(NotStored::Forbidden));
    }

    #[test]
    fn no_cache_with_a_validator_is_stored_for_revalidation() {
        let s = decide(200, &[("cache-control", "no-cache"), ("etag", "\"v1\"")]).unwrap();
        assert_eq!(s.lifetimes.fresh_for, Duration::ZERO);
        assert!(s.lifetimes.must_revalidate);
        assert_eq!(
            decide(200, &[("cache-control", "no-cache")]),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn only_lasting_refusals_make_a_hit_for_miss_marker() {
        let ok = StatusCode::OK;
        for why in [
            NotStored::Forbidden,
            NotStored::NoFreshness,
            NotStored::SetCookie,
            NotStored::Vary,
            NotStored::TooLarge,
        ] {
            assert!(why.lasts(ok), "{why:?}");
            assert!(why.lasts(StatusCode::FORBIDDEN), "{why:?}");
            // Errors come and go: their next requests still wait on one fetch.
            for transient in [500, 502, 503, 504, 408, 429] {
                let status = StatusCode::from_u16(transient).unwrap();
                assert!(!why.lasts(status), "{why:?} {transient}");
            }
        }
        assert!(!NotStored::Disabled.lasts(ok));
    }
}

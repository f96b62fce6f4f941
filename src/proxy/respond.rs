//! The response step: what a visitor's browser gets back is decided here, whatever produced the
//! answer. An upstream's headers are filtered once, before they are stored or streamed
//! ([`upstream_response_filter`]); a 304 refreshes a stored answer only as the policy allows
//! ([`refreshed_head`]); answers made from a stored entry are built by [`from_store`]; and
//! every answer (upstream, cache hit, refresh, stale, coalesced waiter, tamis's own pages and
//! refusals) passes [`response_filter`] last, so a new path cannot skip the rules that hold for
//! all of them.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::body::{buffer, Buffered, Streamed};
use crate::cache::conditional::{self, ClientAnswer};
use crate::cache::{self, NotStored};
use crate::cache::{Entry, Rendition, CACHE_STATUS};
use crate::metrics::{CacheResult, UpstreamFailure};
use crate::policy;
use crate::refusal::Refusal;
use crate::routes::confine::{self, Redirect};
use crate::routes::Route;
use crate::state::State;
use crate::upstream::UpstreamBody;
use std::time::Instant;

/// An upstream answer tamis will not hand to the browser as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unfit {
    /// It redirects outside its route.
    Outside,
    /// Its headers would have the browser read the stored body as something it was not made
    /// into (an unrewritten body as a stylesheet).
    Inconsistent,
}

/// Filters an upstream answer's headers for the visitor (the route kind's allowlist, the
/// `Link` and CSP filters, `nosniff` and the role's own headers) and maps its `Location` back
/// under the route. The path requested upstream is read only when the answer needs it (a
/// `Location` to map, a font's type): a forward keeps a copy of it that is checked as text
/// when read.
pub(super) fn upstream_response_filter<'p>(
    route: &Route,
    requested_path: impl Fn() -> &'p str,
    mut headers: HeaderMap,
) -> Result<HeaderMap, Unfit> {
    policy::scrub_response(&mut headers, route.response_kind());
    route.adjust_response(&mut headers, &requested_path);
    if let Some(location) = headers.get(header::LOCATION) {
        let requested_path = requested_path();
        let mapped = location.to_str().ok().and_then(|loc| {
            match confine::map_location_at(&route.upstream, &route.prefix, requested_path, loc) {
                Redirect::FirstParty(p) => HeaderValue::from_str(&p).ok(),
                Redirect::Outside => None,
            }
        });
        match mapped {
            Some(v) => {
                headers.insert(header::LOCATION, v);
            }
            None => return Err(Unfit::Outside),
        }
    }
    Ok(headers)
}

/// How a body with these filtered headers is held on this route: a stylesheet to rewrite, or
/// the upstream's bytes.
pub(super) fn rendition(route: &Route, headers: &HeaderMap) -> Rendition {
    if route.rewrites(headers) {
        Rendition::Stylesheet
    } else {
        Rendition::AsSent
    }
}

/// Whether headers agree with how the body was made: a rewritten stylesheet is typed as
/// tamis's CSS and has no content coding; a body kept as sent is never one a browser may
/// apply as a stylesheet on a route that rewrites them.
pub(super) fn consistent(route: &Route, rendition: Rendition, headers: &HeaderMap) -> bool {
    match rendition {
        Rendition::Stylesheet => {
            headers.get(header::CONTENT_TYPE) == Some(&crate::routes::css::CSS_CONTENT_TYPE)
                && headers.get_all(header::CONTENT_TYPE).iter().count() == 1
                && !headers.contains_key(header::CONTENT_ENCODING)
        }
        Rendition::AsSent => !route.rewrites(headers),
    }
}

/// The headers of a stored answer refreshed by the upstream's 304: the 304's headers pass the
/// same filter as a fresh answer's, then only validators and freshness are taken from them
/// ([`policy::REFRESHED_BY_NOT_MODIFIED`]); how the body is read stays as stored. The result
/// carries the upstream's own ETag (the entry made from it shows tamis's again).
pub(super) fn refreshed_head(
    route: &Route,
    requested_path: &str,
    stored: &Entry,
    not_modified: &HeaderMap,
) -> Result<HeaderMap, Unfit> {
    let fresh = upstream_response_filter(route, || requested_path, not_modified.clone())?;
    let mut base = (*stored.headers).clone();
    match &stored.upstream_etag {
        Some(etag) => base.insert(header::ETAG, etag.clone()),
        None => base.remove(header::ETAG),
    };
    let merged = policy::refresh(&base, &fresh, route.response_kind());
    if !consistent(route, stored.rendition, &merged) {
        return Err(Unfit::Inconsistent);
    }
    Ok(merged)
}

/// Headers a 304 carries (RFC 9110 §15.4.5), besides `Age`.
const NOT_MODIFIED_HEADERS: &[HeaderName] = &[
    header::CACHE_CONTROL,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// Answers from a stored entry: 200, or 304 / 206 / 416 for the visitor's own conditional and
/// range requests (never forwarded). Clones of pre-built headers and a `Bytes` body.
pub(super) fn from_store(
    entry: &Entry,
    client: &HeaderMap,
    head_only: bool,
    now: std::time::Instant,
) -> Response<ProxyBody> {
    let len = entry.body.len() as u64;
    // One pass over the visitor's few headers instead of a hashed lookup for each of these.
    let asks = |client: &HeaderMap| {
        client.keys().any(|n| {
            n == header::IF_NONE_MATCH || n == header::IF_MODIFIED_SINCE || n == header::RANGE
        })
    };
    let decision = if entry.status == StatusCode::OK && asks(client) {
        conditional::evaluate(
            client,
            entry.headers.get(header::ETAG),
            entry.headers.get(header::LAST_MODIFIED),
            len,
            !head_only,
        )
    } else {
        ClientAnswer::Full
    };
    let (status, headers, body) = match decision {
        // The prepared head: `Age` below and the response step's headers replace placeholders.
        // It has no `Content-Length`: hyper writes the body's, except on a HEAD answer, whose
        // empty body is not the length to announce.
        ClientAnswer::Full if head_only => {
            let mut h = (*entry.head).clone();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            (entry.status, h, Bytes::new())
        }
        ClientAnswer::Full => (entry.status, (*entry.head).clone(), entry.body.clone()),
        ClientAnswer::NotModified => {
            let mut h = HeaderMap::with_capacity(8);
            for name in NOT_MODIFIED_HEADERS {
                for v in entry.headers.get_all(name) {
                    h.append(name.clone(), v.clone());
                }
            }
            (StatusCode::NOT_MODIFIED, h, Bytes::new())
        }
        ClientAnswer::Partial(range) => {
            let mut h = (*entry.headers).clone();
            let content_range = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(range.end - range.start),
            );
            let (start, end) = (
                usize::try_from(range.start).unwrap_or(0),
                usize::try_from(range.end).unwrap_or(0),
            );
            (StatusCode::PARTIAL_CONTENT, h, entry.body.slice(start..end))
        }
        ClientAnswer::Unsatisfiable => {
            let mut h = HeaderMap::with_capacity(4);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            (StatusCode::RANGE_NOT_SATISFIABLE, h, Bytes::new())
        }
    };
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    // `HeaderMap::new` (in `Response::new`) does not allocate, so the empty map replaced here
    // holds nothing to free: forgetting it skips a drop that walks its empty parts.
    std::mem::forget(std::mem::replace(response.headers_mut(), headers));
    response
        .headers_mut()
        .insert(header::AGE, entry.age_value(now));
    response
}

/// The last step of every answer, whatever its source: every answer but a pass-through
/// route's is `nosniff`, and `Cache-Status` is set when the operator wants it (and removed
/// otherwise: an answer from the store carries a placeholder for it).
///
/// No header that sets state in the browser, reports or hints at a third party can be here:
/// an upstream's headers reach an answer only through [`upstream_response_filter`] (fresh and
/// stored answers, and a 304's refresh), and tamis's own answers are built with none. Checking
/// that again on every hit cost 8 % of its instructions, so debug builds (the test suite, the
/// fuzzers) assert it here instead: a new path that skips the filter fails the tests.
///
/// A `prepared` head (a whole answer from a stored entry, see [`Answer::prepared`]) has
/// `nosniff` already and the hit's `Cache-Status`: on a hit neither is inserted again (the
/// two inserts, each a hash and a probe of the map, were 2.6 % of its instructions).
pub(super) fn response_filter(
    response: &mut Response<ProxyBody>,
    pass_through: bool,
    cache_status: Option<HeaderValue>,
    prepared: bool,
) {
    let headers = response.headers_mut();
    debug_assert!(
        policy::withheld_names(headers).is_empty(),
        "an answer carries {:?}",
        policy::withheld_names(headers)
    );
    if prepared {
        debug_assert_eq!(headers.get(header::X_CONTENT_TYPE_OPTIONS), Some(&NOSNIFF));
        debug_assert_eq!(headers.get(CACHE_STATUS), Some(&HIT));
        match cache_status {
            Some(value) if value == HIT => {}
            Some(value) => {
                headers.insert(CACHE_STATUS, value);
            }
            None => {
                headers.remove(CACHE_STATUS);
            }
        }
        return;
    }
    if !pass_through {
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    }
    match cache_status {
        Some(value) => {
            headers.insert(CACHE_STATUS, value);
        }
        // A stored entry's head holds a placeholder (see `Entry::head`): never sent as it is.
        None => {
            headers.remove(CACHE_STATUS);
        }
    }
}

// Constants, checked once at compile time: `from_static` called at run time checks every byte
// of its string on every answer.
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const HIT: HeaderValue = crate::cache::CACHE_STATUS_HIT;

/// How a request was answered, for metrics, the log and `Cache-Status`.
pub(super) struct Answer {
    pub(super) response: Response<ProxyBody>,
    pub(super) route: Option<usize>,
    pub(super) cache: Option<CacheResult>,
    pub(super) cache_status: Option<HeaderValue>,
    /// Its head is a stored entry's prepared head, whole, with tamis's own headers on it (see
    /// [`Entry::head`]): `nosniff` is there already, and `Cache-Status` says `tamis; hit`
    /// (replaced when the answer says otherwise: a disk hit, a stale or revalidated copy).
    pub(super) prepared: bool,
}

impl Answer {
    /// An answer as `response` stands; its route and cache result are said later.
    pub(super) fn of(response: Response<ProxyBody>) -> Answer {
        Answer {
            response,
            route: None,
            cache: None,
            cache_status: None,
            prepared: false,
        }
    }

    /// tamis's own answer (see [`Refusal`]).
    pub(super) fn own(refusal: Refusal) -> Answer {
        Answer::of(refusal.response())
    }

    pub(super) fn with(mut self, result: CacheResult, cache_status: HeaderValue) -> Answer {
        self.cache = Some(result);
        self.cache_status = Some(cache_status);
        self
    }
}

/// A static `Cache-Status` value.
pub(super) fn status_of(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

/// A `Cache-Status` for a forwarded request that was not stored.
pub(super) fn status_not_stored(why: NotStored) -> HeaderValue {
    HeaderValue::from_str(&format!("tamis; fwd=miss; detail={}", why.as_str()))
        .unwrap_or(HeaderValue::from_static("tamis; fwd=miss"))
}

/// Scrubs an upstream response's headers and maps its `Location` back under the route (see
/// [`respond::upstream_response_filter`]); `None` when it redirects outside the route (never
/// handed to the browser), which is counted and logged.
pub(super) fn scrub_response<'p>(
    state: &State,
    route: &Route,
    requested_path: impl Fn() -> &'p str,
    headers: HeaderMap,
) -> Option<HeaderMap> {
    match upstream_response_filter(route, requested_path, headers) {
        Ok(headers) => Some(headers),
        Err(_) => {
            redirected_outside(state, route);
            None
        }
    }
}

pub(super) fn redirected_outside(state: &State, route: &Route) {
    state
        .metrics
        .upstream_error(&state.route_metrics[route.index], UpstreamFailure::Redirect);
    tracing::warn!(route = %route.config.name, "upstream redirected outside its route; answering 502");
}

/// Reads a stylesheet that must be rewritten and rewrites it (see [`Route::rewrite`]); `None`
/// when it cannot be (too large, an unknown coding or charset, a partial answer, upstream
/// failure): the caller answers 502, never the body as it came.
pub(super) async fn rewritten(
    route: &Route,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: UpstreamBody,
    max: u64,
) -> Option<Bytes> {
    let Ok(Buffered::Complete(raw)) = buffer(body, max).await else {
        return None;
    };
    route.rewrite(status, headers, &raw, max)
}

/// Browsers get a lifetime even when the upstream gave tamis none it could pass on (heuristic,
/// negative caching, min_ttl): `max-age` counts from the response's birth, as `Age` does.
pub(super) fn sane_browser_lifetime(headers: &mut HeaderMap, lifetimes: &cache::Lifetimes) {
    if headers.contains_key(header::CACHE_CONTROL) || headers.contains_key(header::EXPIRES) {
        return;
    }
    let lifetime = (lifetimes.fresh_for + lifetimes.age).as_secs();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={lifetime}")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
}

/// Streams an answer tamis does not keep. Its upstream's ETag stays behind: tamis answers a
/// browser's conditionals only from its own copies, never forwards them, so an ETag here could
/// only serve as an identifier the browser stores (served ETags are tamis's own, from the
/// bytes).
pub(super) fn streamed(
    state: &State,
    route: &Route,
    status: StatusCode,
    mut headers: HeaderMap,
    prefix: Vec<Bytes>,
    rest: Option<UpstreamBody>,
    head_only: bool,
) -> Answer {
    if !route.config.pass_through {
        headers.remove(header::ETAG);
    }
    let rm = &state.route_metrics[route.index];
    let idle = state.upstream.timeout();
    let body = if head_only {
        body::empty()
    } else {
        ProxyBody::Right(Box::new(Streamed::new(
            prefix,
            rest,
            idle,
            rm.bytes_from_upstream.clone(),
        )))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    // The empty map `Response::new` made holds no allocation: forgotten, not walked to drop.
    std::mem::forget(std::mem::replace(response.headers_mut(), headers));
    Answer::of(response)
}

/// Answers from a stored entry (see [`respond::from_store`]).
pub(super) fn cached(entry: &Entry, client: &HeaderMap, head_only: bool) -> Answer {
    let mut answer = Answer::of(from_store(entry, client, head_only, Instant::now()));
    answer.prepared = prepared(entry, &answer.response);
    answer
}

/// Whether an answer from `entry` is its prepared head, whole (not a 304, a range or a 416),
/// with tamis's own headers on it (see [`Answer::prepared`]).
fn prepared(entry: &Entry, response: &Response<ProxyBody>) -> bool {
    entry.own_head() && response.status() == entry.status
}

/// The fresh-copy shortcut's answer: `entry` at `now` (when the lookup found it fresh), a
/// `hit` on route `route`, built in place.
pub(super) fn hit(
    entry: &Entry,
    client: &HeaderMap,
    head_only: bool,
    now: Instant,
    route: usize,
) -> Answer {
    let response = from_store(entry, client, head_only, now);
    Answer {
        prepared: prepared(entry, &response),
        response,
        route: Some(route),
        cache: Some(CacheResult::Hit),
        cache_status: Some(HIT),
    }
}

/// tamis's own 429, with the seconds to wait in `Retry-After` (at least one).
pub(super) fn too_many_requests(wait: std::time::Duration) -> Answer {
    let mut a = Answer::own(Refusal::TooManyRequests);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    a.response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routes::Router;

    fn typed(ct: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        h
    }

    #[test]
    fn a_stored_body_is_read_only_as_what_it_was_made_into() {
        let config = Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"cdn\"\nkind = \"static\"\nprefix = \"/cdn/\"\n\
             upstream = \"https://cdn.example/\"\n\
             [[route]]\nname = \"fonts\"\nkind = \"fonts\"\nprefix = \"/fonts/\"\n\
             upstream = \"https://fonts.example/\"\n\
             files_prefix = \"/fonts/files/\"\nfiles_upstream = \"https://files.example/\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let router = Router::new(&config);
        let (cdn, _) = router.find("/cdn/a").unwrap();
        let (fonts, _) = router.find("/fonts/css2").unwrap();
        let css = || typed("text/css; charset=utf-8");
        assert!(consistent(cdn, Rendition::AsSent, &typed("text/plain")));
        assert!(!consistent(cdn, Rendition::AsSent, &typed("text/css")));
        assert!(!consistent(cdn, Rendition::AsSent, &typed("Text/CSS")));
        assert!(consistent(cdn, Rendition::Stylesheet, &css()));
        assert!(!consistent(
            cdn,
            Rendition::Stylesheet,
            &typed("text/plain")
        ));
        let mut coded = css();
        coded.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!consistent(cdn, Rendition::Stylesheet, &coded));
        let mut two = css();
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!consistent(cdn, Rendition::Stylesheet, &two));
        // A fonts route's CSS side rewrites everything it serves, whatever its type.
        assert!(!consistent(fonts, Rendition::AsSent, &typed("text/plain")));
        assert!(consistent(fonts, Rendition::Stylesheet, &css()));
        assert_eq!(rendition(cdn, &typed("text/css")), Rendition::Stylesheet);
        assert_eq!(rendition(cdn, &typed("image/png")), Rendition::AsSent);
    }
}

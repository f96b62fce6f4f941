//! The cache phases of a request: the lookup that the fresh-copy shortcut did not answer
//! (fresh, stale-while-revalidate, lead or wait), the one fill per key (send, revalidate,
//! rewrite or buffer, store), the 304 refresh, and stale-if-error.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::body::{buffer, content_length, Buffered};
use crate::cache::{
    self, Cache, CacheKey, Entry, Fill, FillGuard, FillState, Lookup, NotStored, Waited,
};
use crate::egress::UpstreamRequest;
use crate::metrics::{CacheResult, UpstreamFailure};
use crate::refusal::Refusal;
use crate::routes::Route;
use crate::state::State;

use super::forward::{forward, retry_after, send};
use super::respond::{
    self, cached, redirected_outside, rewritten, sane_browser_lifetime, scrub_response,
    status_not_stored, status_of, streamed, Answer,
};

/// Step 5, the cache lookup for a request the fresh-copy shortcut did not answer. The
/// visitor's own conditionals and ranges are answered here, from the stored copy; `up` (built
/// by [`route_request`]) asks the upstream for the plain representation on a miss.
pub(super) async fn serve_cached(
    state: &Arc<State>,
    route: &Arc<Route>,
    up: UpstreamRequest,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    let fill_headers = &up.parts.headers;
    let key = CacheKey::primary(route.cache_id, up.parts.uri.clone());
    // The last fill this request waited on, if it waited.
    let mut waited_on: Option<FillState> = None;
    for _ in 0..3 {
        let (stale, outcome) = match Box::pin(state.cache.lookup(&key, fill_headers)).await {
            Lookup::Fresh(entry) => {
                let (result, status) = if waited_on.is_some() {
                    (CacheResult::Coalesced, "tamis; fwd=miss; collapsed")
                } else {
                    (CacheResult::Hit, "tamis; hit")
                };
                return cached(&entry, client, head_only).with(result, status_of(status));
            }
            Lookup::FreshFromDisk(entry) => {
                return cached(&entry, client, head_only)
                    .with(CacheResult::DiskHit, status_of("tamis; hit; detail=disk"));
            }
            Lookup::StaleWhileRevalidate(entry, fill_key) => {
                spawn_refresh(
                    state.clone(),
                    route.clone(),
                    fill_key,
                    up.clone(),
                    entry.clone(),
                );
                return cached(&entry, client, head_only).with(
                    CacheResult::Stale,
                    status_of("tamis; hit; detail=stale-while-revalidate"),
                );
            }
            Lookup::Lead { stale, guard } => {
                // The fill waited on may have settled just as the wait ran out (its leader
                // on another thread): a fill publishes its result before it gives up the
                // lead, so having the lead now means that result is readable.
                match waited_on.as_ref().and_then(Cache::settled) {
                    Some(settled) => {
                        drop(guard);
                        (stale, Waited::Fill(settled))
                    }
                    None => {
                        return Box::pin(fill(state, route, &up, stale, guard, client, head_only))
                            .await;
                    }
                }
            }
            Lookup::Wait { stale, fill } => {
                waited_on = Some(fill.clone());
                (stale, Cache::wait(fill, state.upstream.timeout()).await)
            }
        };
        match outcome {
            Waited::Fill(Fill::Stored(entry)) if entry.matches(fill_headers) => {
                return cached(&entry, client, head_only).with(
                    CacheResult::Coalesced,
                    status_of("tamis; fwd=miss; collapsed"),
                );
            }
            Waited::Fill(Fill::Stored(_)) | Waited::Fill(Fill::NotStored) => break,
            Waited::Fill(Fill::Failed(status)) => {
                if let Some(stale) = stale.filter(|s| s.usable_on_error(Instant::now())) {
                    return cached(&stale, client, head_only).with(
                        CacheResult::Stale,
                        status_of("tamis; hit; detail=stale-if-error"),
                    );
                }
                return Answer::own(Refusal::UpstreamUnavailable(status)).with(
                    CacheResult::Coalesced,
                    status_of("tamis; fwd=miss; collapsed"),
                );
            }
            Waited::Retry => continue,
        }
    }
    // The answer cannot be shared (or the fill kept failing to settle): fetch on our own.
    Box::pin(forward(state, route, up.into_request(), head_only))
        .await
        .with(CacheResult::Uncacheable, status_of("tamis; fwd=miss"))
}

/// Refreshes a stale-while-revalidate entry in the background; one refresh per key, since it
/// must take the key's fill lead first.
pub(super) fn spawn_refresh(
    state: Arc<State>,
    route: Arc<Route>,
    key: CacheKey,
    up: UpstreamRequest,
    stale: Arc<Entry>,
) {
    tokio::spawn(async move {
        let Some(guard) = state.cache.try_lead(&key) else {
            return;
        };
        let nobody = HeaderMap::new();
        fill(&state, &route, &up, Some(stale), guard, &nobody, true).await;
    });
}

/// The one fetch for a key: revalidates the stale copy if there is one, stores what may be
/// stored, falls back on the stale copy when the upstream fails and that is allowed.
pub(super) async fn fill(
    state: &State,
    route: &Route,
    up: &UpstreamRequest,
    stale: Option<Arc<Entry>>,
    guard: FillGuard<'_>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    let rm = &state.route_metrics[route.index];
    let revalidating = stale.as_ref().filter(|s| s.can_revalidate()).cloned();
    let mut request = up.to_request();
    if let Some(s) = &revalidating {
        // tamis's own validators, from the upstream's earlier answer: never the browser's.
        if let Some(etag) = &s.upstream_etag {
            request
                .headers_mut()
                .insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = &s.last_modified {
            request
                .headers_mut()
                .insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let fallback =
        |stale: &Option<Arc<Entry>>| stale.clone().filter(|s| s.usable_on_error(Instant::now()));

    let deadline = tokio::time::Instant::now() + state.upstream.timeout();
    // Held until the body is buffered: the route's cap counts whole exchanges.
    let (resp, _permit) = match send(state, route, &mut request).await {
        Ok(resp) => resp,
        Err(e) => {
            let a = fill_failed(
                guard,
                Refusal::upstream(e.status()),
                &stale,
                client,
                head_only,
            )
            .await;
            return retry_after(a, &e);
        }
    };
    let (parts, incoming) = resp.into_parts();
    let status = parts.status;
    let received = SystemTime::now();

    // The stored copy is still good: refresh its headers and lifetime, keep its body.
    if status == StatusCode::NOT_MODIFIED {
        if let Some(s) = &revalidating {
            return refreshed(
                state,
                route,
                up,
                s,
                &parts.headers,
                received,
                guard,
                client,
                head_only,
            )
            .await;
        }
    }
    // A server error with a usable stale copy: serve that instead (stale-if-error).
    if status.is_server_error() {
        if let Some(s) = fallback(&stale) {
            guard.finish(Fill::Failed(status), &[]).await;
            return cached(&s, client, head_only).with(
                CacheResult::Stale,
                status_of("tamis; fwd=stale; detail=stale-if-error"),
            );
        }
    }

    let decision = cache::storability(
        &up.parts,
        status,
        &route.cache_view(&parts.headers),
        received,
        &route.rules,
        |n| route.varyable(n),
    );
    // 5. Scrub the response before anything else looks at it.
    let Some(mut headers) = scrub_response(state, route, || up.parts.uri.path(), parts.headers)
    else {
        guard
            .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
            .await;
        return Answer::own(Refusal::RedirectedElsewhere);
    };
    let max = state.cache.max_object_bytes();
    let decision = match decision {
        Ok(_) if content_length(&headers).is_some_and(|n| n > max) => Err(NotStored::TooLarge),
        d => d,
    };
    let rendition = respond::rendition(route, &headers);
    let body = if rendition == cache::Rendition::Stylesheet {
        // Font CSS: always rewritten whole, stored or not; never served as the upstream sent it.
        match tokio::time::timeout_at(
            deadline,
            Box::pin(rewritten(route, status, &mut headers, incoming, max)),
        )
        .await
        {
            Ok(Some(body)) => body,
            _ => {
                state.metrics.upstream_error(rm, UpstreamFailure::Body);
                guard
                    .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
                    .await;
                return Answer::own(Refusal::StylesheetRefused);
            }
        }
    } else {
        if let Err(why) = decision {
            guard
                .not_stored(why, status, state.config.cache.hit_for_miss)
                .await;
            return streamed(
                state,
                route,
                status,
                headers,
                Vec::new(),
                Some(incoming),
                head_only,
            )
            .with(CacheResult::Uncacheable, status_not_stored(why));
        }
        // 6. Buffer (up to max_object_bytes) and store.
        match tokio::time::timeout_at(deadline, buffer(incoming, max)).await {
            Ok(Ok(Buffered::Complete(body))) => body,
            Ok(Ok(Buffered::TooLarge(prefix, rest))) => {
                guard
                    .not_stored(NotStored::TooLarge, status, state.config.cache.hit_for_miss)
                    .await;
                return streamed(state, route, status, headers, prefix, Some(rest), head_only)
                    .with(
                        CacheResult::Uncacheable,
                        status_not_stored(NotStored::TooLarge),
                    );
            }
            Ok(Err(e)) => {
                state.metrics.upstream_error(rm, UpstreamFailure::Body);
                tracing::warn!(route = %route.config.name, error = %e, "upstream body failed");
                return fill_failed(
                    guard,
                    Refusal::UpstreamBodyFailed,
                    &stale,
                    client,
                    head_only,
                )
                .await;
            }
            Err(_) => {
                state.metrics.upstream_error(rm, UpstreamFailure::Timeout);
                tracing::warn!(route = %route.config.name, "upstream body timed out");
                return fill_failed(guard, Refusal::UpstreamTimedOut, &stale, client, head_only)
                    .await;
            }
        }
    };
    let storable = match decision {
        Ok(s) => s,
        Err(why) => {
            // Only rewritten bodies get here: served once, not kept.
            guard
                .not_stored(why, status, state.config.cache.hit_for_miss)
                .await;
            let once = Entry::new(
                status,
                headers,
                body,
                rendition,
                cache::Lifetimes::default(),
                Vec::new(),
                std::time::Duration::ZERO,
                !route.config.pass_through,
            );
            return cached(&once, client, head_only)
                .with(CacheResult::Uncacheable, status_not_stored(why));
        }
    };
    if !route.config.pass_through {
        sane_browser_lifetime(&mut headers, &storable.lifetimes);
    }
    if status == StatusCode::OK {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let entry = Arc::new(Entry::new(
        status,
        headers,
        body,
        rendition,
        storable.lifetimes,
        cache::vary_values(&storable.vary, &up.parts.headers),
        state.config.cache.keep,
        !route.config.pass_through,
    ));
    guard
        .finish(Fill::Stored(entry.clone()), &storable.vary)
        .await;
    // A stale copy replaced by a new one: the body came from the upstream, as on a miss.
    let cache_status = if stale.is_some() {
        "tamis; fwd=stale; fwd-status=200; stored"
    } else {
        "tamis; fwd=miss; stored"
    };
    cached(&entry, client, head_only).with(CacheResult::Miss, status_of(cache_status))
}

/// A fill that failed: the waiters are told, and this request falls back on its stale copy
/// when stale-if-error allows, else answers the failure.
pub(super) async fn fill_failed(
    guard: FillGuard<'_>,
    failure: Refusal,
    stale: &Option<Arc<Entry>>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    guard.finish(Fill::Failed(failure.status()), &[]).await;
    match stale.clone().filter(|s| s.usable_on_error(Instant::now())) {
        Some(s) => cached(&s, client, head_only).with(
            CacheResult::Stale,
            status_of("tamis; fwd=stale; detail=stale-if-error"),
        ),
        None => Answer::own(failure).with(CacheResult::Miss, status_of("tamis; fwd=miss")),
    }
}

/// The upstream answered 304 to tamis's conditional request: the stored headers are updated
/// from it (RFC 9111 §4.3.4) and the lifetime recomputed; the body is kept.
#[allow(clippy::too_many_arguments)]
pub(super) async fn refreshed(
    state: &State,
    route: &Route,
    up: &UpstreamRequest,
    stale: &Entry,
    not_modified: &HeaderMap,
    received: SystemTime,
    guard: FillGuard<'_>,
    client: &HeaderMap,
    head_only: bool,
) -> Answer {
    // What the visitor gets: the stored answer with only its validators and freshness taken
    // from the 304, filtered as a fresh answer's headers are; how the body is read stays.
    let headers = match respond::refreshed_head(route, up.parts.uri.path(), stale, not_modified) {
        Ok(h) => h,
        Err(unfit) => {
            let refusal = match unfit {
                respond::Unfit::Outside => {
                    redirected_outside(state, route);
                    Refusal::RedirectedElsewhere
                }
                respond::Unfit::Inconsistent => {
                    tracing::warn!(route = %route.config.name, "a 304 would change how the stored body is read; answering 502");
                    Refusal::InconsistentRefresh
                }
            };
            guard
                .finish(Fill::Failed(StatusCode::BAD_GATEWAY), &[])
                .await;
            return Answer::own(refusal);
        }
    };
    // The upstream's view of the stored response, for the cache's decision alone: its own
    // ETag, and every header of the 304 (the stored Cache-Control may be tamis's own browser
    // lifetime; the 304 brings the real one).
    let mut merged = (*stale.headers).clone();
    match &stale.upstream_etag {
        Some(etag) => merged.insert(header::ETAG, etag.clone()),
        None => merged.remove(header::ETAG),
    };
    for name in not_modified.keys() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        merged.remove(name);
        for v in not_modified.get_all(name) {
            merged.append(name.clone(), v.clone());
        }
    }
    if !not_modified.contains_key(header::AGE) {
        merged.remove(header::AGE);
    }
    let decision = cache::storability(
        &up.parts,
        stale.status,
        &route.cache_view(&merged),
        received,
        &route.rules,
        |n| route.varyable(n),
    );
    let status_304 = "tamis; fwd=stale; fwd-status=304; stored";
    match decision {
        Ok(storable) => {
            let entry = Arc::new(Entry::new(
                stale.status,
                headers,
                stale.body.clone(),
                stale.rendition,
                storable.lifetimes,
                cache::vary_values(&storable.vary, &up.parts.headers),
                state.config.cache.keep,
                !route.config.pass_through,
            ));
            guard
                .finish(Fill::Stored(entry.clone()), &storable.vary)
                .await;
            cached(&entry, client, head_only).with(CacheResult::Revalidated, status_of(status_304))
        }
        Err(why) => {
            // Valid for this answer, but the refreshed headers forbid keeping it.
            guard
                .not_stored(why, stale.status, state.config.cache.hit_for_miss)
                .await;
            let once = Entry::new(
                stale.status,
                headers,
                stale.body.clone(),
                stale.rendition,
                stale.lifetimes,
                Vec::new(),
                std::time::Duration::ZERO,
                !route.config.pass_through,
            );
            cached(&once, client, head_only).with(
                CacheResult::Revalidated,
                HeaderValue::from_str(&format!(
                    "tamis; fwd=stale; fwd-status=304; detail={}",
                    why.as_str()
                ))
                .unwrap_or(status_of("tamis; fwd=stale")),
            )
        }
    }
}

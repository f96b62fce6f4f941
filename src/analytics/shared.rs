//! What replicas share through the key store ([`crate::store`]): each period's pseudonym key,
//! fetched ahead by the key keeper so that no request ever waits for it, and the location
//! counts, asked only while a cell is still closed.
//!
//! The store's names: `key:ROUTE:SECONDS:INDEX` for the key of period INDEX of a route rotating
//! every SECONDS, `gate:ROUTE:SECONDS:INDEX:CELL` for the keyed visitor hashes seen in a cell
//! (a country `FR`, a region `FR-IDF`). Each expires at its period's end plus [`margin`], so
//! nothing derivable outlives the period (and a replica whose clock is a little behind still
//! finds it).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::geo::{Code, Database, Precision};
use super::pseudonym::{random_key, KeySource};
use super::Runtime;

/// How long a key or a count outlives its period in the store: room for clock skew between
/// replicas (a minute, or the period if shorter).
pub fn margin(period_secs: u64) -> Duration {
    Duration::from_secs(period_secs.clamp(1, 60))
}

/// How long before a period ends its key is fetched: a quarter of the period, 1 to 30 seconds.
fn lead(period_secs: u64) -> u64 {
    (period_secs / 4).clamp(1, 30)
}

/// How often the key keeper runs for routes rotating every `period_secs`: often enough to
/// fetch each key within its lead.
pub fn tick(shortest_period_secs: u64) -> Duration {
    if shortest_period_secs < 60 {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    }
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Time from `now` to the end of period `index`, plus the margin.
fn until_end(index: u64, secs: u64, now_s: u64) -> Duration {
    Duration::from_secs(((index + 1) * secs).saturating_sub(now_s)) + margin(secs)
}

/// One pass of the key keeper over a state's analytics routes (`(route name, runtime)`): for
/// each that takes its key from the store, makes sure the current period's key is agreed
/// (proposing the one in use, so a restarted store gets it back) and, near the period's end,
/// fetches the next one. Each call is bounded by the store's timeout; a failure leaves the
/// route on what it has (and, at rotation, on a local key).
pub async fn keep_keys(routes: &[(String, Arc<Runtime>)], now: SystemTime) {
    let now_s = unix_secs(now);
    for (name, rt) in routes {
        let p = &rt.pseudonyms;
        let Some(store) = p.key_store() else {
            continue;
        };
        let secs = p.period_secs();
        let current = now_s / secs;
        let in_use = p.in_use(current);
        // A replica that began this period on a local key keeps it to the period's end: one
        // visitor's pseudonym never changes mid-period.
        if !matches!(in_use, Some((_, KeySource::Local))) {
            let proposal = in_use.map_or_else(random_key, |(k, _)| k);
            let name = format!("key:{name}:{secs}:{current}");
            if let Ok(key) = store
                .propose(&name, &proposal, until_end(current, secs, now_s))
                .await
            {
                p.offer(current, key);
            }
        }
        let next = current + 1;
        if (next * secs).saturating_sub(now_s) <= lead(secs) && !p.has_fetched(next) {
            let name = format!("key:{name}:{secs}:{next}");
            if let Ok(key) = store
                .propose(&name, &random_key(), until_end(next, secs, now_s))
                .await
            {
                p.offer(next, key);
            }
        }
    }
}

/// The store's name of a location cell.
fn cell_name(cell: &(Code, Option<Code>)) -> String {
    match cell.1 {
        Some(region) => format!("{}-{}", cell.0.as_str(), region.as_str()),
        None => cell.0.as_str().to_owned(),
    }
}

/// Counts this request's subscriber in the shared location counts of the cells still closed
/// for it, and opens in the route's gate those every replica's visitors together opened; the
/// request's own gate step then releases them. A cell already open costs nothing; a store
/// that is down, slow or absent leaves the decision to the local gate (counted as a fallback).
pub async fn count_location(
    rt: &Runtime,
    route: &str,
    geo: &Database,
    client: IpAddr,
    now: SystemTime,
) {
    if rt.location == Precision::None {
        return;
    }
    let p = &rt.pseudonyms;
    let Some(store) = p.store() else {
        return;
    };
    let Some(place) = geo.locate(client) else {
        return;
    };
    let period = p.period(now);
    let cells = rt.gate.closed_cells(period, place, rt.location);
    if cells.is_empty() {
        return;
    }
    let secs = p.period_secs();
    let names: Vec<String> = cells
        .iter()
        .map(|c| format!("gate:{route}:{secs}:{period}:{}", cell_name(c)))
        .collect();
    // The same keyed hash the local gate counts: one person, one member, on every replica.
    let who = p.subscriber(route, client, now);
    let ttl = until_end(period, secs, unix_secs(now));
    match store.count(&names, who as i64, ttl).await {
        Ok(counts) => {
            for (cell, n) in cells.into_iter().zip(counts) {
                if n >= rt.gate.min_visitors() as u64 {
                    rt.gate.open(period, cell);
                }
            }
        }
        Err(_) => store.fell_back("gate"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fetched_within_their_lead_and_outlive_the_period_by_the_margin_only() {
        assert_eq!(lead(86400), 30);
        assert_eq!(lead(3), 1);
        assert_eq!(margin(86400), Duration::from_secs(60));
        assert_eq!(margin(3), Duration::from_secs(3));
        // Period 10 of 100 s ends at 1100: from 1090, 10 s to go plus the margin.
        assert_eq!(until_end(10, 100, 1090), Duration::from_secs(70));
        assert!(tick(3) < Duration::from_secs(lead(3)));
    }
}

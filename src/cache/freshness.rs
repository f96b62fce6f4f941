//! How long a stored response stays fresh, and how long it may be served stale: RFC 9111 §4.2
//! arithmetic plus the RFC 5861 `stale-while-revalidate` / `stale-if-error` extensions, as pure
//! functions. Whether a response may be stored at all (§3) comes from `http-cache-semantics`.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderName, StatusCode};

/// RFC 9213: cache directives aimed at CDNs (and so at tamis), ahead of `Cache-Control`.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// RFC 9111 §1.2.2: delta-seconds larger than this are taken as this.
const DELTA_MAX: u64 = 2_147_483_648;

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), given heuristics.
const HEURISTICALLY_CACHEABLE: &[u16] =
    &[200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The response `Cache-Control` directives a shared cache acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    /// `Some(None)`: present with an invalid value (which makes the response stale).
    pub max_age: Option<Option<u64>>,
    pub s_maxage: Option<Option<u64>>,
    pub no_cache: bool,
    pub no_store: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// Parses a delta-seconds value: digits, optionally quoted; anything else is invalid.
fn delta_seconds(v: Option<&str>) -> Option<u64> {
    let v = v?.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing values are "very large", not invalid.
    Some(v.parse::<u64>().unwrap_or(DELTA_MAX).min(DELTA_MAX))
}

impl Directives {
    /// Reads every `Cache-Control` field; the first occurrence of a directive wins.
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for item in split_directives(value) {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim())),
                    None => (item.trim(), None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "max-age" if d.max_age.is_none() => d.max_age = Some(delta_seconds(arg)),
                    "s-maxage" if d.s_maxage.is_none() => d.s_maxage = Some(delta_seconds(arg)),
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "immutable" => d.immutable = true,
                    "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                        d.stale_while_revalidate = delta_seconds(arg)
                    }
                    "stale-if-error" if d.stale_if_error.is_none() => {
                        d.stale_if_error = delta_seconds(arg)
                    }
                    _ => {}
                }
            }
        }
        d
    }

    /// Whether the response states its own lifetime (and so gets no heuristic one).
    pub fn explicit(&self, headers: &HeaderMap) -> bool {
        self.s_maxage.is_some() || self.max_age.is_some() || headers.contains_key(header::EXPIRES)
    }
}

/// The headers as a CDN reads them: when a valid `CDN-Cache-Control` is present, its directives
/// replace `Cache-Control` and `Expires` (RFC 9213 §2.1).
pub fn targeted(headers: &HeaderMap) -> Cow<'_, HeaderMap> {
    let values: Vec<&str> = headers
        .get_all(CDN_CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() || !values.iter().all(|v| valid_cdn_cache_control(v)) {
        return Cow::Borrowed(headers);
    }
    let mut effective = headers.clone();
    effective.remove(header::CACHE_CONTROL);
    effective.remove(header::EXPIRES);
    for v in headers.get_all(CDN_CACHE_CONTROL) {
        effective.append(header::CACHE_CONTROL, v.clone());
    }
    Cow::Owned(effective)
}

/// A Structured Field dictionary (RFC 8941 §3.2) whose cache directives have the right types;
/// anything else makes the whole field ignored.
fn valid_cdn_cache_control(value: &str) -> bool {
    let members = split_directives(value);
    !members.is_empty()
        && members.iter().all(|m| {
            let mut params = m.split(';');
            let member = params.next().unwrap_or("").trim();
            let (key, val) = match member.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (member, None),
            };
            let key_ok = key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
            let is_integer = |v: &str| {
                let digits = v.strip_prefix('-').unwrap_or(v);
                !digits.is_empty()
                    && digits.len() <= 15
                    && digits.bytes().all(|b| b.is_ascii_digit())
            };
            let val_ok = match val {
                None => true,
                Some(v) if key == "max-age" || key == "s-maxage" => is_integer(v),
                Some(v) => sf_bare_item(v),
            };
            key_ok && val_ok && params.all(|p| !p.trim().is_empty())
        })
}

/// An RFC 8941 bare item: integer/decimal, string, token, byte sequence or boolean.
fn sf_bare_item(v: &str) -> bool {
    let b = v.as_bytes();
    match b.first() {
        None => false,
        Some(b'"') => v.len() >= 2 && v.ends_with('"'),
        Some(b':') => v.len() >= 2 && v.ends_with(':'),
        Some(b'?') => v == "?0" || v == "?1",
        Some(c) if c.is_ascii_digit() || *c == b'-' => v
            .trim_start_matches('-')
            .bytes()
            .all(|c| c.is_ascii_digit() || c == b'.'),
        Some(c) if c.is_ascii_alphabetic() || *c == b'*' => v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c)),
        _ => false,
    }
}

/// Splits on commas outside quoted strings.
fn split_directives(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// Operator settings that shape lifetimes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Cap on heuristic freshness (10 % of the time since Last-Modified); zero disables it.
    pub heuristic_max: Duration,
    /// Lifetime given to 404/410 answers that state none.
    pub negative_ttl: Duration,
    /// Floor and ceiling on the freshness of stored responses.
    pub min_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    /// Stale-if-error window when the response gives none.
    pub stale_if_error: Duration,
    /// The visitor's Cookie and Authorization never reach this route's upstream, so none of
    /// its answers can be personalised: one that sets a cookie is stored (without it).
    pub cookie_free: bool,
}

/// The lifetimes of a response about to be stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Freshness left at the time of storing (may be zero: store, but revalidate before use).
    pub fresh_for: Duration,
    /// Age at the time of storing.
    pub age: Duration,
    /// After going stale: served at once while one background refresh runs.
    pub stale_while_revalidate: Duration,
    /// After going stale: served when the upstream fails.
    pub stale_if_error: Duration,
    /// Never served stale (must-revalidate, proxy-revalidate, s-maxage, no-cache).
    pub must_revalidate: bool,
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<Result<SystemTime, ()>> {
    let v = headers.get(name)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
            .ok_or(()),
    )
}

/// The response's age when received (RFC 9111 §4.2.3, with no request delay known).
pub fn initial_age(headers: &HeaderMap, received: SystemTime) -> Duration {
    // A list (`7200, 0`, or several lines) is a broken Age: the first value is the one meant.
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.split(',').next()))
        .unwrap_or(0);
    let apparent = match http_date(headers, header::DATE) {
        Some(Ok(date)) => received.duration_since(date).unwrap_or_default().as_secs(),
        _ => 0,
    };
    Duration::from_secs(age_value.max(apparent))
}

/// The freshness lifetime (RFC 9111 §4.2.1), before operator overrides.
pub fn freshness_lifetime(
    status: StatusCode,
    headers: &HeaderMap,
    d: &Directives,
    received: SystemTime,
    rules: &Rules,
) -> Duration {
    if let Some(s) = d.s_maxage {
        return Duration::from_secs(s.unwrap_or(0));
    }
    if let Some(m) = d.max_age {
        return Duration::from_secs(m.unwrap_or(0));
    }
    let date = match http_date(headers, header::DATE) {
        Some(Ok(d)) => d,
        _ => received,
    };
    match http_date(headers, header::EXPIRES) {
        // An invalid Expires (such as "0") means already expired.
        Some(Err(())) => return Duration::ZERO,
        Some(Ok(expires)) => return expires.duration_since(date).unwrap_or_default(),
        None => {}
    }
    let heuristic_allowed = HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) || d.public;
    if rules.heuristic_max.is_zero() || !heuristic_allowed {
        return Duration::ZERO;
    }
    match http_date(headers, header::LAST_MODIFIED) {
        Some(Ok(lm)) => (date.duration_since(lm).unwrap_or_default() / 10).min(rules.heuristic_max),
        _ => Duration::ZERO,
    }
}

/// Lifetimes of a storable response: freshness after overrides, and stale windows.
pub fn lifetimes(
    status: StatusCode,
    headers: &HeaderMap,
    received: SystemTime,
    rules: &Rules,
) -> Lifetimes {
    let d = Directives::parse(headers);
    let age = initial_age(headers, received);
    let mut lifetime = freshness_lifetime(status, headers, &d, received, rules);
    let negative = matches!(status.as_u16(), 404 | 410);
    if negative && !d.explicit(headers) && lifetime.is_zero() {
        lifetime = rules.negative_ttl;
    }
    if !d.no_cache {
        if let Some(min) = rules.min_ttl {
            lifetime = lifetime.max(min + age);
        }
    }
    if let Some(max) = rules.max_ttl {
        lifetime = lifetime.min(max + age);
    }
    let fresh_for = if d.no_cache {
        Duration::ZERO
    } else {
        lifetime.saturating_sub(age)
    };
    // s-maxage carries proxy-revalidate's meaning (RFC 9111 §5.2.2.10).
    let must_revalidate =
        d.must_revalidate || d.proxy_revalidate || d.no_cache || d.s_maxage.is_some();
    let secs = |v: Option<u64>| Duration::from_secs(v.unwrap_or(0));
    Lifetimes {
        fresh_for,
        age,
        stale_while_revalidate: if must_revalidate {
            Duration::ZERO
        } else {
            secs(d.stale_while_revalidate)
        },
        stale_if_error: if must_revalidate {
            Duration::ZERO
        } else {
            d.stale_if_error
                .map_or(rules.stale_if_error, Duration::from_secs)
        },
        must_revalidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    const NOW: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn date(offset: i64) -> String {
        httpdate::fmt_http_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs((NOW as i64 + offset) as u64),
        )
    }

    fn fresh(pairs: &[(&'static str, &str)]) -> u64 {
        lifetimes(StatusCode::OK, &h(pairs), now(), &Rules::default())
            .fresh_for
            .as_secs()
    }

    #[test]
    fn directive_parsing() {
        let d = Directives::parse(&h(&[(
            "cache-control",
            "Max-Age=60, s-maxage=\"120\", no-cache=\"set-cookie, x\", public",
        )]));
        assert_eq!(d.max_age, Some(Some(60)));
        assert_eq!(d.s_maxage, Some(Some(120)));
        assert!(d.no_cache && d.public);
        let d = Directives::parse(&h(&[
            ("cache-control", "max-age=-1"),
            ("cache-control", "max-age=5"),
        ]));
        assert_eq!(
            d.max_age,
            Some(None),
            "first occurrence wins; invalid stays invalid"
        );
        let d = Directives::parse(&h(&[("cache-control", "max-age=99999999999999999999")]));
        assert_eq!(d.max_age, Some(Some(DELTA_MAX)));
        let d = Directives::parse(&h(&[(
            "cache-control",
            "max-age=1.5, stale-while-revalidate=30, stale-if-error=600",
        )]));
        assert_eq!(d.max_age, Some(None));
        assert_eq!(
            (d.stale_while_revalidate, d.stale_if_error),
            (Some(30), Some(600))
        );
    }

    #[test]
    fn cdn_cache_control_takes_over_when_valid() {
        let both = h(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
            ("expires", "0"),
        ]);
        let t = targeted(&both);
        assert_eq!(
            t.get_all("cache-control").iter().collect::<Vec<_>>(),
            ["max-age=600"]
        );
        assert!(t.get("expires").is_none());
        assert_eq!(
            lifetimes(StatusCode::OK, &t, now(), &Rules::default())
                .fresh_for
                .as_secs(),
            600
        );
        for invalid in [
            "max-age=\"600\"",
            "MaX-aGe=600",
            "max-age =600",
            "max-age=60.5",
            "max-age=6, @x",
        ] {
            let hs = h(&[
                ("cache-control", "max-age=5"),
                ("cdn-cache-control", invalid),
            ]);
            assert_eq!(
                targeted(&hs).get("cache-control").unwrap(),
                "max-age=5",
                "{invalid} is ignored"
            );
        }
        let private = h(&[
            ("cache-control", "max-age=600"),
            ("cdn-cache-control", "private"),
        ]);
        assert_eq!(targeted(&private).get("cache-control").unwrap(), "private");
    }

    #[test]
    fn broken_age_lists_use_the_first_value() {
        assert_eq!(
            fresh(&[("cache-control", "max-age=3600"), ("age", "7200, 0")]),
            0
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=3600"), ("age", "0, 7200")]),
            3600
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=3600"), ("age", "7200.0")]),
            3600,
            "a float is ignored"
        );
    }

    #[test]
    fn freshness_order_s_maxage_max_age_expires() {
        assert_eq!(fresh(&[("cache-control", "max-age=60, s-maxage=600")]), 600);
        assert_eq!(
            fresh(&[
                ("cache-control", "max-age=60"),
                ("expires", &date(3600)),
                ("date", &date(0))
            ]),
            60
        );
        assert_eq!(fresh(&[("expires", &date(3600)), ("date", &date(0))]), 3600);
        assert_eq!(
            fresh(&[("expires", &date(3600)), ("date", &date(-100))]),
            3700 - 100,
            "Expires - Date, then minus apparent age"
        );
        assert_eq!(fresh(&[("expires", "0")]), 0);
        assert_eq!(fresh(&[("cache-control", "max-age=garbage")]), 0);
        assert_eq!(
            fresh(&[("cache-control", "max-age=100"), ("age", "30")]),
            70
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=100"), ("date", &date(-50))]),
            50,
            "apparent age from Date"
        );
    }

    #[test]
    fn no_cache_and_revalidation_flags() {
        let l = lifetimes(
            StatusCode::OK,
            &h(&[("cache-control", "no-cache, max-age=60")]),
            now(),
            &Rules::default(),
        );
        assert_eq!((l.fresh_for, l.must_revalidate), (Duration::ZERO, true));
        for cc in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ] {
            let l = lifetimes(
                StatusCode::OK,
                &h(&[("cache-control", cc)]),
                now(),
                &Rules {
                    stale_if_error: Duration::from_secs(9),
                    ..Rules::default()
                },
            );
            assert_eq!(
                l.fresh_for,
                Duration::from_secs(60),
                "{cc}: fresh while fresh"
            );
            assert!(l.must_revalidate, "{cc}");
            assert_eq!(l.stale_if_error, Duration::ZERO, "{cc}: never stale");
        }
    }

    #[test]
    fn stale_windows() {
        let rules = Rules {
            stale_if_error: Duration::from_secs(7 * 86400),
            ..Rules::default()
        };
        let l = lifetimes(
            StatusCode::OK,
            &h(&[("cache-control", "max-age=1, stale-while-revalidate=30")]),
            now(),
            &rules,
        );
        assert_eq!(l.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(
            l.stale_if_error,
            Duration::from_secs(7 * 86400),
            "route default"
        );
        let l = lifetimes(
            StatusCode::OK,
            &h(&[("cache-control", "max-age=1, stale-if-error=5")]),
            now(),
            &rules,
        );
        assert_eq!(
            l.stale_if_error,
            Duration::from_secs(5),
            "the response's own window wins"
        );
    }

    #[test]
    fn heuristic_only_when_allowed_and_capped() {
        let lm = [("last-modified", date(-100 * 86400)), ("date", date(0))];
        let lm: Vec<(&'static str, &str)> = lm.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let off = Rules::default();
        let on = Rules {
            heuristic_max: Duration::from_secs(86400),
            ..Rules::default()
        };
        assert_eq!(
            lifetimes(StatusCode::OK, &h(&lm), now(), &off).fresh_for,
            Duration::ZERO
        );
        assert_eq!(
            lifetimes(StatusCode::OK, &h(&lm), now(), &on).fresh_for,
            Duration::from_secs(86400),
            "10 % of 100 days, capped at 1 day"
        );
        let small = Rules {
            heuristic_max: Duration::from_secs(100 * 86400),
            ..Rules::default()
        };
        assert_eq!(
            lifetimes(StatusCode::OK, &h(&lm), now(), &small).fresh_for,
            Duration::from_secs(10 * 86400)
        );
        assert_eq!(
            lifetimes(StatusCode::FOUND, &h(&lm), now(), &on).fresh_for,
            Duration::ZERO,
            "302 is not heuristically cacheable"
        );
    }

    #[test]
    fn negative_caching_and_operator_bounds() {
        let rules = Rules {
            negative_ttl: Duration::from_secs(30),
            min_ttl: Some(Duration::from_secs(3600)),
            max_ttl: Some(Duration::from_secs(86400)),
            ..Rules::default()
        };
        assert_eq!(
            lifetimes(
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                now(),
                &Rules {
                    negative_ttl: Duration::from_secs(30),
                    ..Rules::default()
                }
            )
            .fresh_for,
            Duration::from_secs(30)
        );
        assert_eq!(
            lifetimes(
                StatusCode::GONE,
                &h(&[("cache-control", "max-age=5")]),
                now(),
                &Rules {
                    negative_ttl: Duration::from_secs(30),
                    ..Rules::default()
                }
            )
            .fresh_for,
            Duration::from_secs(5),
            "explicit wins"
        );
        assert_eq!(
            lifetimes(
                StatusCode::OK,
                &h(&[("cache-control", "max-age=60")]),
                now(),
                &rules
            )
            .fresh_for,
            Duration::from_secs(3600),
            "raised to min_ttl"
        );
        assert_eq!(
            lifetimes(
                StatusCode::OK,
                &h(&[("cache-control", "max-age=31536000")]),
                now(),
                &rules
            )
            .fresh_for,
            Duration::from_secs(86400),
            "capped at max_ttl"
        );
        assert_eq!(
            lifetimes(
                StatusCode::OK,
                &h(&[("cache-control", "no-cache")]),
                now(),
                &rules
            )
            .fresh_for,
            Duration::ZERO,
            "min_ttl never overrides no-cache"
        );
    }
}

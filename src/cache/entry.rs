//! A stored answer, ready to serve: scrubbed headers and body, how the body is read, how
//! stale it is, and tamis's own ETag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::freshness::Lifetimes;
use super::key::VaryValues;

/// How a body tamis holds is to be read. Kept with the body, so that every answer built from
/// it (a hit, a 304 refresh, a stale or coalesced answer, HEAD, a range) says what the body
/// is as the fill decided, whatever headers come later (a 304 once turned an unrewritten body
/// into a stylesheet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendition {
    /// The upstream's bytes, which no browser may read as a stylesheet.
    AsSent,
    /// A stylesheet tamis rewrote (first-party URLs only), typed as tamis's own CSS.
    Stylesheet,
}

/// A stored response, ready to serve.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// Scrubbed headers, as served (without `Age`). Shared, as is `head`, by the entries made
    /// from one disk head ([`Entry::with_body`]).
    pub headers: Arc<HeaderMap>,
    /// What a whole answer from this entry carries, ready to clone: `headers` but
    /// `Content-Length` (hyper writes it from the body's length, which it knows, without a
    /// value to copy and drop; a HEAD answer adds it back), then the headers every answer ends
    /// with, as placeholders that each answer made from it replaces (or removes): `Age` (the
    /// answer from the store sets it), `X-Content-Type-Options` unless pass-through (final:
    /// the response step leaves it) and `Cache-Status` as a fresh hit's (the response step
    /// leaves it on a hit, sets or removes it otherwise). A hit then only replaces values in a copy of the right size, instead of adding
    /// names to one that must grow (a reallocation and a copy of every header).
    pub head: Arc<HeaderMap>,
    pub body: Bytes,
    /// Whether the body was rewritten, and as what.
    pub rendition: Rendition,
    /// The upstream's own validators, for revalidating with it.
    pub upstream_etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    /// The request values this variant answers (empty when the response has no Vary).
    pub vary: VaryValues,
    stored_at: Instant,
    /// Time it had spent in a cache before `stored_at`: zero for an answer this process stored,
    /// the wall-clock residence so far for one read back from the disk tier (a monotonic
    /// instant of another process, or of before a reboot, means nothing here).
    resident_before: Duration,
    pub lifetimes: Lifetimes,
    /// How long past its stale windows it is kept, so it can still be revalidated.
    keep: Duration,
    /// Whether tamis's own ETag and `nosniff` are on it (any route but a pass-through one).
    own_head: bool,
    weight: u32,
}

/// Where an entry stands at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Staleness {
    Fresh,
    /// Stale, but within stale-while-revalidate.
    WhileRevalidate,
    /// Stale: revalidate (or refetch) before use.
    Stale,
}

impl Entry {
    /// Builds an entry from scrubbed headers, body and lifetimes. With `own_head` (any route
    /// but a pass-through one), clients see an ETag derived from the bytes (the same for every
    /// visitor) instead of the upstream's, which could be a per-visitor identifier (on other
    /// statuses than 200, none), and `nosniff`.
    #[allow(clippy::too_many_arguments)] // Each is a fact of its own about the stored answer.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        rendition: Rendition,
        lifetimes: Lifetimes,
        vary: VaryValues,
        keep: Duration,
        own_head: bool,
    ) -> Entry {
        let upstream_etag = headers.get(header::ETAG).cloned();
        let last_modified = headers.get(header::LAST_MODIFIED).cloned();
        if own_head && status == StatusCode::OK {
            headers.insert(header::ETAG, content_etag(&body));
        } else if own_head {
            headers.remove(header::ETAG);
        }
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        // Header values parsed by hyper are slices of its connection read buffer: stored as
        // they are, each entry would pin a whole buffer. Stored entries own their bytes.
        Entry::assemble(
            status,
            owned(headers),
            body,
            rendition,
            (upstream_etag, last_modified),
            lifetimes,
            vary,
            keep,
            own_head,
            Duration::ZERO,
        )
    }

    /// An entry read back from the disk tier: its headers as stored (tamis's own ETag already
    /// in them), the upstream's validators apart, and the time it has been resident so far.
    /// Header values are kept as they come, not copied: those the disk tier decodes are slices
    /// of the record's own buffer, which holds that one record and whose body the entry keeps
    /// anyway, so they pin nothing more (a copy cost ~9.7 k instructions per disk hit).
    #[allow(clippy::too_many_arguments)] // Each is a fact of its own about the stored answer.
    pub fn restored(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        rendition: Rendition,
        validators: (Option<HeaderValue>, Option<HeaderValue>),
        lifetimes: Lifetimes,
        vary: VaryValues,
        keep: Duration,
        own_head: bool,
        resident: Duration,
    ) -> Entry {
        Entry::assemble(
            status, headers, body, rendition, validators, lifetimes, vary, keep, own_head, resident,
        )
    }

    /// This entry with `body` instead of its own, resident for `resident` so far: an object
    /// read again from the disk file whose head this entry was decoded from (the disk tier's
    /// heads). Its headers and head are shared, not built or copied again.
    pub(crate) fn with_body(&self, body: Bytes, resident: Duration) -> Entry {
        let weight = (self.weight as usize)
            .saturating_sub(self.body.len())
            .saturating_add(body.len());
        Entry {
            status: self.status,
            headers: self.headers.clone(),
            head: self.head.clone(),
            body,
            rendition: self.rendition,
            upstream_etag: self.upstream_etag.clone(),
            last_modified: self.last_modified.clone(),
            vary: self.vary.clone(),
            stored_at: Instant::now(),
            resident_before: resident,
            lifetimes: self.lifetimes,
            keep: self.keep,
            own_head: self.own_head,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Builds the entry around `headers`, whose values must own their bytes or be slices of a
    /// buffer the entry may pin (see [`Entry::new`], [`Entry::restored`]).
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        rendition: Rendition,
        (upstream_etag, last_modified): (Option<HeaderValue>, Option<HeaderValue>),
        lifetimes: Lifetimes,
        vary: VaryValues,
        keep: Duration,
        own_head: bool,
        resident_before: Duration,
    ) -> Entry {
        let mut head = HeaderMap::with_capacity(headers.len() + 3);
        for (name, value) in &headers {
            if name != header::CONTENT_LENGTH {
                head.append(name.clone(), value.clone());
            }
        }
        head.insert(header::AGE, HeaderValue::from_static("0"));
        if own_head {
            head.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
        }
        head.insert(CACHE_STATUS, CACHE_STATUS_HIT);
        let header_bytes: usize = headers
            .iter()
            .chain(head.iter())
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        // Fixed overhead per entry (key, struct, moka bookkeeping), roughly.
        let weight = body.len() + header_bytes + 256;
        Entry {
            status,
            headers: Arc::new(headers),
            head: Arc::new(head),
            body,
            rendition,
            upstream_etag,
            last_modified,
            vary,
            stored_at: Instant::now(),
            resident_before,
            lifetimes,
            keep,
            own_head,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Fresh, stale within stale-while-revalidate, or stale.
    pub fn staleness(&self, now: Instant) -> Staleness {
        let resident = self.resident(now);
        if resident < self.lifetimes.fresh_for {
            Staleness::Fresh
        } else if resident - self.lifetimes.fresh_for <= self.lifetimes.stale_while_revalidate
            && !self.lifetimes.stale_while_revalidate.is_zero()
        {
            Staleness::WhileRevalidate
        } else {
            Staleness::Stale
        }
    }

    /// Whether it may stand in for a failed upstream (stale-if-error).
    pub fn usable_on_error(&self, now: Instant) -> bool {
        let resident = self.resident(now);
        !self.lifetimes.must_revalidate
            && resident.saturating_sub(self.lifetimes.fresh_for) <= self.lifetimes.stale_if_error
            && !self.lifetimes.stale_if_error.is_zero()
    }

    /// Whether tamis can ask the upstream "has it changed?" instead of refetching.
    pub fn can_revalidate(&self) -> bool {
        self.upstream_etag.is_some() || self.last_modified.is_some()
    }

    /// The `Age` to send, in seconds.
    pub fn age(&self, now: Instant) -> u64 {
        (self.lifetimes.age + self.resident(now)).as_secs()
    }

    /// The `Age` header for [`age`](Self::age) (see [`age_value`]).
    pub fn age_value(&self, now: Instant) -> HeaderValue {
        age_value(self.age(now))
    }

    /// How long it has been in a cache (this process's or, before, the disk tier's).
    pub fn resident(&self, now: Instant) -> Duration {
        self.resident_before + now.saturating_duration_since(self.stored_at)
    }

    /// Whether tamis's own ETag and `nosniff` are on it.
    pub fn own_head(&self) -> bool {
        self.own_head
    }

    /// How long past its stale windows it is kept for revalidation (`cache.keep`).
    pub fn keep_for_revalidation(&self) -> Duration {
        self.keep
    }

    /// Bytes it counts for against `max_bytes`.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether this variant answers a request with these (scrubbed) headers.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    /// How long the store keeps it from now on (less the time it was resident before).
    pub(super) fn time_to_keep(&self) -> Duration {
        self.keep_in_all().saturating_sub(self.resident_before)
    }

    /// How long a store keeps it, counted from when it was first stored.
    pub fn keep_in_all(&self) -> Duration {
        let l = &self.lifetimes;
        let mut extra = l.stale_while_revalidate.max(l.stale_if_error);
        if self.can_revalidate() {
            extra = extra.max(self.keep);
        }
        l.fresh_for + extra
    }
}

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `Cache-Status` of a fresh hit, which an entry's prepared head holds: a hit that says it
/// (the operator wants the header) has nothing to set.
pub const CACHE_STATUS_HIT: HeaderValue = HeaderValue::from_static("tamis; hit");

/// `Age` values below this are slices of [`AGE_DIGITS`]: a hit's `Age` costs no allocation
/// (and no formatting) for the first 2 h 46 min of an entry's life.
const STATIC_AGES: usize = 10_000;

/// The decimal numbers 0 to `STATIC_AGES - 1`, written one after the other ("012…99100…").
static AGE_DIGITS: [u8; age_digits_len()] = age_digits();

const fn age_digits_len() -> usize {
    10 + 90 * 2 + 900 * 3 + 9_000 * 4
}

const fn age_digits() -> [u8; age_digits_len()] {
    let mut out = [0u8; age_digits_len()];
    let (mut n, mut at) = (0, 0);
    while n < STATIC_AGES {
        let width = digits_start_width(n).1;
        let (mut i, mut v) = (width, n);
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        n += 1;
    }
    out
}

/// Where `n` (below `STATIC_AGES`) starts in [`AGE_DIGITS`], and how many digits it has.
const fn digits_start_width(n: usize) -> (usize, usize) {
    match n {
        0..=9 => (n, 1),
        10..=99 => (10 + (n - 10) * 2, 2),
        100..=999 => (190 + (n - 100) * 3, 3),
        _ => (2_890 + (n - 1_000) * 4, 4),
    }
}

/// An `Age` header value: a static slice for the common ages, formatted beyond.
pub fn age_value(secs: u64) -> HeaderValue {
    if let Some(n) = usize::try_from(secs).ok().filter(|&n| n < STATIC_AGES) {
        let (start, width) = digits_start_width(n);
        let digits = Bytes::from_static(&AGE_DIGITS[start..start + width]);
        if let Ok(v) = HeaderValue::from_maybe_shared(digits) {
            return v;
        }
    }
    HeaderValue::from(secs)
}

/// A copy of `headers` whose values own their bytes.
fn owned(headers: HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut last = None;
    for (name, value) in headers {
        if let Some(n) = name {
            last = Some(n);
        }
        if let Some(n) = &last {
            let copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or(value);
            out.append(n.clone(), copy);
        }
    }
    out
}

/// A strong validator derived from the bytes: identical for every visitor, so it can never
/// serve as a per-visitor identifier.
pub fn content_etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let mut s = String::with_capacity(36);
    s.push_str("\"t-");
    for b in &digest[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("\"t\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_etag_is_derived_from_the_bytes() {
        let a = content_etag(b"hello");
        assert_eq!(a, content_etag(b"hello"));
        assert_ne!(a, content_etag(b"hello!"));
        assert!(a.to_str().unwrap().starts_with("\"t-"));
    }

    /// Headers whose values are slices of `buf` (as hyper's, or a disk record's, are).
    fn sliced(buf: &Bytes) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_maybe_shared(buf.slice(0..9)).unwrap(),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_maybe_shared(buf.slice(10..22)).unwrap(),
        );
        h
    }

    fn inside(v: &HeaderValue, buf: &Bytes) -> bool {
        let (p, b) = (v.as_bytes().as_ptr() as usize, buf.as_ptr() as usize);
        p >= b && p + v.len() <= b + buf.len()
    }

    #[test]
    fn a_stored_answer_copies_its_values_and_a_restored_one_keeps_them() {
        let buf = Bytes::from(format!("image/png max-age=3600 {}", "x".repeat(16 << 10)));
        let keep = Duration::from_secs(60);
        let stored = Entry::new(
            StatusCode::OK,
            sliced(&buf),
            Bytes::from_static(b"png"),
            Rendition::AsSent,
            Lifetimes::default(),
            VaryValues::new(),
            keep,
            true,
        );
        // An answer from an upstream must not pin the connection's read buffer.
        for v in stored.headers.values().chain(stored.head.values()) {
            assert!(!inside(v, &buf), "{v:?} pins the read buffer");
        }
        assert_eq!(stored.headers[header::CACHE_CONTROL], "max-age=3600");
        let restored = Entry::restored(
            StatusCode::OK,
            sliced(&buf),
            Bytes::from_static(b"png"),
            Rendition::AsSent,
            (None, None),
            Lifetimes::default(),
            VaryValues::new(),
            keep,
            true,
            Duration::ZERO,
        );
        // One read back from disk: its values stay in the record's buffer, uncopied.
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            assert!(inside(&restored.headers[&name], &buf), "{name} copied");
            assert!(inside(&restored.head[&name], &buf), "{name} copied");
        }
        assert_eq!(restored.head[header::CONTENT_TYPE], "image/png");
    }

    #[test]
    fn static_ages_are_the_decimal_numbers() {
        for n in (0..12_000).chain([u64::MAX]) {
            assert_eq!(age_value(n), HeaderValue::from(n), "{n}");
        }
    }
}

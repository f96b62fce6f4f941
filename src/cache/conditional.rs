//! Answering a browser from a stored response: its conditional requests (against tamis's own
//! validator, never forwarded) and single byte ranges (RFC 9110 §13, §14).

use std::ops::Range;

use http::{header, HeaderMap, HeaderValue};

/// How to answer a GET or HEAD from a stored 200.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAnswer {
    /// The whole representation.
    Full,
    /// 304 Not Modified.
    NotModified,
    /// 206 with this byte range.
    Partial(Range<u64>),
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// The opaque part of an entity tag, and whether it is weak.
fn parse_etag(tag: &str) -> Option<(bool, &str)> {
    let tag = tag.trim();
    let (weak, rest) = match tag.strip_prefix("W/") {
        Some(r) => (true, r),
        None => (false, tag),
    };
    (rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"')).then_some((weak, rest))
}

/// If-None-Match uses weak comparison (RFC 9110 §13.1.2).
fn none_match(header_value: &str, etag: &str) -> bool {
    let Some((_, ours)) = parse_etag(etag) else {
        return false;
    };
    header_value.split(',').any(|candidate| {
        let c = candidate.trim();
        c == "*" || parse_etag(c).is_some_and(|(_, theirs)| theirs == ours)
    })
}

fn date(v: &HeaderValue) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// Decides the answer. `etag` and `last_modified` are the validators shown to clients; `len`
/// is the body length; ranges are considered only when `ranges` is true (a stored 200 to GET).
pub fn evaluate(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
    len: u64,
    ranges: bool,
) -> ClientAnswer {
    let etag = etag.and_then(|e| e.to_str().ok());
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        // When If-None-Match is present, If-Modified-Since is ignored (§13.2.2).
        if let (Some(etag), Ok(inm)) = (etag, inm.to_str()) {
            if none_match(inm, etag) {
                return ClientAnswer::NotModified;
            }
        }
    } else if let (Some(ims), Some(lm)) = (request.get(header::IF_MODIFIED_SINCE), last_modified) {
        if let (Some(ims), Some(lm)) = (date(ims), date(lm)) {
            if lm <= ims {
                return ClientAnswer::NotModified;
            }
        }
    }
    if !ranges {
        return ClientAnswer::Full;
    }
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return ClientAnswer::Full;
    };
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let holds = match parse_etag(if_range) {
            // An entity tag must match strongly.
            Some((false, theirs)) => etag
                .and_then(parse_etag)
                .is_some_and(|(weak, ours)| !weak && ours == theirs),
            Some((true, _)) => false,
            None => last_modified
                .and_then(|lm| lm.to_str().ok())
                .is_some_and(|lm| lm.trim() == if_range.trim()),
        };
        if !holds {
            return ClientAnswer::Full;
        }
    }
    match parse_range(range, len) {
        Some(Ok(r)) => ClientAnswer::Partial(r),
        Some(Err(())) => ClientAnswer::Unsatisfiable,
        None => ClientAnswer::Full,
    }
}

/// One `bytes=` range against `len`: `None` to ignore the header (not bytes, several ranges,
/// bad syntax), `Err` when it cannot be satisfied.
pub fn parse_range(value: &str, len: u64) -> Option<Result<Range<u64>, ()>> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if first.is_empty() {
        let suffix = num(last)?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok(len - suffix.min(len)..len));
    }
    let start = num(first)?;
    let end = if last.is_empty() {
        len.saturating_sub(1)
    } else {
        let end = num(last)?;
        if end < start {
            return None;
        }
        end.min(len.saturating_sub(1))
    };
    if start >= len {
        return Some(Err(()));
    }
    Some(Ok(start..end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const ETAG: &str = "\"t-abc\"";
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

    fn eval(pairs: &[(&'static str, &'static str)]) -> ClientAnswer {
        evaluate(
            &req(pairs),
            Some(&HeaderValue::from_static(ETAG)),
            Some(&HeaderValue::from_static(LM)),
            100,
            true,
        )
    }

    #[test]
    fn if_none_match() {
        assert_eq!(
            eval(&[("if-none-match", "\"t-abc\"")]),
            ClientAnswer::NotModified
        );
        assert_eq!(
            eval(&[("if-none-match", "\"x\", W/\"t-abc\"")]),
            ClientAnswer::NotModified
        );
        assert_eq!(eval(&[("if-none-match", "*")]), ClientAnswer::NotModified);
        assert_eq!(
            eval(&[("if-none-match", "\"supercookie\"")]),
            ClientAnswer::Full
        );
        assert_eq!(
            eval(&[
                ("if-none-match", "\"other\""),
                ("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")
            ]),
            ClientAnswer::Full,
            "If-Modified-Since is ignored when If-None-Match is present"
        );
    }

    #[test]
    fn if_modified_since() {
        assert_eq!(
            eval(&[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")]),
            ClientAnswer::NotModified
        );
        assert_eq!(
            eval(&[("if-modified-since", LM)]),
            ClientAnswer::NotModified
        );
        assert_eq!(
            eval(&[("if-modified-since", "Sun, 01 Jan 2023 00:00:00 GMT")]),
            ClientAnswer::Full
        );
        assert_eq!(
            eval(&[("if-modified-since", "yesterday")]),
            ClientAnswer::Full
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(
            eval(&[("range", "bytes=0-9")]),
            ClientAnswer::Partial(0..10)
        );
        assert_eq!(
            eval(&[("range", "bytes=90-")]),
            ClientAnswer::Partial(90..100)
        );
        assert_eq!(
            eval(&[("range", "bytes=-10")]),
            ClientAnswer::Partial(90..100)
        );
        assert_eq!(
            eval(&[("range", "bytes=-1000")]),
            ClientAnswer::Partial(0..100)
        );
        assert_eq!(
            eval(&[("range", "bytes=50-5000")]),
            ClientAnswer::Partial(50..100)
        );
        assert_eq!(
            eval(&[("range", "bytes=100-")]),
            ClientAnswer::Unsatisfiable
        );
        assert_eq!(eval(&[("range", "bytes=-0")]), ClientAnswer::Unsatisfiable);
        assert_eq!(
            eval(&[("range", "bytes=0-1,5-6")]),
            ClientAnswer::Full,
            "several ranges: whole body"
        );
        assert_eq!(eval(&[("range", "bytes=9-1")]), ClientAnswer::Full);
        assert_eq!(eval(&[("range", "items=0-1")]), ClientAnswer::Full);
        assert_eq!(eval(&[("range", "bytes=a-b")]), ClientAnswer::Full);
    }

    #[test]
    fn if_range() {
        assert_eq!(
            eval(&[("range", "bytes=0-9"), ("if-range", "\"t-abc\"")]),
            ClientAnswer::Partial(0..10)
        );
        assert_eq!(
            eval(&[("range", "bytes=0-9"), ("if-range", "\"old\"")]),
            ClientAnswer::Full
        );
        assert_eq!(
            eval(&[("range", "bytes=0-9"), ("if-range", "W/\"t-abc\"")]),
            ClientAnswer::Full
        );
        assert_eq!(
            eval(&[("range", "bytes=0-9"), ("if-range", LM)]),
            ClientAnswer::Partial(0..10)
        );
        assert_eq!(
            eval(&[
                ("range", "bytes=0-9"),
                ("if-range", "Sun, 01 Jan 2023 00:00:00 GMT")
            ]),
            ClientAnswer::Full
        );
    }

    #[test]
    fn no_ranges_on_head_or_non_200() {
        let a = evaluate(&req(&[("range", "bytes=0-9")]), None, None, 100, false);
        assert_eq!(a, ClientAnswer::Full);
    }
}

//! Query strings and form bodies: read strictly (bad percent-encoding, non-UTF-8 text and
//! parameter floods are errors, not guesses) and written back.

use super::{ScrubError, MAX_PARAMS};

/// Parses a query string or form body strictly: bad percent-encoding and parameter floods are
/// errors, not guesses.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, ScrubError> {
    let q = q.strip_prefix('?').unwrap_or(q);
    if q.is_empty() {
        return Ok(Vec::new());
    }
    let b = q.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(ScrubError::Encoding);
        }
    }
    if q.split('&').count() > MAX_PARAMS {
        return Err(ScrubError::TooManyParameters);
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // A decoded value that is not UTF-8 comes back with replacement characters: refuse it.
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err(ScrubError::Encoding);
    }
    Ok(pairs)
}

/// One `key=value` pair of a query string: its raw text, and its key and value decoded
/// (borrowed when there is nothing to decode).
pub struct Pair<'a> {
    pub raw: &'a str,
    pub key: std::borrow::Cow<'a, str>,
    pub value: std::borrow::Cow<'a, str>,
}

fn decode(s: &str) -> Result<std::borrow::Cow<'_, str>, ScrubError> {
    if !s.contains(['%', '+']) {
        return Ok(std::borrow::Cow::Borrowed(s));
    }
    let spaced = s.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| ScrubError::Encoding)?;
    Ok(std::borrow::Cow::Owned(decoded.into_owned()))
}

/// Splits a query string into pairs without copying what needs no decoding; as strict as
/// [`parse_query`] (bad percent-encoding, non-UTF-8 values and floods are errors).
pub fn raw_pairs(q: &str) -> Result<Vec<Pair<'_>>, ScrubError> {
    let q = q.strip_prefix('?').unwrap_or(q);
    let b = q.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(ScrubError::Encoding);
        }
    }
    let mut out = Vec::with_capacity(q.bytes().filter(|&c| c == b'&').count() + 1);
    for raw in q.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(ScrubError::TooManyParameters);
        }
        let (k, v) = raw.split_once('=').unwrap_or((raw, ""));
        out.push(Pair {
            raw,
            key: decode(k)?,
            value: decode(v)?,
        });
    }
    Ok(out)
}

/// Appends `key=value` (value form-encoded) to a query string being built.
pub fn push_pair(out: &mut String, raw_key: &str, value: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(raw_key);
    out.push('=');
    out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
}

/// Appends a pair as it came.
pub fn push_raw(out: &mut String, raw: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(raw);
}

/// Serialises parameters back into a query string.
pub fn to_query(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_query_parsing() {
        assert_eq!(
            parse_query("?a=1&b=x%20y").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x y".into())]
        );
        assert_eq!(parse_query("a=%zz"), Err(ScrubError::Encoding));
        assert_eq!(parse_query("a=%2"), Err(ScrubError::Encoding));
        assert_eq!(parse_query("a=%ff%fe"), Err(ScrubError::Encoding));
        let flood = vec!["x=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(parse_query(&flood), Err(ScrubError::TooManyParameters));
    }
}

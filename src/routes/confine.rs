//! Path confinement: the part of a visitor's path after the route prefix is appended to the
//! upstream base and can never leave it. The upstream's scheme and host always come from the
//! config, never from the request.

use http::uri::PathAndQuery;
use http::Uri;

use crate::config::UpstreamBase;

/// Why a visitor's path was refused (answered 400, nothing sent upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Confinement {
    #[error("'.' or '..' path segment")]
    DotSegment,
    #[error("encoded '/' or '\\' in a path segment")]
    EncodedSeparator,
    #[error("backslash in the path")]
    Backslash,
    #[error("empty path segment")]
    EmptySegment,
    #[error("control character in the path")]
    ControlCharacter,
    #[error("invalid percent-encoding")]
    BadPercentEncoding,
    #[error("raw '?' or '#' in the path")]
    RawDelimiter,
    #[error("invalid URL")]
    InvalidUrl,
}

/// Checks one raw (still percent-encoded) path segment.
fn check_segment(raw: &str) -> Result<(), Confinement> {
    if raw.contains('\\') {
        return Err(Confinement::Backslash);
    }
    // The path given here is appended as is: a raw '#' would end it there for the upstream
    // (`..#x` leaves `base/..`, a dot segment after all), a raw '?' would start a query the
    // route may not forward. hyper never hands one over (they end the path of a request
    // target), so this only guards callers that pass a path they did not split themselves.
    if raw.contains(['?', '#']) {
        return Err(Confinement::RawDelimiter);
    }
    // Percent-decoded on the fly, without allocating: this runs for every request.
    let bytes = raw.as_bytes();
    let (mut separator, mut control) = (false, false);
    let (mut len, mut dots) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let b = if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(Confinement::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Confinement::BadPercentEncoding)?;
            i += 3;
            u8::from_str_radix(hex, 16).map_err(|_| Confinement::BadPercentEncoding)?
        } else {
            i += 1;
            bytes[i - 1]
        };
        separator |= b == b'/' || b == b'\\';
        control |= b < 0x20 || b == 0x7f;
        len += 1;
        dots += usize::from(b == b'.');
    }
    if separator {
        return Err(Confinement::EncodedSeparator);
    }
    if control {
        return Err(Confinement::ControlCharacter);
    }
    // "." or "..", however encoded.
    if (1..=2).contains(&len) && dots == len {
        return Err(Confinement::DotSegment);
    }
    Ok(())
}

/// Checks the path after the prefix: plain segments only; the last may be empty (`dir/`).
pub fn check_rest(rest: &str) -> Result<(), Confinement> {
    // Most paths are letters, digits, dots and a few marks, which only an empty or a dot
    // segment can make wrong: one pass over the bytes decides those (the split, the searches
    // and the decoding below were ~200 instructions for a one-letter path).
    match check_plain_rest(rest.as_bytes()) {
        Some(verdict) => verdict,
        None => check_rest_segments(rest),
    }
}

/// Bytes that no check of [`check_segment`] but the dot-segment one can refuse: no `%`
/// (nothing decodes), no backslash, `?`, `#` and no control character.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let marks = b"-._~!$&'()*+,;=:@";
    let mut i = 0;
    while i < marks.len() {
        t[marks[i] as usize] = true;
        i += 1;
    }
    t
};

/// [`check_rest_segments`]' verdict for a path of [`PLAIN`] bytes and `/` alone, segment by
/// segment in the same order (so the same first refusal); `None` for any other path.
fn check_plain_rest(rest: &[u8]) -> Option<Result<(), Confinement>> {
    let dot_segment = |len: usize, dots: usize| (1..=2).contains(&len) && dots == len;
    let (mut len, mut dots) = (0usize, 0usize);
    for &b in rest {
        if b == b'/' {
            // The end of a segment that is not the last.
            if len == 0 {
                return Some(Err(Confinement::EmptySegment));
            }
            if dot_segment(len, dots) {
                return Some(Err(Confinement::DotSegment));
            }
            (len, dots) = (0, 0);
        } else if PLAIN[usize::from(b)] {
            len += 1;
            dots += usize::from(b == b'.');
        } else {
            return None;
        }
    }
    // The last segment may be empty.
    if dot_segment(len, dots) {
        return Some(Err(Confinement::DotSegment));
    }
    Some(Ok(()))
}

/// [`check_rest`] segment by segment, for any path.
fn check_rest_segments(rest: &str) -> Result<(), Confinement> {
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            // Only the last segment may be empty (`dir/`); `//host`, `a//b` and a leading `/`
            // would all put an empty segment earlier.
            if last {
                continue;
            }
            return Err(Confinement::EmptySegment);
        }
        check_segment(seg)?;
    }
    Ok(())
}

/// Builds the upstream URL for `rest` (the path after the prefix, raw) and an optional query.
pub fn upstream_uri(
    base: &UpstreamBase,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, Confinement> {
    check_rest(rest)?;
    let mut pq =
        String::with_capacity(base.path.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(&base.path);
    pq.push_str(rest);
    if let Some(q) = query {
        check_query(q)?;
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq).map_err(|_| Confinement::InvalidUrl)?;
    at_base(base, pq)
}

/// [`upstream_uri`] when the base's path is the route's prefix, given the visitor's own
/// parsed path and query `target` (the prefix, then `rest`, then `?query` when there is one):
/// the same checks, and the same URL, whose path and query are then `target`'s bytes, shared
/// instead of written out and parsed again.
pub fn upstream_uri_mounted(
    base: &UpstreamBase,
    rest: &str,
    query: Option<&str>,
    target: &PathAndQuery,
) -> Result<Uri, Confinement> {
    check_rest(rest)?;
    if let Some(q) = query {
        check_query(q)?;
    }
    at_base(base, target.clone())
}

/// A query the upstream URL may carry: no control characters, no fragment.
fn check_query(q: &str) -> Result<(), Confinement> {
    if q.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'#') {
        return Err(Confinement::InvalidUrl);
    }
    Ok(())
}

/// The base's scheme and authority before `pq`.
fn at_base(base: &UpstreamBase, pq: PathAndQuery) -> Result<Uri, Confinement> {
    // From its parts, not through `Uri::builder`, which moves the parts along at each step.
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(base.scheme.clone());
    parts.authority = Some(base.authority.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| Confinement::InvalidUrl)
}

/// Where an upstream redirect points, seen from the visitor.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// Inside the upstream base: the first-party path to send the visitor to.
    FirstParty(String),
    /// Anywhere else: never handed to the visitor (it would send the browser to a third party).
    Outside,
}

/// Maps an upstream `Location` back under the route prefix, resolving it against the URL that
/// was requested upstream.
pub fn map_location(
    base: &UpstreamBase,
    prefix: &str,
    requested: &Uri,
    location: &str,
) -> Redirect {
    map_location_at(base, prefix, requested.path(), location)
}

/// [`map_location`], given only the path that was requested upstream.
pub fn map_location_at(
    base: &UpstreamBase,
    prefix: &str,
    requested_path: &str,
    location: &str,
) -> Redirect {
    let loc = location.trim();
    if loc.contains('\\') || loc.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Redirect::Outside;
    }
    let loc = loc.split('#').next().unwrap_or("");
    // Absolute or scheme-relative: it must name the upstream's own scheme and host.
    let path_and_query = if let Some(after) = strip_scheme(loc) {
        let (scheme, rest) = after;
        if !scheme.eq_ignore_ascii_case(base.scheme.as_str()) {
            return Redirect::Outside;
        }
        match strip_authority(rest, base) {
            Some(pq) => pq.to_owned(),
            None => return Redirect::Outside,
        }
    } else if loc.starts_with("//") {
        match strip_authority(loc, base) {
            Some(pq) => pq.to_owned(),
            None => return Redirect::Outside,
        }
    } else if loc.starts_with('/') {
        loc.to_owned()
    } else {
        // Relative reference: resolve against the requested path's directory.
        let req_path = requested_path;
        let dir = &req_path[..req_path.rfind('/').map_or(0, |i| i + 1)];
        if loc.starts_with('?') {
            format!("{req_path}{loc}")
        } else {
            format!("{dir}{loc}")
        }
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query.as_str(), None),
    };
    let path = remove_dot_segments(path);
    let Some(rest) = path.strip_prefix(base.path.as_str()) else {
        return Redirect::Outside;
    };
    if check_rest(rest).is_err() {
        return Redirect::Outside;
    }
    let mut out = format!("{prefix}{rest}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Redirect::FirstParty(out)
}

/// Splits `scheme:rest` when `loc` starts with a URL scheme.
fn strip_scheme(loc: &str) -> Option<(&str, &str)> {
    let colon = loc.find(':')?;
    let scheme = &loc[..colon];
    let valid = !scheme.is_empty()
        && scheme.as_bytes()[0].is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    valid.then(|| (scheme, &loc[colon + 1..]))
}

/// For `//authority/path`, returns `/path` when the authority is the upstream's.
fn strip_authority<'a>(rest: &'a str, base: &UpstreamBase) -> Option<&'a str> {
    let rest = rest.strip_prefix("//")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let default_port = if base.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    let same_host = authority.eq_ignore_ascii_case(base.authority.as_str())
        || (base.authority.port_u16().is_none()
            && authority
                .eq_ignore_ascii_case(&format!("{}:{default_port}", base.authority.host())));
    if !same_host {
        return None;
    }
    let pq = &rest[end..];
    if pq.is_empty() {
        Some("/")
    } else if pq.starts_with('?') {
        // `//host?q` means path `/` with a query: treat as outside the base unless base is `/`.
        (base.path == "/").then_some(pq)
    } else {
        Some(pq)
    }
}

/// RFC 3986 §5.2.4, on a path that has no query.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..");
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_path_shortcut_agrees_with_the_segment_checks() {
        // Every path up to five bytes over an alphabet that reaches each refusal.
        let alphabet = [
            b'a', b'.', b'/', b'%', b'2', b'e', b'f', b'\\', b'?', b'~', 0x01,
        ];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for p in &paths {
                for &b in &alphabet {
                    let mut q = p.clone();
                    q.push(b);
                    longer.push(q);
                }
            }
            for p in &longer {
                let text = std::str::from_utf8(p).unwrap();
                assert_eq!(check_rest(text), check_rest_segments(text), "{text:?}");
                checked += 1;
            }
            paths = longer;
        }
        assert!(checked > 100_000);
        for text in [
            "",
            "a",
            "a/",
            "a.js",
            "@scope/pkg@1.2.3/x.min.js",
            "..",
            "a/../b",
            "./a",
        ] {
            assert_eq!(check_rest(text), check_rest_segments(text), "{text:?}");
        }
    }

    use crate::config::parse_upstream;

    fn base() -> UpstreamBase {
        parse_upstream("https://cdn.example/npm/").unwrap()
    }

    #[test]
    fn plain_paths_are_appended_to_the_base() {
        let u = upstream_uri(&base(), "jquery@3.7.1/dist/jquery.min.js", None).unwrap();
        assert_eq!(
            u.to_string(),
            "https://cdn.example/npm/jquery@3.7.1/dist/jquery.min.js"
        );
        let u = upstream_uri(&base(), "@fontsource/roboto/", Some("v=1")).unwrap();
        assert_eq!(
            u.to_string(),
            "https://cdn.example/npm/@fontsource/roboto/?v=1"
        );
        assert_eq!(
            upstream_uri(&base(), "", None).unwrap().to_string(),
            "https://cdn.example/npm/"
        );
    }

    #[test]
    fn at_signs_stay_in_the_path() {
        let u = upstream_uri(&base(), "@evil.example/x", None).unwrap();
        assert_eq!(u.host(), Some("cdn.example"));
        assert_eq!(u.path(), "/npm/@evil.example/x");
    }

    #[test]
    fn escapes_are_refused() {
        for (rest, why) in [
            ("../secret", Confinement::DotSegment),
            ("a/../../secret", Confinement::DotSegment),
            ("%2e%2e/secret", Confinement::DotSegment),
            ("%2E%2e/secret", Confinement::DotSegment),
            (".%2e/secret", Confinement::DotSegment),
            ("a/./b", Confinement::DotSegment),
            ("a%2fb", Confinement::EncodedSeparator),
            ("a%2F..%2Fb", Confinement::EncodedSeparator),
            ("a%5cb", Confinement::EncodedSeparator),
            ("a\\b", Confinement::Backslash),
            ("/evil.example/x", Confinement::EmptySegment),
            ("a//b", Confinement::EmptySegment),
            ("a%00b", Confinement::ControlCharacter),
            ("a%0d%0ab", Confinement::ControlCharacter),
            ("a%zz", Confinement::BadPercentEncoding),
            ("a%2", Confinement::BadPercentEncoding),
        ] {
            assert_eq!(upstream_uri(&base(), rest, None), Err(why), "{rest}");
        }
    }

    #[test]
    fn raw_fragment_and_query_delimiters_are_refused() {
        // `..#x` would send `/npm/..`; `x?a=1` a query on a route that forwards none.
        for rest in ["..#x", "a/#/b", "x?a=1", "a?/../../b", "#", "?"] {
            assert_eq!(
                upstream_uri(&base(), rest, None),
                Err(Confinement::RawDelimiter),
                "{rest}"
            );
            assert_eq!(check_rest(rest), Err(Confinement::RawDelimiter), "{rest}");
        }
        // Encoded, they are plain characters of a segment.
        assert_eq!(
            upstream_uri(&base(), "a%23b%3Fc", None)
                .unwrap()
                .to_string(),
            "https://cdn.example/npm/a%23b%3Fc"
        );
    }

    #[test]
    fn the_host_never_changes() {
        for rest in ["x", "@a.b/c", "a:b@c/d", "x%40y"] {
            if let Ok(u) = upstream_uri(&base(), rest, Some("url=https://evil.example/")) {
                assert_eq!(u.authority().unwrap().as_str(), "cdn.example", "{rest}");
                assert!(u.path().starts_with("/npm/"), "{rest}");
            }
        }
    }

    #[test]
    fn locations_inside_the_base_map_back() {
        let req: Uri = "https://cdn.example/npm/jquery/dist/x.js".parse().unwrap();
        let m = |loc| map_location(&base(), "/cdn/", &req, loc);
        assert_eq!(
            m("https://cdn.example/npm/jquery@3/dist/x.js"),
            Redirect::FirstParty("/cdn/jquery@3/dist/x.js".into())
        );
        assert_eq!(
            m("HTTPS://CDN.EXAMPLE:443/npm/a?b=c"),
            Redirect::FirstParty("/cdn/a?b=c".into())
        );
        assert_eq!(
            m("//cdn.example/npm/a"),
            Redirect::FirstParty("/cdn/a".into())
        );
        assert_eq!(m("/npm/b/"), Redirect::FirstParty("/cdn/b/".into()));
        assert_eq!(
            m("y.js"),
            Redirect::FirstParty("/cdn/jquery/dist/y.js".into())
        );
        assert_eq!(
            m("../y.js"),
            Redirect::FirstParty("/cdn/jquery/y.js".into())
        );
        assert_eq!(
            m("?v=2"),
            Redirect::FirstParty("/cdn/jquery/dist/x.js?v=2".into())
        );
    }

    #[test]
    fn locations_outside_the_base_are_refused() {
        let req: Uri = "https://cdn.example/npm/jquery/x.js".parse().unwrap();
        let m = |loc| map_location(&base(), "/cdn/", &req, loc);
        for loc in [
            "https://evil.example/npm/a",
            "http://cdn.example/npm/a",
            "//evil.example/npm/a",
            "/other/a",
            "../../other",
            "https://cdn.example.evil.example/npm/a",
            "https://cdn.example@evil.example/npm/a",
            "/\\evil.example/",
            "javascript:alert(1)",
            "/npm/a%2f..%2f..%2fb",
        ] {
            assert_eq!(m(loc), Redirect::Outside, "{loc}");
        }
    }

    #[test]
    fn dot_segment_removal() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/./b/"), "/a/b/");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
        assert_eq!(remove_dot_segments("/a/.."), "/");
    }
}

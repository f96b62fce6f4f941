//! The URLs a tracker reports (page, referrer) read as a browser reads them and reduced to what
//! may leave, and a language tag reduced to its primary subtag.

use std::borrow::Cow;

use super::query::{parse_query, to_query};

/// An absolute http(s) URL read as a whole, the way a browser reads it: the scheme at the very
/// start, then `//`, the authority up to the first `/`, `?` or `#`, then the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbsoluteUrl<'a> {
    /// `http` or `https`, in the case it was written.
    pub scheme: &'a str,
    /// The authority without user information: `host[:port]`.
    pub host_port: &'a str,
    /// The host alone.
    pub host: &'a str,
    /// Path, query and fragment (empty, or starting with `/`, `?` or `#`).
    pub rest: &'a str,
}

impl AbsoluteUrl<'_> {
    /// Scheme, host and port, then `rest` (the user information left out).
    fn with_rest(&self, rest: &str) -> String {
        let mut s =
            String::with_capacity(self.scheme.len() + 3 + self.host_port.len() + rest.len());
        s.push_str(self.scheme);
        s.push_str("://");
        s.push_str(self.host_port);
        s.push_str(rest);
        s
    }
}

/// Reads `url` as an absolute http(s) URL; `None` when it is not one, or when its authority is
/// anything but `[userinfo@]host[:port]` with a plain host (ASCII letters, digits, `-._~`, or
/// a bracketed IPv6 address). Strict on purpose: where a browser and this reading could
/// disagree on the host (a backslash, whitespace or a control character in the authority,
/// percent-encoding, text before the scheme), the URL is not read at all, so a rule that
/// judges it by its host drops it rather than keeping something it misread.
pub fn parse_absolute(url: &str) -> Option<AbsoluteUrl<'_>> {
    let starts = |p: &str| {
        url.get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    let scheme_len = if starts("https://") {
        5
    } else if starts("http://") {
        4
    } else {
        return None;
    };
    // A URL a browser reports (location, referrer) has no raw whitespace or control: text
    // around one (`https://site/ alice@mail.example`) is not a URL.
    if !no_whitespace(url) {
        return None;
    }
    let after = &url[scheme_len + 3..];
    // One pass over the authority (a byte loop: `find` with a set of chars, `contains` and
    // `rsplit_once` each set up a searcher, which cost more than these few bytes): where it
    // ends, its last '@', and whether it holds a backslash.
    let mut end = after.len();
    let mut last_at = None;
    for (i, b) in after.bytes().enumerate() {
        match b {
            b'/' | b'?' | b'#' => {
                end = i;
                break;
            }
            // A backslash ends the authority for a browser (it reads it as '/'): this reading
            // would differ from a browser's.
            b'\\' => return None,
            b'@' => last_at = Some(i),
            _ => {}
        }
    }
    let (authority, rest) = after.split_at(end);
    // User information runs to the last '@' (as WHATWG reads it): it is never kept.
    let host_port = last_at.map_or(authority, |at| &authority[at + 1..]);
    let (host, port) = if host_port.starts_with('[') {
        let close = host_port.find(']')?;
        let (host, port) = host_port.split_at(close + 1);
        let inner = &host[1..close];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (host, port)
    } else {
        let end = host_port
            .bytes()
            .position(|b| b == b':')
            .unwrap_or(host_port.len());
        let (host, port) = host_port.split_at(end);
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return None;
        }
        (host, port)
    };
    if let Some(digits) = port.strip_prefix(':') {
        if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    } else if !port.is_empty() {
        return None;
    }
    Some(AbsoluteUrl {
        scheme: &url[..scheme_len],
        host_port,
        host,
        rest,
    })
}

/// Whether `s` holds no ASCII whitespace or control character.
fn no_whitespace(s: &str) -> bool {
    !s.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// Whether a page URL (without query or fragment) is a path: it starts with `/`, and is not a
/// scheme-relative URL (`//host`, or `/\host` to a browser), which names a host and may carry
/// user information.
pub(super) fn is_page_path(base: &str) -> bool {
    base.starts_with('/') && !base[1..].starts_with(['/', '\\']) && no_whitespace(base)
}

/// A path without its segments' parameters (`/cart;jsessionid=0A1B/pay;v=2` → `/cart/pay`):
/// servlet containers put the session id there (`;jsessionid=`), other servers `;sid=`.
/// Borrowed when there is none.
pub fn without_path_params(path: &str) -> Cow<'_, str> {
    if param_start(path).is_none() {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&segment[..param_start(segment).unwrap_or(segment.len())]);
    }
    Cow::Owned(out)
}

/// Where a path parameter starts in `text`: at a `;`, or at a percent-encoded one (`%3B`),
/// since a server that decodes the path before it looks for parameters (or a log reader)
/// sees the same session id either way.
fn param_start(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    b.iter().enumerate().find_map(|(i, &c)| {
        let encoded = c == b'%'
            && b.get(i + 1) == Some(&b'3')
            && b.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&b'b'));
        (c == b';' || encoded).then_some(i)
    })
}

/// A page URL without user information, path parameters, fragment, or query parameters other
/// than the allowed ones. `None` when it is neither an absolute http(s) URL (see
/// [`parse_absolute`]) nor a path (then it is dropped).
pub fn scrub_page_url(url: &str, allow: &[String]) -> Option<String> {
    let url = url.trim();
    let url = url.split('#').next().unwrap_or("");
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = if base.starts_with('/') {
        // Checked once the parameters are out: `/;x/host` would become `//host`.
        let path = without_path_params(base);
        if !is_page_path(&path) {
            return None;
        }
        path.into_owned()
    } else {
        let abs = parse_absolute(base)?;
        abs.with_rest(&without_path_params(abs.rest))
    };
    let kept: Vec<(String, String)> = match query {
        // With nothing allowed (the default) nothing can be kept: the query is not even read.
        Some(q) if !allow.is_empty() => parse_query(q)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| allow.iter().any(|a| a == k))
            .collect(),
        _ => Vec::new(),
    };
    if kept.is_empty() {
        Some(base)
    } else {
        Some(format!("{base}?{}", to_query(&kept)))
    }
}

/// The host of an absolute http(s) URL read as a whole ([`parse_absolute`]), without port or
/// user information.
pub fn host_of(url: &str) -> Option<&str> {
    parse_absolute(url).map(|u| u.host)
}

/// Whether `host` is the site's host, or one of them is the other with `www.` in front.
pub fn same_site(host: &str, site: &str) -> bool {
    fn www(h: &str) -> Option<&str> {
        h.get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("www."))
            .then(|| &h[4..])
    }
    host.eq_ignore_ascii_case(site)
        || www(host).is_some_and(|h| h.eq_ignore_ascii_case(site))
        || www(site).is_some_and(|s| s.eq_ignore_ascii_case(host))
}

/// A referrer from the same site becomes its origin and path (no user information, path
/// parameters, query or fragment); any other is dropped. The referrer must be an absolute
/// http(s) URL as a whole ([`parse_absolute`]) whose host is the site's: text around a
/// same-site URL is no referrer.
pub fn same_site_referrer(referrer: &str, site_host: Option<&str>) -> Option<String> {
    let site = site_host?;
    let url = parse_absolute(referrer)?;
    if !same_site(url.host, site) {
        return None;
    }
    let path = url.rest.split(['?', '#']).next().unwrap_or("");
    Some(url.with_rest(&without_path_params(path)))
}

/// A language tag reduced to its primary subtag (`fr-FR,fr;q=0.9` → `fr`).
pub fn primary_language(tag: &str) -> Option<String> {
    let first = tag.split([',', ';']).next()?.trim();
    let primary = first.split(['-', '_']).next()?.to_ascii_lowercase();
    ((2..=3).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_lowercase()))
        .then_some(primary)
}

#[cfg(test)]
mod tests {
    use super::super::generalise_user_agent;
    use super::*;

    #[test]
    fn page_urls_lose_query_and_fragment() {
        let allow = vec!["utm_source".to_owned()];
        assert_eq!(
            scrub_page_url(
                "https://shop.example/order/confirm?email=alice%40mail.example&utm_source=news#top",
                &allow
            )
            .as_deref(),
            Some("https://shop.example/order/confirm?utm_source=news")
        );
        assert_eq!(
            scrub_page_url("https://shop.example/a?x=1", &[]).as_deref(),
            Some("https://shop.example/a")
        );
        assert_eq!(
            scrub_page_url("/reset?token=s3cr3t", &[]).as_deref(),
            Some("/reset")
        );
        assert_eq!(scrub_page_url("javascript:alert(1)", &[]), None);
        assert_eq!(scrub_page_url("https:///x", &[]), None);
    }

    #[test]
    fn a_page_url_ends_at_its_first_fragment_and_its_query_at_the_first_question_mark() {
        let allow = vec!["a".to_owned(), "b".to_owned()];
        for (url, scrubbed) in [
            // A '?' after the '#' is the fragment's: no query.
            ("/p#x?a=1", Some("/p")),
            // A second '?' belongs to the query (the value of `a`).
            ("/p?a=1?b=2#f?b=3", Some("/p?a=1%3Fb%3D2")),
            ("/p?#a=1", Some("/p")),
            (
                "https://shop.example/p?b=2#?a=1",
                Some("https://shop.example/p?b=2"),
            ),
            ("#/p?a=1", None),
        ] {
            assert_eq!(scrub_page_url(url, &allow).as_deref(), scrubbed, "{url}");
        }
    }

    #[test]
    fn page_urls_and_referrers_lose_path_parameters() {
        for allow in [vec![], vec!["utm_source".to_owned()]] {
            for (url, scrubbed) in [
                (
                    "https://shop.example/cart;jsessionid=0A1B2C/checkout;sid=42?x=1#f",
                    Some("https://shop.example/cart/checkout"),
                ),
                ("/account;jsessionid=0A1B2C", Some("/account")),
                ("/a;v=1;w=2/b;/c", Some("/a/b/c")),
                // Percent-encoded, in either case: a decoding server sees the same parameter.
                ("/p/utm_s%3bce=n/q%3Bsid=1", Some("/p/utm_s/q")),
                ("/p%3/q%3", Some("/p%3/q%3")),
                (
                    "https://shop.example/;jsessionid=1",
                    Some("https://shop.example/"),
                ),
                (
                    "https://shop.example/p;sid=1?utm_source=news",
                    Some(if allow.is_empty() {
                        "https://shop.example/p"
                    } else {
                        "https://shop.example/p?utm_source=news"
                    }),
                ),
                // Taking a parameter out must not leave a scheme-relative URL.
                ("/;x/evil.example/p", None),
            ] {
                assert_eq!(scrub_page_url(url, &allow).as_deref(), scrubbed, "{url}");
            }
        }
        assert_eq!(
            same_site_referrer(
                "https://shop.example/a;jsessionid=1/b;x?q#f",
                Some("shop.example")
            )
            .as_deref(),
            Some("https://shop.example/a/b")
        );
    }

    #[test]
    fn referrers_from_elsewhere_are_dropped() {
        assert_eq!(
            same_site_referrer(
                "https://www.search.example/search?q=alice",
                Some("shop.example")
            ),
            None
        );
        assert_eq!(
            same_site_referrer("https://shop.example/cart?id=9#x", Some("shop.example")).as_deref(),
            Some("https://shop.example/cart")
        );
        assert_eq!(
            same_site_referrer("https://www.shop.example/a", Some("shop.example")).as_deref(),
            Some("https://www.shop.example/a")
        );
        assert_eq!(
            same_site_referrer("https://shop.example.evil.example/a", Some("shop.example")),
            None
        );
        assert_eq!(same_site_referrer("https://shop.example/a", None), None);
    }

    #[test]
    fn generalised_urls_lose_user_information() {
        let allow = vec!["utm_source".to_owned()];
        for (url, scrubbed) in [
            (
                "https://alice:pw@shop.example/p?x=1",
                "https://shop.example/p",
            ),
            (
                "HTTPS://alice@Shop.example:8443",
                "HTTPS://Shop.example:8443",
            ),
            // User information runs to the last '@', as a browser reads it.
            ("https://a@b:c@shop.example/p@q", "https://shop.example/p@q"),
            (
                "https://alice@shop.example/?utm_source=news",
                "https://shop.example/?utm_source=news",
            ),
            (
                "https://alice@[2001:db8::1]:8080/p",
                "https://[2001:db8::1]:8080/p",
            ),
        ] {
            assert_eq!(
                scrub_page_url(url, &allow).as_deref(),
                Some(scrubbed),
                "{url}"
            );
        }
        // A scheme-relative "path" names a host (and may name a user): not a page path.
        for url in ["//alice@shop.example/p", "/\\alice@shop.example/p"] {
            assert_eq!(scrub_page_url(url, &[]), None, "{url}");
        }
        assert_eq!(
            same_site_referrer("https://alice:pw@shop.example/a?q#f", Some("shop.example"))
                .as_deref(),
            Some("https://shop.example/a")
        );
        assert_eq!(
            host_of("https://alice@shop.example:8443/"),
            Some("shop.example")
        );
    }

    #[test]
    fn a_referrer_is_a_whole_url_on_the_site() {
        let site = Some("shop.example");
        for r in [
            // Text before the URL, with or without a separator.
            "alice@mail.example https://shop.example/a",
            "alice@mail.example+https://shop.example/a",
            "xhttps://shop.example/a",
            " https://shop.example/a",
            // Text after the host or the path.
            "https://shop.example/a alice@mail.example",
            "https://shop.example alice/",
            // Not http(s), or an authority a browser reads otherwise.
            "ftp://shop.example/a",
            "https:shop.example/a",
            "https:///shop.example/a",
            "https://shop.example\\@evil.example/",
            "https://evil.example\\@shop.example/",
            "https://shop%2eexample/",
            "https://shop.example:port/",
            "https://shop.example:123456/",
            "https://[::1/",
            "https://shop.example\t/",
        ] {
            assert_eq!(same_site_referrer(r, site), None, "{r:?}");
            if !r.starts_with("https://shop.example/") {
                assert_ne!(host_of(r), Some("shop.example"), "{r:?}");
            }
        }
        assert_eq!(
            same_site_referrer("http://www.shop.example:8080/a/b", site).as_deref(),
            Some("http://www.shop.example:8080/a/b")
        );
        assert_eq!(
            same_site_referrer("https://SHOP.example", site).as_deref(),
            Some("https://SHOP.example")
        );
    }

    #[test]
    fn languages_and_user_agents_are_generalised() {
        assert_eq!(primary_language("fr-FR").as_deref(), Some("fr"));
        assert_eq!(primary_language("fr-fr,en;q=0.8").as_deref(), Some("fr"));
        assert_eq!(primary_language("*"), None);
        assert_eq!(primary_language("x-klingon"), None);
        let ua = |s| generalise_user_agent(s);
        // No User-Agent, or one too short to name a browser, is "other".
        for short in ["", "Edg", "E/1", "O/99"] {
            assert_eq!(ua(short), "Mozilla/5.0 (compatible; other)", "{short:?}");
        }
        assert_eq!(
            ua("Edg/1"),
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/1.0.0.0 Safari/537.36 Edg/1.0.0.0"
        );
        let chrome = ua("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.85 Safari/537.36");
        assert_eq!(
            chrome,
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
        );
        assert!(!chrome.contains("Windows"));
        assert!(
            ua("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0")
                .ends_with("Firefox/133.0")
        );
        assert!(ua("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1").contains("Version/17.0 Safari"));
        assert!(ua("Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70").ends_with("Edg/131.0.0.0"));
        assert_eq!(ua("curl/8.5.0"), "Mozilla/5.0 (compatible; other)");
    }
}

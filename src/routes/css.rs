//! The CSS rewriter, for every stylesheet tamis serves: a fonts route's CSS API, and any answer
//! on any other route that the browser may load as a stylesheet (a CDN's `leaflet.css`, a
//! stylesheet `@import`ed through the font files). The bytes are first read as the browser
//! would read them (content coding, then charset), then every URL a browser would fetch is
//! mapped to a first-party path or blocked; the output is UTF-8 and served as such, so the
//! browser reads exactly the text that was scanned.

use std::borrow::Cow;
use std::io::Read;

use bytes::Bytes;
use encoding_rs::{Encoding, UTF_16BE, UTF_16LE, UTF_8};
use http::header::{self, HeaderMap, HeaderValue};

use crate::config::UpstreamBase;
use crate::policy::reach::{reach, Reach};
use crate::routes::confine;

/// The Content-Type of every stylesheet tamis serves: the charset is stated, so no `@charset`
/// rule, BOM-less guess or page encoding can make the browser read other characters than the
/// ones the rewriter scanned.
pub const CSS_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("text/css; charset=utf-8");

/// What stands in for a URL that cannot be mapped to a first-party path: never fetched.
pub const BLOCKED: &str = "about:invalid";

/// Maps absolute third-party URLs to first-party paths, by upstream base (first match wins).
#[derive(Clone, Debug)]
pub struct UrlMap {
    bases: Vec<(UpstreamBase, String)>,
}

impl UrlMap {
    /// `bases`: (upstream base, first-party prefix), most specific first.
    pub fn new(bases: Vec<(UpstreamBase, String)>) -> UrlMap {
        UrlMap { bases }
    }

    /// The first-party path for an absolute (or scheme-relative) URL under a known base.
    pub fn map(&self, url: &str) -> Option<String> {
        let rest = url
            .strip_prefix("https:")
            .or_else(|| url.strip_prefix("http:"))
            .or_else(|| url.strip_prefix("HTTPS:"))
            .or_else(|| url.strip_prefix("HTTP:"))
            .unwrap_or(url);
        let after = rest.strip_prefix("//")?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, path) = after.split_at(end);
        for (base, prefix) in &self.bases {
            if !authority.eq_ignore_ascii_case(base.authority.as_str()) {
                continue;
            }
            let path = path.split('#').next().unwrap_or("");
            let (p, q) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            let Some(tail) = p.strip_prefix(base.path.as_str()) else {
                continue;
            };
            if confine::check_rest(tail).is_err() {
                return None;
            }
            let mut out = format!("{prefix}{tail}");
            if let Some(q) = q {
                if q.bytes()
                    .any(|b| b <= b' ' || b == b'"' || b == b'\'' || b == b'\\' || b == b')')
                {
                    return None;
                }
                out.push('?');
                out.push_str(q);
            }
            return Some(out);
        }
        None
    }
}

/// Why a stylesheet is refused instead of rewritten (answered 502: nothing half-rewritten is
/// ever served).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CssRefused {
    /// A content coding tamis never asks for (it asks for gzip, br or none).
    #[error("content coding {0:?} not decoded")]
    Coding(String),
    /// Compressed data that does not decode.
    #[error("compressed body does not decode")]
    Corrupt,
    /// Larger than `cache.max_object_bytes`, compressed or decoded.
    #[error("stylesheet larger than {0} bytes")]
    TooLarge(u64),
    /// A charset label the WHATWG Encoding Standard does not know (UTF-7, say): no browser
    /// decodes it as labelled, so what it would read is anyone's guess.
    #[error("charset {0:?} is not one a browser decodes")]
    Charset(String),
    /// Part of a stylesheet (206): a scan starting mid-token cannot know what it reads.
    #[error("partial stylesheet")]
    Partial,
}

/// A stylesheet as an upstream sent it (status, headers, body) rewritten for the browser: the
/// content coding removed, the bytes decoded as a browser decodes CSS (BOM, then the
/// Content-Type charset, then `@charset`, then UTF-8; malformed bytes become U+FFFD, as in
/// the browser), every URL mapped or blocked, and the result encoded as UTF-8. The caller
/// serves it with [`CSS_CONTENT_TYPE`] and no Content-Encoding.
pub fn stylesheet(
    status: http::StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    map: &UrlMap,
    max: u64,
) -> Result<Bytes, CssRefused> {
    if status == http::StatusCode::PARTIAL_CONTENT {
        return Err(CssRefused::Partial);
    }
    let decoded = decode_coding(headers, body, max)?;
    let text = decode_charset(headers, &decoded)?;
    Ok(Bytes::from(rewrite_css(strip_charset_rule(&text), map)))
}

/// The body without its content coding: gzip and br are decoded (tamis asks for them on
/// routes that are not CSS APIs), bounded by `max`; identity (or none) is the body itself.
fn decode_coding<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    max: u64,
) -> Result<Cow<'a, [u8]>, CssRefused> {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    let Some(coding) = codings.next() else {
        return Ok(Cow::Borrowed(body));
    };
    if let Some(second) = codings.next() {
        return Err(CssRefused::Coding(format!("{coding}, {second}")));
    }
    let reader: Box<dyn Read + '_> =
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(body))
        } else if coding.eq_ignore_ascii_case("br") {
            Box::new(brotli_decompressor::Decompressor::new(body, 4096))
        } else {
            return Err(CssRefused::Coding(coding.to_owned()));
        };
    let mut out = Vec::new();
    reader
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| CssRefused::Corrupt)?;
    if out.len() as u64 > max {
        return Err(CssRefused::TooLarge(max));
    }
    Ok(Cow::Owned(out))
}

/// The charset named by the Content-Type's `charset` parameters, if any (all of them must
/// name the same encoding: the browser reads one of them, and which is not worth guessing).
fn content_type_charset(headers: &HeaderMap) -> Result<Option<&'static Encoding>, CssRefused> {
    let mut found: Option<&'static Encoding> = None;
    for value in headers.get_all(header::CONTENT_TYPE) {
        let value = String::from_utf8_lossy(value.as_bytes());
        for param in value.split([';', ',']).skip(1) {
            let Some((name, label)) = param.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("charset") {
                continue;
            }
            let label = label.trim().trim_matches('"');
            let encoding = Encoding::for_label(label.as_bytes())
                .ok_or_else(|| CssRefused::Charset(label.to_owned()))?;
            match found {
                Some(f) if f != encoding => {
                    return Err(CssRefused::Charset(format!(
                        "{} or {}",
                        f.name(),
                        encoding.name()
                    )))
                }
                _ => found = Some(encoding),
            }
        }
    }
    Ok(found)
}

/// The label of a leading `@charset "…";` rule, read as CSS Syntax §3.2 says: exactly those
/// bytes at the very start, within the first 1024.
fn charset_rule(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(b"@charset \"")?;
    let end = rest.iter().take(1024).position(|&b| b == b'"')?;
    (rest.get(end + 1) == Some(&b';')).then(|| &rest[..end])
}

/// Decodes CSS bytes as CSS Syntax §3.2 does, with the response's own charset as the protocol
/// encoding: a BOM wins, then the Content-Type charset, then `@charset` (where UTF-16 means
/// UTF-8), then UTF-8.
fn decode_charset<'a>(headers: &HeaderMap, bytes: &'a [u8]) -> Result<Cow<'a, str>, CssRefused> {
    let (encoding, bytes) = match Encoding::for_bom(bytes) {
        Some((e, bom)) => (e, &bytes[bom..]),
        None => match content_type_charset(headers)? {
            Some(e) => (e, bytes),
            None => match charset_rule(bytes) {
                Some(label) => {
                    let e = Encoding::for_label(label).ok_or_else(|| {
                        CssRefused::Charset(String::from_utf8_lossy(label).into_owned())
                    })?;
                    let e = if e == UTF_16BE || e == UTF_16LE {
                        UTF_8
                    } else {
                        e
                    };
                    (e, bytes)
                }
                None => (UTF_8, bytes),
            },
        },
    };
    if encoding == UTF_8 {
        return Ok(String::from_utf8_lossy(bytes));
    }
    Ok(encoding.decode_without_bom_handling(bytes).0)
}

/// The text without a leading `@charset` rule: the output is UTF-8 and says so in its
/// Content-Type, so a rule naming the upstream's encoding would only mislead.
fn strip_charset_rule(text: &str) -> &str {
    match charset_rule(text.as_bytes()) {
        Some(label) => &text["@charset \"".len() + label.len() + 2..],
        None => text,
    }
}

/// Whether an answer's Content-Type may make the browser apply it as a stylesheet. tamis sends
/// `X-Content-Type-Options: nosniff` with every answer, so a browser applies one only when the
/// Content-Type it extracts is `text/css`; this looks for `css` anywhere in any Content-Type
/// field, in any case, which every such spelling contains (`Text/CSS`, `text/plain, text/css`,
/// a second field). Without nosniff a missing or `text/plain` type would be applied too (by
/// Chromium even in standards mode), which is why nosniff is never left out.
pub fn may_be_stylesheet(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().any(|v| {
        v.as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"css"))
    })
}

/// The replacement for one URL value found in CSS (`raw` as written, `value` unescaped): kept
/// when it stays on the site or makes no request, mapped when under a known base, blocked
/// otherwise. Only a plain URL is mapped: one written with escapes or control characters is
/// blocked.
fn replace<'a>(raw: &'a str, value: &str, map: &UrlMap) -> Cow<'a, str> {
    match reach(value) {
        Reach::Relative | Reach::Inert => raw.into(),
        Reach::Network => {
            let plain = raw.trim_matches(is_css_space);
            if plain != value || plain.bytes().any(|c| c < b' ' || c == 0x7f) {
                return BLOCKED.into();
            }
            map.map(plain).map_or(BLOCKED.into(), Into::into)
        }
    }
}

/// CSS whitespace (after preprocessing, which turns CR and form feed into newlines).
fn is_css_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n')
}

/// Part of a CSS name (identifier, hash, at-keyword, dimension unit): `url(` after one of these
/// is no url() token (`xurl(`, `#url(`, `2url(`), except after the `<!--` token. U+FFFD (a
/// preprocessed NUL) included.
fn continues_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'#' | b'@') || b >= 0x80
}

/// CSS Syntax §3.3 preprocessing: CR, CRLF and form feed become newlines, NUL becomes U+FFFD.
/// The rewriter scans, and serves, the same characters the browser's tokenizer will read.
fn preprocess(css: &str) -> Cow<'_, str> {
    if !css.contains(['\r', '\x0c', '\0']) {
        return css.into();
    }
    css.replace("\r\n", "\n")
        .replace(['\r', '\x0c'], "\n")
        .replace('\0', "\u{fffd}")
        .into()
}

/// A string's value: CSS escapes decoded as CSS Syntax §4.3.7 says (hex code points, a
/// backslash-newline dropped, any other character taken as itself).
fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            None => {}
            Some('\n') => {
                chars.next();
            }
            Some(h) if h.is_ascii_hexdigit() => {
                let mut cp = 0u32;
                for _ in 0..6 {
                    match chars.peek().and_then(|c| c.to_digit(16)) {
                        Some(d) => {
                            cp = cp * 16 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                if chars.peek().copied().is_some_and(is_css_space) {
                    chars.next();
                }
                out.push(
                    char::from_u32(cp)
                        .filter(|&c| c != '\0')
                        .unwrap_or('\u{fffd}'),
                );
            }
            Some(other) => {
                chars.next();
                out.push(other);
            }
        }
    }
    out.into()
}

/// Rewrites a stylesheet: every URL a browser would fetch (`url(…)`, `@import "…"`,
/// `image-set("…")`, any string spelling a URL) is mapped to a first-party path or blocked;
/// comments are dropped. The scanner follows CSS tokenization where it matters (strings,
/// comments, names and their escapes, url() tokens, newlines). The output names no
/// third-party host.
pub fn rewrite_css(css: &str, map: &UrlMap) -> String {
    let css = preprocess(css);
    let css = css.as_ref();
    let b = css.as_bytes();
    let mut out = String::with_capacity(css.len());
    let mut i = 0;
    let mut plain_start = 0;
    // Every slice below starts and ends at an ASCII byte, so at a char boundary.
    let flush = |out: &mut String, from: usize, to: usize| out.push_str(&css[from..to]);
    while i < b.len() {
        match b[i] {
            // Comments: dropped.
            b'/' if b.get(i + 1) == Some(&b'*') => {
                flush(&mut out, plain_start, i);
                i = css[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                plain_start = i;
            }
            // Strings: any URL inside is mapped or blocked, wherever the string stands (url(),
            // @import, image-set(), src(), or text a future rule might read as a URL).
            quote @ (b'"' | b'\'') => {
                flush(&mut out, plain_start, i);
                let (raw, end, closed) = read_string(css, i + 1, quote);
                out.push(quote as char);
                out.push_str(&replace(raw, &unescape(raw), map));
                if closed {
                    out.push(quote as char);
                }
                i = end;
                plain_start = i;
            }
            // `<!--` is a token of its own: a name cannot run on from it.
            b'<' if b[i..].starts_with(b"<!--") => i += 4,
            // A backslash before a newline escapes nothing: a delimiter.
            b'\\' if !valid_escape(b, i) => i += 1,
            // A name (ident, function, at-keyword, hash, or a number's unit), read whole with its
            // escapes, as the tokenizer reads it: an escape can spell `url(` (`u\rl(`) or hide
            // a quote (`a\"`), and `url(` inside a name (`2url(`, `#url(`, `xurl(`) is no url
            // token.
            c if continues_name(c) || c == b'\\' => {
                let end = name_end(b, i);
                if b.get(end) != Some(&b'(') || !unescape(&css[i..end]).eq_ignore_ascii_case("url")
                {
                    i = end;
                    continue;
                }
                // url(: a string after it is a url() function (the string branch takes it);
                // anything else is a url token, which runs to the first `)` not escaped.
                flush(&mut out, plain_start, end + 1);
                i = end + 1;
                while i < b.len() && is_css_space(b[i] as char) {
                    i += 1;
                }
                if i < b.len() && matches!(b[i], b'"' | b'\'') {
                    plain_start = i;
                    continue;
                }
                let close = url_token_end(b, i);
                let raw = css[i..close].trim_end_matches(is_css_space);
                if is_bad_url(raw.as_bytes()) {
                    // A bad url token fetches nothing, but tokenizers part ways inside one:
                    // Servo's (Firefox's) ends it at an escaped `)` after a space, where the
                    // standard's runs on, so what follows would be read as tokens there (a url()
                    // to another host). Replaced whole: every tokenizer reads the same token.
                    out.push_str(BLOCKED);
                } else {
                    out.push_str(&replace(raw, &unescape(raw), map));
                }
                i = close;
                plain_start = i;
            }
            _ => i += 1,
        }
    }
    flush(&mut out, plain_start, b.len());
    // Anything still naming a scheme outside strings and url() cannot be fetched by CSS, but
    // the promise is that no third-party URL is served at all.
    neutralize_bare_urls(out)
}

/// Reads a CSS string from `start` (after the opening quote) to its end: the closing quote, a
/// newline (a bad string, as in the browser) or the end of input. Returns the raw content, the
/// index after it, and whether the closing quote was there.
fn read_string(css: &str, start: usize, quote: u8) -> (&str, usize, bool) {
    let b = css.as_bytes();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\\' => i = skip_escape(b, i + 1),
            c if c == quote => return (&css[start..i], i + 1, true),
            b'\n' => return (&css[start..i], i, false),
            _ => i += 1,
        }
    }
    // `i` may have stepped past the end, or into a character, after a final backslash.
    (&css[start..], b.len(), false)
}

/// Whether the backslash at `i` starts a valid escape (CSS Syntax §4.3.8): anything but a
/// newline may follow it (the end of input too: it stands for U+FFFD).
fn valid_escape(b: &[u8], i: usize) -> bool {
    b.get(i + 1) != Some(&b'\n')
}

/// The end of the name starting at `i`: name characters and valid escapes.
fn name_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if continues_name(b[i]) {
            i += 1;
        } else if b[i] == b'\\' && valid_escape(b, i) {
            i = skip_escape(b, i + 1);
        } else {
            break;
        }
    }
    i.min(b.len())
}

/// Where a url token that starts at `i` ends: at the first `)` no escape takes, or the end.
/// A well-formed and a bad url token end at the same place (CSS Syntax §4.3.6 and §4.3.14).
fn url_token_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b')' => return i,
            b'\\' if valid_escape(b, i) => i = skip_escape(b, i + 1),
            _ => i += 1,
        }
    }
    b.len()
}

/// Whether a url token's content (from after `url(` and its spaces to before its `)`, trailing
/// spaces trimmed) makes a bad url token (CSS Syntax §4.3.6): a space inside, a quote, `(`, a
/// non-printable character, or a backslash before a newline.
fn is_bad_url(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'(' | b' ' | b'\t' | b'\n' => return true,
            0x00..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f => return true,
            b'\\' if !valid_escape(b, i) => return true,
            b'\\' => i = skip_escape(b, i + 1),
            _ => i += 1,
        }
    }
    false
}

/// The index after an escape whose backslash ends at `i`: up to six hex digits and one
/// whitespace after them (a newline too: it does not end the string), or a newline (a
/// continuation), or one other character.
fn skip_escape(b: &[u8], mut i: usize) -> usize {
    if !b.get(i).is_some_and(u8::is_ascii_hexdigit) {
        // Any other character, a newline included; a multi-byte one is stepped over byte by
        // byte by the caller, harmlessly (its bytes are never quotes or newlines).
        return i + 1;
    }
    let digits = b[i..]
        .iter()
        .take(6)
        .take_while(|c| c.is_ascii_hexdigit())
        .count();
    i += digits;
    if b.get(i).is_some_and(|&c| is_css_space(c as char)) {
        i += 1;
    }
    i
}

fn neutralize_bare_urls(css: String) -> String {
    if !css.contains("://") {
        return css;
    }
    css.replace("://", ":/ /")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream;

    fn map() -> UrlMap {
        UrlMap::new(vec![
            (
                parse_upstream("https://fonts.gstatic.com/").unwrap(),
                "/fonts/files/".into(),
            ),
            (
                parse_upstream("https://fonts.googleapis.com/").unwrap(),
                "/fonts/".into(),
            ),
        ])
    }

    #[test]
    fn the_google_fixture_is_fully_first_party() {
        let css = include_str!("../../tests/fixtures/google-fonts-css2-roboto.css");
        let out = rewrite_css(css, &map());
        assert!(!out.contains("gstatic"), "{out}");
        assert!(!out.contains("://"), "{out}");
        assert!(out.contains("url(/fonts/files/s/roboto/"), "{out}");
        assert!(
            out.contains("format('woff2')") || out.contains("format(\"woff2\")"),
            "{out}"
        );
        assert!(out.contains("unicode-range"), "{out}");
    }

    #[test]
    fn every_url_form_is_handled() {
        let css = r#"@import url("https://fonts.googleapis.com/css2?family=Inter");
@import 'https://fonts.googleapis.com/css?family=Lato';
/* https://fonts.gstatic.com/ in a comment */
@font-face { src: url(https://fonts.gstatic.com/s/a.woff2) format("woff2"), URL( '//fonts.gstatic.com/s/b.woff' ) format('woff'), url(http://fonts.gstatic.com/s/c.ttf), url(https://evil.example/x.woff2), url("\68ttps://evil.example/y"), url(data:font/woff2;base64,AAAA), url(local.woff2); }
.x { background: url(https://fonts.gstatic.com/../../etc) }"#;
        let out = rewrite_css(css, &map());
        assert!(
            out.contains(r#"@import url("/fonts/css2?family=Inter")"#),
            "{out}"
        );
        assert!(out.contains("@import '/fonts/css?family=Lato'"), "{out}");
        assert!(!out.contains("comment"), "{out}");
        assert!(out.contains("url(/fonts/files/s/a.woff2)"), "{out}");
        assert!(out.contains("URL('/fonts/files/s/b.woff' )"), "{out}");
        assert!(out.contains("url(/fonts/files/s/c.ttf)"), "{out}");
        assert_eq!(
            out.matches(BLOCKED).count(),
            3,
            "evil, escaped and traversal are blocked: {out}"
        );
        assert!(
            out.contains("url(data:font/woff2;base64,AAAA)"),
            "data: makes no request: {out}"
        );
        assert!(
            out.contains("url(local.woff2)"),
            "relative URLs stay: {out}"
        );
        for host in ["evil", "gstatic", "googleapis", "://"] {
            assert!(!out.contains(host), "{host} left in {out}");
        }
    }

    #[test]
    fn text_strings_are_left_alone() {
        let css = r#".q::before { content: "Note: \201C x"; font-family: "Roboto", 'Open Sans'; }"#;
        assert_eq!(rewrite_css(css, &map()), css);
        let sneaky =
            r#".q { background: url("h\74tps\3a //evil.example/x"); content: "\68ttp\3a//e"; }"#;
        let out = rewrite_css(sneaky, &map());
        assert!(
            !out.contains("evil") && out.matches(BLOCKED).count() == 2,
            "{out}"
        );
    }

    #[test]
    fn broken_css_never_panics_or_leaks() {
        for css in [
            "url(",
            "url(\"https://evil.example/",
            "'unterminated",
            "/* open",
            "@import \"",
            "url(https://evil.example",
        ] {
            let out = rewrite_css(css, &map());
            assert!(!out.contains("evil.example"), "{css:?} -> {out:?}");
        }
    }

    /// Each of these once loaded a font or image from evil.example (found by fuzzing).
    #[test]
    fn what_a_browser_would_fetch_is_what_gets_rewritten() {
        let leaks = [
            // Tabs and newlines anywhere, controls at either end: deleted by the URL parser.
            "a{src:url('/\t/evil.example/f.woff2')}",
            "a{src:url(\"\u{1}//evil.example/f.woff2\")}",
            // A backslash-newline inside a string is a continuation, not a character.
            "a{src:url('ht\\\ntps://evil.example/f.woff2')}",
            // Escapes and whitespace in a string @import or image-set() reads as a URL.
            "@import \"https\\3a \\2f \\2f evil.example/x\";",
            "@import \" https://evil.example/x\";",
            "@import \"https://evil.example/a b\";",
            "a{background:image-set(\"//evil.example/i.png\" 1x)}",
            "a{background:image-set('\\2f\\2f evil.example/i.png' 1x)}",
            // `/\` is `//` on an http(s) page.
            // (In a url token a backslash escapes: `\\` is the one that stays a backslash.)
            "a{background:url(/\\\\evil.example/i.png)}",
            "a{background:url('/\\\\evil.example/i.png')}",
            // A form feed or CR ends a string for the browser.
            "a{src:url('/x\u{c}) } b{background:url(//evil.example/i.png)}'",
            "a{src:url('/x\r) } b{background:url(//evil.example/i.png)}'",
            // A data: stylesheet can import from anywhere.
            "@import url('data:text/css,@import \"https:evil.example/x\"');",
        ];
        for css in leaks {
            let out = rewrite_css(css, &map());
            assert!(!out.contains("evil.example/"), "{css:?} -> {out:?}");
        }
    }

    #[test]
    fn url_is_a_token_only_at_a_token_start() {
        // `2url(`, `#url(`, `xurl(` are no url(): reading one as a url token (to `)`, across a
        // quote) hid the URL that followed the string the browser saw open there.
        for glued in ["2url(", "#url(", "xurl(", "-url(", "@url(", "\u{e9}url("] {
            let css =
                format!("a{{b:{glued}') x{{}} ' b{{background:url(//evil.example/i.png)}} '}}");
            let out = rewrite_css(&css, &map());
            assert!(out.contains("url(about:invalid)"), "{css:?} -> {out:?}");
        }
        // A real one after a delimiter, or after `<!--` (a token of its own).
        let out = rewrite_css("a<!--url(//evil.example/i.png)", &map());
        assert!(out.contains("url(about:invalid)"), "{out}");
        let out = rewrite_css("a{b:+url(https://fonts.gstatic.com/s/a.woff2)}", &map());
        assert!(out.contains("url(/fonts/files/s/a.woff2)"), "{out}");
    }

    #[test]
    fn a_bad_url_token_is_replaced_whole_so_no_tokenizer_finds_a_url_inside_it() {
        // Servo's tokenizer (Firefox) ends `url(f \)` at the escaped `)`, the standard's at the
        // next plain `)`: what the one reads after it, the other reads inside the bad url.
        for (css, expected) in [
            (
                "a{b:url(f \\) url(//evil.example/x)}",
                "a{b:url(about:invalid)}",
            ),
            ("url(f \\)@import\"//a", "url(about:invalid"),
            ("a{b:url(x\"y)}", "a{b:url(about:invalid)}"),
            ("a{b:url(x(y)}", "a{b:url(about:invalid)}"),
            ("a{b:url(x\u{1}y)}", "a{b:url(about:invalid)}"),
            ("a{b:url(x\\\ny)}", "a{b:url(about:invalid)}"),
        ] {
            assert_eq!(rewrite_css(css, &map()), expected, "{css:?}");
        }
        // Not bad: spaces around the value, an escaped space or quote, a space after a hex
        // escape (part of the escape).
        assert_eq!(
            rewrite_css("a{b:url( /x.png )}", &map()),
            "a{b:url(/x.png)}"
        );
        for css in [
            "a{b:url(/x\\ y.png)}",
            "a{b:url(/x\\\"y.png)}",
            "a{b:url(/x\\41 y.png)}",
        ] {
            assert_eq!(rewrite_css(css, &map()), css, "{css:?}");
        }
    }

    #[test]
    fn escapes_outside_strings_are_read_as_the_tokenizer_reads_them() {
        // Each once refused the whole stylesheet; each is now read the browser's way: `u\rl(`
        // and `\75 rl(` are url tokens, `@\69mport` an at-keyword before a judged string, `a\"`
        // a name (no string opens), `\)` part of a url token's value.
        for (css, expected) in [
            (
                "a{src:u\\rl(//evil.example/x)}",
                "a{src:u\\rl(about:invalid)}",
            ),
            (
                "a{src:\\75 rl(//evil.example/x)}",
                "a{src:\\75 rl(about:invalid)}",
            ),
            (
                "a{src:URL\\28 (x) url(//evil.example/y)}",
                "a{src:URL\\28 (x) url(about:invalid)}",
            ),
            (
                "@\\69mport '//evil.example/x';",
                "@\\69mport 'about:invalid';",
            ),
            (
                "a{x:a\\\"} b{background:url(//evil.example/i.png)} c{y:\"}",
                "a{x:a\\\"} b{background:url(about:invalid)} c{y:\"}",
            ),
            // One url token, whose value is the relative `/x)//evil.example/y`.
            (
                "a{src:url(/x\\)//evil.example/y)}",
                "a{src:url(/x\\)//evil.example/y)}",
            ),
            (
                "a{src:url(\\2f\\2f evil.example/x)}",
                "a{src:url(about:invalid)}",
            ),
        ] {
            assert_eq!(rewrite_css(css, &map()), expected, "{css:?}");
        }
        // Escaped names in the wild (Tailwind's `.md\:flex`) pass untouched.
        let tailwind = ".md\\:flex{display:flex}.w-1\\/2{width:50%}.\\31 0{x:url(img/a.png)}";
        assert_eq!(rewrite_css(tailwind, &map()), tailwind);
        // An escape that makes a name something else than `url` leaves it a plain function.
        assert_eq!(
            rewrite_css("a{b:ur\\6c x(/y)}", &map()),
            "a{b:ur\\6c x(/y)}"
        );
        // A url token with an escaped relative path keeps it, as the browser reads it.
        assert_eq!(
            rewrite_css("a{b:url(/a\\ b.png)}", &map()),
            "a{b:url(/a\\ b.png)}"
        );
    }

    #[test]
    fn non_ascii_text_is_kept_and_never_panics() {
        let css = "/* é */ .é{font-family:'Noto Sans 日本'} .x::after{content:\"→\"} é url(https://fonts.gstatic.com/s/a.woff2)";
        let out = rewrite_css(css, &map());
        assert!(out.contains(".é{font-family:'Noto Sans 日本'}"), "{out}");
        assert!(out.contains("url(/fonts/files/s/a.woff2)"), "{out}");
        // NUL reads as U+FFFD, CR LF as a newline: served as the browser will read it.
        assert_eq!(rewrite_css("a\0b\r\nc", &map()), "a\u{fffd}b\nc");
    }

    #[test]
    fn inert_urls_are_kept() {
        for css in [
            "a{src:url(data:font/woff2;base64,AAAA)}",
            "a{background:url('data:image/png;base64,AAAA')}",
            "a{background:url(img/a.png)}",
            ".q::before{content:'Note: \\201C x'}",
        ] {
            assert_eq!(rewrite_css(css, &map()), css);
        }
    }

    #[test]
    fn a_hex_escape_takes_the_newline_after_it() {
        // `\a0` then a newline: the escape takes the newline, the string goes on (the browser
        // then sees the image-set() below as text in a string, and so must the rewriter).
        let css = "a{b:'x\\a0\nc'} d{background:image-set(\"//evil.example/a.png\" 1x)}";
        let out = rewrite_css(css, &map());
        assert!(!out.contains("evil.example/"), "{out}");
        let css = "a{b:'x\\a0\n) d{background:image-set(\"//evil.example/a.png\" 1x)}";
        assert_eq!(rewrite_css(css, &map()), css, "all one string");
    }

    #[test]
    fn unescape_follows_css_syntax() {
        assert_eq!(unescape("\\68ttps\\3a //x"), "https://x");
        assert_eq!(unescape("a\\\nb"), "ab");
        assert_eq!(unescape("\\0 x\\110000"), "\u{fffd}x\u{fffd}");
        assert_eq!(unescape("\\\"q\\"), "\"q");
    }
}

#[cfg(test)]
mod stylesheet_tests {
    use super::*;
    use crate::config::parse_upstream;
    use http::StatusCode;

    fn map() -> UrlMap {
        UrlMap::new(vec![(
            parse_upstream("https://fonts.gstatic.com/").unwrap(),
            "/fonts/files/".into(),
        )])
    }

    fn typed(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    fn sheet(headers: &HeaderMap, body: &[u8]) -> Result<String, CssRefused> {
        stylesheet(StatusCode::OK, headers, body, &map(), 1 << 20)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    /// In ISO-2022-JP, `ESC $ B` starts two-byte characters: the `"` there is half of one, so
    /// the browser sees no string, and a url() after `ESC ( B`. Read as UTF-8, the same bytes
    /// open a string that hides it.
    const ISO_2022_JP_TRAP: &[u8] = b"a{b:\x1b$B\"\x1b(B url(//evil.example/x)}";

    #[test]
    fn css_in_another_charset_is_read_as_the_browser_reads_it() {
        for headers in [typed("text/css; charset=iso-2022-jp"), typed("text/css")] {
            let body = if headers[header::CONTENT_TYPE] == "text/css" {
                [b"@charset \"ISO-2022-JP\";".as_slice(), ISO_2022_JP_TRAP].concat()
            } else {
                ISO_2022_JP_TRAP.to_vec()
            };
            let out = sheet(&headers, &body).unwrap();
            assert!(!out.contains("evil.example"), "{out:?}");
            assert!(out.contains("url(about:invalid)"), "{out:?}");
            assert!(!out.starts_with("@charset"), "{out:?}");
        }
        // Windows-1252 text comes out as the same characters in UTF-8.
        let out = sheet(
            &typed("text/css;charset=windows-1252"),
            b"a{content:'\xe9'}",
        )
        .unwrap();
        assert_eq!(out, "a{content:'\u{e9}'}");
        // UTF-16 with a BOM, whatever the Content-Type says.
        let utf16: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(
                "a{src:url(https://evil.example/f.woff2)}"
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes),
            )
            .collect();
        let out = sheet(&typed("text/css; charset=utf-8"), &utf16).unwrap();
        assert_eq!(out, "a{src:url(about:invalid)}");
        // `@charset "utf-16"` means UTF-8 (CSS Syntax §3.2); invalid UTF-8 becomes U+FFFD.
        let out = sheet(&typed("text/css"), b"@charset \"utf-16\";a{content:'\xff'}").unwrap();
        assert_eq!(out, "a{content:'\u{fffd}'}");
    }

    #[test]
    fn a_charset_no_browser_knows_is_refused() {
        for (headers, body) in [
            (typed("text/css; charset=utf-7"), b"a{}".as_slice()),
            (typed("text/css"), b"@charset \"utf-7\";a{}".as_slice()),
            (
                typed("text/css; charset=utf-8, text/css; charset=shift_jis"),
                b"a{}".as_slice(),
            ),
        ] {
            assert!(
                matches!(sheet(&headers, body), Err(CssRefused::Charset(_))),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn compressed_stylesheets_are_decoded_and_partial_ones_refused() {
        use std::io::Write;
        let css = b"a{src:url(https://fonts.gstatic.com/s/a.woff2)}";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(css).unwrap();
        let mut headers = typed("text/css");
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let out = sheet(&headers, &gz.finish().unwrap()).unwrap();
        assert_eq!(out, "a{src:url(/fonts/files/s/a.woff2)}");
        // Damaged, or more than `max` once decoded, or a coding never asked for: refused.
        assert_eq!(sheet(&headers, b"not gzip"), Err(CssRefused::Corrupt));
        let mut big = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        big.write_all(&vec![b' '; 4 << 20]).unwrap();
        assert_eq!(
            stylesheet(
                StatusCode::OK,
                &headers,
                &big.finish().unwrap(),
                &map(),
                1 << 20
            ),
            Err(CssRefused::TooLarge(1 << 20))
        );
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert!(matches!(sheet(&headers, css), Err(CssRefused::Coding(_))));
        let partial = stylesheet(
            StatusCode::PARTIAL_CONTENT,
            &typed("text/css"),
            css,
            &map(),
            99,
        );
        assert_eq!(partial, Err(CssRefused::Partial));
    }

    #[test]
    fn any_content_type_naming_css_may_be_a_stylesheet() {
        for ct in [
            "text/css",
            "Text/CSS",
            "text/plain, text/css",
            "TEXT/CSS;charset=x",
        ] {
            assert!(may_be_stylesheet(&typed(ct)), "{ct}");
        }
        let mut two = typed("text/plain");
        two.append(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
        assert!(may_be_stylesheet(&two));
        for ct in ["image/png", "font/woff2", "application/javascript"] {
            assert!(!may_be_stylesheet(&typed(ct)), "{ct}");
        }
        assert!(!may_be_stylesheet(&HeaderMap::new()));
    }
}

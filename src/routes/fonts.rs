//! Web fonts (`kind = "fonts"`): the CSS API is fetched with a fixed modern browser User-Agent
//! and every third-party URL in the CSS is rewritten to a first-party path; font files are
//! served with a correct type and CORS for cross-origin use.

use crate::config::UpstreamBase;
use crate::routes::confine;

/// The User-Agent sent for the CSS: a current desktop Chrome, so every visitor gets woff2 with
/// unicode-range subsets, whatever browser they run (never the visitor's own).
pub const CSS_USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

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
    /// A CSS escape outside a string can spell `url(`, `@import` or a quote the rewriter would
    /// not see (`u\rl(`, `@\69mport`, `a\"`); font CSS never needs one.
    #[error("CSS escape outside a string at byte {0}")]
    EscapeOutsideString(usize),
}

/// Schemes a browser fetches from a host: a URL with one of these (or scheme-relative) is a
/// third-party request unless it maps to a first-party path.
const NETWORK_SCHEMES: [&str; 6] = ["http", "https", "ftp", "ws", "wss", "file"];

/// `data:` media types kept as they are: fonts and images make no further request. Anything
/// else (`text/css`, `text/html`) could import a third-party URL from inside the data.
const INERT_DATA_TYPES: [&str; 4] = [
    "font/",
    "application/font-",
    "application/x-font-",
    "image/",
];

/// What a URL read from CSS reaches, as a browser resolves it against the page.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// A path on the page's own origin.
    Relative,
    /// A `data:` URL of an inert type, or a scheme that makes no request (`about:`, a word
    /// before a colon in text).
    Inert,
    /// Another host, or a `data:` URL that may load one.
    Network,
}

/// What a browser makes of a CSS URL value (already unescaped): the WHATWG URL parser first
/// deletes tabs and newlines anywhere and C0 controls and spaces at either end, and reads `\`
/// as `/` on http(s) pages.
fn reach(value: &str) -> Reach {
    let u: String = value
        .trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let b = u.as_bytes();
    if b.len() >= 2 && matches!(b[0], b'/' | b'\\') && matches!(b[1], b'/' | b'\\') {
        return Reach::Network;
    }
    // A scheme: a letter, then letters, digits, + - . up to a ':'.
    let end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || b"+-.".contains(&c)));
    let Some(e) = end.filter(|&e| b[e] == b':' && b.first().is_some_and(u8::is_ascii_alphabetic))
    else {
        return Reach::Relative;
    };
    let scheme = u[..e].to_ascii_lowercase();
    if scheme == "data" {
        let media = u[e + 1..].trim_start().to_ascii_lowercase();
        return if INERT_DATA_TYPES.iter().any(|t| media.starts_with(t)) {
            Reach::Inert
        } else {
            Reach::Network
        };
    }
    if NETWORK_SCHEMES.contains(&scheme.as_str()) {
        Reach::Network
    } else {
        Reach::Inert
    }
}

/// The replacement for one URL value found in CSS (`raw` as written, `value` unescaped): kept
/// when it stays on the site or makes no request, mapped when under a known base, blocked
/// otherwise. Only a plain URL is mapped: one written with escapes or control characters is
/// blocked.
fn replace<'a>(raw: &'a str, value: &str, map: &UrlMap) -> std::borrow::Cow<'a, str> {
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
fn preprocess(css: &str) -> std::borrow::Cow<'_, str> {
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
fn unescape(s: &str) -> std::borrow::Cow<'_, str> {
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
/// comments, url() tokens, newlines); what it could misread, an escape outside a string, makes
/// the whole stylesheet refused. The output names no third-party host.
pub fn rewrite_css(css: &str, map: &UrlMap) -> Result<String, CssRefused> {
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
            b'\\' => return Err(CssRefused::EscapeOutsideString(i)),
            // url( unquoted ): a url token runs to the closing parenthesis.
            b'u' | b'U'
                if b.len() - i >= 4
                    && b[i..i + 4].eq_ignore_ascii_case(b"url(")
                    && (i == 0 || !continues_name(b[i - 1]) || b[..i].ends_with(b"<!--")) =>
            {
                flush(&mut out, plain_start, i + 4);
                i += 4;
                while i < b.len() && is_css_space(b[i] as char) {
                    i += 1;
                }
                if i < b.len() && matches!(b[i], b'"' | b'\'') {
                    // url("…"): the string branch takes it next round.
                    plain_start = i;
                    continue;
                }
                let end = css[i..].find(')').map_or(b.len(), |e| i + e);
                if let Some(e) = css[i..end].find('\\') {
                    return Err(CssRefused::EscapeOutsideString(i + e));
                }
                let raw = css[i..end].trim_end_matches(is_css_space);
                out.push_str(&replace(raw, raw, map));
                i = end;
                plain_start = i;
            }
            _ => i += 1,
        }
    }
    flush(&mut out, plain_start, b.len());
    // Anything still naming a scheme outside strings and url() cannot be fetched by CSS, but
    // the promise is that no third-party URL is served at all.
    Ok(neutralize_bare_urls(out))
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

/// The media type of a font file, by extension.
pub fn font_content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "svg" => "image/svg+xml",
        _ => return None,
    })
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
        let out = rewrite_css(css, &map()).unwrap();
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
        let out = rewrite_css(css, &map()).unwrap();
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
        assert_eq!(rewrite_css(css, &map()).unwrap(), css);
        let sneaky =
            r#".q { background: url("h\74tps\3a //evil.example/x"); content: "\68ttp\3a//e"; }"#;
        let out = rewrite_css(sneaky, &map()).unwrap();
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
            let out = rewrite_css(css, &map()).unwrap();
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
            "a{background:url(/\\evil.example/i.png)}",
            "a{background:url('/\\\\evil.example/i.png')}",
            // A form feed or CR ends a string for the browser.
            "a{src:url('/x\u{c}) } b{background:url(//evil.example/i.png)}'",
            "a{src:url('/x\r) } b{background:url(//evil.example/i.png)}'",
            // A data: stylesheet can import from anywhere.
            "@import url('data:text/css,@import \"https:evil.example/x\"');",
        ];
        for css in leaks {
            let out = rewrite_css(css, &map()).unwrap_or_default();
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
            let out = rewrite_css(&css, &map()).unwrap();
            assert!(out.contains("url(about:invalid)"), "{css:?} -> {out:?}");
        }
        // A real one after a delimiter, or after `<!--` (a token of its own).
        let out = rewrite_css("a<!--url(//evil.example/i.png)", &map()).unwrap();
        assert!(out.contains("url(about:invalid)"), "{out}");
        let out = rewrite_css("a{b:+url(https://fonts.gstatic.com/s/a.woff2)}", &map()).unwrap();
        assert!(out.contains("url(/fonts/files/s/a.woff2)"), "{out}");
    }

    #[test]
    fn escapes_outside_strings_refuse_the_stylesheet() {
        for css in [
            "a{src:u\\rl(//evil.example/x)}",
            "@\\69mport '//evil.example/x';",
            "a{x:a\\\"} b{background:url(//evil.example/i.png)} c{y:\"}",
            "a{src:url(/x\\)}",
        ] {
            assert!(
                matches!(
                    rewrite_css(css, &map()),
                    Err(CssRefused::EscapeOutsideString(_))
                ),
                "{css:?}"
            );
        }
    }

    #[test]
    fn non_ascii_text_is_kept_and_never_panics() {
        let css = "/* é */ .é{font-family:'Noto Sans 日本'} .x::after{content:\"→\"} é url(https://fonts.gstatic.com/s/a.woff2)";
        let out = rewrite_css(css, &map()).unwrap();
        assert!(out.contains(".é{font-family:'Noto Sans 日本'}"), "{out}");
        assert!(out.contains("url(/fonts/files/s/a.woff2)"), "{out}");
        // NUL reads as U+FFFD, CR LF as a newline: served as the browser will read it.
        assert_eq!(rewrite_css("a\0b\r\nc", &map()).unwrap(), "a\u{fffd}b\nc");
    }

    #[test]
    fn inert_urls_are_kept() {
        for css in [
            "a{src:url(data:font/woff2;base64,AAAA)}",
            "a{background:url('data:image/png;base64,AAAA')}",
            "a{background:url(img/a.png)}",
            ".q::before{content:'Note: \\201C x'}",
        ] {
            assert_eq!(rewrite_css(css, &map()).unwrap(), css);
        }
    }

    #[test]
    fn a_hex_escape_takes_the_newline_after_it() {
        // `\a0` then a newline: the escape takes the newline, the string goes on (the browser
        // then sees the image-set() below as text in a string, and so must the rewriter).
        let css = "a{b:'x\\a0\nc'} d{background:image-set(\"//evil.example/a.png\" 1x)}";
        let out = rewrite_css(css, &map()).unwrap();
        assert!(!out.contains("evil.example/"), "{out}");
        let css = "a{b:'x\\a0\n) d{background:image-set(\"//evil.example/a.png\" 1x)}";
        assert_eq!(rewrite_css(css, &map()).unwrap(), css, "all one string");
    }

    #[test]
    fn unescape_follows_css_syntax() {
        assert_eq!(unescape("\\68ttps\\3a //x"), "https://x");
        assert_eq!(unescape("a\\\nb"), "ab");
        assert_eq!(unescape("\\0 x\\110000"), "\u{fffd}x\u{fffd}");
        assert_eq!(unescape("\\\"q\\"), "\"q");
    }

    #[test]
    fn font_types() {
        assert_eq!(
            font_content_type("/s/roboto/v30/x.woff2"),
            Some("font/woff2")
        );
        assert_eq!(font_content_type("a.TTF"), Some("font/ttf"));
        assert_eq!(font_content_type("a.css"), None);
    }
}

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

/// Whether a CSS URL reaches beyond the page's origin (has a scheme or starts with `//`).
fn is_absolute(url: &str) -> bool {
    let u = url.trim();
    u.starts_with("//") || u.starts_with("\\\\") || !crate::policy::is_relative_reference(u)
}

/// The replacement for one URL found in CSS: mapped when under a known base, kept when
/// relative, blocked otherwise (also when it uses CSS escapes, which could hide a host).
fn replace(url: &str, map: &UrlMap) -> String {
    let u = url.trim();
    if u.contains('\\') {
        return BLOCKED.to_owned();
    }
    // Relative URLs stay on tamis's origin; data: URLs make no request at all.
    if !is_absolute(u) || u.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("data:")) {
        return u.to_owned();
    }
    map.map(u).unwrap_or_else(|| BLOCKED.to_owned())
}

/// Rewrites a stylesheet: every `url(…)`, `@import "…"` and string holding a URL is mapped to a
/// first-party path or blocked; comments are dropped. The output names no third-party host.
pub fn rewrite_css(css: &str, map: &UrlMap) -> String {
    let b = css.as_bytes();
    let mut out = String::with_capacity(css.len());
    let mut i = 0;
    let mut plain_start = 0;
    // Set when a quoted string opens right after `url(`: that string is a URL, whatever it holds.
    let mut url_string = false;
    let flush = |out: &mut String, from: usize, to: usize| out.push_str(&css[from..to]);
    while i < b.len() {
        // Comments: dropped.
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            flush(&mut out, plain_start, i);
            let end = css[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
            plain_start = i;
            continue;
        }
        // Strings: any URL inside is mapped or blocked.
        if b[i] == b'"' || b[i] == b'\'' {
            flush(&mut out, plain_start, i);
            let quote = b[i];
            let (content, end) = read_string(css, i + 1, quote);
            out.push(quote as char);
            if std::mem::take(&mut url_string) {
                out.push_str(&replace(content, map));
            } else {
                out.push_str(&string_value(content, map));
            }
            out.push(quote as char);
            i = end;
            plain_start = i;
            continue;
        }
        // url( unquoted ): read to the closing parenthesis.
        if css[i..].len() >= 4 && css[i..i + 4].eq_ignore_ascii_case("url(") {
            flush(&mut out, plain_start, i);
            out.push_str("url(");
            i += 4;
            while i < b.len() && (b[i] as char).is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                // Quoted: the string branch handles it next round, as a URL.
                url_string = true;
                plain_start = i;
                continue;
            }
            let end = css[i..].find(')').map_or(b.len(), |e| i + e);
            out.push_str(&replace(&css[i..end], map));
            i = end;
            plain_start = i;
            continue;
        }
        i += 1;
    }
    flush(&mut out, plain_start, b.len());
    // Anything still naming a scheme outside strings and url() cannot be fetched by CSS, but
    // the promise is that no third-party URL is served at all.
    neutralize_bare_urls(out)
}

/// A string's content after mapping: URLs mapped or blocked, other text kept. A string with
/// whitespace is text, not a URL; one spelling ':' or '/' through escapes is blocked.
fn string_value(content: &str, map: &UrlMap) -> String {
    let c = content.trim();
    if c.contains(char::is_whitespace) {
        return content.to_owned();
    }
    if c.contains('\\') {
        return if c.contains([':', '/'])
            || c.to_ascii_lowercase().contains("\\3a")
            || c.to_ascii_lowercase().contains("\\2f")
        {
            BLOCKED.to_owned()
        } else {
            content.to_owned()
        };
    }
    if is_absolute(c) {
        return replace(c, map);
    }
    content.to_owned()
}

/// Reads a CSS string from `start` (after the opening quote) to its closing quote; returns the
/// raw content and the index after the closing quote.
fn read_string(css: &str, start: usize, quote: u8) -> (&str, usize) {
    let b = css.as_bytes();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return (&css[start..i], i + 1),
            b'\n' => return (&css[start..i], i),
            _ => i += 1,
        }
    }
    (&css[start..b.len().min(css.len())], b.len())
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
        assert!(out.contains("url('/fonts/files/s/b.woff' )"), "{out}");
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

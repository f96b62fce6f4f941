//! What a URL written by an upstream makes the browser contact, judged as the browser's URL
//! parser reads it. One function for every place an upstream can name a URL the browser will
//! follow on its own: CSS (`url()`, `@import`, `image-set()`) and `Link` headers (targets,
//! `anchor`, `imagesrcset` candidates).

/// Schemes a browser fetches from a host: a URL with one of these (or scheme-relative) is a
/// third-party request unless it maps to a first-party path.
const NETWORK_SCHEMES: [&str; 6] = ["http", "https", "ftp", "ws", "wss", "file"];

/// `data:` media types that make no further request (fonts, images). Anything else
/// (`text/css`, `text/html`, an SVG document is `image/svg+xml`, still an image) could import
/// a third-party URL from inside the data.
const INERT_DATA_TYPES: [&str; 4] = [
    "font/",
    "application/font-",
    "application/x-font-",
    "image/",
];

/// What a URL reaches once the browser resolves it against a first-party page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A path on the page's own origin.
    Relative,
    /// A `data:` URL of an inert type, or a scheme that makes no request (`about:`,
    /// `javascript:`, a word before a colon in text).
    Inert,
    /// Another host, or a `data:` URL that may load one.
    Network,
}

/// What a browser makes of a URL value (already unescaped from its CSS or header syntax): the
/// WHATWG URL parser first deletes tabs and newlines anywhere and C0 controls and spaces at
/// either end, and reads `\` as `/` in http(s) URLs.
pub fn reach(value: &str) -> Reach {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_judged_as_the_browser_reads_them() {
        for (url, expected) in [
            ("/a/b.woff2", Reach::Relative),
            ("a/b:c", Reach::Relative),
            ("?q=1", Reach::Relative),
            ("https://evil.example/", Reach::Network),
            ("HTTPS://evil.example/", Reach::Network),
            ("//evil.example/", Reach::Network),
            ("/\\evil.example/", Reach::Network),
            ("\\\\evil.example/", Reach::Network),
            // Tabs and newlines are deleted anywhere, controls and spaces trimmed at the ends.
            ("/\t/evil.example/", Reach::Network),
            ("/\n/evil.example/", Reach::Network),
            ("\u{1}//evil.example/", Reach::Network),
            ("  https://evil.example/", Reach::Network),
            ("ht\ttps://evil.example/", Reach::Network),
            ("data:font/woff2;base64,AA", Reach::Inert),
            ("data:image/png;base64,AA", Reach::Inert),
            ("data:text/css,@import 'x'", Reach::Network),
            ("data:;base64,AA", Reach::Network),
            ("about:invalid", Reach::Inert),
            ("javascript:alert(1)", Reach::Inert),
            ("ws://evil.example/", Reach::Network),
            ("file:///etc/passwd", Reach::Network),
            ("1x", Reach::Relative),
        ] {
            assert_eq!(reach(url), expected, "{url:?}");
        }
    }
}

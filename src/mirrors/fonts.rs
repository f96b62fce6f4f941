//! Web fonts (`kind = "fonts"`): the CSS API is fetched with a fixed modern browser User-Agent
//! and every third-party URL in the CSS is rewritten to a first-party path (by
//! [`super::css`]); font files are served with a correct type and CORS for cross-origin use.

/// The User-Agent sent for the CSS: a current desktop Chrome, so every visitor gets woff2 with
/// unicode-range subsets, whatever browser they run (never the visitor's own).
pub const CSS_USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

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

//! Every URL a page makes the browser contact: elements and attributes, inline CSS and
//! scripts, `<noscript>`, trackers' implied hit destinations; and the page's canonical URL.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use super::url::{absolute, host_of, origin_of, path_of, resolve};
use super::{AuditError, Found, Load};

/// The page's own absolute URL: `<link rel="canonical">`, else `<meta property="og:url">`.
pub fn canonical_site(html: &[u8]) -> Option<String> {
    use lol_html::{element, HtmlRewriter, Settings};

    let found: Rc<RefCell<(Option<String>, Option<String>)>> = Rc::default();
    let (f1, f2) = (found.clone(), found.clone());
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: vec![
                element!("link[rel][href]", move |el| {
                    let rel = el.get_attribute("rel").unwrap_or_default();
                    if rel
                        .split_ascii_whitespace()
                        .any(|t| t.eq_ignore_ascii_case("canonical"))
                    {
                        let mut f = f1.borrow_mut();
                        if f.0.is_none() {
                            f.0 = el
                                .get_attribute("href")
                                .map(|h| decode_entities(&h).into_owned());
                        }
                    }
                    Ok(())
                }),
                element!("meta[property][content]", move |el| {
                    let og = el
                        .get_attribute("property")
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("og:url"));
                    let mut f = f2.borrow_mut();
                    if og && f.1.is_none() {
                        f.1 = el
                            .get_attribute("content")
                            .map(|c| decode_entities(&c).into_owned());
                    }
                    Ok(())
                }),
            ],
            strict: false,
            ..Settings::new()
        },
        |_: &[u8]| {},
    );
    rewriter.write(html).and_then(|()| rewriter.end()).ok()?;
    let (canonical, og) = found.take();
    [canonical, og]
        .into_iter()
        .flatten()
        .find_map(|u| absolute(&u).filter(|a| !a.starts_with("//")))
}

/// `<link rel>` values that make the browser fetch the `href`.
const LOADING_RELS: &[&str] = &[
    "stylesheet",
    "preload",
    "modulepreload",
    "prefetch",
    "prerender",
    "icon",
    "apple-touch-icon",
    "apple-touch-icon-precomposed",
    "mask-icon",
    "manifest",
];

/// `<link rel>` values that only open a connection.
const HINT_RELS: &[&str] = &["preconnect", "dns-prefetch"];

/// `<script type>` values whose content is data, not code: their URLs are never fetched.
const DATA_SCRIPT_TYPES: &[&str] = &[
    "application/ld+json",
    "application/json",
    "text/template",
    "text/html",
    "text/x-template",
    "text/x-handlebars-template",
];

#[derive(Default)]
struct ScanState {
    found: Vec<Found>,
    /// An absolute `<base href>`: relative URLs after it resolve against it.
    base: Option<String>,
    /// Whether the current `<script>`'s text is code worth scanning.
    script_is_code: bool,
    script_text: String,
    style_text: String,
    noscript_text: String,
    gtag_loaded: bool,
    gtag_configured: bool,
    gtag_redirected: bool,
}

impl ScanState {
    /// Records `raw` if it is absolute, or relative under an absolute `<base>`.
    fn add(&mut self, raw: &str, place: &str, load: Load) {
        let url = absolute(raw).or_else(|| self.base.as_deref().and_then(|b| resolve(b, raw)));
        if let Some(url) = url {
            self.found.push(Found {
                url,
                place: place.to_owned(),
                load,
            });
        }
    }

    fn add_css(&mut self, css: &str, place: &str) {
        for (url, how) in css_urls(css) {
            self.add(&url, &format!("{place} {how}"), Load::Resource);
        }
    }

    fn add_script(&mut self, js: &str) {
        let js = js.replace("\\/", "/");
        let urls = script_urls(&js);
        if js.contains("_paq") {
            self.add_matomo(&js, urls);
        } else {
            for url in urls {
                self.add(&url, "inline <script>", Load::Resource);
            }
        }
        if js.contains("gtag(") && (js.contains("'config'") || js.contains("\"config\"")) {
            self.gtag_configured = true;
            if js.contains("server_container_url") || js.contains("transport_url") {
                self.gtag_redirected = true;
            }
        }
    }

    /// The Matomo snippet builds its URLs as `u+'matomo.php'` and `u+'matomo.js'` from a base
    /// `var u="//matomo.example/"`: report what is loaded and where hits go, not the base.
    fn add_matomo(&mut self, js: &str, urls: Vec<String>) {
        let names = |stem: &str| {
            let quoted = |ext: &str| {
                let name = format!("{stem}.{ext}");
                js.contains(&format!("'{name}'")) || js.contains(&format!("\"{name}\""))
            };
            (quoted("js"), quoted("php"))
        };
        let (mjs, mphp) = names("matomo");
        let (pjs, pphp) = names("piwik");
        for url in urls {
            let base = url.ends_with('/') && !url.contains('?');
            if !base || !(mjs || mphp || pjs || pphp) {
                self.add(&url, "inline <script> (Matomo)", Load::Resource);
                continue;
            }
            for (on, file, load) in [
                (mjs, "matomo.js", Load::Resource),
                (pjs, "piwik.js", Load::Resource),
                (mphp, "matomo.php", Load::Implied),
                (pphp, "piwik.php", Load::Implied),
            ] {
                if on {
                    let place = if load == Load::Implied {
                        "inline <script> (Matomo tracker URL)"
                    } else {
                        "inline <script> (Matomo)"
                    };
                    self.add(&format!("{url}{file}"), place, load);
                }
            }
        }
    }

    fn element(&mut self, el: &lol_html::html_content::Element<'_, '_>) {
        let tag = el.tag_name();
        let attr = |name: &str| {
            el.get_attribute(name)
                .map(|v| decode_entities(&v).into_owned())
        };
        let here = |a: &str| format!("<{tag} {a}>");
        match tag.as_str() {
            // Only the first <base> counts, as in browsers.
            "base" if self.base.is_none() => {
                self.base = attr("href").as_deref().and_then(absolute).map(|b| {
                    if b.starts_with("//") {
                        format!("https:{b}")
                    } else {
                        b
                    }
                });
            }
            "link" => {
                let rel = attr("rel").unwrap_or_default().to_ascii_lowercase();
                let tokens: Vec<&str> = rel.split_ascii_whitespace().collect();
                let label = tokens.join(" ");
                if let Some(href) = attr("href") {
                    if tokens
                        .iter()
                        .any(|t| LOADING_RELS.contains(t) || *t == "shortcut")
                    {
                        self.add(&href, &format!("<link rel={label} href>"), Load::Resource);
                    } else if tokens.iter().any(|t| HINT_RELS.contains(t)) {
                        self.add(&href, &format!("<link rel={label} href>"), Load::Hint);
                    }
                }
                if let Some(set) = attr("imagesrcset") {
                    for url in srcset_urls(&set) {
                        self.add(
                            &url,
                            &format!("<link rel={label} imagesrcset>"),
                            Load::Resource,
                        );
                    }
                }
            }
            "script" => {
                let src = attr("src");
                let kind = attr("type").unwrap_or_default().trim().to_ascii_lowercase();
                self.script_is_code = src.is_none() && !DATA_SCRIPT_TYPES.contains(&kind.as_str());
                self.script_text.clear();
                if let Some(src) = src {
                    self.add(&src, "<script src>", Load::Resource);
                    self.tracker_script(&src, &attr);
                }
            }
            "img" | "source" | "iframe" | "frame" | "video" | "audio" | "track" | "embed"
            | "input" | "image" => {
                for a in ["src", "poster", "data-src", "href", "xlink:href"] {
                    let applies = match a {
                        "poster" => tag == "video",
                        "href" | "xlink:href" => tag == "image",
                        "src" => {
                            tag != "input"
                                || attr("type").is_some_and(|t| t.eq_ignore_ascii_case("image"))
                        }
                        _ => true,
                    };
                    if let (true, Some(v)) = (applies, attr(a)) {
                        self.add(&v, &here(a), Load::Resource);
                    }
                }
                for a in ["srcset", "data-srcset"] {
                    if let Some(set) = attr(a) {
                        for url in srcset_urls(&set) {
                            self.add(&url, &here(a), Load::Resource);
                        }
                    }
                }
            }
            "object" => {
                if let Some(v) = attr("data") {
                    self.add(&v, &here("data"), Load::Resource);
                }
            }
            "a" | "area" => {
                // `ping` makes the browser POST to each URL on click; `href` is only a link.
                if let Some(v) = attr("ping") {
                    for url in v.split_ascii_whitespace() {
                        self.add(url, &here("ping"), Load::Resource);
                    }
                }
            }
            _ => {}
        }
        if let Some(v) = attr("background") {
            self.add(&v, &here("background"), Load::Resource);
        }
        if let Some(css) = attr("style") {
            self.add_css(&css, &here("style"));
        }
    }

    /// Analytics scripts post their hits somewhere the markup does not name.
    fn tracker_script(&mut self, src: &str, attr: &dyn Fn(&str) -> Option<String>) {
        let url = absolute(src).or_else(|| self.base.as_deref().and_then(|b| resolve(b, src)));
        // A relative script is served first-party; where it sends hits may still not be.
        let origin = url.as_deref().map(origin_of);
        let path = url.as_deref().map_or(src, path_of);
        if path.contains("/gtag/js") || src.starts_with("gtag/js") {
            self.gtag_loaded = true;
        }
        if attr("data-website-id").is_some() {
            // Umami: hits go to data-host-url, else the script's own origin.
            if let Some(host) = attr("data-host-url").or(origin) {
                let endpoint = format!("{}/api/send", host.trim_end_matches('/'));
                self.add(
                    &endpoint,
                    "<script data-website-id> (Umami sends hits here)",
                    Load::Implied,
                );
            }
        } else if attr("data-domain").is_some()
            || url.as_deref().and_then(host_of) == Some("plausible.io")
        {
            // Plausible: hits go to data-api, else the script's origin + /api/event.
            if let Some(endpoint) = attr("data-api").or(origin.map(|o| format!("{o}/api/event"))) {
                self.add(
                    &endpoint,
                    "<script data-domain> (Plausible sends hits here)",
                    Load::Implied,
                );
            }
        }
    }
}

/// Lists every absolute URL (and relative ones under an absolute `<base>`) that `html` makes the
/// browser contact, in page order, with where each was found.
pub fn scan(html: &[u8]) -> Result<Vec<Found>, AuditError> {
    scan_depth(html, 0)
}

fn scan_depth(html: &[u8], depth: u8) -> Result<Vec<Found>, AuditError> {
    use lol_html::{element, text, HtmlRewriter, Settings};

    let state = Rc::new(RefCell::new(ScanState::default()));
    let (s1, s2, s3, s4) = (state.clone(), state.clone(), state.clone(), state.clone());
    let handlers = vec![
        element!("*", move |el| {
            s1.borrow_mut().element(el);
            Ok(())
        }),
        text!("script", move |t| {
            let mut s = s2.borrow_mut();
            if s.script_is_code {
                s.script_text.push_str(t.as_str());
                if t.last_in_text_node() {
                    let js = std::mem::take(&mut s.script_text);
                    s.add_script(&js);
                }
            }
            Ok(())
        }),
        text!("style", move |t| {
            let mut s = s3.borrow_mut();
            s.style_text.push_str(t.as_str());
            if t.last_in_text_node() {
                let css = std::mem::take(&mut s.style_text);
                s.add_css(&css, "inline <style>");
            }
            Ok(())
        }),
        // With scripting on, <noscript> is raw text; its markup is what a browser without
        // JavaScript loads (Matomo's pixel, GTM's iframe), so it is scanned as HTML too.
        text!("noscript", move |t| {
            let mut s = s4.borrow_mut();
            s.noscript_text.push_str(t.as_str());
            Ok(())
        }),
    ];
    let mut rewriter = HtmlRewriter::new(
        Settings {
            element_content_handlers: handlers,
            // Ambiguous markup (e.g. a <script> inside <select>) is read the way browsers
            // read it instead of stopping the audit.
            strict: false,
            ..Settings::new()
        },
        |_: &[u8]| {},
    );
    rewriter
        .write(html)
        .and_then(|()| rewriter.end())
        .map_err(|e| AuditError::Html(e.to_string()))?;
    let mut s = state.take();
    // A page cut short inside <script> or <style> still had that text.
    let (js, css) = (
        std::mem::take(&mut s.script_text),
        std::mem::take(&mut s.style_text),
    );
    if s.script_is_code && !js.is_empty() {
        s.add_script(&js);
    }
    if !css.is_empty() {
        s.add_css(&css, "inline <style>");
    }
    let noscript = std::mem::take(&mut s.noscript_text);
    if depth == 0 && !noscript.is_empty() {
        // The inner markup keeps the page's <base>.
        let inner = match &s.base {
            Some(b) => format!("<base href=\"{b}\">{noscript}"),
            None => noscript,
        };
        for mut f in scan_depth(inner.as_bytes(), depth + 1)? {
            f.place = format!("<noscript> {}", f.place);
            s.found.push(f);
        }
    }
    if (s.gtag_loaded || s.gtag_configured) && !s.gtag_redirected {
        s.found.push(Found {
            url: "https://www.google-analytics.com/g/collect".into(),
            place: "gtag.js (sends hits here)".into(),
            load: Load::Implied,
        });
    }
    Ok(s.found)
}

/// Decodes the HTML character references that can appear in a URL attribute.
fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = if let Some(num) = name.strip_prefix('#') {
                let n = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                n.and_then(char::from_u32)
            } else {
                Some(match name {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    "sol" => '/',
                    "colon" => ':',
                    "period" => '.',
                    "quest" => '?',
                    "equals" => '=',
                    "num" => '#',
                    "percnt" => '%',
                    "comma" => ',',
                    "semi" => ';',
                    "lpar" => '(',
                    "rpar" => ')',
                    "plus" => '+',
                    _ => return None,
                })
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The URLs of a `srcset`: comma-separated candidates, each a URL and an optional descriptor.
fn srcset_urls(set: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = set;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            return out;
        }
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let url = &rest[..end];
        rest = &rest[end..];
        // A URL ending in commas has no descriptor; otherwise skip the descriptor to the comma.
        if url.ends_with(',') {
            out.push(url.trim_end_matches(',').to_owned());
        } else {
            out.push(url.to_owned());
            rest = rest.find(',').map_or("", |i| &rest[i..]);
        }
    }
}

/// URLs in CSS: `url(…)` and `@import "…"`, outside comments.
fn css_urls(css: &str) -> Vec<(String, &'static str)> {
    let b = css.as_bytes();
    // Indexes only ever move past ASCII bytes or to a found ASCII byte, and slices go
    // through `get`, so no index can split a character.
    let slice = |from: usize, to: usize| css.get(from..to).unwrap_or("");
    let starts = |i: usize, word: &str| {
        css.get(i..i + word.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    // A string's content from after its opening quote; returns it and the index after it.
    let read_string = |start: usize, quote: u8| -> (String, usize) {
        let mut j = start;
        while j < b.len() && b[j] != quote && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        let end = j.min(b.len());
        (slice(start, end).to_owned(), end + 1)
    };
    // The argument of `url(` starting at `j` (after the parenthesis).
    let read_url = |j: usize| -> (String, usize) {
        let j = skip_ws(j);
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            return read_string(j + 1, b[j]);
        }
        let end = slice(j, b.len()).find(')').map_or(b.len(), |e| j + e);
        (slice(j, end).trim().to_owned(), end + 1)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if starts(i, "/*") {
            i = slice(i + 2, b.len())
                .find("*/")
                .map_or(b.len(), |e| i + 2 + e + 2);
        } else if starts(i, "url(") {
            let (v, next) = read_url(i + 4);
            out.push((v, "url()"));
            i = next;
        } else if starts(i, "@import") {
            let j = skip_ws(i + 7);
            if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                let (v, next) = read_string(j + 1, b[j]);
                out.push((v, "@import"));
                i = next;
            } else if starts(j, "url(") {
                let (v, next) = read_url(j + 4);
                out.push((v, "@import"));
                i = next;
            } else {
                i = j;
            }
        } else if b[i] == b'"' || b[i] == b'\'' {
            // Other strings are text (content: "…"), never fetched.
            i = read_string(i + 1, b[i]).1;
        } else {
            i += 1;
        }
    }
    out
}

/// Absolute and scheme-relative URLs that start a string literal in JavaScript (or JSON):
/// `'https://…'`, `"//host/…"`, `` `https://…${x}` `` up to the interpolation. URLs in
/// comments, and `href="…"` markup inside strings (a link, not a load), are skipped.
fn script_urls(js: &str) -> Vec<String> {
    let b = js.as_bytes();
    let mut out = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if c != b'"' && c != b'\'' && c != b'`' {
            continue;
        }
        let rest = &js[i + 1..];
        let has_scheme = |scheme: &[u8]| {
            rest.as_bytes()
                .get(..scheme.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(scheme))
        };
        let scheme_relative = rest.starts_with("//")
            && rest
                .as_bytes()
                .get(2)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'{');
        if !(has_scheme(b"http://") || has_scheme(b"https://") || scheme_relative) {
            continue;
        }
        // `<a href="…">` inside a string is markup, a link; `el.href = '…'` in code is a load.
        if js[..i]
            .strip_suffix("href=")
            .is_some_and(|lead| lead.ends_with(char::is_whitespace))
        {
            continue;
        }
        let mut end = rest
            .find(|ch: char| ch == c as char || ch.is_whitespace() || "<>\\\"'`".contains(ch))
            .unwrap_or(rest.len());
        if c == b'`' {
            end = end.min(rest.find("${").unwrap_or(end));
        }
        if let Some(url) = absolute(&rest[..end]) {
            out.push(url);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(html: &str) -> Vec<(String, String)> {
        scan(html.as_bytes())
            .unwrap()
            .into_iter()
            .map(|f| (f.url, f.place))
            .collect()
    }

    fn only_urls(html: &str) -> Vec<String> {
        urls(html).into_iter().map(|(u, _)| u).collect()
    }

    #[test]
    fn entities_in_attributes_are_decoded() {
        assert_eq!(
            decode_entities("a?x=1&#038;y=2&amp;z=3&#x26;w&unknown;&"),
            "a?x=1&y=2&z=3&w&unknown;&"
        );
        let found = only_urls("<link rel=stylesheet href='https&#58;//fonts.googleapis.com/css?family=A&#038;display=swap'>");
        assert_eq!(
            found,
            vec!["https://fonts.googleapis.com/css?family=A&display=swap"]
        );
    }

    #[test]
    fn every_loading_attribute_is_found() {
        let html = r#"<html><head>
<link rel="Stylesheet" href="https://a.example/s.css">
<link rel="canonical" href="https://b.example/not-loaded">
<link rel="alternate" href="https://b.example/feed">
<link rel="preconnect" href="https://c.example">
<link rel="preload" as="image" imagesrcset="https://d.example/1.jpg 1x, https://d.example/2.jpg 2x">
<link rel="shortcut icon" href="//e.example/favicon.ico">
</head><body style="background:url('https://f.example/bg.png')">
<img src="https://g.example/a.png" srcset="https://g.example/a,1.png 1x,https://g.example/b.png 2x">
<IMG SRC=https://h.example/up.png>
<picture><source srcset="https://i.example/a.webp"></picture>
<video src="https://j.example/v.mp4" poster="https://j.example/p.jpg"><track src="https://j.example/t.vtt"></video>
<audio src="https://k.example/a.mp3"></audio>
<iframe src="https://l.example/embed"></iframe><embed src="https://m.example/e.swf"><object data="https://n.example/o.svg"></object>
<input type="image" src="https://o.example/btn.png"><input type="text" src="https://o.example/no">
<a href="https://p.example/link" ping="https://q.example/ping">x</a>
<img data-src="https://r.example/lazy.jpg" alt="">
<table background="https://s.example/t.gif"></table>
<svg><image href="https://t.example/i.png"/></svg>
<img src="/first-party.png"><script src="first-party.js"></script>
</body></html>"#;
        let got = urls(html);
        let want = [
            ("https://a.example/s.css", "<link rel=stylesheet href>"),
            ("https://c.example", "<link rel=preconnect href>"),
            ("https://d.example/1.jpg", "<link rel=preload imagesrcset>"),
            ("https://d.example/2.jpg", "<link rel=preload imagesrcset>"),
            ("//e.example/favicon.ico", "<link rel=shortcut icon href>"),
            ("https://f.example/bg.png", "<body style> url()"),
            ("https://g.example/a.png", "<img src>"),
            ("https://g.example/a,1.png", "<img srcset>"),
            ("https://g.example/b.png", "<img srcset>"),
            ("https://h.example/up.png", "<img src>"),
            ("https://i.example/a.webp", "<source srcset>"),
            ("https://j.example/v.mp4", "<video src>"),
            ("https://j.example/p.jpg", "<video poster>"),
            ("https://j.example/t.vtt", "<track src>"),
            ("https://k.example/a.mp3", "<audio src>"),
            ("https://l.example/embed", "<iframe src>"),
            ("https://m.example/e.swf", "<embed src>"),
            ("https://n.example/o.svg", "<object data>"),
            ("https://o.example/btn.png", "<input src>"),
            ("https://q.example/ping", "<a ping>"),
            ("https://r.example/lazy.jpg", "<img data-src>"),
            ("https://s.example/t.gif", "<table background>"),
            ("https://t.example/i.png", "<image href>"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn css_urls_in_style_elements_and_attributes() {
        let css = r#"/* url(https://comment.example/x) */ @import "https://a.example/i.css"; @import url(//b.example/j.css) screen;
.x { background: URL( "https://c.example/c.png" ); content: "url(https://text.example/)"; }
@font-face { src: url(https://d.example/f.woff2) format('woff2'), url(local.woff) }"#;
        let got: Vec<(String, &str)> = css_urls(css);
        assert_eq!(
            got,
            vec![
                ("https://a.example/i.css".to_owned(), "@import"),
                ("//b.example/j.css".to_owned(), "@import"),
                ("https://c.example/c.png".to_owned(), "url()"),
                ("https://d.example/f.woff2".to_owned(), "url()"),
                ("local.woff".to_owned(), "url()"),
            ]
        );
        for broken in [
            "url(",
            "@import '",
            "url('https://x.example",
            "/* open",
            "@import",
        ] {
            let _ = css_urls(broken);
        }
    }

    #[test]
    fn script_urls_are_quoted_literals_not_comments_or_links() {
        let js = r#"// see https://comment.example/docs
var u="//matomo.example/"; var t = 'https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png';
var a = '&copy; <a href="https://www.openstreetmap.org/copyright">OSM</a>';
l.href = 'https://fonts.googleapis.com/css2?family=Inter'; var j = {"u":"https:\/\/s.w.org\/images\/"};
var tpl = `https://cdn.example/${v}/x.js`; var notaurl = 'https://' + host + '/x';"#;
        let got = script_urls(&js.replace("\\/", "/"));
        assert_eq!(
            got,
            vec![
                "//matomo.example/",
                "https://{s}.tile.openstreetmap.org/{z}/{x}/{y}.png",
                "https://fonts.googleapis.com/css2?family=Inter",
                "https://s.w.org/images/",
                "https://cdn.example/",
            ]
        );
    }

    #[test]
    fn data_scripts_are_not_code() {
        let html = r#"<script type="application/ld+json">{"@context":"https://schema.org","logo":"https://cdn.example/logo.png"}</script>
<script type="module">import x from "https://esm.example/x.js";</script>
<script type="text/plain" data-cookieconsent="statistics">load("https://later.example/t.js")</script>"#;
        assert_eq!(
            only_urls(html),
            vec!["https://esm.example/x.js", "https://later.example/t.js"]
        );
    }

    #[test]
    fn trackers_and_their_hit_destinations() {
        let matomo = r#"<script>
  var _paq = window._paq = window._paq || [];
  (function() { var u="//stats.example.org/";
    _paq.push(['setTrackerUrl', u+'matomo.php']); _paq.push(['setSiteId', '1']);
    var d=document, g=d.createElement('script'); g.src=u+'matomo.js'; })();
</script><noscript><p><img src="//stats.example.org/matomo.php?idsite=1&amp;rec=1" alt=""></p></noscript>"#;
        assert_eq!(
            urls(matomo),
            vec![
                (
                    "//stats.example.org/matomo.js".into(),
                    "inline <script> (Matomo)".into()
                ),
                (
                    "//stats.example.org/matomo.php".into(),
                    "inline <script> (Matomo tracker URL)".into()
                ),
                (
                    "//stats.example.org/matomo.php?idsite=1&rec=1".into(),
                    "<noscript> <img src>".into()
                ),
            ]
        );
        let gtag = r#"<script async src="https://www.googletagmanager.com/gtag/js?id=G-1"></script>
<script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}gtag('js',new Date());gtag('config','G-1');</script>"#;
        assert_eq!(
            only_urls(gtag),
            vec![
                "https://www.googletagmanager.com/gtag/js?id=G-1",
                "https://www.google-analytics.com/g/collect"
            ]
        );
        let pointed = r#"<script async src="/gtag/js?id=G-1"></script>
<script>gtag('config','G-1',{server_container_url:'https://site.example/a'});</script>"#;
        assert_eq!(only_urls(pointed), vec!["https://site.example/a"]);
        let others = r#"<script defer data-domain="site.example" src="https://plausible.io/js/script.js"></script>
<script defer src="https://cloud.umami.is/script.js" data-website-id="94db1cb1"></script>
<script defer src="/u/script.js" data-website-id="x" data-host-url="https://umami.example"></script>"#;
        assert_eq!(
            only_urls(others),
            vec![
                "https://plausible.io/js/script.js",
                "https://plausible.io/api/event",
                "https://cloud.umami.is/script.js",
                "https://cloud.umami.is/api/send",
                "https://umami.example/api/send",
            ]
        );
    }

    #[test]
    fn base_href_makes_relative_urls_third_party() {
        let html = r##"<base href="https://cdn.example/site/v2/"><img src="img/a.png"><img src="../b.png"><img src="/c.png"><img src="#x"><a href="rel.html">x</a>"##;
        assert_eq!(
            only_urls(html),
            vec![
                "https://cdn.example/site/v2/img/a.png",
                "https://cdn.example/site/b.png",
                "https://cdn.example/c.png"
            ]
        );
        assert_eq!(
            resolve("https://h.example/a/b?q", "?z"),
            Some("https://h.example/a/b?z".into())
        );
    }

    #[test]
    fn malformed_markup_never_fails() {
        for html in [
            "<img src=\"https://a.example/x.png",
            "<script>var u = 'https://b.example/",
            "<style>@import 'https://c.example/x.css",
            "<<<>>><img/src=https://d.example/y.png/><div <p",
            "<select><script>'https://e.example/'</script></select>",
            "\u{0}\u{feff}<p>é\u{fffd}</p>",
        ] {
            let _ = scan(html.as_bytes()).unwrap();
        }
        assert_eq!(
            only_urls("<script>var u = 'https://b.example/x.js"),
            vec!["https://b.example/x.js"]
        );
        assert_eq!(
            scan(&[
                0xff, 0xfe, b'<', b'i', b'm', b'g', b' ', b's', b'r', b'c', b'=', b'/', b'/', b'x',
                b'.', b'e', b'x', b'>'
            ])
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn srcset_candidates() {
        assert_eq!(
            srcset_urls(" a.png 1x, b.png 2x,c.png,, d.png 100w "),
            vec!["a.png", "b.png", "c.png", "d.png"]
        );
        assert_eq!(
            srcset_urls("https://x.example/a,b.png 1x"),
            vec!["https://x.example/a,b.png"]
        );
    }
}

//! Stylesheet rewriting (the Google Fonts and Bunny Fonts routes). Properties: no panic; the
//! rewritten CSS has no `://` and no URL a browser would fetch from a third party: every url(),
//! @import and image-set() URL is first-party, a data: URI or about:invalid. Checked three ways:
//! the oracle's own CSS tokenizer, Servo's `cssparser` (what Firefox uses), and the WHATWG URL
//! parser resolving each URL against the site. The upstream's bytes need not be UTF-8 and may
//! claim any charset: tamis must decode them and answer UTF-8, saying so, so that the browser
//! reads the very text the oracles check. Input: a byte picking the Content-Type charset, then
//! the stylesheet's bytes.
#![no_main]

use std::sync::OnceLock;

use cssparser::{ParseError, Parser, ParserInput, Token};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use tamis::routes::{Role, Router};
use tamis_fuzz::oracles::{check_css, css_url_is_first_party, css_urls, test_router, UrlContext};

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(test_router)
}

/// Every URL a browser would fetch, as cssparser tokenizes the stylesheet.
fn walk(p: &mut Parser<'_, '_>, image_set: bool, out: &mut Vec<(UrlContext, String)>) {
    let mut after_import = false;
    let mut url_string = false;
    loop {
        let token = match p.next_including_whitespace_and_comments() {
            Ok(t) => t.clone(),
            Err(_) => break,
        };
        match token {
            Token::WhiteSpace(_) | Token::Comment(_) => continue,
            Token::UnquotedUrl(u) => out.push((UrlContext::UrlToken, u.to_string())),
            Token::QuotedString(s) => {
                if url_string {
                    out.push((UrlContext::UrlString, s.to_string()));
                } else if after_import {
                    out.push((UrlContext::Import, s.to_string()));
                } else if image_set {
                    out.push((UrlContext::ImageSet, s.to_string()));
                }
            }
            Token::Function(name) => {
                let name = name.to_ascii_lowercase();
                let inner = matches!(name.as_str(), "image-set" | "-webkit-image-set" | "src");
                let is_url = name == "url";
                let _ = p.parse_nested_block(|p| {
                    if is_url {
                        // url("…"): the first string is the URL.
                        if let Ok(Token::QuotedString(s)) = p.next() {
                            out.push((UrlContext::UrlString, s.to_string()));
                        }
                    }
                    walk(p, inner, out);
                    Ok::<(), ParseError<'_, ()>>(())
                });
            }
            Token::ParenthesisBlock | Token::SquareBracketBlock | Token::CurlyBracketBlock => {
                let _ = p.parse_nested_block(|p| {
                    walk(p, image_set, out);
                    Ok::<(), ParseError<'_, ()>>(())
                });
            }
            Token::AtKeyword(name) => {
                after_import = name.eq_ignore_ascii_case("import");
                url_string = false;
                continue;
            }
            _ => {}
        }
        after_import = false;
        url_string = false;
    }
}

fn cssparser_urls(css: &str) -> Vec<(UrlContext, String)> {
    let mut input = ParserInput::new(css);
    let mut p = Parser::new(&mut input);
    let mut out = Vec::new();
    walk(&mut p, false, &mut out);
    out
}

/// The Content-Type charsets an upstream may claim; the first input byte picks one.
const CHARSETS: &[&str] = &[
    "",
    "utf-8",
    "iso-2022-jp",
    "utf-16le",
    "utf-16be",
    "shift_jis",
    "windows-1252",
    "gb18030",
    "euc-kr",
    "big5",
    "x-user-defined",
    "replacement",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let charset = CHARSETS[usize::from(pick) % CHARSETS.len()];
    // The site may be served over https or http (where `https:host/x` leaves it too).
    let sites = [
        url::Url::parse("https://site.example/fonts/css2").expect("site"),
        url::Url::parse("http://site.example/fonts/css2").expect("site"),
    ];
    for route in router().routes() {
        if route.role != Role::FontCss {
            continue;
        }
        let mut headers = HeaderMap::new();
        let ct = if charset.is_empty() {
            "text/css".to_owned()
        } else {
            format!("text/css; charset={charset}")
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&ct).expect("type"),
        );
        // A panic is a crash libFuzzer reports. Only a `@charset` naming an encoding no
        // browser knows is refused (502), and only when nothing before it names one.
        let Some(out) = route.rewrite(StatusCode::OK, &mut headers, body, 1 << 24) else {
            assert!(
                charset.is_empty() && body.starts_with(b"@charset \""),
                "CSS refused: {:?}",
                String::from_utf8_lossy(body)
            );
            continue;
        };
        // The browser reads tamis's answer as its Content-Type says: UTF-8, whatever the
        // upstream's charset was. So the answer must be UTF-8, and say so.
        assert_eq!(headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
        let out = std::str::from_utf8(&out).expect("rewritten CSS is not UTF-8");
        let css = String::from_utf8_lossy(body);
        check_css(&css, out);
        // What Servo's tokenizer and the WHATWG URL parser see must agree with the oracle.
        let ours = css_urls(out);
        for (context, value) in cssparser_urls(out) {
            // WHATWG: a network URL naming a host other than the site's is fetched from a third
            // party (an unknown scheme makes no request).
            let third_party = sites.iter().any(|site| {
                site.join(&value).is_ok_and(|u| {
                    ["http", "https", "ftp", "ws", "wss", "file"].contains(&u.scheme())
                        && u.host_str().is_some_and(|h| h != "site.example")
                })
            });
            let first_party = css_url_is_first_party(&value);
            assert!(
                !(third_party && first_party),
                "WHATWG resolves {value:?} ({context:?}) to another host, the oracle did not\ninput {css:?}\noutput {out:?}"
            );
            // check_css passed, so a third-party URL here is one the oracle's tokenizer missed.
            let seen = ours.iter().any(|u| u.value == value);
            assert!(
                first_party,
                "cssparser finds third-party URL {value:?} ({context:?}); oracle saw it: {seen}\ninput {css:?}\noutput {out:?}"
            );
        }
    }
});

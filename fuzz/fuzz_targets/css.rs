//! Font CSS rewriting (the Google Fonts and Bunny Fonts routes). Properties: no panic; the
//! rewritten CSS has no `://` and no URL a browser would fetch from a third party: every url(),
//! @import and image-set() URL is first-party, a data: URI or about:invalid. Checked three ways:
//! the oracle's own CSS tokenizer, Servo's `cssparser` (what Firefox uses), and the WHATWG URL
//! parser resolving each URL against the site. Input: the CSS.
#![no_main]

use std::sync::OnceLock;

use cssparser::{ParseError, Parser, ParserInput, Token};
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

fuzz_target!(|data: &[u8]| {
    let Ok(css) = std::str::from_utf8(data) else {
        return;
    };
    // The site may be served over https or http (where `https:host/x` leaves it too).
    let sites = [
        url::Url::parse("https://site.example/fonts/css2").expect("site"),
        url::Url::parse("http://site.example/fonts/css2").expect("site"),
    ];
    for route in router().routes() {
        if route.role != Role::FontCss {
            continue;
        }
        // A panic is a crash libFuzzer reports.
        let Some(out) = route.rewrite(data) else {
            // Refused (answered 502): only for an escape outside a string, which CSS in the
            // wild never needs; so a refusal needs a backslash in the input.
            assert!(css.contains('\\'), "CSS without escapes refused: {css:?}");
            continue;
        };
        let out = std::str::from_utf8(&out).expect("rewritten CSS is not UTF-8");
        check_css(css, out);
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

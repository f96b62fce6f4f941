//! `Link` response headers on a static route (the only kind that passes them). Properties: no
//! panic; what reaches the browser sends it nowhere but the site, however a browser splits and
//! parses it: every target, `anchor` and `imagesrcset` candidate, split Chromium's way (on every
//! comma outside quotes) and RFC 8288's (not inside `<…>`), read the same both ways, resolves
//! on the site by the oracle's reading and by the WHATWG URL parser's; the form is plain
//! (filtering again changes nothing); no target is invented. Input: one `Link` value per line.
#![no_main]

use http::header::{self, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tamis::policy::{scrub_response, ResponseKind};
use tamis_fuzz::oracles::{check_link, link_entries, link_urls};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let mut headers = HeaderMap::new();
    for line in &lines {
        // What hyper would have parsed: a header value's bytes.
        if let Ok(v) = HeaderValue::from_str(line) {
            headers.append(header::LINK, v);
        }
    }
    scrub_response(&mut headers, ResponseKind::Static);
    let out: Vec<String> = headers
        .get_all(header::LINK)
        .iter()
        .map(|v| v.to_str().expect("Link is text").to_owned())
        .collect();
    check_link(&lines, &out);
    let sites = [
        url::Url::parse("https://site.example/page").expect("site"),
        url::Url::parse("http://site.example/page").expect("site"),
    ];
    for value in &out {
        for u in link_urls(&link_entries(value, false)) {
            for site in &sites {
                if let Ok(resolved) = site.join(&u) {
                    assert!(
                        !["http", "https", "ftp", "ws", "wss", "file"].contains(&resolved.scheme())
                            || resolved.host_str() == Some("site.example"),
                        "WHATWG resolves {u:?} in Link {value:?} to {resolved}\ninput {lines:?}"
                    );
                }
            }
        }
    }
});

//! Request header scrubbing, on every route of the test config (non-EU, EU with
//! forward_headers, EU pass-through, fonts CSS, tiles with a fixed Referer, analytics with a
//! generalised User-Agent). Properties: only allowlisted names (plus User-Agent, the configured
//! Referer, forward_headers) leave; removed headers change nothing; no value of a removed header
//! appears in what is sent; planted Cookie, X-Forwarded-For, Accept-Language… values never leave.
//! Input: one header per line, `name: value` (an unparseable name picks one from a pool).
#![no_main]

use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tamis::routes::Router;
use tamis_fuzz::oracles::{
    assert_absent, check_scrub, fresh_secret, header_pool, planted_headers, test_router, Planted,
};

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(test_router)
}

fn pool() -> &'static [HeaderName] {
    static P: OnceLock<Vec<HeaderName>> = OnceLock::new();
    P.get_or_init(header_pool)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fuzz_target!(|data: &[u8]| {
    let mut visitor = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (&line[..0], line),
        };
        let name = HeaderName::from_bytes(trim(name)).unwrap_or_else(|_| {
            let i = name.iter().map(|&b| usize::from(b)).sum::<usize>() + name.len();
            pool()[i % pool().len()].clone()
        });
        if let Ok(v) = HeaderValue::from_bytes(trim(value)) {
            visitor.append(name, v);
        }
    }
    for route in router().routes() {
        check_scrub(route, &visitor);
    }
    let Some(secret) = fresh_secret(&[data]) else {
        return;
    };
    let planted = planted_headers(&secret);
    for (name, value, _) in &planted {
        visitor.append(
            name.clone(),
            HeaderValue::from_str(value).expect("planted value"),
        );
    }
    for route in router().routes() {
        if route.policy.pass_through {
            continue; // forwards end-to-end headers by design (EU, flagged by `tamis check`)
        }
        check_scrub(route, &visitor);
        let sent = route.scrub(&visitor);
        let text: Vec<u8> = sent
            .iter()
            .flat_map(|(n, v)| [n.as_str().as_bytes(), b": ", v.as_bytes(), b"\n"].concat())
            .collect();
        let secrets: Vec<Planted> = planted
            .iter()
            .filter(|(n, _, _)| !route.policy.forwards(n))
            .map(|(_, _, p)| p.clone())
            .collect();
        assert_absent(&text, &secrets, &format!("route {}", route.config.name));
    }
});

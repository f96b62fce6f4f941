//! GA4 `/g/collect` scrubbing (query + body lines). Properties: only parameters the table keeps
//! leave (pseudonymised cid, generalised dl/dr/ul, allowlisted custom fields); removing the
//! dropped ones changes nothing; planted uip, _uip, uid, cid, _fid, ecid, _gl, custom fields,
//! page-URL queries and fragments, external referrers never reach Google.
//! Input: line 1 the query string, the rest the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tamis_fuzz::oracles::{assert_absent, check_ga4, fresh_secret, ga4_planted, interleave};
use tamis_fuzz::{analytics, first_line, seed};

fuzz_target!(|data: &[u8]| {
    let (query, body) = first_line(data);
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let a = analytics();
    check_ga4(query, body, a);
    let (Some(secret), Ok(body)) = (fresh_secret(&[data]), std::str::from_utf8(body)) else {
        return;
    };
    let (pairs, planted) = ga4_planted(&secret);
    let s = seed(data);
    let query = interleave(query, &pairs, s);
    let mut lines: Vec<String> = body
        .split('\n')
        .enumerate()
        .map(|(i, l)| {
            if l.trim().is_empty() {
                l.to_owned()
            } else {
                interleave(l.trim_end_matches('\r'), &pairs[i % pairs.len()..], s + i)
            }
        })
        .collect();
    lines.push(pairs.join("&"));
    let body = lines.join("\n");
    if let Some((q, b)) = check_ga4(&query, body.as_bytes(), a) {
        assert_absent(q.as_bytes(), &planted, "ga4 query");
        assert_absent(&b, &planted, "ga4 body");
    }
});

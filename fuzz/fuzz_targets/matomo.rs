//! Matomo scrubbing: the query, and the POST body (form, or bulk JSON `{"requests": [...]}`).
//! Properties: only table-kept parameters leave (pseudonymised _id/cid, generalised url, urlref,
//! ua, lang, allowlisted custom variables and dimensions), each once and as PHP reads it;
//! removing dropped ones changes nothing; a bulk body keeps only `requests`; a form post is
//! read with its query as `$_GET + $_POST`; planted cip, token_auth, uid, _id, cid, ua
//! details, geo and visit-history values never reach the server.
//! Input: line 1 the query string, the rest the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tamis_fuzz::oracles::{
    assert_absent, check_matomo_body, check_matomo_query, check_matomo_request, fresh_secret,
    interleave, matomo_planted,
};
use tamis_fuzz::{analytics, first_line, seed};

fuzz_target!(|data: &[u8]| {
    let (query, body) = first_line(data);
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let a = analytics();
    check_matomo_query(query, a);
    if !body.is_empty() {
        check_matomo_body(body, a);
    }
    if std::str::from_utf8(body).is_ok() {
        check_matomo_request(query, body, a);
    }
    let Some(secret) = fresh_secret(&[data]) else {
        return;
    };
    let (pairs, planted) = matomo_planted(&secret);
    let s = seed(data);
    if let Some(q) = check_matomo_query(&interleave(query, &pairs, s), a) {
        assert_absent(q.as_bytes(), &planted, "matomo query");
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let planted_body = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut o)) => {
            if let Some(Value::Array(reqs)) = o.get_mut("requests") {
                for (i, r) in reqs.iter_mut().enumerate() {
                    if let Value::String(q) = r {
                        *q = format!("?{}", interleave(q, &pairs[i % pairs.len()..], s + i));
                    }
                }
                reqs.push(Value::String(format!("?{}", pairs.join("&"))));
            }
            o.entry("token_auth")
                .or_insert_with(|| Value::String(format!("{secret}02")));
            Value::Object(o).to_string()
        }
        _ if text.trim_start().starts_with('{') => return,
        _ => interleave(text.trim(), &pairs, s),
    };
    if let Some(b) = check_matomo_body(planted_body.as_bytes(), a) {
        assert_absent(&b, &planted, "matomo body");
    }
    let planted_query = interleave(query, &pairs, s + 1);
    if let Some((q, b)) = check_matomo_request(&planted_query, planted_body.as_bytes(), a) {
        assert_absent(q.as_bytes(), &planted, "matomo request query");
        assert_absent(&b, &planted, "matomo request body");
    }
});

//! Plausible `/api/event` scrubbing. Properties: only the table's fields leave, `u` without
//! query (but allow_url_params) or fragment, `r` only when same-site, custom props allowlisted;
//! removing dropped fields changes nothing; planted secrets in unknown fields, props, meta, the
//! page URL's query and an external referrer never reach Plausible. Input: the JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tamis_fuzz::analytics;
use tamis_fuzz::oracles::{assert_absent, check_plausible, fresh_secret, plausible_planted};

fuzz_target!(|data: &[u8]| {
    let a = analytics();
    check_plausible(data, a);
    let Some(secret) = fresh_secret(&[data]) else {
        return;
    };
    let mut event = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(o)) => o,
        _ => {
            let mut o = Map::new();
            o.insert("n".into(), "pageview".into());
            o.insert("d".into(), "blog.example".into());
            o
        }
    };
    let planted = plausible_planted(&mut event, &secret);
    if let Some(out) = check_plausible(Value::Object(event).to_string().as_bytes(), a) {
        assert_absent(&out, &planted, "plausible");
    }
});

//! Umami `/api/send` scrubbing, and Umami's answer. Properties: only `type: "event"` is
//! forwarded, as `{"type","payload"}` with the table's fields; removing dropped fields changes
//! nothing; planted ids, screen, data, URL query, external referrer and top-level fields never
//! reach Umami; the answer never hands the visitor sessionId, visitId or cache.
//! Input: the JSON body (also read as an answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tamis_fuzz::analytics;
use tamis_fuzz::oracles::{
    assert_absent, check_umami, check_umami_answer, fresh_secret, umami_planted, Planted,
};

fuzz_target!(|data: &[u8]| {
    let a = analytics();
    check_umami(data, a);
    check_umami_answer(data);
    let Some(secret) = fresh_secret(&[data]) else {
        return;
    };
    let mut body = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    // The answer, with identifiers planted.
    let mut answer = body.clone();
    let mut answer_planted = Vec::new();
    for (i, k) in ["sessionId", "visitId", "cache"].into_iter().enumerate() {
        let s = format!("{secret}{:02}", 90 + i);
        answer.insert(k.into(), Value::String(s.clone()));
        answer_planted.push(Planted {
            secret: s,
            field: k,
        });
    }
    let out = check_umami_answer(Value::Object(answer).to_string().as_bytes());
    assert_absent(&out, &answer_planted, "umami answer");
    // The event.
    body.entry("type").or_insert_with(|| "event".into());
    let planted = umami_planted(&mut body, &secret);
    if let Some(out) = check_umami(Value::Object(body).to_string().as_bytes(), a) {
        assert_absent(&out, &planted, "umami");
    }
});

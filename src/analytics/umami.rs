//! Umami `POST /api/send`: `{"type": "event", "payload": {…}}`. Its JSON answer carries session
//! identifiers (and a cache token the tracker sends back): those never reach the visitor.

use serde_json::Value;

use super::{
    field, json_kept, json_page_url, json_referrer, primary_language, raw_object, raw_str,
    raw_string, read_object, write_object, Context, Field, Json, Key, Outcome, ScrubError, Tally,
};

/// The payload field table (`tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("website", Outcome::Kept, "site id"),
    ("hostname", Outcome::Kept, ""),
    ("title", Outcome::Kept, "page title"),
    ("name", Outcome::Kept, "event name"),
    ("tag", Outcome::Kept, ""),
    (
        "url",
        Outcome::Generalised,
        "no path parameters, no fragment, no query but allow_url_params",
    ),
    (
        "referrer",
        Outcome::Generalised,
        "same-site: origin and path, no path parameters; external: dropped",
    ),
    ("language", Outcome::Generalised, "primary language only"),
    ("screen", Outcome::Dropped, "screen resolution"),
    ("id", Outcome::Dropped, "distinct id"),
    (
        "data",
        Outcome::Dropped,
        "keys not in allow_event_params; objects and arrays under a kept key",
    ),
    (
        "*",
        Outcome::Dropped,
        "any other field; an object or array where the table keeps a scalar; only type \"event\" is forwarded",
    ),
];

const KEPT: &[&str] = &["website", "hostname", "title", "name", "tag"];

/// The payload field holding custom data, filtered against `allow_event_params`.
const CUSTOM: &[&str] = &["data"];

/// What links events (`tamis check` and the transparency page print it).
pub const LINKAGE: &str = "no identifier leaves (the distinct id is dropped, and the answer's \
session ids and cache token never reach the browser to be sent back): nothing links two events \
but what they say (page, time)";

/// Answer fields that identify a session or visit: removed before the visitor sees the answer.
pub const ANSWER_IDENTIFIERS: &[&str] = &["sessionId", "visitId", "cache"];

/// Scrubs a `/api/send` body. Values are read raw: what a rule keeps or reads is parsed,
/// what it drops is only scanned, never built.
pub fn scrub(body: &[u8], ctx: &Context<'_>, tally: &mut Tally) -> Result<Vec<u8>, ScrubError> {
    let text = std::str::from_utf8(body).map_err(|e| ScrubError::Body(e.to_string()))?;
    let value = raw_object(text)?;
    let Some(kind) = field(&value, "type").and_then(raw_str) else {
        return Err(ScrubError::Body("no \"type\"".into()));
    };
    // "identify" ties a session to a person: never forwarded.
    if kind != "event" {
        return Err(ScrubError::Body(format!("type {kind:?} is not forwarded")));
    }
    // The custom `data` is filtered as the payload is read.
    let allow = &ctx.settings.allow_event_params;
    let Some(Ok(payload)) =
        field(&value, "payload").map(|p| read_object(p.text(), CUSTOM, allow, tally))
    else {
        return Err(ScrubError::Body("no \"payload\" object".into()));
    };
    let site_host = match payload.get("hostname") {
        Some(Field::Raw(v)) => raw_str(*v),
        _ => None,
    };
    let mut out: Vec<(Key<'_>, Json<'_>)> = Vec::with_capacity(payload.len());
    for (k, v) in payload {
        let kept = match (k.0.as_ref(), v) {
            // Filtered (and counted) as they were read.
            (_, Field::Allowed(fields)) => fields,
            (name, Field::Raw(v)) if KEPT.contains(&name) => json_kept(v, tally),
            ("url", Field::Raw(v)) => json_page_url(v, &ctx.settings.allow_url_params, tally),
            // Umami expects the field; an empty referrer means none.
            ("referrer", Field::Raw(v)) => {
                raw_string(&json_referrer(v, site_host.as_deref(), tally).unwrap_or_default())
            }
            ("language", Field::Raw(v)) => {
                tally.add(Outcome::Generalised);
                raw_str(v)
                    .and_then(|l| primary_language(&l))
                    .and_then(|l| raw_string(&l))
            }
            _ => {
                tally.add(Outcome::Dropped);
                None
            }
        };
        if let Some(v) = kept {
            out.push((k, v));
        }
    }
    // Written as serde_json writes `{"type": "event", "payload": map}`; the payload's keys are
    // in order (a map), so the output is too.
    let mut body = br#"{"type":"event","payload":"#.to_vec();
    write_object(&mut body, out.iter().map(|(k, v)| (&*k.0, v)));
    body.push(b'}');
    Ok(body)
}

/// The answer fields the browser gets, each only as a boolean: the tracker reads `disabled`
/// (it stops sending when true) and nothing else tamis passes.
pub const ANSWER_KEPT: &[&str] = &["disabled"];

/// The browser's answer to a tracked event: only [`ANSWER_KEPT`], typed and serialised again
/// by tamis; the session ids, the cache token and anything the upstream echoes never pass.
/// Anything unparseable becomes `{}`.
pub fn scrub_answer(body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
        for k in ANSWER_KEPT {
            if let Some(b) = o.get(*k).and_then(Value::as_bool) {
                out.insert((*k).to_owned(), Value::Bool(b));
            }
        }
    }
    Value::Object(out).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::{Pseudonymizer, Settings};
    use super::*;
    use std::time::Duration;

    /// Runs `f` with a scrub context allowing the `data` keys `allow`.
    fn with_ctx<T>(allow: &[&str], f: impl FnOnce(&Context<'_>) -> T) -> T {
        let settings = Settings {
            allow_event_params: allow.iter().map(|s| s.to_string()).collect(),
            allow_url_params: vec![],
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        f(&Context {
            settings: &settings,
            pseudonyms: &p,
            route: "umami",
            visitor: &crate::analytics::visitor::Visitor::NONE,
            matomo_token: None,
        })
    }

    #[test]
    fn the_fixture_is_scrubbed_field_by_field() {
        with_ctx(&["plan"], |ctx| {
            let mut t = Tally::default();
            let out = scrub(
                include_bytes!("../../tests/fixtures/umami-send.json"),
                ctx,
                &mut t,
            )
            .unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            let p = &v["payload"];
            assert_eq!(p["url"], "/reset");
            assert_eq!(p["referrer"], "");
            assert_eq!(p["language"], "fr");
            assert_eq!(p["data"], serde_json::json!({"plan": "pro"}));
            assert!(p.get("screen").is_none());
            let text = String::from_utf8(out).unwrap();
            for secret in ["s3cr3t", "2560", "alice", "mail.example"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            let identify = br#"{"type":"identify","payload":{"website":"x","id":"alice"}}"#;
            assert!(scrub(identify, ctx, &mut t).is_err());
        });
    }

    #[test]
    fn kept_data_keeps_only_scalar_values() {
        let run = |payload: &str| {
            let body = format!(r#"{{"type":"event","payload":{payload}}}"#);
            let out = with_ctx(&["plan", "seats"], |ctx| {
                scrub(body.as_bytes(), ctx, &mut Tally::default()).unwrap()
            });
            let v: Value = serde_json::from_slice(&out).unwrap();
            v["payload"].clone()
        };
        // Umami flattens a nested object into `plan.email`: a kept key keeps a scalar only.
        assert_eq!(
            run(r#"{"website":"w","data":{"plan":{"email":"a@b.c"},"seats":3}}"#),
            serde_json::json!({"website": "w", "data": {"seats": 3}})
        );
        assert_eq!(
            run(r#"{"website":"w","data":{"plan":["a@b.c"],"seats":{"x":1}}}"#),
            serde_json::json!({"website": "w"})
        );
        // JSON.parse keeps the last of a repeated key.
        assert_eq!(
            run(r#"{"website":"w","data":{"plan":"pro","plan":{"e":"a@b.c"}}}"#),
            serde_json::json!({"website": "w"})
        );
        // The table's own fields are scalars too.
        assert_eq!(
            run(r#"{"website":{"e":"a@b.c"},"title":["a@b.c"],"name":"signup"}"#),
            serde_json::json!({"name": "signup"})
        );
    }

    #[test]
    fn answers_lose_their_session_identifiers() {
        let a = scrub_answer(
            br#"{"cache":"eyJhbGciOi.x.y","sessionId":"s-1","visitId":"v-1","ok":true}"#,
        );
        assert_eq!(a, b"{}");
        assert_eq!(scrub_answer(b"garbage"), b"{}");
    }

    #[test]
    fn answers_keep_only_the_disabled_flag_as_a_boolean() {
        assert_eq!(
            scrub_answer(br#"{"disabled":true,"sessionId":"s-1","echo":"alice"}"#),
            br#"{"disabled":true}"#
        );
        assert_eq!(scrub_answer(br#"{"disabled":"alice@mail.example"}"#), b"{}");
        assert_eq!(scrub_answer(br#"["alice"]"#), b"{}");
    }
}

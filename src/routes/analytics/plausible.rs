//! Plausible `POST /api/event`: a JSON object (`n`, `u`, `d`, `r`, `p`/`props`, `m`/`meta`, `h`…).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::{
    allowed_fields, field, host_of, json_page_url, json_referrer, raw_object, raw_str, raw_string,
    respelt, Context, Outcome, ScrubError, Tally,
};

/// The field table (`tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("n", Outcome::Kept, "event name"),
    ("d", Outcome::Kept, "site domain"),
    ("h", Outcome::Kept, "hash-based routing flag"),
    ("i", Outcome::Kept, "interactive flag"),
    ("v", Outcome::Kept, "tracker version"),
    ("$", Outcome::Kept, "revenue"),
    (
        "u",
        Outcome::Generalised,
        "no fragment, no query but allow_url_params (e.g. utm_*)",
    ),
    (
        "r",
        Outcome::Generalised,
        "same-site: origin and path; external: dropped",
    ),
    (
        "p, props, m, meta",
        Outcome::Dropped,
        "keys not in allow_event_params",
    ),
    ("*", Outcome::Dropped, "any other field"),
];

const KEPT: &[&str] = &["n", "d", "h", "i", "v", "$"];

/// Scrubs an event body. Values are read raw: what a rule keeps or reads is parsed,
/// what it drops is only scanned, never built.
pub fn scrub(body: &[u8], ctx: &Context<'_>, tally: &mut Tally) -> Result<Vec<u8>, ScrubError> {
    let text = std::str::from_utf8(body).map_err(|e| ScrubError::Body(e.to_string()))?;
    let event = raw_object(text).map_err(|_| ScrubError::Body("not a JSON object".into()))?;
    let site_host = field(&event, "d")
        .and_then(raw_str)
        .map(Cow::into_owned)
        .or_else(|| {
            field(&event, "u")
                .and_then(raw_str)
                .and_then(|u| host_of(&u).map(str::to_owned))
        });
    let mut out: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
    for (k, v) in &event {
        let kept = match k.0.as_ref() {
            name if KEPT.contains(&name) => {
                tally.add(Outcome::Kept);
                respelt(v)
            }
            "u" => json_page_url(v, &ctx.settings.allow_url_params, tally),
            "r" => json_referrer(v, site_host.as_deref(), tally).and_then(|r| raw_string(&r)),
            "p" | "props" | "m" | "meta" => {
                allowed_fields(v, &ctx.settings.allow_event_params, tally)
            }
            _ => {
                tally.add(Outcome::Dropped);
                None
            }
        };
        if let Some(v) = kept {
            out.insert(k.0.as_ref(), v);
        }
    }
    serde_json::to_vec(&out).map_err(|e| ScrubError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::{Pseudonymizer, Settings};
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    #[test]
    fn the_fixture_is_scrubbed_field_by_field() {
        let settings = Settings {
            allow_event_params: vec!["author".into()],
            allow_url_params: vec!["utm_source".into()],
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings: &settings,
            pseudonyms: &p,
            route: "plausible",
        };
        let mut t = Tally::default();
        let out = scrub(
            include_bytes!("../../../tests/fixtures/plausible-event.json"),
            &ctx,
            &mut t,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["n"], "pageview");
        assert_eq!(v["d"], "blog.example");
        assert_eq!(v["u"], "https://blog.example/post/12?utm_source=newsletter");
        assert!(v.get("r").is_none(), "external referrer dropped");
        assert_eq!(v["p"], serde_json::json!({"author": "Jo"}));
        let text = String::from_utf8(out).unwrap();
        for secret in ["alice", "token", "comments", "social.example"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for bad in [&b"[1,2]"[..], b"{", b"\"x\""] {
            assert!(scrub(bad, &ctx, &mut t).is_err());
        }
        // A kept number goes on exactly as written, not rounded through a float (found by
        // the plausible fuzz target).
        let out = scrub(
            br#"{"n":"pageview","u":"https://blog.example/","d":"blog.example","h":9909999999999999999999999920}"#,
            &ctx,
            &mut t,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("9909999999999999999999999920"), "{text}");
    }
}

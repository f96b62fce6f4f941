//! Plausible `POST /api/event`: a JSON object (`n`, `u`, `d`, `r`, `p`/`props`, `m`/`meta`, `h`…).

use serde_json::{Map, Value};

use super::{host_of, json_page_url, json_referrer, Context, Outcome, ScrubError, Tally};

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

/// Scrubs an event body.
pub fn scrub(body: &[u8], ctx: &Context<'_>, tally: &mut Tally) -> Result<Vec<u8>, ScrubError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ScrubError::Body(e.to_string()))?;
    let Value::Object(event) = value else {
        return Err(ScrubError::Body("not a JSON object".into()));
    };
    let site_host = event
        .get("d")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            event
                .get("u")
                .and_then(Value::as_str)
                .and_then(host_of)
                .map(str::to_owned)
        });
    let mut out = Map::new();
    for (k, v) in event {
        let kept = match k.as_str() {
            name if KEPT.contains(&name) => {
                tally.add(Outcome::Kept);
                Some(v)
            }
            "u" => json_page_url(&v, &ctx.settings.allow_url_params, tally).map(Value::String),
            "r" => json_referrer(&v, site_host.as_deref(), tally).map(Value::String),
            "p" | "props" | "m" | "meta" => {
                super::allowed_fields(v, &ctx.settings.allow_event_params, tally)
            }
            _ => {
                tally.add(Outcome::Dropped);
                None
            }
        };
        if let Some(v) = kept {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::{Pseudonymizer, Settings};
    use super::*;
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

//! Plausible `POST /api/event`: a JSON object (`n`, `u`, `d`, `r`, `p`/`props`, `m`/`meta`, `h`…).

use std::borrow::Cow;

use super::{
    field, host_of, json_kept, json_page_url, json_referrer, object_json, raw_object, raw_str,
    raw_string, read_object, scalar, write_object, Context, Field, Json, Key, Outcome, Raw,
    ScrubError, Tally,
};

/// The field table (`tamis check` prints it).
pub const RULES: &[(&str, Outcome, &str)] = &[
    ("n", Outcome::Kept, "event name"),
    ("d", Outcome::Kept, "site domain"),
    ("h", Outcome::Kept, "hash-based routing flag"),
    ("i", Outcome::Kept, "interactive flag"),
    ("v", Outcome::Kept, "tracker version"),
    ("$", Outcome::Kept, "revenue: its amount and currency only"),
    (
        "u",
        Outcome::Generalised,
        "no path parameters, no fragment, no query but allow_url_params (e.g. utm_*)",
    ),
    (
        "r",
        Outcome::Generalised,
        "same-site: origin and path, no path parameters; external: dropped",
    ),
    (
        "p, props, m, meta",
        Outcome::Dropped,
        "keys not in allow_event_params; objects and arrays under a kept key",
    ),
    (
        "*",
        Outcome::Dropped,
        "any other field; an object or array where the table keeps a scalar",
    ),
];

/// What links events (`tamis check` and the transparency page print it).
pub const LINKAGE: &str = "no identifier leaves: nothing links two events but what they say \
(page, time), and Plausible's daily visitor hash sees no visitor address";

/// Fields kept as they are, scalars only (`$` has its own rule, [`revenue`]).
const KEPT: &[&str] = &["n", "d", "h", "i", "v"];

/// The members of a revenue (`$`) object, scalars only.
const REVENUE: &[&str] = &["amount", "currency"];

/// A revenue object with only its amount and currency (scalars); `None` when nothing is left.
fn revenue(v: Raw<'_>, tally: &mut Tally) -> Option<Json<'static>> {
    let members = raw_object(v.text()).ok();
    let kept: Vec<(&str, Json<'_>)> = REVENUE
        .iter()
        .filter_map(|&name| Some((name, scalar(field(members.as_ref()?, name)?)?)))
        .collect();
    tally.add(if kept.is_empty() {
        Outcome::Dropped
    } else {
        Outcome::Kept
    });
    // REVENUE is in key order, as a map would write it.
    (!kept.is_empty()).then(|| object_json(kept.iter().map(|(k, v)| (*k, v))))
}

/// The fields holding custom props, filtered against `allow_event_params`.
const CUSTOM: &[&str] = &["p", "props", "m", "meta"];

/// Scrubs an event body, in one pass over the text: custom fields are filtered as they are
/// read; other values are read raw, and what a rule keeps or reads is parsed, what it drops is
/// only scanned, never built.
pub fn scrub(body: &[u8], ctx: &Context<'_>, tally: &mut Tally) -> Result<Vec<u8>, ScrubError> {
    let text = std::str::from_utf8(body).map_err(|e| ScrubError::Body(e.to_string()))?;
    let allow = &ctx.settings.allow_event_params;
    let event = read_object(text, CUSTOM, allow, tally)?;
    let raw = |name: &str| match event.get(name) {
        Some(Field::Raw(v)) => Some(*v),
        _ => None,
    };
    let site_host: Option<Cow<'_, str>> = raw("d").and_then(raw_str).or_else(|| {
        raw("u").and_then(raw_str).and_then(|u| match u {
            Cow::Borrowed(u) => host_of(u).map(Cow::Borrowed),
            Cow::Owned(u) => host_of(&u).map(|h| Cow::Owned(h.to_owned())),
        })
    });
    let mut out: Vec<(Key<'_>, Json<'_>)> = Vec::with_capacity(event.len());
    for (k, v) in event {
        let kept = match (k.0.as_ref(), v) {
            // Filtered (and counted) as they were read.
            (_, Field::Allowed(fields)) => fields,
            (name, Field::Raw(v)) if KEPT.contains(&name) => json_kept(v, tally),
            ("$", Field::Raw(v)) => revenue(v, tally),
            ("u", Field::Raw(v)) => json_page_url(v, &ctx.settings.allow_url_params, tally),
            ("r", Field::Raw(v)) => {
                json_referrer(v, site_host.as_deref(), tally).and_then(|r| raw_string(&r))
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
    // The event's keys are in order (a map), so the output is too.
    let len = out.iter().map(|(k, v)| k.0.len() + v.text().len() + 4);
    let mut body = Vec::with_capacity(len.sum::<usize>() + 2);
    write_object(&mut body, out.iter().map(|(k, v)| (&*k.0, v)));
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::super::{Pseudonymizer, Settings};
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    /// `body` scrubbed with these allowlists (props, page-URL parameters), and its tally.
    fn scrubbed(props: &[&str], url: &[&str], body: &[u8]) -> (Result<Vec<u8>, ScrubError>, Tally) {
        let settings = Settings {
            allow_event_params: props.iter().map(|s| s.to_string()).collect(),
            allow_url_params: url.iter().map(|s| s.to_string()).collect(),
        };
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let ctx = Context {
            settings: &settings,
            pseudonyms: &p,
            route: "plausible",
            visitor: &crate::analytics::visitor::Visitor::NONE,
            matomo_token: None,
        };
        let mut t = Tally::default();
        (scrub(body, &ctx, &mut t), t)
    }

    #[test]
    fn the_fixture_is_scrubbed_field_by_field() {
        let run = |body: &[u8]| scrubbed(&["author"], &["utm_source"], body).0;
        let out = run(include_bytes!("../../tests/fixtures/plausible-event.json")).unwrap();
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
            assert!(run(bad).is_err());
        }
        // A kept number goes on exactly as written, not rounded through a float (found by
        // the plausible fuzz target).
        let out = run(
            br#"{"n":"pageview","u":"https://blog.example/","d":"blog.example","h":9909999999999999999999999920}"#,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("9909999999999999999999999920"), "{text}");
    }

    #[test]
    fn kept_props_keep_only_scalar_values() {
        let run = |body: &str| {
            let out = scrubbed(&["author", "plan"], &[], body.as_bytes())
                .0
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        // A kept key with an object or array value: the value is dropped, as if it were absent.
        assert_eq!(
            run(r#"{"n":"x","p":{"author":{"email":"a@b.c"},"plan":"pro"}}"#),
            r#"{"n":"x","p":{"plan":"pro"}}"#
        );
        assert_eq!(run(r#"{"n":"x","p":{"author":["a@b.c"]}}"#), r#"{"n":"x"}"#);
        assert_eq!(
            run(r#"{"n":"x","props":"{\"plan\":{\"e\":\"a@b.c\"}}"}"#),
            r#"{"n":"x"}"#
        );
        // The last of a repeated key decides, nested or not.
        assert_eq!(
            run(r#"{"n":"x","p":{"plan":"pro","plan":{"e":"a@b.c"}}}"#),
            r#"{"n":"x"}"#
        );
        assert_eq!(
            run(r#"{"n":"x","p":{"plan":["a@b.c"],"plan":true,"author":null}}"#),
            r#"{"n":"x","p":{"author":null,"plan":true}}"#
        );
        // The table's own fields are scalars too; revenue keeps its amount and currency only.
        assert_eq!(
            run(
                r#"{"n":{"e":"a@b.c"},"d":["a@b.c"],"h":1,"$":{"amount":"9.5","currency":"EUR","email":"a@b.c"}}"#
            ),
            r#"{"$":{"amount":"9.5","currency":"EUR"},"h":1}"#
        );
        assert_eq!(
            run(r#"{"n":"x","$":{"amount":{"e":"a@b.c"}}}"#),
            r#"{"n":"x"}"#
        );
    }

    #[test]
    fn props_are_filtered_as_they_are_read() {
        let run = |body: &str| {
            let (out, t) = scrubbed(&["author", "plan"], &[], body.as_bytes());
            (out.map(|o| String::from_utf8(o).unwrap()), t)
        };
        // Kept props are respelt and sorted; the others are only counted.
        let (out, t) = run(r#"{"n":"x","p":{"plan":1.50,"email":"a@b","author":"J\u006f"}}"#);
        assert_eq!(out.unwrap(), r#"{"n":"x","p":{"author":"Jo","plan":1.50}}"#);
        assert_eq!((t.get(Outcome::Kept), t.get(Outcome::Dropped)), (3, 1));
        // Sent as a JSON string, as some trackers do: the object inside is read the same way.
        let (out, _) = run(r#"{"n":"x","props":"{\"author\":\"Jo\",\"email\":\"a@b\"}"}"#);
        assert_eq!(out.unwrap(), r#"{"n":"x","props":{"author":"Jo"}}"#);
        // Anything else holds no props: dropped, the rest of the event goes on.
        for other in [
            r#""[1]""#,
            r#""\"s\"""#,
            "[1,{}]",
            "7",
            "7.5e3",
            "true",
            "null",
            "{}",
        ] {
            let (out, _) = run(&format!(r#"{{"n":"x","m":{other}}}"#));
            assert_eq!(out.unwrap(), r#"{"n":"x"}"#, "{other}");
        }
        // A repeated key keeps its last value, also when that one is dropped.
        let (out, _) = run(r#"{"n":"x","p":{"plan":"a","plan":"b"},"p":{"plan":"c"}}"#);
        assert_eq!(out.unwrap(), r#"{"n":"x","p":{"plan":"c"}}"#);
        let (out, _) = run(r#"{"n":"x","p":{"plan":"c"},"p":{"email":"e"}}"#);
        assert_eq!(out.unwrap(), r#"{"n":"x"}"#);
        // Broken JSON inside the props breaks the whole body, as anywhere else; so does a key
        // that is no Unicode text (a lone surrogate), as it already did at the top level.
        for bad in [
            r#"{"n":"x","p":{"plan":}}"#,
            r#"{"n":"x","p":{"a":1}"#,
            r#"{"p":{}} x"#,
            r#"{"n":"x","p":{"\ud800":1}}"#,
            r#"{"\ud800":1}"#,
        ] {
            assert!(run(bad).0.is_err(), "{bad}");
        }
    }
}

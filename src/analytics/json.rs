//! JSON bodies (Plausible, Umami) read without building what is dropped: raw objects, custom
//! fields filtered as they are read, and the kept, URL and referrer rules for JSON fields.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::url::{same_site_referrer, scrub_page_url};
use super::{Outcome, ScrubError, Tally};

/// A JSON object read without building its values: each key (borrowed unless escaped) to the
/// raw text of its value, which is parsed only when a rule reads it. Nothing is allocated for
/// what is dropped. A repeated key keeps its last value, as a parse into a map would.
pub type RawObject<'a> = BTreeMap<Key<'a>, &'a RawValue>;

/// A JSON object key.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Key<'a>(#[serde(borrow)] pub Cow<'a, str>);

// Looked up by plain `&str`: a key orders exactly as its text does.
impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The raw value of `name` in `object`.
pub fn field<'a>(object: &RawObject<'a>, name: &str) -> Option<&'a RawValue> {
    object.get(name).copied()
}

/// `text` as a JSON object, or why not.
pub fn raw_object(text: &str) -> Result<RawObject<'_>, ScrubError> {
    serde_json::from_str(text).map_err(|e| ScrubError::Body(e.to_string()))
}

/// A raw value that is a JSON string, decoded (borrowed unless escaped).
pub fn raw_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let s: Key<'_> = serde_json::from_str(v.get()).ok()?;
    Some(s.0)
}

/// A string as a raw JSON value, for the scrubbed output.
pub fn raw_string(s: &str) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(s).ok()
}

/// A kept value, re-serialised rather than passed on as the visitor spelt it, so the bytes
/// sent upstream depend on the value alone, never on its escapes, exponents or spacing.
pub fn respelt(v: &RawValue) -> Option<Box<RawValue>> {
    // Most kept values are strings: decoded and encoded again without building a `Value`.
    if v.get().starts_with('"') {
        return raw_str(v).and_then(|s| raw_string(&s));
    }
    let value: serde_json::Value = serde_json::from_str(v.get()).ok()?;
    serde_json::value::to_raw_value(&value).ok()
}

/// A kept value, respelt, if it is a scalar (string, number, boolean or null). An object or an
/// array is never kept: under one allowed name it could carry any number of fields (Umami
/// flattens a nested object into keys of its own).
pub fn scalar(v: &RawValue) -> Option<Box<RawValue>> {
    if v.get().trim_start().starts_with(['{', '[']) {
        return None;
    }
    respelt(v)
}

/// A field kept by name, if its value is a scalar ([`scalar`]); counted as kept or dropped.
pub fn json_kept(v: &RawValue, tally: &mut Tally) -> Option<Box<RawValue>> {
    let kept = scalar(v);
    tally.add(if kept.is_some() {
        Outcome::Kept
    } else {
        Outcome::Dropped
    });
    kept
}

/// A JSON page-URL field after the URL rule; counted as generalised, or dropped when the rule
/// leaves nothing.
pub fn json_page_url(v: &RawValue, allow: &[String], tally: &mut Tally) -> Option<Box<RawValue>> {
    let url = raw_str(v)
        .and_then(|u| scrub_page_url(&u, allow))
        .and_then(|u| raw_string(&u));
    tally.add(if url.is_some() {
        Outcome::Generalised
    } else {
        Outcome::Dropped
    });
    url
}

/// A JSON referrer field after the same-site rule; counted as generalised or dropped.
pub fn json_referrer(v: &RawValue, site_host: Option<&str>, tally: &mut Tally) -> Option<String> {
    let r = raw_str(v).and_then(|r| same_site_referrer(&r, site_host));
    tally.add(if r.is_some() {
        Outcome::Generalised
    } else {
        Outcome::Dropped
    });
    r
}

/// A field of an object read by [`read_object`].
pub enum Field<'a> {
    /// The raw text of the value, parsed only when a rule reads it.
    Raw(&'a RawValue),
    /// Custom fields, already filtered against the allowlist (`None`: nothing kept).
    Allowed(Option<Box<RawValue>>),
}

/// `text` as a JSON object, in one pass: the values of the `custom` keys (custom fields, often
/// most of the bytes) are filtered against `allow` as they are read, as [`AllowedFields`] does;
/// every other value is kept raw. A repeated key keeps its last value, as a parse into a map
/// would.
pub fn read_object<'a>(
    text: &'a str,
    custom: &[&str],
    allow: &[String],
    tally: &mut Tally,
) -> Result<BTreeMap<Key<'a>, Field<'a>>, ScrubError> {
    struct Object<'s> {
        custom: &'s [&'s str],
        allow: &'s [String],
        tally: &'s mut Tally,
    }
    impl<'de> serde::de::Visitor<'de> for Object<'_> {
        type Value = BTreeMap<Key<'de>, Field<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<Key<'de>>()? {
                let v = if self.custom.contains(&k.0.as_ref()) {
                    Field::Allowed(map.next_value_seed(AllowedFields::new(self.allow, self.tally))?)
                } else {
                    Field::Raw(map.next_value()?)
                };
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    let body = |e: serde_json::Error| ScrubError::Body(e.to_string());
    let mut de = serde_json::Deserializer::from_str(text);
    // `deserialize_map`: anything but an object is refused (numbers included, which
    // `arbitrary_precision` would otherwise hand a visitor as a map).
    let object = serde::Deserializer::deserialize_map(
        &mut de,
        Object {
            custom,
            allow,
            tally,
        },
    )
    .map_err(body)?;
    de.end().map_err(body)?;
    Ok(object)
}

/// Reads a value of custom fields, keeping the allowlisted keys of an object (also of one sent
/// as a JSON string, as some trackers do) whose values are scalars: each key is checked as it
/// is read, a dropped value is only scanned, never built, and a kept one is respelt. Anything
/// that is not an object gives `None`, as does an object with nothing kept. A repeated key is
/// judged by its last value, as the JSON servers read it (Plausible's Jason, Umami's
/// `JSON.parse`).
struct AllowedFields<'s> {
    allow: &'s [String],
    tally: &'s mut Tally,
    /// Reading the object a string held: a string in there is not an object.
    unwrapped: bool,
}

impl<'s> AllowedFields<'s> {
    /// Filters against `allow`, counting each field in `tally`.
    fn new(allow: &'s [String], tally: &'s mut Tally) -> AllowedFields<'s> {
        AllowedFields {
            allow,
            tally,
            unwrapped: false,
        }
    }

    /// Reads one whole JSON value; `None` when it is not valid JSON either.
    fn read(self, text: &str) -> Option<Box<RawValue>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let kept = serde::de::DeserializeSeed::deserialize(self, &mut de).ok()?;
        de.end().ok()?;
        kept
    }
}

/// The map key `arbitrary_precision` hands a visitor for a number it keeps as text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> serde::de::DeserializeSeed<'de> for AllowedFields<'_> {
    type Value = Option<Box<RawValue>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AllowedFields<'_> {
    type Value = Option<Box<RawValue>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut kept: BTreeMap<Key<'de>, Box<RawValue>> = BTreeMap::new();
        let mut first = true;
        while let Some(k) = map.next_key::<Key<'de>>()? {
            if std::mem::take(&mut first) && k.0 == NUMBER_TOKEN {
                // A number, not an object.
                map.next_value::<serde::de::IgnoredAny>()?;
                return Ok(None);
            }
            if self.allow.iter().any(|a| *a == *k.0) {
                // Respelt from its raw text: the same value, however it was written.
                match json_kept(map.next_value::<&'de RawValue>()?, self.tally) {
                    Some(v) => kept.insert(k, v),
                    // A repeated key keeps its last value, even one that cannot be kept.
                    None => kept.remove(&*k.0),
                };
            } else {
                self.tally.add(Outcome::Dropped);
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        Ok(serde_json::value::to_raw_value(&kept).ok())
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        if self.unwrapped {
            return Ok(None);
        }
        // Sent as a string: the object is inside it.
        Ok(AllowedFields {
            unwrapped: true,
            ..self
        }
        .read(s))
    }

    fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_url_fields_are_counted_by_what_happened() {
        let mut t = Tally::default();
        let v = |s: &str| raw_string(s).unwrap();
        assert_eq!(
            json_page_url(&v("https://a.example/p?x=1"), &[], &mut t)
                .map(|r| r.get().to_owned())
                .as_deref(),
            Some("\"https://a.example/p\"")
        );
        assert!(json_page_url(&v("javascript:alert(1)"), &[], &mut t).is_none());
        assert_eq!(
            json_referrer(&v("https://elsewhere.example/"), Some("a.example"), &mut t),
            None
        );
        assert_eq!(
            (t.get(Outcome::Generalised), t.get(Outcome::Dropped)),
            (1, 2)
        );
    }
}

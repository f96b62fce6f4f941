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

/// The text of one JSON value that has been checked (by [`read_object`] or serde_json): the
/// rules read it without parsing it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(v: &'a RawValue) -> Raw<'a> {
        Raw(v.get())
    }
}

impl<'a> Raw<'a> {
    /// The checked text.
    pub fn text(self) -> &'a str {
        self.0
    }

    /// The value as serde_json reads it (`None` cannot happen for checked text).
    #[cfg(test)]
    fn value(self) -> Option<&'a RawValue> {
        serde_json::from_str(self.0).ok()
    }

    /// What the string holds, if this is a string whose text needs no decoding (no escape):
    /// also exactly how serde_json spells that string.
    fn plain_str(self) -> Option<&'a str> {
        let inner = self.0.strip_prefix('"')?.strip_suffix('"')?;
        special(inner.as_bytes(), 0).is_none().then_some(inner)
    }
}

/// JSON text for a scrubbed body, spelt as serde_json spells the value: borrowed from the
/// visitor's checked text when it already is, written by tamis otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Json<'a>(Cow<'a, str>);

impl Json<'_> {
    /// The JSON text.
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// Writes an object of JSON values as serde_json writes a map: `{"key":value,…}` in the order
/// given, keys escaped as JSON strings.
pub fn write_object<'k, 'v: 'k>(
    out: &mut Vec<u8>,
    fields: impl IntoIterator<Item = (&'k str, &'k Json<'v>)>,
) {
    out.push(b'{');
    for (i, (k, v)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        out.extend_from_slice(v.text().as_bytes());
    }
    out.push(b'}');
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if special(s.as_bytes(), 0).is_none() {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail; a failure would leave the string out, never a
        // half-escaped one.
        let mut escaped = Vec::new();
        if serde_json::to_writer(&mut escaped, s).is_ok() {
            out.extend_from_slice(&escaped);
        }
    }
}

/// An object of JSON values as JSON text ([`write_object`]).
pub fn object_json<'k, 'v: 'k>(
    fields: impl IntoIterator<Item = (&'k str, &'k Json<'v>)>,
) -> Json<'static> {
    let mut out = Vec::new();
    write_object(&mut out, fields);
    // Only valid UTF-8 was written: the keys and the values are `str`.
    Json(Cow::Owned(String::from_utf8(out).unwrap_or_default()))
}

/// The raw value of `name` in `object`.
pub fn field<'a>(object: &RawObject<'a>, name: &str) -> Option<Raw<'a>> {
    object.get(name).map(|v| Raw::from(*v))
}

/// `text` as a JSON object, or why not.
pub fn raw_object(text: &str) -> Result<RawObject<'_>, ScrubError> {
    serde_json::from_str(text).map_err(|e| ScrubError::Body(e.to_string()))
}

/// A raw value that is a JSON string, decoded (borrowed unless escaped).
pub fn raw_str(v: Raw<'_>) -> Option<Cow<'_, str>> {
    if let Some(s) = v.plain_str() {
        return Some(Cow::Borrowed(s));
    }
    let s: Key<'_> = serde_json::from_str(v.0).ok()?;
    Some(s.0)
}

/// A string as a JSON value, for the scrubbed output.
pub fn raw_string(s: &str) -> Option<Json<'static>> {
    if special(s.as_bytes(), 0).is_some() {
        return serde_json::to_string(s).ok().map(|s| Json(Cow::Owned(s)));
    }
    // Nothing to escape: quoted as it is, and still a `String` (no UTF-8 check of a copy).
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    out.push_str(s);
    out.push('"');
    Some(Json(Cow::Owned(out)))
}

/// A kept value, re-serialised rather than passed on as the visitor spelt it, so the bytes
/// sent upstream depend on the value alone, never on its escapes, exponents or spacing.
pub fn respelt(v: Raw<'_>) -> Option<Json<'_>> {
    let b = v.0.as_bytes();
    match b.first()? {
        // A string without escapes, `true`, `false`, `null` and a number without an exponent
        // are spelt as serde_json (`arbitrary_precision`) would spell them: passed on as they
        // are, with no copy.
        b'"' => {
            if v.plain_str().is_some() {
                return Some(Json(Cow::Borrowed(v.0)));
            }
            return raw_str(v).and_then(|s| raw_string(&s));
        }
        b't' | b'f' | b'n' => return Some(Json(Cow::Borrowed(v.0))),
        b'-' | b'0'..=b'9' if !b.iter().any(|&c| c == b'e' || c == b'E') => {
            return Some(Json(Cow::Borrowed(v.0)))
        }
        _ => {}
    }
    let value: serde_json::Value = serde_json::from_str(v.0).ok()?;
    serde_json::to_string(&value)
        .ok()
        .map(|s| Json(Cow::Owned(s)))
}

/// A kept value, respelt, if it is a scalar (string, number, boolean or null). An object or an
/// array is never kept: under one allowed name it could carry any number of fields (Umami
/// flattens a nested object into keys of its own).
pub fn scalar(v: Raw<'_>) -> Option<Json<'_>> {
    if v.0.trim_start().starts_with(['{', '[']) {
        return None;
    }
    respelt(v)
}

/// A field kept by name, if its value is a scalar ([`scalar`]); counted as kept or dropped.
pub fn json_kept<'a>(v: Raw<'a>, tally: &mut Tally) -> Option<Json<'a>> {
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
pub fn json_page_url(v: Raw<'_>, allow: &[String], tally: &mut Tally) -> Option<Json<'static>> {
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
pub fn json_referrer(v: Raw<'_>, site_host: Option<&str>, tally: &mut Tally) -> Option<String> {
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
    Raw(Raw<'a>),
    /// Custom fields, already filtered against the allowlist (`None`: nothing kept).
    Allowed(Option<Json<'static>>),
}

/// `text` as a JSON object, in one pass: the values of the `custom` keys (custom fields, often
/// most of the bytes) are filtered against `allow` as they are read, as [`AllowedFields`] does;
/// every other value is kept raw. A repeated key keeps its last value, as a parse into a map
/// would.
///
/// Read by [`Scan`], which accepts exactly what serde_json accepts here (the same grammar,
/// control characters and escapes) without its per-token machinery: the custom fields are
/// mostly skipped, and skipping them through serde cost a third of a Plausible event's
/// instructions. Keys with escapes and string-wrapped custom fields are still decoded by
/// serde_json.
pub fn read_object<'a>(
    text: &'a str,
    custom: &[&str],
    allow: &[String],
    tally: &mut Tally,
) -> Result<BTreeMap<Key<'a>, Field<'a>>, ScrubError> {
    let mut scan = Scan { text, i: 0 };
    scan.object(custom, allow, tally)
        .map_err(|()| ScrubError::Body(format!("invalid JSON object near byte {}", scan.i)))
}

/// The index of the first `"`, `\\` or control character in `b` from `from`. Eight bytes at a
/// time (serde_json's own test, Mycroft's zero-byte trick): a flag can be wrong only above a
/// right one, so the lowest flag is the answer. Strings are short: this stays inline rather
/// than calling a vectorised search per string (a call's set-up costs more than the search).
#[inline(always)]
fn special(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    let rest = b.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in chunks.by_ref() {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(chunk);
        let v = u64::from_le_bytes(eight);
        let ctrl = v.wrapping_sub(ONES * 0x20) & !v;
        let q = v ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let s = v ^ (ONES * u64::from(b'\\'));
        let slash = s.wrapping_sub(ONES) & !s;
        let found = (ctrl | quote | slash) & (ONES << 7);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| at + p)
}

/// A JSON reader over text already known to be UTF-8: it checks and skips values with the
/// rules serde_json's `ignore_value` applies (no depth limit: nested containers are counted on
/// a heap stack, never by recursion).
struct Scan<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Skips whitespace; the next byte, if any.
    fn ws(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(c);
            }
            self.i += 1;
        }
        None
    }

    /// After whitespace, `c` (consumed), or an error.
    fn expect(&mut self, c: u8) -> Result<(), ()> {
        if self.ws() != Some(c) {
            return Err(());
        }
        self.i += 1;
        Ok(())
    }

    /// A string whose opening quote is at `self.i`: skipped; whether it holds an escape.
    /// Inline, the usual string (no escape) is one search for its closing quote; a string with
    /// an escape or a control character goes the slow way, from its start again.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, ()> {
        let b = self.bytes();
        if let Some(end) = special(b, self.i + 1) {
            if b.get(end) == Some(&b'"') {
                self.i = end + 1;
                return Ok(false);
            }
        }
        self.escaped_string()
    }

    /// [`Scan::string`] for a string holding an escape (or a control character, refused).
    #[cold]
    #[inline(never)]
    fn escaped_string(&mut self) -> Result<bool, ()> {
        let b = self.bytes();
        self.i += 1;
        let mut escaped = false;
        loop {
            self.i = special(b, self.i).ok_or(())?;
            match b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {}
                // No control character may stand unescaped in a string.
                _ => return Err(()),
            }
            escaped = true;
            match b.get(self.i + 1).ok_or(())? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                b'u' => {
                    let hex = b.get(self.i + 2..self.i + 6).ok_or(())?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(());
                    }
                    self.i += 6;
                }
                _ => return Err(()),
            }
        }
    }

    /// An object key at `self.i` (after whitespace), decoded, and the colon after it. Inline:
    /// it runs once per member, and as a call its set-up cost as much as its work.
    #[inline(always)]
    fn key(&mut self) -> Result<Key<'a>, ()> {
        if self.ws() != Some(b'"') {
            return Err(());
        }
        let start = self.i;
        let escaped = self.string()?;
        let key = if escaped {
            // Rare: serde_json decodes it (and refuses a lone surrogate, as before).
            let quoted = self.text.get(start..self.i).ok_or(())?;
            serde_json::from_str::<Key<'a>>(quoted).map_err(|_| ())?
        } else {
            // Between its quotes (ASCII, so on character boundaries).
            Key(Cow::Borrowed(
                self.text.get(start + 1..self.i - 1).ok_or(())?,
            ))
        };
        self.expect(b':')?;
        Ok(key)
    }

    /// A key inside a skipped value: checked as any string is, never decoded (serde_json's
    /// `ignore_value` lets a lone surrogate escape pass there).
    fn skip_key(&mut self) -> Result<(), ()> {
        if self.ws() != Some(b'"') {
            return Err(());
        }
        self.string()?;
        self.expect(b':')
    }

    /// `true`, `false` or `null`, its first byte at `self.i`.
    fn ident(&mut self, word: &[u8]) -> Result<(), ()> {
        if self.bytes().get(self.i..self.i + word.len()) != Some(word) {
            return Err(());
        }
        self.i += word.len();
        Ok(())
    }

    /// A number at `self.i`: JSON's grammar (one leading zero, digits after a point and an
    /// exponent).
    fn number(&mut self) -> Result<(), ()> {
        let b = self.bytes();
        let digits = |i: &mut usize| {
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > start
        };
        if b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match b.get(self.i) {
            Some(b'0') => {
                self.i += 1;
                if b.get(self.i).is_some_and(u8::is_ascii_digit) {
                    return Err(());
                }
            }
            Some(b'1'..=b'9') => {
                digits(&mut self.i);
            }
            _ => return Err(()),
        }
        if b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(&mut self.i) {
                return Err(());
            }
        }
        if matches!(b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(&mut self.i) {
                return Err(());
            }
        }
        Ok(())
    }

    /// Skips one value (after whitespace); its raw text. Inline for a string, the usual
    /// value (no container to track); anything else goes [`Scan::any_value`].
    #[inline(always)]
    fn value(&mut self) -> Result<&'a str, ()> {
        if self.ws() == Some(b'"') {
            let start = self.i;
            self.string()?;
            return self.text.get(start..self.i).ok_or(());
        }
        self.any_value()
    }

    /// [`Scan::value`] for any value: scalars and containers, nested to any depth.
    #[inline(never)]
    fn any_value(&mut self) -> Result<&'a str, ()> {
        self.ws();
        let start = self.i;
        // The open containers, innermost last.
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.ws().ok_or(())? {
                b'n' => self.ident(b"null")?,
                b't' => self.ident(b"true")?,
                b'f' => self.ident(b"false")?,
                b'-' | b'0'..=b'9' => self.number()?,
                b'"' => {
                    self.string()?;
                }
                c @ (b'[' | b'{') => {
                    self.i += 1;
                    let close = if c == b'[' { b']' } else { b'}' };
                    if self.ws() == Some(close) {
                        self.i += 1;
                    } else {
                        open.push(c);
                        if c == b'{' {
                            self.skip_key()?;
                        }
                        continue;
                    }
                }
                _ => return Err(()),
            }
            // A value is complete: close what it completes, or go on after a comma.
            loop {
                let Some(&c) = open.last() else {
                    return Ok(&self.text[start..self.i]);
                };
                match self.ws() {
                    Some(b',') => {
                        self.i += 1;
                        if c == b'{' {
                            self.skip_key()?;
                        }
                        break;
                    }
                    Some(b']') if c == b'[' => {
                        self.i += 1;
                        open.pop();
                    }
                    Some(b'}') if c == b'{' => {
                        self.i += 1;
                        open.pop();
                    }
                    _ => return Err(()),
                }
            }
        }
    }

    /// The whole text as one object (see [`read_object`]).
    fn object(
        &mut self,
        custom: &[&str],
        allow: &[String],
        tally: &mut Tally,
    ) -> Result<BTreeMap<Key<'a>, Field<'a>>, ()> {
        let mut out = BTreeMap::new();
        self.expect(b'{')?;
        if self.ws() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                let k = self.key()?;
                let v = if custom.contains(&k.0.as_ref()) {
                    Field::Allowed(self.allowed(allow, tally)?)
                } else {
                    Field::Raw(Raw(self.value()?))
                };
                out.insert(k, v);
                match self.ws() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(()),
                }
            }
        }
        if self.ws().is_some() {
            return Err(());
        }
        Ok(out)
    }

    /// A value of custom fields, read as [`AllowedFields`] reads it: an object's allowlisted
    /// scalar members, respelt; one sent as a JSON string is decoded and read by
    /// [`AllowedFields`] itself; anything else holds nothing.
    fn allowed(
        &mut self,
        allow: &[String],
        tally: &mut Tally,
    ) -> Result<Option<Json<'static>>, ()> {
        match self.ws().ok_or(())? {
            b'{' => {}
            b'"' => {
                let raw = self.value()?;
                // Decoded as serde_json would (a lone surrogate refuses the body).
                let s: Key<'_> = serde_json::from_str(raw).map_err(|_| ())?;
                return Ok(AllowedFields {
                    allow,
                    tally,
                    unwrapped: true,
                }
                .read(&s.0));
            }
            _ => {
                self.value()?;
                return Ok(None);
            }
        }
        self.i += 1;
        let mut kept: BTreeMap<Key<'a>, Json<'a>> = BTreeMap::new();
        if self.ws() == Some(b'}') {
            self.i += 1;
            return Ok(None);
        }
        let mut first = true;
        loop {
            let k = self.key()?;
            if std::mem::take(&mut first) && k.0 == NUMBER_TOKEN {
                // What serde_json hands a visitor for a number: read as one, nothing kept,
                // and nothing may follow it.
                self.value()?;
                self.expect(b'}')?;
                return Ok(None);
            }
            let raw = self.value()?;
            if allow.iter().any(|a| *a == *k.0) {
                match json_kept(Raw(raw), tally) {
                    Some(v) => kept.insert(k, v),
                    // A repeated key keeps its last value, even one that cannot be kept.
                    None => kept.remove(&*k.0),
                };
            } else {
                tally.add(Outcome::Dropped);
            }
            match self.ws() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(()),
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        Ok(Some(object_json(kept.iter().map(|(k, v)| (&*k.0, v)))))
    }
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

impl AllowedFields<'_> {
    /// Reads one whole JSON value; `None` when it is not valid JSON either.
    fn read(self, text: &str) -> Option<Json<'static>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let kept = serde::de::DeserializeSeed::deserialize(self, &mut de).ok()?;
        de.end().ok()?;
        kept
    }
}

/// The map key `arbitrary_precision` hands a visitor for a number it keeps as text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> serde::de::DeserializeSeed<'de> for AllowedFields<'_> {
    type Value = Option<Json<'static>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AllowedFields<'_> {
    type Value = Option<Json<'static>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut kept: BTreeMap<Key<'de>, Json<'de>> = BTreeMap::new();
        let mut first = true;
        while let Some(k) = map.next_key::<Key<'de>>()? {
            if std::mem::take(&mut first) && k.0 == NUMBER_TOKEN {
                // A number, not an object.
                map.next_value::<serde::de::IgnoredAny>()?;
                return Ok(None);
            }
            if self.allow.iter().any(|a| *a == *k.0) {
                // Respelt from its raw text: the same value, however it was written.
                match json_kept(Raw::from(map.next_value::<&'de RawValue>()?), self.tally) {
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
        Ok(Some(object_json(kept.iter().map(|(k, v)| (&*k.0, v)))))
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

/// The serde_json reading and respelling this module had before the scanner and the borrowed
/// output (commit 995064f and before), verbatim: the reference the fast paths must agree with.
#[cfg(test)]
mod serde_reference {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde_json::value::RawValue;

    use super::super::{Outcome, Tally};
    use super::Key;

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

    /// Reads a value of custom fields, keeping the allowlisted keys of an object (also of one sent
    /// as a JSON string, as some trackers do) whose values are scalars: each key is checked as it
    /// is read, a dropped value is only scanned, never built, and a kept one is respelt. Anything
    /// that is not an object gives `None`, as does an object with nothing kept. A repeated key is
    /// judged by its last value, as the JSON servers read it (Plausible's Jason, Umami's
    /// `JSON.parse`).
    pub struct AllowedFields<'s> {
        allow: &'s [String],
        tally: &'s mut Tally,
        /// Reading the object a string held: a string in there is not an object.
        unwrapped: bool,
    }

    impl<'s> AllowedFields<'s> {
        /// Filters against `allow`, counting each field in `tally`.
        pub fn new(allow: &'s [String], tally: &'s mut Tally) -> AllowedFields<'s> {
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

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
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

        fn visit_seq<S: serde::de::SeqAccess<'de>>(
            self,
            mut seq: S,
        ) -> Result<Self::Value, S::Error> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_finds_the_first_quote_backslash_or_control_character() {
        for len in 0..24 {
            for at in 0..len {
                for c in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    // Bytes at and above 0x20 (non-ASCII ones included) are never special.
                    let mut b: Vec<u8> = (0..len)
                        .map(|i| [b'a', 0x20, 0x7f, 0x80, 0xff][i % 5])
                        .collect();
                    b[at] = c;
                    if at + 1 < len {
                        b[at + 1] = 0x01;
                    }
                    assert_eq!(special(&b, 0), Some(at), "{b:?}");
                    assert_eq!(special(&b, at + 1), (at + 1 < len).then_some(at + 1));
                }
            }
            let plain: Vec<u8> = (0..len)
                .map(|i| [b'a', 0x20, 0x7f, 0x80, 0xff][i % 5])
                .collect();
            assert_eq!(special(&plain, 0), None);
            assert_eq!(special(&plain, len + 1), None);
        }
    }

    /// A field as the old reader gave it: raw, or custom fields read (`Err`).
    type SerdeField<'a> = Result<&'a RawValue, Option<Box<RawValue>>>;

    /// The serde_json reader `read_object` replaced (its visitor, as it was): the reference
    /// the scanner must agree with.
    fn read_object_serde<'a>(
        text: &'a str,
        custom: &[&str],
        allow: &[String],
        tally: &mut Tally,
    ) -> Result<BTreeMap<Key<'a>, SerdeField<'a>>, ScrubError> {
        struct Object<'s> {
            custom: &'s [&'s str],
            allow: &'s [String],
            tally: &'s mut Tally,
        }
        impl<'de> serde::de::Visitor<'de> for Object<'_> {
            type Value = BTreeMap<Key<'de>, SerdeField<'de>>;

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
                        Err(map.next_value_seed(serde_reference::AllowedFields::new(
                            self.allow, self.tally,
                        ))?)
                    } else {
                        Ok(map.next_value()?)
                    };
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        let body = |e: serde_json::Error| ScrubError::Body(e.to_string());
        let mut de = serde_json::Deserializer::from_str(text);
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

    /// A raw field as comparable text: its raw text, its respelling, its decoded string.
    type RawReading = (String, Option<String>, Option<String>);

    /// A reading as comparable text: each key with its raw field or its kept custom fields,
    /// then the object of every respelt raw field as written for the output.
    type Reading = Option<(
        Vec<(String, Result<RawReading, Option<String>>)>,
        [u64; 4],
        Vec<u8>,
    )>;

    fn counts(t: &Tally) -> [u64; 4] {
        Outcome::ALL.map(|o| t.get(o))
    }

    fn by_scan(text: &str, custom: &[&str], allow: &[String]) -> Reading {
        let mut t = Tally::default();
        let m = read_object(text, custom, allow, &mut t).ok()?;
        let mut out = BTreeMap::new();
        let fields = m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Field::Raw(r) => {
                        let respelt = respelt(*r);
                        let reading = (
                            r.value().expect("checked").get().to_owned(),
                            respelt.as_ref().map(|j| j.text().to_owned()),
                            raw_str(*r).map(Cow::into_owned),
                        );
                        if let Some(j) = respelt {
                            out.insert(&*k.0, j);
                        }
                        Ok(reading)
                    }
                    Field::Allowed(a) => Err(a.as_ref().map(|a| a.text().to_owned())),
                };
                (k.0.clone().into_owned(), v)
            })
            .collect();
        let mut written = Vec::new();
        write_object(&mut written, out.iter().map(|(k, v)| (*k, v)));
        Some((fields, counts(&t), written))
    }

    fn by_serde(text: &str, custom: &[&str], allow: &[String]) -> Reading {
        let mut t = Tally::default();
        let m = read_object_serde(text, custom, allow, &mut t).ok()?;
        let mut out = BTreeMap::new();
        let fields = m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Ok(r) => {
                        let respelt = serde_reference::respelt(r);
                        let reading = (
                            r.get().to_owned(),
                            respelt.as_ref().map(|j| j.get().to_owned()),
                            serde_reference::raw_str(r).map(Cow::into_owned),
                        );
                        if let Some(j) = respelt {
                            out.insert(&*k.0, j);
                        }
                        Ok(reading)
                    }
                    Err(a) => Err(a.as_ref().map(|a| a.get().to_owned())),
                };
                (k.0.clone().into_owned(), v)
            })
            .collect();
        Some((fields, counts(&t), serde_json::to_vec(&out).unwrap()))
    }

    /// The scanner reads every fixture, hostile input and mutation of them exactly as the
    /// serde_json visitor did: the same fields, raw texts, kept props and counts, and the same
    /// refusals; each raw field is respelt and decoded, and the respelt fields written, as the
    /// serde_json functions did.
    #[test]
    fn the_scanner_reads_objects_as_serde_json_did() {
        let custom = ["p", "props", "m", "meta", "data"];
        let allow = ["author".to_owned(), "plan".to_owned()];
        let umami: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/umami-send.json")).unwrap();
        let umami_payload = umami["payload"].to_string();
        let mut seeds: Vec<String> = vec![
            include_str!("../../tests/fixtures/plausible-event.json").to_owned(),
            include_str!("../../../shared/fixtures/plausible-event.json").to_owned(),
            umami_payload,
            r#"{"n":"x","p":{"plan":"a","plan":"b"},"p":{"plan":"c"},"n":"y"}"#.to_owned(),
            r#"{"n":"x","props":"{\"author\":\"Jo\",\"email\":\"a@b\"}","m":7.5e-3}"#.to_owned(),
            r#"{"n":"x","p":{"plan":["a"],"plan":true,"author":null,"x":{"y":[1,{"z":[]}]}}}"#
                .to_owned(),
            r#"{"a\u00e9\n":"\ud83d\ude00\/","h":9909999999999999999999999920,"w":-0.5E+10}"#
                .to_owned(),
            r#"{"p":{"$serde_json::private::Number":1}}"#.to_owned(),
            r#"{"p":{"$serde_json::private::Number":1,"plan":2}}"#.to_owned(),
            r#"{"p":{"plan":1,"$serde_json::private::Number":"x"}}"#.to_owned(),
            r#"{"\ud800":1}"#.to_owned(),
            r#"{"n":"x","p":{"\ud800":1}}"#.to_owned(),
            r#"{"n":"x","p":"\ud800"}"#.to_owned(),
            r#"{"n":"x","p":"{\"plan\":\"\ud800\"}"}"#.to_owned(),
            " { } ".to_owned(),
            "{\"n\":\"tab\there\"}".to_owned(),
            r#"{"a":-0,"b":1E5,"c":1e+5,"d":-12,"e":18446744073709551616,"f":0.0,"g":true}"#
                .to_owned(),
            r#"{"h":false,"i":null,"j":"\u007f\u0000é","k":"\/","l":"é\u00e9 ","m":-1.5e-7}"#
                .to_owned(),
            format!("{{\"p\":{}1{}}}", "[".repeat(5000), "]".repeat(5000)),
            format!("{{\"d\":{}1{}}}", "{\"a\":".repeat(3000), "}".repeat(3000)),
            format!("{{\"p\":{{\"plan\":{}}}}}", "9".repeat(400)),
        ];
        // Every truncation and every one-byte change to a few JSON-significant bytes.
        let short: Vec<String> = seeds.iter().filter(|s| s.len() < 600).cloned().collect();
        let swaps = [
            "{", "}", "[", "]", "\"", "\\", ",", ":", "0", "-", "e", ".", "n", "t", "u", "\u{1}",
            " ", "a", "",
        ];
        for seed in &short {
            for (i, _) in seed.char_indices() {
                seeds.push(seed[..i].to_owned());
                for swap in swaps {
                    let mut c = seed.clone();
                    let end = i + seed[i..].chars().next().map_or(0, char::len_utf8);
                    c.replace_range(i..end, swap);
                    seeds.push(c.clone());
                    let mut ins = seed.clone();
                    ins.insert_str(i, swap);
                    seeds.push(ins);
                }
            }
        }
        let mut accepted = 0;
        for text in &seeds {
            let (a, b) = (
                by_scan(text, &custom, &allow),
                by_serde(text, &custom, &allow),
            );
            assert_eq!(a, b, "{text:?}");
            accepted += usize::from(a.is_some());
        }
        // Both outcomes were exercised.
        assert!(
            accepted > 1000 && accepted < seeds.len() - 1000,
            "{accepted} of {}",
            seeds.len()
        );
    }

    #[test]
    fn json_url_fields_are_counted_by_what_happened() {
        let mut t = Tally::default();
        let v = |s: &str| raw_string(s).unwrap();
        assert_eq!(
            json_page_url(Raw(v("https://a.example/p?x=1").text()), &[], &mut t)
                .map(|r| r.text().to_owned())
                .as_deref(),
            Some("\"https://a.example/p\"")
        );
        assert!(json_page_url(Raw(v("javascript:alert(1)").text()), &[], &mut t).is_none());
        assert_eq!(
            json_referrer(
                Raw(v("https://elsewhere.example/").text()),
                Some("a.example"),
                &mut t
            ),
            None
        );
        assert_eq!(
            (t.get(Outcome::Generalised), t.get(Outcome::Dropped)),
            (1, 2)
        );
    }
}

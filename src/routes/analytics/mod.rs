//! Analytics endpoints scrubbed to the CNIL proxy standard (2022): no visitor IP, the user
//! identifier replaced by a keyed pseudonym, external referrers and URL parameters removed,
//! fingerprinting data generalised, no durable identifier, everything else dropped.
//!
//! Each protocol module holds its parameter table (what is kept, pseudonymised, generalised or
//! dropped) and pure functions over it; this module holds the rules they share.

pub mod answer;
pub mod ga4;
pub mod matomo;
pub mod plausible;
pub mod umami;
pub mod visitor;

mod query;
mod url;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::secret::Secret;

pub use crate::policy::generalise_user_agent;
pub use query::{parse_query, push_pair, push_raw, raw_pairs, to_query, Pair};
pub use url::{
    host_of, parse_absolute, primary_language, same_site, same_site_referrer, scrub_page_url,
    without_path_params, AbsoluteUrl,
};
// ga4 reads a page path as the URL rule does.
use url::is_page_path;

/// The analytics protocols tamis speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Ga4,
    Matomo,
    Plausible,
    Umami,
}

impl Protocol {
    /// The tracking endpoints (path after the prefix) this protocol forwards; nothing else is.
    pub fn endpoints(self) -> &'static [&'static str] {
        match self {
            Protocol::Ga4 => &["g/collect"],
            Protocol::Matomo => &["matomo.php", "piwik.php"],
            Protocol::Plausible => &["api/event"],
            Protocol::Umami => &["api/send"],
        }
    }

    /// What links one visitor's requests within one rotation period, and across periods.
    pub fn linkage(self) -> &'static str {
        match self {
            Protocol::Ga4 => ga4::LINKAGE,
            Protocol::Matomo => matomo::LINKAGE,
            Protocol::Plausible => plausible::LINKAGE,
            Protocol::Umami => umami::LINKAGE,
        }
    }

    /// The methods the endpoints accept.
    pub fn allows(self, method: &http::Method) -> bool {
        match self {
            Protocol::Ga4 | Protocol::Matomo => {
                method == http::Method::GET || method == http::Method::POST
            }
            Protocol::Plausible | Protocol::Umami => method == http::Method::POST,
        }
    }
}

/// What a rule did with one parameter (the `result` label of `tamis_analytics_params_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Kept,
    Pseudonymised,
    Generalised,
    Dropped,
}

impl Outcome {
    /// Every outcome, for pre-registering label values.
    pub const ALL: [Outcome; 4] = [
        Outcome::Kept,
        Outcome::Pseudonymised,
        Outcome::Generalised,
        Outcome::Dropped,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Kept => "kept",
            Outcome::Pseudonymised => "pseudonymised",
            Outcome::Generalised => "generalised",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Counts of what scrubbing did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally([u64; 4]);

impl Tally {
    /// Records one parameter's outcome.
    pub fn add(&mut self, o: Outcome) {
        self.0[o as usize] += 1;
    }

    /// How many parameters had this outcome.
    pub fn get(&self, o: Outcome) -> u64 {
        self.0[o as usize]
    }
}

/// A request that cannot be scrubbed: answered 4xx, nothing forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScrubError {
    #[error("invalid percent-encoding")]
    Encoding,
    #[error("too many parameters")]
    TooManyParameters,
    #[error("malformed body: {0}")]
    Body(String),
    #[error("not a tracking endpoint")]
    Endpoint,
}

/// Most parameters one query string or body line may carry.
pub const MAX_PARAMS: usize = 512;

/// The operator's choices for one analytics route.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Custom fields kept as they are (GA4 ep./epn./up./upn. names, Matomo custom variable
    /// names and dimensionN, Plausible props, Umami data keys); all others dropped.
    pub allow_event_params: Vec<String>,
    /// URL query parameters kept in page URLs (e.g. utm_source); all others dropped.
    pub allow_url_params: Vec<String>,
}

/// An analytics route at run time: its settings, its pseudonym key, its limits.
pub struct Runtime {
    pub protocol: Protocol,
    pub settings: Settings,
    pub pseudonyms: Pseudonymizer,
    pub max_body: usize,
    /// What goes in place of the visitor's address (validated: only EU routes send one).
    pub address: visitor::ClientAddress,
    /// Hash bits a synthetic address keeps.
    pub bits: u8,
    /// How precise a location is released.
    pub location: crate::geo::Precision,
    /// The k-anonymity counts of this route's locations, this period.
    pub gate: crate::geo::Gate,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Everything a scrubber needs besides the request.
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub pseudonyms: &'a Pseudonymizer,
    /// Route name: part of every pseudonym, so routes never share one.
    pub route: &'a str,
    /// What this request may tell of its visitor (address, location): Matomo carries it in
    /// parameters.
    pub visitor: &'a visitor::Visitor,
    /// The operator's Matomo `token_auth` (from `token_file`), which Matomo requires before it
    /// accepts `cip`, `country` or `region`; in a probe, its placeholder.
    pub matomo_token: Option<&'a Secret>,
}

/// Keyed pseudonyms with a key that lives in memory only and changes every period: the same
/// visitor keeps one pseudonym within a period and cannot be linked across periods, routes or
/// sites. Pseudonyms keep 32 bits, so collisions exist.
pub struct Pseudonymizer {
    period: Duration,
    /// With a salt file (multi-replica setups), each period's key is derived from it, so
    /// replicas agree; without, it is random.
    secret: Option<Secret>,
    /// The period index, the HMAC already keyed for it (cloned per pseudonym), and the
    /// SipHash key derived from it for [`derived`](Self::derived) values.
    state: Mutex<(u64, Option<HmacSha256>, [u8; 16])>,
}

type HmacSha256 = Hmac<Sha256>;

impl Pseudonymizer {
    /// A pseudonymizer rotating every `period` (aligned on the Unix epoch).
    pub fn new(period: Duration, secret: Option<Secret>) -> Pseudonymizer {
        Pseudonymizer {
            period: period.max(Duration::from_secs(1)),
            secret,
            state: Mutex::new((u64::MAX, None, [0; 16])),
        }
    }

    fn period_index(&self, now: SystemTime) -> u64 {
        now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / self.period.as_secs().max(1)
    }

    /// Start of the current period (seconds since the epoch): a coarse, shared timestamp.
    pub fn period_start(&self, now: SystemTime) -> u64 {
        self.period_index(now) * self.period.as_secs().max(1)
    }

    /// The HMAC keyed for the current period (keying costs two SHA-256 blocks: done once).
    fn keyed(&self, now: SystemTime) -> Option<HmacSha256> {
        self.period_keys(now).map(|(mac, _)| mac)
    }

    /// The current period's HMAC and SipHash key, made when the period begins.
    fn period_keys(&self, now: SystemTime) -> Option<(HmacSha256, [u8; 16])> {
        let index = self.period_index(now);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 != index || state.1.is_none() {
            let key = match &self.secret {
                Some(secret) => {
                    let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose()) else {
                        return None;
                    };
                    mac.update(b"tamis-pseudonym-period");
                    mac.update(&index.to_be_bytes());
                    mac.finalize().into_bytes().into()
                }
                None => {
                    let mut k = [0u8; 32];
                    if getrandom::fill(&mut k).is_err() {
                        // No OS randomness (never seen on Linux): fall back on the clock and the
                        // process id; the key is still never written anywhere and still rotates.
                        let t = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_nanos();
                        k[..16].copy_from_slice(&t.to_le_bytes());
                        k[16..20].copy_from_slice(&std::process::id().to_le_bytes());
                    }
                    k
                }
            };
            let mac = HmacSha256::new_from_slice(&key).ok();
            // The derived values' own key: HMAC of a label no pseudonym input can be (0xFF
            // starts no UTF-8 text), so knowing one key says nothing of the other.
            let mut sip = [0u8; 16];
            if let Some(m) = &mac {
                let mut m = m.clone();
                m.update(b"\xfftamis-derived-values");
                sip.copy_from_slice(&m.finalize().into_bytes()[..16]);
            }
            *state = (index, mac, sip);
        }
        state.1.clone().map(|mac| (mac, state.2))
    }

    /// The HMAC of `parts`, fed one after the other, under the period's key: the shape every
    /// pseudonym shares (each caller writes its own separators and domain label).
    fn mac(&self, now: SystemTime, parts: &[&[u8]]) -> Option<[u8; 32]> {
        // HMAC accepts keys of any length, so a keyed state always exists.
        let mut mac = self.keyed(now)?;
        for part in parts {
            mac.update(part);
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// 32 bits of HMAC(key, route, site, id).
    pub fn pseudonym(&self, route: &str, site: &str, id: &str, now: SystemTime) -> u32 {
        let parts: [&[u8]; 6] = [
            route.as_bytes(),
            &[0],
            site.as_bytes(),
            &[0],
            id.as_bytes(),
            &[0],
        ];
        self.mac(now, &parts).map_or(0, |out| {
            u32::from_be_bytes([out[0], out[1], out[2], out[3]])
        })
    }

    /// The current period's index (the k-anonymity counts start again when it changes).
    pub fn period(&self, now: SystemTime) -> u64 {
        self.period_index(now)
    }

    /// 64 bits of HMAC(key, route, site, subscriber, generalised User-Agent): who a visitor is
    /// for this route within this period, without the address, for the synthetic address.
    /// Computed in memory per request and never stored; a new key each period makes it
    /// unrelated across periods.
    pub fn visitor(
        &self,
        route: &str,
        site: &str,
        address: std::net::IpAddr,
        user_agent: &str,
        now: SystemTime,
    ) -> u64 {
        // By subscriber: an IPv6 visitor whose address rotates inside its /64 stays one
        // visitor (one synthetic address).
        let subscriber = subscriber_octets(address);
        // 0xFE starts no UTF-8 text: no other pseudonym's input can be this one's.
        let parts: [&[u8]; 8] = [
            b"\xfetamis-visitor\0",
            route.as_bytes(),
            &[0],
            site.as_bytes(),
            &[0],
            subscriber.as_slice(),
            &[0],
            user_agent.as_bytes(),
        ];
        self.mac(now, &parts).map_or(0, first_64_bits)
    }

    /// 64 bits of HMAC(key, route, subscriber): what the k-anonymity gate counts. Only what
    /// one person cannot vary cheaply goes in (their IPv4, their IPv6 /64, the IPv4 an IPv6
    /// address carries): a Host, a User-Agent or any other request field they choose would
    /// let one person count as many and open a location cell alone.
    pub fn subscriber(&self, route: &str, address: std::net::IpAddr, now: SystemTime) -> u64 {
        let subscriber = subscriber_octets(address);
        // 0xFD starts no UTF-8 text, and differs from the visitor hash's label: the two
        // hashes of one visitor are unrelated.
        let parts: [&[u8]; 4] = [
            b"\xfdtamis-subscriber\0",
            route.as_bytes(),
            &[0],
            subscriber.as_slice(),
        ];
        self.mac(now, &parts).map_or(0, first_64_bits)
    }

    /// 32 bits of a keyed hash of (kind, route, site, id, value) under the period's key: a value a visitor's browser keeps
    /// across hits (a session start, a page-load id) replaced by one that is the same for the
    /// same visitor `id` and value within a period, and says nothing across periods, routes,
    /// sites or visitors. `kind` keeps each kind of value apart from the others.
    pub fn derived(
        &self,
        route: &str,
        site: &str,
        kind: &str,
        id: &str,
        value: &str,
        now: SystemTime,
    ) -> u32 {
        // SipHash-2-4, a keyed PRF, under the period's own key: a derived value is as
        // unpredictable and as unlinkable across periods as an HMAC, at a tenth of the cost
        // (two of them per GA4 hit). Each part is length-prefixed, so no two lists of parts
        // hash alike.
        let Some((_, key)) = self.period_keys(now) else {
            return 0;
        };
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher24::new_with_key(&key);
        for part in [kind, route, site, id, value] {
            h.write(&(part.len() as u64).to_be_bytes());
            h.write(part.as_bytes());
        }
        (h.finish() >> 32) as u32
    }
}

/// The first 64 bits of a MAC's output.
fn first_64_bits(out: [u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The octets of the subscriber an address belongs to (see [`crate::client_addr::subscriber`]):
/// 4 for an IPv4 (or one an IPv6 address carries), 16 for an IPv6 /64.
fn subscriber_octets(address: std::net::IpAddr) -> Subscriber {
    match crate::client_addr::subscriber(address) {
        std::net::IpAddr::V4(a) => Subscriber::V4(a.octets()),
        std::net::IpAddr::V6(a) => Subscriber::V6(a.octets()),
    }
}

/// A subscriber's octets, kept on the stack.
enum Subscriber {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Subscriber {
    fn as_slice(&self) -> &[u8] {
        match self {
            Subscriber::V4(o) => o,
            Subscriber::V6(o) => o,
        }
    }
}

/// The names a table keeps as they are (`a, b` rows split), sorted for binary search.
pub fn kept_index(rules: &'static [(&'static str, Outcome, &'static str)]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = rules
        .iter()
        .filter(|(_, o, _)| *o == Outcome::Kept)
        .flat_map(|(names, _, _)| names.split(", "))
        .collect();
    v.sort_unstable();
    v
}

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

/// One line of `tamis check` for a parameter table: names by outcome.
pub fn describe(rules: &[(&str, Outcome, &str)]) -> Vec<(Outcome, Vec<String>)> {
    let mut out: Vec<(Outcome, Vec<String>)> = Vec::new();
    for (name, outcome, note) in rules {
        let item = if note.is_empty() {
            (*name).to_owned()
        } else {
            format!("{name} ({note})")
        };
        match out.iter_mut().find(|(o, _)| o == outcome) {
            Some((_, v)) => v.push(item),
            None => out.push((*outcome, vec![item])),
        }
    }
    out
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

    #[test]
    fn pseudonyms_are_stable_per_period_and_never_shared() {
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let day = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = p.pseudonym("ga", "G-1", "1823456789.1732439000", day);
        assert_eq!(
            a,
            p.pseudonym(
                "ga",
                "G-1",
                "1823456789.1732439000",
                day + Duration::from_secs(60)
            )
        );
        assert_ne!(a, p.pseudonym("ga", "G-1", "other", day));
        assert_ne!(
            a,
            p.pseudonym("ga2", "G-1", "1823456789.1732439000", day),
            "routes never share"
        );
        assert_ne!(
            a,
            p.pseudonym("ga", "G-2", "1823456789.1732439000", day),
            "sites never share"
        );
        let next = day + Duration::from_secs(86400);
        assert_ne!(
            a,
            p.pseudonym("ga", "G-1", "1823456789.1732439000", next),
            "a new period, a new key"
        );
        let q = Pseudonymizer::new(Duration::from_secs(86400), None);
        assert_ne!(
            a,
            q.pseudonym("ga", "G-1", "1823456789.1732439000", day),
            "keys are random per process"
        );
        // With a shared salt, replicas agree (and still rotate).
        let r1 = Pseudonymizer::new(
            Duration::from_secs(86400),
            Some(Secret::new("pseudonym salt", "shared")),
        );
        let r2 = Pseudonymizer::new(
            Duration::from_secs(86400),
            Some(Secret::new("pseudonym salt", "shared")),
        );
        assert_eq!(
            r1.pseudonym("m", "3", "x", day),
            r2.pseudonym("m", "3", "x", day)
        );
        assert_ne!(
            r1.pseudonym("m", "3", "x", day),
            r1.pseudonym("m", "3", "x", next)
        );
    }

    #[test]
    fn the_gate_key_is_the_subscriber_alone() {
        let p = Pseudonymizer::new(Duration::from_secs(86400), None);
        let day = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let one = p.subscriber("u", ip("2a01:e0a:1:2::1"), day);
        assert_eq!(
            one,
            p.subscriber("u", ip("2a01:e0a:1:2:dead:beef:0:7"), day)
        );
        assert_ne!(
            one,
            p.subscriber("u", ip("2a01:e0a:1:3::1"), day),
            "another /64"
        );
        let v4 = p.subscriber("u", ip("198.51.100.50"), day);
        for embedding in [
            "2002:c633:6432::1",
            "64:ff9b::c633:6432",
            "::ffff:198.51.100.50",
        ] {
            assert_eq!(v4, p.subscriber("u", ip(embedding), day), "{embedding}");
        }
        assert_ne!(
            v4,
            p.subscriber("m", ip("198.51.100.50"), day),
            "routes never share"
        );
        let next = day + Duration::from_secs(86400);
        assert_ne!(
            v4,
            p.subscriber("u", ip("198.51.100.50"), next),
            "a new period, a new key"
        );
        // Unrelated to the synthetic address's hash of the same visitor.
        assert_ne!(v4, p.visitor("u", "", ip("198.51.100.50"), "", day));
    }
}

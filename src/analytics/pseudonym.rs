//! Keyed pseudonyms under a key that lives in memory only and rotates every period (HMAC-SHA-256,
//! and SipHash for derived values).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;
use crate::store::Store;

/// Where the current period's key came from (`/status` shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// No period begun yet.
    None,
    /// Drawn at random by this process: no other replica has it.
    Random,
    /// Derived from `salt_file`: every replica with the file has it.
    Salt,
    /// Agreed through the key store: every replica reaching it has it.
    Store,
    /// Drawn at random because the store's key was not at hand when the period began.
    Local,
}

impl KeySource {
    /// What `/status` says.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::None => "none yet",
            KeySource::Random => "random, this replica only",
            KeySource::Salt => "derived from salt_file",
            KeySource::Store => "shared through the store",
            KeySource::Local => "local: the store's key was not at hand when the period began",
        }
    }

    fn from_u8(v: u8) -> KeySource {
        match v {
            1 => KeySource::Random,
            2 => KeySource::Salt,
            3 => KeySource::Store,
            4 => KeySource::Local,
            _ => KeySource::None,
        }
    }
}

/// Random key bytes from the OS.
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    if getrandom::fill(&mut k).is_err() {
        // No OS randomness (never seen on Linux): fall back on the clock and the process id;
        // the key is still never written anywhere and still rotates.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        k[..16].copy_from_slice(&t.to_le_bytes());
        k[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    k
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
    /// The key store, when replicas share keys and location counts through one.
    store: Option<Arc<Store>>,
    /// Keys the key keeper fetched from the store, by period index (at most a few).
    fetched: Mutex<Vec<(u64, zeroize::Zeroizing<[u8; 32]>)>>,
    /// The current period's key, as the store needs it to re-assert it (store mode only).
    in_use: Mutex<Option<(u64, zeroize::Zeroizing<[u8; 32]>)>>,
    /// Where the current period's key came from ([`KeySource`] as a number).
    source: AtomicU8,
}

type HmacSha256 = Hmac<Sha256>;

impl Pseudonymizer {
    /// A pseudonymizer rotating every `period` (aligned on the Unix epoch).
    pub fn new(period: Duration, secret: Option<Secret>) -> Pseudonymizer {
        Pseudonymizer {
            period: period.max(Duration::from_secs(1)),
            secret,
            state: Mutex::new((u64::MAX, None, [0; 16])),
            store: None,
            fetched: Mutex::new(Vec::new()),
            in_use: Mutex::new(None),
            source: AtomicU8::new(0),
        }
    }

    /// A pseudonymizer whose keys come from `store` (unless a salt derives them), fetched
    /// ahead by the key keeper ([`crate::analytics::shared`]).
    pub fn with_store(mut self, store: Option<Arc<Store>>) -> Pseudonymizer {
        self.store = store;
        self
    }

    /// The key store, if any (the gate shares its counts through it, salt or not).
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The store when this pseudonymizer's keys come from it (no salt).
    pub fn key_store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref().filter(|_| self.secret.is_none())
    }

    /// The rotation period in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period.as_secs().max(1)
    }

    /// Where the current period's key came from.
    pub fn source(&self) -> KeySource {
        KeySource::from_u8(self.source.load(Ordering::Relaxed))
    }

    /// Hands over the store's key for period `index` (the key keeper): used when that period
    /// begins, never to replace a key already in use.
    pub fn offer(&self, index: u64, key: [u8; 32]) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched.retain(|(i, _)| *i + 1 >= index && *i != index);
        fetched.push((index, zeroize::Zeroizing::new(key)));
    }

    /// Whether the store's key for period `index` is at hand.
    pub fn has_fetched(&self, index: u64) -> bool {
        let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
        fetched.iter().any(|(i, _)| *i == index)
    }

    /// The key in use for period `index` and where it came from, if that period has begun
    /// (store mode only: the keeper re-asserts it after a store restart).
    pub fn in_use(&self, index: u64) -> Option<([u8; 32], KeySource)> {
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        in_use
            .as_ref()
            .filter(|(i, _)| *i == index)
            .map(|(_, k)| (**k, self.source()))
    }

    /// The key for a period beginning now, and where it came from.
    fn period_key(&self, index: u64) -> Option<([u8; 32], KeySource)> {
        if let Some(secret) = &self.secret {
            let mut mac = HmacSha256::new_from_slice(secret.expose()).ok()?;
            mac.update(b"tamis-pseudonym-period");
            mac.update(&index.to_be_bytes());
            return Some((mac.finalize().into_bytes().into(), KeySource::Salt));
        }
        let Some(store) = &self.store else {
            return Some((random_key(), KeySource::Random));
        };
        let fetched = {
            let fetched = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            fetched.iter().find(|(i, _)| *i == index).map(|(_, k)| **k)
        };
        let (key, source) = match fetched {
            Some(k) => (k, KeySource::Store),
            None => {
                store.fell_back("key");
                tracing::warn!(
                    store = %store.url(),
                    "a pseudonym period began without the store's key: this replica uses a key of its own until the next period"
                );
                (random_key(), KeySource::Local)
            }
        };
        *self.in_use.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((index, zeroize::Zeroizing::new(key)));
        Some((key, source))
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
            let (key, source) = self.period_key(index)?;
            let key = zeroize::Zeroizing::new(key);
            self.source.store(source as u8, Ordering::Relaxed);
            let mac = HmacSha256::new_from_slice(&key[..]).ok();
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

/// The octets of the subscriber an address belongs to (see [`crate::policy::client_addr::subscriber`]):
/// 4 for an IPv4 (or one an IPv6 address carries), 16 for an IPv6 /64.
fn subscriber_octets(address: std::net::IpAddr) -> Subscriber {
    match crate::policy::client_addr::subscriber(address) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

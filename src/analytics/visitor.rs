//! What an analytics upstream learns of the visitor besides the scrubbed payload: an address
//! (none, truncated, or a synthetic pseudonym) and a coarse location computed by tamis, each in
//! the form the protocol's server reads.

use std::net::{IpAddr, Ipv6Addr};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::{Protocol, Runtime};
use crate::analytics::geo::{self, Released};

/// What an analytics route sends in place of the visitor's address (`client_ip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAddress {
    /// Nothing: the upstream sees only tamis's own address (the default).
    #[default]
    None,
    /// EU upstreams only: the address cut to /24 (IPv4) or /48 (IPv6).
    Truncated,
    /// EU upstreams only: a synthetic address in [`SYNTHETIC_NET`], a keyed hash of the
    /// visitor's address, generalised User-Agent and site, cut to `pseudonym_bits` bits so that
    /// visitors collide; the same within a rotation period, unrelated across periods.
    Pseudonym,
}

impl ClientAddress {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAddress::None => "none",
            ClientAddress::Truncated => "truncated",
            ClientAddress::Pseudonym => "pseudonym",
        }
    }
}

/// Where synthetic addresses come from: the IPv6 documentation prefix (RFC 3849), which is
/// never routed, so no real client can ever have one of them.
pub const SYNTHETIC_NET: &str = "2001:db8::/32";

/// The default number of hash bits a synthetic address keeps (about a million addresses).
pub const DEFAULT_BITS: u8 = 20;

/// The synthetic address of a visitor whose keyed hash is `hash`: `2001:db8:` followed by the
/// hash's top `bits` bits (8 to 32), the rest zero. Putting the bits just after the prefix keeps
/// them in the part a server's own IP anonymisation keeps longest.
pub fn synthetic_address(hash: u64, bits: u8) -> Ipv6Addr {
    let bits = u32::from(bits.clamp(8, 32));
    let kept = (hash >> (64 - bits)) << (32 - bits);
    let mut o = [0u8; 16];
    o[0..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    o[4..8].copy_from_slice(&(kept as u32).to_be_bytes());
    Ipv6Addr::from(o)
}

/// How many distinct synthetic addresses `n` distinct visitors are expected to show with
/// `bits` bits (the rest collide): `2^b (1 - (1 - 2^-b)^n)`.
pub fn expected_distinct(n: f64, bits: u8) -> f64 {
    let space = 2f64.powi(i32::from(bits));
    space * (1.0 - (1.0 - 1.0 / space).powf(n))
}

/// What this request tells the upstream of its visitor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visitor {
    /// The address sent in X-Forwarded-For in place of the real one, if any.
    pub forwarded_for: Option<IpAddr>,
    /// The synthetic address sent to Matomo as `cip`, if any.
    pub cip: Option<IpAddr>,
    /// The location released by the k-anonymity gate.
    pub location: Released,
}

impl Visitor {
    /// Nothing about the visitor.
    pub const NONE: Visitor = Visitor {
        forwarded_for: None,
        cip: None,
        location: Released {
            country: None,
            region: None,
        },
    };
}

/// The keyed state a request's visitor is judged with: the live route's, or a probe's
/// throwaway copy (so a probe never reads or moves the live pseudonym key or counts).
pub struct Keys<'a> {
    /// The pseudonym key of the period.
    pub pseudonyms: &'a super::Pseudonymizer,
    /// The location counts of the period.
    pub gate: &'a geo::Gate,
    /// The operator's location database, if any.
    pub geo: Option<&'a geo::Database>,
}

/// Works out what one request may tell: looks the address up (in memory, never kept), counts
/// the visitor's subscriber in the gate, and derives the synthetic address. `site` gives the
/// host the browser asked (each site its own synthetic addresses), only called when needed;
/// `user_agent` is the visitor's, generalised here.
pub fn observe(
    rt: &Runtime,
    keys: &Keys<'_>,
    route: &str,
    site: impl FnOnce() -> String,
    client: IpAddr,
    user_agent: &str,
    now: SystemTime,
) -> Visitor {
    let geo = keys.geo;
    let locate = rt.location != geo::Precision::None && geo.is_some();
    if !locate && rt.address == ClientAddress::None {
        return Visitor::NONE;
    }
    let address = match rt.address {
        ClientAddress::None => None,
        ClientAddress::Truncated => Some(crate::policy::truncate_ip(client)),
        ClientAddress::Pseudonym => {
            let ua = super::generalise_user_agent(user_agent);
            let hash = keys.pseudonyms.visitor(route, &site(), client, &ua, now);
            Some(IpAddr::V6(synthetic_address(hash, rt.bits)))
        }
    };
    // The gate counts subscribers, never anything the request itself says (Host, User-Agent):
    // one person varying those must stay one person in a cell.
    let location = match geo.and_then(|g| g.locate(client)) {
        Some(place) if locate => {
            let who = keys.pseudonyms.subscriber(route, client, now);
            keys.gate
                .admit(keys.pseudonyms.period(now), who, place, rt.location)
        }
        _ => Released::default(),
    };
    // Matomo reads a client address from its cip parameter; the others from X-Forwarded-For.
    let (forwarded_for, cip) = match (rt.protocol, rt.address) {
        (Protocol::Matomo, ClientAddress::Pseudonym) => (None, address),
        _ => (address, None),
    };
    Visitor {
        forwarded_for,
        cip,
        location,
    }
}

/// Adds to the upstream request's headers what the protocol's server reads from headers: the
/// address in `X-Forwarded-For` (all but Matomo with a pseudonym, which takes `cip`), and for
/// Umami the location in the headers it trusts from a CDN (`CF-IPCountry`, `CF-Region-Code`).
pub fn add_headers(protocol: Protocol, visitor: &Visitor, headers: &mut HeaderMap) {
    if let Some(address) = visitor.forwarded_for {
        if let Ok(v) = HeaderValue::from_str(&address.to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if protocol == Protocol::Umami {
        let pairs = [
            ("cf-ipcountry", visitor.location.country),
            ("cf-region-code", visitor.location.region),
        ];
        for (name, code) in pairs {
            if let Some(v) = code.and_then(|c| HeaderValue::from_str(c.as_str()).ok()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

/// The Matomo parameters that carry the visitor (`cip`, `country`, `region`), each of which
/// Matomo only accepts with the operator's `token_auth`.
pub fn matomo_params(visitor: &Visitor) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(a) = visitor.cip {
        out.push(("cip".to_owned(), a.to_string()));
    }
    if let Some(c) = visitor.location.country {
        // Matomo wants the country lower-case, the region as the ISO 3166-2 suffix.
        out.push(("country".to_owned(), c.as_str().to_ascii_lowercase()));
    }
    if let Some(r) = visitor.location.region {
        out.push(("region".to_owned(), r.as_str().to_owned()));
    }
    out
}

/// What `tamis check` and the transparency page say is sent in place of the address.
pub fn describe_address(protocol: Protocol, address: ClientAddress, bits: u8) -> String {
    let field = if protocol == Protocol::Matomo && address == ClientAddress::Pseudonym {
        "cip (with the operator's token_auth)"
    } else {
        "X-Forwarded-For"
    };
    match address {
        ClientAddress::None => "never sent".to_owned(),
        ClientAddress::Truncated => "sent truncated (IPv4 /24, IPv6 /48, an embedded IPv4 /24) \
             in X-Forwarded-For (EU route)"
            .to_owned(),
        ClientAddress::Pseudonym => format!(
            "never sent; {field} carries a synthetic address in {SYNTHETIC_NET} (documentation \
             range, never a real client): {bits} bits of HMAC-SHA-256 of (address, generalised \
             User-Agent, site) under the rotating key, so visitors collide (EU route)"
        ),
    }
}

/// What `tamis check` and the transparency page say is sent of the visitor's location.
pub fn describe_location(protocol: Protocol, precision: geo::Precision, min: usize) -> String {
    let how = match protocol {
        Protocol::Umami => "CF-IPCountry and CF-Region-Code headers",
        _ => "country and region parameters (with the operator's token_auth)",
    };
    match precision {
        geo::Precision::None => "never sent".to_owned(),
        geo::Precision::Country => format!(
            "the country, computed by tamis from the address in memory, only once {min} distinct \
             subscribers (IPv4 address, IPv6 /64) were seen in it this period, in the {how}"
        ),
        geo::Precision::Region => format!(
            "the region, computed by tamis from the address in memory, only once {min} distinct \
             subscribers (IPv4 address, IPv6 /64) were seen in it this period (else the country \
             under the same rule, else \
             nothing), in the {how}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_addresses_are_documentation_addresses_with_the_hash_bits_only() {
        let net: ipnet::Ipv6Net = SYNTHETIC_NET.parse().unwrap();
        for (hash, bits) in [(u64::MAX, 20), (0x1234_5678_9abc_def0, 8), (u64::MAX, 32)] {
            let a = synthetic_address(hash, bits);
            assert!(net.contains(&a), "{a}");
            let tail = u32::from_be_bytes(a.octets()[4..8].try_into().unwrap());
            assert_eq!(
                tail.count_ones() as u64,
                (hash >> (64 - bits)).count_ones() as u64
            );
            assert!(tail.trailing_zeros() >= 32 - u32::from(bits) || bits == 32);
            assert!(a.octets()[8..].iter().all(|b| *b == 0));
        }
        assert_eq!(
            synthetic_address(0xabcd_e000_0000_0000, 20),
            "2001:db8:abcd:e000::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn collisions_follow_the_birthday_bound() {
        // 10 000 visitors in 2^20 addresses: about 48 of them share an address.
        let d = expected_distinct(10_000.0, 20);
        assert!((10_000.0 - d - 47.5).abs() < 1.0, "{d}");
        assert!(expected_distinct(1.0, 8) > 0.999);
    }

    #[test]
    fn matomo_gets_lower_case_country_and_the_region_suffix() {
        let mut v = Visitor {
            forwarded_for: None,
            cip: Some("2001:db8:1::".parse().unwrap()),
            location: Released {
                country: crate::analytics::geo::Code::new("FR"),
                region: crate::analytics::geo::Code::new("IDF"),
            },
        };
        let p = matomo_params(&v);
        assert_eq!(
            p,
            [
                ("cip".to_owned(), "2001:db8:1::".to_owned()),
                ("country".to_owned(), "fr".to_owned()),
                ("region".to_owned(), "IDF".to_owned()),
            ]
        );
        // A truncated address goes in X-Forwarded-For, never in cip.
        v.forwarded_for = v.cip.take();
        assert_eq!(matomo_params(&v).len(), 2);
    }

    /// A route locating by region, with a gate of `min` and a synthetic address, and a
    /// database placing 198.51.100.0/24 in Île-de-France.
    fn located(min: usize) -> (Runtime, geo::Database, tempfile::TempDir) {
        #[derive(serde::Serialize)]
        struct Record {
            country: std::collections::BTreeMap<&'static str, &'static str>,
            subdivisions: Vec<std::collections::BTreeMap<&'static str, &'static str>>,
        }
        let mut w = maxminddb_writer::Database::default();
        w.metadata.binary_format_major_version = 2;
        let data = w
            .insert_value(Record {
                country: [("iso_code", "FR")].into(),
                subdivisions: vec![[("iso_code", "IDF")].into()],
            })
            .unwrap();
        w.insert_node(
            "198.51.100.0/24"
                .parse::<maxminddb_writer::paths::IpAddrWithMask>()
                .unwrap(),
            data,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("geo.mmdb");
        std::fs::write(&path, w.write_to(Vec::new()).unwrap()).unwrap();
        let rt = Runtime {
            protocol: Protocol::Umami,
            settings: super::super::Settings::default(),
            pseudonyms: std::sync::Arc::new(super::super::Pseudonymizer::new(
                std::time::Duration::from_secs(86400),
                None,
            )),
            max_body: 1024,
            address: ClientAddress::Pseudonym,
            bits: DEFAULT_BITS,
            location: geo::Precision::Region,
            gate: std::sync::Arc::new(geo::Gate::new(min)),
        };
        (rt, geo::Database::open(&path).unwrap(), dir)
    }

    #[test]
    fn the_gate_counts_a_subscriber_once_whatever_site_or_browser_it_names() {
        let (rt, db, _dir) = located(2);
        let keys = Keys {
            pseudonyms: &rt.pseudonyms,
            gate: &rt.gate,
            geo: Some(&db),
        };
        let now = SystemTime::now();
        let uas = [
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "curl/8.5.0",
        ];
        let mut synthetic = std::collections::HashSet::new();
        for (i, ua) in uas.iter().enumerate() {
            for site in ["a.example", "b.example", "c.example"] {
                // 198.51.100.7 itself, and behind 6to4.
                for client in ["198.51.100.7", "2002:c633:6407::1"] {
                    let v = observe(
                        &rt,
                        &keys,
                        "u",
                        || site.to_owned(),
                        client.parse().unwrap(),
                        ua,
                        now,
                    );
                    assert_eq!(v.location, Released::default(), "{site} {ua} {client} {i}");
                    synthetic.extend(v.forwarded_for);
                }
            }
        }
        // The synthetic address still tells browsers and sites apart (its richer hash).
        assert_eq!(synthetic.len(), uas.len() * 3, "{synthetic:?}");
        // A second subscriber makes two: the cell opens.
        let v = observe(
            &rt,
            &keys,
            "u",
            || "a.example".into(),
            "198.51.100.8".parse().unwrap(),
            uas[0],
            now,
        );
        assert_eq!(
            v.location.region.map(|c| c.as_str().to_owned()).as_deref(),
            Some("IDF")
        );
    }
}

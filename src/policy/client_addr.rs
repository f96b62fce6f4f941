//! Who the client is, for tamis's own use only (rate limiting, the truncated address an EU
//! analytics route may send, the opt-in truncated log). Behind a TLS terminator the TCP peer is
//! the terminator: its `X-Forwarded-For` (or `Forwarded`) names the client, but only when that
//! peer is in `server.trusted_proxies`; from anyone else those headers are ignored, since a
//! client can write whatever it likes in them. The address found here is never forwarded to a
//! non-EU upstream: the request policy strips every such header whatever this module says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::HeaderMap;
use ipnet::IpNet;

/// Whether `ip` is one of the trusted proxies (`server.trusted_proxies`).
pub fn is_trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    trusted(ip, proxies)
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| net.contains(&ip))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Where an IPv6 address carries an IPv4 one.
#[derive(Clone, Copy, Debug)]
enum Embedding {
    /// The last 32 bits.
    Last32,
    /// The last 32 bits, unless they are 0 or 1: `::` and `::1` are no IPv4 address.
    Last32NotLoopback,
    /// Bits 16 to 47.
    After16,
    /// The last 32 bits, inverted.
    Last32Inverted,
}

/// The IPv6 blocks whose addresses carry a client's IPv4 address: (prefix, length, where).
/// Not here: the NAT64 local-use block 64:ff9b:1::/48 (RFC 8215) and network-specific NAT64
/// prefixes (RFC 6052) put the IPv4 where the operator chose, unknowable from the address; the
/// /48 cut of IPv6 keeps none of it under 64:ff9b:1::/48 and at most its first 16 bits under a
/// /32 prefix. ISATAP and similar put it in the interface identifier, which the cut drops.
#[rustfmt::skip] // One row a line: a table.
const EMBEDDED_IPV4: &[(Ipv6Addr, u8, Embedding)] = &[
    // IPv4-compatible ::a.b.c.d (RFC 4291, deprecated).
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, Embedding::Last32NotLoopback),
    // IPv4-mapped ::ffff:a.b.c.d (RFC 4291): how a dual-stack socket names an IPv4 peer.
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, Embedding::Last32),
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765, SIIT).
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96, Embedding::Last32),
    // NAT64's well-known prefix 64:ff9b::a.b.c.d (RFC 6052).
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, Embedding::Last32),
    // 6to4 (RFC 3056): a site's /48 is 2002:IPv4::/48.
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, Embedding::After16),
    // Teredo (RFC 4380): bits 32-63 are the Teredo server's IPv4; the client's, as its NAT
    // maps it, is the last 32 bits inverted.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, Embedding::Last32Inverted),
];

/// Who an address belongs to, as far as tamis can tell: IPv6 clients by /64 (one subscriber's
/// usual allocation, whose privacy extensions rotate addresses inside it), except that one
/// carrying an IPv4 (6to4, Teredo, NAT64, IPv4-mapped) is that IPv4: a Teredo server's or a
/// NAT64 prefix's /64 holds every client behind it. Rate limits and the analytics visitor
/// hash count by it.
pub fn subscriber(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// The client's IPv4 address an IPv6 address carries (see `EMBEDDED_IPV4`), if any.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = ip.to_bits();
    let (_, _, embedding) = EMBEDDED_IPV4.iter().find(|(prefix, len, _)| {
        let host = u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
        bits & !host == prefix.to_bits()
    })?;
    // Truncating to u32 keeps the low 32 bits: the ones each arm names.
    let low = bits as u32;
    match embedding {
        Embedding::Last32 => Some(Ipv4Addr::from(low)),
        Embedding::Last32NotLoopback => (low > 1).then(|| Ipv4Addr::from(low)),
        Embedding::After16 => Some(Ipv4Addr::from((bits >> 80) as u32)),
        Embedding::Last32Inverted => Some(Ipv4Addr::from(!low)),
    }
}

/// One element of `X-Forwarded-For` or a `for=` of `Forwarded`: an address, maybe with a
/// port, maybe bracketed or quoted. `None` for `unknown`, obfuscated names and garbage.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // "[2001:db8::1]" without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The hops a trusted proxy reported, nearest the client first.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let xff: Vec<Option<IpAddr>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| {
            let s = v.to_str().unwrap_or("");
            s.split(',').map(parse_node).collect::<Vec<_>>()
        })
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|v| {
            let s = v.to_str().unwrap_or("");
            s.split(',')
                .map(|element| {
                    element.split(';').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v))
                    })
                })
                .map(Option::flatten)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the nearest
/// address in its forwarding chain that is not itself a trusted proxy (walking from the right,
/// as each proxy appends the address it saw). An unreadable entry stops the walk at the last
/// trusted hop: whatever is left of it could have been written by anyone.
pub fn resolve(peer: SocketAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let mut client = canonical(peer.ip());
    if proxies.is_empty() || !trusted(client, proxies) {
        return client;
    }
    for hop in forwarded_chain(headers).into_iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(ip);
                if !trusted(client, proxies) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const PEER: &str = "10.0.0.5:40000";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let ip = resolve(PEER.parse().unwrap(), &h, &nets(&["192.168.0.0/16"]));
        assert_eq!(ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(
            resolve(PEER.parse().unwrap(), &h, &[]),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_trusted_peer_names_the_client_and_spoofed_entries_on_the_left_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client wrote "1.2.3.4" itself; the terminator appended what it saw.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);
        assert_eq!(
            resolve(PEER.parse().unwrap(), &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // Two trusted hops.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, 10.1.1.1")]);
        assert_eq!(
            resolve(PEER.parse().unwrap(), &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // Split over two header lines.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.8"),
        ]);
        assert_eq!(
            resolve(PEER.parse().unwrap(), &h, &trusted),
            "203.0.113.8".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, bogus")]);
        assert_eq!(
            resolve(PEER.parse().unwrap(), &h, &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        // No header: the peer.
        assert_eq!(
            resolve(PEER.parse().unwrap(), &HeaderMap::new(), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_and_ipv6_forms() {
        let trusted = nets(&["::1/128", "127.0.0.0/8"]);
        let peer: SocketAddr = "[::1]:9000".parse().unwrap();
        let h = headers(&[("forwarded", "for=\"[2001:db8:cafe::17]:4711\";proto=https")]);
        assert_eq!(
            resolve(peer, &h, &trusted),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=192.0.2.60;proto=http, for=127.0.0.2")]);
        assert_eq!(
            resolve(peer, &h, &trusted),
            "192.0.2.60".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            resolve(peer, &h, &trusted),
            "::1".parse::<IpAddr>().unwrap()
        );
        // An IPv4-mapped peer matches an IPv4 block.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.9:1234")]);
        assert_eq!(
            resolve(mapped, &h, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
    }
}

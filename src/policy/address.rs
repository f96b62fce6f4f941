//! The visitor's address, in the rare places tamis may send or keep one: truncated first
//! (IPv4 to /24, IPv6 to /48).

/// Truncates a client address for the rare places tamis may send or keep one (an EU analytics
/// route's `X-Forwarded-For`, its own log, when the operator asks): IPv4 to /24, IPv6 to /48,
/// and an IPv6 address carrying an IPv4 one (6to4, Teredo, NAT64, IPv4-mapped) as that IPv4 to
/// /24, since its /48 could hold the whole IPv4.
pub fn truncate_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match ip {
        IpAddr::V6(v6) => crate::policy::client_addr::embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_embedding_an_ipv4_is_truncated_to_that_ipv4s_24() {
        // (address, truncated): 203.0.113.7 = 0xcb00_7107, written every way IPv6 embeds it.
        let cases = [
            ("203.0.113.77", "203.0.113.0"),
            ("2001:db8:1234:5678::1", "2001:db8:1234::"),
            // IPv4-mapped, IPv4-compatible (deprecated), IPv4-translated (SIIT).
            ("::ffff:203.0.113.7", "203.0.113.0"),
            ("::203.0.113.7", "203.0.113.0"),
            ("::ffff:0:203.0.113.7", "203.0.113.0"),
            // The unspecified and loopback addresses are not IPv4-compatible ones.
            ("::", "::"),
            ("::1", "::"),
            // 6to4: the IPv4 is the site's /48, whatever the subnet and interface.
            ("2002:cb00:7107::1", "203.0.113.0"),
            ("2002:cb00:7107:42:a:b:c:d", "203.0.113.0"),
            // Teredo: server 65.54.227.120, client 203.0.113.7 inverted in the last 32 bits;
            // nothing of the server, the flags or the obfuscated port is kept.
            ("2001:0:4136:e378:8000:63bf:34ff:8ef8", "203.0.113.0"),
            // NAT64 well-known prefix (RFC 6052 /96).
            ("64:ff9b::cb00:7107", "203.0.113.0"),
            ("64:ff9b::203.0.113.7", "203.0.113.0"),
            // NAT64 local-use prefix (RFC 8215): the IPv4 lies beyond its /48 at a length the
            // operator chose; the /48 cut keeps none of it.
            ("64:ff9b:1:cb00:71:700::", "64:ff9b:1::"),
            ("64:ff9b:1::cb00:7107", "64:ff9b:1::"),
            // A network-specific NAT64 prefix cannot be told from a native address: with the
            // shortest (/32) the /48 cut keeps the IPv4's first 16 bits, less than its /24.
            ("2001:db8:cb00:7107::", "2001:db8:cb00::"),
        ];
        for (address, truncated) in cases {
            assert_eq!(
                truncate_ip(address.parse().unwrap()).to_string(),
                truncated,
                "{address}"
            );
        }
    }
}

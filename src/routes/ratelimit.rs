//! Per-client request rates on a route (GCRA, from the `governor` crate), in memory only: the
//! client addresses it holds are never logged, exported or written anywhere. Memory is bounded:
//! at most [`MAX_CLIENTS`] addresses per route, and an address leaves once its allowance has
//! refilled (then its state is the same as a newcomer's, so forgetting it changes nothing).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Gcra};

use crate::config::RateLimit;

/// Addresses tracked per route; beyond it the least recently seen are forgotten first.
pub const MAX_CLIENTS: u64 = 100_000;

type Direct = Gcra<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    governor::middleware::NoOpMiddleware<<DefaultClock as Clock>::Instant>,
>;

/// One route's limiter.
pub struct RateLimiter {
    quota: Quota,
    clients: moka::sync::Cache<u128, Arc<Direct>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the addresses.
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .finish()
    }
}

/// The key for an address: its subscriber ([`crate::policy::client_addr::subscriber`]), so a client
/// cannot dodge the limit by rotating addresses inside its IPv6 /64.
fn key(ip: IpAddr) -> u128 {
    match crate::policy::client_addr::subscriber(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl RateLimiter {
    /// A limiter allowing each client `limit`.
    pub fn new(limit: RateLimit) -> RateLimiter {
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let period = limit.period.max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        // The time after which an idle client's allowance is whole again.
        let refill = period
            .saturating_mul(limit.burst)
            .max(Duration::from_secs(1));
        RateLimiter {
            quota,
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(refill)
                .build(),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if `client` may make a request now; otherwise how long until it may.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let quota = self.quota;
        let limiter = self
            .clients
            .get_with(key(client), || Arc::new(Gcra::direct(quota)));
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients currently tracked (for tests).
    pub fn tracked(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_client() {
        let rl = RateLimiter::new(RateLimit {
            period: Duration::from_secs(10),
            burst: 3,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(rl.check(a).is_ok());
        }
        let wait = rl.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Another client has its own allowance.
        assert!(rl.check(b).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let rl = RateLimiter::new(RateLimit {
            period: Duration::from_secs(10),
            burst: 1,
        });
        assert!(rl.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(rl.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(rl.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert_eq!(
            key("::ffff:192.0.2.1".parse().unwrap()),
            key("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn clients_behind_one_teredo_server_or_nat64_prefix_each_have_their_own_allowance() {
        let rl = RateLimiter::new(RateLimit {
            period: Duration::from_secs(10),
            burst: 1,
        });
        // Two Teredo clients (203.0.113.7, 203.0.113.8) of the server 65.54.227.120.
        assert!(rl
            .check("2001:0:4136:e378:8000:63bf:34ff:8ef8".parse().unwrap())
            .is_ok());
        assert!(rl
            .check("2001:0:4136:e378:8000:63bf:34ff:8ef7".parse().unwrap())
            .is_ok());
        // Two IPv4 clients seen through NAT64's well-known prefix.
        assert!(rl.check("64:ff9b::198.51.100.1".parse().unwrap()).is_ok());
        assert!(rl.check("64:ff9b::198.51.100.2".parse().unwrap()).is_ok());
        // A 6to4 address is its IPv4's, already spent above.
        assert!(rl.check("2002:c633:6401:1::9".parse().unwrap()).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let rl = RateLimiter::new(RateLimit {
            period: Duration::from_secs(1),
            burst: 1,
        });
        for i in 0..(MAX_CLIENTS as u32 + 5_000) {
            let _ = rl.check(IpAddr::V4(std::net::Ipv4Addr::from(i)));
        }
        assert!(rl.tracked() <= MAX_CLIENTS, "{}", rl.tracked());
    }
}

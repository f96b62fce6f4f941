//! A circuit breaker per route: after `breaker_failures` consecutive upstream failures (no
//! answer, or a 5xx), the route stops asking its upstream for `breaker_cooldown`, serving stale
//! copies where the cache allows and a fast 503 otherwise; then one probe request is let
//! through, and its outcome closes the breaker or opens it again. This keeps a failing upstream
//! from being hammered, and visitors from waiting out a timeout on every request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else still gets the fast answer.
    Probing,
}

/// One route's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// The breaker is open: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open(pub Duration);

impl Breaker {
    /// A closed breaker; `threshold` 0 never opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go upstream now.
    pub fn admit(&self, now: Instant) -> Result<(), Open> {
        if self.threshold == 0 {
            return Ok(());
        }
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *s = State::Probing;
                Ok(())
            }
            State::Open { until } => Err(Open(until - now)),
            State::Probing => Err(Open(Duration::from_secs(1))),
        }
    }

    /// Records the outcome of an admitted request; true when this failure opened the breaker.
    pub fn record(&self, ok: bool, now: Instant) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut s = self.lock();
        let before = *s;
        *s = match (before, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open {
                until: now + self.cooldown,
            },
        };
        !ok && !matches!(before, State::Open { .. }) && matches!(*s, State::Open { .. })
    }

    /// Its threshold and cooldown.
    pub fn settings(&self) -> (u32, Duration) {
        (self.threshold, self.cooldown)
    }

    /// Whether it is refusing requests (for metrics).
    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_probes_once_then_closes() {
        let b = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.admit(t0).is_ok());
            assert!(!b.record(false, t0));
        }
        // A success in between resets the count.
        b.record(true, t0);
        for i in 0..3 {
            assert!(b.admit(t0).is_ok());
            assert_eq!(b.record(false, t0), i == 2, "opens on the third");
        }
        assert_eq!(
            b.admit(t0 + Duration::from_secs(4)),
            Err(Open(Duration::from_secs(6)))
        );
        // Cooldown over: exactly one probe.
        let later = t0 + Duration::from_secs(11);
        assert!(b.admit(later).is_ok());
        assert!(b.admit(later).is_err());
        // The probe fails: open again for a full cooldown.
        assert!(b.record(false, later));
        assert!(b.admit(later + Duration::from_secs(9)).is_err());
        let again = later + Duration::from_secs(10);
        assert!(b.admit(again).is_ok());
        b.record(true, again);
        assert!(b.admit(again).is_ok());
        assert!(!b.is_open());
    }

    #[test]
    fn zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(10));
        let t = Instant::now();
        for _ in 0..100 {
            b.record(false, t);
        }
        assert!(b.admit(t).is_ok());
    }
}

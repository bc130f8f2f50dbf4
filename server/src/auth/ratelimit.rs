//! A small keyed rate limiter (GCRA, the "leaky bucket as a meter").
//!
//! Each key may spend `burst` attempts at once; afterwards one more attempt
//! becomes available every `interval`. The current time is an argument, so the
//! limiter is exact and testable without a clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many keys, fully recovered keys are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Per-key limiter.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    /// How far ahead of `now` the theoretical arrival time may run.
    tolerance: Duration,
    /// Key → theoretical arrival time of the next attempt.
    tat: Mutex<HashMap<String, Instant>>,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, at least 1.
    pub fn as_header_secs(self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl RateLimiter {
    /// `burst` attempts at once, then one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        let burst = burst.max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one attempt for `key` at `now`, or says how long to wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), RetryAfter> {
        let mut map = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let allowed_at = tat.checked_sub(self.tolerance).unwrap_or(now);
        if allowed_at > now {
            return Err(RetryAfter(allowed_at - now));
        }
        map.insert(key.to_owned(), tat + self.interval);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check("a", t0), Ok(()));
        }
        let refused = l.check("a", t0).unwrap_err();
        assert_eq!(refused, RetryAfter(Duration::from_secs(10)));
        assert_eq!(refused.as_header_secs(), 10);
        // Other keys are independent.
        assert_eq!(l.check("b", t0), Ok(()));
        // One attempt comes back after one interval, not more.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.check("a", t1), Ok(()));
        assert!(l.check("a", t1).is_err());
        // After a long pause the whole burst is back.
        let t2 = t1 + Duration::from_secs(100);
        for _ in 0..3 {
            assert_eq!(l.check("a", t2), Ok(()));
        }
        assert!(l.check("a", t2).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(RetryAfter(Duration::from_millis(1500)).as_header_secs(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(1)).as_header_secs(), 1);
    }
}

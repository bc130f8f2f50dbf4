//! Where the library gets the time: an injected [`Clock`], so tests can
//! simulate a tablet that stays offline for weeks without waiting weeks.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The device's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// The wall clock in milliseconds; 0 if the clock is before 1970.
pub fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The wall clock shifted by an adjustable offset: a tablet "in the future".
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
}

impl OffsetClock {
    pub fn new(offset_ms: i64) -> Self {
        Self {
            offset_ms: AtomicI64::new(offset_ms),
        }
    }

    /// Moves the clock forward (or back, with a negative value).
    pub fn advance(&self, by_ms: i64) {
        self.offset_ms.fetch_add(by_ms, Ordering::SeqCst);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        system_now_ms().saturating_add(self.offset_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_clock_moves_forward_by_the_offset() {
        let clock = OffsetClock::new(0);
        let day = 24 * 3600 * 1000;
        clock.advance(60 * day);
        let before = system_now_ms();
        let shifted = clock.now_ms();
        assert!(
            shifted >= before + 60 * day,
            "{shifted} < {before} + 60 days"
        );
        assert_eq!(clock.offset_ms(), 60 * day);
    }
}

//! Wall-clock time, read in one place.
//!
//! Functions that decide something from the time take `now` as an argument;
//! only handlers and commands call [`now`], so logic stays testable.

use jiff::Timestamp;

/// The current time, UTC.
pub fn now() -> Timestamp {
    Timestamp::now()
}

/// Milliseconds since the Unix epoch (what documents store).
pub fn now_millis() -> i64 {
    now().as_millisecond()
}

/// `2025-07-01T08:30:00Z`: whole seconds, UTC, sortable as text.
pub fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_in_utc() {
        let ts: Timestamp = "2025-07-01T08:30:00.123456Z".parse().unwrap();
        assert_eq!(rfc3339(ts), "2025-07-01T08:30:00Z");
    }
}

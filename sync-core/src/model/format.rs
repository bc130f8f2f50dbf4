//! Formats of the strings stored in documents: ids, sha256 values, calendar dates.
//!
//! These are the checks [`validate`](super::validate()) applies; they are public
//! so writers (tablet, server) can refuse bad input before it enters a document.

/// Longest id (user, team, item, finding, unit code, template id, …) we accept.
/// UUIDs are 36 characters and sha256 values 64; 100 leaves room for prefixed
/// ids like `u-…` without letting an id carry a payload.
pub const MAX_ID_LEN: usize = 100;

/// Longest free-text string (notes, texts, comments). The same limit the
/// template applies to text answers.
pub const MAX_TEXT_CHARS: usize = crate::template::MAX_TEXT_CHARS;

/// Longest title (finding titles, action titles, unit names, display names).
pub const MAX_TITLE_CHARS: usize = 500;

/// Most findings one inspection may hold.
pub const MAX_FINDINGS: usize = 2_000;

/// Most photos one inspection may hold.
pub const MAX_PHOTOS: usize = 5_000;

/// Most entries any other map may hold.
pub const MAX_MAP_ENTRIES: usize = 10_000;

/// Longest template JSON a catalog entry may hold (bytes): what the template
/// parser itself accepts.
pub const MAX_TEMPLATE_JSON_BYTES: usize = crate::template::MAX_TEMPLATE_BYTES;

/// An id: 1 to [`MAX_ID_LEN`] characters from `A-Z a-z 0-9 - _ . : @`.
///
/// Ids end up in paths (`findings/<id>/title`), URLs and SQL projections, so
/// they are kept to a character set that needs no escaping anywhere.
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// A sha256 value: exactly 64 lowercase hexadecimal characters.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A real calendar date written `YYYY-MM-DD` (proleptic Gregorian, years 1000–9999).
pub fn is_date(s: &str) -> bool {
    parse_date(s).is_some()
}

/// `(year, month, day)` of a `YYYY-MM-DD` date, or `None` when it is not a real date.
pub fn parse_date(s: &str) -> Option<(u32, u32, u32)> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(range)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if y < 1000 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some((y, m, d))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert!(is_date("2025-02-28"));
        assert!(is_date("2024-02-29"));
        assert!(is_date("2000-02-29"));
        assert!(!is_date("1900-02-29"));
        assert!(!is_date("2025-02-29"));
        assert!(!is_date("2025-04-31"));
        assert!(!is_date("2025-13-01"));
        assert!(!is_date("2025-1-01"));
        assert!(!is_date("25-01-2025"));
        assert!(!is_date("2025-01-+1"));
        assert_eq!(parse_date("2025-07-01"), Some((2025, 7, 1)));
    }

    #[test]
    fn ids_and_hashes() {
        assert!(is_id("u-0193a2b4"));
        assert!(is_id("DA06-HN-2025-v1@1"));
        assert!(!is_id(""));
        assert!(!is_id("a/b"));
        assert!(!is_id(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256(&"ab".repeat(31)));
    }
}

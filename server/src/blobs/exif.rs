//! Capture time and position from a photo's EXIF, read from the uploaded
//! bytes before anything is re-encoded (renditions carry no metadata).
//!
//! EXIF is untrusted input like the rest of the file: a missing, broken or
//! out-of-range field yields `None` for that fact, never an error, because a
//! photo without usable EXIF is still evidence.

use std::io::Cursor;

use exif::{In, Tag, Value};

/// What the server records from EXIF.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExifFacts {
    /// `DateTimeOriginal` (else `DateTime`) as `YYYY-MM-DDTHH:MM:SS`, with
    /// `±HH:MM` when the camera recorded `OffsetTimeOriginal`. Cameras
    /// record local time without a zone, so none is invented here.
    pub taken_at: Option<String>,
    /// Latitude in degrees, north positive.
    pub gps_lat: Option<f64>,
    /// Longitude in degrees, east positive.
    pub gps_lon: Option<f64>,
}

/// Reads the facts from an image file's bytes (JPEG, PNG or WebP).
pub fn extract(bytes: &[u8]) -> ExifFacts {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return ExifFacts::default();
    };
    let (gps_lat, gps_lon) = match (
        coordinate(
            &exif,
            Tag::GPSLatitude,
            Tag::GPSLatitudeRef,
            b'N',
            b'S',
            90.0,
        ),
        coordinate(
            &exif,
            Tag::GPSLongitude,
            Tag::GPSLongitudeRef,
            b'E',
            b'W',
            180.0,
        ),
    ) {
        // A position needs both halves.
        (Some(lat), Some(lon)) => (Some(lat), Some(lon)),
        _ => (None, None),
    };
    ExifFacts {
        taken_at: taken_at(&exif),
        gps_lat,
        gps_lon,
    }
}

fn ascii(exif: &exif::Exif, tag: Tag) -> Option<&[u8]> {
    match &exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(parts) => parts.first().map(Vec::as_slice),
        _ => None,
    }
}

fn taken_at(exif: &exif::Exif) -> Option<String> {
    let (raw, offset_tag) = match ascii(exif, Tag::DateTimeOriginal) {
        Some(raw) => (raw, Tag::OffsetTimeOriginal),
        None => (ascii(exif, Tag::DateTime)?, Tag::OffsetTime),
    };
    let mut dt = exif::DateTime::from_ascii(raw).ok()?;
    // `from_ascii` does not check ranges; an impossible date is dropped.
    let valid = (1900..=2200).contains(&dt.year)
        && (1..=12).contains(&dt.month)
        && (1..=31).contains(&dt.day)
        && dt.hour < 24
        && dt.minute < 60
        && dt.second < 61;
    if !valid {
        return None;
    }
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    );
    if let Some(raw_offset) = ascii(exif, offset_tag)
        && dt.parse_offset(raw_offset).is_ok()
        && let Some(minutes) = dt.offset.filter(|m| m.abs() <= 14 * 60)
    {
        let sign = if minutes < 0 { '-' } else { '+' };
        let m = minutes.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", m / 60, m % 60));
    }
    Some(out)
}

/// Degrees from a (degrees, minutes, seconds) rational triple and its
/// N/S or E/W reference.
fn coordinate(
    exif: &exif::Exif,
    tag: Tag,
    ref_tag: Tag,
    positive: u8,
    negative: u8,
    limit: f64,
) -> Option<f64> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Rational(parts) = &field.value else {
        return None;
    };
    let mut degrees = 0.0;
    for (part, scale) in parts.iter().zip([1.0, 60.0, 3600.0]) {
        if part.denom == 0 {
            return None;
        }
        degrees += part.to_f64() / scale;
    }
    if parts.is_empty() {
        return None;
    }
    let sign = match ascii(exif, ref_tag)?.first()?.to_ascii_uppercase() {
        b if b == positive => 1.0,
        b if b == negative => -1.0,
        _ => return None,
    };
    let value = sign * degrees;
    (value.is_finite() && value.abs() <= limit).then_some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::fixtures;
    use super::*;

    #[test]
    fn reads_capture_time_and_position() {
        let jpeg = fixtures::jpeg_with_exif(
            64,
            48,
            &fixtures::ExifSpec {
                date_time_original: Some("2025:07:01 08:30:15"),
                offset_time_original: Some("+07:00"),
                // Hoàn Kiếm lake: 21°1'43.2" N, 105°51'7.2" E
                gps: Some(((21, 1, 432, 10), b'N', (105, 51, 72, 10), b'E')),
            },
        );
        let facts = extract(&jpeg);
        assert_eq!(facts.taken_at.as_deref(), Some("2025-07-01T08:30:15+07:00"));
        let lat = facts.gps_lat.unwrap();
        let lon = facts.gps_lon.unwrap();
        assert!((lat - 21.028_666_666).abs() < 1e-6, "{lat}");
        assert!((lon - 105.852).abs() < 1e-6, "{lon}");
    }

    #[test]
    fn southern_and_western_positions_are_negative() {
        let jpeg = fixtures::jpeg_with_exif(
            8,
            8,
            &fixtures::ExifSpec {
                date_time_original: None,
                offset_time_original: None,
                gps: Some(((33, 52, 0, 1), b'S', (151, 12, 0, 1), b'W')),
            },
        );
        let facts = extract(&jpeg);
        assert_eq!(facts.taken_at, None);
        assert!((facts.gps_lat.unwrap() + 33.866_666).abs() < 1e-5);
        assert!((facts.gps_lon.unwrap() + 151.2).abs() < 1e-5);
    }

    #[test]
    fn broken_or_missing_exif_yields_nothing() {
        assert_eq!(extract(b"not an image at all"), ExifFacts::default());
        let plain = fixtures::jpeg(16, 16);
        assert_eq!(extract(&plain), ExifFacts::default());
        let impossible = fixtures::jpeg_with_exif(
            8,
            8,
            &fixtures::ExifSpec {
                date_time_original: Some("2025:13:45 99:00:00"),
                offset_time_original: None,
                gps: Some(((95, 0, 0, 1), b'N', (10, 0, 0, 1), b'E')),
            },
        );
        assert_eq!(extract(&impossible), ExifFacts::default());
    }
}

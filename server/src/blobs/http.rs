//! Reading blobs back.
//!
//! - `GET /api/v1/blobs/{sha256}` — the original bytes with the sniffed
//!   media type; `?size=thumb` / `?size=preview` a JPEG rendition (made on
//!   demand if the background job has not yet). Strong `ETag`,
//!   `Cache-Control: private, max-age=31536000, immutable` (the bytes of a
//!   hash never change, but they are not public), `If-None-Match` → 304,
//!   single `Range` → 206 (416 outside the blob), `If-Range`.
//! - `GET /api/v1/blobs/missing` — `{"missing": [sha256…], "truncated":
//!   bool}`: hashes referenced by documents the caller may read that the
//!   server does not hold, so a tablet resends only those.
//!
//! Without a valid token the answer is 401 whatever the hash (it reveals
//! nothing). With one, a blob the caller may not read is the same 404, body
//! and all, as a blob that does not exist.

use std::ops::Range;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::{BlobError, BlobKey, Sha256Hex, Variant, access};
use crate::AppState;
use crate::auth::AuthUser;
use crate::db::DbError;
use crate::error::{ApiError, ApiQuery};

/// Most hashes one `missing` answer lists.
pub const MISSING_LIMIT: u32 = 10_000;

const CACHE_IMMUTABLE: &str = "private, max-age=31536000, immutable";

/// Query of `GET /api/v1/blobs/{sha256}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobQuery {
    /// `thumb`, `preview`, or absent (or `original`) for the uploaded bytes.
    pub size: Option<String>,
    /// Accepted (and ignored here) so `<img src>` can authenticate.
    pub token: Option<String>,
}

fn variant(size: Option<&str>) -> Result<Variant, BlobError> {
    match size {
        None | Some("original") => Ok(Variant::Original),
        Some("thumb") => Ok(Variant::Thumb),
        Some("preview") => Ok(Variant::Preview),
        Some(other) => Err(BlobError::BadSize(other.chars().take(32).collect())),
    }
}

/// `GET /api/v1/blobs/{sha256}`
pub async fn get_blob(
    State(state): State<AppState>,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    ApiQuery(query): ApiQuery<BlobQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let variant = variant(query.size.as_deref())?;
    let sha = path
        .ok()
        .and_then(|Path(raw)| Sha256Hex::parse(&raw))
        .ok_or(BlobError::BlobNotFound)?;
    let probe = sha.clone();
    let mime: Option<String> = state
        .db
        .read(move |c| {
            if !access::may_read(c, &user, &probe)? {
                return Ok(None);
            }
            c.query_row(
                "SELECT mime FROM blobs WHERE sha256 = ?1",
                [probe.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(DbError::from)
        })
        .await?;
    let mime = mime.ok_or(BlobError::BlobNotFound)?;

    let key = BlobKey::new(sha.clone(), variant);
    let content_type = if variant == Variant::Original {
        mime
    } else {
        state.blobs.ensure_rendition(&sha, variant).await?;
        "image/jpeg".to_owned()
    };
    let Some(len) = state
        .blobs
        .store()
        .len(&key)
        .await
        .map_err(BlobError::from)?
    else {
        tracing::warn!(
            blob = sha.as_str(),
            variant = variant.as_str(),
            "blob row without stored bytes"
        );
        return Err(BlobError::BlobNotFound.into());
    };
    let etag = match variant {
        Variant::Original => format!("\"{sha}\""),
        other => format!("\"{sha}.{}\"", other.as_str()),
    };

    if if_none_match(&headers, &etag) {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        common_headers(res.headers_mut(), &etag)?;
        return Ok(res);
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let outcome = if if_range_ok {
        parse_range(range_header, len)
    } else {
        RangeOutcome::Full
    };
    let (status, range) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0..len),
        RangeOutcome::Partial(r) => (StatusCode::PARTIAL_CONTENT, r),
        RangeOutcome::Unsatisfiable => {
            let mut res =
                ApiError::from(BlobError::RangeNotSatisfiable { length: len }).into_response();
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{len}")).map_err(ApiError::internal)?,
            );
            return Ok(res);
        }
    };
    let stream = state
        .blobs
        .store()
        .open_range(&key, range.clone())
        .await
        .map_err(BlobError::from)?
        .ok_or(BlobError::BlobNotFound)?;
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    let h = res.headers_mut();
    common_headers(h, &etag)?;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::try_from(content_type).map_err(ApiError::internal)?,
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::try_from(format!("bytes {}-{}/{len}", range.start, range.end - 1))
                .map_err(ApiError::internal)?,
        );
    }
    Ok(res)
}

fn common_headers(h: &mut HeaderMap, etag: &str) -> Result<(), ApiError> {
    h.insert(
        header::ETAG,
        HeaderValue::try_from(etag).map_err(ApiError::internal)?,
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_IMMUTABLE),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(())
}

/// Whether `If-None-Match` lists `etag` (or `*`). Weak comparison, as the
/// header requires.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// What a `Range` header asks of an object of `len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send everything (also for several ranges, which a
    /// server may answer in full).
    Full,
    /// One range, end exclusive.
    Partial(Range<u64>),
    /// A range wholly outside the object: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range per RFC 9110 §14.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(raw) = header else {
        return RangeOutcome::Full;
    };
    let Some((unit, spec)) = raw.trim().split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(n) if len > 0 => RangeOutcome::Partial(len.saturating_sub(n)..len),
            Some(_) => RangeOutcome::Unsatisfiable,
            None => RangeOutcome::Full,
        },
        (start, "") => match number(start) {
            Some(s) if s < len => RangeOutcome::Partial(s..len),
            Some(_) => RangeOutcome::Unsatisfiable,
            None => RangeOutcome::Full,
        },
        (start, end) => match (number(start), number(end)) {
            (Some(s), Some(e)) if s <= e => {
                if s >= len {
                    RangeOutcome::Unsatisfiable
                } else {
                    RangeOutcome::Partial(s..e.min(len - 1) + 1)
                }
            }
            _ => RangeOutcome::Full,
        },
    }
}

/// Answer of `GET /api/v1/blobs/missing`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Missing {
    /// sha256s, sorted.
    pub missing: Vec<String>,
    /// More exist than were listed; upload these and ask again.
    pub truncated: bool,
}

/// `GET /api/v1/blobs/missing`
pub async fn missing(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Missing>, ApiError> {
    let mut list = state
        .db
        .read(move |c| access::missing(c, &user, MISSING_LIMIT + 1).map_err(DbError::from))
        .await?;
    let truncated = list.len() > MISSING_LIMIT as usize;
    list.truncate(MISSING_LIMIT as usize);
    Ok(Json(Missing {
        missing: list,
        truncated,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        let cases: &[(Option<&str>, RangeOutcome)] = &[
            (None, Full),
            (Some("bytes=0-9"), Partial(0..10)),
            (Some("bytes=90-"), Partial(90..100)),
            (Some("bytes=90-500"), Partial(90..100)),
            (Some("bytes=-10"), Partial(90..100)),
            (Some("bytes=-500"), Partial(0..100)),
            (Some("bytes=99-99"), Partial(99..100)),
            (Some("Bytes = 5-6"), Partial(5..7)),
            (Some("bytes=100-"), Unsatisfiable),
            (Some("bytes=100-200"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=0-1,5-6"), Full),
            (Some("bytes=9-1"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=-"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes=+1-2"), Full),
            (Some("bytes=99999999999999999999999-"), Full),
        ];
        for (header, expected) in cases {
            assert_eq!(&parse_range(*header, 100), expected, "{header:?}");
        }
    }

    #[test]
    fn if_none_match_lists() {
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, "\"abc\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(if_none_match(&h, "\"abc\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match(&h, "\"abc\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"abcd\""));
        assert!(!if_none_match(&h, "\"abc\""));
    }

    #[test]
    fn sizes() {
        assert_eq!(variant(None).unwrap(), Variant::Original);
        assert_eq!(variant(Some("thumb")).unwrap(), Variant::Thumb);
        assert_eq!(variant(Some("preview")).unwrap(), Variant::Preview);
        assert!(matches!(variant(Some("huge")), Err(BlobError::BadSize(_))));
    }
}

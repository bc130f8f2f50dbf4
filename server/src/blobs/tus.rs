//! tus 1.0.0 resumable uploads at `/api/v1/uploads`: core protocol plus
//! the `creation`, `termination` and `expiration` extensions.
//!
//! - `OPTIONS /uploads` — discovery (no token needed: it reveals only the
//!   protocol version, extensions and `Tus-Max-Size`).
//! - `POST /uploads` — `Upload-Length` and `Upload-Metadata` (keys
//!   `sha256` — required, 64 hex digits —, `filename`/`name`,
//!   `filetype`/`type`) → `201` with `Location`.
//! - `HEAD /uploads/{id}` — `Upload-Offset`, `Upload-Length`.
//! - `PATCH /uploads/{id}` — `application/offset+octet-stream` at the
//!   current `Upload-Offset` (else `409`); when the last byte arrives the
//!   upload is verified and stored (see [`super`]).
//! - `DELETE /uploads/{id}` — termination.
//!
//! Every response carries `Tus-Resumable: 1.0.0` (OPTIONS answers too, as
//! in the specification's own example); a request with another
//! `Tus-Resumable` gets `412` and `Tus-Version`. An upload belongs to the
//! user who created it: to anybody else it does not exist (`404`), like an
//! id that is not 32 lowercase hex digits (checked before any file is
//! touched). Expired uploads answer `410` until the sweeper removes them.
//!
//! Durability: PATCH bodies stream into `<data_dir>/uploads/<id>.part`; the
//! bytes are fsynced and only then is the new offset committed to the
//! database and acknowledged. A body cut off part-way keeps what arrived,
//! so the client resumes from there. One request at a time works on an
//! upload ([`UploadLocks`]); a newcomer asks a stalled holder to let go.

use std::collections::{HashMap, HashSet};
use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedMutexGuard, watch};

use super::pipeline::{self, PipelineError};
use super::{BlobError, BlobKey, BlobService, Sha256Hex, UploadId};
use crate::AppState;
use crate::audit::{self, AuditEntry};
use crate::auth::AuthUser;
use crate::clock;
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::users::Role;

/// The protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions implemented.
pub const TUS_EXTENSIONS: &str = "creation,termination,expiration";
/// Where uploads are created; `Location`s are below it.
pub const UPLOADS_PATH: &str = "/api/v1/uploads";
/// How long a request waits for another one on the same upload to let go.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long a PATCH asked to let go keeps reading bytes still arriving.
const RELEASE_GRACE: Duration = Duration::from_secs(2);
/// Largest `Upload-Metadata` header accepted.
const MAX_METADATA_BYTES: usize = 4096;

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static TUS_VERSION_H: HeaderName = HeaderName::from_static("tus-version");
static TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
static TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");

/// Requires `Tus-Resumable: 1.0.0` (every tus request but OPTIONS).
#[derive(Debug, Clone, Copy)]
pub struct TusResumable;

impl<S: Send + Sync> FromRequestParts<S> for TusResumable {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        check_tus_resumable(&parts.headers)?;
        Ok(TusResumable)
    }
}

// ---------------------------------------------------------------------------
// Request headers: pure parsing, no I/O (the handlers below call these; the
// fuzz target `tus_headers` drives them with arbitrary headers)
// ---------------------------------------------------------------------------

/// Checks `Tus-Resumable: 1.0.0`, which every tus request but OPTIONS carries.
pub fn check_tus_resumable(headers: &HeaderMap) -> Result<(), BlobError> {
    match headers.get(&TUS_RESUMABLE) {
        Some(v) if v.as_bytes() == TUS_VERSION.as_bytes() => Ok(()),
        Some(v) => Err(BlobError::TusVersion(
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )),
        None => Err(BlobError::TusVersion("(missing)".into())),
    }
}

/// What the headers of a creation request (`POST /uploads`) declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationHeaders {
    /// `Upload-Length`: between 1 and the server's `max_upload_bytes`.
    pub length: u64,
    /// `Upload-Metadata`.
    pub metadata: Metadata,
}

/// Parses and checks the headers of a creation request, in the order the
/// client is told about problems: `Upload-Defer-Length` (refused),
/// `Upload-Length` (required, 1 to `max_upload_bytes`), `Upload-Metadata`
/// (see [`parse_metadata`]), then a declared HEIC type (refused now rather
/// than after the whole file arrived; the bytes are sniffed again at the end
/// whatever was declared).
pub fn parse_creation_headers(
    headers: &HeaderMap,
    max_upload_bytes: u64,
) -> Result<CreationHeaders, BlobError> {
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(BlobError::DeferLength);
    }
    let length =
        u64_header(headers, "upload-length")?.ok_or(BlobError::MissingHeader("Upload-Length"))?;
    if length == 0 {
        return Err(BlobError::EmptyUpload);
    }
    if length > max_upload_bytes {
        return Err(BlobError::UploadTooLarge {
            length,
            max: max_upload_bytes,
        });
    }
    let metadata = parse_metadata(headers.get(&UPLOAD_METADATA))?;
    if metadata
        .mime
        .as_deref()
        .is_some_and(|m| m.starts_with("image/hei"))
    {
        return Err(BlobError::Pipeline(PipelineError::Heic));
    }
    Ok(CreationHeaders { length, metadata })
}

/// What the headers of a `PATCH` declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchHeaders {
    /// `Upload-Offset`: where the body's bytes go.
    pub offset: u64,
    /// `Content-Length`, when sent.
    pub content_length: Option<u64>,
}

/// Parses and checks the headers of a `PATCH`: `Content-Type` must be
/// `application/offset+octet-stream` (parameters and case ignored), then
/// `Upload-Offset` (required) and `Content-Length` (optional), both strict
/// non-negative decimal integers.
pub fn parse_patch_headers(headers: &HeaderMap) -> Result<PatchHeaders, BlobError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref() != Some("application/offset+octet-stream") {
        return Err(BlobError::ContentType);
    }
    let offset =
        u64_header(headers, "upload-offset")?.ok_or(BlobError::MissingHeader("Upload-Offset"))?;
    let content_length = u64_header(headers, "content-length")?;
    Ok(PatchHeaders {
        offset,
        content_length,
    })
}

/// Adds `Tus-Resumable` to every response of the upload routes, and
/// `Tus-Version` to a 412 (as the protocol requires).
pub async fn tus_response_headers(mut res: Response) -> Response {
    let headers = res.headers_mut();
    headers.insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    if res.status() == StatusCode::PRECONDITION_FAILED {
        res.headers_mut()
            .insert(TUS_VERSION_H.clone(), HeaderValue::from_static(TUS_VERSION));
    }
    res
}

/// `Upload-Expires` wants an HTTP date (`Wed, 25 Jun 2014 16:00:00 GMT`).
pub fn http_date(unix: i64) -> HeaderValue {
    let text = jiff::Timestamp::from_second(unix)
        .ok()
        .and_then(|ts| {
            jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&ts)
                .ok()
        })
        .unwrap_or_default();
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `OPTIONS /api/v1/uploads[/{id}]`
pub async fn options(State(state): State<AppState>) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(TUS_VERSION_H.clone(), HeaderValue::from_static(TUS_VERSION));
    h.insert(
        TUS_EXTENSION.clone(),
        HeaderValue::from_static(TUS_EXTENSIONS),
    );
    h.insert(
        TUS_MAX_SIZE.clone(),
        HeaderValue::from(state.blobs.settings().max_upload_bytes),
    );
    res
}

/// What a client declared about an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub sha256: Sha256Hex,
    pub filename: Option<String>,
    pub mime: Option<String>,
    /// The header as sent (validated ASCII), which HEAD must echo.
    pub raw: String,
}

/// Parses `Upload-Metadata`: `key base64value` pairs separated by commas.
pub fn parse_metadata(raw: Option<&HeaderValue>) -> Result<Metadata, BlobError> {
    let bad = |m: &str| BlobError::Metadata(m.to_owned());
    let raw = raw.ok_or_else(|| {
        bad("it is required and must carry `sha256` (the file's sha256 as 64 hex digits, base64-encoded as tus requires)")
    })?;
    if raw.len() > MAX_METADATA_BYTES {
        return Err(bad("it is longer than 4096 bytes"));
    }
    let text = raw
        .to_str()
        .map_err(|_| bad("it must be ASCII (values are base64)"))?;
    let mut seen = HashSet::new();
    let (mut sha256, mut filename, mut mime) = (None, None, None);
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("a key is empty or not printable ASCII"));
        }
        if !seen.insert(key) {
            return Err(BlobError::Metadata(format!("key `{key}` appears twice")));
        }
        let decoded = STANDARD
            .decode(value)
            .map_err(|_| BlobError::Metadata(format!("the value of `{key}` is not base64")))?;
        let value = String::from_utf8(decoded)
            .map_err(|_| BlobError::Metadata(format!("the value of `{key}` is not UTF-8 text")))?;
        match key {
            "sha256" => {
                sha256 =
                    Some(Sha256Hex::parse(value.trim()).ok_or_else(|| {
                        bad("`sha256` must be the file's sha256 as 64 hex digits")
                    })?);
            }
            "filename" | "name" => filename = Some(clean_text(&value, 255)),
            "filetype" | "type" => mime = Some(clean_text(&value, 127).to_ascii_lowercase()),
            // Other keys (tus clients add their own) are ignored.
            _ => {}
        }
    }
    let sha256 = sha256.ok_or_else(|| {
        bad("`sha256` is required: the file's sha256 as 64 hex digits, base64-encoded")
    })?;
    Ok(Metadata {
        sha256,
        filename: filename.filter(|f| !f.is_empty()),
        mime: mime.filter(|m| !m.is_empty()),
        raw: text.to_owned(),
    })
}

/// Keeps a client-supplied label printable and bounded; it is stored, never
/// used as a path.
fn clean_text(s: &str, max_chars: usize) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// A header holding a non-negative decimal integer (`Upload-Length`,
/// `Upload-Offset`, `Content-Length`): `None` when absent.
pub fn u64_header(headers: &HeaderMap, name: &'static str) -> Result<Option<u64>, BlobError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let text = v.to_str().map_err(|_| BlobError::InvalidHeader {
        name,
        reason: "not ASCII".into(),
    })?;
    // A non-negative decimal integer, nothing else (no sign, no spaces).
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BlobError::InvalidHeader {
            name,
            reason: format!("`{text}` is not a non-negative integer"),
        });
    }
    text.parse()
        .map(Some)
        .map_err(|_| BlobError::InvalidHeader {
            name,
            reason: format!("`{text}` is too large"),
        })
}

fn upload_id(path: Result<Path<String>, PathRejection>) -> Result<UploadId, BlobError> {
    path.ok()
        .and_then(|Path(raw)| UploadId::parse(&raw))
        .ok_or(BlobError::UploadNotFound)
}

/// One upload as the database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: UploadId,
    pub user_id: String,
    pub length: u64,
    pub offset: u64,
    pub sha256: Sha256Hex,
    pub filename: Option<String>,
    pub mime: Option<String>,
    /// `Upload-Metadata` as the client sent it.
    pub metadata: Option<String>,
    pub expires_at: i64,
    pub completed: bool,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The upload `id` if it belongs to `user_id`.
pub fn find_upload(
    conn: &Connection,
    id: &UploadId,
    user_id: &str,
) -> Result<Option<UploadRow>, BlobError> {
    let row = conn
        .query_row(
            "SELECT length, upload_offset, sha256, filename, mime, expires_at,
                    completed_at IS NOT NULL, metadata
             FROM uploads WHERE id = ?1 AND user_id = ?2",
            params![id.as_str(), user_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            },
        )
        .optional()?;
    let Some((length, offset, sha, filename, mime, expires_at, completed, metadata)) = row else {
        return Ok(None);
    };
    let sha256 = Sha256Hex::parse(&sha)
        .ok_or_else(|| BlobError::Task(format!("upload {} has a malformed sha256", id.as_str())))?;
    Ok(Some(UploadRow {
        id: id.clone(),
        user_id: user_id.to_owned(),
        length: u64::try_from(length).unwrap_or(0),
        offset: u64::try_from(offset).unwrap_or(0),
        sha256,
        filename,
        mime,
        metadata,
        expires_at,
        completed,
    }))
}

/// Refuses an expired upload.
fn check_live(row: &UploadRow, now: i64) -> Result<(), BlobError> {
    if row.expires_at <= now {
        Err(BlobError::UploadExpired)
    } else {
        Ok(())
    }
}

/// `POST /api/v1/uploads`
pub async fn create(
    State(state): State<AppState>,
    _tus: TusResumable,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if user.role == Role::Leader {
        return Err(BlobError::ReadOnly.into());
    }
    let CreationHeaders {
        length,
        metadata: meta,
    } = parse_creation_headers(&headers, state.blobs.settings().max_upload_bytes)?;
    let id = UploadId::generate();
    let now = clock::now().as_second();
    let expires_at = now.saturating_add(to_i64(state.blobs.settings().upload_expiry_secs));
    let row_id = id.clone();
    state
        .db
        .write(move |tx| {
            tx.execute(
                "INSERT INTO uploads (id, user_id, length, upload_offset, sha256, filename, mime,
                                      metadata, created_at, expires_at)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row_id.as_str(),
                    user.user_id,
                    to_i64(length),
                    meta.sha256.as_str(),
                    meta.filename,
                    meta.mime,
                    meta.raw,
                    now,
                    expires_at
                ],
            )
            .map_err(DbError::from)
        })
        .await?;
    let mut res = StatusCode::CREATED.into_response();
    let h = res.headers_mut();
    let location = format!("{UPLOADS_PATH}/{}", id.as_str());
    h.insert(
        header::LOCATION,
        HeaderValue::try_from(location).map_err(ApiError::internal)?,
    );
    h.insert(UPLOAD_EXPIRES.clone(), http_date(expires_at));
    Ok(res)
}

/// `HEAD /api/v1/uploads/{id}`
pub async fn head(
    State(state): State<AppState>,
    _tus: TusResumable,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = upload_id(path)?;
    let blobs = &state.blobs;
    // Wait for a PATCH in flight to record what it received.
    let _guard = blobs.inner.locks.acquire(&id).await?;
    let mut row = load(&state.db, &id, &user.user_id).await?;
    check_live(&row, clock::now().as_second())?;
    if row.offset == row.length && !row.completed {
        // Every byte arrived but the server stopped before storing the
        // blob: finish now, or a client that sees a full offset would
        // consider the upload done while nothing was stored.
        blobs.finalize(&state.db, &row).await?;
        row.completed = true;
    }
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(row.offset));
    h.insert(UPLOAD_LENGTH.clone(), HeaderValue::from(row.length));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(meta) = row
        .metadata
        .as_deref()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        h.insert(UPLOAD_METADATA.clone(), meta);
    }
    if !row.completed {
        h.insert(UPLOAD_EXPIRES.clone(), http_date(row.expires_at));
    }
    Ok(res)
}

async fn load(db: &Db, id: &UploadId, user_id: &str) -> Result<UploadRow, BlobError> {
    let (id, user_id) = (id.clone(), user_id.to_owned());
    db.read(move |c| find_upload(c, &id, &user_id))
        .await?
        .ok_or(BlobError::UploadNotFound)
}

/// `PATCH /api/v1/uploads/{id}`
pub async fn patch(
    State(state): State<AppState>,
    _tus: TusResumable,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = upload_id(path)?;
    let PatchHeaders {
        offset,
        content_length,
    } = parse_patch_headers(&headers)?;
    // The work runs in its own task: if the client disconnects, axum drops
    // this handler, but what already arrived must still be fsynced and
    // recorded so that the client can resume from it.
    let blobs = state.blobs.clone();
    let db = state.db.clone();
    let task = tokio::spawn(async move {
        blobs
            .receive(&db, &user.user_id, &id, offset, content_length, body)
            .await
    });
    let outcome = task
        .await
        .map_err(|e| ApiError::internal(format!("upload task failed: {e}")))??;
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(outcome.offset));
    if let Some(expires_at) = outcome.expires_at {
        h.insert(UPLOAD_EXPIRES.clone(), http_date(expires_at));
    }
    Ok(res)
}

/// `DELETE /api/v1/uploads/{id}`
pub async fn terminate(
    State(state): State<AppState>,
    _tus: TusResumable,
    user: AuthUser,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = upload_id(path)?;
    let _guard = state.blobs.inner.locks.acquire(&id).await?;
    let row = load(&state.db, &id, &user.user_id).await?;
    check_live(&row, clock::now().as_second())?;
    // A finished upload's blob stays: it is content-addressed and may be
    // referenced already. Only the upload goes.
    state.blobs.discard(&state.db, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What a PATCH achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchOutcome {
    /// The new offset.
    pub offset: u64,
    /// When the unfinished upload now expires (`None` once complete).
    pub expires_at: Option<i64>,
}

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired uploads deleted (row and file).
    pub removed: usize,
    /// Files in the upload folder that no upload owned.
    pub orphans: usize,
}

impl BlobService {
    /// `<uploads>/<id>.part`
    pub fn part_path(&self, id: &UploadId) -> PathBuf {
        self.inner.uploads_dir.join(format!("{}.part", id.as_str()))
    }

    /// Appends a PATCH body to upload `id` of `user_id` at `offset`.
    pub async fn receive(
        &self,
        db: &Db,
        user_id: &str,
        id: &UploadId,
        offset: u64,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<PatchOutcome, BlobError> {
        let mut guard = self.inner.locks.acquire(id).await?;
        let now = clock::now().as_second();
        let row = load(db, id, user_id).await?;
        check_live(&row, now)?;
        if row.completed {
            return if offset == row.length && content_length.unwrap_or(0) == 0 {
                Ok(PatchOutcome {
                    offset: row.length,
                    expires_at: None,
                })
            } else {
                Err(BlobError::OffsetMismatch {
                    expected: row.length,
                    got: offset,
                })
            };
        }
        if offset != row.offset {
            return Err(BlobError::OffsetMismatch {
                expected: row.offset,
                got: offset,
            });
        }
        let remaining = row.length - row.offset;
        if let Some(len) = content_length
            && len > remaining
        {
            return Err(BlobError::BodyTooLong { remaining });
        }
        if remaining == 0 {
            // All bytes were here already (the server stopped before storing).
            self.finalize(db, &row).await?;
            return Ok(PatchOutcome {
                offset: row.length,
                expires_at: None,
            });
        }

        let path = self.part_path(id);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await?;
        let on_disk = file.metadata().await?.len();
        if on_disk < row.offset {
            // Recorded bytes are gone (the file was lost): say where the
            // client must really resume instead of inventing zeros.
            let (rid, held) = (id.clone(), to_i64(on_disk));
            db.write(move |tx| {
                tx.execute(
                    "UPDATE uploads SET upload_offset = ?2 WHERE id = ?1",
                    params![rid.as_str(), held],
                )
                .map_err(DbError::from)
            })
            .await?;
            return Err(BlobError::OffsetMismatch {
                expected: on_disk,
                got: offset,
            });
        }
        // Drop a tail written by a request that never got to record it.
        file.set_len(row.offset).await?;
        file.seek(SeekFrom::Start(row.offset)).await?;
        let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);

        let idle = Duration::from_secs(self.inner.settings.patch_idle_timeout_secs);
        let mut stream = body.into_data_stream();
        let mut written = 0u64;
        let mut cut = false;
        // Set when another request asks for this upload.
        let mut release_by: Option<tokio::time::Instant> = None;
        loop {
            let wait_until = match release_by {
                Some(deadline) => deadline.min(tokio::time::Instant::now() + idle),
                None => tokio::time::Instant::now() + idle,
            };
            let next = tokio::select! {
                biased;
                () = guard.release_requested(), if release_by.is_none() => None,
                next = tokio::time::timeout_at(wait_until, stream.next()) => Some(next),
            };
            let Some(next) = next else {
                // Its client is most likely back on a new connection and
                // this one dead: keep reading what already arrived (a dead
                // connection ends at once), for a short while at most.
                release_by = Some(tokio::time::Instant::now() + RELEASE_GRACE);
                continue;
            };
            match next {
                Ok(Some(Ok(chunk))) => {
                    if written + chunk.len() as u64 > remaining {
                        // More than Upload-Length: keep nothing of this body.
                        drop(out);
                        let file = tokio::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .await?;
                        file.set_len(row.offset).await?;
                        return Err(BlobError::BodyTooLong { remaining });
                    }
                    out.write_all(&chunk).await?;
                    written += chunk.len() as u64;
                }
                Ok(None) => break,
                // The connection broke, or went silent for too long.
                Ok(Some(Err(_))) | Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        out.flush().await?;
        out.get_mut().sync_data().await?;
        drop(out);

        let new_offset = row.offset + written;
        let expires_at = now.saturating_add(to_i64(self.inner.settings.upload_expiry_secs));
        if written > 0 {
            let rid = id.clone();
            db.write(move |tx| {
                tx.execute(
                    "UPDATE uploads SET upload_offset = ?2, expires_at = ?3 WHERE id = ?1",
                    params![rid.as_str(), to_i64(new_offset), expires_at],
                )
                .map_err(DbError::from)
            })
            .await?;
        }
        if new_offset == row.length {
            let mut done = row.clone();
            done.offset = new_offset;
            self.finalize(db, &done).await?;
            return Ok(PatchOutcome {
                offset: new_offset,
                expires_at: None,
            });
        }
        let expected = content_length.unwrap_or(remaining);
        if cut || content_length.is_some_and(|len| written < len) {
            tracing::debug!(
                upload = id.as_str(),
                written,
                "PATCH body cut off; bytes kept"
            );
            return Err(BlobError::Interrupted {
                received: written,
                expected,
            });
        }
        Ok(PatchOutcome {
            offset: new_offset,
            // An empty body changed nothing, not even the expiry.
            expires_at: Some(if written > 0 {
                expires_at
            } else {
                row.expires_at
            }),
        })
    }

    /// Verifies a complete upload and moves it into the store. A refused
    /// file is deleted with its upload; a server-side failure leaves both
    /// so the next HEAD or PATCH retries.
    pub async fn finalize(&self, db: &Db, row: &UploadRow) -> Result<(), BlobError> {
        let result = self.verify_and_store(db, row).await;
        if let Err(BlobError::Pipeline(refusal)) = &result {
            tracing::info!(upload = row.id.as_str(), reason = %refusal, "upload refused");
            self.discard(db, &row.id).await?;
        }
        result
    }

    async fn verify_and_store(&self, db: &Db, row: &UploadRow) -> Result<(), BlobError> {
        let path = self.part_path(&row.id);
        let permit = self.decode_permit().await?;
        let limits = self.limits();
        let (expected, length, file) = (row.sha256.clone(), row.length, path.clone());
        let (inspected, img) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&file)?;
            if bytes.len() as u64 != length {
                return Err(BlobError::Task(format!(
                    "upload file holds {} bytes, expected {length}",
                    bytes.len()
                )));
            }
            let inspected = pipeline::inspect(&bytes, &expected, &limits)?;
            let img = pipeline::decode(&bytes, inspected.kind, &limits)?;
            Ok((inspected, img))
        })
        .await
        .map_err(|e| BlobError::Task(e.to_string()))??;

        let sha = inspected.sha256.clone();
        let probe = sha.clone();
        let held: bool = db
            .read(move |c| {
                c.query_row(
                    "SELECT 1 FROM blobs WHERE sha256 = ?1",
                    [probe.as_str()],
                    |_| Ok(true),
                )
                .optional()
                .map(|o| o.is_some())
                .map_err(DbError::from)
            })
            .await?;
        if held {
            // Deduplicated: the same bytes are stored already.
            tokio::fs::remove_file(&path).await?;
        } else {
            self.store()
                .put_file(&BlobKey::original(sha.clone()), &path)
                .await?;
        }
        let now = clock::now();
        let at = clock::rfc3339(now);
        let (upload_id, user_id) = (row.id.clone(), row.user_id.clone());
        let facts = inspected.clone();
        db.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO blobs (sha256, mime, bytes, width, height, taken_at,
                                             gps_lat, gps_lon, uploaded_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    facts.sha256.as_str(),
                    facts.kind.mime(),
                    to_i64(facts.bytes),
                    facts.width,
                    facts.height,
                    facts.exif.taken_at,
                    facts.exif.gps_lat,
                    facts.exif.gps_lon,
                    user_id,
                    at
                ],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO blob_uploaders (sha256, user_id, uploaded_at)
                 VALUES (?1, ?2, ?3)",
                params![facts.sha256.as_str(), user_id, at],
            )?;
            tx.execute(
                "UPDATE uploads SET upload_offset = length, completed_at = ?2 WHERE id = ?1",
                params![upload_id.as_str(), now.as_second()],
            )?;
            audit::append(
                tx,
                &at,
                &AuditEntry {
                    actor: Some(&user_id),
                    action: "blob.upload",
                    subject: facts.sha256.as_str(),
                    detail: json!({
                        "upload": upload_id.as_str(),
                        "mime": facts.kind.mime(),
                        "bytes": facts.bytes,
                        "deduplicated": held,
                    }),
                },
            )?;
            Ok::<_, DbError>(())
        })
        .await?;

        if held {
            // Renditions exist or are made on demand; free the slot now.
            drop((img, permit));
        } else {
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(e) = service.store_renditions(&sha, img, permit).await {
                    tracing::warn!(blob = sha.as_str(), error = %e, "making renditions failed");
                }
            });
        }
        Ok(())
    }

    /// Deletes an upload's file and row.
    pub async fn discard(&self, db: &Db, id: &UploadId) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.part_path(id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let rid = id.clone();
        db.write(move |tx| {
            tx.execute("DELETE FROM uploads WHERE id = ?1", [rid.as_str()])
                .map_err(DbError::from)
        })
        .await?;
        Ok(())
    }

    /// Deletes uploads that expired at `now` (unix seconds) and files in the
    /// upload folder that belong to no upload. Uploads in use are left for
    /// the next sweep.
    pub async fn sweep(&self, db: &Db, now: i64) -> Result<SweepReport, BlobError> {
        let mut report = SweepReport::default();
        let expired: Vec<String> = db
            .read(move |c| {
                let mut st = c.prepare("SELECT id FROM uploads WHERE expires_at <= ?1")?;
                let ids = st.query_map([now], |r| r.get(0))?;
                ids.collect::<Result<Vec<String>, _>>()
                    .map_err(DbError::from)
            })
            .await?;
        for raw in expired {
            let Some(id) = UploadId::parse(&raw) else {
                continue;
            };
            let Some(_guard) = self.inner.locks.try_acquire(&id) else {
                continue;
            };
            self.discard(db, &id).await?;
            report.removed += 1;
        }

        let dir = self.inner.uploads_dir.clone();
        let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                if let Some(name) = entry?.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        })
        .await
        .map_err(|e| BlobError::Task(e.to_string()))??;
        for name in names {
            let Some(id) = name.strip_suffix(".part").and_then(UploadId::parse) else {
                continue;
            };
            // Holding the lock, no PATCH can be creating this file, and a
            // row is never re-created under an old id.
            let Some(_guard) = self.inner.locks.try_acquire(&id) else {
                continue;
            };
            let probe = id.clone();
            let owned: bool = db
                .read(move |c| {
                    c.query_row(
                        "SELECT 1 FROM uploads WHERE id = ?1",
                        [probe.as_str()],
                        |_| Ok(true),
                    )
                    .optional()
                    .map(|o| o.is_some())
                    .map_err(DbError::from)
                })
                .await?;
            if !owned {
                match tokio::fs::remove_file(self.part_path(&id)).await {
                    Ok(()) => report.orphans += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(report)
    }
}

/// One request at a time per upload.
///
/// A PATCH holds its upload's lock while it streams. A HEAD, PATCH or
/// DELETE that arrives meanwhile is almost always the same client after a
/// broken connection whose old request the server has not finished yet, so
/// the newcomer asks the holder to let go: the holder keeps what already
/// arrived (reading on for at most [`RELEASE_GRACE`]), records it and
/// unlocks. The newcomer waits up to [`LOCK_WAIT`] before answering 423.
#[derive(Debug, Default)]
pub struct UploadLocks {
    slots: Arc<Mutex<HashMap<UploadId, Arc<Slot>>>>,
}

#[derive(Debug)]
struct Slot {
    mutex: Arc<tokio::sync::Mutex<()>>,
    /// Bumped by whoever wants the holder to let go.
    release: watch::Sender<u64>,
}

/// The lock of one upload; released on drop.
#[derive(Debug)]
pub struct UploadGuard {
    id: UploadId,
    slot: Arc<Slot>,
    slots: Arc<Mutex<HashMap<UploadId, Arc<Slot>>>>,
    held: Option<OwnedMutexGuard<()>>,
    release: watch::Receiver<u64>,
}

impl UploadLocks {
    fn slot(&self, id: &UploadId) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(slots.entry(id.clone()).or_insert_with(|| {
            Arc::new(Slot {
                mutex: Arc::new(tokio::sync::Mutex::new(())),
                release: watch::channel(0).0,
            })
        }))
    }

    fn guard(&self, id: &UploadId, slot: Arc<Slot>, held: OwnedMutexGuard<()>) -> UploadGuard {
        // Subscribing marks every earlier request as seen: only requests
        // made while we hold the lock ask us to let go.
        let release = slot.release.subscribe();
        UploadGuard {
            id: id.clone(),
            slot,
            slots: Arc::clone(&self.slots),
            held: Some(held),
            release,
        }
    }

    /// Takes the lock of `id`, asking a current holder to let go.
    pub async fn acquire(&self, id: &UploadId) -> Result<UploadGuard, BlobError> {
        let slot = self.slot(id);
        if let Ok(held) = Arc::clone(&slot.mutex).try_lock_owned() {
            return Ok(self.guard(id, slot, held));
        }
        slot.release.send_modify(|n| *n = n.wrapping_add(1));
        match tokio::time::timeout(LOCK_WAIT, Arc::clone(&slot.mutex).lock_owned()).await {
            Ok(held) => Ok(self.guard(id, slot, held)),
            Err(_) => {
                forget_unused(&self.slots, id, &slot);
                Err(BlobError::Locked)
            }
        }
    }

    /// Takes the lock of `id` if nobody holds it.
    pub fn try_acquire(&self, id: &UploadId) -> Option<UploadGuard> {
        let slot = self.slot(id);
        match Arc::clone(&slot.mutex).try_lock_owned() {
            Ok(held) => Some(self.guard(id, slot, held)),
            Err(_) => {
                forget_unused(&self.slots, id, &slot);
                None
            }
        }
    }

    /// Uploads with a lock entry (for tests: entries must not leak).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No lock entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the map entry of `id` if the caller's `slot` is its last user.
fn forget_unused(slots: &Mutex<HashMap<UploadId, Arc<Slot>>>, id: &UploadId, slot: &Arc<Slot>) {
    let mut map = slots.lock().unwrap_or_else(|p| p.into_inner());
    // The map's reference and the caller's: nobody else holds or waits.
    // (Clones are only made under this mutex, so the count is stable.)
    if Arc::strong_count(slot) <= 2 && map.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
        map.remove(id);
    }
}

impl UploadGuard {
    /// Completes when another request asks for this upload.
    pub async fn release_requested(&mut self) {
        if self.release.changed().await.is_err() {
            // The sender lives as long as the slot we hold: cannot happen.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        // Unlock first, then forget the entry if nobody else wants it.
        drop(self.held.take());
        forget_unused(&self.slots, &self.id, &self.slot);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(s: &str) -> Result<Metadata, BlobError> {
        parse_metadata(Some(&HeaderValue::from_str(s).unwrap()))
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn metadata_is_parsed_as_tus_says() {
        let sha = Sha256Hex::of(b"x");
        let m = meta(&format!(
            "filename {},sha256 {}, filetype {},empty,other {}",
            b64("ảnh hiện trường.jpg"),
            b64(sha.as_str()),
            b64("image/JPEG"),
            b64("ignored")
        ))
        .unwrap();
        assert_eq!(m.sha256, sha);
        assert_eq!(m.filename.as_deref(), Some("ảnh hiện trường.jpg"));
        assert_eq!(m.mime.as_deref(), Some("image/jpeg"));
        assert!(m.raw.starts_with("filename "));
    }

    #[test]
    fn bad_metadata_is_refused_with_a_reason() {
        let sha = b64(Sha256Hex::of(b"x").as_str());
        let cases = [
            (None, "required"),
            (
                Some(format!("filename {}", b64("a.jpg"))),
                "`sha256` is required",
            ),
            (Some(format!("sha256 {}", b64("abc"))), "64 hex digits"),
            (Some(format!("sha256 {sha},sha256 {sha}")), "appears twice"),
            (Some("sha256 !!!notbase64".to_owned()), "not base64"),
            (
                Some(format!(
                    "sha256 {sha},name {}",
                    STANDARD.encode([0xff, 0xfe])
                )),
                "UTF-8",
            ),
        ];
        for (raw, expected) in cases {
            let header = raw.map(|r| HeaderValue::from_str(&r).unwrap());
            let err = parse_metadata(header.as_ref()).unwrap_err();
            assert!(matches!(err, BlobError::Metadata(_)), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected}"
            );
        }
    }

    #[test]
    fn labels_are_cleaned() {
        assert_eq!(clean_text("  a\u{0}b\nc.jpg ", 255), "abc.jpg");
        assert_eq!(clean_text(&"x".repeat(300), 255).len(), 255);
    }

    #[test]
    fn numeric_headers_are_strict() {
        let mut h = HeaderMap::new();
        assert_eq!(u64_header(&h, "upload-length").unwrap(), None);
        for bad in ["-1", "+5", " 5", "5 ", "1e3", "", "99999999999999999999999"] {
            h.insert("upload-length", HeaderValue::from_str(bad).unwrap());
            assert!(u64_header(&h, "upload-length").is_err(), "{bad:?}");
        }
        h.insert("upload-length", HeaderValue::from_static("1024"));
        assert_eq!(u64_header(&h, "upload-length").unwrap(), Some(1024));
    }

    #[test]
    fn upload_expires_is_an_http_date() {
        assert_eq!(http_date(1_403_712_000), "Wed, 25 Jun 2014 16:00:00 GMT");
    }

    #[tokio::test]
    async fn a_newcomer_asks_the_holder_to_let_go() {
        let locks = Arc::new(UploadLocks::default());
        let id = UploadId::generate();
        let mut first = locks.acquire(&id).await.unwrap();
        assert!(locks.try_acquire(&id).is_none());
        let waiter = {
            let locks = Arc::clone(&locks);
            let id = id.clone();
            tokio::spawn(async move { locks.acquire(&id).await.map(|_| ()) })
        };
        // The holder hears the request and lets go.
        tokio::time::timeout(Duration::from_secs(5), first.release_requested())
            .await
            .unwrap();
        drop(first);
        waiter.await.unwrap().unwrap();
        assert!(locks.is_empty(), "lock entries are forgotten when unused");
        let again = locks.try_acquire(&id).unwrap();
        drop(again);
        assert!(locks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_that_does_not_let_go_makes_others_wait_then_fail() {
        let locks = UploadLocks::default();
        let id = UploadId::generate();
        let _stuck = locks.acquire(&id).await.unwrap();
        let err = locks.acquire(&id).await.unwrap_err();
        assert!(matches!(err, BlobError::Locked));
        assert_eq!(locks.len(), 1);
    }
}

//! What can go wrong with uploads and blobs, and how each case reaches the
//! client: every variant becomes an [`ApiError`] (the single place where
//! errors turn into HTTP responses), with a stable `code`.

use axum::http::StatusCode;

use super::pipeline::PipelineError;
use super::store::StoreError;
use crate::db::DbError;
use crate::error::ApiError;

/// The one answer for "no such blob" and "not yours to see": the same
/// status and body, so nobody learns whether a hash is stored.
pub const NO_SUCH_BLOB: &str = "no such blob";

/// Why an upload or blob request failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(
        "this server speaks tus 1.0.0 only (got Tus-Resumable: {0}); send Tus-Resumable: 1.0.0"
    )]
    TusVersion(String),
    #[error("the {0} header is required")]
    MissingHeader(&'static str),
    #[error("the {name} header is invalid: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error(
        "uploads of unknown length (Upload-Defer-Length) are not supported; send Upload-Length"
    )]
    DeferLength,
    #[error("a zero-byte file is not a photo: choose the photo again and upload it")]
    EmptyUpload,
    #[error("the upload is {length} bytes; at most {max} bytes are accepted (Tus-Max-Size)")]
    UploadTooLarge { length: u64, max: u64 },
    #[error("Upload-Metadata is invalid: {0}")]
    Metadata(String),
    #[error("PATCH bodies must be sent with Content-Type: application/offset+octet-stream")]
    ContentType,
    #[error("no such upload; start a new one")]
    UploadNotFound,
    #[error("this upload expired and was discarded; start a new one")]
    UploadExpired,
    #[error(
        "Upload-Offset is {got} but the server holds {expected} bytes of this upload; ask with HEAD and resume from there"
    )]
    OffsetMismatch { expected: u64, got: u64 },
    #[error(
        "the body is longer than the {remaining} bytes this upload still needs; nothing was stored"
    )]
    BodyTooLong { remaining: u64 },
    #[error(
        "the body ended after {received} of {expected} bytes; they were kept: ask with HEAD and resume"
    )]
    Interrupted { received: u64, expected: u64 },
    #[error("another request is still writing this upload; retry in a moment")]
    Locked,
    #[error("read-only accounts cannot upload")]
    ReadOnly,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{NO_SUCH_BLOB}")]
    BlobNotFound,
    #[error("size must be thumb or preview (or absent for the original), not `{0}`")]
    BadSize(String),
    #[error("the requested range is outside the {length} bytes of this blob")]
    RangeNotSatisfiable { length: u64 },
    #[error("blob store: {0}")]
    Store(#[from] StoreError),
    #[error("upload file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for BlobError {
    fn from(e: rusqlite::Error) -> Self {
        BlobError::Db(DbError::Sqlite(e))
    }
}

fn refused(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::Refused {
        status,
        code,
        message,
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        let message = e.to_string();
        match e {
            BlobError::TusVersion(_) => {
                refused(StatusCode::PRECONDITION_FAILED, "tus_version", message)
            }
            BlobError::MissingHeader(_)
            | BlobError::InvalidHeader { .. }
            | BlobError::DeferLength
            | BlobError::BadSize(_) => ApiError::BadRequest(message),
            BlobError::EmptyUpload => refused(StatusCode::BAD_REQUEST, "empty_upload", message),
            BlobError::Metadata(_) => refused(StatusCode::BAD_REQUEST, "invalid_metadata", message),
            BlobError::UploadTooLarge { .. } | BlobError::BodyTooLong { .. } => {
                refused(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
            }
            BlobError::ContentType => refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
            ),
            BlobError::UploadNotFound | BlobError::BlobNotFound => ApiError::NotFound(message),
            BlobError::UploadExpired => refused(StatusCode::GONE, "upload_expired", message),
            BlobError::OffsetMismatch { .. } => {
                refused(StatusCode::CONFLICT, "offset_mismatch", message)
            }
            BlobError::Interrupted { .. } => {
                refused(StatusCode::BAD_REQUEST, "upload_interrupted", message)
            }
            BlobError::Locked => refused(StatusCode::LOCKED, "upload_locked", message),
            BlobError::ReadOnly => ApiError::Forbidden,
            BlobError::Pipeline(p) => pipeline_error(p, message),
            BlobError::RangeNotSatisfiable { .. } => refused(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                message,
            ),
            BlobError::Db(db) => db.into(),
            BlobError::Store(_) | BlobError::Io(_) | BlobError::Task(_) => {
                ApiError::Internal(message)
            }
        }
    }
}

fn pipeline_error(e: PipelineError, message: String) -> ApiError {
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    match e {
        PipelineError::HashMismatch { .. } => refused(unprocessable, "sha256_mismatch", message),
        PipelineError::Heic => refused(unsupported, "heic_not_supported", message),
        PipelineError::UnsupportedType(_) => {
            refused(unsupported, "unsupported_image_type", message)
        }
        PipelineError::NotAnImage => refused(unsupported, "not_an_image", message),
        PipelineError::TooManyPixels { .. } | PipelineError::TooMuchMemory { .. } => {
            refused(unprocessable, "image_too_large", message)
        }
        PipelineError::Undecodable(_) => refused(unprocessable, "image_undecodable", message),
        PipelineError::Encode(_) => ApiError::Internal(message),
    }
}

//! The one error type of the tablet library.
//!
//! Every layer's failure (device store, model, answer parsing, photos, HTTP,
//! sync) is flattened here into a handful of cases an app can act on: log in
//! again, fix the input, retry later, or report. The message always says
//! what to do next. The FFI exposes it as a flat error enum (Kotlin and
//! Swift exceptions, a Python exception class per case).
// UniFFI's derive implements its (unsafe) converter traits.
#![allow(unsafe_code)]

use sync_core::model::ModelError;
use sync_core::storage::StorageError;

/// What went wrong. Unsynced local work is never dropped by any of these.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum FieldError {
    /// No usable session: the tokens expired or were revoked. Local work is
    /// kept in the store; log in again and sync.
    #[error("{0}")]
    NeedsLogin(String),
    /// The server refused the username or password.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// An argument is wrong (answer value, id, file, option).
    #[error("{0}")]
    InvalidInput(String),
    /// The inspection, item, finding or document is not on this device.
    #[error("{0}")]
    NotFound(String),
    /// The signed-in user may not do this (e.g. settle without being lead).
    #[error("{0}")]
    NotAllowed(String),
    /// The server could not be reached; nothing was lost, retry later.
    #[error("{0}")]
    Network(String),
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
    /// The sync exchange failed (protocol error, refused changes, timeout).
    #[error("{0}")]
    Sync(String),
    /// The device store (SQLite file or blob folder) failed.
    #[error("{0}")]
    Storage(String),
    /// A photo could not be read, decoded or encoded.
    #[error("{0}")]
    Photo(String),
}

impl FieldError {
    /// A stable short name of the case, for logs and the command line's JSON.
    pub fn code(&self) -> &'static str {
        match self {
            FieldError::NeedsLogin(_) => "needs_login",
            FieldError::InvalidCredentials => "invalid_credentials",
            FieldError::InvalidInput(_) => "invalid_input",
            FieldError::NotFound(_) => "not_found",
            FieldError::NotAllowed(_) => "not_allowed",
            FieldError::Network(_) => "network",
            FieldError::Server(_) => "server",
            FieldError::Sync(_) => "sync",
            FieldError::Storage(_) => "storage",
            FieldError::Photo(_) => "photo",
        }
    }

    /// Whether trying again later may succeed without anyone doing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FieldError::Network(_) | FieldError::Sync(_) | FieldError::Server(_)
        )
    }
}

impl From<StorageError> for FieldError {
    fn from(e: StorageError) -> Self {
        FieldError::Storage(e.to_string())
    }
}

impl From<rusqlite::Error> for FieldError {
    fn from(e: rusqlite::Error) -> Self {
        FieldError::Storage(format!(
            "device database error: {e}; check that the store folder is writable and the disk is not full"
        ))
    }
}

impl From<ModelError> for FieldError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NotFound { .. } => FieldError::NotFound(e.to_string()),
            ModelError::UnknownTemplate { .. } => FieldError::NotFound(e.to_string()),
            ModelError::InvalidArgument(_) | ModelError::AlreadyExists { .. } => {
                FieldError::InvalidInput(e.to_string())
            }
            other => FieldError::Storage(format!("document error: {other}")),
        }
    }
}

/// Shorthand for the library's results.
pub type Result<T, E = FieldError> = std::result::Result<T, E>;

//! `sync-core`: the one implementation of kiemtra's documents and their sync.
//!
//! - [`ids`]: document ids and `automerge:` URLs.
//! - [`protocol`]: the automerge-repo wire protocol "1" and the sans-IO peer.
//!
//! This crate touches no sockets, no async runtime, no clock and no random
//! source: time and identifiers come in as arguments. Only [`storage`]
//! touches files (SQLite).

pub mod access;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod model;
pub mod policy;
pub mod protocol;
pub mod storage;
pub mod template;

pub use ids::{AutomergeUrl, DocumentId, IdError};

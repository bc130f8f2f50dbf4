//! `sync-core`: the one implementation of kiemtra's documents and their sync.
//!
//! - [`ids`]: document ids and `automerge:` URLs.
//! - [`protocol`]: the automerge-repo wire protocol "1" and the sans-IO peer.
//!
//! This crate touches no sockets, no async runtime, no clock and no random
//! source: time and identifiers come in as arguments. Only [`storage`]
//! touches files (SQLite).

pub mod ids;
pub mod protocol;

pub use ids::{AutomergeUrl, DocumentId, IdError};

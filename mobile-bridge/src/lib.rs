//! `mobile-bridge`: kiemtra's tablet library.
//!
//! What an Android or iPad app (through the UniFFI bindings) or the
//! `kiemtra-field` command line calls to work offline and sync:
//!
//! - [`Tablet`] (FFI: `FieldClient`): open a device store, log in, list
//!   assigned inspections, answer items, add findings and photos, settle
//!   conflicts, submit, read reviews and corrective actions, sync, see and
//!   rebase refused work.
//! - [`store`]: the device store (SQLite, optionally SQLCipher): documents
//!   through `sync-core`'s storage, plus tokens, the photo queue and sync
//!   marks.
//! - [`engine`]: `sync-core`'s protocol hub in client mode over that store;
//!   every local edit checked as the server checks it before it is made.
//! - [`rebase`]: work the server refused, kept and written again on top of
//!   the server's state.
//! - [`sync`] and [`upload`]: the sync client (WebSocket, tus), with
//!   reconnect backoff.
//! - [`answer`] and [`photo`]: answer values typed as text; photo
//!   re-encoding and hashing.
//!
//! Architecture invariant: this crate holds no merge or protocol logic.
//! Documents are written only through `sync_core::model`, and synced only
//! through `sync_core::protocol::hub::Hub`.
// UniFFI's scaffolding is `extern "C"` code. Each module of ours forbids
// unsafe code again; only `ffi`, `types` and `error` (UniFFI derives) allow it.
#![allow(unsafe_code)]

uniffi::setup_scaffolding!("mobile_bridge");

pub mod answer;
pub mod clock;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod http;
pub mod photo;
pub mod rebase;
pub mod store;
pub mod sync;
pub mod tablet;
pub mod types;
pub mod upload;

#[cfg(test)]
mod offline_tests;
#[cfg(test)]
mod refusal_tests;

pub use clock::{Clock, OffsetClock, SystemClock};
pub use error::FieldError;
pub use ffi::FieldClient;
pub use sync::{Backoff, Listener, Rng, XorShift};
pub use tablet::Tablet;
pub use types::*;

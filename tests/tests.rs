//! End-to-end tests, compiled as one binary: the real server on
//! `127.0.0.1:0` (in-process or as the `kiemtra` binary) with temporary data
//! folders.
#![allow(clippy::unwrap_used)]

mod auth;
mod blobs;
mod cli;
mod durability;
mod field;
mod import;
mod lifecycle;
mod peer;
mod storage;
mod sync_access;
mod sync_bad_input;
mod sync_js;
mod sync_writes;
mod templates;
mod units;

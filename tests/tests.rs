//! End-to-end tests, compiled as one binary: the real server on
//! `127.0.0.1:0` (in-process or as the `kiemtra` binary) with temporary data
//! folders.
#![allow(clippy::unwrap_used)]

mod auth;
mod cli;
mod import;
mod lifecycle;
mod storage;
mod templates;
mod units;

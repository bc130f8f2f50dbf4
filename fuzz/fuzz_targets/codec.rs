//! `sync_core::protocol::decode` on arbitrary frames; accepted frames must
//! survive re-encoding (see `sync_core::fuzzing::codec`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sync_core::fuzzing::codec(data));

//! `sync_core::template::Template::from_json` on arbitrary text (see
//! `sync_core::fuzzing::template`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sync_core::fuzzing::template(data));

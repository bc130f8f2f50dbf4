//! The tus request header parsing of `server::blobs::tus` on arbitrary
//! headers, one `name: value` a line (see `server::fuzzing::tus_headers`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| server::fuzzing::tus_headers(data));

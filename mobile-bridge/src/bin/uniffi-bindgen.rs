//! `uniffi-bindgen`: generates the Kotlin, Swift and Python bindings of the
//! built library (see `scripts/bindings.sh`), e.g.
//! `uniffi-bindgen generate --library target/debug/libmobile_bridge.so --language python --out-dir out`.
#![forbid(unsafe_code)]

fn main() {
    uniffi::uniffi_bindgen_main()
}

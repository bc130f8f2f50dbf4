#!/usr/bin/env bash
# Generates the Kotlin and Swift bindings of mobile-bridge (UniFFI, from the
# built library's metadata) into mobile-bridge/bindings/{kotlin,swift}.
# Run it after changing the FFI surface (src/ffi.rs, src/types.rs,
# src/error.rs) and commit the result.
#
#   mobile-bridge/scripts/bindings.sh
#
# CARGO_TARGET_DIR picks the target folder (default: <repo>/target).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
crate="$(cd "$here/.." && pwd)"
root="$(cd "$crate/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"

cargo build --quiet --manifest-path "$root/Cargo.toml" -p mobile-bridge --lib --bin uniffi-bindgen

case "$(uname -s)" in
    Darwin) lib="$target/debug/libmobile_bridge.dylib" ;;
    *) lib="$target/debug/libmobile_bridge.so" ;;
esac

for lang in kotlin swift; do
    rm -rf "$crate/bindings/$lang"
    mkdir -p "$crate/bindings/$lang"
    # Names come from mobile-bridge/uniffi.toml. The formatters (ktlint,
    # swift-format) are optional; without them the output is valid but
    # unformatted.
    "$target/debug/uniffi-bindgen" generate --library "$lib" --language "$lang" \
        --out-dir "$crate/bindings/$lang"
done
echo "bindings written to $crate/bindings/{kotlin,swift}"

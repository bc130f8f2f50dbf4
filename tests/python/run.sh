#!/usr/bin/env bash
# Builds mobile-bridge's cdylib, generates its Python binding (UniFFI) into
# a temporary folder, and runs test_binding.py with it against a server.
#
#   tests/python/run.sh SERVER_URL STORE_DIR INSPECTION_ID USERNAME PASSWORD
#
# CARGO_TARGET_DIR picks the target folder (default: <repo>/target);
# KIEMTRA_SKIP_BUILD=1 uses what is already built there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo="${CARGO:-cargo}"

if [ "${KIEMTRA_SKIP_BUILD:-0}" != "1" ]; then
    "$cargo" build --quiet --manifest-path "$root/Cargo.toml" -p mobile-bridge -p tests
fi

case "$(uname -s)" in
    Darwin) lib="$target/debug/libmobile_bridge.dylib" ;;
    *) lib="$target/debug/libmobile_bridge.so" ;;
esac
[ -f "$lib" ] || { echo "run.sh: $lib is missing; build mobile-bridge first" >&2; exit 1; }

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$target/debug/uniffi-bindgen" generate --library "$lib" --language python --out-dir "$out" >/dev/null
cp "$lib" "$out/"
PYTHONPATH="$out" python3 "$here/test_binding.py" "$@"

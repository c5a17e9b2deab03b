#!/usr/bin/env bash
# The whole RJS grid on this machine, in one command (README, first command; docs/demo.md):
# builds the sample jobs and the binaries, then runs `rjs demo`, which starts a web server,
# a lookup server and 2 compute nodes inside a private network namespace, computes the
# Mandelbrot sample's 8 tiles on them and stitches them into mandelbrot.png.
#
# usage: scripts/demo.sh [rjs demo options]   e.g. --out /tmp/m.png --keep --dir /tmp/grid
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-wasip1; then
        rustup target add wasm32-wasip1
    fi
fi

"$root/samples/build.sh" >/dev/null
cargo build --manifest-path "$root/Cargo.toml" --release --workspace --bins --locked

target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
exec "$target_dir/release/rjs" demo "$@"

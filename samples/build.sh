#!/usr/bin/env bash
# Builds the RJS sample jobs for wasm32-wasip1 and assembles ready-to-pack job folders.
#
# usage: samples/build.sh [OUT_DIR]      (default: <repo>/target/rjs-samples)
#
# Each job folder OUT_DIR/<job>/ holds manifest.json and the module its "entry" names; pack
# and sign it with rjs-sign. Works from any directory; honours CARGO_TARGET_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out_dir="${1:-$root/target/rjs-samples}"
target=wasm32-wasip1
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac

# job name -> folder holding its manifest.json (the module is <target>/release/<job>.wasm)
jobs=(mandelbrot hello wordcount evil-loop evil-membomb evil-escape evil-output evil-recurse)
manifest_dir() {
    case "$1" in
        evil-*) echo "$here/evil/jobs/$1" ;;
        *) echo "$here/$1" ;;
    esac
}

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target" >/dev/null
    fi
fi

cargo build --manifest-path "$root/Cargo.toml" --release --target "$target" --bins \
    -p rjs-sample-mandelbrot -p rjs-sample-hello -p rjs-sample-evil -p rjs-sample-wordcount

mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
for job in "${jobs[@]}"; do
    manifest="$(manifest_dir "$job")/manifest.json"
    module="$target_dir/$target/release/$job.wasm"
    entry="$(sed -n 's/^[[:space:]]*"entry"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$manifest")"
    if [[ -z "$entry" || "$entry" == */* ]]; then
        echo "build.sh: $manifest: missing or invalid \"entry\"" >&2
        exit 1
    fi
    if [[ ! -f "$module" ]]; then
        echo "build.sh: $module was not built" >&2
        exit 1
    fi
    rm -rf "${out_dir:?}/$job"
    mkdir -p "$out_dir/$job"
    cp "$manifest" "$out_dir/$job/manifest.json"
    cp "$module" "$out_dir/$job/$entry"
    # Input files and folders kept beside the manifest (wordcount's corpus/ and query.txt).
    for extra in "$(dirname "$manifest")"/*; do
        case "$(basename "$extra")" in
            Cargo.toml | src | jobs | manifest.json) ;;
            *) cp -R "$extra" "$out_dir/$job/" ;;
        esac
    done
done

echo "sample jobs ready in $out_dir:"
for job in "${jobs[@]}"; do
    printf '  %-14s %s\n' "$job" "$(cd "$out_dir/$job" && ls | tr '\n' ' ')"
done

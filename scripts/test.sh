#!/usr/bin/env bash
# The project's test command (README "Tests"); .ci/run calls exactly this.
# Installs what it needs on a fresh machine, builds the sample jobs, then checks
# formatting, lints and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# Debian packages the tests use, installed where missing:
# - the dashboard's browser tests drive Debian's chromium through its chromedriver (the two
#   packages are version-locked); never a browser download;
# - the multi-host tests (tests/tests/wan.rs) build hosts with iproute2 and make loss and
#   partitions with iptables;
# - the PostgreSQL store's tests start throw-away clusters of Debian's postgresql server
#   (rjs_harness::postgres).
missing=()
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
    missing+=(chromium chromium-driver)
fi
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables >/dev/null || missing+=(iptables)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

# The S3 blob store's tests start a throw-away moto server on loopback (rjs_harness::s3):
# PyPI's moto with its server extra, installed where missing.
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    command -v pip3 >/dev/null || {
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-pip
    }
    python3 -m pip install --quiet 'moto[server]' ||
        python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

samples/build.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked

# Screenshots of the dashboard's pages, taken by tests/tests/dashboard.rs.
shots="${CARGO_TARGET_DIR:-target}/dashboard-screenshots"
if [ -d "$shots" ]; then
    echo "dashboard screenshots in $shots:"
    ls -l "$shots"
fi

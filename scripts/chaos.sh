#!/usr/bin/env bash
# The long chaos run and the long fuzz run (scripts/test.sh runs 60 s and 30 s versions).
#   scripts/chaos.sh [SECONDS] [SEED]        chaos run, default 300 s, seed 1
#   FUZZ=1 scripts/chaos.sh [SECONDS] [SEED] the protocol fuzzer instead, default 300 s
# Builds the release binaries, then runs; the report and the node logs go to
# $CARGO_TARGET_DIR/chaos-<seconds>s (target/ by default). Exits non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
seed="${2:-1}"
cargo build --release --locked -p roomcast -p roomcast-chaos
target="${CARGO_TARGET_DIR:-target}"
[[ $target == /* ]] || target="$PWD/$target"
if [[ -n "${FUZZ:-}" ]]; then
  exec "$target/release/roomcast-chaos" fuzz --seconds "$seconds" --seed "$seed"
fi
exec "$target/release/roomcast-chaos" --seconds "$seconds" --seed "$seed" --out "$target/chaos-${seconds}s"

#!/usr/bin/env bash
# Fan-out over the fallback transports beside WebSocket, in one run of roomcast-bench (issue 13):
# one roomcast server (bench/roomcast-bench.toml, durable SQLite store in a temp dir), three
# targets on it (members over WebSocket, SSE, HTTP-streaming with emulation; publishers always on
# WebSocket), the limit baseline, rooms of 100 and 500 members at 1,000 msg/s by default.
#
# Usage: [SIZES=100,500] [RATE=1000] bench/transports.sh [other `roomcast-bench run` arguments,
#   e.g. --duration 5]
#   Builds release binaries into $CARGO_TARGET_DIR (or target-bench/), or takes them from
#   $BENCH_BIN_DIR when set (a smoke run: SIZES=10 RATE=50 BENCH_BIN_DIR=target/debug bench/transports.sh
#   --duration 2 --no-plots); results (JSON, SVG plots, the run's log, the server's log) go
#   to bench-results/transports-<time>/. Needs a quiet machine for figures.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
source "$HERE/bench/lib.sh"
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN="$(cd "$BENCH_BIN_DIR" && pwd)"
else
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
  (cd "$HERE" && cargo build --release -q -p roomcast -p roomcast-bench)
  BIN="$CARGO_TARGET_DIR/release"
fi
OUT="$HERE/bench-results/transports-$(date -u +%Y%m%dT%H%M%SZ)"
WORK="$(mktemp -d /tmp/roomcast-transports.XXXXXX)"
PIDS=()
mkdir -p "$OUT"
trap stop_started EXIT

PORT="$(free_port)"
SECRET="bench-$RANDOM$RANDOM"
API_KEY="bench-key-$RANDOM$RANDOM"
"$BIN/roomcast" serve --config "$HERE/bench/roomcast-bench.toml" --listen "127.0.0.1:$PORT" \
  --data-dir "$WORK/data" --token-hmac-secret "$SECRET" --api-key "$API_KEY" >"$WORK/roomcast.log" 2>&1 &
PID=$!
PIDS+=("$PID")
wait_port "$PORT" "$PID" roomcast

COMMON="addr=127.0.0.1:$PORT,pid=$PID,secret=$SECRET,api_key=$API_KEY"
"$BIN/roomcast-bench" run --scenarios fanout --sizes "${SIZES:-100,500}" --rate "${RATE:-1000}" \
  --target "kind=roomcast,$COMMON" \
  --target "kind=roomcast,name=roomcast-sse,transport=sse,$COMMON" \
  --target "kind=roomcast,name=roomcast-http_stream,transport=http_stream,$COMMON" \
  --json "$OUT/results.json" --plots "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"

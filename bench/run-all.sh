#!/usr/bin/env bash
# The full side-by-side run behind BENCHMARKS.md: roomcast, the limit baseline (started by the bench
# itself), Socket.IO 4.8 + redis-adapter, and Sockudo, all on loopback, measured by one invocation of
# roomcast-bench. Peers are installed outside the repo by bench/peers-install.sh ($PEERS_DIR).
#
# Usage: bench/run-all.sh [extra `roomcast-bench run` arguments, e.g. --preset seed500]
# Env:   OUT=dir for results.json, log.txt and plots (default bench-results/run-<utc time>)
#        PEERS=none|socketio|sockudo|all (default all)
# Every process this script starts is stopped by its PID on exit.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
PEERS_DIR="${PEERS_DIR:-/tmp/roomcast-peers}"
PEERS="${PEERS:-all}"
OUT="${OUT:-$HERE/bench-results/run-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/roomcast-run-all.XXXXXX)"
PIDS=()
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
trap stop_started EXIT

(cd "$HERE" && cargo build --release -q -p roomcast -p roomcast-bench)

# Two cores shared with whatever else runs here: wait (at most QUIET_WAIT s, default 300) for the
# 1-minute load average to drop below 1.0, so builds or tests elsewhere do not skew the figures.
# Each case records the load average it started at in results.json anyway.
for _ in $(seq "${QUIET_WAIT:-300}"); do
  awk '{exit !($1 < 1.0)}' /proc/loadavg && break
  sleep 1
done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
BIN="$CARGO_TARGET_DIR/release"
TARGETS=()

# roomcast: durable SQLite store in a temp dir, bench settings from bench/roomcast-bench.toml.
RC_PORT=$(free_port); SECRET="bench-$RANDOM$RANDOM"; API_KEY="bench-$RANDOM$RANDOM"
"$BIN/roomcast" serve --config "$HERE/bench/roomcast-bench.toml" --listen "127.0.0.1:$RC_PORT" \
  --data-dir "$WORK/roomcast-data" --token-hmac-secret "$SECRET" --api-key "$API_KEY" >"$WORK/roomcast.log" 2>&1 &
RC_PID=$!; disown; PIDS+=("$RC_PID"); wait_port "$RC_PORT" "$RC_PID" roomcast
TARGETS+=(--target "kind=roomcast,addr=127.0.0.1:$RC_PORT,pid=$RC_PID,secret=$SECRET,api_key=$API_KEY")

if [ "$PEERS" = all ] || [ "$PEERS" = socketio ]; then
  "$HERE/bench/peers-install.sh" socketio >/dev/null
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!; disown; PIDS+=("$REDIS_PID"); wait_port "$REDIS_PORT" "$REDIS_PID" redis
  SIO_PORT=$(free_port)
  NODE_PATH="$PEERS_DIR/socketio/node_modules" PORT="$SIO_PORT" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    node "$HERE/bench/socketio-server.js" >"$WORK/socketio.log" 2>&1 &
  SIO_PID=$!; disown; PIDS+=("$SIO_PID"); wait_port "$SIO_PORT" "$SIO_PID" socketio
  # CPU is summed over Node and the Redis every broadcast goes through; RSS is Node's.
  TARGETS+=(--target "kind=socketio,addr=127.0.0.1:$SIO_PORT,pid=$SIO_PID+$REDIS_PID")
fi

if [ "$PEERS" = all ] || [ "$PEERS" = sockudo ]; then
  "$HERE/bench/peers-install.sh" sockudo >/dev/null
  SK_PORT=$(free_port)
  # Single local node; limits that would refuse a benchmark lifted; metrics and tracing off (PEERS.md).
  env HOST=127.0.0.1 PORT="$SK_PORT" ADAPTER_DRIVER=local CACHE_DRIVER=memory QUEUE_DRIVER=none \
    APP_MANAGER_DRIVER=memory RATE_LIMITER_ENABLED=false METRICS_ENABLED=false SOCKUDO_OTEL_ENABLED=false \
    SOCKUDO_DEFAULT_APP_ID=bench SOCKUDO_DEFAULT_APP_KEY=benchkey SOCKUDO_DEFAULT_APP_SECRET=benchsecret \
    SOCKUDO_DEFAULT_APP_ENABLED=true SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=10000000 \
    "$PEERS_DIR/sockudo/bin/sockudo" >"$WORK/sockudo.log" 2>&1 &
  SK_PID=$!; disown; PIDS+=("$SK_PID"); wait_port "$SK_PORT" "$SK_PID" sockudo
  TARGETS+=(--target "kind=pusher,addr=127.0.0.1:$SK_PORT,pid=$SK_PID,app_id=bench,key=benchkey,secret=benchsecret")
fi

set +e
"$BIN/roomcast-bench" run "${TARGETS[@]}" --json "$OUT/results.json" --plots "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
set -e
echo "results in $OUT (exit $rc)"
exit "$rc"

#!/usr/bin/env bash
# CI smoke run of roomcast-bench: every scenario, small and fast, correctness counters only.
# Usage: bench/ci-quick.sh PATH/TO/roomcast [PATH/TO/roomcast-bench]
#   Starts a roomcast server on a free loopback port with a temporary data dir, runs
#   `roomcast-bench run --quick` against it (plus the bench's own limit baseline), stops the server
#   by its PID and exits non-zero if any missing/duplicate/out-of-order/failed counter is non-zero.
#   Without a second argument the bench is built with cargo (release) into $CARGO_TARGET_DIR or
#   target-bench/. Timings are printed but never asserted.
set -euo pipefail
ROOMCAST="${1:?usage: bench/ci-quick.sh PATH/TO/roomcast [PATH/TO/roomcast-bench]}"
ROOMCAST="$(cd "$(dirname "$ROOMCAST")" && pwd)/$(basename "$ROOMCAST")"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${2:-}"
if [ -z "$BENCH" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
  (cd "$HERE" && cargo build --release -q -p roomcast-bench)
  BENCH="$CARGO_TARGET_DIR/release/roomcast-bench"
fi

WORK="$(mktemp -d /tmp/roomcast-ci-quick.XXXXXX)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A free loopback port: bind port 0, read what the kernel chose, release it.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
SECRET="ci-quick-secret-$RANDOM$RANDOM"
API_KEY="ci-quick-key-$RANDOM$RANDOM"
"$ROOMCAST" serve --config "$HERE/bench/roomcast-bench.toml" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
  --token-hmac-secret "$SECRET" --api-key "$API_KEY" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# Wait (bounded) until the server accepts connections.
for i in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "roomcast exited:"; cat "$WORK/server.log"; exit 1; fi
  [ "$i" = 100 ] && { echo "roomcast did not listen on $PORT"; cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done

set +e
"$BENCH" run --quick --no-plots --json "$WORK/quick.json" \
  --target "kind=roomcast,addr=127.0.0.1:$PORT,pid=$SERVER_PID,secret=$SECRET,api_key=$API_KEY"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "roomcast-bench --quick failed (exit $rc); last server log lines:"
  tail -n 30 "$WORK/server.log"
fi
exit "$rc"

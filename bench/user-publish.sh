#!/usr/bin/env bash
# Send-to-user across three roomcast nodes: a private Redis (bus and per-user registry), a private
# PostgreSQL (shared store), three `roomcast serve` nodes, then `roomcast-bench user-publish` against
# them (users spread over the nodes, `POST /api/user_publish` from every node, offsets checked per
# connection). Prints publications/s and deliveries/s.
#
# Usage: bench/user-publish.sh [extra `roomcast-bench user-publish` arguments, e.g. --users 1000]
# Env:   PROFILE=release|debug (default release). Every process started is stopped by its PID.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
PROFILE="${PROFILE:-release}"
WORK="$(mktemp -d /tmp/roomcast-user-publish.XXXXXX)"
OUT="$WORK" # stop_started copies the logs here (removed with it): see them on failure only
PIDS=()
PG_CTL=$(ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)
INITDB=$(dirname "$PG_CTL")/initdb
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
cleanup() {
  runuser -u postgres -- "$PG_CTL" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
  stop_started
}
trap cleanup EXIT

flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
(cd "$HERE" && cargo build "${flag[@]}" -q -p roomcast -p roomcast-bench)
BIN="$CARGO_TARGET_DIR/$PROFILE"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID"); wait_port "$REDIS_PORT" "$REDIS_PID" redis

PG_PORT=$(free_port)
chmod 755 "$WORK"; mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
runuser -u postgres -- "$INITDB" -D "$WORK/pg/data" -U roomcast --auth=trust -E UTF8 --no-sync >"$WORK/initdb.log"
runuser -u postgres -- "$PG_CTL" -D "$WORK/pg/data" -l "$WORK/pg/data/log" -w -t 30 \
  -o "-p $PG_PORT -k $WORK/pg/data -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null

SECRET="bench-$RANDOM$RANDOM"; API_KEY="bench-$RANDOM$RANDOM"; NODES=()
for i in 0 1 2; do
  PORT=$(free_port)
  "$BIN/roomcast" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/node$i" \
    --token-hmac-secret "$SECRET" --api-key "$API_KEY" --redis "redis://127.0.0.1:$REDIS_PORT" \
    --store "postgres://roomcast@127.0.0.1:$PG_PORT/postgres" >"$WORK/node$i.log" 2>&1 &
  PID=$!; PIDS+=("$PID"); wait_port "$PORT" "$PID" "node$i"
  NODES+=("127.0.0.1:$PORT")
done

"$BIN/roomcast-bench" user-publish --nodes "$(IFS=,; echo "${NODES[*]}")" \
  --api-key "$API_KEY" --secret "$SECRET" "$@"

#!/usr/bin/env bash
# One room across a cluster (issue #8: "100,000 members in one room across 6 node processes"): a
# private Redis (bus), a private PostgreSQL (shared store), NODES `roomcast serve` nodes, then
# `roomcast-bench run --scenarios fanout` with one room of MEMBERS members spread over the nodes
# (member idx % nodes; the bench spreads them over worker processes of <= 15,000 connections and
# over loopback source addresses) and one publisher at RATE/s through the first node.
# Prints live publish-to-receipt p50/p99, publish to the last member p50/p99 (per publication),
# server CPU per publication summed over the nodes, and the bus traffic per publication (Redis
# `INFO stats` bytes out/in before and after publishing: one copy per node expected, so about
# NODES x the envelope of one publication).
#
# Usage: bench/large-cluster.sh [extra `roomcast-bench run` arguments, e.g. --duration 20]
# Env:   NODES (default 6), MEMBERS (default 100000), RATE publications/s (default 1: at ~5 us of
#        kernel send per delivery, 100,000 deliveries at 10/s need 5 cores; BENCHMARKS.md),
#        PROFILE=release|debug (default release), OUT results dir (default
#        bench-results/large-cluster-<utc time>), CONFIG node config (default bench/roomcast-bench-cluster.toml).
# Smoke: PROFILE=debug NODES=3 MEMBERS=600 bench/large-cluster.sh --duration 3 --no-plots
# With `--digest-live N` members idx >= N subscribe for a digest (checked as in the large scenario).
# Every process started is stopped by its PID on exit. Each process holds at most 20,000 files.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
PROFILE="${PROFILE:-release}"
NODES="${NODES:-6}"; MEMBERS="${MEMBERS:-100000}"; RATE="${RATE:-1}"
CONFIG="${CONFIG:-$HERE/bench/roomcast-bench-cluster.toml}"
OUT="${OUT:-$HERE/bench-results/large-cluster-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/roomcast-large-cluster.XXXXXX)"
PIDS=()
PG_CTL=$(ls /usr/lib/postgresql/*/bin/pg_ctl | tail -1)
INITDB=$(dirname "$PG_CTL")/initdb
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
# PostgreSQL refuses to run as root: run its tools as `postgres` then.
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_CTL" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
  stop_started
}
trap cleanup EXIT
# Nodes hold MEMBERS / NODES connections each, bench workers 15,000: both below this.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
per_node=$(( (MEMBERS + NODES - 1) / NODES ))
if (( per_node > 19500 )); then
  echo "MEMBERS / NODES = $per_node connections per node: above what 20,000 files hold"; exit 2
fi

flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
(cd "$HERE" && cargo build "${flag[@]}" -q -p roomcast -p roomcast-bench)
BIN="$CARGO_TARGET_DIR/$PROFILE"

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 10000 >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID"); wait_port "$REDIS_PORT" "$REDIS_PID" redis

PG_PORT=$(free_port)
chmod 755 "$WORK"; mkdir -p "$WORK/pg"; [[ $(id -u) == 0 ]] && chown postgres "$WORK/pg"
as_pg "$INITDB" -D "$WORK/pg/data" -U roomcast --auth=trust -E UTF8 --no-sync >"$WORK/initdb.log"
as_pg "$PG_CTL" -D "$WORK/pg/data" -l "$WORK/pg/data/log" -w -t 30 \
  -o "-p $PG_PORT -k $WORK/pg/data -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null

SECRET="bench-$RANDOM$RANDOM"; API_KEY="bench-$RANDOM$RANDOM"; ADDRS=(); NODE_PIDS=()
for i in $(seq 0 $((NODES - 1))); do
  PORT=$(free_port)
  "$BIN/roomcast" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" --data-dir "$WORK/node$i" \
    --token-hmac-secret "$SECRET" --api-key "$API_KEY" --redis "redis://127.0.0.1:$REDIS_PORT" \
    --store "postgres://roomcast@127.0.0.1:$PG_PORT/postgres" >"$WORK/node$i.log" 2>&1 &
  PID=$!; PIDS+=("$PID"); NODE_PIDS+=("$PID"); wait_port "$PORT" "$PID" "node$i"
  ADDRS+=("127.0.0.1:$PORT")
done

# CPU and RSS are summed over the nodes (Redis and PostgreSQL are not counted in them).
TARGET="kind=roomcast,name=roomcast-${NODES}nodes,addr=$(IFS=+; echo "${ADDRS[*]}")"
TARGET+=",pid=$(IFS=+; echo "${NODE_PIDS[*]}"),secret=$SECRET,api_key=$API_KEY,redis=127.0.0.1:$REDIS_PORT"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $NODES nodes, $MEMBERS members, $RATE/s"
"$BIN/roomcast-bench" run --no-limit --scenarios fanout --sizes "$MEMBERS" --rooms 1 --rate "$RATE" \
  --target "$TARGET" --json "$OUT/results.json" --plots "$OUT" "$@" | tee "$OUT/log.txt"

#!/usr/bin/env bash
# Before and after in one run: two roomcast builds side by side, with the limit baseline, measured by
# one invocation of roomcast-bench (same machine, same moment, same load generator).
#
# Usage: bench/compare.sh OLD_ROOMCAST NEW_ROOMCAST BENCH [roomcast-bench run arguments...]
#   e.g. bench/compare.sh /tmp/old/roomcast target/release/roomcast target/release/roomcast-bench \
#          --preset seed500
# Env:   STORE=sqlite (default: each server its own SQLite data dir) | postgres (a private
#        PostgreSQL started here, one database per server; fsync on)
#        OUT=dir for results.json and plots (default bench-results/compare-<utc time>)
#        CONFIG_OLD / CONFIG_NEW: config file per server (default bench/roomcast-bench.toml for both)
#        SPEC_OLD / SPEC_NEW: extra `--target` keys per server, e.g. SPEC_NEW=chat=1 (the chat layer:
#        members added, cursors moved; pair with CONFIG_NEW=bench/roomcast-bench-chat.toml), or
#        SPEC_NEW=proto=1 (members and room publishers in the protobuf format: JSON as old, protobuf
#        as new; add ,name=roomcast-protobuf to name it so in the tables)
#        Same binary twice with different settings: bench/compare.sh B B BENCH ... with those, e.g.
#        SPEC_NEW=proto=1 bench/compare.sh B B BENCH --preset seed500 --scenarios fanout
# Every process this script starts is stopped by its PID on exit.
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n 2,10p "$0"; exit 2; }
OLD="$(realpath "$1")"; NEW="$(realpath "$2")"; BENCH="$(realpath "$3")"; shift 3
HERE="$(cd "$(dirname "$0")/.." && pwd)"
STORE="${STORE:-sqlite}"
OUT="${OUT:-$HERE/bench-results/compare-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/roomcast-compare.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
PG_DATA=""
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
cleanup() {
  if [[ -n $PG_DATA ]]; then as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true; fi
  stop_started
}
trap cleanup EXIT
# PostgreSQL refuses to run as root: run its tools as `postgres` then.
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

store_args=()
if [[ $STORE == postgres ]]; then
  PG_BIN="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | tail -1)")"
  PG_DATA="$WORK/pg"; PG_PORT=$(free_port)
  mkdir -p "$PG_DATA"; [[ $(id -u) == 0 ]] && chown postgres "$PG_DATA"
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U roomcast --auth=trust >"$WORK/initdb.log" 2>&1
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w \
    -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  for db in old new; do
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U roomcast "rc_$db"
  done
fi

TARGETS=()
for which in old new; do
  bin="$OLD"; [[ $which == new ]] && bin="$NEW"
  port=$(free_port); secret="bench-$RANDOM$RANDOM"; key="bench-$RANDOM$RANDOM"
  extra=()
  cfg="$HERE/bench/roomcast-bench.toml"; spec=""
  if [[ $which == old ]]; then cfg="${CONFIG_OLD:-$cfg}"; spec="${SPEC_OLD:-}"; else cfg="${CONFIG_NEW:-$cfg}"; spec="${SPEC_NEW:-}"; fi
  [[ $STORE == postgres ]] && extra=(--store "postgres://roomcast@127.0.0.1:$PG_PORT/rc_$which")
  "$bin" serve --config "$cfg" --listen "127.0.0.1:$port" \
    --data-dir "$WORK/data-$which" --token-hmac-secret "$secret" --api-key "$key" "${extra[@]}" \
    >"$WORK/roomcast-$which.log" 2>&1 &
  pid=$!; PIDS+=("$pid"); wait_port "$port" "$pid" "roomcast-$which"
  TARGETS+=(--target "kind=roomcast,name=roomcast-$which,addr=127.0.0.1:$port,pid=$pid,secret=$secret,api_key=$key${spec:+,$spec}")
done

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); store: $STORE"
"$BENCH" run "${TARGETS[@]}" --json "$OUT/results.json" --plots "$OUT" "$@" | tee "$OUT/log.txt"

#!/usr/bin/env bash
# Offline notifications beside the seed example, in one run: one `roomcast serve` (SQLite, the
# bench settings of bench/roomcast-bench.toml plus a `notify` namespace with notify_offline and the
# webhook on the bench's built-in receiver), then `roomcast-bench notify`: the seed example (one
# room of 500 subscribers, 1,000 publications/s, 10 s) with notifications off, then the same room
# in the notify namespace with 500 more members that never connect (each publication POSTed for
# them, in batches of notify_batch_size). Prints deliveries/s and notified users/s per phase.
#
# Usage: bench/notify.sh [extra `roomcast-bench notify` arguments, e.g. --offline 2000]
# Env:   PROFILE=release|debug (default release). Every process started is stopped by its PID.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target-bench}"
PROFILE="${PROFILE:-release}"
WORK="$(mktemp -d /tmp/roomcast-notify.XXXXXX)"
OUT="$WORK" # stop_started copies the logs here (removed with it): see them on failure only
PIDS=()
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
trap stop_started EXIT

flag=(); [[ "$PROFILE" == release ]] && flag=(--release)
(cd "$HERE" && cargo build "${flag[@]}" -q -p roomcast -p roomcast-bench)
BIN="$CARGO_TARGET_DIR/$PROFILE"

SECRET="bench-$RANDOM$RANDOM"; API_KEY="bench-$RANDOM$RANDOM"; HOOK_SECRET="hook-$RANDOM$RANDOM"
HOOK_PORT=$(free_port); PORT=$(free_port)
{
  echo "commands_per_second = 0"
  echo "notify_webhook_url = \"http://127.0.0.1:$HOOK_PORT/hook\""
  echo "notify_webhook_secret = \"$HOOK_SECRET\""
  echo "[default_namespace]"
  echo "allow_publish_for_client = true"
  echo "[namespaces.notify]"
  echo "notify_offline = true"
} >"$WORK/roomcast.toml"
"$BIN/roomcast" serve --config "$WORK/roomcast.toml" --listen "127.0.0.1:$PORT" \
  --data-dir "$WORK/data" --token-hmac-secret "$SECRET" --api-key "$API_KEY" >"$WORK/node.log" 2>&1 &
PID=$!; PIDS+=("$PID"); wait_port "$PORT" "$PID" node

"$BIN/roomcast-bench" notify --addr "127.0.0.1:$PORT" --api-key "$API_KEY" --secret "$SECRET" \
  --receiver "127.0.0.1:$HOOK_PORT" --webhook-secret "$HOOK_SECRET" "$@"

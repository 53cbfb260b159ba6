#!/usr/bin/env bash
# Installs the two peers the bench compares against, OUTSIDE the project's build:
#   - Socket.IO 4.8 + @socket.io/redis-adapter + redis client (npm) and a Redis server (apt)
#   - Sockudo (cargo install, ~10 min on 2 cores; needs protoc from apt)
# Everything lands in $PEERS_DIR (default /tmp/roomcast-peers); nothing is written into the repository.
# Usage: bench/peers-install.sh [socketio|sockudo|all]   (default all). Idempotent: skips what is there.
set -euo pipefail
PEERS_DIR="${PEERS_DIR:-/tmp/roomcast-peers}"
what="${1:-all}"
mkdir -p "$PEERS_DIR"

need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

if [ "$what" = all ] || [ "$what" = socketio ]; then
  need_apt redis-server
  if [ ! -d "$PEERS_DIR/socketio/node_modules/socket.io" ]; then
    mkdir -p "$PEERS_DIR/socketio"
    (cd "$PEERS_DIR/socketio" && npm init -y >/dev/null &&
      npm install --no-audit --no-fund socket.io@4.8 @socket.io/redis-adapter redis)
  fi
  echo "socketio: $PEERS_DIR/socketio"
fi

if [ "$what" = all ] || [ "$what" = sockudo ]; then
  need_apt protobuf-compiler
  if [ ! -x "$PEERS_DIR/sockudo/bin/sockudo" ]; then
    # A separate target dir keeps this build away from the workspace's target dirs.
    CARGO_TARGET_DIR="$PEERS_DIR/sockudo-target" nice -n 15 \
      cargo install sockudo --locked --root "$PEERS_DIR/sockudo"
  fi
  echo "sockudo: $PEERS_DIR/sockudo/bin/sockudo"
fi

#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn cases (kosoku, from PyPI) against roomcast's own
# WebSocket layer serving an echo endpoint (`roomcast ws-echo`). Groups 12 and 13 test
# permessage-deflate, which roomcast does not offer, so they are excluded. Fails on any
# FAILED case; prints the count of each verdict (NON-STRICT is the suite's pass for
# UTF-8 errors detected at the end of a message rather than mid-frame).
# Usage: scripts/autobahn.sh [ROOMCAST_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/roomcast}"
[[ -x "$bin" ]] || cargo build --release --locked -p roomcast
work="$(mktemp -d)"
venv="${KOSOKU_VENV:-$PWD/target/kosoku-venv}"
if [[ ! -x "$venv/bin/kosoku" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kosoku==0.1.0
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" ws-echo --listen "127.0.0.1:$port" >"$work/echo.log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  grep -q "echo listening" "$work/echo.log" && break
  sleep 0.1
done
(cd "$work" && timeout 1200 "$venv/bin/kosoku" -m fuzzingclient -x '12.*' -x '13.*' -p 2 "ws://127.0.0.1:$port/" >"$work/kosoku.txt" 2>&1) || true
python3 - "$work/reports/clients" <<'PY'
import collections, glob, json, sys
verdicts = collections.Counter()
failed = []
for f in glob.glob(sys.argv[1] + "/*_case_*.json"):
    d = json.load(open(f))
    verdicts[d["behavior"]] += 1
    if d["behavior"] == "FAILED" or d.get("behaviorClose") == "FAILED":
        failed.append(d.get("id", f))
print("autobahn cases:", sum(verdicts.values()), dict(verdicts))
if not verdicts:
    print("no case reports: kosoku did not run")
    sys.exit(1)
if failed:
    print("FAILED cases:", sorted(failed))
    sys.exit(1)
print(f"autobahn: {sum(verdicts.values())} passed, 0 failed")
PY

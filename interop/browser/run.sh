#!/usr/bin/env bash
# Browser test of the chat page (/) and the admin page (/admin): headless Chromium from apt,
# driven by Playwright from PyPI, against a real roomcast node the test starts and restarts.
#
#   bash interop/browser/run.sh ROOMCAST_BINARY [OUT_DIR]
#
# Installs what is missing: the `chromium` apt package (Playwright's own browser download is
# never used) and a virtualenv with requirements.txt in interop/browser/.venv. Screenshots,
# the node's log and the JUnit report go to OUT_DIR (default: $CARGO_TARGET_DIR or target,
# then browser-test/), kept for CI artifacts. Fails, never skips, when the browser cannot start.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 ROOMCAST_BINARY [OUT_DIR]" >&2
  exit 2
fi
BIN=$(realpath -e "$1") || { echo "browser: no roomcast binary at $1" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
target="${CARGO_TARGET_DIR:-target}"
[[ $target == /* ]] || target="$ROOT/$target"
OUT=$(realpath -m "${2:-$target/browser-test}")
PYTHON=${PYTHON:-python3}

chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z "$chromium" ]]; then
  echo "browser: installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
  chromium=$(command -v chromium)
fi

want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
have=$(cat "$HERE/.venv/.stamp" 2>/dev/null || true)
if [[ "$want" != "$have" ]]; then
  echo "browser: creating interop/browser/.venv and installing requirements.txt"
  rm -rf "$HERE/.venv"
  "$PYTHON" -m venv "$HERE/.venv"
  "$HERE/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt"
  echo "$want" >"$HERE/.venv/.stamp"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
echo "browser: $("$chromium" --version 2>/dev/null | head -n1); screenshots in $OUT"
cd "$HERE"
ROOMCAST_BIN="$BIN" BROWSER_OUT="$OUT" CHROMIUM="$chromium" \
  "$HERE/.venv/bin/python" -m pytest -p no:cacheprovider -v test_page.py \
  --junitxml="$OUT/junit.xml" -o junit_family=xunit2

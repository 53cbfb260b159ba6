# Helpers the bench scripts share (sourced by bench/run-all.sh and bench/compare.sh). They use the
# caller's WORK (temp dir with the servers' logs), OUT (results dir) and PIDS (processes started).

# Copies the servers' logs beside the results, stops every process in PIDS by its PID (TERM, then
# KILL after 5 s), removes WORK.
stop_started() {
  # Keep the servers' logs beside the results: a server that fell over says why there.
  cp "$WORK"/*.log "$OUT/" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_port() { # port pid name: waits for a listener, fails if the process exits first
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $WORK"; tail -20 "$WORK/$3.log"; exit 1; }
    sleep 0.1
  done
  echo "$3 did not listen on $1"; exit 1
}

#!/usr/bin/env bash
# Two wssify builds side by side, in rounds that alternate them, with the
# same load (benches/load.rs), pinning and certificate: how a change's
# before and after were measured in one run (README, Performance).
#
#   scripts/ab-builds.sh BEFORE_BIN AFTER_BIN [PHASES] [IDLE] [ROUNDS] [-- FLAGS...]
#
# PHASES: the load's phases (default memory,full-handshake,throughput);
# IDLE: connections held for the memory figure (default 9000); ROUNDS
# (default 3). FLAGS after `--` go to both builds (e.g. --route ...).
# Terminator on cpu 0, load and echo backend on cpu 1. Prints each round's
# figures; take the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
BEFORE=$1 AFTER=$2; shift 2
PHASES=${1:-memory,full-handshake,throughput}; [ $# -gt 0 ] && shift
IDLE=${1:-9000}; [ $# -gt 0 ] && shift
ROUNDS=${1:-3}; [ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
LOAD=$(cargo bench --bench load --no-run 2>&1 | grep -o 'target/release/deps/load-[0-9a-f]*' | head -n1)
W=$(mktemp -d)
"$LOAD" gen-cert "$W" >/dev/null
taskset -c 1 "$LOAD" echo 127.0.0.1:19200 >/dev/null 2>&1 &
ECHO=$!
trap 'kill $ECHO 2>/dev/null; rm -rf "$W"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  for v in before after; do
    if [ $v = before ]; then BIN=$BEFORE; else BIN=$AFTER; fi
    taskset -c 0 "$BIN" --listen 127.0.0.1:19402 --to 127.0.0.1:19200 --threads 1 \
      --cert "$W/cert.pem" --key "$W/key.pem" "$@" 2>"$W/log.$v" &
    PID=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/19402) 2>/dev/null && break; sleep 0.1; done
    echo "== round $r $v ($BIN)"
    "$LOAD" run --name "$v" --target 127.0.0.1:19402 --pid "$PID" --kx x25519 --idle "$IDLE" \
      --seconds 5 --bulk-mib 128 --only "$PHASES" 2>&1 | grep -E "^(memory|full-handshake|settled-handshake|resumed|throughput|latency|handshake-flood|Error)"
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
done

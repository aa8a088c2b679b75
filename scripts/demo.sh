#!/usr/bin/env bash
# wssify end to end on this machine, with nothing to set up:
#
#   wss_client --wss://--> wssify (development CA) --ws://--> ws_echo
#
# Builds wssify and the examples (release), starts the plain ws:// echo server
# (examples/ws_echo.rs) and wssify in front of it, each on a free port of
# 127.0.0.1, with wssify's development CA in a temporary directory (so yours
# is not touched), and runs the wss:// client (examples/wss_client.rs)
# trusting that CA, which sends a message and prints the echo. Then it
# restarts wssify, which signs a new certificate with the same CA, and the
# same client trusts it again. It stops wssify (SIGTERM, so the drain shows)
# and everything else it started, also when interrupted or failing.
#
# usage: scripts/demo.sh          (no arguments)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The longest any one wait may take, in seconds (builds are not limited).
WAIT=20

work="$(mktemp -d)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }

# wait_for FILE REGEX PID WHAT: waits until FILE has a line matching REGEX and
# prints that line; fails if PID exits first or WAIT seconds pass.
wait_for() {
    local file=$1 regex=$2 pid=$3 what=$4 line
    local deadline=$((SECONDS + WAIT))
    while ((SECONDS < deadline)); do
        if line="$(grep -m1 -E -- "$regex" "$file" 2>/dev/null)"; then
            printf '%s\n' "$line"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $what exited before it was ready; its output:" >&2
            sed 's/^/    /' "$file" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "demo: $what was not ready within ${WAIT}s; its output:" >&2
    sed 's/^/    /' "$file" >&2
    return 1
}

step "Building wssify and the examples (cargo build --release --bins --examples)"
cargo build --release --bins --examples
bin=target/release

step "Starting the plain ws:// echo server (examples/ws_echo.rs)"
"$bin/examples/ws_echo" 127.0.0.1:0 >"$work/echo.log" 2>&1 &
pids+=($!)
echo_pid=$!
line="$(wait_for "$work/echo.log" '^ws echo listening on ' "$echo_pid" "ws_echo")"
echo "$line"
backend="${line##* }"

ca_dir="$work/dev-ca"
ca="$ca_dir/ca.pem"
# start_wssify LOG: starts wssify in front of the echo server (the same port
# when $port is set), waits until it listens, and sets wssify_pid and port.
start_wssify() {
    local log=$1 line
    RUST_LOG=info "$bin/wssify" --listen "127.0.0.1:${port:-0}" --to "$backend" \
        --dev-ca-dir "$ca_dir" >"$log" 2>&1 &
    pids+=($!)
    wssify_pid=$!
    line="$(wait_for "$log" 'listening on ' "$wssify_pid" "wssify")"
    cat "$log"
    port="$(sed -E 's/.*listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")"
    if [[ ! $port =~ ^[0-9]+$ || ! -f $ca ]]; then
        echo "demo: cannot read the port from wssify's log, or it made no CA in $ca_dir" >&2
        exit 1
    fi
}

step "Starting wssify in front of it: wssify --listen 127.0.0.1:0 --to $backend --dev-ca-dir $ca_dir"
port=""
start_wssify "$work/wssify.log"

step "Sending a message over wss:// (examples/wss_client.rs, trusting the development CA)"
echo "wss_client --ca $ca wss://localhost:$port/"
"$bin/examples/wss_client" --ca "$ca" "wss://localhost:$port/"

step "Restarting wssify: a new certificate, signed by the same CA"
kill -TERM "$wssify_pid"
wait "$wssify_pid" 2>/dev/null || true
start_wssify "$work/wssify-2.log"

step "The same client, trusting the same CA file, is served again"
echo "wss_client --ca $ca wss://localhost:$port/"
"$bin/examples/wss_client" --ca "$ca" "wss://localhost:$port/"

step "wssify's line for that connection"
wait_for "$work/wssify-2.log" 'peer=.* end=' "$wssify_pid" "wssify" >/dev/null
grep -E 'peer=.* end=' "$work/wssify-2.log"

step "Stopping wssify with SIGTERM (graceful drain), then the echo server"
kill -TERM "$wssify_pid"
deadline=$((SECONDS + WAIT))
while kill -0 "$wssify_pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.1
done
grep -E 'SIGTERM|stopped' "$work/wssify-2.log" || true
echo
echo "Done. Try it yourself: cargo run --release -- --listen 9300 --to 127.0.0.1:9200"
echo "(your development CA, kept under ~/.local/share/wssify/dev-ca: cargo run --release -- --dev-ca show)"

#!/usr/bin/env bash
# wssify end to end on this machine, with nothing to set up:
#
#   wss_client --wss://--> wssify (self-signed) --ws://--> ws_echo
#
# Builds wssify and the examples (release), starts the plain ws:// echo server
# (examples/ws_echo.rs) and wssify in front of it, each on a free port of
# 127.0.0.1, reads the development certificate's fingerprint from wssify's log,
# and runs the wss:// client (examples/wss_client.rs) pinned to it, which sends
# a message and prints the echo. Then it stops wssify (SIGTERM, so the drain
# shows) and everything else it started, also when interrupted or failing.
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

step "Starting wssify in front of it: wssify --listen 127.0.0.1:0 --to $backend"
RUST_LOG=info "$bin/wssify" --listen 127.0.0.1:0 --to "$backend" >"$work/wssify.log" 2>&1 &
pids+=($!)
wssify_pid=$!
line="$(wait_for "$work/wssify.log" 'listening on ' "$wssify_pid" "wssify")"
cat "$work/wssify.log"
port="$(sed -E 's/.*listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")"
fingerprint="$(wait_for "$work/wssify.log" 'fingerprint: ' "$wssify_pid" "wssify")"
fingerprint="${fingerprint##*fingerprint: }"
if [[ ! $port =~ ^[0-9]+$ || ! $fingerprint =~ ^[0-9A-F:]{95}$ ]]; then
    echo "demo: cannot read the port or the fingerprint from wssify's log" >&2
    exit 1
fi

step "Sending a message over wss:// (examples/wss_client.rs, pinning the fingerprint)"
echo "wss_client wss://localhost:$port/ $fingerprint"
"$bin/examples/wss_client" "wss://localhost:$port/" "$fingerprint"

step "wssify's line for that connection"
wait_for "$work/wssify.log" 'peer=.* end=' "$wssify_pid" "wssify" >/dev/null
grep -E 'peer=.* end=' "$work/wssify.log"

step "Stopping wssify with SIGTERM (graceful drain), then the echo server"
kill -TERM "$wssify_pid"
deadline=$((SECONDS + WAIT))
while kill -0 "$wssify_pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.1
done
grep -E 'SIGTERM|stopped' "$work/wssify.log" || true
echo
echo "Done. Try it yourself: cargo run --release -- --listen 9300 --to 127.0.0.1:9200"

#!/usr/bin/env bash
# Runs nginx's stream module and wssify one after the other, on the same core,
# with the same certificate (ECDSA P-256), the same echo backend and the same
# load (benches/load.rs), and prints both with the ratios.
#
#   scripts/bench-vs-nginx.sh [--idle N] [--seconds S] [--bulk-mib M] [--rounds R]
#
# Terminator on cpu 0, load client and echo backend on cpu 1. Installs nginx
# and its stream module from Debian's packages when missing (needs root).
# Memory is measured once, on fresh processes; the rate figures are measured
# in R rounds (default 5) that alternate nginx and wssify, and the table
# gives medians, the ratios as medians of each round's ratio, because a
# shared VM moves single figures by a lot from minute to minute. Each round
# also measures latency on a wssify started with --busy-poll (off by
# default; see the README), in its own column.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=10000 SECONDS_PER_RATE=5 BULK_MIB=256 ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --idle) IDLE=$2; shift 2 ;;
    --seconds) SECONDS_PER_RATE=$2; shift 2 ;;
    --bulk-mib) BULK_MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  echo "installing nginx and its stream module (Debian packages)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-core libnginx-mod-stream >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

# Room for 10,000s of connections: each costs the terminator two descriptors.
# Raising the hard limit needs CAP_SYS_RESOURCE; without it, hold only what
# the hard limit allows and say so.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
MAX_IDLE=$(( ($(ulimit -n) - 200) / 2 ))
if [ "$IDLE" -gt "$MAX_IDLE" ]; then
  echo "note: the open-file limit ($(ulimit -n)) allows $MAX_IDLE proxied connections, not $IDLE; using $MAX_IDLE" >&2
  IDLE=$MAX_IDLE
fi

echo "building (release)..."
cargo build --release --quiet
LOAD=$(cargo bench --bench load --no-run 2>&1 | grep -o 'target/release/deps/load-[0-9a-f]*' | head -n1)
WSSIFY=target/release/wssify
[ -x "$LOAD" ] || { echo "cannot find the load benchmark binary" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$LOAD" gen-cert "$WORK" >/dev/null
BACKEND=127.0.0.1:19200
taskset -c 1 "$LOAD" echo "$BACKEND" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)

wait_port() { # wait (bounded) until something listens on $1
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; exit 1
}
wait_port "$BACKEND"

idle_counts() { # 1000,5000,$IDLE without counts at or above $IDLE
  local counts="" n
  for n in 1000 5000; do [ "$n" -lt "$IDLE" ] && counts="$counts$n,"; done
  echo "$counts$IDLE"
}

run_load() { # name round target pid kx idle [load flags...] -> $WORK/name.round.out
  "$LOAD" run --name "$1" --target "$3" --pid "$4" --kx "$5" \
    --idle "$6" --seconds "$SECONDS_PER_RATE" --bulk-mib "$BULK_MIB" "${@:7}" | tee "$WORK/$1.$2.out"
}

# --- nginx stream, one worker on cpu 0 ---
NGINX_ADDR=127.0.0.1:19301
cat >"$WORK/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 1048576;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 200000; }
stream {
  upstream ws { server $BACKEND; }
  server {
    listen $NGINX_ADDR ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_timeout 1h;
    proxy_pass ws;
  }
}
CONF
taskset -c 0 nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$NGINX_ADDR"
NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -n1)
echo; echo "== nginx $(nginx -v 2>&1 | sed 's/.*\///') stream (worker pid $NGINX_WORKER)"

# --- wssify, one thread on cpu 0, same certificate ---
start_wssify() { # addr [flags...]
  taskset -c 0 "$WSSIFY" --listen "$1" --to "$BACKEND" --threads 1 \
    --cert "$WORK/cert.pem" --key "$WORK/key.pem" "${@:2}" 2>"$WORK/wssify-$1.log" &
  PIDS+=($!)
  WSSIFY_PID=$!
  wait_port "$1"
}
WSSIFY_ADDR=127.0.0.1:19302
start_wssify "$WSSIFY_ADDR"
WSSIFY_MAIN=$WSSIFY_PID
BUSY_POLL=100us BUSY_ADDR=127.0.0.1:19304
start_wssify "$BUSY_ADDR" --busy-poll "$BUSY_POLL"
WSSIFY_BUSY=$WSSIFY_PID

for round in $(seq 1 "$ROUNDS"); do
  # Memory once, on fresh processes, at 1,000 and 5,000 on the way to
  # $IDLE: growth between counts shows whether the cost stays flat.
  idle=0; [ "$round" = 1 ] && idle=$(idle_counts)
  echo; echo "== round $round of $ROUNDS: nginx (worker pid $NGINX_WORKER)"
  run_load nginx "$round" "$NGINX_ADDR" "$NGINX_WORKER" x25519 "$idle"
  echo; echo "== round $round of $ROUNDS: wssify $("$WSSIFY" --version | cut -d' ' -f2) (pid $WSSIFY_MAIN), X25519 like nginx"
  run_load wssify "$round" "$WSSIFY_ADDR" "$WSSIFY_MAIN" x25519 "$idle"
  echo; echo "== round $round of $ROUNDS: wssify --busy-poll $BUSY_POLL (pid $WSSIFY_BUSY), latency only"
  run_load wssify-busy "$round" "$BUSY_ADDR" "$WSSIFY_BUSY" x25519 0 --only latency,latency-paced
done
kill "$(cat "$WORK/nginx.pid")"; kill "$WSSIFY_MAIN" "$WSSIFY_BUSY"

start_wssify 127.0.0.1:19303
echo; echo "== wssify (pid $WSSIFY_PID), client default: X25519MLKEM768 post-quantum hybrid (one round)"
run_load wssify-pq 1 127.0.0.1:19303 "$WSSIFY_PID" default "$(idle_counts)"
kill "$WSSIFY_PID"

# --- the table ---
median() { # numbers on stdin, one a line -> their median (blank if none)
  sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
values() { # file-glob label key -> the key's values on the label's lines
  # (`|| true`: a figure not measured, such as memory under --idle 0 or in
  # the busy-poll runs, is blank)
  { cat $1 2>/dev/null | grep "^$2 " | grep -o "$3=[0-9.]*" | cut -d= -f2; } || true
}
field() { # name label key -> the median over the rounds that have it
  values "$WORK/$1.*.out" "$2" "$3" | median
}
ratio() { # name label key -> the median over rounds of name / nginx within a round
  # Each round's pair ran back to back, so a slow spell of the VM weighs on
  # both sides of a ratio rather than on one side of the medians.
  local r n w
  for r in $(seq 1 "$ROUNDS"); do
    n=$(values "$WORK/nginx.$r.out" "$2" "$3"); w=$(values "$WORK/$1.$r.out" "$2" "$3")
    if [ -n "$n" ] && [ -n "$w" ]; then
      awk -v n="$n" -v w="$w" 'BEGIN { if (n > 0) print w / n }'
    fi
  done | median
}
row() { # title label key unit
  local n w b q x y
  n=$(field nginx "$2" "$3"); w=$(field wssify "$2" "$3"); b=$(field wssify-busy "$2" "$3")
  q=$(field wssify-pq "$2" "$3")
  x=$(ratio wssify "$2" "$3"); y=$(ratio wssify-busy "$2" "$3")
  awk -v t="$1" -v n="$n" -v w="$w" -v b="$b" -v q="$q" -v u="$4" -v x="$x" -v y="$y" '
    function times(r) { return r == "" ? "" : sprintf("%.2fx", r) }
    BEGIN { printf "| %-34s | %10s %-5s | %10s %-5s | %6s | %10s %-5s | %6s | %10s %-5s |\n",
      t, n, u, w, u, times(x), b, (b == "" ? "" : u), times(y), q, u }'
}
echo
echo "Same run, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), terminator pinned to cpu 0, load + echo on cpu 1, $IDLE idle connections; rate figures are medians of $ROUNDS alternating rounds (the PQ column: one round):"
echo
echo "| per core                           | nginx stream     | wssify (X25519)  | ratio  | --busy-poll $BUSY_POLL | ratio  | wssify (PQ)      |"
echo "|------------------------------------|------------------|------------------|--------|------------------|--------|------------------|"
row "memory per idle connection"        "memory .*idle_conns=$IDLE" per_conn_kib KiB
row "  growth per connection, last step" "memory .*idle_conns=$IDLE" marginal_kib KiB
row "bulk throughput, echoed"           throughput     mb_per_s     MB/s
row "full handshakes/s"                 full-handshake per_s        /s
row "resumed handshakes/s"              resumed        per_s        /s
row "64-byte echo latency p50"          latency        p50_us       us
row "64-byte echo latency p99"          latency        p99_us       us
row "  1,000 a second: p50"             latency-paced  p50_us       us
row "  1,000 a second: p99"             latency-paced  p99_us       us
row "  1,000 a second: terminator CPU"  latency-paced  cpu_terminator %
echo
echo "ratio = wssify / nginx within each round, median over the rounds: higher is better for throughput and handshakes, lower for memory, latency and CPU."
echo
# A rate measures the terminator only while its core is the one that is full.
for phase in throughput full-handshake resumed; do
  echo "cpu during $phase (medians): nginx $(field nginx "$phase" cpu_terminator)% with the load core at $(field nginx "$phase" cpu_load_core)%;" \
    "wssify $(field wssify "$phase" cpu_terminator)% with the load core at $(field wssify "$phase" cpu_load_core)%"
done

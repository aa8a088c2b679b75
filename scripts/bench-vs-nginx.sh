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
# default; see the README), in its own column, and bulk throughput with TLS
# passed through untouched (nginx's ssl_preread + proxy_pass against wssify
# --passthrough, both on cpu 0, to one TLS server on cpu 1).
#
# Then, once each: the handshake flood (echo latency while 5,000 clients
# stall handshakes and full handshakes run in a loop) on the same nginx and
# wssify, and on wssify with --handshake-priority normal and low; settled
# handshakes beside a busy process on wssify's core, for the three;
# partial records (2,000 connections holding 3 bytes of a record header)
# on fresh processes, plain and with MALLOC_PERTURB_ (RSS then
# counts allocated bytes, not only touched pages); and the memory budget
# (2,000 clients that stop reading while their backends push) on fresh
# processes: wssify --max-memory 64MiB, wssify with its default budget, and
# nginx for reference (it has no budget).
#
# With --before BIN (an earlier wssify build, e.g. of the last release), a
# third process runs the same rounds and figures, so a change shows its
# before and after from one run: the table gets a "before" column and the
# ratio wssify / before.
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE=10000 SECONDS_PER_RATE=5 BULK_MIB=256 ROUNDS=5 BEFORE=
while [ $# -gt 0 ]; do
  case "$1" in
    --idle) IDLE=$2; shift 2 ;;
    --seconds) SECONDS_PER_RATE=$2; shift 2 ;;
    --bulk-mib) BULK_MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --before) BEFORE=$2; shift 2 ;;
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
  for f in "$WORK"/nginx-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
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

run_load() { # name round target pid kx idle [load flags...] -> appended to $WORK/name.round.out
  "$LOAD" run --name "$1" --target "$3" --pid "$4" --kx "$5" \
    --idle "$6" --seconds "$SECONDS_PER_RATE" --bulk-mib "$BULK_MIB" "${@:7}" | tee -a "$WORK/$1.$2.out"
}
# The rate figures (the load's phases); without --only it runs every phase.
RATES=latency,latency-paced,throughput,full-handshake,settled-handshake,resumed

# --- nginx stream, one worker on cpu 0 ---
start_nginx() { # addr name [env VAR=VALUE...] -> NGINX_WORKER, pid file $WORK/nginx-name.pid
  cat >"$WORK/nginx-$2.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 1048576;
pid $WORK/nginx-$2.pid;
error_log $WORK/nginx-$2-error.log warn;
events { worker_connections 200000; }
stream {
  upstream ws { server $BACKEND; }
  server {
    listen $1 ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_timeout 1h;
    proxy_pass ws;
  }
}
CONF
  "${@:3}" taskset -c 0 nginx -c "$WORK/nginx-$2.conf" -g 'daemon off;' &
  PIDS+=($!)
  wait_port "$1"
  NGINX_WORKER=$(pgrep -P "$(cat "$WORK/nginx-$2.pid")" | head -n1)
}
stop_nginx() { # name
  kill "$(cat "$WORK/nginx-$1.pid")"
  rm -f "$WORK/nginx-$1.pid"
}
NGINX_ADDR=127.0.0.1:19301
start_nginx "$NGINX_ADDR" main
echo; echo "== nginx $(nginx -v 2>&1 | sed 's/.*\///') stream (worker pid $NGINX_WORKER)"

# --- wssify, one thread on cpu 0, same certificate ---
start_wssify() { # addr [flags...]; WSSIFY_ENV (VAR=VALUE...) goes into its environment, WSSIFY_BIN picks the binary
  env ${WSSIFY_ENV:-} taskset -c 0 "${WSSIFY_BIN:-$WSSIFY}" --listen "$1" --to "$BACKEND" --threads 1 \
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
if [ -n "$BEFORE" ]; then
  BEFORE_ADDR=127.0.0.1:19310
  WSSIFY_BIN=$BEFORE start_wssify "$BEFORE_ADDR"
  WSSIFY_BEFORE=$WSSIFY_PID
fi

# --- passthrough: TLS passed untouched to a TLS server, nginx's
# ssl_preread + proxy_pass against wssify --passthrough, both on cpu 0; the
# TLS server they pass to is a wssify on cpu 1 (beside the load and the
# echo backend) that ends TLS and echoes through the backend ---
TLS_END=127.0.0.1:19320
taskset -c 1 "$WSSIFY" --listen "$TLS_END" --to "$BACKEND" --threads 1 \
  --cert "$WORK/cert.pem" --key "$WORK/key.pem" 2>"$WORK/tls-end.log" &
PIDS+=($!)
wait_port "$TLS_END"
NGINX_PASS=127.0.0.1:19321
cat >"$WORK/nginx-pass.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_rlimit_nofile 1048576;
pid $WORK/nginx-pass.pid;
error_log $WORK/nginx-pass-error.log warn;
events { worker_connections 200000; }
stream {
  map \$ssl_preread_server_name \$to { default $TLS_END; }
  server {
    listen $NGINX_PASS;
    ssl_preread on;
    proxy_timeout 1h;
    proxy_pass \$to;
  }
}
CONF
taskset -c 0 nginx -c "$WORK/nginx-pass.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$NGINX_PASS"
NGINX_PASS_WORKER=$(pgrep -P "$(cat "$WORK/nginx-pass.pid")" | head -n1)
WSSIFY_PASS=127.0.0.1:19322
taskset -c 0 "$WSSIFY" --listen "$WSSIFY_PASS" --passthrough "*=$TLS_END" --threads 1 \
  2>"$WORK/wssify-pass.log" &
PIDS+=($!)
WSSIFY_PASS_PID=$!
wait_port "$WSSIFY_PASS"

for round in $(seq 1 "$ROUNDS"); do
  # Memory once, on fresh processes, at 1,000 and 5,000 on the way to
  # $IDLE: growth between counts shows whether the cost stays flat.
  idle=0 only=$RATES; [ "$round" = 1 ] && idle=$(idle_counts) only=memory,$RATES
  echo; echo "== round $round of $ROUNDS: nginx (worker pid $NGINX_WORKER)"
  run_load nginx "$round" "$NGINX_ADDR" "$NGINX_WORKER" x25519 "$idle" --only "$only"
  echo; echo "== round $round of $ROUNDS: wssify $("$WSSIFY" --version | cut -d' ' -f2) (pid $WSSIFY_MAIN), X25519 like nginx"
  run_load wssify "$round" "$WSSIFY_ADDR" "$WSSIFY_MAIN" x25519 "$idle" --only "$only"
  echo; echo "== round $round of $ROUNDS: wssify --busy-poll $BUSY_POLL (pid $WSSIFY_BUSY), latency only"
  run_load wssify-busy "$round" "$BUSY_ADDR" "$WSSIFY_BUSY" x25519 0 --only latency,latency-paced
  if [ -n "$BEFORE" ]; then
    echo; echo "== round $round of $ROUNDS: before: $BEFORE (pid $WSSIFY_BEFORE)"
    run_load before "$round" "$BEFORE_ADDR" "$WSSIFY_BEFORE" x25519 "$idle" --only "$only"
  fi
  echo; echo "== round $round of $ROUNDS: passthrough, nginx ssl_preread (worker pid $NGINX_PASS_WORKER)"
  run_load nginx-pass "$round" "$NGINX_PASS" "$NGINX_PASS_WORKER" x25519 0 --only throughput
  echo; echo "== round $round of $ROUNDS: passthrough, wssify --passthrough (pid $WSSIFY_PASS_PID)"
  run_load wssify-pass "$round" "$WSSIFY_PASS" "$WSSIFY_PASS_PID" x25519 0 --only throughput
done
kill "$(cat "$WORK/nginx-pass.pid")" "$WSSIFY_PASS_PID"
rm -f "$WORK/nginx-pass.pid"
# The handshake flood once, after the rounds (its ratio is quiet against
# flood within the one run), into round 1's files.
echo; echo "== handshake flood: nginx (worker pid $NGINX_WORKER)"
run_load nginx 1 "$NGINX_ADDR" "$NGINX_WORKER" x25519 0 --only handshake-flood
echo; echo "== handshake flood: wssify (pid $WSSIFY_MAIN)"
run_load wssify 1 "$WSSIFY_ADDR" "$WSSIFY_MAIN" x25519 0 --only handshake-flood
# The same flood with handshakes kept on the connections' threads
# (--handshake-priority normal, what the default was before it placed
# them), and always on the idle-class threads (low).
start_wssify 127.0.0.1:19311 --handshake-priority normal
NORMAL=$WSSIFY_PID
echo; echo "== handshake flood: wssify --handshake-priority normal (pid $NORMAL)"
run_load wssify-normal 1 127.0.0.1:19311 "$NORMAL" x25519 0 --only handshake-flood
start_wssify 127.0.0.1:19309 --handshake-priority low
LOWPRIO=$WSSIFY_PID
echo; echo "== handshake flood: wssify --handshake-priority low (pid $LOWPRIO)"
run_load wssify-lowprio 1 127.0.0.1:19309 "$LOWPRIO" x25519 0 --only handshake-flood
# Beside one busy process on wssify's core (here a shell loop; in life, a
# busy backend on the same host), with a settled connection open: the idle
# class gets almost none of that core, so `low` starves new handshakes, and
# the default must notice and run them on the connections' threads.
taskset -c 0 bash -c 'while :; do :; done' &
HOG=$!; PIDS+=($HOG)
for v in wssify:$WSSIFY_ADDR:$WSSIFY_MAIN wssify-normal:127.0.0.1:19311:$NORMAL wssify-lowprio:127.0.0.1:19309:$LOWPRIO; do
  IFS=: read -r name host port pid <<<"$v"
  echo; echo "== settled handshakes beside a busy process on the same core: $name (pid $pid)"
  # Starved handshakes time out and clients see resets: the load may give up.
  run_load "$name-neighbour" 1 "$host:$port" "$pid" x25519 0 --only settled-handshake ||
    echo "settled-handshake per_s=0 (the load gave up: its handshakes timed out)" | tee -a "$WORK/$name-neighbour.1.out"
done
kill "$HOG" "$LOWPRIO" "$NORMAL"
if [ -n "$BEFORE" ]; then
  echo; echo "== handshake flood: before (pid $WSSIFY_BEFORE)"
  run_load before 1 "$BEFORE_ADDR" "$WSSIFY_BEFORE" x25519 0 --only handshake-flood
  kill "$WSSIFY_BEFORE"
fi
stop_nginx main; kill "$WSSIFY_MAIN" "$WSSIFY_BUSY"

# Partial records on fresh processes (a heap that freed earlier phases'
# connections would hide growth): plain, then with MALLOC_PERTURB_ so RSS
# counts allocated bytes; nginx writes its title over its environment, so
# the load is told.
for perturb in off 165; do
  perturb_env=(); [ "$perturb" != off ] && perturb_env=(env MALLOC_PERTURB_="$perturb")
  start_nginx 127.0.0.1:19305 partial "${perturb_env[@]}"
  echo; echo "== partial records: fresh nginx (worker pid $NGINX_WORKER), MALLOC_PERTURB_ $perturb"
  run_load nginx 1 127.0.0.1:19305 "$NGINX_WORKER" x25519 0 --only partial-record --malloc-perturb "$perturb"
  stop_nginx partial
  WSSIFY_ENV=${perturb_env[1]:-} start_wssify 127.0.0.1:19306
  echo; echo "== partial records: fresh wssify (pid $WSSIFY_PID), MALLOC_PERTURB_ $perturb"
  run_load wssify 1 127.0.0.1:19306 "$WSSIFY_PID" x25519 0 --only partial-record --malloc-perturb "$perturb"
  kill "$WSSIFY_PID"
done

# The memory budget on fresh processes: wssify with a 64 MiB budget, with
# its default one, and nginx (no budget) for reference.
BUDGET_FLAGS=(--max-conns 10000 --stall-timeout 0)
start_wssify 127.0.0.1:19307 --max-memory 64MiB "${BUDGET_FLAGS[@]}"
echo; echo "== memory budget: fresh wssify --max-memory 64MiB (pid $WSSIFY_PID)"
run_load budget-64mib 1 127.0.0.1:19307 "$WSSIFY_PID" x25519 0 --only memory-budget
kill "$WSSIFY_PID"
start_wssify 127.0.0.1:19308 "${BUDGET_FLAGS[@]}"
echo; echo "== memory budget: fresh wssify, default budget (pid $WSSIFY_PID)"
run_load budget-default 1 127.0.0.1:19308 "$WSSIFY_PID" x25519 0 --only memory-budget
kill "$WSSIFY_PID"
start_nginx 127.0.0.1:19309 budget
echo; echo "== memory budget: fresh nginx, no budget (worker pid $NGINX_WORKER)"
run_load budget-nginx 1 127.0.0.1:19309 "$NGINX_WORKER" x25519 0 --only memory-budget
stop_nginx budget

start_wssify 127.0.0.1:19303
echo; echo "== wssify (pid $WSSIFY_PID), client default: X25519MLKEM768 post-quantum hybrid (one round)"
run_load wssify-pq 1 127.0.0.1:19303 "$WSSIFY_PID" default "$(idle_counts)" --only "memory,$RATES"
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
ratio() { # name label key [base] -> the median over rounds of name / base (nginx) within a round
  # Each round's pair ran back to back, so a slow spell of the VM weighs on
  # both sides of a ratio rather than on one side of the medians.
  local r n w
  for r in $(seq 1 "$ROUNDS"); do
    n=$(values "$WORK/${4:-nginx}.$r.out" "$2" "$3"); w=$(values "$WORK/$1.$r.out" "$2" "$3")
    if [ -n "$n" ] && [ -n "$w" ]; then
      awk -v n="$n" -v w="$w" 'BEGIN { if (n > 0) print w / n }'
    fi
  done | median
}
row() { # title label key unit
  local n w b q x y p z
  n=$(field nginx "$2" "$3"); w=$(field wssify "$2" "$3"); b=$(field wssify-busy "$2" "$3")
  q=$(field wssify-pq "$2" "$3"); p=$(field before "$2" "$3")
  x=$(ratio wssify "$2" "$3"); y=$(ratio wssify-busy "$2" "$3"); z=$(ratio wssify "$2" "$3" before)
  awk -v t="$1" -v n="$n" -v w="$w" -v b="$b" -v q="$q" -v u="$4" -v x="$x" -v y="$y" \
    -v p="$p" -v z="$z" -v before="$BEFORE" '
    function times(r) { return r == "" ? "" : sprintf("%.2fx", r) }
    BEGIN { printf "| %-34s | %10s %-5s | %10s %-5s | %6s | %10s %-5s | %6s | %10s %-5s |",
      t, n, u, w, u, times(x), b, (b == "" ? "" : u), times(y), q, (q == "" ? "" : u)
      if (before != "") printf " %10s %-5s | %6s |", p, (p == "" ? "" : u), times(z)
      printf "\n" }'
}
echo
echo "Same run, $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), terminator pinned to cpu 0, load + echo on cpu 1, $IDLE idle connections; rate figures are medians of $ROUNDS alternating rounds (the PQ column: one round):"
echo
echo "| per core                           | nginx stream     | wssify (X25519)  | ratio  | --busy-poll $BUSY_POLL | ratio  | wssify (PQ)      |"
echo "|------------------------------------|------------------|------------------|--------|------------------|--------|------------------|"
[ -n "$BEFORE" ] && echo "(two more columns: before = $BEFORE, and the ratio wssify / before within each round)"
row "memory per idle connection"        "memory .*idle_conns=$IDLE" per_conn_kib KiB
row "  growth per connection, last step" "memory .*idle_conns=$IDLE" marginal_kib KiB
row "bulk throughput, echoed"           throughput     mb_per_s     MB/s
row "full handshakes/s"                 full-handshake per_s        /s
row "  beside a settled connection"     settled-handshake per_s     /s
row "resumed handshakes/s"              resumed        per_s        /s
row "64-byte echo latency p50"          latency        p50_us       us
row "64-byte echo latency p99"          latency        p99_us       us
row "  1,000 a second: p50"             latency-paced  p50_us       us
row "  1,000 a second: p99"             latency-paced  p99_us       us
row "  1,000 a second: terminator CPU"  latency-paced  cpu_terminator %
row "partial record: per connection"    "partial-record .*malloc_perturb=off" partial_per_conn_kib KiB
row "  over idle (target < 1 KiB)"      "partial-record .*malloc_perturb=off" extra_per_conn_kib   KiB
row "  over idle, allocated (PERTURB)"  "partial-record .*malloc_perturb=[1-9][0-9]*" extra_per_conn_kib KiB
row "handshake flood: echo p99"         handshake-flood flood_p99_us us
row "  quiet p99, same run"             handshake-flood quiet_p99_us us
row "  flood / quiet (target <= 2x)"    handshake-flood p99_ratio    x
row "  full handshakes/s in the flood"  handshake-flood per_s        /s
one_run() { # title label key unit: the default, normal and low, one run each
  printf "| %-34s | %10s %-5s | %10s %-5s | %10s %-5s |\n" "$1" "$(field wssify "$2" "$3")" "$4" \
    "$(field wssify-normal "$2" "$3")" "$4" "$(field wssify-lowprio "$2" "$3")" "$4"
}
echo
echo "--handshake-priority (one run each, after the rounds; the default is auto):"
echo
echo "| per core                           | auto (default)   | normal           | low              |"
echo "|------------------------------------|------------------|------------------|------------------|"
one_run "handshake flood: echo p99"         handshake-flood flood_p99_us us
one_run "  quiet p99, same run"             handshake-flood quiet_p99_us us
one_run "  flood / quiet (target <= 2x)"    handshake-flood p99_ratio    x
one_run "  full handshakes/s in the flood"  handshake-flood per_s        /s
printf "| %-34s | %10s %-5s | %10s %-5s | %10s %-5s |\n" "settled handshakes/s, busy core" \
  "$(field wssify-neighbour settled-handshake per_s)" /s "$(field wssify-normal-neighbour settled-handshake per_s)" /s \
  "$(field wssify-lowprio-neighbour settled-handshake per_s)" /s
echo
echo "ratio = wssify / nginx within each round, median over the rounds: higher is better for throughput and handshakes, lower for memory, latency and CPU."
echo "partial record and handshake flood: one run each (fresh processes for partial records; the flood after the rounds)."
pass_ratio() { # key -> the median over rounds of wssify-pass / nginx-pass
  ratio wssify-pass throughput "$1" nginx-pass
}
echo "TLS passed through untouched to a TLS server on cpu 1 (nginx stream ssl_preread + proxy_pass, wssify --passthrough; both on cpu 0), bulk echo, medians of $ROUNDS rounds:"
echo
echo "| passthrough, per core               | nginx ssl_preread | wssify --passthrough | ratio  |"
echo "|-------------------------------------|-------------------|----------------------|--------|"
printf "| %-35s | %12s MB/s | %15s MB/s | %5.2fx |\n" "bulk throughput, echoed" \
  "$(field nginx-pass throughput mb_per_s)" "$(field wssify-pass throughput mb_per_s)" "$(pass_ratio mb_per_s)"
printf "| %-35s | %14s %% | %17s %% | %5.2fx |\n" "  CPU on cpu 0 (lower is better)" \
  "$(field nginx-pass throughput cpu_terminator)" "$(field wssify-pass throughput cpu_terminator)" "$(pass_ratio cpu_terminator)"
printf "| %-35s | %14s %% | %17s %% |        |\n" "  cpu 1 (load, TLS end, echo)" \
  "$(field nginx-pass throughput cpu_load_core)" "$(field wssify-pass throughput cpu_load_core)"
echo
budget_row() { # title key unit
  local a b c
  a=$(field budget-64mib memory-budget "$2"); b=$(field budget-default memory-budget "$2"); c=$(field budget-nginx memory-budget "$2")
  printf "| %-40s | %14s %-4s | %14s %-4s | %14s %-4s |\n" "$1" "$a" "$3" "$b" "$3" "$c" "$3"
}
echo "Memory budget: 2,000 clients with 4 KiB receive buffers stop reading while their backends push 2 MiB each, 20 bulk transfers of 16 MiB echo beside them, RSS sampled every 100 ms for 10 s, then every client reads and checks its bytes; one run each, on fresh processes:"
echo
echo "| stalled readers + bulk                   | wssify --max-memory 64MiB | wssify default budget | nginx (no budget)   |"
echo "|------------------------------------------|---------------------|---------------------|---------------------|"
budget_row "peak RSS over idle base (stalled)"        stall_peak_over_base_mib MiB
budget_row "peak RSS over idle base (whole phase)"    peak_over_base_mib       MiB
budget_row "bytes lost (must be 0)"                   bytes_lost               B
budget_row "new client: 64-byte echo"                 new_client_echo_ms       ms
budget_row "new client: connect + handshake + echo"   new_client_total_ms      ms
budget_row "20 bulk transfers done in"                bulk_s                   s
budget_row "drain (all readers resume)"               drain_s                  s
budget_row "kernel TCP memory growth (machine-wide)"  kernel_tcp_growth_mib    MiB
echo
# A rate measures the terminator only while its core is the one that is full.
for phase in throughput full-handshake resumed; do
  echo "cpu during $phase (medians): nginx $(field nginx "$phase" cpu_terminator)% with the load core at $(field nginx "$phase" cpu_load_core)%;" \
    "wssify $(field wssify "$phase" cpu_terminator)% with the load core at $(field wssify "$phase" cpu_load_core)%"
done

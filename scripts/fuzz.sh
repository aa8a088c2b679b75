#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target under fuzz/ in turn, on the stable
# toolchain (no nightly: `--sanitizer none`), for SECONDS each (default 600),
# one process at a time, and prints one verdict line per target:
#
#   first_bytes: no finding in 600 s: 1234567 runs (2057 exec/s), cov 5012, ft 9876, corpus 321
#   tls_stream: FINDING after 3 s: fuzz/artifacts/tls_stream/crash-... (panicked at ...)
#
# Inputs that add coverage go to fuzz/target/corpus/TARGET/ (not committed;
# kept between runs); the committed seeds in fuzz/corpus/TARGET/ are only
# read. With --merge, the new inputs that add coverage (edges, not hit
# counts) beyond the committed corpus are then added to it, named by hash,
# ready to commit: a few hundred files at most. A finding is
# left in fuzz/artifacts/TARGET/; see fuzz/README.md for what to do with it.
#
# The build has debug assertions and overflow checks (cargo-fuzz's default),
# the strictest. WSSIFY_FUZZ_RELEASE=1 builds without debug assertions but
# keeps overflow checks: for fuzzing past a finding that is only a debug
# assertion while its fix is pending. Extra libFuzzer flags can follow `--`.
#
# usage: scripts/fuzz.sh [--merge] [SECONDS] [TARGET...] [-- LIBFUZZER_FLAGS...]
# exit:  0 when no target had a finding, 1 otherwise, 2 on a usage or build error
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz" || exit 2

seconds=600
merge=0
targets=()
extra=()
while (($#)); do
    case "$1" in
        --merge) merge=1 ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *[!0-9]*) targets+=("$1") ;;
        *) seconds="$1" ;;
    esac
    shift
done
if ((${#targets[@]} == 0)); then
    for file in fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi

if ! cargo +stable fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo +stable install cargo-fuzz --locked || exit 2
fi

mode=()
if [[ "${WSSIFY_FUZZ_RELEASE:-0}" == 1 ]]; then
    mode=(--release)
    export RUSTFLAGS="${RUSTFLAGS:-} -Coverflow-checks=on"
fi
fuzz=(cargo +stable fuzz)

status=0
# A fresh clone has no target/ yet: the build logs go there.
mkdir -p target
for target in "${targets[@]}"; do
    if ! "${fuzz[@]}" build --sanitizer none "${mode[@]}" "$target" >"target/build-$target.log" 2>&1; then
        echo "$target: BUILD FAILED (see fuzz/target/build-$target.log)"
        status=2
        continue
    fi
    work="target/corpus/$target"
    mkdir -p "$work"
    log="target/fuzz-$target.log"
    started=$(date +%s)
    "${fuzz[@]}" run --sanitizer none "${mode[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    elapsed=$(($(date +%s) - started))
    if ((rc == 0)); then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
        cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$last")
        ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$last")
        corp=$(sed -n 's/.*corp: \([0-9]*\).*/\1/p' <<<"$last")
        echo "$target: no finding in $elapsed s: $runs runs ($rate exec/s), cov $cov, ft $ft, corpus $corp"
        if ((merge)); then
            # Hash-named files; named seeds already there stay as they are.
            "${fuzz[@]}" run --sanitizer none "${mode[@]}" "$target" "corpus/$target" "$work" -- \
                -set_cover_merge=1 -use_counters=0 >"target/merge-$target.log" 2>&1 ||
                echo "$target: merge failed (see fuzz/target/merge-$target.log)"
        fi
    else
        artifact=$(sed -n "s/.*Test unit written to \(.*\)/\1/p" "$log" | tail -1)
        why=$(grep -m1 -A1 "panicked at" "$log" | tr '\n' ' ')
        [[ -n "$why" ]] || why=$(grep -m1 -E "ALARM|out-of-memory|deadly signal|ERROR" "$log")
        echo "$target: FINDING after $elapsed s: ${artifact:-no artifact} (${why:-see fuzz/target/fuzz-$target.log}; log fuzz/target/fuzz-$target.log)"
        ((status == 0)) && status=1
    fi
done
exit "$status"

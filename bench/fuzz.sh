#!/usr/bin/env bash
# bench/fuzz.sh — build the libFuzzer targets and run each for a while.
#
# Usage: bench/fuzz.sh SECONDS [TARGET...]
#   Builds tests/fuzz/*.c with clang (-DSL_FUZZ=ON: ASan+UBSan+libFuzzer) into
#   build-fuzz/, then runs every target (or the ones named, e.g. "http" or
#   "fuzz_http") for SECONDS on a fresh copy of tests/fuzz/corpus/<name>/
#   (the seed corpus in the repo is never modified), SL_FUZZ_PARALLEL at a
#   time (default: the cores, at most 2). Prints a table: target,
#   execs, exec/s, crashes. Exits 1 if any target crashed, leaked, timed out
#   or could not run; the reproducer is kept under build-fuzz/crashes/<name>/
#   (replay: build-fuzz/fuzz_<name> build-fuzz/crashes/<name>/crash-...).
# Needs clang and its libFuzzer runtime (Debian: clang, libclang-rt-14-dev;
# scripts/install-deps installs them). Env: SL_FUZZ_JOBS (build -j, default 2),
# SL_FUZZ_MAX_LEN (libFuzzer -max_len for every target; default per target,
# below), ASAN_OPTIONS (default malloc_context_size=0: allocation stacks are
# half the cost of an input; replay a crash without it for full reports).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
BUILD="$REPO/build-fuzz"
SECS="${1:-}"
case "$SECS" in
    '' | *[!0-9]*) echo "usage: bench/fuzz.sh SECONDS [TARGET...]" >&2; exit 2 ;;
esac
shift
export ASAN_OPTIONS="${ASAN_OPTIONS:-malloc_context_size=0}"

# The largest input worth trying per target: enough for every limit the
# target's fuzz main sets (fuzz_http lowers the header limit to 512 bytes);
# longer inputs only make each run slower.
max_len_of() {
    case "$1" in
        auth) echo 256 ;;
        blobsig) echo 512 ;;
        http | multipart | sigv4) echo 1024 ;;
        config | bodies) echo 2048 ;;
        *) echo 4096 ;;
    esac
}

CC_FUZZ="$(command -v clang || true)"
[ -n "$CC_FUZZ" ] || { echo "fuzz: clang not found (scripts/install-deps)" >&2; exit 1; }

targets=()
if [ $# -gt 0 ]; then
    for t in "$@"; do targets+=("fuzz_${t#fuzz_}"); done
else
    for f in "$REPO"/tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi

mkdir -p "$BUILD"
echo "fuzz: building ${#targets[@]} targets into build-fuzz/" >&2
cmake -S "$REPO" -B "$BUILD" -DCMAKE_C_COMPILER="$CC_FUZZ" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSL_FUZZ=ON >"$BUILD/cmake.log" 2>&1 || { cat "$BUILD/cmake.log" >&2; exit 1; }
cmake --build "$BUILD" -j"${SL_FUZZ_JOBS:-2}" --target "${targets[@]}" >"$BUILD/build.log" 2>&1 ||
    { tail -n 40 "$BUILD/build.log" >&2; exit 1; }

RUN="$BUILD/run"
rm -rf "$RUN"
mkdir -p "$RUN" "$BUILD/crashes"
# run_one TARGET: fuzzes it; writes "$RUN/<name>.rc".
run_one() {
    local t="$1" name corpus crashes log
    name="${t#fuzz_}"
    corpus="$RUN/corpus-$name"
    crashes="$BUILD/crashes/$name"
    log="$RUN/$name.log"
    mkdir -p "$corpus" "$crashes"
    if [ -d "$REPO/tests/fuzz/corpus/$name" ]; then
        cp -r "$REPO/tests/fuzz/corpus/$name/." "$corpus/"
    fi
    touch "$log.start"
    echo "fuzz: $t for ${SECS}s" >&2
    "$BUILD/$t" -max_total_time="$SECS" -print_final_stats=1 \
        -max_len="${SL_FUZZ_MAX_LEN:-$(max_len_of "$name")}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$crashes/" "$corpus" >"$log" 2>&1
    echo $? >"$RUN/$name.rc"
}

# SL_FUZZ_PARALLEL targets at a time (default: one per core, at most 2), so
# the CI phase takes SECONDS x targets / parallel.
PAR="${SL_FUZZ_PARALLEL:-$(nproc 2>/dev/null || echo 1)}"
[ "$PAR" -ge 1 ] 2>/dev/null || PAR=1
[ -n "${SL_FUZZ_PARALLEL:-}" ] || [ "$PAR" -le 2 ] || PAR=2
pids=()
for t in "${targets[@]}"; do
    run_one "$t" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$PAR" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
wait

status=0
rows=()
for t in "${targets[@]}"; do
    name="${t#fuzz_}"
    log="$RUN/$name.log"
    crashes="$BUILD/crashes/$name"
    rc="$(cat "$RUN/$name.rc" 2>/dev/null || echo 1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    ncrash="$(find "$crashes" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' \) -newer "$log.start" 2>/dev/null | wc -l)"
    if [ "$rc" -ne 0 ]; then
        status=1
        [ "$ncrash" -gt 0 ] || ncrash="?"
        echo "fuzz: $t failed (exit $rc); log: $log" >&2
        grep -E '^(==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)' "$log" >&2
    fi
    rows+=("$(printf '%-16s %12s %10s %8s' "$t" "${execs:-?}" "${rate:-?}" "$ncrash")")
done

printf '\n%-16s %12s %10s %8s\n' target execs exec/s crashes
for r in "${rows[@]}"; do printf '%s\n' "$r"; done
exit $status

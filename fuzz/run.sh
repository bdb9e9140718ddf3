#!/bin/sh
# make fuzz: builds the targets (fuzz/build.sh), replays the reproducers
# of every bug they found (fuzz/regressions/<name>/), then fuzzes each
# target for FUZZ_SECONDS from its seeds (fuzz/corpus/<name>/) and the
# corpus of earlier runs (build/fuzz/corpus/<name>/).  Fails on the first
# finding; its input is left in build/fuzz/findings/<name>/.
#
#   fuzz/run.sh [name ...]       default: every fuzz/fuzz_<name>.c
#
#   FUZZ_SECONDS   how long each target runs (default 30)
#   FUZZ_FLAGS     more libFuzzer flags, e.g. -jobs=2 or -seed=1

set -e

top=$(cd "$(dirname "$0")/.." && pwd)
build=${FUZZ_BUILD:-$top/build/fuzz}
seconds=${FUZZ_SECONDS:-30}

if [ $# -eq 0 ]; then
    set -- $(cd "$top/fuzz" && ls fuzz_*.c | sed -e 's/^fuzz_//' -e 's/\.c$//')
fi

sh "$top/fuzz/build.sh" "$@"

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

summary=
failed=

for name in "$@"; do
    bin=$build/fuzz_$name
    found=$build/findings/$name

    mkdir -p "$build/corpus/$name" "$found"

    # the largest input worth trying: the store's answer buffer is 16k
    case $name in
        http_answer) max_len=17000 ;;
        state)       max_len=65536 ;;
        *)           max_len=8192 ;;
    esac

    if [ -d "$top/fuzz/regressions/$name" ]; then
        echo "fuzz: $name: replaying fuzz/regressions/$name" >&2

        if ! "$bin" -artifact_prefix="$found/" \
                "$top/fuzz/regressions/$name"/* > "$build/$name.replay.log" 2>&1
        then
            grep -v '^INFO' "$build/$name.replay.log" | tail -n 40 >&2
            summary="$summary
    $name: a fixed bug is back, see fuzz/regressions/$name/"
            failed="$failed $name"
            continue
        fi
    fi

    echo "fuzz: $name: fuzzing for ${seconds}s" >&2

    if "$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
            -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$found/" $FUZZ_FLAGS \
            "$build/corpus/$name" "$top/fuzz/corpus/$name" \
            > "$build/$name.log" 2>&1
    then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' \
               "$build/$name.log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' \
               "$build/$name.log")
        summary="$summary
    $name: $runs inputs in ${seconds}s, $rate/s, no finding"
    else
        grep -v '^#' "$build/$name.log" | tail -n 40 >&2
        summary="$summary
    $name: FINDING, see $found/"
        failed="$failed $name"
    fi
done

echo "fuzz:$summary" >&2

if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed" >&2
    exit 1
fi

#!/bin/sh
# smoke.sh BUILD SECONDS TARGET... - runs each fuzz target for a short
# budget from its seeds, two at a time (the CI machine has two cores).
# A crash, leak, timeout or out-of-memory of any target fails the run; the
# reproducer is left in BUILD/crashes/<target>/.
set -u
build=$1 secs=$2
shift 2
status=0
mkdir -p "$build/crashes"

run_one() {
    t=$1
    # A fresh corpus directory each time (new finds go there and are
    # dropped): libFuzzer runs every input it is given before it looks at
    # the clock, so a corpus that grew over earlier runs would blow the
    # budget.  Long runs keep theirs (see the Makefile).
    work="$build/smoke-corpus/$t"
    rm -rf "$work"
    mkdir -p "$work" "$build/crashes/$t"
    # vhdx puts its tables at 1 MiB boundaries: it needs longer inputs.
    maxlen=262144
    [ "$t" = vhdx ] && maxlen=4194304
    if "$build/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len="$maxlen" -print_final_stats=0 \
        -artifact_prefix="$build/crashes/$t/" \
        "$work" "$build/seeds/$t" >"$build/crashes/$t.log" 2>&1; then
        echo "fuzz $t: ok ($(grep -c '^#' "$build/crashes/$t.log") progress lines)"
        return 0
    fi
    echo "fuzz $t: FAILED, see $build/crashes/$t.log:"
    grep -E 'ERROR|SUMMARY|Test unit written' "$build/crashes/$t.log" | head -5
    return 1
}

while [ $# -gt 0 ]; do
    a=$1
    shift
    if [ $# -gt 0 ]; then
        b=$1
        shift
        run_one "$a" & pa=$!
        run_one "$b" || status=1
        wait $pa || status=1
    else
        run_one "$a" || status=1
    fi
done
exit $status

#!/bin/sh
# make bench: time `instar info` against `qemu-img info` on a set of
# freshly created images.  Arguments go to bench_info.py (--runs N,
# --image NAME, --output human|json|both, --keep, --json FILE, --help).
# BENCH_RUNS=N sets the number of runs without arguments (default 30).
set -e
here=$(cd "$(dirname "$0")" && pwd)
# Debian's python3 (a python3 earlier on PATH is fine too: stdlib only).
if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=python3; fi
if [ ! -x "$here/../instar" ]; then
    echo "bench: build instar first (make)" >&2
    exit 1
fi
"$py" "$here/bench_info.py" "$@"
"$py" "$here/bench_read.py"
"$py" "$here/bench_check.py"
"$py" "$here/bench_convert.py"

#!/bin/sh
# The whole benchmark run behind docs/benchmarks.md, then the plots in docs/img.
#
#   bench/run_all.sh            # about 40 minutes on 2 cores
#   bench/run_all.sh --quick    # a smoke run of every script (about 5 minutes)
#
# Each script waits (up to the given seconds) for the 1-minute load average to drop to
# 1.5 before it starts, and records the load it ran under.  Nothing is installed: a
# missing tool (wrk, etcd, pysyncobj, py-spy, matplotlib) is named with how to get it.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "$1" = "--quick" ]; then
    $PY bench/cluster_http.py --quick
    $PY bench/library.py --quick
    $PY bench/failover.py --quick
    $PY bench/shop.py --quick
    $PY bench/plots.py --results-suffix=-quick --out "${TMPDIR:-/tmp}/txraft-bench-img"
    exit 0
fi
$PY bench/cluster_http.py --profile --wait-quiet 1800
$PY bench/library.py --wait-quiet 600
$PY bench/failover.py --wait-quiet 600
$PY bench/shop.py --wait-quiet 600
$PY bench/plots.py

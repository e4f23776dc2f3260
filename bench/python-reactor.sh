#!/bin/sh
# Stand-in for the interpreter that txraft.tools.localcluster runs as "PYTHON -c CODE ARGS...":
# runs the same twistd on Twisted's asyncio reactor (on uvloop when
# TXRAFT_BENCH_REACTOR=uvloop).  The benchmarks' --reactor option sets it up; see
# bench/common.py:node_python.
shift 2
exec "${TXRAFT_BENCH_PYTHON:-python3}" -c '
import asyncio, os
if os.environ.get("TXRAFT_BENCH_REACTOR") == "uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
from twisted.internet import asyncioreactor
asyncioreactor.install(asyncio.new_event_loop())
from twisted.scripts.twistd import run
run()
' "$@"

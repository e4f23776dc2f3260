"""Library-level proposals on a 3-node cluster: txraft's ``RaftNode.propose`` vs PySyncObj.

Both systems run as 3 separate processes on 127.0.0.1 and the leader's process itself
keeps K = 1, 16, 256 proposals in flight (closed loop: a new one as each completes), the
shape of PySyncObj's own benchmark (``benchmarks/testobj_delay.py``: a ``@replicated``
method called in-process with a callback, ``appendEntriesUseBatch=False``).

* txraft: ``twistd raftnode --app bench.libapp:application`` (real UDP, the real
  write-ahead log with fsync, the real SQLite key-value state machine; ``--state-machine
  memory`` swaps in a dict to separate apply cost); the leader runs the loop on
  ``POST /bench/propose`` and answers with the result.
* PySyncObj: this script in ``--pysyncobj-node`` mode, one process per node, a
  ``@replicated put(key, value)`` on a dict, ``SyncObjConf(appendEntriesUseBatch=False)``,
  everything else default (in-memory journal: it never fsyncs).

Latency is from the call to the callback (committed and applied on the leader); writes/s
are completions in the measured window, cross-checked by the leader's applied count.
K values alternate between the systems.

Usage::

    python bench/library.py                  # K = 1, 16, 256; 10 s each after 2 s warm-up
    python bench/library.py --quick          # smoke run
    python bench/library.py --inflight 256 --seconds 20 --repeat 3

It installs nothing; without ``pysyncobj`` it measures txraft alone and says how to get it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import FSYNC, fmt, http, print_table, ratio, require  # noqa: E402


# ------------------------------------------------------------------ PySyncObj node


def pysyncobj_node(self_addr: str, partners: List[str]) -> None:
    """One PySyncObj node; commands on stdin, answers on stdout (one line each)."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Store(SyncObj):
        def __init__(self):
            super().__init__(self_addr, partners, SyncObjConf(appendEntriesUseBatch=False))
            self.__data = {}
            self.__applied = 0

        @replicated
        def put(self, key, value):
            self.__data[key] = value
            self.__applied += 1

        def applied(self):
            return self.__applied

    store = Store()

    def answer(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "status":
            answer("STATUS %s" % ("leader" if store._isLeader() else
                                  "follower" if store._getLeader() is not None else "none"))
        elif words[0] == "run":
            if not store._isLeader():
                answer("NOTLEADER")
                continue
            inflight, seconds, warmup, size = (int(words[1]), float(words[2]),
                                               float(words[3]), int(words[4]))
            answer("RESULT " + json.dumps(pysyncobj_run(store, FAIL_REASON, inflight, seconds,
                                                        warmup, size)))
    os._exit(0)


def pysyncobj_run(store, FAIL_REASON, inflight, seconds, warmup, size) -> Dict[str, Any]:
    now = time.perf_counter
    value = "%0*x" % (size, random.randrange(16 ** size))  # a string of `size` bytes
    keys = ["lib%d" % i for i in range(1000)]
    start = now()
    t_measure, t_end = start + warmup, start + warmup + seconds
    lock = threading.Lock()
    state = {"outstanding": 0, "sent": 0, "completed": 0, "errors": 0}
    latencies: List[float] = []

    def submit():
        with lock:
            state["outstanding"] += 1
            i = state["sent"]
            state["sent"] += 1
        store.put(keys[i % 1000], value, callback=functools.partial(done, now()))

    def done(t0, result, error):
        t1 = now()
        with lock:
            state["outstanding"] -= 1
            if error == FAIL_REASON.SUCCESS:
                if t_measure <= t1 <= t_end:
                    state["completed"] += 1
                    latencies.append(t1 - t0)
            else:
                state["errors"] += 1
        if t1 < t_end:
            submit()

    for _ in range(inflight):
        submit()
    time.sleep(max(0.0, t_measure - now()))
    a0, m0 = store.applied(), now()
    time.sleep(max(0.0, t_end - now()))
    a1, m1 = store.applied(), now()
    deadline = now() + 10
    while state["outstanding"] and now() < deadline:
        time.sleep(0.01)
    out = {"inflight": inflight, "seconds": seconds, "warmup": warmup, "value_size": size,
           "completed": state["completed"], "errors": state["errors"],
           "proposals_sent": state["sent"],
           "completed_per_s": round(state["completed"] / seconds, 1),
           "applied_per_s": round((a1 - a0) / (m1 - m0), 1)}
    out.update(common.latency_summary(latencies))
    return out


class PySyncObjCluster:
    def __init__(self, size: int = 3):
        ports: List[int] = []
        for _ in range(size):
            ports.append(common.free_port(avoid=ports))
        self.addrs = ["127.0.0.1:%d" % p for p in ports]
        self.procs: List[subprocess.Popen] = []
        for addr in self.addrs:
            partners = [a for a in self.addrs if a != addr]
            self.procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--pysyncobj-node", addr] + partners,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, bufsize=1))

    def ask(self, proc: subprocess.Popen, line: str) -> str:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    def leader(self, timeout: float = 30.0) -> subprocess.Popen:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answers = [self.ask(p, "status") for p in self.procs]
            leaders = [p for p, a in zip(self.procs, answers) if a == "STATUS leader"]
            if len(leaders) == 1 and all(a != "STATUS none" for a in answers):
                return leaders[0]
            time.sleep(0.2)
        raise TimeoutError("PySyncObj elected no leader")

    def pids(self) -> Dict[str, int]:
        return {"p%d" % i: p.pid for i, p in enumerate(self.procs, 1)}

    def run(self, inflight: int, seconds: float, warmup: float, size: int) -> Dict[str, Any]:
        for _ in range(5):
            leader = self.leader()
            answer = self.ask(leader, "run %d %g %g %d" % (inflight, seconds, warmup, size))
            if answer.startswith("RESULT "):
                result = json.loads(answer[len("RESULT "):])
                result["leader_pid"] = leader.pid
                return result
        raise RuntimeError("PySyncObj: the leader kept changing")

    def stop(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# ---------------------------------------------------------------------- txraft


class TxraftCluster:
    def __init__(self, root: str, state_machine: str, python: str, extra: List[str]):
        from txraft.tools.localcluster import LocalCluster

        app = "bench.libapp:" + ("application" if state_machine == "kv"
                                 else "memory_application")
        self.cluster = LocalCluster(3, root, app=app, python=python, extra_args=extra)
        self.cluster.start_all()
        self.cluster.wait_for_leader(timeout=60)

    def pids(self) -> Dict[str, int]:
        return {i: n.process.pid for i, n in self.cluster.nodes.items() if n.alive()}

    def run(self, inflight: int, seconds: float, warmup: float, size: int) -> Dict[str, Any]:
        for _ in range(5):
            leader = self.cluster.wait_for_leader(timeout=30)
            r = http("POST", "%s/bench/propose?inflight=%d&seconds=%g&warmup=%g&size=%d" % (
                self.cluster.url(leader), inflight, seconds, warmup, size),
                timeout=seconds + warmup + 60)
            if r.status == 200:
                result = r.json()
                result["leader_pid"] = self.cluster.nodes[leader].process.pid
                return result
            if r.status != 409:
                raise RuntimeError("txraft bench driver failed: %r" % (r,))
        raise RuntimeError("txraft: the leader kept changing")

    def stop(self) -> None:
        self.cluster.stop_all()


def measure(system, name: str, inflight: int, args) -> Dict[str, Any]:
    meter = common.CPUMeter({"node:" + n: p for n, p in system.pids().items()})
    load = common.loadavg()
    result = system.run(inflight, args.seconds, args.warmup, args.value_size)
    cpu = meter.stop()
    leader_key = next((k for k, p in meter.pids.items() if p == result.get("leader_pid")), None)
    result.update({
        "system": name, "nodes": 3, "loadavg_before": load, "loadavg_after": common.loadavg(),
        "cpu_pct": cpu, "leader_cpu_pct": cpu.get(leader_key),
        "writes_per_s": result["completed_per_s"],
    })
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--pysyncobj-node":
        pysyncobj_node(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflight", default="1,16,256", help="proposals in flight [1,16,256]")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--systems", default="txraft,pysyncobj")
    parser.add_argument("--state-machine", choices=("kv", "memory"), default="kv",
                        help="txraft's state machine: the SQLite key-value one (fsync on "
                             "apply) or an in-memory dict [kv]")
    parser.add_argument("--reactor", choices=("default", "asyncio", "uvloop"),
                        default="default",
                        help="txraft nodes' reactor: twistd's default (epoll), or Twisted's "
                             "asyncio reactor, optionally on uvloop [default]")
    parser.add_argument("--python", default=sys.executable, help="interpreter for txraft nodes")
    parser.add_argument("--txraft-args", default="", help="extra 'twistd raftnode' options")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s rows, 1 s warm-up")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    common.exit_cleanly_on_sigterm()
    if args.quick:
        args.seconds, args.warmup = 2.0, 1.0
    name = args.name or "library" + ("-memory" if args.state_machine == "memory" else "") + (
        "-" + args.reactor if args.reactor != "default" else "") + (
        "-quick" if args.quick else "")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "pysyncobj" in systems and require("pysyncobj", needed=False) is None:
        systems.remove("pysyncobj")
    ks = [int(k) for k in args.inflight.split(",")]
    node_python = common.node_python(args.reactor, args.python)
    load_at_start = common.wait_until_quiet(args.max_load, args.wait_quiet)
    machine = common.machine()
    print(common.describe(machine))
    fsync = dict((s, FSYNC[s]) for s in systems)
    if "txraft" in fsync and args.state_machine == "memory":
        fsync["txraft"] = "yes for the Raft log; the in-memory state machine does not fsync"
    for s, text in fsync.items():
        print("fsync, %s: %s" % (s, text))
    root = common.scratch_dir("txraft-bench-lib-")
    running: Dict[str, Any] = {}
    runs: List[Dict[str, Any]] = []
    started = time.time()
    try:
        for s in systems:
            if s == "txraft":
                running[s] = TxraftCluster(os.path.join(root, "txraft"), args.state_machine,
                                           node_python, args.txraft_args.split())
            else:
                running[s] = PySyncObjCluster(3)
        n = 0
        for rep in range(args.repeat):
            for k in ks:
                order = list(running.items())
                if n % 2:
                    order.reverse()
                n += 1
                for s, system in order:
                    row = measure(system, s, k, args)
                    row["repeat"] = rep
                    runs.append(row)
                    print("  %-9s K=%-4d %8s writes/s  p50 %7s ms  p99 %7s ms  p99.9 %7s ms  "
                          "errors %d  leader cpu %s%%  load %s" % (
                              s, k, fmt(row["writes_per_s"], 0), fmt(row.get("p50_ms"), 2),
                              fmt(row.get("p99_ms"), 1), fmt(row.get("p999_ms"), 1),
                              row["errors"], fmt(row["leader_cpu_pct"], 0),
                              row["loadavg_after"][0]), flush=True)
    finally:
        for system in running.values():
            system.stop()
        shutil.rmtree(root, ignore_errors=True)

    rows = []
    for s in systems:
        for k in ks:
            rs = sorted((r for r in runs if r["system"] == s and r["inflight"] == k),
                        key=lambda r: r["writes_per_s"])
            if rs:
                chosen = dict(rs[(len(rs) - 1) // 2])
                chosen["writes_per_s_all"] = [r["writes_per_s"] for r in rs]
                rows.append(chosen)
    index = {(r["system"], r["inflight"]): r for r in rows}
    table, ratios = [], []
    for k in ks:
        t, p = index.get(("txraft", k)), index.get(("pysyncobj", k))
        r = ratio(t and t["writes_per_s"], p and p["writes_per_s"])
        ratios.append({"inflight": k, "throughput_ratio": r,
                       "p99_ratio": ratio(t and t.get("p99_ms"), p and p.get("p99_ms"))})

        def cols(x):
            if x is None:
                return ["-"] * 5
            return [fmt(x["writes_per_s"], 0), fmt(x.get("p50_ms"), 2), fmt(x.get("p99_ms"), 1),
                    fmt(x.get("p999_ms"), 1), fmt(x["leader_cpu_pct"], 0)]

        table.append([k] + cols(t) + cols(p) + [fmt(r, 2)])
    print()
    print_table(["K", "txraft/s", "p50", "p99", "p99.9", "ldr%", "pysyncobj/s", "p50", "p99",
                 "p99.9", "ldr%", "ratio"], table,
                title="library-level proposals, 3 nodes (latency ms; ldr% = leader CPU, % of "
                      "one core; ratio = txraft/PySyncObj)")
    goals = {}
    t, p = index.get(("txraft", 256)), index.get(("pysyncobj", 256))
    if t and p:
        r = ratio(t["writes_per_s"], p["writes_per_s"])
        goals["library_256_inflight"] = {
            "ratio": r, "txraft_p99_ms": t.get("p99_ms"), "pysyncobj_p99_ms": p.get("p99_ms"),
            "met": bool(r is not None and r >= 2.0 and t.get("p99_ms", 1e9) <= p.get("p99_ms", 0))}
        print("goal (>= 2x PySyncObj at K=256 with an equal or lower p99): %s" %
              goals["library_256_inflight"])
    common.save_results(name, {
        "machine": machine, "loadavg_at_start": load_at_start, "loadavg_at_end": common.loadavg(),
        "elapsed_s": round(time.time() - started), "config": vars(args), "fsync": fsync,
        "rows": rows, "all_runs": runs, "ratios": ratios, "goals": goals,
        "command": shlex.join(["python"] + sys.argv),
    })


if __name__ == "__main__":
    main()

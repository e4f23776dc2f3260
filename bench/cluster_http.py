"""Cluster writes and reads over HTTP: txraft's key-value app against etcd's HTTP gateway.

Real processes on 127.0.0.1: a txraft cluster of ``twistd raftnode --app kv`` nodes and,
when ``etcd`` is installed, an etcd 3.4 cluster of the same size driven through its
HTTP/JSON gateway (``/v3/kv/put`` with base64 keys and values).  ``wrk`` (with
``bench/wrk.lua``) keeps 1, 16 and 64 keep-alive connections busy; each row runs after a
warm-up and the txraft and etcd rows alternate, so both see the same machine.

* committed writes/s are counted by the cluster: the leader's applied index (txraft) or
  revision (etcd) before and after the run, divided by the wall time; latency
  percentiles come from wrk;
* ``write`` goes to the leader, ``write-follower`` to a follower (txraft forwards it over
  HTTP to the leader, etcd over its Raft transport); ``read`` is linearizable (ReadIndex in
  both systems), ``read-stale`` is a local read (``?consistency=stale``, etcd's
  ``serializable``), both against the leader;
* CPU used by each node and by wrk during the run, and the resident memory of idle nodes.

``--against DIR`` (repeatable, or comma-separated) adds the txraft of another checkout
``DIR`` (e.g. a clone of an older commit) as the system ``txraft@<its short commit>``,
interleaved with this tree's rows as etcd's are, so before and after see the same machine;
each row then shows after/before = this tree / the other.  Its nodes run from ``DIR``
alone (``PYTHONPATH=DIR``, working directory ``DIR``, that tree's twistd plugin; checked
from what each node reports), with ``--python-against`` or else ``--python``; nothing of
``DIR`` is imported here, so any layout with the same ``twistd raftnode`` options works.

Both systems fsync every acknowledged write (see ``FSYNC`` in ``bench/common.py``).

Usage::

    python bench/cluster_http.py                 # the full run (about 15 minutes)
    python bench/cluster_http.py --quick         # a smoke run (about 2 minutes)
    python bench/cluster_http.py --sizes 3 --connections 64 --workloads write --profile
    git clone -q . /tmp/before && git -C /tmp/before checkout -q dac2096
    python bench/cluster_http.py --sizes 3 --workloads write --connections 64 --repeat 3 \
        --systems txraft --against /tmp/before

It installs nothing: without ``wrk`` it stops and says how to get it; without ``etcd`` it
measures txraft alone and says so.
"""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import (  # noqa: E402
    FSYNC, CPUMeter, EtcdCluster, fmt, http, print_table, ratio, require, run_wrk,
)
from txraft.tools.localcluster import LocalCluster  # noqa: E402

WORKLOADS = {
    # name: (txraft wrk mode, etcd wrk mode, which node, counted by the cluster)
    "write": ("kv-put", "etcd-put", "leader", True),
    "write-follower": ("kv-put", "etcd-put", "follower", True),
    "read": ("kv-get", "etcd-get", "leader", False),
    "read-stale": ("kv-get-stale", "etcd-get-stale", "leader", False),
}
READ_KEYS = 256


def retry(call, status: int, what: str, attempts: int = 10):
    """``call()`` until it answers ``status`` (a loaded machine may move the leader)."""
    for _ in range(attempts):
        r = call()
        if r.status == status:
            return r
        time.sleep(0.2)
    raise RuntimeError("%s failed: %r" % (what, r))


def csv_ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class System:
    """One running cluster (txraft or etcd) behind the same small interface."""

    name = ""

    def leader(self) -> str:
        raise NotImplementedError

    def url(self, node: str) -> str:
        raise NotImplementedError

    def pids(self) -> Dict[str, int]:
        raise NotImplementedError

    def counter(self, leader: str) -> Dict[str, Any]:
        raise NotImplementedError

    def followers(self, leader: str) -> List[str]:
        return [n for n in self.pids() if n != leader]

    def preload(self, leader: str, keys: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def _start(cluster: Any) -> str:
    """Start every member and return the leader; a cluster that elects none is stopped
    (its system is never registered, so nothing else would stop its processes)."""
    try:
        cluster.start_all()
        return cluster.wait_for_leader(timeout=60)
    except BaseException:
        cluster.stop_all()
        raise


class Txraft(System):
    name = "txraft"

    def __init__(self, size: int, root: str, extra_args: List[str], python: str, app: str,
                 name: str = "txraft", tree: Optional[str] = None, reactor: str = "default"):
        """``tree``: run the txraft of that checkout instead (``--against``)."""
        self.name = name
        self.tree = tree
        directory = os.path.join(root, name.replace("@", "-at-"))
        if tree is None:
            self.cluster = LocalCluster(size, directory, app=app, extra_args=extra_args,
                                        python=python)
        else:
            self.cluster = common.TreeCluster(size, directory, tree, reactor=reactor, app=app,
                                              extra_args=extra_args, python=python)
        self._leader = _start(self.cluster)
        if tree is not None:
            try:
                self.cluster.check_nodes()
            except BaseException:
                self.cluster.stop_all()
                raise

    def leader(self) -> str:
        self._leader = self.cluster.wait_for_leader(timeout=30)
        return self._leader

    def url(self, node: str) -> str:
        return self.cluster.url(node)

    def pids(self) -> Dict[str, int]:
        return {i: n.process.pid for i, n in self.cluster.nodes.items() if n.alive()}

    def counter(self, leader: str) -> Dict[str, Any]:
        s = common.txraft_leader_status(self.cluster, leader)
        counters = s.get("counters", {})  # (another tree's node may not count them all)
        return {"count": s["applied_index"], "term": s["term"], "role": s["role"],
                "reads": counters.get("reads", 0),
                "fsync_batches": counters.get("fsync_batches", 0),
                "entries_persisted": counters.get("entries_persisted", 0),
                "messages_sent": counters.get("messages_sent", 0)}

    def preload(self, leader: str, keys: int) -> None:
        for i in range(keys):
            retry(lambda: http("PUT", "%s/kv/r%d" % (self.url(self.leader()), i), b"x" * 64),
                  204, "txraft preload")

    def stop(self) -> None:
        self.cluster.stop_all()


class Etcd(System):
    name = "etcd"

    def __init__(self, size: int, root: str, election_ms: int, heartbeat_ms: int):
        self.cluster = EtcdCluster(size, os.path.join(root, "etcd"),
                                   election_timeout_ms=election_ms, heartbeat_ms=heartbeat_ms)
        self._leader = _start(self.cluster)

    def leader(self) -> str:
        self._leader = self.cluster.wait_for_leader(timeout=30)
        return self._leader

    def url(self, node: str) -> str:
        return self.cluster.url(node)

    def pids(self) -> Dict[str, int]:
        return self.cluster.pids()

    def counter(self, leader: str) -> Dict[str, Any]:
        s = self.cluster.members[leader].status(timeout=5.0)
        if s is None:
            raise RuntimeError("etcd leader %s does not answer" % leader)
        return {"count": s["revision"], "term": s["term"], "raft_index": s["raft_index"],
                "role": "leader" if s["leader"] == s["member_id"] else "follower"}

    def preload(self, leader: str, keys: int) -> None:
        value = base64.b64encode(b"x" * 64).decode()
        for i in range(keys):
            body = ('{"key":"%s","value":"%s"}' % (
                base64.b64encode(b"r%d" % i).decode(), value)).encode()
            retry(lambda: http("POST", self.url(self.leader()) + "/v3/kv/put", body,
                               {"Content-Type": "application/json"}), 200, "etcd preload")

    def stop(self) -> None:
        self.cluster.stop_all()


def idle_memory(system: System) -> Dict[str, Any]:
    """RSS, PSS and USS (MiB) of every node."""
    return {node: common.memory_mib(pid) for node, pid in sorted(system.pids().items())}


def run_row(system: System, nodes: int, workload: str, connections: int,
            args: argparse.Namespace, profile_dir: Optional[str] = None) -> Dict[str, Any]:
    """One measured row; run again (up to twice) if the leader changed during it."""
    for attempt in range(3):
        row = _run_row(system, nodes, workload, connections, args, profile_dir)
        row["attempt"] = attempt + 1
        if not row["leader_changed"]:
            break
        print("  (%s: the leader changed during the run; measuring again)" % system.name,
              file=sys.stderr, flush=True)
    return row


def _run_row(system: System, nodes: int, workload: str, connections: int,
             args: argparse.Namespace, profile_dir: Optional[str] = None) -> Dict[str, Any]:
    tx_mode, etcd_mode, target, counted = WORKLOADS[workload]
    txraft = system.name.startswith("txraft")
    mode = tx_mode if txraft else etcd_mode
    leader = system.leader()
    node = leader if target == "leader" else system.followers(leader)[0]
    url = system.url(node)
    options = ["size=%d" % args.value_size]
    if workload.startswith("read"):
        options += ["prefix=r", "keys=%d" % READ_KEYS]
    else:
        options += ["prefix=w", "keys=%d" % args.keys]
    if args.warmup > 0:
        run_wrk(url, mode, connections, args.warmup, args.wrk_threads, options)
    before = system.counter(leader)
    pids = {"node:" + n: p for n, p in system.pids().items()}
    meter = CPUMeter(pids)
    spies: List[subprocess.Popen] = []

    def started(pid: int) -> None:
        if profile_dir is not None:
            spies.extend(start_profilers(system, leader, node, args.seconds, profile_dir))

    load_before = common.loadavg()
    t0 = time.monotonic()
    result = run_wrk(url, mode, connections, args.seconds, args.wrk_threads, options,
                     on_start=started)
    t1 = time.monotonic()
    after = system.counter(leader)
    cpu = meter.stop()
    for spy in spies:
        spy.wait(60)
    elapsed = t1 - t0
    row: Dict[str, Any] = {
        "system": system.name, "nodes": nodes, "workload": workload,
        "connections": connections, "target": target, "seconds": args.seconds,
        "loadavg_before": load_before, "loadavg_after": common.loadavg(),
        "leader_changed": after["term"] != before["term"] or after["role"] != "leader",
        "cpu_pct": cpu,
        "leader_cpu_pct": cpu.get("node:" + leader),
        "cluster_cpu_pct": round(sum(v for k, v in cpu.items()
                                     if k.startswith("node:") and v is not None), 1),
    }
    row.update(result)
    good = result["requests"] - result["errors"]["status"]
    ops_total = (after["count"] - before["count"]) if counted else good
    if counted:
        row["committed"] = after["count"] - before["count"]
        row["ops_per_s"] = round(row["committed"] / elapsed, 1)
        row["counted_by"] = "cluster (leader's %s delta)" % (
            "applied index" if txraft else "revision")
        if txraft:
            batches = after["fsync_batches"] - before["fsync_batches"]
            row["leader_fsync_batches_per_s"] = round(batches / elapsed, 1)
            row["leader_entries_per_fsync"] = round(
                (after["entries_persisted"] - before["entries_persisted"]) / batches, 2
            ) if batches else None
    else:
        row["ops_per_s"] = round(good / result["duration_s"], 1)
        row["counted_by"] = "client (wrk, non-error answers)"
        if txraft:
            row["leader_read_barriers"] = after["reads"] - before["reads"]
    # CPU per operation is far less sensitive to other load on the machine than ops/s.
    if ops_total > 0 and row["leader_cpu_pct"] is not None:
        row["leader_cpu_us_per_op"] = round(row["leader_cpu_pct"] / 100 * elapsed / ops_total * 1e6, 1)
        row["cluster_cpu_us_per_op"] = round(row["cluster_cpu_pct"] / 100 * elapsed / ops_total * 1e6, 1)
    return row


def start_profilers(system: System, leader: str, node: str, seconds: float,
                    out_dir: str) -> List[subprocess.Popen]:
    """py-spy on the leader and one follower for the run (raw collapsed stacks)."""
    spy = require("py-spy", needed=False)
    if spy is None:
        return []
    procs = []
    pids = system.pids()
    targets = [("leader", leader)] + [("follower", f) for f in system.followers(leader)[:1]]
    for role, name in targets:
        out = os.path.join(out_dir, "profile-http-write-%s.txt" % role)
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pids[name]), "--duration", str(max(1, int(seconds))),
             "--rate", "200", "--idle", "--format", "raw", "--output", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def median_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """With --repeat, keep per key the run whose throughput is the median."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("profiled"):
            continue
        groups.setdefault((r["system"], r["nodes"], r["workload"], r["connections"]), []).append(r)
    out = []
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["ops_per_s"])
        chosen = dict(rs[(len(rs) - 1) // 2])
        chosen["repeats"] = len(rs)
        chosen["ops_per_s_all"] = [r["ops_per_s"] for r in rs]
        out.append(chosen)
    return out


def after_before(x: Optional[Dict[str, Any]], y: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """This tree's row ``x`` over another tree's ``y``: throughput, p50, p99, leader CPU."""
    return {"ops_per_s": ratio(x and x["ops_per_s"], y and y["ops_per_s"]),
            "p50_ms": ratio(x and x["p50_ms"], y and y["p50_ms"]),
            "p99_ms": ratio(x and x["p99_ms"], y and y["p99_ms"]),
            "leader_cpu_us_per_op": ratio(x and x.get("leader_cpu_us_per_op"),
                                          y and y.get("leader_cpu_us_per_op"))}


def this_tree() -> str:
    rev = common.tree_revision(common.REPO_ROOT)
    return rev["short"] + ("-dirty" if rev["dirty"] else "")


def against_report(rows: List[Dict[str, Any]], all_runs: List[Dict[str, Any]],
                   against: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Print this tree against each ``--against`` tree, row by row; return the ratios.

    after/before is this tree's median row over the other tree's; "per repeat" pairs the
    two runs of the same repeat, which ran back to back."""
    index = {(r["system"], r["nodes"], r["workload"], r["connections"]): r for r in rows}
    runs = {(r["system"], r["nodes"], r["workload"], r["connections"], r.get("repeat")): r
            for r in all_runs if not r.get("profiled")}
    keys = sorted({(r["workload"], r["nodes"], r["connections"]) for r in rows},
                  key=lambda k: (list(WORKLOADS).index(k[0]), k[1], k[2]))
    repeats = sorted({r.get("repeat") for r in all_runs if not r.get("profiled")},
                     key=lambda r: -1 if r is None else r)
    out, table = [], []
    for a in against:
        for w, n, c in keys:
            t, b = index.get(("txraft", n, w, c)), index.get((a["name"], n, w, c))
            if b is None:
                continue
            q = after_before(t, b)
            per_repeat = [ratio(x["ops_per_s"], y["ops_per_s"])
                          for x, y in ((runs.get(("txraft", n, w, c, rep)),
                                        runs.get((a["name"], n, w, c, rep))) for rep in repeats)
                          if x and y]
            out.append({"workload": w, "nodes": n, "connections": c, "against": a["name"],
                        "after_over_before": q, "per_repeat_ops_per_s": per_repeat})
            table.append([w, n, c, a["name"], fmt(b["ops_per_s"], 0), fmt(b["p50_ms"], 2),
                          fmt(b["p99_ms"], 1), str(b["error_count"]),
                          fmt(b.get("leader_cpu_us_per_op"), 0),
                          fmt(t and t["ops_per_s"], 0), fmt(t and t["p50_ms"], 2),
                          fmt(t and t["p99_ms"], 1),
                          fmt(q["ops_per_s"], 2), fmt(q["p50_ms"], 2), fmt(q["p99_ms"], 2),
                          fmt(q["leader_cpu_us_per_op"], 2),
                          " ".join(fmt(r, 2) for r in per_repeat) or "-"])
    if table:
        print_table(["workload", "nodes", "conns", "before", "/s", "p50", "p99", "err",
                     "ldr us/op", "after /s", "p50", "p99", "after/before /s", "p50", "p99",
                     "ldr us/op", "/s per repeat"], table,
                    title="this tree (txraft, %s) after, --against trees before, interleaved "
                          "(latency ms; after/before = this tree / the other)"
                          % this_tree())
        for r in out:
            print("  %s %dn c=%d: after/before %s (txraft / %s)" % (
                r["workload"], r["nodes"], r["connections"],
                fmt(r["after_over_before"]["ops_per_s"], 2), r["against"]))
        print()
    return out


def report(rows: List[Dict[str, Any]], memory: Dict[str, Any]) -> Dict[str, Any]:
    """Print one table per workload with txraft/etcd ratios; return the goal verdicts."""
    index = {(r["system"], r["nodes"], r["workload"], r["connections"]): r for r in rows}
    keys = sorted({(r["workload"], r["nodes"], r["connections"]) for r in rows},
                  key=lambda k: (list(WORKLOADS).index(k[0]), k[1], k[2]))
    ratios = []
    for workload in WORKLOADS:
        table = []
        for w, n, c in keys:
            if w != workload:
                continue
            t = index.get(("txraft", n, w, c))
            e = index.get(("etcd", n, w, c))
            r = ratio(t and t["ops_per_s"], e and e["ops_per_s"])
            p50r = ratio(t and t["p50_ms"], e and e["p50_ms"])
            ratios.append({"workload": w, "nodes": n, "connections": c,
                           "throughput_ratio": r, "p50_ratio": p50r})

            def cols(x):
                if x is None:
                    return ["-"] * 6
                return [fmt(x["ops_per_s"], 0), fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 1),
                        fmt(x["p999_ms"], 1), str(x["error_count"]),
                        fmt(x.get("leader_cpu_pct"), 0)]

            table.append([n, c] + cols(t) + cols(e) + [fmt(r, 2)])
        if table:
            unit = "committed writes/s" if WORKLOADS[workload][3] else "reads/s"
            print_table(
                ["nodes", "conns", "txraft/s", "p50", "p99", "p99.9", "err", "ldr%",
                 "etcd/s", "p50", "p99", "p99.9", "err", "ldr%", "ratio"],
                table,
                title="%s (%s; latency ms from wrk; ldr%% = leader CPU, %% of one core; "
                      "ratio = txraft/etcd)" % (workload, unit))
    goals: Dict[str, Any] = {}
    t = index.get(("txraft", 3, "write", 64))
    e = index.get(("etcd", 3, "write", 64))
    if t and e:
        r = ratio(t["ops_per_s"], e["ops_per_s"])
        goals["http_writes_3n_64c"] = {"ratio": r, "first_goal_0_5": r >= 0.5,
                                       "final_goal_1_0": r >= 1.0}
        goals["p99_3n_64c"] = {"txraft_ms": t["p99_ms"], "etcd_ms": e["p99_ms"]}
    for n in (3, 1, 5):
        t = index.get(("txraft", n, "write", 1))
        e = index.get(("etcd", n, "write", 1))
        if t and e:
            goals["one_connection_p50_%dn" % n] = {
                "txraft_ms": t["p50_ms"], "etcd_ms": e["p50_ms"],
                "met": t["p50_ms"] <= e["p50_ms"]}
    idle = [v for size in memory.values() for v in size.get("txraft", {}).values() if v]
    if idle:
        worst = max(idle, key=lambda m: m["rss"])
        goals["idle_rss_mib"] = {"max_rss": worst["rss"], "pss": worst["pss"],
                                 "uss": worst["uss"], "met": worst["rss"] <= 40.0}
    if goals:
        print("goals:")
        for name, g in goals.items():
            print("  %-24s %s" % (name, g))
    return {"ratios": ratios, "goals": goals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,5", help="cluster sizes [1,3,5]")
    parser.add_argument("--connections", default="1,16,64", help="wrk connections [1,16,64]")
    parser.add_argument("--workloads", default="write,write-follower,read,read-stale")
    parser.add_argument("--extra-sizes", default="3",
                        help="sizes at which the workloads other than 'write' run [3]")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per row")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every row N times (interleaved); report the median")
    parser.add_argument("--systems", default="txraft,etcd")
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys per wrk thread")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--etcd-election-ms", type=int, default=1000,
                        help="etcd --election-timeout [1000, its default]")
    parser.add_argument("--etcd-heartbeat-ms", type=int, default=100,
                        help="etcd --heartbeat-interval [100, its default]")
    parser.add_argument("--txraft-args", default="",
                        help="extra 'twistd raftnode' options, e.g. '--tick-ms 5'")
    parser.add_argument("--reactor", choices=("default", "asyncio", "uvloop"),
                        default="default",
                        help="txraft nodes' reactor: twistd's default (epoll), or Twisted's "
                             "asyncio reactor, optionally on uvloop [default]")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the txraft nodes (e.g. a PyPy with the deps)")
    parser.add_argument("--against", action="append", default=[], metavar="DIR",
                        help="also run the txraft of the checkout DIR (e.g. a clone of an "
                             "older commit) as the system txraft@<its short commit>, "
                             "interleaved with this tree's rows, and print after/before = "
                             "this tree / DIR per row; repeatable or comma-separated. The "
                             "same --txraft-args and --reactor apply to its nodes")
    parser.add_argument("--python-against", default=None, metavar="PY",
                        help="interpreter for the --against nodes, e.g. that tree's own "
                             "venv [--python]")
    parser.add_argument("--profile", action="store_true",
                        help="after the 3-node 64-connection write row, run it once more "
                             "under py-spy (leader and one follower) and summarize")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="wait up to this many seconds for load average <= --max-load")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 1,3; connections 1,64; 2 s rows; 1 s warm-up")
    parser.add_argument("--name", default=None,
                        help="results file name [cluster_http, or cluster_http-against with "
                             "--against; -quick added with --quick]")
    args = parser.parse_args()
    common.exit_cleanly_on_sigterm()
    against_dirs = [common.check_tree(d.strip()) for ds in args.against for d in ds.split(",")
                    if d.strip()]
    if args.name is None:
        args.name = "cluster_http-against" if against_dirs else "cluster_http"
    if args.quick:
        args.sizes, args.connections, args.extra_sizes = "1,3", "1,64", "3"
        args.seconds, args.warmup = 2.0, 1.0
        if args.name in ("cluster_http", "cluster_http-against"):
            args.name += "-quick"

    require("wrk")
    txraft_app = "kv"
    node_python = common.node_python(args.reactor, args.python)
    if args.name in ("cluster_http", "cluster_http-quick") and args.reactor != "default":
        args.name += "-" + args.reactor
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    against: List[Dict[str, Any]] = []
    for tree in against_dirs:
        rev = common.tree_revision(tree)
        name = "txraft@%s%s" % (rev["short"], "-dirty" if rev["dirty"] else "")
        if name in [a["name"] for a in against]:
            name += "(%s)" % tree
        against.append(dict(rev, name=name, dir=tree,
                            python=args.python_against or args.python))
    if "etcd" in systems and require("etcd", needed=False) is None:
        systems.remove("etcd")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit("unknown workload %r (one of %s)" % (w, ", ".join(WORKLOADS)))
    sizes, conns, extra_sizes = csv_ints(args.sizes), csv_ints(args.connections), csv_ints(
        args.extra_sizes)
    load_at_start = common.wait_until_quiet(args.max_load, args.wait_quiet)
    machine = common.machine()
    print(common.describe(machine))
    fsync = {s: FSYNC[s] for s in systems}
    for s in systems:
        print("fsync, %s: %s" % (s, fsync[s]))
    for a in against:
        print("against: %s = %s (commit %s%s), nodes on %s" % (
            a["name"], a["dir"], a["commit"], ", txraft/ or shop/ modified" if a["dirty"] else "",
            a["python"]))
    trees = {a["name"]: a for a in against}
    # The other trees' rows next to this tree's (or last), interleaved like the rest.
    order = [x for s in systems for x in ([s] + list(trees) if s == "txraft" else [s])]
    order += [a for a in trees if a not in order]
    width = max(len(s) for s in order + ["txraft"])
    root = common.scratch_dir("txraft-bench-http-")
    rows: List[Dict[str, Any]] = []
    memory: Dict[str, Any] = {}
    profiles: Dict[str, Any] = {}
    started = time.time()
    try:
        for size in sizes:
            running: Dict[str, System] = {}
            size_root = os.path.join(root, "n%d" % size)
            try:
                for s in order:
                    if s == "txraft":
                        running[s] = Txraft(size, size_root, args.txraft_args.split(),
                                            node_python, txraft_app)
                    elif s in trees:
                        running[s] = Txraft(size, size_root, args.txraft_args.split(),
                                            trees[s]["python"], txraft_app, name=s,
                                            tree=trees[s]["dir"], reactor=args.reactor)
                    else:
                        running[s] = Etcd(size, size_root, args.etcd_election_ms,
                                          args.etcd_heartbeat_ms)
                time.sleep(2.0)
                memory[str(size)] = {s: idle_memory(sys_) for s, sys_ in running.items()}
                print("%d node(s) up; idle memory, MiB (rss/pss/uss): %s" % (size, "; ".join(
                    "%s %s" % (s, " ".join("%s=%s/%s/%s" % (n, m["rss"], m["pss"], m["uss"])
                                           for n, m in mem.items() if m))
                    for s, mem in memory[str(size)].items())), flush=True)
                plan = []
                for w in workloads:
                    if w != "write" and size not in extra_sizes:
                        continue
                    if w == "write-follower" and size < 2:
                        continue
                    for c in conns:
                        plan.append((w, c))
                if any(w.startswith("read") for w, _ in plan):
                    for sys_ in running.values():
                        sys_.preload(sys_.leader(), READ_KEYS)
                n = 0
                for rep in range(args.repeat):
                    for w, c in plan:
                        turn = list(running.values())
                        if n % 2:
                            turn.reverse()
                        n += 1
                        done: Dict[str, Dict[str, Any]] = {}
                        for sys_ in turn:
                            row = run_row(sys_, size, w, c, args)
                            row["repeat"] = rep
                            rows.append(row)
                            done[sys_.name] = row
                            print("  %-*s %dn %-14s c=%-3d %9s/s  p50 %7s ms  p99 %7s ms  "
                                  "p99.9 %7s ms  err %d  cpu leader %s%% (%s us/op) wrk %s%%  "
                                  "load %s%s"
                                  % (width, sys_.name, size, w, c, fmt(row["ops_per_s"], 0),
                                     fmt(row["p50_ms"], 2), fmt(row["p99_ms"], 1),
                                     fmt(row["p999_ms"], 1), row["error_count"],
                                     fmt(row["leader_cpu_pct"], 0),
                                     fmt(row.get("leader_cpu_us_per_op"), 0),
                                     fmt(row["wrk_cpu_pct"], 0),
                                     row["loadavg_after"][0],
                                     "  LEADER CHANGED" if row["leader_changed"] else ""),
                                  flush=True)
                            if (args.profile and sys_.name == "txraft" and size == 3
                                    and w == "write" and c == 64 and rep == 0):
                                os.makedirs(common.RESULTS_DIR, exist_ok=True)
                                prow = run_row(sys_, size, w, c, args, common.RESULTS_DIR)
                                prow["profiled"] = True
                                rows.append(prow)
                                for role in ("leader", "follower"):
                                    path = os.path.join(common.RESULTS_DIR,
                                                        "profile-http-write-%s.txt" % role)
                                    if os.path.exists(path):
                                        profiles[role] = common.summarize_profile(path)
                                        profiles[role]["raw"] = os.path.relpath(
                                            path, common.REPO_ROOT)
                                print("  (profiled run: %s/s; profiles: %s)" % (
                                    fmt(prow["ops_per_s"], 0), sorted(profiles)), flush=True)
                        for a in trees:
                            if "txraft" in done and a in done:
                                q = after_before(done["txraft"], done[a])
                                print("  %-*s after/before %s /s, p50 %s (txraft / %s)" % (
                                    width, "", fmt(q["ops_per_s"], 2), fmt(q["p50_ms"], 2), a),
                                    flush=True)
                memory[str(size)]["after_load"] = {
                    s: idle_memory(sys_) for s, sys_ in running.items()}
            finally:
                for sys_ in running.values():
                    sys_.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table_rows = median_rows(rows)
    print()
    verdict = report(table_rows, memory)
    verdict["after_before"] = against_report(table_rows, rows, against)
    for role, prof in profiles.items():
        print("\npy-spy, %s during 3-node 64-connection writes: %d main-thread samples, "
              "waiting in epoll %.1f%%; where the busy time goes:"
              % (role, prof["samples"], prof["idle_pct"]))
        for category, p in prof["categories"]:
            print("  %5.1f%%  %s" % (p, category))
        print("  top functions (self time, % of busy samples):")
        for fr, p in prof["self"][:12]:
            print("  %5.1f%%  %s" % (p, fr))
    common.save_results(args.name, {
        "machine": machine, "loadavg_at_start": load_at_start,
        "loadavg_at_end": common.loadavg(), "elapsed_s": round(time.time() - started),
        "config": {k: v for k, v in vars(args).items()},
        "fsync": fsync, "txraft_app": txraft_app,
        "idle_rss_mib": memory, "rows": table_rows, "all_runs": rows,
        "ratios": verdict["ratios"], "goals": verdict["goals"], "profiles": profiles,
        "against": against, "after_before": verdict["after_before"],
        "command": shlex.join(["python"] + sys.argv),
    })


if __name__ == "__main__":
    main()

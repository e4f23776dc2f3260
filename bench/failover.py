"""Failover time, the Raft paper's Figure 16 method: kill -9 the leader of 5 while writing.

A cluster of 5 real processes on 127.0.0.1 with an election timeout of 150-300 ms
(txraft draws each timeout from [T, 2T) with T = 150 ms).  For each trial a client writes
continuously through every node (one keep-alive connection per node, a short timeout and
a 5 ms pause after a failure, so requests keep flowing while the cluster has no leader);
the leader is killed with SIGKILL; the trial's downtime is the time from the kill to the
first successful write *sent after the kill* (its answer proves a new leader committed
it).  The killed node is then restarted from its data directory and the next trial waits
until it has caught up and the cluster agrees on one leader.

The same is done with etcd 3.4 when it is installed (``--election-timeout 150``, which etcd
also randomizes over [T, 2T); heartbeat 30 ms because etcd wants the timeout to be at least
5 heartbeats), writing through its HTTP/JSON gateway.  Systems alternate trial by trial.

With ``--signal term`` (or ``both``, alternating) the leader is stopped with SIGTERM
instead, as ``docker stop`` or a Kubernetes rollout does: a txraft leader then hands its
leadership to the most caught-up voter first (dissertation 3.10), and so does etcd
(its leadership transfer on shutdown).  The downtime is measured the same way, from the
signal; the difference is the election-timeout gap that a rolling restart saves.

Usage::

    python bench/failover.py                  # 100 trials per system
    python bench/failover.py --trials 300
    python bench/failover.py --quick          # 10 trials per system
    python bench/failover.py --signal both --trials 30   # SIGTERM hand-over vs kill -9

Prints median, p90, p99, max and a histogram; writes JSON to ``bench/results``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import random
import shlex
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import EtcdCluster, fmt, print_table, require  # noqa: E402
from txraft.tools.localcluster import LocalCluster  # noqa: E402


class Writer(threading.Thread):
    """Writes to one node in a loop while armed; records (sent, answered) of successes."""

    def __init__(self, host: str, port: int, method: str, path: str, body: bytes,
                 headers: Dict[str, str], ok_status: int, timeout: float, pause: float,
                 armed: threading.Event, stop: threading.Event, sink: List[Tuple[float, float]],
                 lock: threading.Lock):
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.method, self.path, self.body, self.headers = method, path, body, headers
        self.ok_status, self.timeout, self.pause = ok_status, timeout, pause
        self.armed, self.stop_event, self.sink, self.lock = armed, stop, sink, lock
        self.conn: Optional[http.client.HTTPConnection] = None
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            if not self.armed.wait(0.1):
                continue
            sent = time.monotonic()
            ok = False
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port,
                                                           timeout=self.timeout)
                self.conn.request(self.method, self.path, self.body, self.headers)
                response = self.conn.getresponse()
                response.read()
                ok = response.status == self.ok_status
                if response.will_close:
                    self.conn.close()
                    self.conn = None
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
            answered = time.monotonic()
            if ok:
                with self.lock:
                    self.sink.append((sent, answered))
            else:
                self.failures += 1
                time.sleep(self.pause)


class Target:
    """A 5-node cluster of one system, as the failover loop sees it."""

    name = ""

    def leader(self) -> str: ...
    def term(self, node: str) -> Optional[int]: ...
    def kill(self, node: str) -> None: ...
    def restart(self, node: str) -> None: ...
    def wait_caught_up(self, timeout: float) -> None: ...
    def endpoints(self) -> Dict[str, Tuple[str, int]]: ...
    def request(self) -> Tuple[str, str, bytes, Dict[str, str], int]: ...
    def stop(self) -> None: ...


class TxraftTarget(Target):
    name = "txraft"

    def __init__(self, root: str, size: int, election_ms: int, heartbeat_ms: int,
                 python: str, extra: List[str], app: str = "kv"):
        self.cluster = LocalCluster(size, root, app=app, election_timeout_ms=election_ms,
                                    heartbeat_ms=heartbeat_ms, python=python, extra_args=extra)
        self.cluster.start_all()
        self.cluster.wait_for_leader(timeout=60)

    def leader(self) -> str:
        return self.cluster.wait_for_leader(timeout=30)

    def term(self, node: str) -> Optional[int]:
        s = self.cluster.nodes[node].status()
        return s["term"] if s else None

    def kill(self, node: str) -> None:
        self.cluster.nodes[node].process.kill()

    def terminate(self, node: str) -> None:
        self.cluster.nodes[node].process.terminate()

    def reap(self, node: str) -> None:
        wait_exit(self.cluster.nodes[node].process)
        self.cluster.kill(node)

    def restart(self, node: str) -> None:
        self.cluster.kill(node)
        self.cluster.start(node)

    def wait_caught_up(self, timeout: float) -> None:
        leader = self.leader()
        target = self.cluster.nodes[leader].status()["commit_index"]
        self.cluster.wait_for_applied(target, list(self.cluster.nodes), timeout=timeout)
        self.leader()

    def endpoints(self) -> Dict[str, Tuple[str, int]]:
        return {i: ("127.0.0.1", n.http_port) for i, n in self.cluster.nodes.items()}

    def request(self):
        return ("PUT", "/kv/failover", b"v" * 64,
                {"Content-Type": "application/octet-stream"}, 204)

    def stop(self) -> None:
        self.cluster.stop_all()


class EtcdTarget(Target):
    name = "etcd"

    def __init__(self, root: str, size: int, election_ms: int, heartbeat_ms: int):
        self.cluster = EtcdCluster(size, root, election_timeout_ms=election_ms,
                                   heartbeat_ms=heartbeat_ms)
        self.cluster.start_all()
        self.cluster.wait_for_leader(timeout=60)

    def leader(self) -> str:
        return self.cluster.wait_for_leader(timeout=30)

    def term(self, node: str) -> Optional[int]:
        s = self.cluster.members[node].status()
        return s["term"] if s else None

    def kill(self, node: str) -> None:
        self.cluster.members[node].process.kill()

    def terminate(self, node: str) -> None:
        self.cluster.members[node].process.terminate()

    def reap(self, node: str) -> None:
        wait_exit(self.cluster.members[node].process)
        self.cluster.kill(node)

    def restart(self, node: str) -> None:
        self.cluster.kill(node)
        self.cluster.start(node)

    def wait_caught_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        leader = self.leader()
        target = self.cluster.members[leader].status()["raft_index"]
        while time.monotonic() < deadline:
            st = self.cluster.statuses()
            if all(s is not None and s["raft_index"] >= target for s in st.values()):
                self.leader()
                return
            time.sleep(0.05)
        raise TimeoutError("etcd members did not catch up: %r" % (self.cluster.statuses(),))

    def endpoints(self) -> Dict[str, Tuple[str, int]]:
        return {n: ("127.0.0.1", m.client_port) for n, m in self.cluster.members.items()}

    def request(self):
        body = ('{"key":"%s","value":"%s"}' % (base64.b64encode(b"failover").decode(),
                                               base64.b64encode(b"v" * 64).decode())).encode()
        return "POST", "/v3/kv/put", body, {"Content-Type": "application/json"}, 200

    def stop(self) -> None:
        self.cluster.stop_all()


def wait_exit(process: Any, timeout: float = 10.0) -> None:
    """Let a process stopped with SIGTERM finish its shutdown (a hand-over) first."""
    try:
        process.wait(timeout)
    except Exception:
        pass


class Client:
    """One writer per node, shared by all trials of one system."""

    def __init__(self, target: Target, timeout: float, pause: float):
        self.armed = threading.Event()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.successes: List[Tuple[float, float]] = []
        method, path, body, headers, ok = target.request()
        self.writers = [
            Writer(host, port, method, path, body, headers, ok, timeout, pause, self.armed,
                   self.stop_event, self.successes, self.lock)
            for host, port in target.endpoints().values()
        ]
        for w in self.writers:
            w.start()

    def take(self) -> List[Tuple[float, float]]:
        with self.lock:
            out = list(self.successes)
            self.successes.clear()
        return out

    def close(self) -> None:
        self.stop_event.set()
        self.armed.set()
        for w in self.writers:
            w.join(5)


def trial(target: Target, client: Client, args, how: str = "kill") -> Dict[str, Any]:
    leader = target.leader()
    term_before = target.term(leader)
    client.take()
    client.armed.set()
    time.sleep(args.lead_in + random.uniform(0, 0.05))
    before = client.take()
    t_kill = time.monotonic()
    if how == "term":
        target.terminate(leader)
    else:
        target.kill(leader)
    downtime = None
    deadline = t_kill + args.trial_timeout
    after: List[Tuple[float, float]] = []
    while time.monotonic() < deadline:
        time.sleep(0.005)
        after.extend(client.take())
        firsts = [answered for sent, answered in after if sent >= t_kill]
        if firsts:
            downtime = min(firsts) - t_kill
            break
    client.armed.clear()
    target.reap(leader)
    new_leader = None
    terms = None
    try:
        new_leader = target.leader()
        t = target.term(new_leader)
        terms = t - term_before if t is not None and term_before is not None else None
    except TimeoutError:
        pass
    target.restart(leader)
    target.wait_caught_up(timeout=60)
    time.sleep(args.settle)
    return {"killed": leader, "signal": how, "new_leader": new_leader, "downtime_ms":
            None if downtime is None else round(downtime * 1000, 1),
            "writes_before_kill": len(before), "term_increase": terms}


def summarize(name: str, trials: List[Dict[str, Any]], timeout: float) -> Dict[str, Any]:
    values = sorted(t["downtime_ms"] for t in trials if t["downtime_ms"] is not None)
    failed = sum(1 for t in trials if t["downtime_ms"] is None)
    out: Dict[str, Any] = {"system": name, "trials": len(trials), "no_write_within_timeout":
                           failed, "timeout_s": timeout}
    if values:
        out.update({
            "median_ms": common.percentile(values, 50), "p90_ms": common.percentile(values, 90),
            "p99_ms": common.percentile(values, 99), "max_ms": values[-1], "min_ms": values[0],
            "mean_ms": round(sum(values) / len(values), 1),
            "over_600ms": sum(1 for v in values if v > 600),
        })
    out["downtimes_ms"] = values
    terms = [t["term_increase"] for t in trials if t["term_increase"] is not None]
    if terms:
        out["trials_needing_more_than_one_term"] = sum(1 for x in terms if x > 1)
    return out


def histogram(summaries: List[Dict[str, Any]], bin_ms: int = 50) -> str:
    top = max((s.get("max_ms") or 0) for s in summaries)
    bins = int(top // bin_ms) + 1
    lines = ["downtime histogram (%d ms bins; each # is one trial)" % bin_ms]
    for b in range(bins):
        lo, hi = b * bin_ms, (b + 1) * bin_ms
        cells = []
        for s in summaries:
            n = sum(1 for v in s["downtimes_ms"] if lo <= v < hi)
            cells.append("%-7s %3d %-30s" % (s["system"], n, "#" * min(n, 30)))
        lines.append("%5d-%-5d %s" % (lo, hi, " | ".join(cells)))
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="kills per system [100]")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--election-ms", type=int, default=150,
                        help="minimum election timeout T; timeouts are drawn from [T, 2T)")
    parser.add_argument("--heartbeat-ms", type=int, default=50, help="txraft heartbeat [50]")
    parser.add_argument("--etcd-heartbeat-ms", type=int, default=30,
                        help="etcd --heartbeat-interval [30]; etcd needs T >= 5 heartbeats")
    parser.add_argument("--systems", default="txraft,etcd")
    parser.add_argument("--client-timeout", type=float, default=0.3,
                        help="seconds before a client request is abandoned and re-sent")
    parser.add_argument("--pause-ms", type=float, default=5.0,
                        help="client pause after a failed request")
    parser.add_argument("--lead-in", type=float, default=0.3,
                        help="seconds of writing before each kill")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="seconds of quiet after the restarted node caught up")
    parser.add_argument("--trial-timeout", type=float, default=10.0)
    parser.add_argument("--signal", choices=("kill", "term", "both"), default="kill",
                        help="stop the leader with SIGKILL (an election), SIGTERM (a "
                             "hand-over), or both, alternating [kill]")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--txraft-args", default="")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="10 trials per system")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    common.exit_cleanly_on_sigterm()
    if args.quick:
        args.trials = 10
    txraft_app = "kv"
    name = args.name or ("failover" + ("" if args.signal == "kill" else "-" + args.signal)
                         + ("-quick" if args.quick else ""))
    random.seed(args.seed)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "etcd" in systems and require("etcd", needed=False) is None:
        systems.remove("etcd")
    load_at_start = common.wait_until_quiet(args.max_load, args.wait_quiet)
    machine = common.machine()
    print(common.describe(machine))
    print("%d nodes, election timeout [%d, %d) ms; txraft heartbeat %d ms, etcd heartbeat %d ms"
          % (args.nodes, args.election_ms, 2 * args.election_ms, args.heartbeat_ms,
             args.etcd_heartbeat_ms))
    root = common.scratch_dir("txraft-bench-failover-")
    targets: Dict[str, Target] = {}
    clients: Dict[str, Client] = {}
    signals = ["kill", "term"] if args.signal == "both" else [args.signal]
    runs = [(s, how) for s in systems for how in signals]
    label = {(s, how): s + (" (SIGTERM)" if how == "term" else
                            " (kill -9)" if len(signals) > 1 else "") for s, how in runs}
    results: Dict[str, List[Dict[str, Any]]] = {label[r]: [] for r in runs}
    started = time.time()
    try:
        for s in systems:
            if s == "txraft":
                targets[s] = TxraftTarget(os.path.join(root, s), args.nodes, args.election_ms,
                                          args.heartbeat_ms, args.python,
                                          args.txraft_args.split(), txraft_app)
            else:
                targets[s] = EtcdTarget(os.path.join(root, s), args.nodes, args.election_ms,
                                        args.etcd_heartbeat_ms)
            clients[s] = Client(targets[s], args.client_timeout, args.pause_ms / 1000.0)
        for i in range(args.trials):
            for s, how in (runs if i % 2 == 0 else list(reversed(runs))):
                t = trial(targets[s], clients[s], args, how)
                t["trial"] = i
                t["loadavg"] = common.loadavg()[0]
                results[label[(s, how)]].append(t)
                print("  %-6s trial %3d: %s %s -> %s, downtime %s ms (terms +%s, %d writes "
                      "in the lead-in, load %.1f)" % (
                          s, i + 1, "SIGTERM" if how == "term" else "killed", t["killed"],
                          t["new_leader"], fmt(t["downtime_ms"]),
                          t["term_increase"], t["writes_before_kill"], t["loadavg"]), flush=True)
    finally:
        for c in clients.values():
            c.close()
        for t in targets.values():
            t.stop()
        shutil.rmtree(root, ignore_errors=True)
    summaries = [summarize(label[r], results[label[r]], args.trial_timeout) for r in runs
                 if results[label[r]]]
    print()
    print_table(
        ["system", "trials", "median", "p90", "p99", "max", "> 600", "no write", "multi-term"],
        [[s["system"], s["trials"], fmt(s.get("median_ms")), fmt(s.get("p90_ms")),
          fmt(s.get("p99_ms")), fmt(s.get("max_ms")), s.get("over_600ms", "-"),
          s["no_write_within_timeout"], s.get("trials_needing_more_than_one_term", "-")]
         for s in summaries],
        title="downtime after %s of the leader, ms (%d nodes, election timeout %d-%d ms)"
              % ({"kill": "kill -9", "term": "SIGTERM"}.get(args.signal, "kill -9 or SIGTERM"),
                 args.nodes, args.election_ms, 2 * args.election_ms))
    hist = histogram(summaries) if summaries else ""
    goals = {}
    tx = next((s for s in summaries if s["system"] in ("txraft", "txraft (kill -9)")), None)
    if tx and "median_ms" in tx:
        goals["failover"] = {"median_ms": tx["median_ms"], "max_ms": tx["max_ms"],
                             "trials": tx["trials"],
                             "met": tx["median_ms"] <= 250 and tx["max_ms"] <= 600
                             and tx["no_write_within_timeout"] == 0 and tx["trials"] >= 100}
        print("\ngoal (median <= 250 ms, max <= 600 ms over >= 100 trials): %s"
              % goals["failover"])
    common.save_results(name, {
        "machine": machine, "loadavg_at_start": load_at_start, "loadavg_at_end": common.loadavg(),
        "elapsed_s": round(time.time() - started), "config": vars(args),
        "txraft_app": txraft_app, "summaries": summaries, "trials": results,
        "histogram": hist, "goals": goals,
        "command": shlex.join(["python"] + sys.argv),
    })


if __name__ == "__main__":
    main()

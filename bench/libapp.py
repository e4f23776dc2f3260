"""A bench-only txraft application: the key-value app plus an in-process proposal driver.

Loaded by ``bench/library.py`` as ``twistd raftnode --app bench.libapp:application``
(or ``:memory_application``).  ``POST /bench/propose?inflight=K&seconds=S&warmup=W`` on
the leader keeps K proposals in flight by calling ``RaftNode.propose`` in the node's own
process (no HTTP per write, like PySyncObj's benchmark calls its replicated method), and
answers once with JSON: completions, the leader's applied-index delta over the window and
latency percentiles from ``propose()`` to the Deferred firing (the entry is committed and
applied).

The state machines are the real key-value one (SQLite, ``synchronous=NORMAL``) and, to
separate the cost of applying from the cost of replicating, an in-memory dict
(``memory_application``) that keeps nothing across restarts: bench use only.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

import msgpack
from twisted.internet.defer import Deferred
from zope.interface import implementer

from txraft.apps.application import Application
from txraft.apps.kv import encode_put, open_state_machine
from txraft.apps.kv_http import KVAPI
from txraft.core.messages import ENTRY_NORMAL
from txraft.http.errors import HTTPError
from txraft.http.node import RaftHTTP
from txraft.http.requests import query_arg
from txraft.http.responses import json_response
from txraft.interfaces import IStateMachine


@implementer(IStateMachine)
class MemoryStateMachine:
    """Key-value commands applied to a dict: no SQLite, no fsync on apply."""

    def __init__(self, data_dir: str):
        self._data: Dict[bytes, bytes] = {}
        self._index = 0
        self._term = 0

    def applied_index(self) -> int:
        return self._index

    def applied_term(self) -> int:
        return self._term

    def apply_batch(self, entries: Sequence) -> List[Any]:
        data = self._data
        results: List[Any] = []
        for entry in entries:
            if entry.index > self._index:
                if entry.kind == ENTRY_NORMAL:
                    command = msgpack.unpackb(entry.data, raw=False)
                    if command[0] == 0:
                        data[command[1]] = command[2]
                    else:
                        data.pop(command[1], None)
                self._index, self._term = entry.index, entry.term
            results.append(None)
        return results

    def snapshot(self):
        return self._index, self._term, msgpack.packb(
            {"format": "bench.memory/1", "data": sorted(self._data.items())})

    def restore(self, index: int, term: int, data: bytes) -> None:
        image = msgpack.unpackb(data, raw=False)
        self._data = {k: v for k, v in image["data"]}
        self._index, self._term = index, term

    def get(self, key: bytes):
        return self._data.get(key)

    def close(self) -> None:
        pass


def _percentile(values: List[float], p: float) -> float:
    rank = max(1, int(-(-len(values) * p // 100)))
    return values[min(rank, len(values)) - 1]


class ProposalDriver:
    """Keeps K proposals in flight on the local node for a fixed time."""

    def __init__(self, node: Any, clock: Any):
        self.node = node
        self.clock = clock
        self.running = False

    def run(self, request):
        def number(name: bytes, default: float) -> float:
            value = query_arg(request, name)
            try:
                return float(value) if value is not None else default
            except ValueError:
                raise HTTPError(422, "invalid_value", "%s must be a number" % name.decode())

        inflight = int(number(b"inflight", 1))
        seconds = number(b"seconds", 10.0)
        warmup = number(b"warmup", 2.0)
        size = int(number(b"size", 64))
        keys = int(number(b"keys", 1000))
        if not self.node.is_leader():
            raise HTTPError(409, "not_leader", "run the driver on the leader")
        if self.running:
            raise HTTPError(409, "busy", "a run is in progress")
        self.running = True
        d = self._run(inflight, seconds, warmup, size, keys)

        def finished(result):
            self.running = False
            return json_response(request, 200, result)

        def failed(failure):
            self.running = False
            return failure

        return d.addCallbacks(finished, failed)

    def _run(self, inflight: int, seconds: float, warmup: float, size: int,
             keys: int) -> Deferred:
        node, clock = self.node, self.clock
        value = (b"v" * size)[:size]
        commands = [encode_put(b"lib%d" % i, value) for i in range(keys)]
        now = time.perf_counter
        start = now()
        t_measure = start + warmup
        t_end = t_measure + seconds
        state = {"outstanding": 0, "sent": 0, "completed": 0, "errors": 0,
                 "refill": None, "done": False}
        latencies: List[float] = []
        marks: Dict[str, Any] = {}
        finished: Deferred = Deferred()

        def mark(name: str) -> None:
            marks[name] = (now(), node.core.last_applied, node.core.commit_index,
                           dict(node.counters))

        def completed(result, t0):
            t1 = now()
            state["outstanding"] -= 1
            if t_measure <= t1 <= t_end:
                state["completed"] += 1
                latencies.append(t1 - t0)
            schedule_refill()

        def failed(failure, t0):
            state["outstanding"] -= 1
            state["errors"] += 1
            schedule_refill(0.001)

        def schedule_refill(delay: float = 0.0) -> None:
            # Proposals are submitted in a later reactor turn, as a client's would be,
            # never from inside the driver's apply loop.
            if state["refill"] is None:
                state["refill"] = clock.callLater(delay, refill)

        def refill() -> None:
            state["refill"] = None
            if now() >= t_end:
                maybe_finish()
                return
            while state["outstanding"] < inflight:
                t0 = now()
                command = commands[state["sent"] % keys]
                state["sent"] += 1
                state["outstanding"] += 1
                d = node.propose(command)
                d.addCallbacks(completed, failed, callbackArgs=(t0,), errbackArgs=(t0,))

        def maybe_finish() -> None:
            if state["outstanding"] == 0 or now() > t_end + 10:
                if not state["done"]:
                    state["done"] = True
                    finished.callback(self._result(inflight, seconds, warmup, size, state,
                                                   latencies, marks))
            else:
                clock.callLater(0.01, maybe_finish)

        clock.callLater(warmup, mark, "start")
        clock.callLater(warmup + seconds, mark, "end")
        refill()
        return finished

    @staticmethod
    def _result(inflight, seconds, warmup, size, state, latencies, marks) -> Dict[str, Any]:
        latencies.sort()
        out: Dict[str, Any] = {
            "inflight": inflight, "seconds": seconds, "warmup": warmup, "value_size": size,
            "completed": state["completed"], "errors": state["errors"],
            "proposals_sent": state["sent"],
            "completed_per_s": round(state["completed"] / seconds, 1),
        }
        if "start" in marks and "end" in marks:
            (t0, a0, _, c0), (t1, a1, _, c1) = marks["start"], marks["end"]
            out["applied_per_s"] = round((a1 - a0) / (t1 - t0), 1)
            batches = c1["fsync_batches"] - c0["fsync_batches"]
            out["fsync_batches_per_s"] = round(batches / (t1 - t0), 1)
            out["entries_per_fsync"] = round(
                (c1["entries_persisted"] - c0["entries_persisted"]) / batches, 2) if batches else None
            out["readies_per_s"] = round((c1["readies"] - c0["readies"]) / (t1 - t0), 1)
        if latencies:
            for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
                out[name + "_ms"] = round(_percentile(latencies, p) * 1000, 3)
            out["max_ms"] = round(latencies[-1] * 1000, 3)
            out["mean_ms"] = round(sum(latencies) / len(latencies) * 1000, 3)
            out["cdf_ms"] = [[p, round(_percentile(latencies, p) * 1000, 3)]
                             for p in (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99)]
        return out


def make_resource(node, clock, http_client):
    api = KVAPI(RaftHTTP(node, clock, http_client))
    driver = ProposalDriver(node, clock)
    api.app.route("/bench/propose", methods=["POST"], endpoint="bench_propose")(driver.run)
    return api.app.resource()


def open_memory_state_machine(data_dir: str) -> MemoryStateMachine:
    return MemoryStateMachine(data_dir)


application = Application("bench-kv", open_state_machine, make_resource)
memory_application = Application("bench-memory", open_memory_state_machine, make_resource)


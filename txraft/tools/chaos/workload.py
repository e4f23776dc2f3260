"""What chaos workloads share, and the key-value register's workload.

Each client is a thread with blocking HTTP that talks to every node (a random one per
attempt; while the nemesis has a node out of the configuration, every other one), the
way independent users behind a load balancer would.  Every logical
operation is recorded in a ``History`` (see ``txraft.tools.chaos.history``), including its
failed attempts.  What an answer means:

* an answer from the application (2xx, or a refusal such as 404, 409, 412, 422) is
  definite: the operation took effect exactly as answered;
* 503 (``no_leader``, ``overloaded``, ``read_timeout``...) and a refused connection are
  definite failures: nothing was done;
* 504 (``commit_timeout``), a timeout, a connection lost after the request was sent, and
  500 are unknown: it may or may not have taken effect (a 500 is also reported as a bug).

Writes of both workloads carry an ``Idempotency-Key``; after an unknown outcome the
client retries with the same key (on another node) until it gets a definite answer, as a
real client would, so most operations end definite.  A retry whose first attempt did
take effect is answered with that first outcome and changes nothing, so the operation
still took effect once, between its invocation and its final answer: what the checker
assumes of an ``ok`` operation.

A workload is a class the harness loads by ``module:attribute``
(``txraft.tools.chaos.harness.WORKLOADS`` names the two that ship: this module's
``KVWorkload`` and the shop's, ``shop.chaos:ShopWorkload``).  ``app`` is the application
its nodes run (``twistd raftnode --app``); ``setup`` prepares the cluster, ``client`` runs
one client until the harness stops it; ``project(history)`` turns the records into
per-partition checker operations and ``model_for`` gives each partition's model;
``final`` reads the settled state from every node; ``verify`` checks the workload's
invariants.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import attrs

from txraft.tools.chaos.checker import FAIL, OK, UNKNOWN, Op, RegisterModel
from txraft.tools.chaos.history import Attempt, History, Record, settle

#: Idempotency keys replayed at the end are drawn from this many most recent ones, well
#: inside the documented retention of both applications (the latest 100,000 keys, 24 h).
RETAINED_KEYS = 20_000


@attrs.frozen
class Reply:
    """One HTTP exchange; ``status`` 0 when there was no answer (``sent`` tells whether the
    request may have reached the server)."""

    status: int
    headers: Dict[str, str]
    body: bytes
    sent: bool
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def error_code(self) -> Optional[str]:
        try:
            return self.json()["error"]["code"]
        except Exception:
            return None


def call(base_url: str, method: str, path: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None, connect_timeout: float = 2.0,
         timeout: float = 7.0) -> Reply:
    """One blocking request on a fresh connection; never raises for network errors.

    A failure to connect means the request was certainly not sent (a definite failure);
    any failure after that leaves the outcome unknown.
    """
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=connect_timeout)
    try:
        try:
            conn.connect()
        except OSError as e:
            return Reply(0, {}, b"", False, repr(e))
        conn.sock.settimeout(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            return Reply(0, {}, b"", True, repr(e))
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     data, True)
    finally:
        conn.close()


def write_verdict(reply: Reply) -> str:
    """OK (definite answer), FAIL (certainly no effect) or UNKNOWN, for a write."""
    if reply.status == 0:
        return UNKNOWN if reply.sent else FAIL
    if reply.status == 503:
        return FAIL
    if reply.status >= 500:
        return UNKNOWN
    return OK


def read_verdict(reply: Reply) -> str:
    if reply.status in (200, 404):
        return OK
    return FAIL


class Context:
    """What a workload needs from the harness (the harness implements it)."""

    history: History
    stopping: threading.Event  # no new operations
    aborting: threading.Event  # stop retrying, too
    node_ids: List[str]
    anomalies: List[str]

    def url(self, node_id: str) -> str:
        raise NotImplementedError

    def targets(self) -> List[str]:
        """The nodes to send operations to now: every node, but those the nemesis took
        out of the configuration until they are members again and caught up."""
        return self.node_ids

    def leader(self) -> Optional[str]:
        raise NotImplementedError

    def settle(self) -> List[str]:
        """Wait until every node applied everything committed; the problems, if not."""
        raise NotImplementedError

    def now(self) -> float:
        return time.monotonic()


def note_anomaly(ctx: Context, record: Optional[Record], reply: Reply, what: str) -> None:
    """A 500, or a 4xx our well-formed requests should never get: a bug worth reporting."""
    ident = "op #%d %s %s" % (record.id, record.f, record.args) if record else what
    ctx.anomalies.append("%s: HTTP %d %s" % (ident, reply.status, reply.body[:300]))


def attempt(ctx: Context, record: Record, rng: random.Random, method: str, path: str,
            body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None,
            verdict=write_verdict, node: Optional[str] = None) -> Tuple[Reply, str]:
    """Send one attempt of ``record`` to a random target node (or ``node``); log it."""
    node = node or rng.choice(ctx.targets())
    start = ctx.now()
    reply = call(ctx.url(node), method, path, body, headers)
    end = ctx.now()
    v = verdict(reply)
    detail = reply.error or (reply.body[:120].decode("utf-8", "replace")
                             if reply.status >= 300 else "")
    record.attempts.append(Attempt(node, start, end, reply.status, v, detail))
    if reply.status >= 500 and reply.status not in (503, 504):
        note_anomaly(ctx, record, reply, "")
    return reply, v


def backoff(ctx: Context, rng: random.Random, reply: Reply, tries: int) -> None:
    delay = min(1.0, 0.05 * (2 ** min(tries, 5))) * rng.uniform(0.5, 1.0)
    if reply.status == 503:
        delay = max(delay, 0.1)
    ctx.aborting.wait(delay)


# -- the key-value register ---------------------------------------------------------------


class KeySpace:
    """Active keys, each retired after ``ops_per_key`` operations for a fresh one: keeps
    every key's history short enough to check exhaustively."""

    def __init__(self, active: int, ops_per_key: int, prefix: str = "k"):
        self._lock = threading.Lock()
        self.ops_per_key = ops_per_key
        self.prefix = prefix
        self._next = 0
        self._active: List[List[Any]] = []
        self.used: List[str] = []
        for _ in range(active):
            self._active.append([self._fresh(), 0])

    def _fresh(self) -> str:
        key = "%s%d" % (self.prefix, self._next)
        self._next += 1
        self.used.append(key)
        return key

    def pick(self, rng: random.Random) -> str:
        with self._lock:
            slot = rng.randrange(len(self._active))
            key, count = self._active[slot]
            if count + 1 >= self.ops_per_key:
                self._active[slot] = [self._fresh(), 0]
            else:
                self._active[slot][1] = count + 1
            return key


class KVWorkload:
    """Writes of unique values, deletes, linearizable and stale reads on rotating keys."""

    name = "kv"
    app = "kv"

    def __init__(self, active_keys: int = 6, ops_per_key: int = 150,
                 sabotage_reads: bool = False, value_bytes: int = 0):
        self.keys = KeySpace(active_keys, ops_per_key)
        self._lock = threading.Lock()
        self._serial = 0
        #: Pad values to a random length up to this: large entries are fragmented.
        self.value_bytes = value_bytes
        self.final_values: Dict[str, Dict[str, Optional[str]]] = {}
        #: Send "linearizable" reads with ?consistency=stale: a deliberately broken
        #: client, to show that the checks catch stale reads (tests only).
        self.sabotage_reads = sabotage_reads

    def setup(self, ctx: Context, processes: List[str]) -> None:
        pass

    def client(self, ctx: Context, process: str, rng: random.Random) -> None:
        serial = 0
        while not ctx.stopping.is_set():
            key = self.keys.pick(rng)
            x = rng.random()
            if x < 0.45:
                serial += 1
                value = "%s-%d" % (process, serial)
                if self.value_bytes:
                    value += "." * rng.randrange(self.value_bytes)
                self.write(ctx, process, rng, key, value)
            elif x < 0.5:
                self.write(ctx, process, rng, key, None)
            elif x < 0.9:
                self.read(ctx, process, rng, key)
            else:
                self.read(ctx, process, rng, key, stale=True)
            ctx.aborting.wait(rng.uniform(0, 0.01))

    @staticmethod
    def _path(key: str, stale: bool = False) -> str:
        return "/kv/" + key + ("?consistency=stale" if stale else "")

    def write(self, ctx, process, rng, key, value, patience: float = 20.0) -> Record:
        """One logical write (``value`` None: a delete) with an Idempotency-Key, retried
        with the same key until a definite answer, ``patience`` seconds or the harness
        aborting."""
        with self._lock:
            self._serial += 1
            idempotency_key = "%s-w%d" % (process, self._serial)
        record = ctx.history.invoke(process, "write", {
            "key": key, "value": value, "idempotency_key": idempotency_key}, ctx.now())
        method, body = ("DELETE", None) if value is None else ("PUT", value.encode())
        headers = {"Idempotency-Key": idempotency_key}
        deadline = record.invoke + patience
        tries = 0
        while True:
            reply, v = attempt(ctx, record, rng, method, self._path(key), body, headers)
            if v == OK or ctx.aborting.is_set() or ctx.now() > deadline:
                break
            backoff(ctx, rng, reply, tries)
            tries += 1
        result = None
        if v == OK:
            if reply.status != 204:
                note_anomaly(ctx, record, reply, "")
            result = {"status": reply.status, "index": reply.headers.get("x-raft-index"),
                      "replayed": reply.headers.get("idempotent-replayed") == "true"}
        ctx.history.finish(record, settle(record.attempts), result, record.attempts[-1].end)
        return record

    def read(self, ctx, process, rng, key, stale=False, node=None) -> Record:
        record = ctx.history.invoke(process, "stale_read" if stale else "read", {"key": key},
                                    ctx.now())
        send_stale = stale or (self.sabotage_reads and process != "final")
        reply, v = attempt(ctx, record, rng, "GET", self._path(key, send_stale),
                           verdict=read_verdict, node=node)
        value = reply.body.decode("utf-8") if reply.status == 200 else None
        ctx.history.finish(record, v, value, record.attempts[-1].end)
        return record

    def final(self, ctx: Context, rng: random.Random) -> List[str]:
        """Linearizable reads of every key (checked with the rest), then stale reads of
        every key on every node, which must all agree."""
        problems = []
        for key in self.keys.used:
            for tries in range(20):
                record = self.read(ctx, "final", rng, key, node=ctx.leader() or None)
                if record.status == OK:
                    break
                time.sleep(0.1)
            else:
                problems.append("final read of %s never succeeded" % key)
        for node_id in ctx.node_ids:
            values = self.final_values[node_id] = {}
            for key in self.keys.used:
                reply = call(ctx.url(node_id), "GET", self._path(key, stale=True))
                if reply.status not in (200, 404):
                    problems.append("stale read of %s on %s: HTTP %d %s"
                                    % (key, node_id, reply.status, reply.error))
                values[key] = reply.body.decode("utf-8") if reply.status == 200 else None
        first = ctx.node_ids[0]
        for node_id in ctx.node_ids[1:]:
            for key in self.keys.used:
                if self.final_values[node_id].get(key) != self.final_values[first].get(key):
                    problems.append("replicas differ on %s: %s has %r, %s has %r" % (
                        key, first, self.final_values[first].get(key), node_id,
                        self.final_values[node_id].get(key)))
        # Here, not as the harness's ``replay_keys`` hook, because the values read next
        # must already include the replays' (absent) effects.
        problems.extend(self.replay_writes(ctx, ctx.history.records(), rng))
        for node_id in ctx.node_ids:
            for key in self.keys.used:
                reply = call(ctx.url(node_id), "GET", self._path(key, stale=True))
                value = reply.body.decode("utf-8") if reply.status == 200 else None
                if reply.status in (200, 404) and value != self.final_values[node_id][key]:
                    problems.append("replaying idempotency keys changed %s on %s: %r, then %r"
                                    % (key, node_id, self.final_values[node_id][key], value))
        return problems

    def project(self, records: List[Record]) -> Dict[str, List[Op]]:
        parts: Dict[str, List[Op]] = {}
        for r in records:
            if r.f == "write":
                op = Op(r.id, ("write", r.args["value"]), None, r.status, r.invoke,
                        r.complete, r.process)
            elif r.f == "read":
                op = Op(r.id, ("read", None), r.result, r.status, r.invoke, r.complete,
                        r.process)
            else:
                continue
            parts.setdefault("kv:" + r.args["key"], []).append(op)
        return parts

    def model_for(self, partition: str):
        return RegisterModel()

    def verify(self, ctx: Context, records: List[Record]) -> List[str]:
        return []

    def replay_writes(self, ctx: Context, records: List[Record], rng: random.Random,
                      limit: int = 40) -> List[str]:
        """Send some completed writes again with their keys: each must be answered 204
        with its first X-Raft-Index, marked replayed (nothing is applied again).
        ``final`` calls it."""
        problems = []
        keyed = [r for r in records if r.f == "write" and "idempotency_key" in r.args]
        candidates = [r for r in keyed[-RETAINED_KEYS:]
                      if r.status == OK and r.result and r.result["status"] == 204]
        rng.shuffle(candidates)
        for r in candidates[:limit]:
            value = r.args["value"]
            method, body = ("DELETE", None) if value is None else ("PUT", value.encode())
            reply = call(ctx.url(rng.choice(ctx.node_ids)), method, self._path(r.args["key"]),
                         body, {"Idempotency-Key": r.args["idempotency_key"]})
            if reply.status == 503:
                continue
            if (reply.status, reply.headers.get("x-raft-index"),
                    reply.headers.get("idempotent-replayed")) != (204, r.result["index"], "true"):
                problems.append(
                    "replaying op #%d (write, key %s) answered %d %s (index %s, replayed %s), "
                    "first answer 204 at index %s"
                    % (r.id, r.args["idempotency_key"], reply.status, reply.body[:120],
                       reply.headers.get("x-raft-index"), reply.headers.get("idempotent-replayed"),
                       r.result["index"]))
        return problems

"""The nemesis: a seeded schedule of faults injected into a ``LocalCluster``.

One fault at a time, each followed by its healing and a quiet spell:

* ``kill``: SIGKILL of one node (the leader more often than not; on five nodes sometimes
  two), restarted from its data directory after a while;
* ``pause``: SIGSTOP of one node (often the leader) for one to ten election timeouts, then
  SIGCONT;
* ``partition``: a random minority cut off from the majority, both ways;
* ``isolate_leader``: the leader alone on one side;
* ``one_way``: one node stops hearing from (or reaching) some others while the other
  direction works;
* ``lossy``: some nodes lose a fraction of the datagrams they send;
* ``kill_all``: SIGKILL of every node at once, all restarted a moment later (nothing
  acknowledged may be lost: durability);
* ``crash_in_partition``: a partition, during which one node is killed and restarted
  (with the transport backend it comes back without its own fault settings, so the cut
  becomes one-sided; in a network namespace its routes stay and the cut stays whole).

Network faults go through a backend: by default ``TransportFaults``, each node's
``/admin/faults`` endpoint (``txraft.http.admin``), so nothing here needs root; with ``--net
netns``, ``txraft.tools.chaos.netns.NetnsFaults``, where the kernel makes the cuts (blackhole
routes between network namespaces) and only loss stays on the transport.  Cuts are
directed pairs ``(a, b)``: what ``a`` sends to ``b`` is lost.  The choice of fault, its
shape and its timing come from the
seed; which node is "the leader" is found at run time, so a replay with the same seed
reproduces the schedule's kinds and timing, not every target.  Everything done is logged
in ``events`` with the harness's monotonic clock.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from txraft.tools.localcluster import LocalCluster, http

FAULT_KINDS = ("kill", "pause", "partition", "isolate_leader", "one_way", "lossy",
               "kill_all", "crash_in_partition")
DEFAULT_WEIGHTS = {"kill": 3, "pause": 3, "partition": 2, "isolate_leader": 2,
                   "one_way": 2, "lossy": 2, "kill_all": 1, "crash_in_partition": 1}


class TransportFaults:
    """Network faults in each node's UDP transport, set through its admin endpoint."""

    name = "transport"

    def __init__(self, cluster: LocalCluster, token: str, log: Callable[..., None],
                 request: Callable[..., Any] = http):
        self.cluster = cluster
        self.token = token
        self.log = log
        self.request = request

    def cut(self, cuts: Iterable[Tuple[str, str]]) -> None:
        """Drop what ``a`` sends to ``b`` for each ``(a, b)``, at both ends (``drop_to``
        at the sender, ``drop_from`` at the receiver)."""
        drop_to: Dict[str, Set[str]] = {}
        drop_from: Dict[str, Set[str]] = {}
        for a, b in cuts:
            drop_to.setdefault(a, set()).add(b)
            drop_from.setdefault(b, set()).add(a)
        for node_id in sorted(set(drop_to) | set(drop_from)):
            spec = {}
            if node_id in drop_to:
                spec["drop_to"] = sorted(drop_to[node_id])
            if node_id in drop_from:
                spec["drop_from"] = sorted(drop_from[node_id])
            self._set(node_id, spec)

    def lossy(self, node_ids: Iterable[str], rate: float) -> None:
        for node_id in node_ids:
            self._set(node_id, {"loss_rate": rate})

    def _set(self, node_id: str, spec: Dict[str, Any]) -> bool:
        node = self.cluster.nodes[node_id]
        if not node.alive() or node.paused:
            return False
        result = self.request("PUT", node.url + "/admin/faults", json.dumps(spec).encode(),
                              {"Authorization": "Bearer " + self.token,
                               "Content-Type": "application/json"}, timeout=3.0)
        if result.status != 200:
            self.log("admin_error", node=node_id, status=result.status, error=result.error)
            return False
        return True

    def heal(self) -> None:
        for node_id, node in self.cluster.nodes.items():
            if node.alive() and not node.paused:
                result = self.request("DELETE", node.url + "/admin/faults",
                                      headers={"Authorization": "Bearer " + self.token},
                                      timeout=3.0)
                if result.status != 200:
                    self.log("admin_error", node=node_id, status=result.status,
                             error=result.error)


def partition_cuts(minority: Iterable[str], majority: Iterable[str]) -> Set[Tuple[str, str]]:
    """Both directions between every node of one side and every node of the other."""
    minority, majority = list(minority), list(majority)
    return {(a, b) for a in minority for b in majority} | \
        {(b, a) for a in minority for b in majority}


def one_way_cuts(source: str, targets: Iterable[str], deaf: bool) -> Set[Tuple[str, str]]:
    """``source`` cannot hear ``targets`` (``deaf``), or cannot reach them."""
    return {(t, source) if deaf else (source, t) for t in targets}


class Nemesis:
    """Runs the fault schedule in its own thread until ``stop`` is set, then heals.

    ``network(log)`` makes the backend for cuts and loss, given the nemesis's ``log``
    (default: ``TransportFaults``).
    """

    def __init__(self, cluster: LocalCluster, seed: int, admin_token: str,
                 election_timeout_seconds: float, clock: Callable[[], float] = time.monotonic,
                 weights: Optional[Dict[str, int]] = None, quiet_seconds=(0.5, 2.0),
                 fault_seconds=(1.0, 5.0),
                 network: Optional[Callable[[Callable[..., None]], Any]] = None):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.token = admin_token
        self.election_timeout = election_timeout_seconds
        self.clock = clock
        self.t0 = clock()
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.quiet_seconds = quiet_seconds
        self.fault_seconds = fault_seconds
        self.stop = threading.Event()
        self.events: List[Dict[str, Any]] = []
        self.counts: collections.Counter = collections.Counter()
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if network is None:
            network = lambda log: TransportFaults(cluster, admin_token, log)
        self.network = network(self.log)

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 30.0) -> None:
        """Stop injecting, wait for the current fault to end, then heal everything."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.heal_all()

    def halt(self, timeout: float = 10.0) -> None:
        """Stop injecting and wait for the schedule's thread, without healing (the harness
        is giving up: after this nothing restarts a node behind its back)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        kinds = sorted(self.weights)
        weights = [self.weights[k] for k in kinds]
        try:
            while not self._sleep(self.rng.uniform(*self.quiet_seconds)):
                kind = self.rng.choices(kinds, weights)[0]
                getattr(self, "_" + kind)()
        except Exception as e:  # a harness bug must not leave faults in place silently
            self.errors.append("nemesis crashed: %r" % (e,))
            self.log("error", error=repr(e))

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self.stop.wait(seconds)

    def log(self, action: str, **fields: Any) -> None:
        event = {"t": round(self.clock() - self.t0, 4), "action": action}
        event.update(fields)
        with self._lock:
            self.events.append(event)

    # -- targets --------------------------------------------------------------------------

    def leader(self) -> Optional[str]:
        """The node that most recently claims to lead (highest term), if any."""
        best = None
        for node_id, node in self.cluster.nodes.items():
            status = node.status(timeout=0.5)
            if status and status.get("role") == "leader":
                if best is None or status["term"] > best[1]:
                    best = (node_id, status["term"])
        return best[0] if best else None

    def _pick(self, prefer_leader: float) -> str:
        ids = sorted(self.cluster.nodes)
        choice = self.rng.choice(ids)
        if self.rng.random() < prefer_leader:
            return self.leader() or choice
        return choice

    def _duration(self) -> float:
        return self.rng.uniform(*self.fault_seconds)

    # -- faults ---------------------------------------------------------------------------

    def _kill(self) -> None:
        ids = sorted(self.cluster.nodes)
        count = 1
        if len(ids) >= 5 and self.rng.random() < 0.3:
            count = (len(ids) - 1) // 2
        first = self._pick(0.6)
        others = [i for i in ids if i != first]
        self.rng.shuffle(others)
        victims = [first] + others[: count - 1]
        down = self.rng.uniform(0.3, 3.0)
        for node_id in victims:
            self.cluster.kill(node_id)
        self.counts["kill"] += 1
        self.log("kill", nodes=victims, down_seconds=round(down, 3))
        self._sleep(down)
        for node_id in victims:
            self._restart(node_id)

    def _restart(self, node_id: str) -> None:
        node = self.cluster.nodes[node_id]
        if not node.alive():
            self.cluster.start(node_id)
            self.log("restart", nodes=[node_id])

    def _pause(self) -> None:
        victim = self._pick(0.6)
        timeouts = self.rng.randint(1, 10)
        self.cluster.pause(victim)
        self.counts["pause"] += 1
        self.log("pause", nodes=[victim], election_timeouts=timeouts)
        self.stop.wait(timeouts * self.election_timeout)  # short: finish it even if stopping
        self.cluster.resume(victim)
        self.log("resume", nodes=[victim])

    def _partition(self, minority: Optional[List[str]] = None, kind: str = "partition") -> None:
        ids = sorted(self.cluster.nodes)
        if minority is None:
            shuffled = list(ids)
            self.rng.shuffle(shuffled)
            size = self.rng.randint(1, max(1, (len(ids) - 1) // 2))
            minority = sorted(shuffled[:size])
        majority = [i for i in ids if i not in minority]
        duration = self._duration()
        self.network.cut(partition_cuts(minority, majority))
        self.counts[kind] += 1
        self.log(kind, minority=minority, majority=majority, seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _isolate_leader(self) -> None:
        leader = self.leader()
        if leader is None:
            leader = self.rng.choice(sorted(self.cluster.nodes))
        self._partition([leader], kind="isolate_leader")

    def _one_way(self) -> None:
        ids = sorted(self.cluster.nodes)
        source = self._pick(0.5)
        others = [i for i in ids if i != source]
        targets = sorted(self.rng.sample(others, self.rng.randint(1, len(others))))
        deaf = self.rng.random() < 0.5  # source cannot hear targets; else cannot reach them
        duration = self._duration()
        self.network.cut(one_way_cuts(source, targets, deaf))
        self.counts["one_way"] += 1
        self.log("one_way", node=source, others=targets,
                 direction="cannot_hear" if deaf else "cannot_reach", seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _lossy(self) -> None:
        ids = sorted(self.cluster.nodes)
        nodes = sorted(self.rng.sample(ids, self.rng.randint(1, len(ids))))
        rate = round(self.rng.uniform(0.1, 0.5), 3)
        duration = self._duration()
        self.network.lossy(nodes, rate)
        self.counts["lossy"] += 1
        self.log("lossy", nodes=nodes, loss_rate=rate, seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _kill_all(self) -> None:
        ids = sorted(self.cluster.nodes)
        down = self.rng.uniform(0.2, 2.0)
        for node_id in ids:
            self.cluster.kill(node_id)
        self.counts["kill_all"] += 1
        self.log("kill_all", nodes=ids, down_seconds=round(down, 3))
        self._sleep(down)
        for node_id in ids:
            self._restart(node_id)

    def _crash_in_partition(self) -> None:
        ids = sorted(self.cluster.nodes)
        shuffled = list(ids)
        self.rng.shuffle(shuffled)
        minority = sorted(shuffled[: self.rng.randint(1, max(1, (len(ids) - 1) // 2))])
        majority = [i for i in ids if i not in minority]
        victim = self.rng.choice(ids)
        before, down, after = (self.rng.uniform(0.3, 2.0), self.rng.uniform(0.2, 1.5),
                               self.rng.uniform(0.5, 2.0))
        self.network.cut(partition_cuts(minority, majority))
        self.counts["crash_in_partition"] += 1
        self.log("crash_in_partition", minority=minority, majority=majority, victim=victim,
                 seconds=round(before + down + after, 3))
        self._sleep(before)
        self.cluster.kill(victim)
        self.log("kill", nodes=[victim])
        self._sleep(down)
        self._restart(victim)
        self._sleep(after)
        self.heal_network()

    # -- healing --------------------------------------------------------------------------

    def heal_network(self) -> None:
        self.network.heal()
        self.log("heal_network")

    def heal_all(self, boot_timeout: float = 30.0) -> None:
        """Resume every paused node, restart every dead one and wait until it serves
        HTTP again (a process's boot time is not the cluster's recovery time), then clear
        every network fault."""
        for node_id, node in sorted(self.cluster.nodes.items()):
            if node.paused:
                self.cluster.resume(node_id)
                self.log("resume", nodes=[node_id])
        restarted = [node_id for node_id in sorted(self.cluster.nodes)
                     if not self.cluster.nodes[node_id].alive()]
        for node_id in restarted:
            self._restart(node_id)
        # Nodes the schedule itself restarted a moment ago may still be booting, too.
        deadline = time.monotonic() + boot_timeout
        waiting = sorted(self.cluster.nodes)
        while waiting and time.monotonic() < deadline:
            waiting = [i for i in waiting if http(
                "GET", self.cluster.nodes[i].url + "/health", timeout=1.0).status != 200]
            if waiting:
                time.sleep(0.05)
        self.log("booted", restarted=restarted, not_serving=waiting)
        self.heal_network()
        self.log("healed")

    def summary(self) -> Dict[str, int]:
        return {kind: self.counts.get(kind, 0) for kind in FAULT_KINDS}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            for event in list(self.events):
                f.write(json.dumps(event, sort_keys=True) + "\n")

"""A hand-driven cluster of ``RaftCore`` objects for scenario tests.

Where ``Simulation`` runs a clock and a random network, ``Cluster`` lets a test decide
everything: which node ticks, which message is delivered, dropped, duplicated or held
back, when a node crashes.  Every node still runs each ``Ready`` through the node's own
executor (``txraft.runtime.executor``: early messages, persist to a ``MemoryStorage``,
the other messages into ``inflight``, apply, advance, commit notices), snapshots travel
as ``SnapshotChunk`` messages of the node's own ``SnapshotTransfers``, and the same
``SafetyChecker`` runs after every delivery and tick.

Typical use::

    c = Cluster(["a", "b", "c"])
    c.elect("a")                 # a campaigns; messages flow until quiet
    c.propose("a", b"x=1")
    c.deliver()
    assert c.applied_data("b") == [b"x=1"]
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from txraft.core import LEADER, Configuration, CoreConfig, Ready, RaftCore
from txraft.core.messages import ENTRY_NOOP, Entry, HardState, InstallSnapshot
from txraft.runtime.executor import Executor
from txraft.runtime.transfer import SnapshotTransfers
from txraft.testing.sim import MemoryStorage
from txraft.testing.sim_invariants import InvariantViolation, SafetyChecker

#: Seconds of the snapshot transfers' clock per ``Cluster.tick`` round.
TICK_SECONDS = 0.01

#: Scenario tests' timing: elections after 10-19 ticks, a heartbeat every tick.
SCENARIO_CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=1)


def entries_of_terms(terms: Sequence[int]) -> List[Entry]:
    """A log with one entry per term given (index 1 first); data names its position,
    so equal (index, term) pairs on different nodes hold equal data."""
    return [Entry(i, t, b"%d.%d" % (i, t)) for i, t in enumerate(terms, 1)]


class ClusterNode:
    def __init__(self, node_id: str):
        self.id = node_id
        self.storage = MemoryStorage()
        self.core: Optional[RaftCore] = None
        self.executor: Optional[Executor] = None
        self.transfers: Optional[SnapshotTransfers] = None
        #: Every Ready this node executed (since the cluster was built).
        self.dirty = False
        self.readies: List[Ready] = []
        #: Entries applied, in order, in the current incarnation.
        self.applied: List[Entry] = []
        self.reads: List[Any] = []
        self.failed_reads: List[Any] = []


class Cluster:
    """Cores joined by a queue of in-flight messages that the test controls."""

    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        config: CoreConfig = SCENARIO_CONFIG,
        seed: int = 0,
        logs: Optional[Dict[str, Sequence[int]]] = None,
        terms: Optional[Dict[str, int]] = None,
        founding: Optional[Iterable[str]] = None,
    ):
        """``founding``: the voters the cluster starts with (default: every node); the
        other nodes start outside the configuration, as servers waiting to be added."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.node_ids = list(ids)
        self.founding = Configuration.of_voters(
            founding if founding is not None else self.node_ids
        )
        self.nodes: Dict[str, ClusterNode] = {i: ClusterNode(i) for i in self.node_ids}
        self.node_list = list(self.nodes.values())
        self.inflight: List[Any] = []
        self.dropped: List[Any] = []
        #: Tick rounds so far: the snapshot transfers' clock.
        self.ticks = 0
        self._cut: Set[Tuple[str, str]] = set()
        self.checker = SafetyChecker(self)
        for nid, node in self.nodes.items():
            log = entries_of_terms((logs or {}).get(nid, ()))
            term = max([(terms or {}).get(nid, 0)] + [e.term for e in log])
            node.storage.save(HardState(term, None), log)
            self.checker.on_persist(node, HardState(term, None), log)
        for nid in self.node_ids:
            self.start(nid)

    # ----------------------------------------------------- simulator protocol

    def violation(self, what: str) -> None:
        raise InvariantViolation(what)

    def on_new_leader(self, node: Any, term: int) -> None:
        pass

    # --------------------------------------------------------------- access

    def __getitem__(self, node_id: str) -> RaftCore:
        return self.nodes[node_id].core

    def leader(self) -> Optional[str]:
        """The live leader of the highest term, if any."""
        best = None
        for node in self.node_list:
            core = node.core
            if core is not None and core.role == LEADER:
                if best is None or core.term > self[best].term:
                    best = node.id
        return best

    def applied_data(self, node_id: str) -> List[bytes]:
        """Data of the normal entries the node applied (no-ops left out)."""
        return [e.data for e in self.nodes[node_id].applied if e.kind != ENTRY_NOOP]

    # ------------------------------------------------------------ lifecycle

    def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        hard_state, snapshot, _, entries = node.storage.load()
        core = node.core = RaftCore(
            node_id, self.founding, self.config, self.rng,
            hard_state=hard_state, snapshot=snapshot, entries=entries,
            applied_index=snapshot.index,
        )
        node.executor = Executor(
            core,
            send=lambda messages: self._send(node, messages),
            save=lambda hard_state, entries: self._save(node, hard_state, entries),
            install_snapshot=lambda image: self._install(node, image),
            apply=lambda rd: self._apply(node, rd),
        )
        node.transfers = SnapshotTransfers(
            node_id, self._send_wire, lambda: self.ticks * TICK_SECONDS,
            latest=node.storage.latest_snapshot, chunk_bytes=4, window=2,
            resend_after_seconds=4 * TICK_SECONDS,
        )
        node.applied = []
        self.checker.on_start(node)

    def crash(self, node_id: str) -> None:
        """Lose everything the node has not persisted."""
        node = self.nodes[node_id]
        node.core = node.executor = node.transfers = None

    def restart(self, node_id: str) -> None:
        self.start(node_id)
        self.process(node_id)

    # ------------------------------------------------------------- network

    def cut(self, src: str, dst: str) -> None:
        """Drop messages from ``src`` to ``dst`` (one way)."""
        self._cut.add((src, dst))

    def isolate(self, node_id: str) -> None:
        for other in self.node_ids:
            if other != node_id:
                self._cut.add((node_id, other))
                self._cut.add((other, node_id))

    def partition(self, *groups: Iterable[str]) -> None:
        groups = [list(g) for g in groups]
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                for x in a:
                    for y in b:
                        self._cut.add((x, y))
                        self._cut.add((y, x))

    def heal(self) -> None:
        self._cut.clear()

    def take(self, predicate: Callable[[Any], bool] = lambda m: True) -> List[Any]:
        """Remove and return the in-flight messages matching ``predicate``."""
        taken = [m for m in self.inflight if predicate(m)]
        self.inflight = [m for m in self.inflight if not predicate(m)]
        return taken

    def deliver_one(self, message: Any) -> None:
        """Hand ``message`` to its receiver now (even a copy delivered before)."""
        node = self.nodes.get(message.receiver)
        if node is None or node.core is None:
            self.dropped.append(message)
            return
        if (message.sender, message.receiver) in self._cut:
            self.dropped.append(message)
            return
        if not node.transfers.deliver(message, node.core):
            node.core.step(message)
        self.process(node.id)
        self.checker.after_event()

    def deliver(
        self,
        drop: Callable[[Any], bool] = lambda m: False,
        max_messages: int = 100000,
    ) -> int:
        """Deliver in-flight messages in order, and the ones they cause, until none are
        left; ``drop`` discards matching messages instead.  Returns how many arrived."""
        count = 0
        while self.inflight:
            message = self.inflight.pop(0)
            if drop(message):
                self.dropped.append(message)
                continue
            self.deliver_one(message)
            count += 1
            if count > max_messages:
                raise AssertionError("messages keep flowing after %d deliveries" % count)
        return count

    # --------------------------------------------------------------- inputs

    def tick(self, node_id: Optional[str] = None, times: int = 1) -> None:
        """Tick one node (or every live node) ``times`` times, executing its Readys."""
        ids = [node_id] if node_id is not None else self.node_ids
        for _ in range(times):
            self.ticks += 1
            for nid in ids:
                node = self.nodes[nid]
                if node.core is not None:
                    node.core.tick()
                    node.transfers.tick_for(node.core)
                    self.process(nid)
            self.checker.after_event()

    def run(self, ticks: int) -> None:
        """Tick every live node and deliver everything, ``ticks`` times."""
        for _ in range(ticks):
            self.tick()
            self.deliver()

    def campaign(self, node_id: str) -> None:
        self[node_id].campaign()
        self.process(node_id)
        self.checker.after_event()

    def elect(self, node_id: str) -> None:
        """``node_id`` campaigns and everything is delivered; it must win."""
        self.campaign(node_id)
        self.deliver()
        core = self[node_id]
        if core.role != LEADER:
            raise AssertionError("%s did not win: %s in term %d" % (node_id, core.role, core.term))

    def propose(self, node_id: str, data: bytes) -> Any:
        outcome = self[node_id].propose(data)
        self.process(node_id)
        self.checker.after_event()
        return outcome

    def change(self, node_id: str, op: str, member: Any, **kw: Any) -> Any:
        """``propose_change`` on ``node_id``, its batches executed."""
        outcome = self[node_id].propose_change(op, member, **kw)
        self.process(node_id)
        self.checker.after_event()
        return outcome

    def transfer(self, node_id: str, target: Optional[str] = None) -> Any:
        """``transfer_leadership`` on ``node_id``, its batches executed."""
        outcome = self[node_id].transfer_leadership(target)
        self.process(node_id)
        self.checker.after_event()
        return outcome

    def read(self, node_id: str, ctx: Any) -> Any:
        core = self[node_id]
        outcome = core.read_index(ctx)
        self.checker.on_read_accepted(self.nodes[node_id], ctx)
        self.process(node_id)
        self.checker.after_event()
        return outcome

    # --------------------------------------------------------- Ready driver

    def process(self, node_id: Optional[str] = None) -> None:
        """Run the node's batches through its executor until it has none."""
        ids = [node_id] if node_id is not None else self.node_ids
        for nid in ids:
            node = self.nodes[nid]
            if node.core is None:
                continue
            self.checker.touch(node)
            node.executor.drain()

    def _send(self, node: ClusterNode, messages: Any) -> None:
        for m in messages:
            self.checker.on_send(node, m)
            if type(m) is InstallSnapshot:
                if node.transfers.start(m) is None:
                    raise AssertionError("no stored snapshot covers index %d"
                                         % m.last_included_index)
            else:
                self._put(m)

    def _send_wire(self, m: Any) -> None:
        self._put(m)

    def _put(self, m: Any) -> None:
        if (m.sender, m.receiver) in self._cut:
            self.dropped.append(m)
        else:
            self.inflight.append(m)

    def _save(self, node: ClusterNode, hard_state: Any, entries: Any) -> None:
        node.storage.save(hard_state, entries)
        self.checker.on_persist(node, hard_state, entries)

    def _install(self, node: ClusterNode, image: Any) -> None:
        node.storage.save_snapshot(image.meta, image.data)
        self.checker.on_restore(node, image.meta.index)

    def _apply(self, node: ClusterNode, rd: Ready) -> None:
        node.readies.append(rd)
        for entry in rd.committed_entries:
            self.checker.on_apply(node, entry)
            node.applied.append(entry)
        for ctx in rd.reads:
            self.checker.on_read_released(node, ctx)
            node.reads.append(ctx)
        for ctx in rd.failed_reads:
            self.checker.on_read_dropped(ctx)
            node.failed_reads.append(ctx)

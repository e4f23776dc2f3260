"""A deterministic cluster simulator for ``RaftCore``: many nodes, one seed, every fault.

``Simulation`` runs N ``RaftCore`` objects on a simulated millisecond clock.  Everything
random -- election timeouts, message loss, duplication and delay, fault choices, client
behaviour -- comes from ONE ``random.Random(seed)``, so a seed replays exactly, event for
event (``Simulation.trace`` records them).

Each simulated node runs its core's batches through the node's own executor
(``txraft.runtime.executor``): messages that depend on nothing unsaved, then persist (to
a ``MemoryStorage``), then the rest of the messages, apply (to a pluggable state
machine), advance, answers, commit notices.  Snapshots travel as the node sends them,
through the node's own ``SnapshotTransfers``, in chunks, under the same faults.  A crash
keeps only what was persisted, and may strike inside a batch
(``crash(node_id, at=...)``, one of ``CRASH_POINTS``): after the early messages left
but before anything was saved (``"before_persist"``), in the middle of the save, leaving
a prefix of its records as a torn write can (``"torn"``), right after persisting
(``"persist"``), after sending (``"send"``) or after applying (``"apply"``).

Closed-loop ``SimClient``s propose writes and issue ReadIndex reads to whichever node they
think leads, with timeouts and retries; outcomes may be unknown, as in production.

After every event the ``SafetyChecker`` (``txraft.testing.sim_invariants``) checks the
paper's five safety properties and linearizable reads; a violation raises
``InvariantViolation`` naming the seed and the command that replays it.  After
``heal()``, ``await_quiet()`` checks liveness: a leader within a bound and every pending
operation resolved.

Using it for your own state machine: pass ``state_machine_factory`` (a zero-argument
callable returning an object with ``apply(entry)`` for each committed normal entry,
``query(query)`` for reads, ``snapshot() -> bytes`` and ``restore(data, meta)``;
``IStateMachineAdapter`` wraps a ``txraft.interfaces.IStateMachine``) and a
``workload`` (see ``KVWorkload``: ``next_operation``, ``write_completed``,
``read_started``, ``read_completed``) that invents operations and checks read
results.  By default the state machine is volatile: a crashed node rebuilds it from its
stored snapshot and replays the log.  With ``SimConfig.durable_state_machine`` it
survives crashes with its applied index, which the restarted core is given, as in the
node runtime.

Time: ``SimConfig.tick_ms`` milliseconds per core tick (10 by default, so the default
election timeout of 15 ticks is 150-300 ms and heartbeats go every 50 ms).
"""

from __future__ import annotations

import heapq
import random
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import attrs

from txraft.core import (
    LEADER,
    Accepted,
    ChangeRefused,
    Configuration,
    CoreConfig,
    Member,
    NotLeaderOutcome,
    RaftCore,
)
from txraft.core.messages import (
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendEntriesResponse,
    HardState,
    InstallSnapshot,
    SnapshotChunk,
    SnapshotMeta,
)
from txraft.runtime.executor import Executor
from txraft.runtime.transfer import SnapshotTransfers
from txraft.testing.sim_invariants import InvariantViolation, LivenessViolation, SafetyChecker
from txraft.testing.sim_network import SimNetwork

DEFAULT_REPLAY = "TXRAFT_SEED=%(seed)d python -m twisted.trial tests.unit.test_sim_random"

CRASH_POINTS = ("before_persist", "torn", "persist", "send", "apply")



#: ``await_quiet``: past its deadline, a cluster that applied nothing for this long is
#: stuck; one still applying is waited for up to this many times the deadline.
STALL_MS = 5000
CATCH_UP_FACTOR = 4

class SimCrash(Exception):
    """A crash point struck inside a batch: the executor stops where it is."""


@attrs.frozen
class SimConfig:
    """The simulated cluster: sizes and timings (ticks, milliseconds, bytes)."""

    #: The founding voters; ``spares`` more nodes start outside the configuration,
    #: servers a membership change may add (``Simulation.change``).
    nodes: int = 3
    spares: int = 0
    #: The leader promotes a caught-up learner after this many ticks (0: never).
    auto_promote_ticks: int = 20
    tick_ms: int = 10
    election_ticks: int = 15
    heartbeat_ticks: int = 5
    max_append_bytes: int = 1024
    max_append_entries: int = 4096
    max_inflight: int = 8
    max_apply_entries: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    #: Compact the log once this many entries are applied past the snapshot (0: never).
    snapshot_every: int = 0
    #: Bytes per snapshot chunk and chunks per window of the snapshot transfer (small,
    #: so that even a small image crosses the network in several datagrams).
    snapshot_chunk_bytes: int = 16
    snapshot_window: int = 4
    #: The state machine survives crashes with its applied index (like the runtime's
    #: SQLite one) instead of being rebuilt from the snapshot and the log.
    durable_state_machine: bool = False
    clients: int = 2
    #: A client gives up on one attempt after this long (the outcome is then unknown).
    client_timeout_ms: int = 300
    #: A client waits up to this long between operations.
    client_think_ms: int = 20
    #: Attempts of one operation before the client moves on.
    client_attempts: int = 8

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_append_bytes=self.max_append_bytes,
            max_append_entries=self.max_append_entries,
            max_inflight=self.max_inflight,
            max_apply_entries=self.max_apply_entries,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            auto_promote_ticks=self.auto_promote_ticks,
        )


# ------------------------------------------------------------------- storage


class MemoryStorage:
    """What one node has made durable: hard state, snapshot and log; survives crashes."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = SnapshotMeta()
        self.snapshot_data: Optional[bytes] = None
        self.entries: List[Any] = []
        self.truncations = 0

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def term_at(self, index: int) -> Optional[int]:
        if index == self.snapshot.index:
            return self.snapshot.term
        offset = index - self.snapshot.index - 1
        if offset < 0 or offset >= len(self.entries):
            return None
        return self.entries[offset].term

    def save(self, hard_state: Optional[HardState], entries: Any) -> None:
        """One atomic fsync: ``entries`` replace stored ones at the same or higher index."""
        if hard_state is not None:
            self.hard_state = hard_state
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index + 1:
            raise AssertionError(
                "Ready entries start at %d, after the durable log's end %d"
                % (first, self.last_index)
            )
        offset = first - self.snapshot.index - 1
        if offset < 0:
            entries = entries[-offset:]
            offset = 0
        if offset < len(self.entries):
            if self.entries[offset].term != entries[0].term:
                self.truncations += 1
            del self.entries[offset:]
        self.entries.extend(entries)

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """A durable snapshot at ``meta``; entries it covers are dropped, later ones kept
        only if the log agrees with the snapshot's last entry."""
        if self.term_at(meta.index) == meta.term:
            del self.entries[: meta.index - self.snapshot.index]
        else:
            self.entries = []
        self.snapshot = meta
        self.snapshot_data = data

    def load(self) -> Tuple[HardState, SnapshotMeta, Optional[bytes], List[Any]]:
        return self.hard_state, self.snapshot, self.snapshot_data, list(self.entries)

    def latest_snapshot(self) -> Optional[Tuple[SnapshotMeta, bytes]]:
        """The stored snapshot as the transfer reads it, or None."""
        if self.snapshot_data is None:
            return None
        return self.snapshot, self.snapshot_data


# ------------------------------------------------------------- state machine


class KVStateMachine:
    """The default state machine: a map of registers; entry data is ``b"key=value"``.

    Each register remembers the index of the entry that wrote it, so reads can be checked
    against the log.
    """

    def __init__(self) -> None:
        self.values: Dict[bytes, Tuple[bytes, int]] = {}

    def apply(self, entry: Any) -> int:
        key, sep, value = entry.data.partition(b"=")
        if sep:
            self.values[key] = (value, entry.index)
        return entry.index

    def query(self, key: bytes) -> Tuple[Optional[bytes], int]:
        return self.values.get(key, (None, 0))

    def snapshot(self) -> bytes:
        return b"\n".join(
            b"%s=%s=%d" % (k, v, i) for k, (v, i) in sorted(self.values.items())
        )

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.values = {}
        for line in data.split(b"\n"):
            if line:
                k, v, i = line.split(b"=")
                self.values[k] = (v, int(i))


class IStateMachineAdapter:
    """Run a ``txraft.interfaces.IStateMachine`` in the simulator.

    ``query`` is a callable given the wrapped state machine and the read's query.  As in
    the node runtime, NOOP entries are applied too (they advance the applied index).
    """

    #: Ask the simulator for NOOP entries as well.
    wants_noops = True

    def __init__(self, machine: Any, query: Callable[[Any, Any], Any]):
        self.machine = machine
        self._query = query

    def apply(self, entry: Any) -> Any:
        return self.machine.apply_batch([entry])[0]

    def query(self, query: Any) -> Any:
        return self._query(self.machine, query)

    def snapshot(self) -> bytes:
        return self.machine.snapshot()[2]

    def restore(self, data: bytes, meta: SnapshotMeta) -> None:
        self.machine.restore(meta.index, meta.term, data)


@attrs.frozen
class Operation:
    """One client operation: ``kind`` is "write" (``payload`` is entry data) or "read"
    (``payload`` is the state machine query); ``key`` names what it touches."""

    kind: str
    payload: Any
    key: Any = None


class KVWorkload:
    """Random writes and reads on a few registers, with the linearizability check for
    reads: a read must return a value at least as new as every write or read of that
    register that completed before the read began."""

    def __init__(self, keys: int = 3, write_ratio: float = 0.6):
        self.keys = [b"k%d" % i for i in range(keys)]
        self.write_ratio = write_ratio
        self.sim: Any = None
        #: key -> highest log index of a write to it that a client saw complete (or that
        #: a completed read returned).
        self.completed: Dict[bytes, int] = {}

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def next_operation(self, rng: random.Random, client: str, seq: int,
                       kind: Optional[str] = None, key: Any = None) -> Operation:
        """A new operation; ``kind``/``key`` ask for a particular one (a retry)."""
        if kind is None:
            kind = "write" if rng.random() < self.write_ratio else "read"
        if key is None:
            key = rng.choice(self.keys)
        if kind == "write":
            return Operation("write", b"%s=%s.%d" % (key, client.encode(), seq), key)
        return Operation("read", key, key)

    def read_started(self, op: Operation) -> int:
        return self.completed.get(op.key, 0)

    def write_completed(self, op: Operation, index: int, result: Any) -> None:
        if index > self.completed.get(op.key, 0):
            self.completed[op.key] = index

    def read_completed(self, op: Operation, required: int, result: Any) -> Optional[str]:
        value, index = result
        if index:
            entry = self.sim.checker.committed.get(index)
            if entry is None or entry.data != b"%s=%s" % (op.key, value):
                return "read of %r returned %r from index %d, which the log does not hold" % (
                    op.key, value, index)
        elif value is not None:
            return "read of %r returned %r without an index" % (op.key, value)
        if index < required:
            return (
                "stale read: %r returned the write at index %d, but the write at index %d "
                "had completed before the read began (dissertation section 6.4)"
                % (op.key, index, required)
            )
        if index > self.completed.get(op.key, 0):
            self.completed[op.key] = index
        return None


# ------------------------------------------------------------ client traffic


@attrs.frozen(slots=True)
class ClientRequest:
    client: str
    req_id: int
    op: Operation
    receiver: str


@attrs.frozen(slots=True)
class ClientResponse:
    client: str
    req_id: int
    status: str  # "ok", "not_leader", "unknown", "failed"
    sender: str
    result: Any = None
    index: int = 0
    leader_id: Optional[str] = None


# ---------------------------------------------------------------------- nodes


class SimNode:
    """One server: a core, its durable storage and its state machine, run by the
    node's executor and snapshot transfer."""

    def __init__(self, sim: "Simulation", node_id: str):
        self.sim = sim
        self.id = node_id
        self.storage = MemoryStorage()
        self.core: Optional[RaftCore] = None
        self.executor: Optional[Executor] = None
        self.transfers: Optional[SnapshotTransfers] = None
        self.machine: Any = None
        #: The index the state machine has applied (what a durable one would store).
        self.machine_applied = 0
        self.paused_until = 0
        #: What arrived while paused (a process's socket buffer), handled on resume.
        self.backlog: List[Tuple[Callable[[Any], None], Any]] = []
        self.dirty = False
        self.crash_point: Optional[str] = None
        self._persisted_in_batch = False
        self.tick_rate = 1.0
        self._tick_credit = 0.0
        self.incarnation = 0
        self.pending_writes: Dict[int, Tuple[int, ClientRequest]] = {}
        self._writes_term = 0
        self.pending_reads: Dict[Any, ClientRequest] = {}
        self._reads_accepted = 0
        #: Whether the last role this incarnation reported was leader.
        self._leading = False
        #: Node identity (``txraft.testing.sim_wipes.SimIdentity``), or None: without
        #: it messages carry no uuid and nothing is checked.
        self.identity: Any = None

    @property
    def up(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        """Boot from storage, as after a crash: only durable state survives."""
        sim = self.sim
        hard_state, snapshot, data, entries = self.storage.load()
        if self.machine is None or not sim.config.durable_state_machine:
            self.machine = sim.state_machine_factory()
            self.machine_applied = 0
        if snapshot.index > self.machine_applied:
            # A fresh machine, or a durable one that crashed between persisting a
            # received snapshot and restoring it: catch up from the stored image.
            self.machine.restore(data, snapshot)
            self.machine_applied = snapshot.index
        self.core = sim.core_factory(
            self.id, sim.founding, sim.core_config, sim.rng,
            hard_state=hard_state, snapshot=snapshot, entries=entries,
            applied_index=self.machine_applied,
        )
        self.executor = Executor(
            self.core, send=self._send, save=self._save,
            install_snapshot=self._install_snapshot, apply=self._apply,
            release=self._release,
        )
        config = sim.config
        self.transfers = SnapshotTransfers(
            self.id, self._send_wire, lambda: sim.now / 1000.0,
            latest=self.storage.latest_snapshot,
            chunk_bytes=config.snapshot_chunk_bytes, window=config.snapshot_window,
            resend_after_seconds=4 * config.tick_ms / 1000.0,
        )
        self.incarnation += 1
        self.paused_until = min(self.paused_until, sim.now)  # a new process is not paused
        self.crash_point = None
        self.pending_writes = {}
        self.pending_reads = {}
        self._leading = False
        sim.checker.on_start(self)
        if self.identity is not None:
            self.identity.started()
        sim.record("start", self.id, self.core.term, self.core.log.last_index)

    def crash(self) -> None:
        """Lose everything not in storage; clients waiting on this node time out."""
        sim = self.sim
        sim.stats["crashes"] += 1
        for ctx in self.pending_reads:
            sim.checker.on_read_dropped(ctx)
        self.core = None
        self.executor = None
        self.transfers = None
        if not sim.config.durable_state_machine:
            self.machine = None
        self.pending_writes = {}
        self.pending_reads = {}
        self.crash_point = None
        self._persisted_in_batch = False
        self.backlog = []
        sim.record("crash", self.id)

    # -------------------------------------------------------------- inputs

    def tick(self) -> None:
        core = self.core
        self._tick_credit += self.tick_rate
        while self._tick_credit >= 1.0:
            self._tick_credit -= 1.0
            was_leader = core.role == LEADER
            core.tick()
            if was_leader and core.role != LEADER:
                self.sim.stats["check_quorum_stepdowns"] += 1
                self.sim.record("stepdown", self.id, core.term)
            self.transfers.tick_for(core)
            if self.identity is not None:
                self.identity.tick()
            self.drain()
            core = self.core
            if core is None:
                return

    def receive(self, message: Any) -> None:
        core = self.core
        if core is None:
            return
        if self.paused_until > self.sim.now:
            self.backlog.append((self.receive, message))
            return
        sim = self.sim
        kind = type(message)
        sim.record("recv", self.id, message.sender, kind.__name__, message.term)
        if not self.transfers.deliver(message, core):
            if kind is AppendEntriesResponse:
                sim.observe_append_response(core, message)
            elif kind is AppendEntries:
                sim.observe_append(core, message)
            core.step(message)
        self.drain()

    def receive_identified(self, envelope: Tuple[bytes, Any]) -> None:
        """A message with its sender's uuid: delivered if the identity guard admits it."""
        if self.core is None:
            return
        if self.paused_until > self.sim.now:
            self.backlog.append((self.receive_identified, envelope))
            return
        uuid, message = envelope
        if self.identity.admit(message, uuid):
            self.receive(message)

    def _wire(self, receiver: "SimNode", m: Any) -> None:
        if self.identity is None:
            self.sim.network.send(self.id, m.receiver, m, receiver.receive)
        else:
            self.sim.network.send(self.id, m.receiver, (self.identity.uuid, m),
                                  receiver.receive_identified)

    def client_request(self, req: ClientRequest) -> None:
        core = self.core
        if core is None:
            return
        sim = self.sim
        if self.paused_until > sim.now:
            self.backlog.append((self.client_request, req))
            return
        sim.record("client", self.id, req.client, req.req_id, req.op.kind)
        if req.op.kind == "write":
            out = core.propose(req.op.payload)
            if isinstance(out, NotLeaderOutcome):
                self.reply(req, "not_leader", leader_id=out.leader_id)
                return
            if self._writes_term != out.term:
                self._fail_pending_writes()
                self._writes_term = out.term
            self.pending_writes[out.index] = (out.term, req)
        else:
            # A duplicated request is a second read: give each its own context.
            self._reads_accepted += 1
            ctx = (self.id, self.incarnation, self._reads_accepted)
            if core.role == LEADER and core.term < sim.checker.max_leader_term:
                sim.stats["deposed_leader_reads"] += 1
            out = core.read_index(ctx)
            if isinstance(out, NotLeaderOutcome):
                self.reply(req, "not_leader", leader_id=out.leader_id)
                return
            self.pending_reads[ctx] = req
            sim.checker.on_read_accepted(self, ctx)
        self.drain()

    def resume(self, _: Any = None) -> None:
        """End of a pause: process what arrived meanwhile, in arrival order."""
        if self.paused_until > self.sim.now or not self.backlog:
            return
        backlog, self.backlog = self.backlog, []
        for handle, item in backlog:
            handle(item)

    def reply(self, req: ClientRequest, status: str, **kw: Any) -> None:
        sim = self.sim
        resp = ClientResponse(req.client, req.req_id, status, self.id, **kw)
        client = sim.clients_by_id[req.client]
        sim.network.send(self.id, req.client, resp, client.on_response)

    def _fail_pending_writes(self) -> None:
        if self.pending_writes:
            for _, req in self.pending_writes.values():
                self.reply(req, "unknown")
            self.pending_writes = {}

    # ------------------------------------------------ the executor's callables

    def drain(self) -> None:
        """Run the core's batches through the executor until there are none."""
        if not self.dirty:
            self.sim.checker.touch(self)
        try:
            self.executor.drain()
        except SimCrash:
            self.crash()

    def _strike(self, point: str) -> None:
        if self.crash_point == point:
            self.sim.stats["crashes_at_" + point] += 1
            raise SimCrash(point)

    def _send(self, messages: Any) -> None:
        if self._persisted_in_batch:
            self._strike("persist")
        sim = self.sim
        checker = sim.checker
        for m in messages:
            checker.on_send(self, m)
            if type(m) is InstallSnapshot:
                started = self.transfers.stats["sent"]
                meta = self.transfers.start(m)
                if meta is None:
                    raise AssertionError(
                        "core asked to send snapshot %d, storage holds %d"
                        % (m.last_included_index, self.storage.snapshot.index)
                    )
                if self.transfers.stats["sent"] > started:
                    sim.stats["snapshots_sent"] += 1
                continue
            receiver = sim.nodes.get(m.receiver)
            if receiver is not None:
                self._wire(receiver, m)

    def _send_wire(self, m: Any) -> None:
        """The snapshot transfer's chunks and acknowledgements (they promise nothing
        durable: bytes held in memory, so the checker's send rule does not apply)."""
        sim = self.sim
        if type(m) is SnapshotChunk:
            sim.stats["snapshot_chunks_sent"] += 1
        receiver = sim.nodes.get(m.receiver)
        if receiver is not None:
            self._wire(receiver, m)

    def _install_snapshot(self, image: Any) -> None:
        self._strike("before_persist")
        sim = self.sim
        meta = image.meta
        self.storage.save_snapshot(meta, image.data)
        self.machine.restore(image.data, meta)
        self.machine_applied = meta.index
        sim.checker.on_restore(self, meta.index)
        if self.identity is not None and meta.configuration is not None:
            self.identity.committed(meta.configuration)
        sim.stats["snapshots_installed"] += 1
        self._persisted_in_batch = True
        for index in [i for i in self.pending_writes if i <= meta.index]:
            self.reply(self.pending_writes.pop(index)[1], "unknown")

    def _save(self, hard_state: Any, entries: Any) -> None:
        if not self._persisted_in_batch:
            self._strike("before_persist")
        checker = self.sim.checker
        if self.crash_point == "torn":
            # A crash in the middle of the write: the storage writes the hard state
            # record first, then one record per entry; a prefix of them survives.
            records = (1 if hard_state is not None else 0) + len(entries)
            keep = self.sim.rng.randrange(records)
            if hard_state is not None:
                if keep == 0:
                    hard_state = None
                else:
                    keep -= 1
            entries = entries[:keep]
            self.storage.save(hard_state, entries)
            checker.on_persist(self, hard_state, entries)
            self._strike("torn")
        self.storage.save(hard_state, entries)
        checker.on_persist(self, hard_state, entries)
        self._persisted_in_batch = True

    def _apply(self, rd: Any) -> List[Tuple[ClientRequest, str, Dict[str, Any]]]:
        if self._persisted_in_batch:
            self._strike("persist")
        self._strike("send")
        sim = self.sim
        checker = sim.checker
        machine = self.machine
        noops = getattr(machine, "wants_noops", False)
        pending = self.pending_writes
        answers: List[Tuple[ClientRequest, str, Dict[str, Any]]] = []
        for entry in rd.committed_entries:
            checker.on_apply(self, entry)
            result = None
            if entry.kind == ENTRY_CONFIG:
                if self.core.role == LEADER:
                    self._count_change(entry)
                if self.identity is not None:
                    self.identity.committed(Configuration.from_bytes(entry.data))
            elif noops or entry.kind != ENTRY_NOOP:
                result = machine.apply(entry)
            self.machine_applied = entry.index
            if pending:
                waiting = pending.pop(entry.index, None)
                if waiting is not None:
                    term, req = waiting
                    if term == entry.term:
                        answers.append((req, "ok", {"result": result, "index": entry.index}))
                    else:
                        answers.append((req, "failed", {}))
        for ctx in rd.reads:
            req = self.pending_reads.pop(ctx)
            checker.on_read_released(self, ctx)
            sim.stats["reads_served"] += 1
            answers.append((req, "ok", {"result": machine.query(req.op.payload)}))
        for ctx in rd.failed_reads:
            req = self.pending_reads.pop(ctx, None)
            checker.on_read_dropped(ctx)
            sim.stats["reads_failed"] += 1
            if req is not None:
                answers.append((req, "failed", {}))
        if rd.soft_state is not None:
            sim.record("role", self.id, rd.soft_state.role, rd.soft_state.term,
                       rd.soft_state.leader_id)
            if (self._leading and rd.soft_state.role != LEADER
                    and self.id not in self.core.configuration):
                sim.stats["removed_leader_stepdowns"] += 1
            self._leading = rd.soft_state.role == LEADER
            handed = sim._transfers.get(self.id)
            if self._leading and handed is not None and rd.soft_state.term > handed:
                del sim._transfers[self.id]
                sim.stats["transfers_completed"] += 1
        self._persisted_in_batch = False
        self._strike("apply")
        return answers

    def _count_change(self, entry: Any) -> None:
        """What a committed configuration entry changed (for the coverage figures)."""
        stats = self.sim.stats
        stats["config_changes_committed"] += 1
        new = Configuration.from_bytes(entry.data)
        old = self.core.config_at(entry.index - 1)[1]
        if len(new.voters) > len(old.voters):
            stats["promotions_committed"] += 1
        if len(new.ids) < len(old.ids):
            stats["removals_committed"] += 1

    def _release(self, answers: List[Tuple[ClientRequest, str, Dict[str, Any]]]) -> None:
        for req, status, kw in answers:
            self.reply(req, status, **kw)
        core = self.core
        if self.pending_writes and (core.role != LEADER or core.term != self._writes_term):
            self._fail_pending_writes()
        every = self.sim.config.snapshot_every
        if every and core.last_applied - core.snapshot_index >= every:
            self._compact()

    def _compact(self) -> None:
        core = self.core
        meta = core.compact(core.last_applied)
        self.storage.save_snapshot(meta, self.machine.snapshot())
        self.sim.stats["compactions"] += 1


# -------------------------------------------------------------------- clients


class SimClient:
    """A closed-loop client: one operation at a time, retried against the leader it
    believes in, with a timeout per attempt (after which the outcome is unknown)."""

    def __init__(self, sim: "Simulation", client_id: str):
        self.sim = sim
        self.id = client_id
        self.leader_guess: Optional[str] = None
        self.seq = 0
        self.op: Optional[Operation] = None
        self._attempt_id = 0
        self._target: Optional[str] = None
        self._token: Any = None
        self._attempts_left = 0
        self._fresh = True
        self._backoff = 0
        self.stopped = False
        #: Once set, the client stops after one successful write and one successful read.
        self.finishing = False
        self.done_kinds: set = set()

    def start(self) -> None:
        self.sim.schedule(self.sim.rng.randint(0, self.sim.config.client_think_ms),
                          self._next_operation, None)

    def _next_operation(self, _: Any) -> None:
        if self.stopped:
            return
        sim = self.sim
        self.seq += 1
        kind = None
        if self.finishing and len(self.done_kinds) == 1:
            kind = "read" if "write" in self.done_kinds else "write"
        self.op = sim.workload.next_operation(sim.rng, self.id, self.seq, kind=kind)
        self._fresh = True
        self._attempts_left = sim.config.client_attempts
        self._attempt()

    def _attempt(self) -> None:
        sim = self.sim
        if self._attempts_left <= 0:
            sim.stats["client_gave_up"] += 1
            self._think()
            return
        self._attempts_left -= 1
        if not self._fresh and self.op.kind == "write":
            # A retried write is a new write: the old one may still be applied.
            self.seq += 1
            self.op = sim.workload.next_operation(
                sim.rng, self.id, self.seq, kind="write", key=self.op.key)
        self._fresh = False
        self._attempt_id += 1
        target = self.leader_guess
        if target is None or target not in sim.nodes:
            target = sim.rng.choice(sim.node_ids)
        self._target = target
        if self.op.kind == "read":
            self._token = sim.workload.read_started(self.op)
        req = ClientRequest(self.id, self._attempt_id, self.op, target)
        sim.network.send(self.id, target, req, sim.nodes[target].client_request)
        sim.schedule(sim.config.client_timeout_ms, self._timeout, self._attempt_id)

    def _think(self) -> None:
        self.sim.schedule(self.sim.rng.randint(1, self.sim.config.client_think_ms),
                          self._next_operation, None)

    def _timeout(self, attempt_id: int) -> None:
        if attempt_id != self._attempt_id or self.stopped:
            return
        self._attempt_id += 1  # a late answer to the old attempt is ignored
        sim = self.sim
        sim.stats["client_timeouts"] += 1
        sim.record("timeout", self.id, attempt_id)
        self.leader_guess = None
        self._attempt()

    def on_response(self, resp: ClientResponse) -> None:
        if resp.req_id != self._attempt_id or self.stopped:
            return
        sim = self.sim
        self._attempt_id += 1  # this attempt is answered; its timeout is moot
        sim.record("answer", self.id, resp.req_id, resp.status, resp.index)
        op = self.op
        if resp.status == "ok":
            self._backoff = 0
            self.leader_guess = resp.sender
            if op.kind == "write":
                sim.stats["writes_ok"] += 1
                sim.workload.write_completed(op, resp.index, resp.result)
            else:
                sim.stats["reads_ok"] += 1
                error = sim.workload.read_completed(op, self._token, resp.result)
                if error is not None:
                    sim.violation(error)
            if self.finishing:
                self.done_kinds.add(op.kind)
                if len(self.done_kinds) == 2:
                    self.stopped = True
                    return
            self._think()
            return
        if resp.status == "not_leader":
            sim.stats["client_redirects"] += 1
            self.leader_guess = resp.leader_id
            if resp.leader_id is None or resp.leader_id == resp.sender:
                # No leader known: back off exponentially (10 ms doubling up to 320 ms).
                self.leader_guess = None
                self._backoff = min(self._backoff * 2 or 10, 320)
                sim.schedule(sim.rng.randint(self._backoff // 2, self._backoff),
                             self._retry_later, self._attempt_id)
                return
        elif resp.status == "unknown":
            sim.stats["writes_unknown"] += 1
        else:
            sim.stats["ops_failed"] += 1
            self.leader_guess = None
        self._attempt()

    def _retry_later(self, attempt_id: int) -> None:
        if attempt_id == self._attempt_id and not self.stopped:
            self._attempt()


# ----------------------------------------------------------------- simulation


class Stats(dict):
    """Counters that start at zero."""

    def __missing__(self, key: str) -> int:
        return 0


class Simulation:
    """N cores, a network, clients and a checker on one clock and one seeded random."""

    def __init__(
        self,
        seed: int,
        config: SimConfig = SimConfig(),
        state_machine_factory: Callable[[], Any] = KVStateMachine,
        workload: Any = None,
        replay: str = DEFAULT_REPLAY,
        record_trace: bool = True,
        rng: Optional[random.Random] = None,
        core_factory: Callable[..., RaftCore] = RaftCore,
        checker_factory: Callable[[Any], SafetyChecker] = SafetyChecker,
        identity_factory: Optional[Callable[[Any], Any]] = None,
    ):
        self.seed = seed
        self.config = config
        self.core_config = config.core_config()
        #: The one source of randomness (pass ``rng`` if you drew settings from it).
        self.rng = rng if rng is not None else random.Random(seed)
        self.replay = replay
        self.now = 0
        self.events = 0
        self._queue: List[Tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self.trace: List[Tuple[Any, ...]] = []
        self._record_trace = record_trace
        self.stats = Stats()
        self.state_machine_factory = state_machine_factory
        self.workload = workload if workload is not None else KVWorkload()
        self.workload.bind(self)
        self.network = SimNetwork(self)
        #: Builds each node's core (a test may pass a deliberately broken one).
        self.core_factory = core_factory
        self.checker = checker_factory(self)
        self.node_ids = ["n%d" % i for i in range(1, config.nodes + config.spares + 1)]
        self.founding = Configuration.of_voters(self.node_ids[: config.nodes])
        #: Nodes shut down for good: removed members, once the cluster is healed.
        self.retired: Set[str] = set()
        #: Leadership transfers under way: target -> the term the old leader led.
        self._transfers: Dict[str, int] = {}
        self.nodes: Dict[str, SimNode] = {nid: SimNode(self, nid) for nid in self.node_ids}
        self.node_list = list(self.nodes.values())
        if identity_factory is not None:  # node identity (txraft.testing.sim_wipes)
            for node in self.node_list:
                node.identity = identity_factory(node)
        self.clients = [SimClient(self, "c%d" % i) for i in range(1, config.clients + 1)]
        self.clients_by_id = {c.id: c for c in self.clients}
        self.leaders: List[Tuple[int, int, str]] = []
        self.healed_at: Optional[int] = None
        for node in self.node_list:
            node.start()
        self.schedule(config.tick_ms, self._tick, None)
        for client in self.clients:
            client.start()

    # ---------------------------------------------------------------- clock

    def schedule(self, delay_ms: int, fn: Callable[[Any], None], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._seq, fn, arg))

    def schedule_at(self, when_ms: int, fn: Callable[[Any], None], arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(when_ms, self.now), self._seq, fn, arg))

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    def run_until(self, t_end: int) -> None:
        """Run every event due up to ``t_end``, checking invariants after each."""
        queue = self._queue
        pop = heapq.heappop
        after_event = self.checker.after_event
        while queue and queue[0][0] <= t_end:
            when, _, fn, arg = pop(queue)
            self.now = when
            self.events += 1
            fn(arg)
            after_event()
        self.now = max(self.now, t_end)

    def _tick(self, _: Any) -> None:
        now = self.now
        for node in self.node_list:
            if node.core is not None and node.paused_until <= now:
                node.tick()
        self.schedule(self.config.tick_ms, self._tick, None)

    # ------------------------------------------------------------- recording

    def record(self, *event: Any) -> None:
        if self._record_trace:
            self.trace.append((self.now,) + event)

    def violation(self, what: str) -> None:
        raise InvariantViolation(
            "%s\n    seed %d, at t=%d ms (event %d)\n    replay: %s"
            % (what, self.seed, self.now, self.events, self.replay % {"seed": self.seed})
        )

    def on_new_leader(self, node: SimNode, term: int) -> None:
        self.leaders.append((self.now, term, node.id))
        self.record("leader", node.id, term)

    def observe_append(self, core: RaftCore, m: AppendEntries) -> None:
        """Count AppendEntries that are stale: everything they carry is already there."""
        if m.entries and m.term == core.term:
            last = m.entries[-1]
            if core.log.term_at(last.index) == last.term and last.index < core.log.last_index:
                self.stats["stale_appends"] += 1

    def observe_append_response(self, core: RaftCore, m: AppendEntriesResponse) -> None:
        """Count responses that arrive after a newer one from the same follower."""
        if core.role != LEADER or m.term != core.term:
            return
        pr = core.progress.get(m.sender)
        if pr is None:
            return
        if m.success and m.match_index < pr.match_index:
            self.stats["stale_responses"] += 1
        elif not m.success and m.rejected_index <= pr.match_index:
            self.stats["stale_rejections"] += 1

    # ---------------------------------------------------------------- faults

    def crash(self, node_id: str, at: Optional[str] = None) -> None:
        """Crash now, or (``at`` in ``CRASH_POINTS``) right after that step of the next
        Ready the node executes."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        if at is None:
            node.crash()
        else:
            if at not in CRASH_POINTS:
                raise ValueError("crash point must be one of %r" % (CRASH_POINTS,))
            node.crash_point = at

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is None and node_id not in self.retired:
            node.start()
            node.drain()

    # ------------------------------------------------------------ membership

    def change(self, op: str, node_id: str) -> Any:
        """Propose one single-server change on the current leader (if any); returns the
        core's outcome, or None without a leader."""
        leader = self.leader()
        if leader is None or leader.paused_until > self.now:
            return None
        outcome = leader.core.propose_change(op, Member(node_id))
        if isinstance(outcome, Accepted):
            self.stats["member_" + op] += 1
        elif isinstance(outcome, ChangeRefused):
            self.stats["member_refused_" + outcome.code] += 1
        self.record("change", leader.id, op, node_id, type(outcome).__name__)
        leader.drain()
        return outcome

    def transfer(self, target: Optional[str] = None) -> Any:
        """Ask the current leader (if any) to hand its leadership to ``target`` (None:
        its own pick); returns the core's outcome, or None without a leader."""
        leader = self.leader()
        if leader is None or leader.paused_until > self.now:
            return None
        outcome = leader.core.transfer_leadership(target)
        if isinstance(outcome, Accepted):
            self.stats["transfers_started"] += 1
            self._transfers[leader.core.transferee] = leader.core.term
        elif isinstance(outcome, ChangeRefused):
            self.stats["transfer_refused_" + outcome.code] += 1
        self.record("transfer", leader.id, target, type(outcome).__name__)
        leader.drain()
        return outcome

    def members(self) -> Tuple[str, ...]:
        """The members of the latest configuration of the live leader of the highest
        term (every node of the founding configuration without a leader)."""
        leader = self.leader()
        conf = leader.core.configuration if leader is not None else self.founding
        return conf.ids

    def retire_non_members(self) -> None:
        """Shut down, for good, every node the leader's configuration no longer names
        (what an operator does with a removed server; one that never learnt of its
        removal would otherwise campaign, harmlessly, forever)."""
        leader = self.leader()
        if leader is None:
            return
        core = leader.core
        # Neither in the latest configuration nor in the committed one: an uncommitted
        # removal may still be undone by the next leader.
        members = set(core.configuration.ids) | set(core.config_at(core.commit_index)[1].ids)
        for node in self.node_list:
            if node.id not in members and node.id not in self.retired:
                self.retired.add(node.id)
                if node.core is not None:
                    node.crash()
                self.record("retire", node.id)

    def pause(self, node_id: str, ms: int) -> None:
        """Freeze a node (no ticks, messages queue) as in a long GC or VM pause."""
        node = self.nodes[node_id]
        node.paused_until = max(node.paused_until, self.now + ms)
        self.schedule_at(node.paused_until, node.resume, None)
        self.stats["pauses"] += 1
        self.record("pause", node_id, ms)

    def leader(self) -> Optional[SimNode]:
        """The live leader of the highest term, if any."""
        best = None
        for node in self.node_list:
            core = node.core
            if core is not None and core.role == LEADER:
                if best is None or core.term > best.core.term:
                    best = node
        return best

    def heal(self) -> None:
        """End every fault: partitions, loss, duplication, long delays, crashes, pauses.
        Clients then finish with one successful write and one successful read each."""
        net = self.network
        net.heal()
        net.loss = 0.0
        net.duplicate = 0.0
        net.long_delay = 0.0
        for node in self.node_list:
            node.paused_until = min(node.paused_until, self.now)
            node.crash_point = None
            node.tick_rate = 1.0
            if node.core is None:
                self.restart(node.id)
            else:
                node.resume()
        for client in self.clients:
            client.finishing = True
            client.done_kinds = set()
            if client.stopped:
                client.stopped = False
                client.start()
        self.healed_at = self.now
        self.record("heal")

    def stable_leader(self) -> Optional[SimNode]:
        """A leader every live member follows in its term, or None."""
        leader = self.leader()
        if leader is None:
            return None
        term = leader.core.term
        members = leader.core.configuration
        for node in self.node_list:
            if node.id not in members:
                continue
            core = node.core
            if core is None or core.term != term or core.leader_id != leader.id:
                return None
        return leader

    def is_quiet(self) -> bool:
        leader = self.stable_leader()
        if leader is None:
            return False
        commit = leader.core.commit_index
        if commit != leader.core.log.last_index:
            return False
        members = leader.core.configuration
        for node in self.node_list:
            if node.id not in members:
                continue
            if (node.core.last_applied != commit or node.pending_writes
                    or node.pending_reads or node.backlog):
                return False
        return all(c.stopped for c in self.clients)

    def await_quiet(self, leader_within_ms: int, quiet_within_ms: int) -> Dict[str, int]:
        """After ``heal``: a stable leader within ``leader_within_ms`` and everything
        resolved (clients done, nothing pending, all applied) within ``quiet_within_ms``.
        Returns how long each took; raises ``LivenessViolation`` otherwise."""
        start = self.now
        step = self.config.tick_ms
        leader_at = None
        applied, moved_at = -1, start
        while True:
            if leader_at is None and self.stable_leader() is not None:
                leader_at = self.now - start
                self.retire_non_members()
            if leader_at is not None and self.is_quiet():
                return {"leader_ms": leader_at, "quiet_ms": self.now - start}
            waited = self.now - start
            if leader_at is None and waited > leader_within_ms:
                self._liveness("no stable leader %d ms after healing" % waited)
            now_applied = sum(n.core.last_applied for n in self.node_list if n.core is not None)
            if now_applied != applied:
                applied, moved_at = now_applied, self.now
            # Past the deadline, a cluster still catching up (a member far behind, at one
            # small batch per round trip: seed 10746) is given time while it applies
            # more, up to CATCH_UP_FACTOR times the deadline; one that stands still for
            # STALL_MS is stuck.
            if waited > quiet_within_ms and (
                self.now - moved_at > STALL_MS or waited > CATCH_UP_FACTOR * quiet_within_ms
            ):
                self._liveness("not quiet %d ms after healing (nothing applied for %d ms)"
                               % (waited, self.now - moved_at))
            self.run_for(step)

    def check_idle_traffic(self, ms: int = 1000, slack: float = 2.0) -> int:
        """Once quiet, a cluster exchanges heartbeats and their answers and nothing else:
        run ``ms`` more and fail if more than ``slack`` times that many messages flowed
        (a message storm, e.g. a probe answered by a probe forever).  Returns the count."""
        net = self.network.stats
        before = net["sent"]
        self.run_for(ms)
        sent = net["sent"] - before
        n = len(self.members())
        rounds = ms / float(self.config.heartbeat_ticks * self.config.tick_ms) + 1
        allowed = int(slack * rounds * 2 * (n - 1)) + 4 * n
        if sent > allowed:
            self._liveness(
                "%d messages in %d ms of an idle cluster (at most %d expected: heartbeats)"
                % (sent, ms, allowed)
            )
        return sent

    def _liveness(self, what: str) -> None:
        lines = [what, "  members: %s; retired: %s" % (
            ", ".join(self.members()), ", ".join(sorted(self.retired)) or "none")]
        for node in self.node_list:
            core = node.core
            if core is None:
                lines.append("  %s: down" % node.id)
                continue
            lines.append(
                "  %s: %s term %d leader %s commit %d applied %d last %d pending %d/%d"
                % (node.id, core.role, core.term, core.leader_id, core.commit_index,
                   core.last_applied, core.log.last_index, len(node.pending_writes),
                   len(node.pending_reads))
            )
            if core.role == LEADER:
                for peer, pr in sorted(core.progress.items()):
                    lines.append("      %s: %r" % (peer, pr))
        for client in self.clients:
            lines.append("  %s: stopped %s done %s op %r" % (
                client.id, client.stopped, sorted(client.done_kinds), client.op))
        raise LivenessViolation(
            "%s\n    seed %d, at t=%d ms\n    replay: %s"
            % ("\n".join(lines), self.seed, self.now, self.replay % {"seed": self.seed})
        )

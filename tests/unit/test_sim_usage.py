"""The simulator as a user would drive it: a custom state machine and workload, faults
scripted by hand, an ``IStateMachine`` through the adapter, and what a violation says.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txraft.interfaces import IStateMachine
from txraft.core.messages import Entry
from txraft.testing import (
    IStateMachineAdapter,
    InvariantViolation,
    LivenessViolation,
    Operation,
    SimConfig,
    Simulation,
)


class Counter:
    """A user's state machine: entries ``b"+N"`` add N; the query returns the total."""

    def __init__(self) -> None:
        self.total = 0

    def apply(self, entry: Entry) -> int:
        self.total += int(entry.data[1:])
        return self.total

    def query(self, _: Any) -> int:
        return self.total

    def snapshot(self) -> bytes:
        return b"%d" % self.total

    def restore(self, data: bytes, meta: Any) -> None:
        self.total = int(data)


class CounterWorkload:
    """Increments and reads; a read must include every increment that completed before
    it began (the counter's linearizability condition)."""

    def __init__(self) -> None:
        self.completed = 0
        self.reads = 0

    def bind(self, sim: Simulation) -> None:
        self.sim = sim

    def next_operation(self, rng: Any, client: str, seq: int,
                       kind: Optional[str] = None, key: Any = None) -> Operation:
        if kind is None:
            kind = "write" if rng.random() < 0.7 else "read"
        if kind == "write":
            return Operation("write", b"+1", "total")
        return Operation("read", None, "total")

    def write_completed(self, op: Operation, index: int, result: Any) -> None:
        self.completed += 1

    def read_started(self, op: Operation) -> int:
        return self.completed

    def read_completed(self, op: Operation, required: int, result: Any) -> Optional[str]:
        self.reads += 1
        if result < required:
            return "counter read %d, but %d increments had completed" % (result, required)
        return None


@implementer(IStateMachine)
class MemoryRegisters:
    """An ``IStateMachine`` as the node runtime would use it (kept in memory here)."""

    def __init__(self) -> None:
        self.values: Dict[bytes, bytes] = {}
        self.index = 0
        self.term = 0

    def applied_index(self) -> int:
        return self.index

    def applied_term(self) -> int:
        return self.term

    def apply_batch(self, entries: Any) -> list:
        results = []
        for entry in entries:
            key, sep, value = entry.data.partition(b"=")
            if sep:
                self.values[key] = value
            self.index, self.term = entry.index, entry.term
            results.append(entry.index if sep else None)
        return results

    def snapshot(self):
        data = b";".join(b"%s=%s" % kv for kv in sorted(self.values.items()))
        return self.index, self.term, data

    def restore(self, index: int, term: int, data: bytes) -> None:
        self.values = dict(kv.split(b"=") for kv in data.split(b";") if kv)
        self.index, self.term = index, term

    def close(self) -> None:
        pass


class SimulatorUsageTests(SynchronousTestCase):
    def test_custom_state_machine_and_workload(self):
        """Paper section 5 (replicated state machines): a user's own state machine runs
        on every simulated node; through a partition of the leader and a crash, every
        node ends with the same total, and every read saw every completed increment."""
        workload = CounterWorkload()
        sim = Simulation(11, SimConfig(nodes=3, clients=2), state_machine_factory=Counter,
                         workload=workload)
        sim.run_for(2000)
        leader = sim.leader()
        self.assertIsNotNone(leader)
        sim.network.isolate(leader.id, sim.node_ids)
        sim.run_for(3000)
        self.assertNotEqual(sim.leader().id, leader.id)
        sim.crash(sim.leader().id, at="persist")
        sim.run_for(3000)
        sim.heal()
        sim.await_quiet(leader_within_ms=3000, quiet_within_ms=10000)
        totals = {node.machine.total for node in sim.node_list}
        self.assertEqual(len(totals), 1)
        self.assertGreaterEqual(totals.pop(), workload.completed)
        self.assertGreater(workload.completed, 50)
        self.assertGreater(workload.reads, 20)
        self.assertGreaterEqual(len(sim.leaders), 2)

    def test_istatemachine_through_the_adapter(self):
        """Section 7 (snapshots) with the runtime's interface: an ``IStateMachine`` runs
        in the simulator via ``IStateMachineAdapter``, including snapshots shipped to a
        node that fell behind and restores after crashes."""
        verifyObject(IStateMachine, MemoryRegisters())

        def factory():
            return IStateMachineAdapter(MemoryRegisters(), lambda sm, key: (
                sm.values.get(key), 0))

        sim = Simulation(5, SimConfig(nodes=3, snapshot_every=10, clients=1),
                         state_machine_factory=factory, workload=_WritesOnly())
        sim.run_for(1000)
        lagging = [n for n in sim.node_ids if n != sim.leader().id][0]
        sim.crash(lagging)
        sim.run_for(3000)
        sim.restart(lagging)
        sim.heal()
        sim.await_quiet(leader_within_ms=3000, quiet_within_ms=10000)
        self.assertGreater(sim.stats["snapshots_installed"], 0)
        images = {node.machine.machine.snapshot() for node in sim.node_list}
        self.assertEqual(len(images), 1)
        self.assertEqual(images.pop()[0], sim.leader().core.commit_index)

    def test_violation_names_the_seed_and_the_replay_command(self):
        """A broken property stops the run at the event that broke it, naming the seed
        and the command that replays it."""
        sim = Simulation(1234, SimConfig(nodes=3), replay="replay me with seed %(seed)d")
        sim.run_for(1000)
        # Pretend another node applied something else at an index not yet applied.
        index = max(n.core.last_applied for n in sim.node_list) + 1
        sim.checker.committed[index] = Entry(index, 99, b"something else")
        with self.assertRaises(InvariantViolation) as caught:
            sim.run_for(5000)
        message = str(caught.exception)
        self.assertIn("State Machine Safety", message)
        self.assertIn("seed 1234", message)
        self.assertIn("replay me with seed 1234", message)

    def test_liveness_failure_is_reported(self):
        """After healing, a cluster that cannot elect a leader (here every node is
        still cut off from every other) fails the liveness check with the seed."""
        sim = Simulation(8, SimConfig(nodes=3))
        sim.run_for(1000)
        sim.heal()
        for nid in sim.node_ids:
            sim.network.isolate(nid, sim.node_ids)
        sim.run_for(1000)  # CheckQuorum deposes the leader
        with self.assertRaises(LivenessViolation) as caught:
            sim.await_quiet(leader_within_ms=2000, quiet_within_ms=5000)
        self.assertIn("no stable leader", str(caught.exception))
        self.assertIn("seed 8", str(caught.exception))


class _WritesOnly:
    """Writes to a few registers; reads are not checked (the query has no index)."""

    def bind(self, sim: Simulation) -> None:
        pass

    def next_operation(self, rng, client, seq, kind=None, key=None):
        if kind == "read":
            return Operation("read", b"k0", b"k0")
        key = key or rng.choice([b"k0", b"k1", b"k2"])
        return Operation("write", b"%s=%s.%d" % (key, client.encode(), seq), key)

    def write_completed(self, op, index, result):
        pass

    def read_started(self, op):
        return None

    def read_completed(self, op, token, result):
        return None

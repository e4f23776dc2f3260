"""Lost disks in the simulator: node identity, the wipe fault and the replacement.

``SimIdentity`` gives a simulated node what ``twistd raftnode`` gives a real one: a uuid
for its storage, carried by every message it sends (``SimNode.receive_identified``), and
the node runtime's guard (``txraft.runtime.trust.PeerIdentities``, the same class), kept
in step with the log as ``RaftNode`` keeps it: the configuration in force binds uuids,
committed configurations forget removed members, and a leader binds each member's uuid
into the configuration.  Messages from a sender outside the receiver's configuration
are delivered unchecked, as the simulator always delivered them (the transport drops
them; see ``SimIdentity.admit``).

``wipe(sim, node_id)`` is a lost disk: the node crashes and comes back with an empty
storage, an empty state machine, no peer records and a new uuid.  ``WipeNemesis`` adds
it to the randomized faults, one node at a time, and then replaces the wiped member as
docs/operations.md says: remove it, add it back, promote it.  With ``guard=False`` the
uuids travel but nothing is checked: the wiped node's forgotten votes and
acknowledgements count, which is what breaks Election Safety or loses committed
entries (``tests/unit/test_sim_wipes.py``).
"""

from __future__ import annotations

import random
from typing import Any, Optional

import attrs

from txraft.core import LEADER, Accepted
from txraft.core.config import ADD_LEARNER, BIND, PROMOTE, REMOVE
from txraft.runtime.trust import REPLICATION_TYPES, MemoryPeerStore, PeerIdentities
from txraft.testing.sim import DEFAULT_REPLAY, MemoryStorage, Simulation
from txraft.testing.sim_faults import (
    LEADER_WITHIN_MS,
    MEMBERSHIP_QUIET_WITHIN_MS,
    FaultMix,
    Nemesis,
    SeedResult,
    random_config,
    random_mix,
)


class SimIdentity:
    """One simulated node's identity and guard (see the module docstring)."""

    def __init__(self, node: Any, guard: bool = True):
        self.node = node
        self.sim = node.sim
        self.checks = guard
        self.wipe()

    def wipe(self) -> None:
        """A new data directory: a new uuid (from the simulation's random source) and
        no records."""
        self.uuid = self.sim.rng.getrandbits(128).to_bytes(16, "big")
        self.guard = PeerIdentities(MemoryPeerStore(), self.node.id)
        self._config_index: Optional[int] = None

    def _sync(self) -> None:
        core = self.node.core
        if core.config_index != self._config_index:
            self.guard.use_configuration(core.configuration)
            self._config_index = core.config_index

    def started(self) -> None:
        core = self.node.core
        self._config_index = None
        self._sync()
        self.guard.forget_absent(core.config_at(core.commit_index)[1].ids)

    def admit(self, message: Any, uuid: bytes) -> bool:
        core = self.node.core
        sender = message.sender
        if sender not in core.configuration:
            # Delivered unchecked, as the simulator always delivered them: the transport
            # would drop them (its peers are the configuration's members), which leaves
            # a follower replaying an old configuration without its current leader
            # deaf to it (a liveness problem of its own, not this guard's).
            self.sim.stats["identity_unchecked_non_member"] += 1
            return True
        self._sync()
        replication = type(message) in REPLICATION_TYPES
        if self.guard.admit(sender, uuid, replication) or not self.checks:
            return True
        self.sim.stats["dropped_wrong_identity"] += 1
        return False

    def committed(self, configuration: Any) -> None:
        self.guard.forget_absent(configuration.ids)

    def tick(self) -> None:
        core = self.node.core
        if core.role != LEADER:
            return
        self._sync()
        member = self.guard.next_binding(core.configuration, self.uuid.hex())
        if member is not None:
            outcome = core.propose_change(BIND, member, core.config_index)
            if isinstance(outcome, Accepted):
                self.sim.stats["identity_bindings"] += 1


def identities(guard: bool = True):
    """An ``identity_factory`` for ``Simulation``."""
    return lambda node: SimIdentity(node, guard)


def wipe(sim: Simulation, node_id: str) -> None:
    """``node_id`` loses its disk: it crashes, and its storage, state machine, peer
    records and uuid are new when it next starts (``sim.restart``)."""
    node = sim.nodes[node_id]
    if node.core is not None:
        node.crash()
    node.storage = MemoryStorage()
    node.machine = None
    node.machine_applied = 0
    node.identity.wipe()
    sim.checker.on_wipe(node)
    sim.stats["wipes"] += 1
    sim.record("wipe", node_id)


@attrs.frozen
class WipeMix(FaultMix):
    """A ``FaultMix`` with lost disks among the actions."""

    wipes: bool = True

    def actions(self):
        return super().actions() + (["wipes"] if self.wipes else [])


class WipeNemesis(Nemesis):
    """``Nemesis`` plus ``_wipes``: one member at a time loses its disk, restarts empty,
    and is replaced (removed, added back, promoted), retried until done, also after
    the cluster is healed."""

    def __init__(self, sim: Simulation, mix: FaultMix):
        super().__init__(sim, mix)
        self.replacing: Optional[str] = None
        self.replaced = 0

    def _wipes(self) -> None:
        sim = self.sim
        rng = sim.rng
        if self.replacing is not None:
            return
        victim = self._victim()
        if victim not in sim.members() or victim in sim.retired:
            return
        wipe(sim, victim)
        self.replacing = victim
        sim.schedule(rng.randint(50, 2000), self._restart_wiped, victim)
        sim.schedule(rng.randint(200, 4000), self._replace, (victim, REMOVE))

    def _restart_wiped(self, node_id: str) -> None:
        if self.sim.nodes[node_id].core is None:
            self.sim.restart(node_id)

    def _replace(self, step: Any) -> None:
        """docs/operations.md's replacement, one step per call: remove the member until
        its removal has committed, add it back until that has committed, promote it."""
        sim = self.sim
        victim, op = step
        leader = sim.leader()
        if leader is not None and leader.paused_until <= sim.now:
            core = leader.core
            latest = core.configuration
            committed = core.config_at(core.commit_index)[1]
            if op == REMOVE:
                if victim not in latest and victim not in committed:
                    op = ADD_LEARNER
                elif victim in latest:
                    sim.change(REMOVE, victim)
            if op == ADD_LEARNER:
                if victim in sim.retired:  # shut down while it was out of the cluster
                    sim.retired.discard(victim)
                if sim.nodes[victim].core is None:
                    sim.restart(victim)
                if victim in latest and victim in committed:
                    op = PROMOTE
                elif victim not in latest:
                    sim.change(ADD_LEARNER, victim)
            if op == PROMOTE:
                if committed.is_voter(victim):
                    self.replacing = None
                    self.replaced += 1
                    sim.stats["replacements"] += 1
                    return
                if not latest.is_voter(victim) and victim in committed:
                    sim.change(PROMOTE, victim)
        sim.schedule(100, self._replace, (victim, op))


#: Lost disks every few seconds among crashes, partitions and pauses.
WIPE_STORM = WipeMix(crashes=True, partitions=True, pauses=True, mean_gap_ms=1500,
                     target_leader=0.5)


def run_wipe_seed(seed: int, duration_ms: int = 30000, nodes: Optional[int] = None,
                  guard: bool = True, mix: FaultMix = WIPE_STORM,
                  replay: str = DEFAULT_REPLAY, record_trace: bool = False,
                  **simulation: Any) -> SeedResult:
    """``txraft.testing.sim_faults.run_seed`` with node identity and lost disks: settings
    drawn from the seed as there (no membership faults of their own: the replacements
    are the membership changes), then ``mix`` under ``WipeNemesis``; raises
    ``InvariantViolation`` or ``LivenessViolation``."""
    rng = random.Random(seed)
    if nodes is None:
        nodes = 3 if seed % 2 == 0 else 5
    config = random_config(rng, nodes)
    random_mix(rng)  # drawn as run_seed draws it, so the rest of the seed matches
    sim = Simulation(seed, config, rng=rng, replay=replay, record_trace=record_trace,
                     identity_factory=identities(guard), **simulation)
    nemesis = WipeNemesis(sim, mix)
    try:
        sim.run_for(duration_ms)
        sim.heal()
        healed = sim.now
        # A replacement under way goes on after healing: quiet means after it.
        while nemesis.replacing is not None:
            if sim.now - healed > MEMBERSHIP_QUIET_WITHIN_MS:
                sim._liveness("the replacement of %s is not done %d ms after healing"
                              % (nemesis.replacing, sim.now - healed))
            sim.run_for(sim.config.tick_ms)
        timing = sim.await_quiet(LEADER_WITHIN_MS, MEMBERSHIP_QUIET_WITHIN_MS)
        idle_messages = sim.check_idle_traffic()
    except Exception as e:
        e.simulation = sim  # type: ignore[attr-defined]
        e.nemesis = nemesis  # type: ignore[attr-defined]
        raise
    return SeedResult(
        seed=seed, nodes=nodes, mix=mix, config=config, stats=dict(sim.stats),
        network=dict(sim.network.stats), leaders=len(sim.leaders),
        truncations=sum(n.storage.truncations for n in sim.node_list),
        leader_ms=timing["leader_ms"], quiet_ms=timing["quiet_ms"], events=sim.events,
        idle_messages=idle_messages, trace=sim.trace if record_trace else None,
    )

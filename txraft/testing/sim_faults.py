"""Random fault schedules for the simulator: a different mix of faults for every seed.

``run_seed(seed)`` builds a 3- or 5-node cluster whose settings and faults are drawn from
the seed, runs it for ``duration_ms`` of simulated time under a ``Nemesis`` (partitions --
symmetric, one-way and bridged --, crashes, crashes in the middle of a Ready, pauses,
plus network loss, duplication and long delays and per-node clock skew; in a share of
the seeds also membership changes: spare servers added as learners, learners promoted,
voters and learners removed -- the leader among them -- and removed servers added
back with their old state), then heals everything and checks liveness.  It returns a ``SeedResult`` with the counters the
coverage test looks at.  Every draw comes from the simulation's one ``random.Random``.

Changing what ``run_seed`` draws, or the order in which the simulator consumes the random
source, changes the scenario every seed names: re-derive the regression seeds in
``tests/unit/test_sim_regressions.py`` then (its docstring says how).  Whether a seed
changes membership, and with how many spare servers, is drawn from a random source of
its own (``membership_draw``), so that seeds without membership changes name the
scenarios they named before membership existed.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Set, Tuple

import attrs

from txraft.core import ADD_LEARNER, PROMOTE, REMOVE
from txraft.testing.sim import CRASH_POINTS, DEFAULT_REPLAY, SimConfig, Simulation


@attrs.frozen
class FaultMix:
    """Which faults a seed uses, and how hard."""

    loss: float = 0.0
    duplicate: float = 0.0
    max_delay_ms: int = 5
    long_delay: float = 0.0
    long_delay_ms: int = 300
    clock_skew: float = 0.0
    partitions: bool = False
    one_way: bool = False
    bridges: bool = False
    crashes: bool = False
    crash_points: bool = False
    pauses: bool = False
    #: Membership changes (``Simulation.change``) among the actions.
    membership: bool = False
    #: Leadership transfers (``Simulation.transfer``) among the actions.
    transfers: bool = False
    #: Mean time between two fault actions.
    mean_gap_ms: int = 2000
    #: How often a fault aims at the current leader rather than any node.
    target_leader: float = 0.5

    def actions(self) -> List[str]:
        names = []
        for name in ("partitions", "one_way", "bridges", "crashes", "pauses", "membership",
                     "transfers"):
            if getattr(self, name):
                names.append(name)
        return names


def random_mix(rng: random.Random) -> FaultMix:
    """Draw a fault mix; every seed gets its own."""
    mix = FaultMix(
        loss=rng.choice([0.0, 0.0, 0.01, 0.05, 0.1, 0.2]),
        duplicate=rng.choice([0.0, 0.02, 0.1]),
        max_delay_ms=rng.choice([2, 5, 10, 20]),
        long_delay=rng.choice([0.0, 0.01, 0.03, 0.1]),
        long_delay_ms=rng.choice([100, 300, 1000]),
        clock_skew=rng.choice([0.0, 0.05, 0.2]),
        partitions=rng.random() < 0.6,
        one_way=rng.random() < 0.4,
        bridges=rng.random() < 0.25,
        crashes=rng.random() < 0.6,
        crash_points=rng.random() < 0.5,
        pauses=rng.random() < 0.4,
        mean_gap_ms=rng.choice([500, 1000, 2000, 4000]),
        target_leader=rng.choice([0.2, 0.5, 0.8]),
    )
    if not mix.actions():
        mix = attrs.evolve(mix, partitions=True)
    return mix


def membership_draw(seed: int) -> Tuple[bool, int, int]:
    """``(membership, spares, auto_promote_ticks)`` for a seed, from its own source."""
    rng = random.Random("membership-%d" % seed)
    if rng.random() >= 0.4:
        return False, 0, 20
    return True, rng.choice([1, 1, 2]), rng.choice([0, 10, 20, 60])


def transfer_draw(seed: int) -> bool:
    """Whether a seed hands the leadership over now and then, from its own source (so
    that the other seeds keep the scenarios they named before transfers existed)."""
    return random.Random("transfer-%d" % seed).random() < 0.4


def random_config(rng: random.Random, nodes: int) -> SimConfig:
    """Cluster settings for one seed (timings fixed: 10 ms ticks, election 15, heartbeat 5)."""
    return SimConfig(
        nodes=nodes,
        max_append_bytes=rng.choice([64, 256, 1024, 64 * 1024]),
        max_inflight=rng.choice([1, 4, 64]),
        max_apply_entries=rng.choice([1, 3, 4096]),
        pre_vote=rng.random() < 0.85,
        check_quorum=rng.random() < 0.85,
        snapshot_every=rng.choice([0, 0, 25, 100]),
        durable_state_machine=rng.random() < 0.5,
        clients=rng.choice([1, 2, 3, 5]),
        client_think_ms=rng.choice([10, 30, 60]),
    )


class Nemesis:
    """Drives a ``FaultMix`` against a simulation until it is healed."""

    def __init__(self, sim: Simulation, mix: FaultMix):
        self.sim = sim
        self.mix = mix
        self._actions = mix.actions()
        self._cuts: Dict[int, Set[Tuple[str, str]]] = {}
        self._next_cut = 0
        net = sim.network
        net.loss = mix.loss
        net.duplicate = mix.duplicate
        net.max_delay_ms = mix.max_delay_ms
        net.long_delay = mix.long_delay
        net.long_delay_ms = mix.long_delay_ms
        for node in sim.node_list:
            if mix.clock_skew:
                node.tick_rate = 1.0 + sim.rng.uniform(-mix.clock_skew, mix.clock_skew)
        self._schedule_next()

    def _schedule_next(self) -> None:
        gap = self.mix.mean_gap_ms
        self.sim.schedule(self.sim.rng.randint(gap // 2, gap * 3 // 2), self._act, None)

    def _victim(self) -> str:
        sim = self.sim
        rng = sim.rng
        leader = sim.leader()
        if leader is not None and rng.random() < self.mix.target_leader:
            return leader.id
        return rng.choice(sim.node_ids)

    def _act(self, _: Any) -> None:
        sim = self.sim
        if sim.healed_at is not None:
            return
        action = sim.rng.choice(self._actions)
        getattr(self, "_" + action)()
        self._schedule_next()

    # -------------------------------------------------------------- partitions

    def _cut(self, links: Set[Tuple[str, str]], kind: str) -> None:
        sim = self.sim
        self._next_cut += 1
        cut_id = self._next_cut
        self._cuts[cut_id] = links
        for src, dst in links:
            sim.network.block(src, dst)
        sim.stats[kind] += 1
        sim.record("cut", kind, tuple(sorted(links)))
        sim.schedule(sim.rng.randint(200, 6000), self._mend, cut_id)

    def _mend(self, cut_id: int) -> None:
        sim = self.sim
        if sim.healed_at is not None:
            return
        del self._cuts[cut_id]
        sim.network.heal()
        for links in self._cuts.values():
            for src, dst in links:
                sim.network.block(src, dst)
        sim.record("mend", cut_id)

    def _partitions(self) -> None:
        sim = self.sim
        rng = sim.rng
        ids = list(sim.node_ids)
        size = rng.randint(1, (len(ids) - 1) // 2)
        minority = {self._victim()}
        while len(minority) < size:
            minority.add(rng.choice(ids))
        links = set()
        for a in minority:
            for b in ids:
                if b not in minority:
                    links.add((a, b))
                    links.add((b, a))
        self._cut(links, "partitions")

    def _one_way(self) -> None:
        sim = self.sim
        rng = sim.rng
        victim = self._victim()
        others = [n for n in sim.node_ids if n != victim]
        chosen = rng.sample(others, rng.randint(1, len(others)))
        if rng.random() < 0.5:
            links = {(victim, o) for o in chosen}  # it cannot talk, it still hears
        else:
            links = {(o, victim) for o in chosen}  # it cannot hear, it still talks
        self._cut(links, "one_way_partitions")

    def _bridges(self) -> None:
        # The bridge sees everyone; the two sides do not see each other.
        sim = self.sim
        rng = sim.rng
        bridge = self._victim()
        others = [n for n in sim.node_ids if n != bridge]
        rng.shuffle(others)
        half = len(others) // 2
        left, right = others[:half], others[half:]
        links = set()
        for a in left:
            for b in right:
                links.add((a, b))
                links.add((b, a))
        self._cut(links, "bridge_partitions")

    # ----------------------------------------------------------- node faults

    def _crashes(self) -> None:
        sim = self.sim
        rng = sim.rng
        down = sum(1 for n in sim.node_list if n.core is None or n.crash_point)
        if down >= (len(sim.node_ids) - 1) // 2 and rng.random() < 0.8:
            return  # mostly keep a majority up, so the cluster makes progress
        victim = self._victim()
        if sim.nodes[victim].core is None:
            return
        at = None
        if self.mix.crash_points and rng.random() < 0.7:
            at = rng.choice(CRASH_POINTS)
        sim.crash(victim, at)
        sim.record("nemesis_crash", victim, at)
        sim.schedule(rng.randint(50, 4000), self._restart, victim)

    def _restart(self, node_id: str) -> None:
        sim = self.sim
        if sim.healed_at is not None:
            return
        node = sim.nodes[node_id]
        if node.core is not None and node.crash_point:
            sim.schedule(100, self._restart, node_id)  # the crash has not struck yet
            return
        sim.restart(node_id)

    def _pauses(self) -> None:
        sim = self.sim
        sim.pause(self._victim(), sim.rng.randint(50, 2500))

    # ------------------------------------------------------------ membership

    def _membership(self) -> None:
        """One single-server change on the leader: add a server outside the
        configuration (a spare, or a removed one with whatever state it kept), promote
        a learner, or remove a member (the leader too).  A refusal (another change in
        progress, the leader's no-op not committed, a learner behind) is an outcome
        like any other."""
        sim = self.sim
        rng = sim.rng
        leader = sim.leader()
        if leader is None:
            return
        conf = leader.core.configuration
        outside = [n for n in sim.node_ids if n not in conf and n not in sim.retired]
        choices = []
        if outside:
            choices += [ADD_LEARNER, ADD_LEARNER]
        if conf.learners:
            choices += [PROMOTE, PROMOTE]
        if len(conf.ids) > 1:
            choices.append(REMOVE)
        if not choices:
            return
        op = rng.choice(choices)
        if op == ADD_LEARNER:
            target = rng.choice(outside)
        elif op == PROMOTE:
            target = rng.choice(conf.learners)
        elif rng.random() < self.mix.target_leader:
            target = leader.id  # the removed leader must step down (section 4.2.2)
        else:
            target = rng.choice(conf.ids)
        sim.change(op, target)
        if rng.random() < 0.3:
            # Another change at once: refused while the first has not committed.
            self._membership()

    def _transfers(self) -> None:
        """Dissertation 3.10: the leader hands over to a voter (named, or its own pick),
        under whatever faults are in force; sometimes a second request at once."""
        sim = self.sim
        rng = sim.rng
        leader = sim.leader()
        if leader is None:
            return
        target = None
        if rng.random() < 0.5:
            target = rng.choice(leader.core.configuration.ids)
        sim.transfer(target)
        if rng.random() < 0.2:
            sim.transfer(rng.choice(leader.core.configuration.ids))


@attrs.frozen
class SeedResult:
    seed: int
    nodes: int
    mix: FaultMix
    config: SimConfig
    stats: Dict[str, int]
    network: Dict[str, int]
    leaders: int
    truncations: int
    leader_ms: int
    quiet_ms: int
    events: int
    idle_messages: int = 0
    trace: Optional[List[Any]] = None


#: Crashes every few hundred milliseconds, most of them inside a batch (after the early
#: sends, mid-write, between steps), with partitions: what makes a wrong order of
#: persist and send observable as a broken property of the paper (the mutation tests).
CRASH_STORM = FaultMix(crashes=True, crash_points=True, partitions=True, mean_gap_ms=300,
                       target_leader=0.5)

#: Liveness bounds after healing, for 10 ms ticks and a 15-tick election timeout
#: (150-300 ms): a stable leader within ten maximal election timeouts, and every client
#: done and every node caught up within ten seconds.
LEADER_WITHIN_MS = 3000
QUIET_WITHIN_MS = 10000
#: With membership changes a server may have been added (back) as a learner shortly
#: before healing, hundreds of entries behind; with the smallest batches and one
#: message in flight it catches up at one entry per round trip (about 25 ms here).
MEMBERSHIP_QUIET_WITHIN_MS = 30000


def run_seed(
    seed: int,
    duration_ms: int = 60000,
    nodes: Optional[int] = None,
    replay: str = DEFAULT_REPLAY,
    record_trace: bool = False,
    mix: Optional[FaultMix] = None,
    **simulation: Any,
) -> SeedResult:
    """Run one randomized scenario; raises ``InvariantViolation`` or ``LivenessViolation``.

    ``mix`` replaces the seed's drawn fault mix (the draw still happens, so the rest of
    the seed stays as it was); ``simulation`` goes to ``Simulation`` (``core_factory``,
    ``checker_factory``: the mutation tests run deliberately broken cores through
    here)."""
    rng = random.Random(seed)
    if nodes is None:
        nodes = 3 if seed % 2 == 0 else 5
    config = random_config(rng, nodes)
    drawn = random_mix(rng)
    membership, spares, auto_promote_ticks = membership_draw(seed)
    if membership:
        drawn = attrs.evolve(drawn, membership=True)
        config = attrs.evolve(config, spares=spares, auto_promote_ticks=auto_promote_ticks)
    if transfer_draw(seed):
        drawn = attrs.evolve(drawn, transfers=True)
    mix = drawn if mix is None else mix
    sim = Simulation(seed, config, rng=rng, replay=replay, record_trace=record_trace,
                     **simulation)
    Nemesis(sim, mix)
    try:
        sim.run_for(duration_ms)
        sim.heal()
        timing = sim.await_quiet(
            LEADER_WITHIN_MS, MEMBERSHIP_QUIET_WITHIN_MS if mix.membership else QUIET_WITHIN_MS
        )
        idle_messages = sim.check_idle_traffic()
    except Exception as e:
        e.simulation = sim  # type: ignore[attr-defined]  # for a replay's post-mortem
        raise
    return SeedResult(
        seed=seed,
        nodes=nodes,
        mix=mix,
        config=config,
        stats=dict(sim.stats),
        network=dict(sim.network.stats),
        leaders=len(sim.leaders),
        truncations=sum(n.storage.truncations for n in sim.node_list),
        leader_ms=timing["leader_ms"],
        quiet_ms=timing["quiet_ms"],
        events=sim.events,
        idle_messages=idle_messages,
        trace=sim.trace if record_trace else None,
    )

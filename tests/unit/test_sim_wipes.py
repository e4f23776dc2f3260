"""Lost disks in the simulator (``txraft.testing.sim_wipes``): node identity matters.

A wipe is a member that comes back with an empty storage: it forgot its votes and the
entries it acknowledged.  Without the identity guard its forgotten promises count and
the paper's properties break on seeds of the CI budget; with the guard (the node
runtime's ``PeerIdentities``, run as the node runs it) none does, and every wiped
member is replaced (removed, added back, promoted) and the cluster goes quiet.

``TXRAFT_WIPE_SEEDS=N`` runs N seeds (default 30) in the guarded test.  The unguarded
seeds pinned below name scenarios of today's draws: if the simulator's use of its
random source changes, find new ones with ``first_unsafe_seed`` (the docstring of
``tests/unit/test_sim_regressions.py`` says why seeds move).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txraft.runtime.trust import PeerIdentities
from txraft.testing.sim_invariants import InvariantViolation, LivenessViolation
from txraft.testing.sim_wipes import run_wipe_seed

REPLAY = ("python -c 'from txraft.testing.sim_wipes import run_wipe_seed; "
          "run_wipe_seed(%(seed)d)'")
#: Seeds where a wipe without the guard broke a property of the paper (found with
#: ``first_unsafe_seed``; seeds 0-39 searched): Leader Completeness (27), Log Matching
#: (28: two leaders of one term wrote different entries at one index).  Seeds 0 and 10
#: did so too until a removed server that may hold the only copy of its removal could
#: campaign (their schedules changed with it); without the guard seed 34 also served
#: a stale read.
UNSAFE_WITHOUT_GUARD = (27, 28)
#: Seeds found deadlocked before a leader's replication was tolerated from another
#: uuid (a replaced follower replaying a configuration that bound its leader's old
#: data directory refused that leader forever).
REPLAYED_OLD_BINDING = (4, 8)


def first_unsafe_seed(start=0, budget=60):
    """The first seed from ``start`` where the unguarded cluster breaks a property."""
    for seed in range(start, start + budget):
        try:
            run_wipe_seed(seed, guard=False)
        except InvariantViolation:
            return seed
    return None


class WipeTests(SynchronousTestCase):
    def test_the_guard_holds_under_lost_disks(self):
        """Figure 3's properties and linearizable reads hold after every event while
        members lose their disks one at a time among crashes, partitions and pauses;
        each wiped member is refused until it is replaced, is replaced, and the
        cluster goes quiet after healing."""
        seeds = range(int(os.environ.get("TXRAFT_WIPE_SEEDS", "30")))
        wipes = refused = bound = 0
        for seed in seeds:
            r = run_wipe_seed(seed, replay=REPLAY)
            self.assertEqual(r.stats.get("replacements", 0), r.stats.get("wipes", 0), seed)
            wipes += r.stats.get("wipes", 0)
            refused += r.stats.get("dropped_wrong_identity", 0)
            bound += r.stats.get("identity_bindings", 0)
        self.assertGreater(wipes, len(seeds))
        self.assertGreater(refused, wipes)
        self.assertGreater(bound, len(seeds) * 3)

    def test_without_the_guard_a_wipe_breaks_safety(self):
        """The same scenarios without the guard: the wiped member's forgotten votes
        and acknowledgements count, and a committed entry goes missing from a leader
        (Leader Completeness) or two leaders of one term diverge (Log Matching)."""
        for seed in UNSAFE_WITHOUT_GUARD:
            with self.assertRaises(InvariantViolation, msg="seed %d" % seed) as caught:
                run_wipe_seed(seed, guard=False, replay=REPLAY)
            self.assertRegex(str(caught.exception), "Leader Completeness|Log Matching")
            run_wipe_seed(seed, replay=REPLAY)  # and with the guard it holds

    def test_a_replaced_follower_replaying_old_bindings_is_not_stuck(self):
        """Regression: a follower catching up through the log applies configurations
        that bound its current leader's previous data directory; the leader's
        replication still reaches it (it is tolerated), so it gets to the newer
        configurations and the cluster goes quiet."""
        for seed in REPLAYED_OLD_BINDING:
            r = run_wipe_seed(seed, replay=REPLAY)
            self.assertGreater(r.stats["replacements"], 0)
        # Without the tolerance the same seeds never finish their replacement.
        admit = PeerIdentities.admit
        self.patch(PeerIdentities, "admit",
                   lambda guard, peer, uuid, replication=False: admit(guard, peer, uuid))
        for seed in REPLAYED_OLD_BINDING:
            with self.assertRaises(LivenessViolation) as caught:
                run_wipe_seed(seed, replay=REPLAY)
            self.assertIn("replacement of", str(caught.exception))

    def test_same_seed_same_trace(self):
        """Determinism holds with identities: uuids come from the seed's random source."""
        first = run_wipe_seed(2, duration_ms=8000, record_trace=True)
        second = run_wipe_seed(2, duration_ms=8000, record_trace=True)
        self.assertEqual(first.trace, second.trace)
        self.assertEqual(first.stats, second.stats)

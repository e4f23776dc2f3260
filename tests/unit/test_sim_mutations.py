"""Mutation tests: the simulator's checks catch a core that sends before it persists.

Each mutant is the real core with one message moved to before the fsync: a follower
acknowledging entries it has not saved, or a candidate asking for votes and a voter
granting one before the vote is saved (Figure 2: "respond to RPCs only after updating
stable storage").  The simulator runs the node's own executor, and its crashes lose what
was not fsynced, so such an order is observable.  Two ways to catch it:

- the direct check (``SafetyChecker.on_send``: nothing leaves a node that depends on
  state it has not made durable) fails on the first message;
- with that check switched off, the properties of the paper themselves (Election
  Safety, one vote per term, Log Matching, Leader Completeness, State Machine Safety)
  fail within the CI seed budget under ``CRASH_STORM``, while the real core passes the
  same seeds.
"""

from __future__ import annotations

import functools

from twisted.trial.unittest import SynchronousTestCase

from txraft.core import RaftCore
from txraft.core.messages import AppendEntriesResponse, RequestVote, RequestVoteResponse
from txraft.testing.sim_faults import CRASH_STORM, run_seed
from txraft.testing.sim_invariants import InvariantViolation, SafetyChecker

#: Seeds each mutant may take to be caught (the CI budget of the randomized test).
BUDGET = 200
#: Seeds of the storm the real core must pass (the mutants are caught well before).
CONTROL_SEEDS = 40
STORM_MS = 20000


class AckBeforeFsync(RaftCore):
    """A follower acknowledges new entries before they are durable."""

    def _depends_on_unsaved(self, m):
        if type(m) is AppendEntriesResponse:
            return False
        return super()._depends_on_unsaved(m)


class VoteBeforeSave(RaftCore):
    """A candidate asks, and a voter grants, before the term and vote are durable."""

    def _depends_on_unsaved(self, m):
        if type(m) in (RequestVote, RequestVoteResponse):
            return False
        return super()._depends_on_unsaved(m)


MUTANTS = {"acknowledgement before fsync": AckBeforeFsync, "vote before save": VoteBeforeSave}


def storm(seed, core, check_sends):
    return run_seed(seed, duration_ms=STORM_MS, nodes=3, mix=CRASH_STORM, core_factory=core,
                    checker_factory=functools.partial(SafetyChecker, check_sends=check_sends))


def first_caught(core, check_sends, budget=BUDGET):
    """The first seed (and its violation) in which ``core`` breaks a checked property."""
    for seed in range(budget):
        try:
            storm(seed, core, check_sends)
        except InvariantViolation as e:
            return seed, str(e)
    return None, None


class MutationTests(SynchronousTestCase):
    def test_the_direct_check_catches_each_mutant_at_once(self):
        """With every check on, the first message sent out of order is reported (seed
        0 of the storm)."""
        for name, core in MUTANTS.items():
            seed, violation = first_caught(core, check_sends=True, budget=1)
            self.assertEqual(seed, 0, name)
            self.assertIn("durable", violation, name)

    def test_the_papers_properties_catch_each_mutant_under_crashes(self):
        """With the direct check off, crashes that lose unsynced writes turn each
        mutant's order into a broken property of the paper within the seed budget."""
        found = {}
        for name, core in MUTANTS.items():
            seed, violation = first_caught(core, check_sends=False)
            self.assertIsNotNone(seed, "%s not caught in %d seeds" % (name, BUDGET))
            found[name] = (seed, violation.splitlines()[0])
        properties = ("Election Safety", "voted for", "Log Matching", "Leader Completeness",
                      "State Machine Safety", "Leader Append-Only")
        for name, (seed, first_line) in found.items():
            self.assertTrue(any(p in first_line for p in properties), (name, seed, first_line))

    def test_the_real_core_passes_the_same_storm(self):
        """The storm proves nothing if it fails a correct core: the real one passes its
        seeds with every check on (liveness after healing included)."""
        for seed in range(CONTROL_SEEDS):
            storm(seed, RaftCore, check_sends=True)

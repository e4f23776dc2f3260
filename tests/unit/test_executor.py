"""The one executor of Raft's output (``txraft.runtime.executor``), on journals.

The core decides when each message may leave (dissertation section 10.2.1 for the
leader's AppendEntries; Figure 2's "respond to RPCs only after updating stable storage"
for everything that promises state); the executor is the only code that turns that into
calls, in the node and in the simulator.  These tests record every call it makes and
assert the exact order.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from txraft.core import CoreConfig, CoreError, RaftCore, Ready
from txraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    RequestVote,
    RequestVoteResponse,
)
from txraft.runtime.executor import Executor


class Journal:
    """Executor callables that record what they were given."""

    def __init__(self, fail_at=None):
        self.events = []
        self.fail_at = fail_at

    def _note(self, *event):
        self.events.append(event)
        if event[0] == self.fail_at:
            raise OSError("disk on fire")

    def send(self, messages):
        self._note("send", tuple(messages))

    def save(self, hard_state, entries):
        self._note("save", hard_state, tuple(entries))

    def install_snapshot(self, image):
        self._note("install", image.meta)

    def apply(self, rd):
        self._note("apply", tuple(e.index for e in rd.committed_entries))
        return "answers of %d" % len(rd.committed_entries)

    def release(self, outcome):
        self._note("release", outcome)

    def late(self, messages):
        self._note("late", tuple(messages))

    def executor(self, core):
        return Executor(core, send=self.send, save=self.save,
                        install_snapshot=self.install_snapshot, apply=self.apply,
                        release=self.release, send_after_apply=self.late)

    def kinds(self):
        return [e[0] for e in self.events]


CONFIG = CoreConfig(election_ticks=10, heartbeat_ticks=1, pre_vote=False)


def leader(peers=("b", "c")):
    core = RaftCore("a", ("a",) + tuple(peers), CONFIG, random.Random(1))
    core.campaign()
    core.advance(core.ready())
    for peer in peers:
        core.step(RequestVoteResponse(core.term, peer, "a", vote_granted=True))
    core.advance(core.ready())
    for peer in peers:  # both acknowledge the no-op, so they replicate
        core.step(AppendEntriesResponse(core.term, peer, "a", success=True,
                                        match_index=core.log.last_index))
    core.advance(core.ready())
    return core


class OrderTests(SynchronousTestCase):
    def test_a_leaders_entries_leave_before_its_own_fsync(self):
        """Dissertation section 10.2.1: a leader with a durable term sends its
        AppendEntries first, then saves the same entries, and counts its own copy only
        in advance (after the save)."""
        core = leader()
        journal = Journal()
        core.propose(b"x")
        index = core.log.last_index
        journal.executor(core).drain()
        self.assertEqual(journal.kinds(), ["send", "save", "apply", "release"])
        sent = journal.events[0][1]
        self.assertEqual({m.receiver for m in sent}, {"b", "c"})
        self.assertTrue(all(type(m) is AppendEntries and m.entries for m in sent))
        self.assertEqual(journal.events[1][2][-1].index, index)
        self.assertLess(core.commit_index, index)  # the followers have not answered

    def test_a_vote_leaves_only_after_it_is_saved(self):
        """Figure 2: a granted vote (and the term it is cast in) is durable before the
        answer leaves."""
        core = RaftCore("b", ("a", "b", "c"), CONFIG, random.Random(1))
        journal = Journal()
        core.step(RequestVote(1, "a", "b", 0, 0))
        journal.executor(core).drain()
        self.assertEqual(journal.kinds(), ["save", "send", "apply", "release"])
        self.assertEqual(journal.events[0][1], HardState(1, "a"))
        (answer,) = journal.events[1][1]
        self.assertTrue(answer.vote_granted)

    def test_an_acknowledgement_of_new_entries_leaves_after_the_fsync(self):
        """Figure 2: a follower acknowledges entries only once they are durable; a
        heartbeat answer that acknowledges only what was already durable may go first."""
        core = RaftCore("b", ("a", "b", "c"), CONFIG, random.Random(1))
        journal = Journal()
        executor = journal.executor(core)
        core.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1, b"x"),), 0))
        executor.drain()
        self.assertEqual(journal.kinds(), ["save", "send", "apply", "release"])
        self.assertEqual(journal.events[1][1][0].match_index, 1)
        journal.events.clear()
        core.step(AppendEntries(1, "a", "b", 1, 1, (), 1))
        core.step(AppendEntries(1, "a", "b", 1, 1, (Entry(2, 1, b"y"),), 1))
        executor.drain()
        self.assertEqual(journal.kinds(), ["send", "save", "send", "apply", "release"])
        early, late = journal.events[0][1], journal.events[2][1]
        self.assertEqual([m.match_index for m in early], [1])
        self.assertEqual([m.match_index for m in late], [2])
        self.assertEqual(journal.events[3][1], (1,))

    def test_commit_notices_leave_after_the_answers(self):
        """Commit notices promise nothing and nobody waits for them: they leave after
        the batch is applied, advanced and its answers released."""
        core = leader()
        journal = Journal()
        executor = journal.executor(core)
        core.propose(b"x")
        executor.drain()
        journal.events.clear()
        for peer in ("b", "c"):
            core.step(AppendEntriesResponse(core.term, peer, "a", success=True,
                                            match_index=core.log.last_index))
        executor.drain()
        self.assertEqual(journal.kinds(), ["apply", "release", "late"])
        notices = journal.events[2][1]
        self.assertEqual({(m.receiver, m.entries, m.leader_commit) for m in notices},
                         {("b", (), core.commit_index), ("c", (), core.commit_index)})

    def test_a_snapshot_is_installed_before_the_log_is_saved(self):
        """Section 7: a leader's snapshot is installed (durably) before the entries that
        follow it are saved, and the answer leaves only after both."""
        from txraft.core.messages import InstallSnapshot

        core = RaftCore("b", ("a", "b", "c"), CONFIG, random.Random(1))
        journal = Journal()
        core.step(InstallSnapshot(1, "a", "b", 5, 1, data=b"image"))
        core.step(AppendEntries(1, "a", "b", 5, 1, (Entry(6, 1, b"y"),), 5))
        journal.executor(core).drain()
        self.assertEqual(journal.kinds(), ["install", "save", "send", "apply", "release"])
        answers = journal.events[2][1]
        self.assertEqual([type(m).__name__ for m in answers],
                         ["InstallSnapshotResponse", "AppendEntriesResponse"])

    def test_a_failure_stops_the_batch_without_advancing(self):
        """When a step fails (a disk error; the simulator's crash), nothing after it
        runs and the core is not advanced: the batch never happened as far as anything
        after the failing step can tell."""
        for step in ("save", "send"):
            core = RaftCore("b", ("a", "b", "c"), CONFIG, random.Random(1))
            journal = Journal(fail_at=step)
            core.step(RequestVote(1, "a", "b", 0, 0))
            self.assertRaises(OSError, journal.executor(core).drain)
            self.assertEqual(journal.kinds()[-1], step)
            self.assertNotIn("apply", journal.kinds())
            self.assertRaises(CoreError, core.ready)  # still outstanding

    def test_drain_runs_every_batch(self):
        """drain() runs batches until the core has none, and says how many."""
        core = RaftCore("a", ("a",), CONFIG, random.Random(1))
        core.campaign()
        journal = Journal()
        self.assertGreaterEqual(journal.executor(core).drain(), 1)
        self.assertFalse(core.has_ready())
        self.assertEqual(core.commit_index, 1)

    def test_ready_lists_every_message_once(self):
        """A Ready's three message groups together are every message of the batch."""
        rd = Ready(messages_before_persist=(1,), messages=(2,), messages_after_apply=(3,))
        self.assertEqual(rd.all_messages(), (1, 2, 3))
        self.assertFalse(rd.must_persist())
        self.assertFalse(Ready().must_persist() or not Ready().is_empty())

"""The node driver: the shared executor's order, proposals and reads as Deferreds.

Driven by ``task.Clock`` and an in-memory network, with a storage and a state machine
that journal what they were asked to do, so the order of work is asserted exactly.
"""

from __future__ import annotations

import os
import random

import msgpack
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txraft.errors import (
    CommitTimeout,
    NotLeader,
    Overloaded,
    ProposalDropped,
    ReadTimeout,
    TransferFailed,
)
from txraft.interfaces import IRaftNode, IStateMachine
from txraft.core.messages import (
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshotResponse,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotMeta,
)
from txraft.runtime.node import FatalNodeError, Member, RaftNode, Timing
from txraft.http.errors import raft_error
from txraft.runtime.snapshot import SnapshotStore
from txraft.runtime.storage import MemoryLogStorage
from txraft.runtime.transfer import encode_payload
from txraft.core.config import ADD_LEARNER, Configuration
from txraft.core.config import Member as ConfigMember


class JournalStorage(MemoryLogStorage):
    """MemoryLogStorage that journals every save and can be made to fail."""

    def __init__(self, journal, node_id):
        super().__init__()
        self.journal = journal
        self.node_id = node_id
        self.fail = False

    @property
    def hard_state(self):
        return self.load()[0]

    def last_index(self):
        _, snapshot, entries = self.load()
        return snapshot.index + len(entries)

    def save(self, hard_state, entries):
        if self.fail:
            raise OSError("disk on fire")
        super().save(hard_state, entries)
        self.journal.append(("persist", self.node_id, self.last_index()))


@implementer(IStateMachine)
class JournalStateMachine:
    """Applies entries by recording them; the result is the data reversed."""

    def __init__(self, journal, node_id):
        self.journal = journal
        self.node_id = node_id
        self.applied = []
        self._applied_index = 0
        self._applied_term = 0

    def applied_index(self):
        return self._applied_index

    def applied_term(self):
        return self._applied_term

    def apply_batch(self, entries):
        results = []
        for entry in entries:
            assert entry.index == self._applied_index + 1, (entry.index, self._applied_index)
            self._applied_index = entry.index
            self._applied_term = entry.term
            self.applied.append((entry.index, entry.data))
            self.journal.append(("apply", self.node_id, entry.index))
            results.append(entry.data[::-1])
        return results

    def snapshot(self):
        return self._applied_index, self._applied_term, msgpack.packb(self.applied)

    def restore(self, index, term, data):
        self.applied = [tuple(item) for item in msgpack.unpackb(data)]
        self._applied_index = index
        self._applied_term = term
        self.journal.append(("restore", self.node_id, index))

    def close(self):
        pass


class Network:
    """Delivers messages on the next clock turn; can cut nodes off or lose a share."""

    def __init__(self, clock, journal):
        self.clock = clock
        self.journal = journal
        self.nodes = {}
        self.cut = set()
        self.lose_every = 0
        self._count = 0

    def transport_for(self, node_id):
        network = self

        class Transport:
            stats = {}

            def send(self, message):
                network.journal.append(("send", node_id, message))
                network.check_durable(node_id, message)
                if node_id in network.cut or message.receiver in network.cut:
                    return
                network._count += 1
                if network.lose_every and network._count % network.lose_every == 0:
                    return
                network.clock.callLater(0, network.deliver, message)

        return Transport()

    def deliver(self, message):
        node = self.nodes.get(message.receiver)
        if node is not None and node.running:
            node.receive(message)

    def check_durable(self, node_id, message):
        """Safety: what a message promises is already durable on its sender."""
        storage = self.nodes[node_id].storage
        # PreVote messages name a term nobody has adopted yet (section 9.6).
        slack = 1 if getattr(message, "pre_vote", False) else 0
        assert message.term <= storage.hard_state.term + slack, (message, storage.hard_state)
        if isinstance(message, RequestVoteResponse) and message.vote_granted:
            if not message.pre_vote:
                assert storage.hard_state.voted_for == message.receiver
        if isinstance(message, AppendEntriesResponse) and message.success:
            assert storage.last_index() >= message.match_index, (message, storage.last_index())


def members(n):
    return {
        "n%d" % i: Member("n%d" % i, "127.0.0.1", 7000 + i, 8000 + i) for i in range(1, n + 1)
    }


class PinningStateMachine(JournalStateMachine):
    """Also offers ``begin_snapshot``: the image is pinned at once and read later."""

    def begin_snapshot(self):
        pinned = list(self.applied)
        self.journal.append(("pin", self.node_id, self._applied_index))
        return self._applied_index, self._applied_term, lambda: msgpack.packb(pinned)


class ThreadQueue:
    """Stands in for a worker thread: jobs run when the test says so."""

    def __init__(self):
        self.jobs = []

    def __call__(self, f):
        d = Deferred()
        self.jobs.append((f, d))
        return d

    def run_all(self):
        jobs, self.jobs = self.jobs, []
        for f, d in jobs:
            try:
                d.callback(f())
            except Exception:
                d.errback()


class Cluster:
    def __init__(self, test, n, seed=1, timing=Timing(), snapshot_root=None, threads=None):
        self.timing = timing
        self.snapshot_root = snapshot_root
        self.threads = threads
        self.clock = Clock()
        self.journal = []
        self.network = Network(self.clock, self.journal)
        self.members = members(n)
        self.storages = {}
        self.machines = {}
        self.nodes = {}
        self.rng = random.Random(seed)
        self.fatal = []
        for node_id in self.members:
            self.storages[node_id] = JournalStorage(self.journal, node_id)
            machine = JournalStateMachine if threads is None else PinningStateMachine
            self.machines[node_id] = machine(self.journal, node_id)
            self.start(node_id)
        test.addCleanup(self.stop_all)

    def start(self, node_id):
        node = RaftNode(
            node_id,
            self.members,
            self.storages[node_id],
            self.machines[node_id],
            self.clock,
            random.Random(self.rng.random()),
            self.timing,
            on_fatal=self.fatal.append,
            snapshots=self.snapshot_store(node_id),
            snapshot_chunk_bytes=100,
            run_in_thread=self.threads,
        )
        node.transport = self.network.transport_for(node_id)
        self.network.nodes[node_id] = node
        self.nodes[node_id] = node
        node.startService()
        return node

    def snapshot_store(self, node_id):
        if self.snapshot_root is None:
            return None
        return SnapshotStore(os.path.join(self.snapshot_root, node_id))

    def stop_all(self):
        for node in self.nodes.values():
            if node.running:
                node.stopService()

    def run(self, seconds, step=0.01):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            self.clock.advance(0)

    def leader(self):
        leaders = [n for n in self.nodes.values() if n.running and n.is_leader()]
        return leaders[0] if len(leaders) == 1 else None


def result_of(d):
    out = []
    d.addBoth(out.append)
    return out


class SingleNodeTests(SynchronousTestCase):
    def test_provides_interface(self):
        """RaftNode provides IRaftNode."""
        cluster = Cluster(self, 1)
        verifyObject(IRaftNode, cluster.nodes["n1"])

    def test_single_node_leads_at_once_and_commits_its_proposal(self):
        """A one-node cluster elects itself at start and commits a proposal in one turn."""
        cluster = Cluster(self, 1)
        node = cluster.nodes["n1"]
        cluster.clock.advance(0)
        self.assertTrue(node.is_leader())
        out = result_of(node.propose(b"abc"))
        cluster.clock.advance(0)
        self.assertEqual(out, [(2, b"cba")])  # index 1 is the leader's no-op

    def test_persist_before_apply(self):
        """The entry is persisted before it is applied (persist -> apply order)."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        cluster.nodes["n1"].propose(b"x")
        cluster.clock.advance(0)
        persisted = [i for i, ev in enumerate(cluster.journal) if ev[0] == "persist" and ev[2] >= 2]
        applied = [i for i, ev in enumerate(cluster.journal) if ev == ("apply", "n1", 2)]
        self.assertTrue(persisted and applied)
        self.assertLess(persisted[0], applied[0])

    def test_callbacks_run_after_the_batch_is_accounted(self):
        """Deferreds fire only after the core's advance(): an application that writes
        from a write's or a read's callback feeds the core outside a ready/advance
        pair, and its work is done."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        node = cluster.nodes["n1"]
        seen, chained = [], []

        def then_write(result):
            self.assertFalse(node.core._ready_outstanding)
            seen.append(result)
            node.propose(b"second").addBoth(chained.append)
            node.read_barrier().addBoth(chained.append)

        node.propose(b"first").addCallback(then_write)
        cluster.clock.advance(0)
        cluster.clock.advance(0)
        self.assertEqual(seen, [(2, b"tsrif")])
        self.assertEqual(len(chained), 2, chained)
        self.assertIn((3, b"dnoces"), chained)
        read = [r for r in chained if isinstance(r, int)]
        self.assertTrue(read and read[0] >= 2, chained)

    def test_read_barrier_on_single_node(self):
        """A one-node leader confirms reads without any message."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        out = result_of(cluster.nodes["n1"].read_barrier())
        cluster.clock.advance(0)
        self.assertEqual(out, [1])

    def test_group_commit(self):
        """Proposals made in one reactor turn share one fsync."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        node = cluster.nodes["n1"]
        before = node.counters["fsync_batches"]
        outs = [result_of(node.propose(b"%d" % i)) for i in range(50)]
        cluster.clock.advance(0)
        self.assertEqual(node.counters["fsync_batches"] - before, 1)
        self.assertTrue(all(len(o) == 1 and isinstance(o[0], tuple) for o in outs))

    def test_restart_applies_nothing_twice(self):
        """After a restart the state machine's applied index is respected."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        for i in range(3):
            cluster.nodes["n1"].propose(b"%d" % i)
        cluster.clock.advance(0)
        cluster.nodes["n1"].stopService()
        before = list(cluster.machines["n1"].applied)
        node = cluster.start("n1")
        cluster.clock.advance(0)
        out = result_of(node.propose(b"after"))
        cluster.clock.advance(0)
        self.assertEqual(cluster.machines["n1"].applied[: len(before)], before)
        indexes = [i for i, _ in cluster.machines["n1"].applied]
        self.assertEqual(indexes, list(range(1, len(indexes) + 1)))
        self.assertEqual(out[0][1], b"retfa")

    def test_storage_failure_is_fatal(self):
        """A failed fsync stops the node: pending work fails, on_fatal is told."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        cluster.storages["n1"].fail = True
        out = result_of(cluster.nodes["n1"].propose(b"x"))
        cluster.clock.advance(0)
        self.assertEqual(len(cluster.fatal), 1)
        out[0].trap(FatalNodeError)
        self.assertFalse(cluster.nodes["n1"].is_ready())
        self.flushLoggedErrors(OSError)

    def test_writes_waiting_on_a_fatal_storage_error_are_outcome_unknown(self):
        """A write waiting when the storage fails may have been appended (and copied):
        it fails as outcome unknown, answered 504 commit_timeout over HTTP, not 500; a
        write proposed after the node stopped had no effect: 503 unavailable."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        cluster.storages["n1"].fail = True
        out = result_of(cluster.nodes["n1"].propose(b"x"))
        cluster.clock.advance(0)
        waiting = out[0].value
        self.assertIsInstance(waiting, FatalNodeError)
        self.assertFalse(waiting.definite)
        self.assertIn("outcome unknown", str(waiting))
        answer = raft_error(waiting)
        self.assertEqual((answer.status, answer.code), (504, "commit_timeout"))
        later = result_of(cluster.nodes["n1"].propose(b"y"))[0].value
        self.assertTrue(later.definite)
        self.assertEqual(raft_error(later).status, 503)
        self.flushLoggedErrors(OSError)


class ClusterTests(SynchronousTestCase):
    def test_elects_one_leader_and_replicates(self):
        """Section 5.2/5.3: three nodes elect a leader and apply a proposal everywhere."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        self.assertIsNotNone(leader)
        out = result_of(leader.propose(b"hello"))
        cluster.run(0.2)
        self.assertEqual(out[0][1], b"olleh")
        index = out[0][0]
        for machine in cluster.machines.values():
            self.assertIn((index, b"hello"), machine.applied)

    def test_counts_leader_changes(self):
        """Operators alert on elections: each node counts the leaders it learns of."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        first = cluster.leader()
        for node in cluster.nodes.values():
            self.assertEqual(node.counters["leader_changes_seen"], 1)
        first.stopService()
        cluster.network.cut.add(first.node_id)
        cluster.run(2.0)
        self.assertNotEqual(cluster.leader().node_id, first.node_id)
        for node in cluster.nodes.values():
            if node is not first:
                self.assertEqual(node.counters["leader_changes_seen"], 2)

    def test_follower_refuses_and_names_the_leader(self):
        """Dissertation 6.2: a follower rejects a proposal and names the leader's URL."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        out = result_of(follower.propose(b"x"))
        error = out[0].trap(NotLeader) and out[0].value
        self.assertEqual(error.leader_id, leader.node_id)
        self.assertEqual(error.leader_url, cluster.members[leader.node_id].http_url)
        self.assertEqual(follower.leader(), (leader.node_id, error.leader_url))

    def test_read_barrier_confirms_with_a_majority(self):
        """Section 6.4: a leader's read is released after a heartbeat round."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        out = result_of(cluster.leader().read_barrier())
        cluster.run(0.05)
        self.assertEqual(len(out), 1)
        self.assertIsInstance(out[0], int)

    def test_isolated_leader_times_out_reads_and_loses_proposals(self):
        """An isolated leader cannot confirm reads; its proposals fail as unknown."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        cluster.network.cut.add(leader.node_id)
        write = result_of(leader.propose(b"lost?"))
        read = result_of(leader.read_barrier())
        cluster.run(3.0)
        self.assertFalse(leader.is_leader())
        read[0].trap(NotLeader, ReadTimeout)
        write[0].trap(ProposalDropped, CommitTimeout)
        self.assertFalse(write[0].value.definite)
        # The majority elected another leader meanwhile.
        others = [n for n in cluster.nodes.values() if n is not leader and n.is_leader()]
        self.assertEqual(len(others), 1)

    def test_every_message_follows_durability(self):
        """Votes and acknowledgements are sent only after they are durable (Figure 2)."""
        cluster = Cluster(self, 5, seed=7)
        cluster.run(1.0)
        for i in range(20):
            leader = cluster.leader()
            if leader is not None:
                leader.propose(b"v%d" % i)
            cluster.run(0.03)
        # Network.check_durable asserted on every send; make sure there were many.
        sends = [ev for ev in cluster.journal if ev[0] == "send"]
        self.assertGreater(len(sends), 100)

    def test_commit_timeout(self):
        """A proposal that cannot commit in time fails with CommitTimeout (unknown outcome)."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        for node_id in cluster.nodes:
            if node_id != leader.node_id:
                cluster.network.cut.add(node_id)
        out = result_of(leader.propose(b"x"))
        # Step the clock to the timeout without letting CheckQuorum run first.
        cluster.clock.advance(Timing().proposal_timeout_seconds)
        out[0].trap(CommitTimeout, ProposalDropped)


SNAPSHOT_TIMING = Timing(snapshot_entries=20, snapshot_trailing_entries=5)


class SnapshotTests(SynchronousTestCase):
    def cluster(self, n=3):
        return Cluster(self, n, timing=SNAPSHOT_TIMING, snapshot_root=self.mktemp())

    def write(self, cluster, count, prefix=b"v"):
        outs = []
        for i in range(count):
            leader = cluster.leader()
            outs.append(result_of(leader.propose(prefix + b"%d" % i)))
            cluster.run(0.01)
        cluster.run(0.2)
        return outs

    def test_log_is_compacted_behind_a_durable_snapshot(self):
        """Section 7: after enough applied entries the node stores a snapshot and drops
        the log entries it covers (keeping a trailing window)."""
        cluster = self.cluster()
        cluster.run(1.0)
        self.write(cluster, 60)
        for node_id, node in cluster.nodes.items():
            self.assertGreater(node.counters["snapshots_taken"], 0, node_id)
            self.assertGreater(node.core.snapshot_index, 0)
            _, meta, _ = cluster.storages[node_id].load()
            self.assertEqual(meta.index, node.core.snapshot_index)
            self.assertIsNotNone(SnapshotStore(
                os.path.join(cluster.snapshot_root, node_id)).latest())

    def test_lagging_follower_catches_up_by_snapshot(self):
        """Section 7 / Figure 13: a follower that was down while the leader compacted
        past its log receives the snapshot in chunks over a lossy network, restores it,
        then the rest of the log."""
        cluster = self.cluster()
        cluster.run(1.0)
        self.write(cluster, 10)
        leader = cluster.leader()
        victim = next(i for i in cluster.nodes if i != leader.node_id)
        cluster.nodes[victim].stopService()
        self.write(cluster, 80, b"w")
        self.assertGreater(leader.core.snapshot_index, cluster.storages[victim].last_index())
        cluster.network.lose_every = 7
        node = cluster.start(victim)
        cluster.run(3.0)
        cluster.network.lose_every = 0
        cluster.run(0.5)
        self.assertEqual(node.counters["snapshots_installed"], 1)
        self.assertEqual(cluster.machines[victim].applied,
                         cluster.machines[leader.node_id].applied)
        self.assertEqual(node.core.commit_index, cluster.leader().core.commit_index)
        self.assertIn(("restore", victim, node.core.snapshot_index), cluster.journal)

    def snapshot_pending(self):
        """One node whose first snapshot is waiting for its worker thread."""
        threads = ThreadQueue()
        cluster = Cluster(self, 1, timing=SNAPSHOT_TIMING, snapshot_root=self.mktemp(),
                          threads=threads)
        cluster.clock.advance(0)
        self.write(cluster, 30)
        return threads, cluster, cluster.nodes["n1"]

    def test_snapshot_is_read_and_stored_in_a_worker_thread(self):
        """A state machine that can pin an image (begin_snapshot) is read and stored in
        a worker thread while entries keep being applied; the log is compacted only
        once the snapshot file is durable, and one snapshot runs at a time."""
        threads, cluster, node = self.snapshot_pending()
        pins = [e for e in cluster.journal if e[0] == "pin"]
        self.assertEqual(len(pins), 1)
        pinned = pins[0][2]
        self.assertEqual(len(threads.jobs), 1)
        self.assertEqual(node.counters["snapshots_taken"], 0)
        self.assertEqual(node.core.snapshot_index, 0)
        self.assertGreater(node.core.last_applied, pinned)
        store = SnapshotStore(os.path.join(cluster.snapshot_root, "n1"))
        self.assertIsNone(store.latest())
        threads.run_all()
        self.assertEqual(node.counters["snapshots_taken"], 1)
        self.assertEqual(node.core.snapshot_index,
                         pinned - SNAPSHOT_TIMING.snapshot_trailing_entries)
        meta, data = SnapshotStore(os.path.join(cluster.snapshot_root, "n1")).latest()
        self.assertEqual(meta.index, pinned)
        self.assertEqual([tuple(x) for x in msgpack.unpackb(data)],
                         cluster.machines["n1"].applied[:pinned])
        self.assertEqual(node.snapshots.latest()[0], meta)

    def test_failed_snapshot_write_stops_the_node(self):
        """A snapshot that cannot be stored is a disk failure: the node stops rather
        than compact a log no snapshot covers."""
        threads, cluster, node = self.snapshot_pending()

        def broken(meta, data):
            raise OSError("disk on fire")

        node.snapshots.write = broken
        threads.run_all()
        self.assertEqual(node.core.snapshot_index, 0)
        self.assertEqual(len(cluster.fatal), 1)
        self.assertTrue(cluster.fatal[0].check(OSError))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_restart_after_compaction(self):
        """A node restarts from a compacted log plus its state machine, applying
        nothing twice."""
        cluster = self.cluster(1)
        cluster.clock.advance(0)
        self.write(cluster, 50)
        before = list(cluster.machines["n1"].applied)
        cluster.nodes["n1"].stopService()
        node = cluster.start("n1")
        cluster.clock.advance(0)
        out = result_of(node.propose(b"later"))
        cluster.clock.advance(0)
        self.assertEqual(out[0][1], b"retal")
        self.assertEqual(cluster.machines["n1"].applied[: len(before)], before)

    def test_recovers_from_crash_between_restore_and_compaction(self):
        """A crash after the state machine restored a snapshot but before the log was
        compacted: at restart the applied index becomes the log's starting point."""
        cluster = self.cluster(1)
        cluster.clock.advance(0)
        self.write(cluster, 3)
        cluster.nodes["n1"].stopService()
        machine = cluster.machines["n1"]
        machine.restore(40, 7, msgpack.packb([(i, b"s") for i in range(1, 41)]))
        node = cluster.start("n1")
        self.assertEqual(node.core.snapshot_index, 40)
        self.assertEqual(node.core.commit_index, 40)
        cluster.clock.advance(0)
        out = result_of(node.propose(b"x"))
        cluster.clock.advance(0)
        self.assertEqual(out[0][0], 42)


class LeadershipChangeTests(SynchronousTestCase):
    def test_proposals_of_an_earlier_term_fail_when_leadership_returns(self):
        """A node that loses and regains leadership fails the proposals of its earlier
        term as 'outcome unknown' rather than leaving them hanging or mismatched."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        cluster.network.cut.add(leader.node_id)
        out = result_of(leader.propose(b"old"))
        cluster.run(2.0)  # CheckQuorum deposes it; the others elect someone
        self.assertEqual(len(out), 1)
        out[0].trap(ProposalDropped)
        self.assertIn("outcome unknown", str(out[0].value))

    def test_overload_is_refused_before_anything_is_appended(self):
        """Beyond max_pending waiting proposals a new one fails at once (definite), so a
        flood cannot grow memory without bound."""
        cluster = Cluster(self, 3, timing=Timing(max_pending=3))
        cluster.run(1.0)
        leader = cluster.leader()
        for node_id in cluster.nodes:
            if node_id != leader.node_id:
                cluster.network.cut.add(node_id)
        last = leader.core.log.last_index
        waiting = [result_of(leader.propose(b"%d" % i)) for i in range(3)]
        refused = result_of(leader.propose(b"one too many"))
        refused[0].trap(Overloaded)
        self.assertTrue(refused[0].value.definite)
        self.assertEqual(leader.core.log.last_index, last + 3)
        self.assertEqual([w for w in waiting if w], [])


class ParallelLeaderWriteTests(SynchronousTestCase):
    def test_leader_sends_entries_before_its_own_fsync(self):
        """Thesis section 10.2.1: with its term and vote already durable, the leader
        sends AppendEntries before fsyncing the same entries, and commits only after
        its own save (followers' acknowledgements alone are not counted early)."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        start = len(cluster.journal)
        out = result_of(leader.propose(b"p"))
        cluster.clock.advance(0)
        events = cluster.journal[start:]
        sends = [i for i, ev in enumerate(events) if ev[0] == "send" and ev[1] == leader.node_id
                 and getattr(ev[2], "entries", ())]
        persists = [i for i, ev in enumerate(events) if ev[:2] == ("persist", leader.node_id)]
        self.assertTrue(sends and persists)
        self.assertLess(sends[0], persists[0])
        cluster.run(0.1)
        self.assertEqual(out[0][1], b"p")

    def test_hard_state_change_is_persisted_before_anything_is_sent(self):
        """A new leader's first batch changes its hard state (term, vote): that batch is
        persisted before any of its messages leave."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        first_leader_send = next(
            i for i, ev in enumerate(cluster.journal)
            if ev[0] == "send" and ev[1] == leader.node_id and getattr(ev[2], "entries", ())
        )
        term_persisted = next(
            i for i, ev in enumerate(cluster.journal)
            if ev[:2] == ("persist", leader.node_id)
        )
        self.assertLess(term_persisted, first_leader_send)


class CommitNoticeTests(SynchronousTestCase):
    def test_commit_notices_leave_after_the_answers(self):
        """The empty AppendEntries that only tell followers a new commit index leave on
        the reactor turn after the proposal's answer, so the reactor writes the answer
        to its socket first; followers still learn the commit."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        d = leader.propose(b"p")
        d.addCallback(lambda result: cluster.journal.append(("answered", result[0])))
        start = len(cluster.journal)
        cluster.run(0.02)
        events = cluster.journal[start:]
        index = next(ev[1] for ev in events if ev[0] == "answered")
        answered = events.index(("answered", index))
        notices = [
            i for i, ev in enumerate(events)
            if ev[0] == "send" and ev[1] == leader.node_id
            and isinstance(ev[2], AppendEntries) and not ev[2].entries
            and ev[2].leader_commit >= index
        ]
        self.assertTrue(notices)
        self.assertGreater(notices[0], answered)
        for node in cluster.nodes.values():
            self.assertEqual(node.core.commit_index, index)


class StateMachineRollbackTests(SynchronousTestCase):
    """The state machine syncs lazily (SQLite synchronous=NORMAL): after an OS crash it
    may be behind what it applied.  The node must bring it back, exactly once."""

    def rolled_back(self, cluster, index):
        machine = cluster.machines["n1"]
        kept = [(i, data) for i, data in machine.applied if i <= index]
        term = cluster.storages["n1"].load()[2][0].term if index else 0
        machine.restore(index, term, msgpack.packb(kept))

    def test_reapplies_from_the_log(self):
        """A state machine that lost its last batches re-applies them from the log."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        for i in range(5):
            cluster.nodes["n1"].propose(b"%d" % i)
        cluster.clock.advance(0)
        before = list(cluster.machines["n1"].applied)
        cluster.nodes["n1"].stopService()
        self.rolled_back(cluster, 2)
        cluster.start("n1")
        cluster.clock.advance(0)
        self.assertEqual(cluster.machines["n1"].applied[: len(before)], before)

    def test_restores_the_snapshot_when_the_log_was_compacted_past_it(self):
        """A state machine behind the compacted log is restored from the snapshot file,
        then the log after it is re-applied."""
        cluster = Cluster(self, 1, timing=SNAPSHOT_TIMING, snapshot_root=self.mktemp())
        cluster.clock.advance(0)
        for i in range(60):
            cluster.nodes["n1"].propose(b"%d" % i)
            cluster.clock.advance(0)
        before = list(cluster.machines["n1"].applied)
        self.assertGreater(cluster.nodes["n1"].core.snapshot_index, 2)
        cluster.nodes["n1"].stopService()
        self.rolled_back(cluster, 0)
        node = cluster.start("n1")
        cluster.clock.advance(0)
        self.assertEqual(cluster.machines["n1"].applied[: len(before)], before)
        self.assertEqual([i for i, _ in cluster.machines["n1"].applied],
                         list(range(1, node.core.last_applied + 1)))


class RecordingTransport:
    stats = {}

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


def lone_follower(test, snapshots=True):
    """Node n2 of a 3-node cluster, fed messages by hand."""
    journal, fatal = [], []
    clock = Clock()
    storage = JournalStorage(journal, "n2")
    store = SnapshotStore(os.path.join(test.mktemp(), "s")) if snapshots else None
    node = RaftNode("n2", members(3), storage, JournalStateMachine(journal, "n2"), clock,
                    random.Random(1), on_fatal=fatal.append, snapshots=store)
    node.transport = RecordingTransport()
    node.startService()
    test.addCleanup(lambda: node.running and node.stopService())
    return node, storage, clock, fatal


IMAGE = msgpack.packb([(i, b"e%d" % i) for i in range(1, 6)])
#: What a leader's transfer carries for it: the configuration header, then the image.
PAYLOAD = encode_payload(SnapshotMeta(5, 1), IMAGE)


class SnapshotReceiveTests(SynchronousTestCase):
    def test_partial_image_draws_only_chunk_acknowledgements(self):
        """Figure 13: until the last chunk is in, a follower answers with chunk
        acknowledgements only; its core hears nothing, so nothing tells the leader the
        snapshot is installed.  The last chunk installs it durably (the image file, the
        state machine, the log compacted), and only then does the core's answer leave."""
        node, storage, clock, fatal = lone_follower(self)
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, (), 0, 0))
        clock.advance(0)
        node.transport.sent = []
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 0, PAYLOAD[:10], done=False))
        clock.advance(0)
        self.assertEqual([type(m) for m in node.transport.sent], [SnapshotChunkAck])
        self.assertEqual(node.core.commit_index, 0)
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 10, PAYLOAD[10:], done=True))
        clock.advance(0)
        self.assertEqual(fatal, [])
        kinds = [type(m) for m in node.transport.sent]
        self.assertEqual(kinds, [SnapshotChunkAck, SnapshotChunkAck, InstallSnapshotResponse])
        self.assertEqual(node.transport.sent[-1].last_included_index, 5)
        self.assertEqual(node.snapshots.latest(), (SnapshotMeta(5, 1), IMAGE))
        self.assertEqual(node.state_machine.applied_index(), 5)
        self.assertEqual(storage.load()[1], SnapshotMeta(5, 1))
        self.assertEqual(node.counters["snapshots_installed"], 1)


class SnapshotConfigurationTests(SynchronousTestCase):
    """Dissertation 5.1 in the runtime: the configuration travels and is stored with
    every snapshot, so a server whose log starts after it still knows the members."""

    def test_an_installed_snapshot_brings_its_configuration(self):
        node, storage, clock, fatal = lone_follower(self)
        conf = Configuration.of_voters(["n1", "n2", "n3"]).changed(ADD_LEARNER, ConfigMember("n9"))
        payload = encode_payload(SnapshotMeta(5, 1, configuration=conf, config_index=4), IMAGE)
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, (), 0, 0))
        clock.advance(0)
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 0, payload, done=True))
        clock.advance(0)
        self.assertEqual(fatal, [])
        self.assertEqual((node.core.learners, node.core.config_index), (("n9",), 4))
        for meta in (storage.load()[1], node.snapshots.latest()[0]):
            self.assertEqual((meta.configuration, meta.config_index), (conf, 4))

    def test_a_snapshot_taken_records_the_configuration_in_force(self):
        node, storage, clock, fatal = lone_follower(self)
        conf = Configuration.of_voters(["n1", "n2", "n3"]).changed(ADD_LEARNER, ConfigMember("n9"))
        batch = (Entry(1, 1, b"", ENTRY_NOOP), Entry(2, 1, conf.to_bytes(), ENTRY_CONFIG),
                 Entry(3, 1, b"e3"))
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, batch, 3, 0))
        clock.advance(0)
        self.assertEqual(node.core.last_applied, 3)
        meta = node.take_snapshot()
        self.assertEqual((meta.index, meta.configuration, meta.config_index), (3, conf, 2))
        stored = SnapshotStore(node.snapshots.directory).latest()[0]
        self.assertEqual((stored.configuration, stored.config_index), (conf, 2))


class ConfigurationInForceTests(SynchronousTestCase):
    def test_the_founding_configuration_names_addresses_and_urls(self):
        node, storage, clock, fatal = lone_follower(self)
        conf = node.core.configuration
        self.assertEqual(conf.voters, ("n1", "n2", "n3"))
        self.assertEqual((conf.get("n2").address, conf.get("n2").http_url),
                         ("127.0.0.1:7002", "http://127.0.0.1:8002"))

    def test_a_new_configuration_changes_who_the_transport_talks_to(self):
        """Dissertation 4.1: a configuration is in force once appended, so the node
        talks to a member added by an entry it has not committed yet."""
        node, storage, clock, fatal = lone_follower(self)
        peers = []
        node.transport.set_peers = peers.append
        conf = node.core.configuration.changed(
            ADD_LEARNER, ConfigMember("n9", address="[::1]:7009", http_url="http://x:8009"))
        node.receive(AppendEntries(1, "n1", "n2", 0, 0,
                                   (Entry(1, 1, conf.to_bytes(), ENTRY_CONFIG),), 0, 0))
        clock.advance(0)
        self.assertEqual(fatal, [])
        self.assertEqual(peers, [{"n1": ("127.0.0.1", 7001), "n2": ("127.0.0.1", 7002),
                                  "n3": ("127.0.0.1", 7003), "n9": ("::1", 7009)}])
        self.assertEqual(node.members["n9"].public_url, "http://x:8009")


    def test_a_restarted_node_talks_to_the_members_its_log_names(self):
        """The configuration in force after a restart is the log's (dissertation 4.1),
        not the one the node was started with: its transport is told at once."""
        node, storage, clock, fatal = lone_follower(self)
        conf = node.core.configuration.changed(
            ADD_LEARNER, ConfigMember("n9", address="127.0.0.1:7009"))
        node.receive(AppendEntries(1, "n1", "n2", 0, 0,
                                   (Entry(1, 1, conf.to_bytes(), ENTRY_CONFIG),), 0, 0))
        clock.advance(0)
        node.stopService()
        again = RaftNode("n2", members(3), storage, JournalStateMachine([], "n2"), clock,
                         random.Random(2), on_fatal=fatal.append)
        again.transport = RecordingTransport()
        peers = []
        again.transport.set_peers = peers.append
        again.startService()
        self.addCleanup(lambda: again.running and again.stopService())
        clock.advance(0)
        self.assertEqual(fatal, [])
        self.assertEqual(sorted(peers[-1]), ["n1", "n2", "n3", "n9"])
        self.assertEqual(again.members["n9"].port, 7009)


class SnapshotInstallOrderTests(SynchronousTestCase):
    def test_snapshot_inside_unsaved_entries(self):
        """Section 7: a follower whose unsaved log holds the snapshot's last entry keeps
        the entries after it; saving them must not leave a gap in its storage (the
        snapshot's compaction comes before the save)."""
        node, storage, clock, fatal = lone_follower(self)
        entries = tuple(Entry(i, 1, b"e%d" % i) for i in range(1, 11))
        # One reactor turn: a delayed pipelined AppendEntries, then the last chunk.
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, entries, 0, 0))
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 0, PAYLOAD, done=True))
        clock.advance(0)
        self.assertEqual(fatal, [])
        self.assertEqual(storage.last_index(), 10)

    def test_entries_after_a_snapshot_in_the_same_batch(self):
        """Section 7: entries following an installed snapshot in the same reactor turn
        are saved after the snapshot's compaction, not before it."""
        node, storage, clock, fatal = lone_follower(self)
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, (), 0, 0))
        clock.advance(0)
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 0, PAYLOAD, done=True))
        node.receive(AppendEntries(1, "n1", "n2", 5, 1, (Entry(6, 1, b"e6"),), 5, 0))
        clock.advance(0)
        self.assertEqual(fatal, [])
        self.assertEqual(storage.last_index(), 6)


class ReceiveFailureTests(SynchronousTestCase):
    def test_snapshot_store_failure_while_receiving_is_fatal(self):
        """A follower that cannot store the leader's snapshot has a failing disk: the
        node stops, as after a failed save of its log, instead of raising into the
        transport on every retransmission."""
        node, storage, clock, fatal = lone_follower(self)

        def broken(meta, data):
            raise OSError("disk on fire")

        node.snapshots.write = broken
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, (), 0, 0))
        clock.advance(0)
        node.receive(SnapshotChunk(1, "n1", "n2", 5, 1, 0, PAYLOAD, done=True))
        clock.advance(0)
        self.assertEqual(len(fatal), 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_failure_in_a_tick_is_fatal(self):
        """An exception in a tick would silently stop the ticking LoopingCall (no more
        heartbeats or elections from a node that looks alive): it stops the node."""
        node, storage, clock, fatal = lone_follower(self, snapshots=False)

        def broken():
            raise RuntimeError("bug")

        node.core.tick = broken
        clock.advance(node.timing.tick_seconds)
        self.assertEqual(len(fatal), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StoppedNodeTests(SynchronousTestCase):
    def test_datagram_after_stop_is_ignored(self):
        """The composition root closes the storage once the node service stopped, while
        its UDP port may still deliver for a moment: such a message must not schedule a
        batch (it would fail on the closed storage, which is fatal: exit status 70 on a
        clean stop)."""
        node, storage, clock, fatal = lone_follower(self, snapshots=False)
        node.stopService()
        storage.close()
        node.receive(AppendEntries(1, "n1", "n2", 0, 0, (Entry(1, 1, b"a"),), 0, 0))
        clock.advance(0)
        self.assertEqual(fatal, [])

    def test_proposals_and_reads_after_stop_fail_at_once(self):
        """A stopped node takes no new work: proposals and reads fail immediately."""
        node, storage, clock, fatal = lone_follower(self, snapshots=False)
        node.stopService()
        self.failureResultOf(node.propose(b"x"), ProposalDropped)
        self.failureResultOf(node.read_barrier(), NotLeader)


class LeadershipTransferTests(SynchronousTestCase):
    """``RaftNode.transfer_leadership`` (dissertation 3.10) over the node's executor."""

    def setUp(self):
        self.cluster = Cluster(self, 3)
        self.cluster.run(1.0)
        self.leader = self.cluster.leader()
        self.others = sorted(n for n in self.cluster.nodes if n != self.leader.node_id)

    def test_fires_with_the_new_leader_once_it_leads(self):
        cluster, leader = self.cluster, self.leader
        term = leader.core.term
        target = self.others[1]
        out = result_of(leader.transfer_leadership(target))
        self.assertEqual(out, [])
        cluster.run(0.05)
        self.assertEqual(out, [(target, term + 1)])
        self.assertIs(cluster.leader(), cluster.nodes[target])
        # The new leader takes writes; the old one names it.
        write = result_of(cluster.nodes[target].propose(b"after"))
        cluster.run(0.2)
        self.assertEqual(write[0][1], b"retfa")
        self.assertEqual(leader.leader()[0], target)

    def test_writes_are_refused_while_the_leadership_moves(self):
        cluster, leader = self.cluster, self.leader
        target = self.others[0]
        cluster.network.cut.add(target)  # it cannot catch up: the transfer waits
        leader.propose(b"behind")
        cluster.run(0.02)
        out = result_of(leader.transfer_leadership(target))
        refused = result_of(leader.propose(b"during"))
        error = refused[0].trap(NotLeader) and refused[0].value
        self.assertEqual(error.transferring_to, target)
        self.assertIn("handing its leadership to %s" % target, str(error))
        cluster.run(0.5)  # twice the election timeout: abandoned, still the leader
        failure = out[0]
        failure.trap(TransferFailed)
        self.assertEqual(failure.value.code, "transfer_timeout")
        self.assertIn("still leads", failure.value.message)
        self.assertTrue(leader.is_leader())
        accepted = result_of(leader.propose(b"again"))
        cluster.run(0.2)
        self.assertEqual(accepted[0][1], b"niaga")

    def test_refusals_and_the_leader_itself(self):
        leader = self.leader
        out = result_of(leader.transfer_leadership("nobody"))
        self.assertEqual(out[0].trap(TransferFailed) and out[0].value.code, "unknown_member")
        self.assertEqual(result_of(leader.transfer_leadership(leader.node_id)),
                         [(leader.node_id, leader.core.term)])
        follower = self.cluster.nodes[self.others[0]]
        out = result_of(follower.transfer_leadership())
        self.assertEqual(out[0].trap(NotLeader) and out[0].value.leader_id, leader.node_id)

    def test_stopping_fails_a_waiting_transfer(self):
        cluster, leader = self.cluster, self.leader
        cluster.network.cut.add(self.others[0])
        leader.propose(b"behind")
        cluster.run(0.02)
        out = result_of(leader.transfer_leadership(self.others[0]))
        leader.stopService()
        self.assertTrue(out[0].check(NotLeader))

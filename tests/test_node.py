"""The node driver: persist -> send -> apply -> advance, proposals and reads as Deferreds.

Driven by ``task.Clock`` and an in-memory network, with a storage and a state machine
that journal what they were asked to do, so the order of work is asserted exactly.
"""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txraft.errors import CommitTimeout, NotLeader, ProposalDropped, ReadTimeout
from txraft.interfaces import ILogStorage, IRaftNode, IStateMachine
from txraft.messages import (
    AppendEntriesResponse,
    HardState,
    RequestVoteResponse,
    SnapshotMeta,
)
from txraft.node import FatalNodeError, Member, RaftNode, Timing


@implementer(ILogStorage)
class JournalStorage:
    """Keeps the 'durable' state in memory and journals every save."""

    def __init__(self, journal, node_id):
        self.journal = journal
        self.node_id = node_id
        self.hard_state = HardState()
        self.entries = []
        self.fail = False

    def load(self):
        return self.hard_state, SnapshotMeta(), list(self.entries)

    def save(self, hard_state, entries):
        if self.fail:
            raise OSError("disk on fire")
        if hard_state is not None:
            self.hard_state = hard_state
        if entries:
            del self.entries[entries[0].index - 1 :]
            self.entries.extend(entries)
        self.journal.append(("persist", self.node_id, len(self.entries)))

    def compact(self, snapshot_meta):
        raise NotImplementedError

    def close(self):
        pass


@implementer(IStateMachine)
class JournalStateMachine:
    """Applies entries by recording them; the result is the data reversed."""

    def __init__(self, journal, node_id):
        self.journal = journal
        self.node_id = node_id
        self.applied = []
        self._applied_index = 0

    def applied_index(self):
        return self._applied_index

    def apply_batch(self, entries):
        results = []
        for entry in entries:
            assert entry.index == self._applied_index + 1, (entry.index, self._applied_index)
            self._applied_index = entry.index
            self.applied.append((entry.index, entry.data))
            self.journal.append(("apply", self.node_id, entry.index))
            results.append(entry.data[::-1])
        return results

    def snapshot(self):
        raise NotImplementedError

    def restore(self, index, term, data):
        raise NotImplementedError

    def close(self):
        pass


class Network:
    """Delivers messages on the next clock turn; can cut nodes off."""

    def __init__(self, clock, journal):
        self.clock = clock
        self.journal = journal
        self.nodes = {}
        self.cut = set()

    def transport_for(self, node_id):
        network = self

        class Transport:
            stats = {}

            def send(self, message):
                network.journal.append(("send", node_id, message))
                network.check_durable(node_id, message)
                if node_id in network.cut or message.receiver in network.cut:
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
            assert len(storage.entries) >= message.match_index, (message, len(storage.entries))


def members(n):
    return {
        "n%d" % i: Member("n%d" % i, "127.0.0.1", 7000 + i, 8000 + i) for i in range(1, n + 1)
    }


class Cluster:
    def __init__(self, test, n, seed=1):
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
            self.machines[node_id] = JournalStateMachine(self.journal, node_id)
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
            Timing(),
            on_fatal=self.fatal.append,
        )
        node.transport = self.network.transport_for(node_id)
        self.network.nodes[node_id] = node
        self.nodes[node_id] = node
        node.startService()
        return node

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

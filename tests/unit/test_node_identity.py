"""Node identity in the node runtime: a wiped node is refused, says so, serves no stale
reads, and is replaced by removing it and adding it back (``txraft.runtime.node``).

The cluster of ``tests.unit.test_node`` with one change: the in-memory network plays
the transport's part of identity, as ``UDPTransport`` does with the same guard: each
message carries its sender's uuid, the receiver's ``PeerIdentities`` admits it or
refuses it, and a refusal reaches the sender as ``identity_refused``.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txraft.core.config import ADD_LEARNER, REMOVE
from txraft.http.metrics import prometheus_text
from txraft.runtime.node import IDENTITY_REFUSAL_HOLD_SECONDS, Timing
from txraft.runtime.trust import REPLICATION_TYPES, MemoryPeerStore, PeerIdentities

from tests.unit.test_node import (Cluster, JournalStateMachine, JournalStorage, Network,
                                  result_of)


class FakeIdentity:
    """A data directory's identity (``txraft.runtime.identity.NodeIdentity``'s part
    the node uses), counting how often caught_up was made durable."""

    def __init__(self, uuid, caught_up=False):
        self.uuid = uuid
        self.caught_up = caught_up
        self.marked = 0

    def mark_caught_up(self):
        self.caught_up = True
        self.marked += 1


class IdentityNetwork(Network):
    #: Entries from these senders wait in ``held`` (``release_held`` delivers them);
    #: their heartbeats still go.
    hold_from = frozenset()

    def release_held(self):
        held, self.held = getattr(self, "held", []), []
        for message in held:
            self.deliver(message)

    def deliver(self, message):
        if message.sender in self.hold_from and getattr(message, "entries", ()):
            self.held = getattr(self, "held", []) + [message]
            return
        node = self.nodes.get(message.receiver)
        sender = self.nodes.get(message.sender)
        if node is None or not node.running or sender is None:
            return
        if message.sender not in node.core.configuration:
            return  # the transport talks to the configuration's members only
        uuid = bytes.fromhex(sender.identity.uuid)
        replication = type(message) in REPLICATION_TYPES
        if node.peer_identities.admit(message.sender, uuid, replication):
            node.receive(message)
        elif sender.running:
            expected = node.peer_identities.expected(message.sender) or bytes(16)
            sender.identity_refused(message.receiver, expected, uuid)


class IdentityCluster(Cluster):
    def __init__(self, test, n, **kwargs):
        self.identities = {}
        self.stores = {}
        self.uuids = iter("%032x" % i for i in range(1, 1000))
        super().__init__(test, n, **kwargs)
        self.network.__class__ = IdentityNetwork

    def start(self, node_id):
        if node_id not in self.identities:
            self.identities[node_id] = FakeIdentity(next(self.uuids))
            self.stores[node_id] = MemoryPeerStore()
        original = Cluster.start.__globals__["RaftNode"]

        def make(*args, **kwargs):
            return original(*args, identity=self.identities[node_id],
                            peer_identities=PeerIdentities(self.stores[node_id], node_id),
                            **kwargs)

        Cluster.start.__globals__["RaftNode"] = make
        try:
            return super().start(node_id)
        finally:
            Cluster.start.__globals__["RaftNode"] = original

    def wipe(self, node_id):
        """Stop ``node_id`` and start it on an emptied data directory: no log, no state
        machine, no records, a new uuid."""
        self.nodes[node_id].stopService()
        self.storages[node_id] = JournalStorage(self.journal, node_id)
        self.machines[node_id] = JournalStateMachine(self.journal, node_id)
        del self.identities[node_id]
        return self.start(node_id)

    def change(self, op, member_id, **kwargs):
        out = result_of(self.leader().change(op, member_id, **kwargs))
        self.run(1.0)
        return out


def write(cluster, n):
    for i in range(n):
        result_of(cluster.leader().propose(b"v%d" % i))
    cluster.run(0.5)


class WipedNodeTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = IdentityCluster(self, 3)
        self.cluster.run(2.0)
        write(self.cluster, 5)
        self.leader = self.cluster.leader()
        self.victim = next(i for i in sorted(self.cluster.nodes) if i != self.leader.node_id)

    def test_members_know_each_others_uuids(self):
        """The leader writes into the configuration the uuid of every member it heard
        (and its own), one binding per change: every node then expects each peer's
        uuid from the log, also peers it never heard itself (a follower rarely hears
        another follower), and reports them."""
        conf = self.leader.core.configuration
        self.assertEqual({m.id: m.uuid for m in conf.members},
                         {i: self.cluster.identities[i].uuid for i in self.cluster.nodes})
        for node_id, node in self.cluster.nodes.items():
            view = {p.peer: (p.uuid, p.source) for p in node.status_view().peer_identities}
            expected = {p: (self.cluster.identities[p].uuid, "configuration")
                        for p in self.cluster.nodes if p != node_id}
            self.assertEqual(view, expected)
            self.assertTrue(node.identity.caught_up)
            self.assertEqual(node.identity.marked, 1)
            self.assertIsNone(node.stale_read_refusal())

    def test_a_wiped_node_is_refused_and_says_so(self):
        """A node restarted on an emptied data directory is refused by the peers that
        knew it: its votes and acknowledgements never reach their cores, the cluster
        goes on, and the wiped node reports it in /ready's reason, in /raft/status and
        in its one log line, and refuses stale reads."""
        cluster = self.cluster
        logged = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        wiped = cluster.wipe(self.victim)
        cluster.run(3.0)
        write(cluster, 3)
        self.assertIs(cluster.leader(), self.leader)  # it never disrupted the leader
        refused = sum(p.dropped_wrong_identity for node in cluster.nodes.values()
                      if node is not wiped for p in node.status_view().peer_identities)
        self.assertGreater(refused, 0)
        self.assertFalse(wiped.is_ready())
        reason = wiped.status_view().not_ready_reason()
        self.assertIn("is not the one the cluster knows as %s" % self.victim, reason)
        self.assertIn("it lost its data; replace it: docs/operations.md#replace-a-node-"
                      "that-lost-its-disk", reason)
        self.assertIn(wiped.identity.uuid, reason)
        self.assertEqual(wiped.stale_read_refusal(), reason)
        status = wiped.status()
        self.assertEqual(status["node_uuid"], wiped.identity.uuid)
        self.assertEqual(status["identity"]["problem"], reason)
        self.assertIn(self.leader.node_id, status["identity"]["refused_by"])
        lines = [e for e in logged if "lost its data" in str(e.get("line", ""))]
        self.assertEqual(len(lines), 1)
        # Nothing it sent counted: it applied nothing, and the others never saw its log.
        self.assertEqual(wiped.core.last_applied, 0)
        # /metrics says the same.
        metrics = prometheus_text(wiped.status_view()).decode()
        self.assertIn("\ntxraft_identity_refused 1\n", metrics)
        self.assertIn("\ntxraft_caught_up 0\n", metrics)
        metrics = prometheus_text(self.leader.status_view()).decode()
        self.assertIn("\ntxraft_identity_refused 0\n", metrics)
        self.assertRegex(metrics, r'\ntxraft_peer_wrong_identity_datagrams_total\{peer="%s"\} '
                         r'[1-9]' % self.victim)

    def test_the_refusal_passes_once_peers_stop_refusing(self):
        """The report holds while refusals keep coming and ends
        IDENTITY_REFUSAL_HOLD_SECONDS after the last one."""
        wiped = self.cluster.wipe(self.victim)
        self.cluster.run(IDENTITY_REFUSAL_HOLD_SECONDS + 1)
        self.assertTrue(wiped.status_view().identity_refusals)
        self.cluster.network.cut.add(self.victim)
        self.cluster.run(IDENTITY_REFUSAL_HOLD_SECONDS - 1)
        self.assertTrue(wiped.status_view().identity_refusals)
        self.cluster.run(1.5)
        self.assertEqual(wiped.status_view().identity_refusals, ())

    def test_replace_a_wiped_node(self):
        """docs/operations.md's replacement: remove the wiped member (its peers forget
        its uuid once the removal commits), add it back as a learner bound to its new
        uuid; it catches up, is promoted, says ready, and serves stale reads again."""
        cluster = self.cluster
        wiped = cluster.wipe(self.victim)
        cluster.run(2.0)
        self.assertEqual(cluster.change(REMOVE, self.victim), [cluster.leader().core.config_index])
        for node in cluster.nodes.values():
            if node is not wiped:
                self.assertNotIn(self.victim, cluster.stores[node.node_id].records)
        added = cluster.change(ADD_LEARNER, self.victim, uuid=wiped.identity.uuid,
                               address="127.0.0.1:%d" % cluster.members[self.victim].port)
        self.assertIsInstance(added[0], int, added)
        cluster.run(IDENTITY_REFUSAL_HOLD_SECONDS + 3)
        self.assertTrue(wiped.is_ready(), wiped.status_view().not_ready_reason())
        self.assertEqual(wiped.core.last_applied, cluster.leader().core.last_applied)
        self.assertTrue(wiped.identity.caught_up)
        self.assertIsNone(wiped.stale_read_refusal())
        self.assertIn(self.victim, cluster.leader().core.configuration.voters)
        view = {p.peer: p for p in cluster.leader().status_view().peer_identities}
        self.assertEqual((view[self.victim].uuid, view[self.victim].source),
                         (wiped.identity.uuid, "configuration"))

    def test_no_forgetting_before_the_removal_commits(self):
        """A removal that has not committed (the leader is cut off from the others)
        forgets nothing: the next leader may still undo it."""
        cluster = self.cluster
        leader_id = self.leader.node_id
        others = [n for n in cluster.nodes if n != leader_id]
        cluster.network.cut.update(others)
        result_of(self.leader.change(REMOVE, self.victim))
        cluster.run(0.5)
        self.assertIn(self.victim, cluster.stores[leader_id].records)
        self.assertNotIn(self.victim, self.leader.core.configuration)


class NewDataDirectoryTests(SynchronousTestCase):
    def test_stale_reads_wait_for_the_first_catch_up(self):
        """A node on a new data directory refuses stale reads until it has applied what
        a leader had committed, records that durably once, and serves them from then
        on, even when it later falls behind."""
        cluster = IdentityCluster(self, 3, timing=Timing())
        node = cluster.nodes["n1"]
        self.assertIn("has not caught up with a leader since it was created",
                      node.stale_read_refusal())
        cluster.run(2.0)
        self.assertIsNone(node.stale_read_refusal())
        self.assertEqual([i.marked for i in cluster.identities.values()], [1, 1, 1])
        cluster.run(1.0)
        self.assertEqual([i.marked for i in cluster.identities.values()], [1, 1, 1])

    def test_a_bound_uuid_is_required_on_first_contact(self):
        """A member added with a uuid is refused from any other data directory, even
        by nodes that never heard of it."""
        cluster = IdentityCluster(self, 3)
        cluster.run(2.0)
        leader = cluster.leader()
        cluster.nodes["n3"].stopService()
        cluster.change(REMOVE, "n3")
        self.assertIsInstance(
            cluster.change(ADD_LEARNER, "n3", address="127.0.0.1:7003", uuid="ab" * 16)[0], int)
        del cluster.identities["n3"]  # n3 comes back with another uuid than bound
        cluster.storages["n3"] = JournalStorage(cluster.journal, "n3")
        cluster.machines["n3"] = JournalStateMachine(cluster.journal, "n3")
        n3 = cluster.start("n3")
        cluster.run(2.0)
        self.assertTrue(n3.status_view().identity_refusals)
        view = {p.peer: p for p in leader.status_view().peer_identities}
        self.assertEqual((view["n3"].uuid, view["n3"].source), ("ab" * 16, "configuration"))
        self.assertGreater(view["n3"].dropped_wrong_identity, 0)


class BindingTests(SynchronousTestCase):
    def setUp(self):
        """A leader in the middle of binding n3's uuid: n3 was cut off until the other
        two had bound theirs, and the leader's entries are held (not its heartbeats),
        so the binding it appends on first hearing n3 cannot commit yet."""
        cluster = self.cluster = IdentityCluster(self, 3)
        cluster.network.cut.add("n3")
        cluster.run(2.0)
        leader = self.leader = cluster.leader()
        self.assertEqual(len(leader._binds), 2)
        cluster.network.hold_from = {leader.node_id}
        cluster.network.cut.clear()
        cluster.run(1.0)
        core = leader.core
        self.assertGreater(core.config_index, core.commit_index)
        self.assertEqual(core.configuration.get("n3").uuid, cluster.identities["n3"].uuid)
        [self.replaced] = [old for old, new in leader._binds.items() if new == core.config_index]

    def test_a_change_waits_behind_a_binding(self):
        """An operator's change asked while the leader's own binding of a uuid commits
        waits for it instead of being refused (409 change_in_progress), and a change
        made against the configuration before the binding (expect_config_index) is
        made against the one after: a binding changes no member."""
        leader = self.leader
        self.assertEqual(leader.core.propose_change(REMOVE, "n3").code, "change_in_progress")
        out = result_of(leader.change(REMOVE, "n3", expect_config_index=self.replaced))
        self.assertEqual(out, [])  # waiting, not refused
        self.cluster.network.hold_from = frozenset()
        self.cluster.network.release_held()
        self.cluster.run(1.0)
        self.assertEqual(len(out), 1)
        self.assertIsInstance(out[0], int, out)
        self.assertNotIn("n3", leader.core.configuration)

    def test_a_binding_that_does_not_commit_refuses_the_waiting_change(self):
        """If the binding does not commit within the proposal timeout, the waiting
        change is refused (409 change_in_progress: nothing of it was appended)."""
        out = result_of(self.leader.change(REMOVE, "n3"))
        self.cluster.run(self.leader.timing.proposal_timeout_seconds + 0.1)
        [failure] = out
        self.assertEqual(failure.value.code, "change_in_progress")
        self.assertIn("n3", self.leader.core.configuration)

    def test_waiting_changes_fail_when_the_node_stops(self):
        """A change waiting behind a binding fails when the node stops."""
        out = result_of(self.leader.change(REMOVE, "n3"))
        self.leader.stopService()
        self.assertEqual(len(out), 1)
        self.assertTrue(hasattr(out[0], "value"), out)


class StaleNoticeTests(SynchronousTestCase):
    def test_a_notice_against_the_configuration_in_force_is_ignored(self):
        """A peer replaying an older configuration may refuse a node whose data
        directory was replaced since: the node whose configuration in force binds its
        id to its own uuid lost nothing, so it counts the notice and stays ready."""
        cluster = IdentityCluster(self, 3)
        cluster.run(2.0)
        node = cluster.nodes["n2"]
        self.assertEqual(node.core.configuration.get("n2").uuid, node.identity.uuid)
        node.identity_refused("n1", b"\x77" * 16, bytes.fromhex(node.identity.uuid))
        self.assertEqual(node.counters["stale_identity_notices"], 1)
        self.assertEqual(node.status_view().identity_refusals, ())
        self.assertTrue(node.is_ready())

"""Membership changes in the pure core, each rule a scenario from Ongaro's dissertation
("Consensus: Bridging Theory and Practice", 2014), chapter 4; and how a leader and a
follower see a follower that lost its data.

The cores run in ``txraft.testing.sim_cluster.Cluster`` (the node's executor, the node's
snapshot transfer, and the safety checker after every delivery and tick).  ``founding``
names the voters a cluster starts with; the other nodes wait outside it, as servers to
be added.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from txraft.core import (
    ADD_LEARNER,
    FOLLOWER,
    LEADER,
    LEARNER,
    PROMOTE,
    REMOVE,
    VOTER,
    Accepted,
    ChangeRefused,
    ConfigChangeError,
    Configuration,
    CoreConfig,
    Member,
    NotLeaderOutcome,
    RaftCore,
)
from txraft.core.config import BIND
from txraft.core.messages import (
    ENTRY_CONFIG,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshot,
    RequestVote,
    SnapshotMeta,
)
from txraft.testing.sim import MemoryStorage
from txraft.testing.sim_cluster import SCENARIO_CONFIG, Cluster
from txraft.testing.sim_invariants import InvariantViolation

# Plain Raft as in the dissertation's figures: no PreVote, no CheckQuorum.
PLAIN = CoreConfig(election_ticks=10, heartbeat_ticks=1, pre_vote=False, check_quorum=False)
# Scenario timing without automatic promotion, so a test decides when a learner is promoted.
MANUAL = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=0)


def with_learner(config=MANUAL, ids="abcd", founding="abc", learner="d"):
    """``a`` leads ``founding``; ``learner`` was added and its addition committed."""
    c = Cluster(list(ids), config=config, founding=list(founding))
    c.elect("a")
    c.deliver()
    out = c.change("a", ADD_LEARNER, Member(learner))
    if not isinstance(out, Accepted):
        raise AssertionError(out)
    c.deliver()
    return c, out


class ConfigurationValueTests(SynchronousTestCase):
    def test_single_server_changes(self):
        """Section 4.1: each change adds or removes one server, so consecutive
        configurations' majorities overlap; a new server joins as a non-voting member
        (4.2.1) and becomes a voter by a second change."""
        conf = Configuration.of_voters(["a", "b"])
        added = conf.changed(ADD_LEARNER, Member("c", address="10.0.0.3:5001"))
        self.assertEqual((added.voters, added.learners), (("a", "b"), ("c",)))
        promoted = added.changed(PROMOTE, Member("c"))
        self.assertEqual(promoted.voters, ("a", "b", "c"))
        self.assertEqual(promoted.get("c").address, "10.0.0.3:5001")
        removed = promoted.changed(REMOVE, Member("a"))
        self.assertEqual(removed.voters, ("b", "c"))
        # A learner always joins as a learner, whatever role the request names.
        self.assertEqual(conf.changed(ADD_LEARNER, Member("z", role=VOTER)).get("z").role,
                         LEARNER)

    def test_bind_sets_a_uuid_and_nothing_else(self):
        """A binding writes which data directory a member runs on (node identity);
        voters, learners and addresses stay, so every majority is the same."""
        conf = Configuration((Member("a", address="h:1"), Member("b", LEARNER, "h:2")))
        bound = conf.changed(BIND, Member("b", uuid="ab" * 16))
        self.assertEqual((bound.voters, bound.learners), (conf.voters, conf.learners))
        self.assertEqual(bound.get("b"), Member("b", LEARNER, "h:2", uuid="ab" * 16))
        self.assertEqual(bound.get("a"), conf.get("a"))
        for member, code in ((Member("x", uuid="ab" * 16), "unknown_member"),
                             (Member("b"), "invalid_change"),
                             (Member("b", uuid="ab" * 16), "invalid_change")):
            with self.assertRaises(ConfigChangeError) as caught:
                bound.changed(BIND, member)
            self.assertEqual(caught.exception.code, code, member)

    def test_refused_changes_name_their_reason(self):
        conf = Configuration((Member("a", address="h:1"), Member("b", LEARNER)))
        cases = [
            (ADD_LEARNER, Member("a"), "duplicate_member"),
            (ADD_LEARNER, Member("c", address="h:1"), "duplicate_address"),
            (PROMOTE, Member("a"), "already_voter"),
            (PROMOTE, Member("x"), "unknown_member"),
            (REMOVE, Member("x"), "unknown_member"),
            (REMOVE, Member("a"), "last_voter"),
            ("demote", Member("a"), "invalid_change"),
        ]
        for op, member, code in cases:
            with self.assertRaises(ConfigChangeError) as caught:
                conf.changed(op, member)
            self.assertEqual(caught.exception.code, code, (op, member))

    def test_round_trip_and_malformed_bytes(self):
        conf = Configuration((Member("a", VOTER, "h:1", "http://h:8001", "u-1"),
                              Member("b", LEARNER, "h:2")))
        self.assertEqual(Configuration.from_bytes(conf.to_bytes()), conf)
        for bad in (b"", b"\xc1", b"\x92\x01\x90", conf.to_bytes()[:-1]):
            with self.assertRaises(ConfigChangeError) as caught:
                Configuration.from_bytes(bad)
            self.assertEqual(caught.exception.code, "malformed_configuration")


class TakesEffectWhenAppendedTests(SynchronousTestCase):
    def test_configuration_is_in_force_once_appended(self):
        """Section 4.1: "a server always uses the latest configuration in its log,
        regardless of whether the entry is committed": the leader replicates to the new
        member at once, and a follower adopts the entry before it commits."""
        c = Cluster(list("abcd"), config=MANUAL, founding="abc")
        c.elect("a")
        c.deliver()
        c.cut("a", "c")
        c.cut("b", "a")  # b's acknowledgement is lost: the entry cannot commit
        out = c.change("a", ADD_LEARNER, Member("d"))
        self.assertEqual((c["a"].config_index, c["a"].learners), (out.index, ("d",)))
        self.assertIn("d", c["a"].progress)
        c.deliver()
        self.assertLess(c["a"].commit_index, out.index)
        self.assertEqual((c["b"].config_index, c["b"].learners), (out.index, ("d",)))
        self.assertEqual(c["d"].log.last_index, out.index)  # d got the log already

    def test_a_truncated_configuration_is_undone(self):
        """Section 4.1: when a follower's uncommitted configuration entry is overwritten
        by a new leader's entry, it falls back to the previous configuration in its
        log (and uses a later one again if the new leader sends it)."""
        added = Configuration.of_voters(["a", "b", "c"]).changed(ADD_LEARNER, Member("d"))
        b = RaftCore(
            "b", ["a", "b", "c"], MANUAL, random.Random(1),
            entries=[Entry(1, 1, b""), Entry(2, 1, added.to_bytes(), ENTRY_CONFIG)],
        )
        self.assertEqual((b.config_index, b.learners), (2, ("d",)))
        b.step(AppendEntries(2, "c", "b", 1, 1, (Entry(2, 2, b"x"),), 1))
        self.assertEqual((b.config_index, b.learners, b.peers), (0, (), ("a", "c")))
        again = Configuration.of_voters(["a", "b", "c"]).changed(ADD_LEARNER, Member("e"))
        b.step(AppendEntries(2, "c", "b", 2, 2, (Entry(3, 2, again.to_bytes(), ENTRY_CONFIG),), 1))
        self.assertEqual((b.config_index, b.learners), (3, ("e",)))

    def test_restart_reads_the_configuration_from_the_log(self):
        """Section 4.1: the configuration is the latest one in the durable log, so a
        restarted server uses it without being told."""
        c, out = with_learner()
        c.crash("b")
        c.restart("b")
        self.assertEqual((c["b"].config_index, c["b"].learners), (out.index, ("d",)))


class OneChangeAtATimeTests(SynchronousTestCase):
    def test_a_second_change_waits_for_the_first_to_commit(self):
        """Section 4.1: "the leader does not begin a new change until the previous
        change's entry has committed"; the configuration is unchanged by the refusal."""
        c = Cluster(list("abcde"), config=MANUAL, founding="abc")
        c.elect("a")
        c.deliver()
        c.cut("b", "a")
        c.cut("c", "a")
        first = c.change("a", ADD_LEARNER, Member("d"))
        self.assertIsInstance(first, Accepted)
        second = c.change("a", ADD_LEARNER, Member("e"))
        self.assertEqual(second.code, "change_in_progress")
        self.assertEqual(c["a"].learners, ("d",))
        c.heal()
        c.run(2)
        self.assertIsInstance(c.change("a", ADD_LEARNER, Member("e")), Accepted)

    def test_no_change_before_an_entry_of_the_leaders_term_commits(self):
        """Dissertation 4.1 as corrected (Ongaro, raft-dev, 2015): a leader may not
        append a configuration entry until an entry of its own term has committed."""
        c = Cluster(list("abcd"), config=MANUAL, founding="abc")
        c.campaign("a")
        c.deliver(drop=lambda m: isinstance(m, AppendEntries))  # its no-op goes nowhere
        self.assertEqual(c["a"].role, LEADER)
        out = c.change("a", ADD_LEARNER, Member("d"))
        self.assertEqual(out.code, "leader_not_ready")
        self.assertEqual((c["a"].config_index, c["a"].learners), (0, ()))
        c.heal()
        c.run(2)
        self.assertIsInstance(c.change("a", ADD_LEARNER, Member("d")), Accepted)

    def test_expect_config_index_precondition(self):
        c, out = with_learner()
        moved = c.change("a", PROMOTE, "d", expect_config_index=0)
        self.assertEqual(moved.code, "config_changed")
        self.assertIsInstance(c.change("a", PROMOTE, "d", expect_config_index=out.index),
                              Accepted)

    def test_refusals_change_nothing(self):
        c, out = with_learner()
        before = (c["a"].configuration, c["a"].log.last_index)
        for op, member, code in [
            (ADD_LEARNER, Member("d"), "duplicate_member"),
            (PROMOTE, "a", "already_voter"),
            (REMOVE, "zz", "unknown_member"),
        ]:
            refused = c.change("a", op, member)
            self.assertIsInstance(refused, ChangeRefused)
            self.assertEqual(refused.code, code)
        self.assertEqual((c["a"].configuration, c["a"].log.last_index), before)
        self.assertIsInstance(c.change("b", REMOVE, "d"), NotLeaderOutcome)

    def test_the_last_voter_cannot_be_removed(self):
        c = Cluster(["solo", "x"], founding=["solo"], config=MANUAL)
        c.tick("solo", 2 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["solo"].role, LEADER)
        self.assertEqual(c.change("solo", REMOVE, "solo").code, "last_voter")


class SingleServerChangeBugTests(SynchronousTestCase):
    """The bug Ongaro reported on raft-dev in July 2015: two single-server changes
    proposed in different terms, each by a leader that had not committed an entry of
    its term, can have majorities that do not overlap, and a committed entry is lost.
    Here: s5 is a learner of {s1..s4}; s1 (term 1) promotes it but only s5 hears; s2
    wins term 2 with s3 and s4 and removes s1, committed by s2 and s3 under {s2,s3,s4};
    s1 then wins term 3 with s4 and s5 under {s1..s5} and overwrites it."""

    def run_scenario(self):
        c = Cluster(["s1", "s2", "s3", "s4", "s5"], config=PLAIN,
                    founding=["s1", "s2", "s3", "s4"])
        c.elect("s1")
        c.deliver()
        self.assertIsInstance(c.change("s1", ADD_LEARNER, Member("s5")), Accepted)
        c.deliver()
        # s1 promotes s5; only s5 receives the entry.
        for other in ("s2", "s3", "s4"):
            c.cut("s1", other)
        promote = c.change("s1", PROMOTE, "s5")
        self.assertIsInstance(promote, Accepted)
        c.deliver()
        self.assertLess(c["s1"].commit_index, promote.index)
        # s1 crashes; s2 wins term 2 with s3 and s4; its no-op reaches s3 only.
        c.crash("s1")
        c.campaign("s2")
        c.deliver(drop=lambda m: isinstance(m, AppendEntries) and m.receiver in ("s4", "s5"))
        self.assertEqual(c["s2"].role, LEADER)
        c.cut("s2", "s4")
        c.cut("s2", "s5")
        return c

    def s1_returns(self, c):
        """s1 restarts next to s4 and s5 only, and campaigns until it leads or gives up."""
        c.heal()
        c.partition(["s2", "s3"], ["s1", "s4", "s5"])
        c.restart("s1")
        for _ in range(3):
            c.campaign("s1")
            c.deliver()
            if c["s1"].role == LEADER:
                return True
        return False

    def test_the_leader_waits_for_its_no_op_before_a_change(self):
        """With the rule, s2 cannot remove s1 until its no-op commits, which needs s4;
        once it has, s4's log holds term 2 and s4 will not elect s1."""
        c = self.run_scenario()
        self.assertEqual(c.change("s2", REMOVE, "s1").code, "leader_not_ready")
        c.heal()
        c.run(2)
        out = c.change("s2", REMOVE, "s1")
        self.assertIsInstance(out, Accepted)
        c.run(2)
        self.assertGreaterEqual(c["s2"].commit_index, out.index)
        self.assertFalse(self.s1_returns(c))

    def test_without_the_rule_a_committed_entry_is_lost(self):
        """The regression scenario: switch the rule off and the safety checker sees
        Leader Completeness broken when s1 wins term 3."""
        self.patch(RaftCore, "_noop_committed", lambda core: True)
        c = self.run_scenario()
        out = c.change("s2", REMOVE, "s1")
        self.assertIsInstance(out, Accepted)
        c.deliver()
        self.assertGreaterEqual(c["s2"].commit_index, out.index)  # s2 and s3: a majority of 3
        with self.assertRaises(InvariantViolation):
            self.s1_returns(c)


class LearnerTests(SynchronousTestCase):
    def test_a_learner_gets_the_log_and_counts_for_nothing(self):
        """Section 4.2.1: a new server joins as a non-voting member: it receives the
        log, but the leader counts it for neither commitment nor elections."""
        c, out = with_learner()
        self.assertEqual(c["d"].log.last_index, c["a"].log.last_index)
        self.assertEqual(c["d"].commit_index, c["a"].commit_index)
        c.isolate("b")
        c.isolate("c")
        entry = c.propose("a", b"x=1")
        c.run(3)
        self.assertEqual(c["d"].log.term_at(entry.index), entry.term)
        self.assertLess(c["a"].commit_index, entry.index)  # a and d are not a majority of abc

    def test_a_learner_never_campaigns(self):
        """Section 4.2.1: a learner is not promotable: however long it hears nothing,
        it starts no election (and so raises no term)."""
        c, out = with_learner()
        c.isolate("d")
        term = c["d"].term
        c.tick("d", 10 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual((c["d"].role, c["d"].term), (FOLLOWER, term))
        self.assertEqual(c.inflight, [])

    def test_reads_need_a_majority_of_voters(self):
        """Section 6.4 with learners: the ReadIndex round needs a majority of the
        voters; a learner's echo confirms nothing."""
        c, out = with_learner()
        c.isolate("b")
        c.isolate("c")
        c.heal()
        c.cut("b", "a")
        c.cut("c", "a")
        c.read("a", "r1")
        c.run(3)
        self.assertEqual(c.nodes["a"].reads, [])
        c.heal()
        c.run(2)
        self.assertEqual(c.nodes["a"].reads, ["r1"])

    def test_promotion_is_refused_until_the_learner_caught_up(self):
        """A promoted learner must not stall commitment (section 4.2.1): it becomes a
        voter only when its log is within ``promote_max_lag`` of the leader's."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=0,
                            promote_max_lag=3)
        c, out = with_learner(config)
        c.isolate("d")
        for i in range(5):
            c.propose("a", b"x=%d" % i)
        c.run(2)
        refused = c.change("a", PROMOTE, "d")
        self.assertEqual(refused.code, "not_caught_up")
        self.assertEqual(c["a"].learners, ("d",))
        c.heal()
        c.run(3)
        self.assertIsInstance(c.change("a", PROMOTE, "d"), Accepted)
        self.assertEqual(c["a"].voters, ("a", "b", "c", "d"))
        self.assertEqual(c["a"].quorum, 3)

    def test_promotion_of_a_learner_that_never_answered_is_refused(self):
        """A learner added at a node that never answered has ``match_index`` 0, which
        is within ``promote_max_lag`` of a short log: lag alone would let it become a
        voter nobody can reach (found by Schemathesis against a single node). The
        leader promotes only a learner that has answered it within two heartbeats."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=0,
                            promote_max_lag=100)
        c = Cluster(list("abcd"), config=config, founding=list("abc"))
        c.elect("a")
        c.deliver()
        c.isolate("d")
        self.assertIsInstance(c.change("a", ADD_LEARNER, Member("d")), Accepted)
        c.run(1)
        self.assertEqual(c["a"].learners, ("d",))
        self.assertLessEqual(c["a"].log.last_index, config.promote_max_lag)
        refused = c.change("a", PROMOTE, "d")
        self.assertIsInstance(refused, ChangeRefused)
        self.assertEqual(refused.code, "not_caught_up")
        self.assertEqual(c["a"].voters, ("a", "b", "c"))
        c.heal()
        c.run(3)
        self.assertIsInstance(c.change("a", PROMOTE, "d"), Accepted)

    def test_promotion_of_a_learner_gone_silent_is_refused(self):
        """Caught up once, then silent for more than two heartbeats: not promoted."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=0,
                            promote_max_lag=100)
        c, out = with_learner(config)
        c.run(2)
        c.isolate("d")
        c.run(3)
        refused = c.change("a", PROMOTE, "d")
        self.assertIsInstance(refused, ChangeRefused)
        self.assertEqual(refused.code, "not_caught_up")
        c.heal()
        c.run(2)
        self.assertIsInstance(c.change("a", PROMOTE, "d"), Accepted)

    def test_caught_up_learner_is_promoted_automatically(self):
        """The leader promotes a learner that has stayed caught up and answering for
        ``auto_promote_ticks`` ticks; one that is cut off stays a learner."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=5)
        c, out = with_learner(config)
        c.isolate("d")
        c.run(20)
        self.assertEqual(c["a"].learners, ("d",))
        c.heal()
        c.run(12)
        self.assertEqual(c["a"].voters, ("a", "b", "c", "d"))
        self.assertEqual(c["d"].voters, ("a", "b", "c", "d"))
        self.assertEqual(c["a"].learners, ())


class RemovalTests(SynchronousTestCase):
    def test_removed_leader_steps_down_once_its_removal_commits(self):
        """Section 4.2.2: a leader removed from the configuration keeps leading until
        the entry removing it commits, without counting itself in majorities; then it
        steps down, and never campaigns again."""
        c = Cluster(list("abc"), config=MANUAL)
        c.elect("a")
        c.deliver()
        c.cut("b", "a")
        c.cut("c", "a")
        out = c.change("a", REMOVE, "a")
        self.assertIsInstance(out, Accepted)
        c.deliver()
        self.assertEqual(c["a"].role, LEADER)  # not committed: b's and c's answers lost
        self.assertEqual(c["a"].quorum, 2)  # a majority of {b, c}
        c.heal()
        for _ in range(3):  # the stall probe resends what b and c did not acknowledge
            c.tick("a")
            c.deliver()
        self.assertEqual(c["a"].role, FOLLOWER)
        self.assertGreaterEqual(c["b"].commit_index, out.index)  # told before it left
        mark = len(c.nodes["a"].readies)
        c.run(4 * SCENARIO_CONFIG.election_ticks)
        leader = c.leader()
        self.assertIn(leader, ("b", "c"))
        self.assertEqual(c[leader].voters, ("b", "c"))
        self.assertNotEqual(c["a"].role, LEADER)
        self.assertFalse(any(isinstance(m, RequestVote) and m.sender == "a"
                             for rd in c.nodes["a"].readies[mark:] for m in rd.all_messages()))

    def test_a_removed_server_cannot_disrupt_the_cluster(self):
        """Section 4.2.3: a server removed while cut off never learns it and times
        out; PreVote and the leader-lease check (CheckQuorum) keep its elections from
        raising the others' term."""
        c = Cluster(list("abc"))
        c.elect("a")
        c.deliver()
        c.isolate("c")
        out = c.change("a", REMOVE, "c")
        c.run(2)
        self.assertGreaterEqual(c["a"].commit_index, out.index)
        term = c["a"].term
        self.assertNotIn("c", c["a"].progress)  # a no longer sends c anything
        self.assertEqual(c["c"].config_index, 0)  # c never heard of its removal
        c.heal()
        mark = len(c.nodes["c"].readies)
        c.run(6 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual((c["a"].role, c["a"].term, c["b"].term), (LEADER, term, term))
        tried = [m for rd in c.nodes["c"].readies[mark:] for m in rd.all_messages()
                 if isinstance(m, RequestVote)]
        self.assertTrue(tried)
        self.assertTrue(all(m.pre_vote for m in tried))  # never a real election

    def test_a_removed_follower_stops_campaigning_once_it_knows(self):
        """Section 4.2.3: a server that has its removal in its log, and knows it
        committed (the leader's last heartbeat to it says so), is no voter of its
        latest configuration: it never starts an election."""
        c = Cluster(list("abc"), config=MANUAL)
        c.elect("a")
        c.deliver()
        out = c.change("a", REMOVE, "c")
        c.run(3)
        self.assertEqual(c["c"].config_index, out.index)
        self.assertGreaterEqual(c["c"].commit_index, out.index)
        c.isolate("c")
        term = c["c"].term
        mark = len(c.nodes["c"].readies)
        c.tick("c", 5 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual((c["c"].role, c["c"].term), (FOLLOWER, term))
        self.assertEqual([m for rd in c.nodes["c"].readies[mark:] for m in rd.all_messages()
                          if isinstance(m, RequestVote)], [])

    def test_a_removed_server_that_may_hold_the_only_copy_of_its_removal_campaigns(self):
        """Configurations in force once appended (section 4.1): a leader that appends its
        own removal and fails before anyone else has the entry leaves the remaining
        voters unable to elect anyone (their candidate's log is behind its, so it
        refuses its vote, and by its own configuration it is no voter). Found by the
        simulator (seed 10172). It campaigns while the removal may not have committed,
        counting votes in its latest configuration; once elected it commits the removal
        and steps down (4.2.2), and the remaining voter leads."""
        c = Cluster(list("ab"), config=MANUAL)
        c.elect("b")
        c.deliver()
        c.isolate("b")
        out = c.change("b", REMOVE, "b")
        self.assertIsInstance(out, Accepted)
        c.run(1)
        self.assertEqual((c["a"].config_index, c["b"].config_index), (0, out.index))
        c.crash("b")
        c.restart("b")
        self.assertEqual(c["b"].voters, ("a",))
        c.heal()
        # a alone cannot win: the configuration it knows has two voters and b's log is
        # the longer one.
        c.run(10 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["a"].voters, ("a",))
        self.assertGreaterEqual(c["a"].commit_index, out.index)
        self.assertEqual(c["a"].role, LEADER)
        self.assertEqual(c["b"].role, FOLLOWER)
        self.assertIsInstance(c.propose("a", b"x=1"), Accepted)

    def test_an_uninformed_removed_server_only_asks(self):
        """A removed server that never learnt its removal committed asks with PreVote
        (section 9.6), which voters with a leader refuse: it raises no term."""
        c = Cluster(list("abc"), config=MANUAL)
        c.elect("a")
        c.deliver()
        c.isolate("b")
        out = c.change("a", REMOVE, "c")
        c.run(1)  # c has the entry; without b it cannot commit
        self.assertEqual(c["c"].config_index, out.index)
        c.heal()
        c.isolate("c")
        c.run(3)
        self.assertGreaterEqual(c["a"].commit_index, out.index)
        self.assertLess(c["c"].commit_index, out.index)  # the farewell was lost
        c.heal()
        term = c["a"].term
        c.run(6 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual((c["a"].role, c["a"].term, c["b"].term, c["c"].term),
                         (LEADER, term, term, term))


class SnapshotConfigurationTests(SynchronousTestCase):
    def test_a_snapshot_carries_the_configuration(self):
        """Section 5.1: a snapshot replaces the entries that held the configuration, so
        it records the latest configuration as of its last index; a server that gets
        its log from the snapshot knows the members, and so does it after a restart."""
        c, out = with_learner(ids="abcde", learner="d")
        c.isolate("e")
        c.change("a", PROMOTE, "d")
        c.run(2)
        for i in range(5):
            c.propose("a", b"x=%d" % i)
        c.run(2)
        core = c["a"]
        meta = core.compact(core.last_applied)
        self.assertEqual(meta.configuration.voters, ("a", "b", "c", "d"))
        self.assertEqual(meta.config_index, core.config_index)
        c.nodes["a"].storage.save_snapshot(meta, b"image")
        c.heal()
        added = c.change("a", ADD_LEARNER, Member("e"))
        self.assertIsInstance(added, Accepted)
        c.run(6)
        e = c["e"]
        self.assertEqual(e.log.snapshot_index, meta.index)
        self.assertEqual((e.config_index, e.voters, e.learners),
                         (added.index, ("a", "b", "c", "d"), ("e",)))
        c.crash("e")
        c.restart("e")
        self.assertEqual((c["e"].config_index, c["e"].learners), (added.index, ("e",)))

    def test_core_built_from_a_snapshot_uses_its_configuration(self):
        conf = Configuration.of_voters(["a", "b", "z"])
        core = RaftCore(
            "a", Configuration.of_voters(["a", "b", "c"]), SCENARIO_CONFIG, random.Random(1),
            snapshot=SnapshotMeta(5, 1, configuration=conf, config_index=4),
        )
        self.assertEqual((core.voters, core.config_index), (("a", "b", "z"), 4))
        later = Configuration.of_voters(["a", "b"])
        core = RaftCore(
            "a", Configuration.of_voters(["a", "b", "c"]), SCENARIO_CONFIG, random.Random(1),
            snapshot=SnapshotMeta(5, 1, configuration=conf, config_index=4),
            entries=[Entry(6, 1, later.to_bytes(), ENTRY_CONFIG)],
        )
        self.assertEqual((core.voters, core.config_index), (("a", "b"), 6))
        self.assertEqual(core.config_at(5), (4, conf))

    def test_install_snapshot_without_configuration_keeps_the_known_one(self):
        """A snapshot from before configurations were logged (no configuration in it)
        leaves the server with the configuration it knew at that index."""
        c = Cluster(list("abc"), config=MANUAL)
        c.elect("a")
        c.deliver()
        b = c["b"]
        b.step(InstallSnapshot(b.term, "a", "b", 50, b.term, data=b"img"))
        self.assertEqual((b.voters, b.log.snapshot_index), (("a", "b", "c"), 50))


class LostLogTests(SynchronousTestCase):
    """A follower that lost its data (a wiped disk) must never look caught up, and its
    leader must say so instead of probing it silently forever (issue: a recreated
    Docker volume answered /ready 200 with an empty catalogue)."""

    def wiped(self):
        c = Cluster("abc")
        c.elect("a")
        c.deliver()
        for i in range(5):
            c.propose("a", b"x=%d" % i)
        c.run(2)
        c.crash("c")
        c.nodes["c"].storage = MemoryStorage()  # the data directory is gone
        c.restart("c")
        return c

    def test_a_follower_learns_the_leaders_commit_index_from_heartbeats(self):
        """Heartbeats carry the leader's commit index (the follower commits only up to
        what it provably shares): a follower knows how far behind it is."""
        c = self.wiped()
        c.run(1)
        self.assertEqual(c["c"].leader_commit, c["a"].commit_index)
        self.assertEqual(c["c"].commit_index, 0)
        self.assertEqual(c["c"].status().leader_commit, c["a"].commit_index)

    def test_the_leader_reports_a_follower_that_lost_its_log(self):
        c = self.wiped()
        c.run(1)
        self.assertFalse(c["a"].status().peer("c").lost_log)  # once may be reordering
        c.run(3)
        status = c["a"].status().peer("c")
        self.assertTrue(status.lost_log)
        self.assertEqual(status.match_index, c["a"].commit_index)  # not refilled
        self.assertEqual(c["c"].log.last_index, 0)

    def test_one_reordered_rejection_is_not_a_lost_log(self):
        """A "too short" answer overtaken by a later success (UDP reorders) counts
        once and is forgotten at the next success."""
        c = Cluster("abc")
        c.elect("a")
        c.deliver()
        c.propose("a", b"x=1")
        c.run(2)
        pr = c["a"].progress["b"]
        c["a"].step(AppendEntriesResponse(
            c["a"].term, "b", "a", success=False, rejected_index=pr.match_index,
            conflict_index=pr.match_index, conflict_term=0))
        self.assertEqual(pr.short_rejections, 1)
        c.run(2)
        self.assertEqual(pr.short_rejections, 0)
        self.assertFalse(c["a"].status().peer("b").lost_log)

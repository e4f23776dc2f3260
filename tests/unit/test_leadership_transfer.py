"""Leadership transfer in the pure core (Ongaro's dissertation, section 3.10).

"The prior leader stops accepting new client requests; [it] fully updates the target
server's log to match its own; [it] sends a TimeoutNow request to the target server; this
request has the same effect as the target server's election timer firing".  If the
transfer does not complete within an election timeout, the prior leader aborts it and
resumes accepting client requests.

The cores run in ``txraft.testing.sim_cluster.Cluster`` (the node's executor, and the
safety checker after every delivery and tick), with PreVote and CheckQuorum on: the
transfer's election must get past the voters' leader lease (section 4.2.3), which is
what ``RequestVote.transfer`` is for.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txraft.core import (
    ADD_LEARNER,
    CANDIDATE,
    FOLLOWER,
    LEADER,
    Accepted,
    ChangeRefused,
    CoreConfig,
    Member,
    NotLeaderOutcome,
)
from txraft.core.messages import AppendEntries, RequestVote, TimeoutNow
from txraft.testing.sim_cluster import SCENARIO_CONFIG, Cluster

MANUAL = CoreConfig(election_ticks=10, heartbeat_ticks=1, auto_promote_ticks=0)


def sent(c, node_id, kind, mark=0):
    return [m for rd in c.nodes[node_id].readies[mark:] for m in rd.all_messages()
            if isinstance(m, kind)]


class TransferTests(SynchronousTestCase):
    def setUp(self):
        self.c = Cluster(list("abc"), config=MANUAL)
        self.c.elect("a")
        self.c.run(2)
        self.term = self.c["a"].term

    def test_a_caught_up_target_campaigns_at_once_and_wins(self):
        """3.10: TimeoutNow has the effect of the target's election timer firing, without
        PreVote; the voters, who heard from the leader a moment ago, still vote, because
        the request says it is a transfer."""
        c = self.c
        mark = len(c.nodes["b"].readies)
        out = c.transfer("a", "b")
        self.assertEqual(out, Accepted(0, self.term))
        self.assertEqual(c["a"].transferee, "b")
        (timeout_now,) = c.take(lambda m: isinstance(m, TimeoutNow))
        self.assertEqual((timeout_now.term, timeout_now.receiver), (self.term, "b"))
        c.deliver_one(timeout_now)
        self.assertEqual((c["b"].role, c["b"].term), (CANDIDATE, self.term + 1))
        votes = sent(c, "b", RequestVote, mark)
        self.assertTrue(votes)
        self.assertTrue(all(v.transfer and not v.pre_vote for v in votes))
        c.deliver()
        self.assertEqual((c["b"].role, c["b"].term), (LEADER, self.term + 1))
        self.assertEqual((c["a"].role, c["a"].leader_id), (FOLLOWER, "b"))
        self.assertIsNone(c["a"].transferee)

    def test_the_lease_ignores_an_election_that_is_no_transfer(self):
        """Section 4.2.3 (what the flag overrides): a voter that heard from its leader
        within the election timeout ignores a RequestVote of a higher term."""
        c = self.c
        last = c["b"].log
        c.deliver_one(RequestVote(self.term + 1, "b", "c", last.last_index, last.last_term))
        self.assertEqual((c["c"].term, c["c"].voted_for), (self.term, "a"))
        c.deliver_one(RequestVote(self.term + 1, "b", "c", last.last_index, last.last_term,
                                  transfer=True))
        self.assertEqual((c["c"].term, c["c"].voted_for), (self.term + 1, "b"))

    def test_a_lagging_target_is_brought_up_to_date_first(self):
        """3.10: the leader stops taking proposals and fills the target's log before it
        sends TimeoutNow, so the target's log is up to date and it can win."""
        c = self.c
        c.cut("a", "b")
        for i in range(5):
            self.assertIsInstance(c.propose("a", b"x%d" % i), Accepted)
        c.deliver()
        last = c["a"].log.last_index
        self.assertLess(c["b"].log.last_index, last)
        self.assertIsInstance(c.transfer("a", "b"), Accepted)
        refused = c.propose("a", b"late")
        self.assertEqual(refused, NotLeaderOutcome(None, transferring_to="b"))
        self.assertEqual(c.change("a", ADD_LEARNER, Member("d")).code, "transfer_in_progress")
        self.assertFalse(c.take(lambda m: isinstance(m, TimeoutNow)))  # not caught up yet
        c.heal()
        for _ in range(3):
            c.tick("a")
            c.deliver()
            if c["b"].role == LEADER:
                break
        self.assertEqual(c["b"].role, LEADER)
        self.assertEqual(c["b"].term, self.term + 1)
        # Everything the old leader had is in the new leader's log, and commits.
        c.run(3)
        self.assertGreaterEqual(c["b"].commit_index, last)
        self.assertEqual(c.applied_data("b")[-5:], [b"x%d" % i for i in range(5)])

    def test_the_default_target_is_the_most_caught_up_voter(self):
        c = self.c
        c.cut("a", "c")
        for i in range(3):
            c.propose("a", b"y%d" % i)
        c.deliver()
        self.assertIsInstance(c.transfer("a"), Accepted)
        self.assertEqual(c["a"].transferee, "b")
        c.heal()
        c.deliver()
        self.assertEqual(c["b"].role, LEADER)

    def test_refusals(self):
        c = Cluster(list("abcd"), config=MANUAL, founding=list("abc"))
        c.elect("a")
        c.deliver()
        self.assertIsInstance(c.change("a", ADD_LEARNER, Member("d")), Accepted)
        c.run(2)
        cases = [("d", "not_voter"), ("zz", "unknown_member"), ("a", "already_leader")]
        for target, code in cases:
            out = c.transfer("a", target)
            self.assertIsInstance(out, ChangeRefused, target)
            self.assertEqual(out.code, code)
            self.assertIsNone(c["a"].transferee)
        self.assertEqual(c.transfer("b", "c"), NotLeaderOutcome("a"))
        c.cut("a", "b")
        c.propose("a", b"z")  # b falls behind: the transfer waits for it
        self.assertIsInstance(c.transfer("a", "b"), Accepted)
        self.assertEqual(c.transfer("a", "b"), Accepted(0, c["a"].term))  # the same one
        self.assertEqual(c.transfer("a", "c").code, "transfer_in_progress")

    def test_a_lone_voter_has_nobody_to_hand_over_to(self):
        c = Cluster(["a"], config=MANUAL)
        c.elect("a")
        self.assertEqual(c.transfer("a").code, "no_target")

    def test_abandoned_after_an_election_timeout(self):
        """3.10: no new leader within an election timeout: the leader aborts the transfer
        and takes client requests again."""
        c = self.c
        c.isolate("b")
        self.assertIsInstance(c.transfer("a", "b"), Accepted)
        ticks = 0
        while c["a"].transferee is not None:
            c.tick("a")
            c.tick("c")
            c.deliver()
            ticks += 1
            self.assertLessEqual(ticks, SCENARIO_CONFIG.election_ticks)
        self.assertEqual(ticks, MANUAL.election_ticks)
        self.assertEqual((c["a"].role, c["a"].term), (LEADER, self.term))
        self.assertIsInstance(c.propose("a", b"again"), Accepted)

    def test_timeout_now_counts_only_from_the_leader_and_for_voters(self):
        c = Cluster(list("abcd"), config=MANUAL, founding=list("abc"))
        c.elect("a")
        c.deliver()
        c.change("a", ADD_LEARNER, Member("d"))
        c.run(2)
        term = c["a"].term
        c.deliver_one(TimeoutNow(term, "c", "b"))  # c does not lead
        c.deliver_one(TimeoutNow(term - 1, "a", "b"))  # an older term
        c.deliver_one(TimeoutNow(term, "a", "d"))  # d is a learner
        self.assertEqual([c[n].role for n in "abcd"], [LEADER, FOLLOWER, FOLLOWER, FOLLOWER])
        self.assertEqual({c[n].term for n in "abcd"}, {term})

    def test_a_transfer_ends_with_the_leadership(self):
        """A leader that steps down for any reason forgets its transfer."""
        c = self.c
        c.cut("a", "b")
        c.propose("a", b"w")
        c.transfer("a", "b")
        c.deliver_one(AppendEntries(self.term + 5, "c", "a", 0, 0))
        self.assertEqual(c["a"].role, FOLLOWER)
        self.assertIsNone(c["a"].transferee)
        self.assertIsNone(c["a"].status().transferee)

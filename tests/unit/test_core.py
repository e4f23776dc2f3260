"""Scenario tests of the pure Raft core, each one a situation from the Raft paper.

Section numbers are from the paper (Ongaro & Ousterhout, "In Search of an Understandable
Consensus Algorithm", 2014) unless marked "dissertation" (Ongaro, "Consensus: Bridging
Theory and Practice", 2014).  The cores run in ``txraft.testing.sim_cluster.Cluster``,
which executes every Ready in the contract's order and checks the safety properties
after every delivery and tick.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from txraft.core import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    Accepted,
    CoreConfig,
    CoreError,
    NotLeaderOutcome,
    RaftCore,
    Ready,
    SoftState,
)
from txraft.core.log import ENTRY_OVERHEAD_BYTES
from txraft.core.messages import (
    ENTRY_NOOP,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    InstallSnapshot,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
)
from txraft.testing.sim_cluster import SCENARIO_CONFIG, Cluster

# Plain Raft as in the paper's figures: no PreVote, no CheckQuorum.
PLAIN = CoreConfig(election_ticks=10, heartbeat_ticks=1, pre_vote=False, check_quorum=False)


def of_type(kind, **fields):
    """A predicate for ``Cluster.take``/``deliver``: messages of a type and field values."""

    def match(m):
        return isinstance(m, kind) and all(getattr(m, k) == v for k, v in fields.items())

    return match


def terms_of(core):
    return [core.log.term_at(i) for i in range(1, core.log.last_index + 1)]


class ElectionTests(SynchronousTestCase):
    def test_basic_election_and_replication(self):
        """Section 5.2 and 5.3: after an election timeout one server wins, every other one
        follows it, and an entry it accepts is replicated, committed and applied
        everywhere in the same position."""
        c = Cluster(["a", "b", "c"])
        for _ in range(40):
            c.run(1)
            if c.leader():
                break
        leader = c.leader()
        self.assertIsNotNone(leader)
        term = c[leader].term
        c.run(2)
        for nid in "abc":
            self.assertEqual((c[nid].term, c[nid].leader_id), (term, leader))
        outcome = c.propose(leader, b"x=1")
        self.assertIsInstance(outcome, Accepted)
        self.assertEqual(outcome.term, term)
        c.run(2)
        for nid in "abc":
            self.assertEqual(c.applied_data(nid), [b"x=1"])
            self.assertEqual(c[nid].commit_index, outcome.index)

    def test_one_node_cluster_elects_itself_and_commits_immediately(self):
        """Section 5.2 with a majority of one: a lone server wins its own election after a
        timeout, commits each proposal as soon as it is durable and serves reads at once."""
        c = Cluster(["solo"])
        for _ in range(2 * SCENARIO_CONFIG.election_ticks):
            c.tick("solo")
        core = c["solo"]
        self.assertEqual(core.role, LEADER)
        outcome = c.propose("solo", b"x=1")
        self.assertEqual(core.commit_index, outcome.index)
        self.assertEqual(c.applied_data("solo"), [b"x=1"])
        c.read("solo", "r1")
        self.assertEqual(c.nodes["solo"].reads, ["r1"])
        self.assertEqual(c.inflight, [])

    def test_election_timeout_is_randomized_in_range(self):
        """Section 5.2: each server draws its election timeout at random from [E, 2E) so
        that split votes are rare; the draw comes from the injected random source."""
        config = CoreConfig(election_ticks=15, heartbeat_ticks=5)
        seen = set()
        core = RaftCore("a", ["a", "b", "c"], config, random.Random(7))
        for _ in range(300):
            core.campaign()
            seen.add(core.randomized_election_ticks)
        self.assertEqual(seen, set(range(15, 30)))

    def test_request_vote_up_to_date_rule(self):
        """Section 5.4.1: a vote goes only to a candidate whose log is at least as
        up-to-date: a higher last term wins regardless of length; with equal last terms
        the longer log wins."""
        c = Cluster("abc", config=PLAIN, logs={"a": [1, 1, 2], "b": [1, 1, 1, 1], "c": [1, 1, 2, 2]})
        # b has the longest log but an older last term: nobody votes for it.
        c.campaign("b")
        responses = []
        c.deliver(drop=lambda m: isinstance(m, RequestVoteResponse) and responses.append(m))
        self.assertEqual(sorted((m.sender, m.vote_granted) for m in responses),
                         [("a", False), ("c", False)])
        self.assertNotEqual(c["b"].role, LEADER)
        # a's last term 2 beats b's longer log; c has the same last term and more entries.
        c.campaign("a")
        responses = []
        c.deliver(drop=lambda m: isinstance(m, RequestVoteResponse) and responses.append(m))
        self.assertEqual(sorted((m.sender, m.vote_granted) for m in responses),
                         [("b", True), ("c", False)])

    def test_equal_logs_get_the_vote(self):
        """Section 5.4.1: "at least as up-to-date" includes equal logs."""
        c = Cluster("abc", config=PLAIN, logs={n: [1, 2] for n in "abc"})
        c.elect("b")
        self.assertEqual(c["b"].role, LEADER)

    def test_one_vote_per_term_survives_a_restart(self):
        """Section 5.2 and Figure 2: a server votes for at most one candidate per term,
        first come first served, and its vote is durable before it is sent, so a restart
        does not let it vote again; a duplicated request from the same candidate is
        granted again (that is the same vote)."""
        c = Cluster("abc", config=PLAIN)
        c.campaign("a")
        c.campaign("b")
        self.assertEqual((c["a"].term, c["b"].term), (1, 1))
        to_c = c.take(of_type(RequestVote, receiver="c"))
        from_a = [m for m in to_c if m.sender == "a"][0]
        from_b = [m for m in to_c if m.sender == "b"][0]
        c.inflight = []
        c.deliver_one(from_a)
        c.crash("c")
        c.restart("c")
        self.assertEqual(c.nodes["c"].storage.hard_state, HardState(1, "a"))
        c.inflight = []
        c.deliver_one(from_b)
        c.deliver_one(from_a)
        answers = [(m.receiver, m.vote_granted) for m in c.inflight]
        self.assertEqual(answers, [("b", False), ("a", True)])
        c.deliver()
        self.assertEqual(c["a"].role, LEADER)
        self.assertNotEqual(c["b"].role, LEADER)

    def test_split_vote_resolves(self):
        """Section 5.2: when candidates split the vote nobody wins the term; randomized
        timeouts make one of them time out first in a later term and win."""
        c = Cluster("abcd", config=PLAIN, seed=3)
        c.campaign("a")
        c.campaign("b")
        # c votes for a, d for b: two votes each, three needed.
        c.deliver(drop=lambda m: isinstance(m, RequestVote) and (m.sender, m.receiver) in {
            ("a", "d"), ("b", "c")})
        self.assertIsNone(c.leader())
        self.assertEqual({c[n].term for n in "abcd"}, {1})
        for ticks in range(1, 10 * PLAIN.election_ticks):
            c.run(1)
            if c.leader():
                break
        leader = c.leader()
        self.assertIsNotNone(leader)
        self.assertGreater(c[leader].term, 1)
        c.run(2)
        self.assertEqual({c[n].leader_id for n in "abcd"}, {leader})

    def test_candidate_steps_down_for_a_leader_of_its_term(self):
        """Section 5.2: a candidate that hears AppendEntries from a leader of its own term
        recognizes it as legitimate and returns to follower."""
        c = Cluster("abc", config=PLAIN)
        c.cut("b", "a")
        c.cut("b", "c")
        c.campaign("b")
        c.campaign("a")
        self.assertEqual((c["a"].term, c["b"].term), (1, 1))
        c.deliver()
        self.assertEqual(c["a"].role, LEADER)
        self.assertEqual((c["b"].role, c["b"].term, c["b"].leader_id), (FOLLOWER, 1, "a"))

    def test_non_leader_refuses_proposals_and_names_the_leader(self):
        """Dissertation section 6.2: a follower rejects client requests and names the
        leader it knows (none before it heard from one)."""
        c = Cluster("abc")
        self.assertEqual(c["b"].propose(b"x"), NotLeaderOutcome(None))
        self.assertEqual(c["b"].read_index("r"), NotLeaderOutcome(None))
        c.elect("a")
        self.assertEqual(c["b"].propose(b"x"), NotLeaderOutcome("a"))
        self.assertEqual(c["b"].read_index("r"), NotLeaderOutcome("a"))


class PreVoteAndCheckQuorumTests(SynchronousTestCase):
    def test_rejoining_node_with_prevote_does_not_disturb_the_leader(self):
        """Dissertation section 9.6: a server cut off from the cluster keeps timing out,
        but with PreVote it never wins a pre-vote, so it neither bumps its term nor
        deposes the healthy leader when it rejoins."""
        c = Cluster("abc")
        c.elect("a")
        term = c["a"].term
        c.isolate("c")
        c.run(10 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["c"].term, term)
        self.assertIn(c["c"].role, (PRE_CANDIDATE, FOLLOWER))
        c.heal()
        c.run(5)
        self.assertEqual([c[n].term for n in "abc"], [term] * 3)
        self.assertEqual(c.leader(), "a")
        self.assertEqual(c["c"].leader_id, "a")

    def test_without_prevote_a_rejoining_node_deposes_the_leader(self):
        """Dissertation section 9.6, the problem PreVote solves: without it the isolated
        server's term grows, and when it rejoins the higher term deposes the leader."""
        c = Cluster("abc", config=PLAIN)
        c.elect("a")
        term = c["a"].term
        c.isolate("c")
        c.run(10 * PLAIN.election_ticks)
        self.assertGreater(c["c"].term, term)
        c.heal()
        c.run(3 * PLAIN.election_ticks)
        self.assertGreater(c["a"].term, term)

    def test_prevote_does_not_change_term_or_vote(self):
        """Dissertation section 9.6: answering a pre-vote changes neither the voter's term
        nor its vote, and a pre-candidate keeps its own term until a majority agrees."""
        c = Cluster("abc")
        c.tick("a", 2 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual((c["a"].role, c["a"].term), (PRE_CANDIDATE, 0))
        probes = c.take(of_type(RequestVote, pre_vote=True))
        self.assertEqual({m.term for m in probes}, {1})
        c.deliver_one(probes[0])
        self.assertEqual((c["b"].term, c["b"].voted_for), (0, None))
        grant = c.take(of_type(RequestVoteResponse))[0]
        self.assertTrue(grant.vote_granted)
        c.deliver_one(grant)
        self.assertEqual((c["a"].role, c["a"].term), (CANDIDATE, 1))

    def test_followers_of_a_live_leader_ignore_vote_requests(self):
        """Section 6 of the paper (disruptive servers) / dissertation section 4.2.3: a
        server that heard from a leader within the minimum election timeout ignores
        RequestVote, so a server that was removed or cut off cannot depose it."""
        c = Cluster("abc")
        c.elect("a")
        term = c["a"].term
        c.deliver_one(RequestVote(term + 5, "c", "b", 100, term + 4))
        self.assertEqual(c["b"].term, term)
        self.assertEqual(c.inflight, [])

    def test_isolated_leader_steps_down_and_its_reads_fail(self):
        """Dissertation section 6.2 (CheckQuorum): a leader that has not heard from a
        majority for an election timeout steps down, fails the reads it holds and stops
        accepting new ones."""
        c = Cluster("abc")
        c.elect("a")
        c.run(2)
        c.isolate("a")
        c.read("a", "r1")
        self.assertEqual(c.nodes["a"].reads, [])
        c.tick("a", 2 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["a"].role, FOLLOWER)
        self.assertIsNone(c["a"].leader_id)
        self.assertEqual(c.nodes["a"].failed_reads, ["r1"])
        self.assertEqual(c.nodes["a"].reads, [])
        self.assertEqual(c["a"].read_index("r2"), NotLeaderOutcome(None))
        self.assertEqual(c.nodes["a"].readies[-1].soft_state, SoftState(FOLLOWER, 1, None))


# Figure 7: the leader (term 8) and the possible follower logs (a)-(f), as terms by index.
FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


class LogRepairTests(SynchronousTestCase):
    def figure_7(self):
        logs = dict(FIGURE_7, L=FIGURE_7_LEADER)
        return Cluster(["L"] + sorted(FIGURE_7), config=PLAIN, logs=logs,
                       terms={n: 7 for n in logs})

    def test_figure_7_logs_are_repaired_by_the_new_leader(self):
        """Section 5.3, Figure 7: when the leader of term 8 comes to power a follower may
        miss entries (a, b), have extra uncommitted ones (c, d) or both (e, f); the
        leader's consistency check finds where they agree, deletes what follows and
        replicates its own log, so every log ends up identical to the leader's."""
        c = self.figure_7()
        c.elect("L")
        self.assertEqual(c["L"].term, 8)
        c.run(3)
        want = FIGURE_7_LEADER + [8]
        for nid in c.node_ids:
            self.assertEqual(terms_of(c[nid]), want, nid)
            self.assertEqual(c[nid].commit_index, len(want), nid)
        # The extraneous entries of c, d and f were truncated from their durable logs.
        for nid in "cdf":
            self.assertEqual(c.nodes[nid].storage.truncations, 1, nid)
        for nid in "abe":
            self.assertLessEqual(c.nodes[nid].storage.truncations, 1, nid)

    def test_conflict_hint_repairs_in_one_round_trip_per_term(self):
        """Section 5.3 (the optimization at the end): a rejection names the conflicting
        term and the first index of it, so the leader skips a whole term per round trip
        instead of one entry: follower (f) of Figure 7 needs two rejections (terms 3 and
        2), follower (e) two (too short, then term 4), not one per entry."""
        c = self.figure_7()
        c.elect("L")
        rejections = {}
        c.run(3)
        for nid in c.node_ids:
            rejections[nid] = sum(
                1 for rd in c.nodes[nid].readies for m in rd.all_messages()
                if isinstance(m, AppendEntriesResponse) and not m.success
            )
        self.assertEqual(rejections["f"], 2)
        self.assertEqual(rejections["e"], 2)
        self.assertEqual(rejections["b"], 1)
        self.assertEqual(rejections["a"], 1)

    def test_long_conflicting_suffix_costs_one_round_trip(self):
        """Section 5.3: a follower holding 50 uncommitted entries of a stale term is
        repaired with a single rejection, not 50."""
        c = Cluster("abc", config=PLAIN, logs={"a": [1] + [3] * 50, "b": [1] + [3] * 50,
                                                "c": [1] + [2] * 50})
        c.elect("a")
        c.run(3)
        rejections = [m for rd in c.nodes["c"].readies for m in rd.all_messages()
                      if isinstance(m, AppendEntriesResponse) and not m.success]
        self.assertEqual(len(rejections), 1)
        self.assertEqual((rejections[0].conflict_term, rejections[0].conflict_index), (2, 2))
        self.assertEqual(terms_of(c["c"]), terms_of(c["a"]))

    def test_figure_8_no_commit_of_an_old_term_entry_by_counting_replicas(self):
        """Section 5.4.2, Figure 8: the leader of term 4 replicates the term-2 entry at
        index 2 to a majority, but must not commit it by counting replicas; then the
        server holding a term-3 entry there can still be elected and overwrite it,
        which is safe precisely because it was never committed."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, pre_vote=False,
                            check_quorum=False, max_append_entries=1)
        c = Cluster(["s1", "s2", "s3", "s4", "s5"], config=config,
                    logs={"s1": [1, 2], "s2": [1, 2], "s3": [1], "s4": [1], "s5": [1, 3]},
                    terms={n: 3 for n in ["s1", "s2", "s3", "s4", "s5"]})
        for n in ["s1", "s2", "s3", "s4", "s5"]:
            c.nodes[n].core.commit_index = 0
        # (c) s1 wins term 4 with s3 and s4; then only s3 hears from it.
        c.partition(["s1", "s3", "s4"], ["s2", "s5"])
        c.campaign("s1")
        c.deliver(drop=lambda m: isinstance(m, AppendEntries))
        self.assertEqual((c["s1"].role, c["s1"].term), (LEADER, 4))
        c.inflight = []
        c.heal()
        c.partition(["s1", "s2", "s3"], ["s4", "s5"])
        # s2 (which has index 2 already) takes the term-4 no-op; s3 gets index 2 (one
        # entry per message) but every AppendEntries carrying index 3 to s3 is held back.
        for _ in range(10):
            c.tick("s1")
            c.deliver(drop=lambda m: isinstance(m, AppendEntries) and m.receiver == "s3"
                      and m.entries and m.entries[0].index > 2 and c["s3"].log.last_index >= 2)
            if c["s3"].log.last_index >= 2 and c["s2"].log.last_index >= 3:
                break
        self.assertEqual(terms_of(c["s2"]), [1, 2, 4])
        self.assertEqual(terms_of(c["s3"]), [1, 2])
        self.assertEqual(c["s1"].progress["s3"].match_index, 2)
        self.assertEqual(c["s1"].progress["s2"].match_index, 3)
        # s1, s2 and s3 hold (2, term 2): the leader knows a majority has it, yet it must
        # not commit it by counting replicas.
        self.assertLess(c["s1"].commit_index, 2)
        # (d) s1 crashes; s5 (last term 3) is elected by s2, s3, s4 and overwrites index 2.
        c.crash("s1")
        c.heal()
        c.inflight = []
        c.isolate("s1")
        for _ in range(3):
            c.campaign("s5")
            c.deliver()
            if c["s5"].role == LEADER:
                break
        self.assertEqual(c["s5"].role, LEADER)
        c.run(3)
        for n in ["s2", "s3", "s4", "s5"]:
            self.assertEqual(c[n].log.term_at(2), 3, n)
            self.assertGreaterEqual(c[n].commit_index, 3, n)

    def test_figure_8_entry_of_current_term_commits_the_older_ones(self):
        """Section 5.4.2, Figure 8 (e): once the leader of term 4 has an entry of its own
        term on a majority, that entry and every one before it are committed, so the
        server with the term-3 entry can no longer win."""
        c = Cluster(["s1", "s2", "s3", "s4", "s5"], config=PLAIN,
                    logs={"s1": [1, 2], "s2": [1, 2], "s3": [1], "s4": [1], "s5": [1, 3]},
                    terms={n: 3 for n in ["s1", "s2", "s3", "s4", "s5"]})
        c.partition(["s1", "s2", "s3"], ["s4", "s5"])
        c.elect("s1")
        c.run(3)
        self.assertEqual(c["s1"].commit_index, 3)
        self.assertEqual(terms_of(c["s3"]), [1, 2, 4])
        c.crash("s1")
        c.heal()
        c.isolate("s1")
        c.inflight = []
        c.campaign("s5")
        c.deliver()
        self.assertNotEqual(c["s5"].role, LEADER)


class StaleMessageTests(SynchronousTestCase):
    def replicated(self, entries=10, config=SCENARIO_CONFIG):
        c = Cluster("abc", config=config)
        c.elect("a")
        for i in range(entries):
            c.propose("a", b"x=%d" % i)
        c.run(2)
        return c

    def test_stale_append_entries_does_not_truncate_a_longer_log(self):
        """Section 5.3 ("if an existing entry conflicts ... delete it"): only a real
        conflict truncates.  An old AppendEntries that arrives after newer ones carries
        entries the follower already has, so its longer (uncommitted) log stays intact,
        and the answer acknowledges no more than the follower holds."""
        c = Cluster("abc")
        c.elect("a")
        c.run(1)
        c.cut("a", "c")
        for i in range(3):
            c.propose("a", b"x=%d" % i)
        to_b = c.take(of_type(AppendEntries, receiver="b"))
        self.assertEqual([len(m.entries) for m in to_b], [1, 1, 1])
        for m in to_b:
            c.deliver_one(m)
        last = c["b"].log.last_index
        self.assertEqual(last, to_b[-1].entries[-1].index)
        self.assertLess(c["b"].commit_index, to_b[0].entries[0].index)
        c.deliver_one(to_b[0])  # stale and shorter
        self.assertEqual(c["b"].log.last_index, last)
        self.assertEqual(c.nodes["b"].storage.last_index, last)
        self.assertEqual(c.nodes["b"].storage.truncations, 0)
        answer = c.inflight[-1]
        self.assertTrue(answer.success)
        self.assertEqual(answer.match_index, to_b[0].entries[-1].index)
        c.heal()
        c.run(2)
        self.assertEqual(c.applied_data("b"), [b"x=0", b"x=1", b"x=2"])

    def test_duplicated_append_entries_changes_nothing(self):
        """Section 5.3 and section 5.5 (RPCs are idempotent): delivering the same
        AppendEntries twice leaves the follower's log, commit index and durable state
        as after the first."""
        c = Cluster("abc")
        c.elect("a")
        c.propose("a", b"x=1")
        c.propose("a", b"x=2")
        to_b = c.take(of_type(AppendEntries, receiver="b"))
        for m in to_b:
            c.deliver_one(m)
        before = (terms_of(c["b"]), c["b"].commit_index, list(c.nodes["b"].storage.entries))
        for m in to_b:
            c.deliver_one(m)
        after = (terms_of(c["b"]), c["b"].commit_index, list(c.nodes["b"].storage.entries))
        self.assertEqual(before, after)

    def test_stale_and_duplicated_responses_never_move_match_index_back(self):
        """Section 5.3 over an unreliable network: a success answer that arrives after a
        newer one must not move match_index backwards, and a stale rejection must not
        put next_index at or below match_index."""
        c = Cluster("abc")
        c.elect("a")
        c.run(1)
        c.propose("a", b"x=1")
        c.deliver(drop=lambda m: False)
        c.propose("a", b"x=2")
        c.propose("a", b"x=3")
        c.deliver()
        answers = [m for rd in c.nodes["b"].readies for m in rd.all_messages()
                   if isinstance(m, AppendEntriesResponse) and m.success]
        pr = c["a"].progress["b"]
        match, next_index = pr.match_index, pr.next_index
        self.assertEqual(match, c["a"].log.last_index)
        # Replay every answer b ever sent, oldest first, twice.
        for m in answers + answers:
            c.deliver_one(m)
        self.assertEqual((pr.match_index, pr.next_index), (match, next_index))
        # A rejection of an index at or below match_index is stale.
        c.deliver_one(AppendEntriesResponse(c["a"].term, "b", "a", success=False, rejected_index=match,
                                            conflict_index=1, conflict_term=0))
        c.deliver_one(AppendEntriesResponse(c["a"].term, "b", "a", success=False,
                                            rejected_index=match - 1, conflict_index=1))
        self.assertEqual((pr.match_index, pr.next_index), (match, next_index))
        self.assertGreaterEqual(pr.next_index, pr.match_index + 1)

    def test_responses_from_an_old_term_are_ignored(self):
        """Figure 2 ("if RPC request or response contains term T > currentTerm ...", and
        the converse): an answer from an earlier term says nothing about this term."""
        c = Cluster("abc")
        c.elect("a")
        c.run(1)
        pr = c["a"].progress["b"]
        match = pr.match_index
        c.deliver_one(AppendEntriesResponse(c["a"].term - 1, "b", "a", success=True, match_index=match + 5))
        c.deliver_one(AppendEntriesResponse(c["a"].term - 1, "b", "a", success=False, rejected_index=match + 1))
        self.assertEqual(pr.match_index, match)
        self.assertEqual(c["a"].role, LEADER)

    def test_response_with_a_newer_term_deposes_the_leader(self):
        """Figure 2: a server that sees a higher term in any message adopts it and becomes
        a follower, even from an answer."""
        c = Cluster("abc")
        c.elect("a")
        term = c["a"].term
        c.deliver_one(AppendEntriesResponse(term + 2, "b", "a", success=False))
        self.assertEqual((c["a"].role, c["a"].term, c["a"].leader_id), (FOLLOWER, term + 2, None))

    def test_stale_term_answer_does_not_confirm_a_read(self):
        """Dissertation section 6.4; regression for randomized seed 53: a node answering
        an AppendEntries of an older term only announces its newer term.  The old leader
        may since have restarted (its read_seq counts from 0 again) and won exactly that
        term; an echo of its old read_seq must not count as a heartbeat round for reads
        of the new term."""
        c = Cluster("abc", config=PLAIN)
        c.elect("a")
        for i in range(5):
            c.read("a", "old%d" % i)
            c.deliver()
        c.read("a", "old-last")
        late = c.take(of_type(AppendEntries, receiver="b"))[-1]
        self.assertGreaterEqual(late.read_seq, 5)
        c.inflight = []
        c.crash("a")
        c.restart("a")
        c.elect("a")
        self.assertEqual(c["a"].term, 2)
        c.run(2)
        # A read of the new term, whose heartbeat round never arrives anywhere.
        c.isolate("a")
        c.read("a", "new")
        c.inflight = []
        c.heal()
        # The term-1 message reaches b (term 2) now; b's answer goes back to a.
        c.deliver_one(late)
        answers = c.take(lambda m: True)
        self.assertEqual([(type(m), m.term, m.receiver) for m in answers],
                         [(AppendEntriesResponse, 2, "a")])
        c.deliver_one(answers[0])
        self.assertEqual(c["a"].role, LEADER)
        self.assertNotIn("new", c.nodes["a"].reads)
        self.assertEqual(c["a"].progress["b"].read_ack, 0)


class ReadIndexTests(SynchronousTestCase):
    def test_deposed_leader_cannot_serve_a_read(self):
        """Dissertation section 6.4 and paper section 8: a leader that a newer leader has
        replaced (without knowing it) cannot confirm its leadership with a majority, so
        a read it accepted is never served -- it fails once it learns the new term --
        and the new leader's writes are not missed."""
        c = Cluster("abc", config=PLAIN)
        c.elect("a")
        c.propose("a", b"x=1")
        c.run(2)
        c.partition(["a"], ["b", "c"])
        c.elect("b")
        c.propose("b", b"x=2")
        c.run(2)
        self.assertEqual(c["a"].role, LEADER)  # it does not know yet
        self.assertIsInstance(c.read("a", "stale?"), Accepted)
        c.run(5)
        self.assertEqual(c.nodes["a"].reads, [])
        c.heal()
        c.run(3)
        self.assertEqual(c.nodes["a"].reads, [])
        self.assertEqual(c.nodes["a"].failed_reads, ["stale?"])
        self.assertEqual(c["a"].role, FOLLOWER)

    def test_read_waits_for_the_noop_of_the_term(self):
        """Dissertation section 6.4 step 1: a new leader does not know the commit index
        until an entry of its own term commits, so a read arriving earlier waits for the
        no-op and uses the commit index after it."""
        c = Cluster("abc")
        c.campaign("a")
        held = []
        c.deliver(drop=lambda m: isinstance(m, AppendEntries) and not held.append(m))
        self.assertEqual(c["a"].role, LEADER)
        self.assertEqual(c["a"].log.entry(c["a"].log.last_index).kind, ENTRY_NOOP)
        noop_index = c["a"].log.last_index
        self.assertLess(c["a"].commit_index, noop_index)
        c.read("a", "r")
        self.assertEqual(c.nodes["a"].reads, [])
        # No heartbeat round was started for it yet.
        self.assertEqual(c.inflight, [])
        c.inflight = held
        c.deliver()
        c.run(1)
        self.assertEqual(c.nodes["a"].reads, ["r"])
        self.assertGreaterEqual(c["a"].last_applied, noop_index)

    def test_one_heartbeat_round_serves_many_reads(self):
        """Dissertation section 6.4: reads queued together share one round of heartbeats;
        each is released once a majority acknowledged it and the state machine reached
        its read index."""
        c = Cluster("abcde")
        c.elect("a")
        c.run(1)
        core = c["a"]
        for i in range(20):
            self.assertIsInstance(core.read_index(i), Accepted)
            c.checker.on_read_accepted(c.nodes["a"], i)
        c.process("a")
        heartbeats = [m for m in c.inflight if isinstance(m, AppendEntries)]
        self.assertEqual(sorted(m.receiver for m in heartbeats), ["b", "c", "d", "e"])
        self.assertEqual(len({m.read_seq for m in heartbeats}), 1)
        # Two acknowledgements plus the leader itself are a majority of five.
        c.deliver(drop=lambda m: m.receiver in ("d", "e") or m.sender in ("d", "e"))
        self.assertEqual(c.nodes["a"].reads, list(range(20)))

    def test_read_is_not_released_without_a_majority(self):
        """Dissertation section 6.4 step 3: one acknowledgement of five is not enough."""
        c = Cluster("abcde")
        c.elect("a")
        c.run(1)
        c.read("a", "r")
        c.deliver(drop=lambda m: m.receiver in ("c", "d", "e") or m.sender in ("c", "d", "e"))
        self.assertEqual(c.nodes["a"].reads, [])

    def test_read_waits_until_applied(self):
        """Dissertation section 6.4 step 4: the read is served only when the state
        machine has applied up to the read index, in the same Ready as those entries."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, max_apply_entries=1)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.run(1)
        for i in range(3):
            c.propose("a", b"x=%d" % i)
        c.deliver()
        core = c["a"]
        self.assertEqual(core.commit_index, core.log.last_index)
        c.read("a", "r")
        c.deliver()
        served = [rd for rd in c.nodes["a"].readies if rd.reads]
        self.assertEqual(len(served), 1)
        self.assertGreaterEqual(c.nodes["a"].applied[-1].index, core.commit_index)
        applied_by_then = [e.index for rd in c.nodes["a"].readies[:c.nodes["a"].readies.index(served[0]) + 1]
                           for e in rd.committed_entries]
        self.assertEqual(max(applied_by_then), core.commit_index)


class BatchingAndDurabilityTests(SynchronousTestCase):
    def test_batching_respects_max_append_bytes(self):
        """Section 5.3 allows many entries per AppendEntries; the runtime caps a batch to
        fit a datagram: every message stays within max_append_bytes (estimated as data
        plus per-entry overhead) unless it carries a single entry, and batches do form."""
        config = CoreConfig(election_ticks=10, heartbeat_ticks=1, max_append_bytes=300)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.isolate("b")
        for i in range(30):
            c.propose("a", b"v" * 40 + b"%d" % i)
        c.propose("a", b"w" * 1000)
        c.heal()
        c.run(20)
        sizes = [
            [len(e.data) + ENTRY_OVERHEAD_BYTES for e in m.entries]
            for rd in c.nodes["a"].readies for m in rd.all_messages()
            if isinstance(m, AppendEntries) and m.receiver == "b" and m.entries
        ]
        self.assertTrue(any(len(s) > 1 for s in sizes))
        for s in sizes:
            self.assertTrue(len(s) == 1 or sum(s) <= 300, s)
        self.assertEqual(terms_of(c["b"]), terms_of(c["a"]))

    def test_silent_follower_gets_one_message_per_heartbeat(self):
        """Section 5.3 ("the leader retries AppendEntries indefinitely"): retrying a
        follower that stopped answering (crashed, paused, cut off) must stay cheap.
        After a heartbeat interval without progress the leader probes it with one
        message per heartbeat instead of refilling the whole pipeline (max_inflight
        batches) every interval; when it answers again it catches up."""
        config = CoreConfig(election_ticks=20, heartbeat_ticks=2, max_append_bytes=64,
                            max_inflight=16)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.run(2)
        c.cut("a", "c")  # c hears nothing; its answers could still arrive
        sent_before = self.sent_to(c, "a", "c")
        for i in range(40):
            c.propose("a", b"x=%d" % i)
            c.tick("a")
            c.deliver()
        sent = self.sent_to(c, "a", "c") - sent_before
        # 40 ticks = 20 heartbeat intervals: the first window of the pipeline, then
        # about one probe and one plain heartbeat per heartbeat interval (the heartbeat
        # keeps the follower from timing out when the probe is too big to get through).
        self.assertLessEqual(sent, config.max_inflight + 2 * (40 // config.heartbeat_ticks) + 2)
        c.heal()
        c.run(5)
        self.assertEqual(terms_of(c["c"]), terms_of(c["a"]))

    def test_follower_losing_big_batches_is_probed_not_flooded(self):
        """Section 5.2 and 5.3 together: a follower that hears the small heartbeats but
        loses every batch (too big for the path) stays in PROBE -- one batch per
        heartbeat -- instead of having the pipeline refilled each time it answers a
        heartbeat."""
        config = CoreConfig(election_ticks=20, heartbeat_ticks=2, max_append_bytes=64,
                            max_inflight=16)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.run(2)
        batches = of_type(AppendEntries, receiver="c")
        lost = lambda m: batches(m) and m.entries  # noqa: E731
        before = len(c.nodes["a"].readies)
        for i in range(40):
            c.propose("a", b"x=%d" % i)
            c.tick("a")
            c.deliver(drop=lost)
        sent = sum(1 for rd in c.nodes["a"].readies[before:] for m in rd.all_messages() if lost(m))
        # The first window, then about one probe per heartbeat interval.
        self.assertLessEqual(sent, config.max_inflight + 40 // config.heartbeat_ticks + 2)
        self.assertEqual((c["c"].role, c["c"].term), (FOLLOWER, 1))
        c.run(3)
        self.assertEqual(terms_of(c["c"]), terms_of(c["a"]))

    def test_reordered_pipeline_is_not_resent(self):
        """Section 5.3 over UDP: pipelined AppendEntries may arrive out of order; a
        follower rejects one that arrives before its predecessor (its log is still too
        short), but that only means the predecessor is in flight.  The leader must not
        tear the pipeline down and refill it on each such rejection; it resends a
        rejected batch once the gap closes.  Catching up 40 entries, one per message,
        delivered in random order, sends each entry at most twice (the old behaviour
        sent 158 messages)."""
        config = CoreConfig(election_ticks=20, heartbeat_ticks=2, max_append_bytes=16,
                            max_inflight=64)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.run(2)
        c.cut("a", "c")
        before = self.sent_to(c, "a", "b", with_entries=True)
        rng = random.Random(5)
        for i in range(40):
            c.propose("a", b"x=%d" % i)
        for _ in range(12):
            batch = c.take(lambda m: True)
            rng.shuffle(batch)
            c.inflight = batch
            c.deliver(max_messages=10000)
            if c["a"].progress["b"].match_index == c["a"].log.last_index:
                break
        self.assertEqual(c["a"].progress["b"].match_index, c["a"].log.last_index)
        self.assertEqual(c["a"].progress["b"].state, "replicate")
        self.assertLessEqual(self.sent_to(c, "a", "b", with_entries=True) - before, 80)

    def test_lost_pipelined_message_is_recovered_at_the_next_heartbeat(self):
        """Section 5.3 ("the leader retries AppendEntries indefinitely"): when a
        pipelined message is lost, the follower rejects the ones after it as "too
        short" and the leader waits for the gap to close; since it never does, the stall
        probe at the next heartbeat resends from what the follower acknowledged."""
        config = CoreConfig(election_ticks=20, heartbeat_ticks=2, max_append_bytes=16)
        c = Cluster("abc", config=config)
        c.elect("a")
        c.run(2)
        c.cut("a", "c")
        for i in range(5):
            c.propose("a", b"x=%d" % i)
        first = min((m for m in c.inflight if isinstance(m, AppendEntries)),
                    key=lambda m: m.prev_log_index)
        c.deliver(drop=lambda m: m is first)
        self.assertLess(c["b"].log.last_index, c["a"].log.last_index)
        for _ in range(2 * config.heartbeat_ticks):
            c.tick("a")
            c.deliver()
        self.assertEqual(c["b"].log.last_index, c["a"].log.last_index)
        self.assertEqual(c.applied_data("a")[-5:], [b"x=%d" % i for i in range(5)])

    def sent_to(self, c, src, dst, with_entries=False):
        return sum(1 for rd in c.nodes[src].readies for m in rd.all_messages()
                   if isinstance(m, AppendEntries) and m.receiver == dst
                   and (m.entries or not with_entries))

    def test_follower_answer_travels_with_what_it_depends_on(self):
        """Figure 2 ("Persistent state ... updated on stable storage before responding to
        RPCs"): a follower's acknowledgement is in the same Ready as the entries it
        acknowledges, and a vote in the same Ready as the hard state recording it, so the
        runtime's persist-then-send order makes them durable first."""
        c = Cluster("abc")
        c.elect("a")
        c.propose("a", b"x=1")
        c.run(2)
        durable = {}
        vote = HardState()
        for rd in c.nodes["b"].readies:
            # What may leave before this batch is durable promises only what was.
            for m in rd.messages_before_persist:
                if isinstance(m, AppendEntriesResponse) and m.success:
                    self.assertTrue(all(i in durable for i in range(1, m.match_index + 1)))
                if isinstance(m, RequestVoteResponse) and m.vote_granted and not m.pre_vote:
                    self.assertEqual(vote, HardState(m.term, m.receiver))
            if rd.hard_state is not None:
                vote = rd.hard_state
            for e in rd.entries:
                durable[e.index] = e.term
            for m in rd.messages + rd.messages_after_apply:
                if isinstance(m, AppendEntriesResponse) and m.success:
                    self.assertTrue(all(i in durable for i in range(1, m.match_index + 1)))
                if isinstance(m, RequestVoteResponse) and m.vote_granted and not m.pre_vote:
                    self.assertEqual(vote, HardState(m.term, m.receiver))

    def test_leader_counts_its_own_entry_only_after_advance(self):
        """Section 5.3 / dissertation section 10.2.1: the leader may send entries before
        they are durable locally, but counts its own copy toward a majority only after
        the runtime persisted them and called advance()."""
        c = Cluster("abc")
        c.elect("a")
        c.run(1)
        c.cut("a", "c")
        core = c["a"]
        out = core.propose(b"x=1")
        rd = core.ready()
        self.assertEqual([e.index for e in rd.entries], [out.index])
        c.inflight.extend(rd.all_messages())
        c.deliver()  # b persists and acknowledges; a steps the answer
        self.assertEqual(core.progress["b"].match_index, out.index)
        self.assertLess(core.commit_index, out.index)
        with self.assertRaises(CoreError):
            core.ready()
        c.nodes["a"].storage.save(rd.hard_state, rd.entries)
        core.advance(rd)
        self.assertEqual(core.commit_index, out.index)

    def test_crash_before_persist_loses_only_unacknowledged_state(self):
        """Figure 2: a server that crashes before persisting a Ready restarts from what
        was durable; since nothing of that Ready was sent, nobody relied on it."""
        c = Cluster("abc")
        c.elect("a")
        c.run(1)
        core = c["b"]
        c.deliver_one(AppendEntries(c["a"].term, "a", "b", core.log.last_index,
                                    core.log.last_term, (Entry(core.log.last_index + 1,
                                                               c["a"].term, b"lost"),), 0))
        # deliver_one executed the Ready; now do the same without executing it.
        last = c.nodes["b"].storage.last_index
        c.crash("b")
        c.restart("b")
        self.assertEqual(c["b"].log.last_index, last)

    def test_ready_and_advance_contract(self):
        """The core's contract (module docstring): ready() twice without advance() is a
        caller bug, and so is advance() without ready()."""
        core = RaftCore("a", ["a"], SCENARIO_CONFIG, random.Random(0))
        core.advance(core.ready())
        with self.assertRaises(CoreError):
            core.advance(Ready())
        core2 = RaftCore("a", ["a", "b"], SCENARIO_CONFIG, random.Random(0))
        core2.ready()
        with self.assertRaises(CoreError):
            core2.ready()


class SnapshotTests(SynchronousTestCase):
    def compacted(self):
        c = Cluster("abc")
        c.elect("a")
        c.isolate("c")
        for i in range(10):
            c.propose("a", b"x=%d" % i)
        c.run(2)
        core = c["a"]
        meta = core.compact(core.last_applied)
        c.nodes["a"].storage.save_snapshot(meta, b"image")
        return c, meta

    def offers(self, c, since=0):
        """The InstallSnapshot intents the leader's core emitted (they never enter the
        network as such: the transfer sends chunks)."""
        return [m for rd in c.nodes["a"].readies[since:] for m in rd.all_messages()
                if isinstance(m, InstallSnapshot)]

    def test_lagging_follower_gets_a_snapshot(self):
        """Section 7: when the entries a follower needs were compacted, the leader sends
        InstallSnapshot; the follower adopts it and then receives the rest of the log."""
        c, meta = self.compacted()
        c.heal()
        c.run(3)
        self.assertEqual(c["c"].log.snapshot_index, meta.index)
        self.assertEqual(c["c"].commit_index, c["a"].commit_index)
        self.assertEqual(c.nodes["c"].storage.snapshot, meta)
        self.assertEqual(c.nodes["c"].storage.snapshot_data, b"image")

    def test_snapshot_intent_carries_no_image(self):
        """The core only says which snapshot a follower needs (etcd's MsgSnap without
        the data): the image is the runtime's, and it travels as chunks."""
        c, meta = self.compacted()
        c.heal()
        c.tick("a")
        offers = self.offers(c)
        self.assertEqual([(m.receiver, m.last_included_index) for m in offers],
                         [("c", meta.index)])
        self.assertIsNone(offers[0].data)
        self.assertEqual(c["a"].progress["c"].state, "snapshot")
        self.assertTrue(any(isinstance(m, SnapshotChunk) for m in c.inflight))

    def test_lost_snapshot_is_offered_again(self):
        """Section 7 and Figure 13 over UDP; regression for randomized seeds 17, 42, 53,
        ...: if the snapshot (or its answer) is lost, the leader's core offers it again
        after an election timeout instead of waiting forever."""
        c, meta = self.compacted()
        c.heal()
        c.cut("a", "c")
        c.tick("a")
        mark = len(c.nodes["a"].readies)
        self.assertEqual(len(self.offers(c)), 1)
        for _ in range(SCENARIO_CONFIG.election_ticks):
            c.tick("a")
        again = self.offers(c, mark)
        self.assertEqual([m.last_included_index for m in again], [meta.index])
        c.heal()
        c.run(3 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["c"].commit_index, c["a"].commit_index)

    def test_a_progressing_transfer_is_not_offered_again(self):
        """Section 7: a snapshot that takes longer than an election timeout to send is
        not re-offered while the runtime reports it moving (chunks acknowledged); once
        the reports stop, the election-timeout re-offer applies again."""
        c, meta = self.compacted()
        c.heal()
        c.cut("a", "c")
        c.tick("a")
        mark = len(c.nodes["a"].readies)
        for _ in range(3 * SCENARIO_CONFIG.election_ticks):
            c["a"].report_snapshot("c", finished=False)
            c.tick("a")
        self.assertEqual(self.offers(c, mark), [])
        self.assertEqual(c["a"].progress["c"].state, "snapshot")
        for _ in range(SCENARIO_CONFIG.election_ticks):
            c.tick("a")
        self.assertEqual(len(self.offers(c, mark)), 1)

    def test_reported_failure_or_delivery_moves_to_probing(self):
        """etcd's ReportSnapshot: when the runtime reports the transfer failed, or
        delivered, the leader leaves the snapshot state at once and probes; after a
        delivery from just past the snapshot, so the follower's answer settles it even
        if its InstallSnapshotResponse was lost."""
        for ok, next_index in ((False, None), (True, "past")):
            c, meta = self.compacted()
            c.heal()
            c.cut("a", "c")
            c.tick("a")
            pr = c["a"].progress["c"]
            self.assertEqual(pr.state, "snapshot")
            c["a"].report_snapshot("c", finished=True, ok=ok)
            c.process("a")
            if ok:
                self.assertEqual(pr.next_index, meta.index + 1)
                self.assertEqual(pr.state, "probe")
            else:
                # Probing from what c acknowledged finds the entries compacted again.
                self.assertEqual(pr.state, "snapshot")
            self.assertEqual(pr.inflight, type(pr.inflight)())

    def test_follower_caught_up_by_a_snapshot_leaves_probing(self):
        """Sections 5.3 and 7 (regression ProbePingPong): a follower the snapshot brought
        up to the leader's last index, with nothing after it, moves to replication at
        the answer to the first probe, instead of being probed every heartbeat forever."""
        c, meta = self.compacted()
        self.assertEqual(c["a"].log.last_index, meta.index)
        c.heal()
        c.run(3 * SCENARIO_CONFIG.election_ticks)
        self.assertEqual(c["c"].commit_index, meta.index)
        self.assertEqual(c["a"].progress["c"].state, "replicate")
        mark = len(c.nodes["a"].readies)
        c.run(10)
        probes = [m for rd in c.nodes["a"].readies[mark:] for m in rd.all_messages()
                  if isinstance(m, AppendEntries) and m.receiver == "c" and m.entries == ()
                  and m.prev_log_index != c["a"].progress["c"].match_index]
        self.assertEqual(probes, [])

    def test_core_takes_no_chunks(self):
        """The core takes whole snapshots only: a chunk (or a chunk acknowledgement)
        stepped into it is refused, so it can never answer for a partial image."""
        c, meta = self.compacted()
        core = c["c"]
        chunk = SnapshotChunk(core.term, "a", "c", meta.index, meta.term, 0, b"im",
                              done=False)
        self.assertRaises(CoreError, core.step, chunk)
        self.assertRaises(CoreError, core.step,
                          SnapshotChunkAck(core.term, "a", "c", meta.index, 2))
        self.assertEqual(core.snapshot_index, 0)

    def test_snapshot_without_its_image_is_a_caller_bug(self):
        """A snapshot the follower does not hold yet must come with its image; one
        without is a runtime bug, refused, not installed as nothing."""
        c, meta = self.compacted()
        core = c["c"]
        self.assertRaises(CoreError, core.step,
                          InstallSnapshot(c["a"].term, "a", "c", meta.index, meta.term))


class FoundByChaosTests(SynchronousTestCase):
    """Bugs the chaos runs found, kept as regression tests of the core."""

    def test_probe_state_followers_still_get_heartbeats(self):
        """Paper section 5.2: a leader sends heartbeats to maintain its authority.  A
        follower whose progress is PROBE gets the probe *instead of* a heartbeat
        (``RaftCore._heartbeat``); when the probe carries an entry too big for one
        datagram and the link loses it (a fragmented message is lost whole), the
        follower hears nothing, times out, and the cluster elects leader after leader.
        Found with ``python -m txraft.tools.chaos --workload kv --value-bytes 30000 --faults
        lossy``: 58 elections in 15 s at 5% loss and no write committed.  Here: three
        cores, every message fitting one datagram delivered, one 40 kB proposal."""
        from txraft.runtime.codec import encode_message
        from txraft.runtime.executor import Executor

        ids = ["a", "b", "c"]
        cores = {i: RaftCore(i, ids, CoreConfig(election_ticks=15, heartbeat_ticks=5),
                             random.Random(i)) for i in ids}
        network = []

        def send(messages):
            network.extend(m for m in messages if len(encode_message(m)) <= 1300)

        executors = [Executor(core, send=send, save=lambda hard_state, entries: None,
                              install_snapshot=lambda image: None, apply=lambda rd: None)
                     for core in cores.values()]

        def pump():
            while True:
                for executor in executors:
                    executor.drain()
                if not network:
                    return
                while network:
                    m = network.pop(0)
                    cores[m.receiver].step(m)

        cores["a"].campaign()
        pump()
        cores["a"].propose(b"y" * 40000)
        pump()
        for _ in range(20 * 15):  # twenty election timeouts
            for core in cores.values():
                core.tick()
            pump()
        self.assertEqual({i: (c.role, c.term) for i, c in cores.items()},
                         {"a": ("leader", 1), "b": ("follower", 1), "c": ("follower", 1)})


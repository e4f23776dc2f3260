"""Raft's safety properties, checked by the simulator after every event.

The five properties of the paper (Figure 3) plus linearizable reads:

- **Election Safety**: at most one leader per term, over the whole run.
- **Leader Append-Only**: a leader never overwrites or deletes entries in its log.
- **Log Matching**: checked on what nodes make durable: an ``(index, term)`` pair always
  names the same data and follows the same term at ``index - 1`` (by induction this is
  the paper's "logs identical up to that entry").
- **Leader Completeness**: an entry committed in term ``U`` is in the log of every leader
  of a term above ``U``.
- **State Machine Safety**: no two nodes apply different entries at one index (and each
  node applies indexes in order, without gaps).
- **Reads**: no read returns a value older than a write, or a read, that completed before
  the read began; a leader that was deposed before a read arrived never serves it.

And some of the paper's durable-state promises that make the above hold: a node's term
never goes down and it never votes for two candidates in one term (Figure 2), a
leader's ``match_index`` never goes backwards and ``next_index`` stays above it.

All checks are incremental (they look at what changed since the last event), so running
them after every event keeps the simulation fast.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from txraft.core import LEADER
from txraft.core.messages import AppendEntriesResponse, RequestVote, RequestVoteResponse


class InvariantViolation(AssertionError):
    """A safety property was broken; the message names the seed and how to replay it."""


class LivenessViolation(AssertionError):
    """The cluster did not recover within the bound after every fault was healed."""


class SafetyChecker:
    """Watches one simulation; every ``fail`` raises ``InvariantViolation``."""

    def __init__(self, sim: Any, check_sends: bool = True):
        self._sim = sim
        #: Check each message against what its sender has made durable (``on_send``).
        #: Off only in the mutation tests, to show that the properties of the paper
        #: alone catch a wrong order once crashes lose what was not fsynced.
        self.check_sends = check_sends
        self.leader_of_term: Dict[int, str] = {}
        self.max_leader_term = 0
        # node id -> (term, last_index, entry object at last_index) while it leads.
        self._leader_log: Dict[str, Tuple[int, int, Any]] = {}
        # (index, term) -> (data, kind, prev_term) of every durable entry, on any node.
        self._durable: Dict[Tuple[int, int], Tuple[bytes, int, Optional[int]]] = {}
        # index -> Entry known to be committed (by a commit index or an application).
        self.committed: Dict[int, Any] = {}
        # term -> highest index a node in that term knew to be committed.
        self._commit_at_term: Dict[int, int] = {}
        self._commit_seen: Dict[str, int] = {}
        self._applied: Dict[str, int] = {}
        self._durable_term: Dict[str, int] = {}
        self._votes: Dict[Tuple[str, int], str] = {}
        self._match_seen: Dict[Tuple[str, int, str], Tuple[Any, int]] = {}
        # read ctx -> (node, term, highest leader term when the read was accepted)
        self._reads: Dict[Any, Tuple[str, int, int]] = {}
        self._dirty: List[Any] = []

    def fail(self, what: str) -> None:
        self._sim.violation(what)

    # --------------------------------------------------------- node lifecycle

    def on_start(self, node: Any) -> None:
        """A node (re)started from its storage: reset per-incarnation expectations."""
        core = node.core
        self.touch(node)
        self._commit_seen[node.id] = core.commit_index
        self._applied[node.id] = core.last_applied
        self._leader_log.pop(node.id, None)
        self._check_commit_prefix(node, core.commit_index)

    def on_wipe(self, node: Any) -> None:
        """``node``'s storage was replaced by an empty one (a lost disk): its own
        promises (term, votes) went with it and start over; the cluster's properties
        (one leader per term, nothing committed lost, ...) must hold all the same."""
        nid = node.id
        self._durable_term.pop(nid, None)
        for key in [k for k in self._votes if k[0] == nid]:
            del self._votes[key]

    # ------------------------------------------------------------- durability

    def on_persist(self, node: Any, hard_state: Any, entries: Any) -> None:
        storage = node.storage
        nid = node.id
        if hard_state is not None:
            old_term = self._durable_term.get(nid, 0)
            if hard_state.term < old_term:
                self.fail(
                    "%s persisted term %d after term %d (terms never go back, Figure 2)"
                    % (nid, hard_state.term, old_term)
                )
            self._durable_term[nid] = hard_state.term
            if hard_state.voted_for is not None:
                key = (nid, hard_state.term)
                old = self._votes.setdefault(key, hard_state.voted_for)
                if old != hard_state.voted_for:
                    self.fail(
                        "%s voted for %s and then %s in term %d (one vote per term, section 5.2)"
                        % (nid, old, hard_state.voted_for, hard_state.term)
                    )
        durable = self._durable
        term_at = storage.term_at
        for e in entries:
            rec = (e.data, e.kind, term_at(e.index - 1))
            old = durable.setdefault((e.index, e.term), rec)
            if old is not rec and old != rec:
                self.fail(
                    "Log Matching: %s made (index %d, term %d) durable as %r after term %s, "
                    "another node has %r after term %s (section 5.3)"
                    % (nid, e.index, e.term, rec[0], rec[2], old[0], old[2])
                )

    def on_send(self, node: Any, m: Any) -> None:
        """Nothing leaves a node that depends on state it has not made durable: its
        term and vote (Figure 2, "before responding to RPCs") and the entries it
        acknowledges.  Called for every message the core emits, as it leaves."""
        if not self.check_sends:
            return
        hard_state = node.storage.hard_state
        if m.term > hard_state.term and not getattr(m, "pre_vote", False):
            self.fail(
                "%s sent %s of term %d with only term %d durable"
                % (node.id, type(m).__name__, m.term, hard_state.term)
            )
        if type(m) is AppendEntriesResponse:
            if m.success and m.match_index > node.storage.last_index:
                self.fail(
                    "%s acknowledged entries up to %d with only %d durable"
                    % (node.id, m.match_index, node.storage.last_index)
                )
        elif type(m) is RequestVoteResponse:
            if m.vote_granted and not m.pre_vote and hard_state.voted_for != m.receiver:
                self.fail(
                    "%s granted its term-%d vote to %s before persisting it (durable vote: %s)"
                    % (node.id, m.term, m.receiver, hard_state.voted_for)
                )
        elif type(m) is RequestVote:
            if not m.pre_vote and hard_state.voted_for != node.id:
                self.fail(
                    "%s asked for votes in term %d before persisting its own vote"
                    % (node.id, m.term)
                )

    # ---------------------------------------------------------- committing

    def _record_committed(self, index: int, entry: Any, where: str) -> None:
        old = self.committed.get(index)
        if old is None:
            self.committed[index] = entry
        elif old.term != entry.term or old.data != entry.data or old.kind != entry.kind:
            self.fail(
                "State Machine Safety: %s has entry (index %d, term %d, %r) committed, "
                "but (term %d, %r) was committed there before (section 5.4.3)"
                % (where, index, entry.term, entry.data, old.term, old.data)
            )

    def on_apply(self, node: Any, entry: Any) -> None:
        expected = self._applied[node.id] + 1
        if entry.index != expected:
            self.fail(
                "%s applied index %d, expected %d next (apply in log order, no gaps)"
                % (node.id, entry.index, expected)
            )
        self._applied[node.id] = entry.index
        self._record_committed(entry.index, entry, "%s applied" % node.id)

    def on_restore(self, node: Any, index: int) -> None:
        self._applied[node.id] = index

    def _check_commit_prefix(self, node: Any, upto: int) -> None:
        log = node.core.log
        last = log.last_index
        if upto > last:
            self.fail("%s has commit index %d beyond its last index %d" % (node.id, upto, last))

    def _observe_commit(self, node: Any, core: Any, seen: int, commit: int) -> None:
        log = core.log
        if commit > log.last_index:
            self.fail(
                "%s has commit index %d beyond its last index %d"
                % (node.id, commit, log.last_index)
            )
        where = "%s (commit index %d)" % (node.id, commit)
        for i in range(max(seen, log.snapshot_index) + 1, commit + 1):
            self._record_committed(i, log.entry(i), where)
        term = core.term
        if commit > self._commit_at_term.get(term, 0):
            self._commit_at_term[term] = commit
            # Leader Completeness for leaders already elected in a later term.
            for other in self._sim.nodes.values():
                oc = other.core
                if oc is not None and oc.role == LEADER and oc.term > term:
                    self._leader_has(other, commit, term)

    def _leader_has(self, node: Any, index: int, commit_term: int) -> None:
        log = node.core.log
        if index <= log.snapshot_index:
            return
        known = self.committed.get(index)
        if known is None:
            return  # learnt from a snapshot; lower indexes were checked
        have = log.term_at(index)
        want = known.term
        if have != want:
            self.fail(
                "Leader Completeness: %s leads term %d without entry (index %d, term %d) "
                "committed in term %d; it has term %s there (section 5.4)"
                % (node.id, node.core.term, index, want, commit_term, have)
            )

    # ------------------------------------------------------------ per event

    def touch(self, node: Any) -> None:
        """``node``'s core may have changed (it took an input): check it after the event.
        A core changes only through its inputs, so untouched nodes need no new look."""
        if not node.dirty:
            node.dirty = True
            self._dirty.append(node)

    def after_event(self) -> None:
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for node in dirty:
            node.dirty = False
            core = node.core
            if core is None:
                continue
            nid = node.id
            if core.role == LEADER:
                term = core.term
                holder = self.leader_of_term.get(term)
                if holder is None:
                    self._new_leader(node, core)
                elif holder != nid:
                    self.fail(
                        "Election Safety: %s and %s are both leaders of term %d (section 5.2)"
                        % (holder, nid, term)
                    )
                self._check_leader(node, core)
            commit = core.commit_index
            seen = self._commit_seen[nid]
            if commit != seen:
                if commit < seen:
                    self.fail(
                        "%s commit index went back from %d to %d" % (nid, seen, commit)
                    )
                self._commit_seen[nid] = commit
                self._observe_commit(node, core, seen, commit)

    def _new_leader(self, node: Any, core: Any) -> None:
        term = core.term
        self.leader_of_term[term] = node.id
        if term > self.max_leader_term:
            self.max_leader_term = term
        best = 0
        best_term = 0
        for t, idx in self._commit_at_term.items():
            if t < term and idx > best:
                best, best_term = idx, t
        if best:
            self._leader_has(node, best, best_term)
        self._sim.on_new_leader(node, term)

    def _check_leader(self, node: Any, core: Any) -> None:
        nid = node.id
        term = core.term
        log = core.log
        last = log.last_index
        rec = self._leader_log.get(nid)
        if rec is not None and rec[0] == term:
            _, old_last, old_entry = rec
            if last < old_last:
                self.fail(
                    "Leader Append-Only: leader %s of term %d shrank its log from %d to %d"
                    % (nid, term, old_last, last)
                )
            if old_entry is not None and old_last > log.snapshot_index:
                if log.entry(old_last) is not old_entry:
                    self.fail(
                        "Leader Append-Only: leader %s of term %d overwrote entry %d"
                        % (nid, term, old_last)
                    )
            if last != old_last:
                # A leader alone in its configuration may commit, apply and compact its
                # whole log within one event.
                entry = log.entry(last) if last > log.snapshot_index else None
                self._leader_log[nid] = (term, last, entry)
        else:
            entry = log.entry(last) if last > log.snapshot_index else None
            self._leader_log[nid] = (term, last, entry)
        seen = self._match_seen
        for peer, pr in core.progress.items():
            key = (nid, term, peer)
            # Per tracked follower: a member removed and added back within one term is
            # a new follower to its leader (a new Progress, from match_index 0).
            tracked, old = seen.get(key, (pr, 0))
            if tracked is not pr:
                old = 0
            match = pr.match_index
            if match < old:
                self.fail(
                    "leader %s of term %d moved match_index of %s back from %d to %d"
                    % (nid, term, peer, old, match)
                )
            if match != old or tracked is not pr:
                seen[key] = (pr, match)
            if pr.next_index < match + 1:
                self.fail(
                    "leader %s of term %d has next_index %d <= match_index %d for %s"
                    % (nid, term, pr.next_index, match, peer)
                )

    # ---------------------------------------------------------------- reads

    def on_read_accepted(self, node: Any, ctx: Any) -> None:
        self._reads[ctx] = (node.id, node.core.term, self.max_leader_term)

    def on_read_released(self, node: Any, ctx: Any) -> None:
        rec = self._reads.pop(ctx, None)
        if rec is None:
            self.fail("%s released read %r it never accepted" % (node.id, ctx))
            return
        nid, term, max_term = rec
        if nid != node.id:
            self.fail("%s released read %r accepted by %s" % (node.id, ctx, nid))
        if max_term > term:
            self.fail(
                "deposed leader %s of term %d served read %r although a leader of term %d "
                "had been elected before the read arrived (dissertation section 6.4)"
                % (nid, term, ctx, max_term)
            )

    def on_read_dropped(self, ctx: Any) -> None:
        self._reads.pop(ctx, None)

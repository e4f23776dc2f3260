"""The Raft algorithm as a pure, deterministic state machine (sans-I/O).

Inputs: ``step(message)`` (a peer's message, or the runtime's ``SnapshotStatus`` through
``report_snapshot``), ``tick()``, ``propose(data)``, ``read_index(ctx)`` and
``campaign()``.  Output: a ``Ready`` batch from ``ready()``, which says what must be made
durable and, for every message, when it may leave: before the batch is durable, only
after, or once the batch is applied.  One executor (``txraft.runtime.executor``) carries
every batch out in that order, in the node and in the simulator alike, and acknowledges
it with ``advance(ready)``.

Nothing here touches a clock, a socket, a file or the global random module: time is
``tick()``, randomness is the injected ``rng``.  The same object runs in the deterministic
simulator (``txraft.testing``) and in the Twisted node (``txraft.runtime.node``).
Drivers and metrics read it through ``status()`` and the read-only attributes ``id``,
``role``, ``term``, ``leader_id``, ``commit_index``, ``last_applied`` and
``snapshot_index``; the log and the followers' progress are the core's own.

Section numbers refer to the Raft paper (Ongaro & Ousterhout 2014) and, where marked,
Ongaro's dissertation (2014).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import attrs

from txraft.core.config import (
    PROMOTE,
    ConfigChangeError,
    Configuration,
    Member,
)
from txraft.core.log import RaftLog
from txraft.core.messages import (
    ENTRY_CONFIG,
    ENTRY_NOOP,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotMeta,
    SnapshotStatus,
    TimeoutNow,
)
from txraft.core.progress import PROBE, REPLICATE, SNAPSHOT, Progress

#: Heartbeats at a follower's match_index it must answer "log too short" in a row before
#: its leader reports that it lost its log (one or two can be reordered answers).
LOST_LOG_REJECTIONS = 3

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"


class CoreError(Exception):
    """The core was used against its contract (a bug in the caller)."""


class SafetyViolation(CoreError):
    """A message would make this node break a Raft safety property; never swallowed."""


@attrs.frozen
class CoreConfig:
    """Tunables, in ticks and bytes; the runtime converts seconds to ticks."""

    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_append_bytes: int = 64 * 1024
    max_append_entries: int = 4096
    max_inflight: int = 64
    max_apply_entries: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    #: A learner is caught up when it is at most this many entries behind the leader.
    promote_max_lag: int = 64
    #: The leader promotes a learner that stayed caught up this many ticks in a row
    #: (0: never automatically; an operator promotes explicitly).
    auto_promote_ticks: int = 20

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                "need 1 <= heartbeat_ticks < election_ticks, got %d and %d"
                % (self.heartbeat_ticks, self.election_ticks)
            )
        if self.max_append_bytes < 1 or self.max_inflight < 1 or self.max_apply_entries < 1:
            raise ValueError("byte, inflight and apply limits must be positive")
        if self.promote_max_lag < 0 or self.auto_promote_ticks < 0:
            raise ValueError("promote_max_lag and auto_promote_ticks must not be negative")


@attrs.frozen
class Accepted:
    """A proposal or read accepted by the leader; ``index``/``term`` name a proposal's entry."""

    index: int = 0
    term: int = 0


@attrs.frozen
class NotLeaderOutcome:
    """Refused: this node is not the leader; ``leader_id`` is the one it knows, or None.

    ``transferring_to``: this node still leads, but is handing the leadership to that
    voter and takes no proposals meanwhile (dissertation 3.10); retry shortly."""

    leader_id: Optional[str]
    transferring_to: Optional[str] = None


@attrs.frozen
class ChangeRefused:
    """A configuration change the leader will not propose now; ``code`` is stable:

    ``leader_not_ready`` (the entry of this leader's term has not committed yet; retry),
    ``change_in_progress`` (an earlier change has not committed), ``config_changed`` (the
    ``expect_config_index`` precondition failed), ``not_caught_up`` (a learner too far
    behind to promote), or a ``ConfigChangeError`` code (``unknown_member``, ...).
    """

    code: str
    message: str


@attrs.frozen
class SoftState:
    """Volatile state a runtime reports: who leads, in which term, in which role."""

    role: str
    term: int
    leader_id: Optional[str]


@attrs.frozen
class SnapshotImage:
    """A leader's snapshot for this node to install: where it ends, and the image
    (opaque to the core: whatever the runtime's snapshot transfer delivered)."""

    meta: SnapshotMeta
    data: Any = attrs.field(eq=False, repr=False)


@attrs.frozen
class Ready:
    """One batch of work, in the order it must be carried out (``txraft.runtime.executor``):

    1. send ``messages_before_persist``: they depend on nothing this batch makes durable
       (a leader's AppendEntries, which may leave before the leader's own copy is on disk,
       dissertation section 10.2.1; heartbeats; answers that acknowledge only what was
       durable before this batch; PreVote traffic, which promises nothing);
    2. persist: install ``snapshot`` (durably, the state machine restored to it), then
       make ``hard_state`` and ``entries`` durable with one fsync (``entries`` replace any
       stored entries at the same or a higher index);
    3. send ``messages``: they promise what step 2 made durable (a vote, a new term, an
       acknowledgement of new entries, an installed snapshot);
    4. apply ``committed_entries`` in order, serve ``reads`` (ReadIndex contexts, safe once
       those entries are applied), fail ``failed_reads`` (they lost their leader), take
       note of ``soft_state``;
    5. ``RaftCore.advance(ready)``;
    6. hand out the answers to proposals and reads, then send ``messages_after_apply``:
       commit notices, which nobody waits for, so they leave after the answers to the
       writes they commit.
    """

    hard_state: Optional[HardState] = None
    entries: Tuple[Entry, ...] = ()
    snapshot: Optional[SnapshotImage] = None
    messages_before_persist: Tuple[Message, ...] = ()
    messages: Tuple[Message, ...] = ()
    committed_entries: Tuple[Entry, ...] = ()
    reads: Tuple[Hashable, ...] = ()
    failed_reads: Tuple[Hashable, ...] = ()
    soft_state: Optional[SoftState] = None
    messages_after_apply: Tuple[Message, ...] = ()

    def must_persist(self) -> bool:
        """Whether step 2 has anything to do."""
        return self.snapshot is not None or self.hard_state is not None or bool(self.entries)

    def all_messages(self) -> Tuple[Message, ...]:
        """Every message of the batch, in the order they leave."""
        return self.messages_before_persist + self.messages + self.messages_after_apply

    def is_empty(self) -> bool:
        return not (
            self.must_persist()
            or self.messages_before_persist
            or self.messages
            or self.committed_entries
            or self.reads
            or self.failed_reads
            or self.soft_state
            or self.messages_after_apply
        )


@attrs.frozen
class PeerStatus:
    """A leader's view of one follower."""

    match_index: int
    next_index: int
    state: str
    recent_active: bool
    inflight: int
    voter: bool = True
    #: The follower answers that its log ends before entries it acknowledged: it lost
    #: its data (a wiped disk).  The leader reports it; it cannot repair a voter.
    lost_log: bool = False


@attrs.frozen
class CoreStatus:
    """A read-only view of a core, for drivers, operators and metrics."""

    id: str
    role: str
    term: int
    voted_for: Optional[str]
    leader_id: Optional[str]
    commit_index: int
    last_applied: int
    last_log_index: int
    last_log_term: int
    snapshot_index: int
    voters: Tuple[str, ...]
    #: On a leader, each follower's progress, sorted by id; empty otherwise.
    progress: Tuple[Tuple[str, PeerStatus], ...] = ()
    learners: Tuple[str, ...] = ()
    #: The latest configuration in the log, and the index of the entry that holds it
    #: (0: the one the cluster was founded with).
    config_index: int = 0
    configuration: Optional[Configuration] = None
    #: The highest commit index the leader of this term has told this node (on the
    #: leader, its own): a node that applied less is behind.
    leader_commit: int = 0
    #: On a leader handing over its leadership: the voter it hands it to.
    transferee: Optional[str] = None

    def peer(self, peer_id: str) -> Optional[PeerStatus]:
        """The leader's view of ``peer_id``, or None (not a leader, not a peer)."""
        for pid, status in self.progress:
            if pid == peer_id:
                return status
        return None

    def to_json(self) -> Dict[str, Any]:
        """The core's part of ``/raft/status``."""
        out: Dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "term": self.term,
            "voted_for": self.voted_for,
            "leader_id": self.leader_id,
            "commit_index": self.commit_index,
            "last_applied": self.last_applied,
            "last_log_index": self.last_log_index,
            "last_log_term": self.last_log_term,
            "snapshot_index": self.snapshot_index,
            "voters": list(self.voters),
            "learners": list(self.learners),
            "config_index": self.config_index,
            "leader_commit": self.leader_commit,
        }
        if self.transferee is not None:
            out["transferee"] = self.transferee
        if self.role == LEADER:
            out["progress"] = {pid: attrs.asdict(pr) for pid, pr in self.progress}
        return out


class RaftCore:
    """One Raft server's algorithm state.  See the module docstring for the contract."""

    def __init__(
        self,
        node_id: str,
        voters: Union[Sequence[str], Configuration],
        config: CoreConfig,
        rng: Any,
        hard_state: HardState = HardState(),
        snapshot: SnapshotMeta = SnapshotMeta(),
        entries: Sequence[Entry] = (),
        applied_index: int = 0,
    ):
        """``voters`` is the configuration the cluster was founded with (index 0), or
        just the founding voters' ids.  The configuration in force is the latest one in
        ``snapshot`` and ``entries``, or that one when they hold none; this node need not
        be in it (a server joining the cluster is not, until its log says so)."""
        if isinstance(voters, Configuration):
            founding = voters
        else:
            if node_id not in voters:
                raise ValueError("node %r is not among the voters %r" % (node_id, list(voters)))
            if len(set(voters)) != len(voters):
                raise ValueError("duplicate voter ids in %r" % (list(voters),))
            founding = Configuration.of_voters(voters)
        self.id = node_id
        self.config = config
        self._rng = rng

        self.term = hard_state.term
        self.voted_for = hard_state.voted_for
        self.log = RaftLog(snapshot, entries)
        # Every configuration the log still holds, oldest first, with the index of the
        # entry holding it; the first is the snapshot's (or the founding one, at 0).
        # The last is in force from the moment it is appended (dissertation 4.1).
        base = snapshot.configuration if snapshot.configuration is not None else founding
        self._configs: List[Tuple[int, Configuration]] = [
            (snapshot.config_index if snapshot.configuration is not None else 0, base)
        ]
        for entry in self.log.entries:
            if entry.kind == ENTRY_CONFIG:
                self._configs.append((entry.index, self._decode_config(entry)))
        self._use_latest_config()
        # Everything up to what the state machine already applied is committed.
        self.commit_index = max(snapshot.index, applied_index)
        if self.commit_index > self.log.last_index:
            raise ValueError(
                "applied index %d is beyond the durable log (last index %d)"
                % (self.commit_index, self.log.last_index)
            )
        self.last_applied = self.commit_index  # last index handed out to apply
        self.role = FOLLOWER
        self.leader_id: Optional[str] = None
        self.leader_commit = 0

        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_ticks = 0
        self._reset_randomized_timeout()
        self._votes: Dict[str, bool] = {}
        self.progress: Dict[str, Progress] = {}
        # Leadership transfer (dissertation 3.10): the voter this leader hands over to,
        # and for how many ticks it has tried.
        self.transferee: Optional[str] = None
        self._transfer_elapsed = 0

        # Durability bookkeeping: what is on disk, as far as this core knows.
        self._persisted_hard_state = HardState(self.term, self.voted_for)
        # The highest index durable and still in the in-memory log (a follower's
        # truncation lowers it at once, before the new suffix is saved).
        self._persisted_index = self.log.last_index
        self._unstable_from = self.log.last_index + 1
        self._ready_outstanding = False
        self._last_soft_state = SoftState(self.role, self.term, self.leader_id)

        # Outputs accumulated until the next ready(), by when they may leave.
        self._messages_early: List[Message] = []
        self._messages: List[Message] = []
        self._notices: List[Message] = []
        self._failed_reads: List[Hashable] = []
        self._pending_snapshot: Optional[SnapshotImage] = None
        self._append_pending = False

        # ReadIndex (dissertation section 6.4).
        self.read_seq = 0
        self._reads_waiting_noop: List[Hashable] = []
        self._reads_unconfirmed: Deque[Tuple[Hashable, int, int]] = deque()
        self._reads_confirmed: Deque[Tuple[Hashable, int]] = deque()
        self._read_broadcast_pending = False

    @property
    def snapshot_index(self) -> int:
        """The last index the log no longer holds (covered by a snapshot)."""
        return self.log.snapshot_index

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self.role == LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.election_elapsed >= self.randomized_election_ticks and self._may_campaign():
                self.election_elapsed = 0
                self.campaign()

    def campaign(self) -> None:
        """Start an election now (PreVote first when enabled).  A leader ignores this, and
        so does a server that is not a voter of its latest configuration (a learner, a
        removed server: dissertation sections 4.2.1 and 4.2.3), unless that configuration
        may not have committed (``_may_campaign``)."""
        if self.role == LEADER or not self._may_campaign():
            return
        if self.config.pre_vote:
            self._become_pre_candidate()
        else:
            self._become_candidate()

    def propose(self, data: bytes) -> Any:
        """Append ``data`` as a new entry if leader; returns ``Accepted`` or ``NotLeaderOutcome``."""
        if self.role != LEADER:
            return NotLeaderOutcome(self.leader_id)
        if self.transferee is not None:
            return NotLeaderOutcome(None, transferring_to=self.transferee)
        entry = Entry(self.log.last_index + 1, self.term, data)
        self._append_local(entry)
        return Accepted(entry.index, entry.term)

    def propose_change(
        self, op: str, member: Union[Member, str], expect_config_index: Optional[int] = None
    ) -> Any:
        """Propose one single-server change (``ADD_LEARNER`` a ``Member``; ``PROMOTE`` or
        ``REMOVE`` a member or its id).  Returns ``Accepted`` (the entry holding the new
        configuration, in force at once; committed like any entry), ``NotLeaderOutcome``
        or ``ChangeRefused``.  ``expect_config_index``: refuse unless the latest
        configuration is still the one at that index."""
        if self.role != LEADER:
            return NotLeaderOutcome(self.leader_id)
        if isinstance(member, str):
            member = Member(member)
        if self.transferee is not None:
            return ChangeRefused(
                "transfer_in_progress",
                "the leadership is being handed to %r; retry" % self.transferee,
            )
        refusal = self._change_refusal(expect_config_index)
        if refusal is not None:
            return refusal
        if op == PROMOTE:
            pr = self.progress.get(member.id)
            if pr is not None and not self._live(pr):
                return ChangeRefused(
                    "not_caught_up",
                    "learner %r has not answered the leader lately; a voter that cannot be"
                    " reached would only weaken the majority" % member.id,
                )
            if pr is not None and not self._caught_up(pr):
                return ChangeRefused(
                    "not_caught_up",
                    "learner %r is %d entries behind the leader (at most %d to be promoted)"
                    % (member.id, self.log.last_index - pr.match_index, self.config.promote_max_lag),
                )
        try:
            new = self.configuration.changed(op, member)
        except ConfigChangeError as e:
            return ChangeRefused(e.code, e.message)
        return self._append_config(new)

    def config_at(self, index: int) -> Tuple[int, Configuration]:
        """The configuration in force at ``index`` and the index of its entry (for a
        snapshot covering ``index``); ``index`` must not be before the oldest one kept."""
        found = self._configs[0]
        for item in self._configs:
            if item[0] > index:
                break
            found = item
        return found

    def transfer_leadership(self, target: Optional[str] = None) -> Any:
        """Hand the leadership to the voter ``target`` (default: the most caught-up one
        that answered lately), as in dissertation section 3.10: stop taking proposals,
        bring it up to date, then send it ``TimeoutNow`` so that it campaigns at once.
        Returns ``Accepted`` (the transfer started, or is already under way to
        ``target``; ``Accepted.term`` is this term, which the new leader's exceeds),
        ``NotLeaderOutcome`` or ``ChangeRefused`` (``not_voter``, ``unknown_member``,
        ``no_target``, ``transfer_in_progress``).  It is abandoned after an election
        timeout without a new leader; proposals are then taken again."""
        if self.role != LEADER:
            return NotLeaderOutcome(self.leader_id)
        if target is None:
            target = self._transfer_target()
            if target is None:
                return ChangeRefused(
                    "no_target", "there is no other voter to hand the leadership to"
                )
        if target == self.id:
            return ChangeRefused("already_leader", "%r already leads term %d" % (target, self.term))
        if target not in self.configuration:
            return ChangeRefused("unknown_member", "%r is not a member" % (target,))
        if target not in self._voter_set:
            return ChangeRefused(
                "not_voter", "%r is a learner: only a voter can lead" % (target,)
            )
        if self.transferee is not None:
            if self.transferee == target:
                return Accepted(0, self.term)
            return ChangeRefused(
                "transfer_in_progress",
                "the leadership is already being handed to %r" % (self.transferee,),
            )
        self.transferee = target
        self._transfer_elapsed = 0
        pr = self.progress[target]
        if pr.match_index == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)
        return Accepted(0, self.term)

    def _transfer_target(self) -> Optional[str]:
        """The voter that has the most of the log, among those heard from lately."""
        best: Optional[Tuple[bool, int, str]] = None
        for peer in self._voter_peers:
            pr = self.progress.get(peer)
            if pr is None or pr.short_rejections >= LOST_LOG_REJECTIONS:
                continue
            key = (self._live(pr), pr.match_index, peer)
            if best is None or key[:2] > best[:2]:
                best = key
        return best[2] if best is not None else None

    def read_index(self, ctx: Hashable) -> Any:
        """Queue a linearizable read; ``ctx`` comes back in ``Ready.reads`` when safe."""
        if self.role != LEADER:
            return NotLeaderOutcome(self.leader_id)
        if self.log.term_at(self.commit_index) != self.term:
            # Until an entry of this term commits, the leader does not know the real
            # commit index (section 6.4 step 1); the no-op appended at election fixes it.
            self._reads_waiting_noop.append(ctx)
        else:
            self._register_reads([ctx])
        return Accepted(self.commit_index, self.term)

    def report_snapshot(self, peer: str, *, finished: bool, ok: bool = True) -> None:
        """The runtime's transfer of a snapshot to ``peer`` moved (``finished`` false),
        delivered every byte (``ok``) or failed (etcd's ReportSnapshot)."""
        self.step(SnapshotStatus(self.term, peer, self.id, finished=finished, ok=ok))

    def step(self, m: Message) -> None:
        """Process one message.  Stale, duplicated and reordered ones are fine."""
        # Requests are processed whatever this server's configuration says about their
        # sender (dissertation section 4.1: a new server must accept its first
        # AppendEntries from a leader its log does not name yet); answers only count
        # from servers the leader tracks.
        if m.receiver != self.id or m.sender == self.id:
            return
        if type(m) is SnapshotStatus:
            # A local report, of this node's own term: never a reason to change terms.
            if m.term == self.term:
                self._handle_snapshot_status(m)
            return
        if type(m) in (SnapshotChunk, SnapshotChunkAck):
            # A chunk is the transfer's business; the core takes only whole snapshots
            # (an acknowledgement here would promise a snapshot the node does not hold).
            raise CoreError("the core takes whole snapshots, not %s" % type(m).__name__)
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if self._in_lease() and not m.transfer:
                    # Section 4.2.3 / 9.6: a server that heard from a live leader within
                    # the minimum election timeout does not help depose it.
                    return
                if m.pre_vote:
                    self._handle_request_vote(m)
                    return
                self._become_follower(m.term, None)
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.vote_granted:
                pass  # the grant carries the term we asked about, not a newer one
            elif isinstance(m, (AppendEntries, InstallSnapshot)):
                self._become_follower(m.term, m.sender)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if isinstance(m, AppendEntries):
                # Tell a deposed leader about the newer term so it steps down; without
                # this a leader cut off by PreVote/CheckQuorum could linger.  The answer
                # carries our term and nothing else: it acknowledges no entries and no
                # ReadIndex round, because the sender may itself already lead our term
                # (it restarted, so its read_seq counts from 0 again) and must not take
                # an echo of its old term's read_seq as a quorum for new reads.
                self._send(AppendEntriesResponse(self.term, self.id, m.sender, success=False))
            elif isinstance(m, InstallSnapshot):
                self._send(
                    InstallSnapshotResponse(
                        self.term, self.id, m.sender, m.last_included_index, success=False
                    )
                )
            elif isinstance(m, RequestVote) and m.pre_vote:
                self._send(RequestVoteResponse(
                    self.term, self.id, m.sender, vote_granted=False, pre_vote=True))
            return

        if isinstance(m, AppendEntries):
            self._handle_append_entries(m)
        elif isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m)
        elif isinstance(m, RequestVote):
            self._handle_request_vote(m)
        elif isinstance(m, RequestVoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, InstallSnapshot):
            self._handle_install_snapshot(m)
        elif isinstance(m, InstallSnapshotResponse):
            self._handle_snapshot_response(m)
        elif isinstance(m, TimeoutNow):
            self._handle_timeout_now(m)

    # ------------------------------------------------------------- ready/advance

    def has_ready(self) -> bool:
        if self._ready_outstanding:
            return False
        return bool(
            self._messages_early
            or self._messages
            or self._notices
            or self._append_pending
            or self._read_broadcast_pending
            or self._failed_reads
            or self._pending_snapshot
            or self._unstable_from <= self.log.last_index
            or self.last_applied < self.commit_index
            or self._releasable_reads()
            or HardState(self.term, self.voted_for) != self._persisted_hard_state
            or self._soft_state() != self._last_soft_state
        )

    def ready(self) -> Ready:
        """Collect the pending batch of work.  Call ``advance`` when it is done.

        Between ``ready()`` and ``advance()`` the caller must not feed the core (no
        ``step``, ``tick``, ``propose``, ``read_index``, ``campaign`` or
        ``report_snapshot``): ``advance`` accounts for the batch against the state it was
        taken from.  Inputs that arrive meanwhile wait for ``advance`` (the runtime runs
        a batch within one reactor turn, so they queue in the reactor).
        """
        if self._ready_outstanding:
            raise CoreError("ready() called again before advance()")
        if self.role == LEADER:
            self._flush_leader()
        hard_state = HardState(self.term, self.voted_for)
        if hard_state == self._persisted_hard_state:
            hard_state = None
        entries = self.log.slice(self._unstable_from, self.log.last_index + 1)
        self._unstable_from = self.log.last_index + 1
        committed = self.log.slice(
            self.last_applied + 1,
            min(self.commit_index, self.last_applied + self.config.max_apply_entries) + 1,
        )
        applied_after = committed[-1].index if committed else self.last_applied
        reads = []
        while self._reads_confirmed and self._reads_confirmed[0][1] <= applied_after:
            reads.append(self._reads_confirmed.popleft()[0])
        soft = self._soft_state()
        if soft == self._last_soft_state:
            soft = None
        else:
            self._last_soft_state = soft
        rd = Ready(
            hard_state=hard_state,
            entries=entries,
            snapshot=self._pending_snapshot,
            messages_before_persist=tuple(self._messages_early),
            messages=tuple(self._messages),
            committed_entries=committed,
            reads=tuple(reads),
            failed_reads=tuple(self._failed_reads),
            soft_state=soft,
            messages_after_apply=tuple(self._notices),
        )
        self._messages_early = []
        self._messages = []
        self._notices = []
        self._failed_reads = []
        self._pending_snapshot = None
        self._ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller persisted, sent and applied ``rd``; account for it."""
        if not self._ready_outstanding:
            raise CoreError("advance() without an outstanding ready()")
        self._ready_outstanding = False
        if rd.hard_state is not None:
            self._persisted_hard_state = rd.hard_state
        if rd.snapshot is not None:
            # The durable log now starts after the snapshot.
            self._persisted_index = max(self._persisted_index, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            if self.log.term_at(last.index) == last.term:
                self._persisted_index = max(self._persisted_index, last.index)
        if rd.committed_entries:
            self.last_applied = rd.committed_entries[-1].index
        if self.role == LEADER and rd.entries:
            # The leader counts its own copy only once it is durable.
            self._maybe_commit()

    # ------------------------------------------------------------ observation

    def status(self) -> CoreStatus:
        """A read-only view for drivers, operators and metrics."""
        progress: Tuple[Tuple[str, PeerStatus], ...] = ()
        if self.role == LEADER:
            progress = tuple(
                (peer, PeerStatus(pr.match_index, pr.next_index, pr.state, pr.recent_active,
                                  len(pr.inflight), voter=peer in self._voter_set,
                                  lost_log=pr.short_rejections >= LOST_LOG_REJECTIONS))
                for peer, pr in sorted(self.progress.items())
            )
        return CoreStatus(
            id=self.id,
            role=self.role,
            term=self.term,
            voted_for=self.voted_for,
            leader_id=self.leader_id,
            commit_index=self.commit_index,
            last_applied=self.last_applied,
            last_log_index=self.log.last_index,
            last_log_term=self.log.last_term,
            snapshot_index=self.log.snapshot_index,
            voters=self.voters,
            progress=progress,
            learners=self.learners,
            config_index=self.config_index,
            configuration=self.configuration,
            leader_commit=self.commit_index if self.role == LEADER else self.leader_commit,
            transferee=self.transferee,
        )

    def peer_state(self, peer: str) -> Optional[str]:
        """A leader's replication state for ``peer`` (PROBE, REPLICATE, SNAPSHOT), or None
        when this node does not lead or ``peer`` is not a follower."""
        if self.role != LEADER:
            return None
        pr = self.progress.get(peer)
        return pr.state if pr is not None else None

    # ------------------------------------------------------- configurations

    @property
    def configuration(self) -> Configuration:
        """The latest configuration in the log: the one in force (dissertation 4.1)."""
        return self._configs[-1][1]

    @property
    def config_index(self) -> int:
        """The index of the entry holding ``configuration`` (0: the founding one)."""
        return self._configs[-1][0]

    def _decode_config(self, entry: Entry) -> Configuration:
        try:
            return Configuration.from_bytes(entry.data)
        except ConfigChangeError as e:
            # The codec and the storage check configuration entries before they get
            # here: this one was made by a buggy caller, not received.
            raise CoreError("configuration entry %d: %s" % (entry.index, e.message))

    def _may_campaign(self) -> bool:
        """A voter of the latest configuration may start elections; so may a server that
        the latest configuration removes while it may not have committed, if it was a
        voter of the one before.

        Configurations are in force once appended (section 4.1), so a leader that appends
        its own removal and then fails can leave the only copy of that entry with itself.
        The voters of the configuration before it then cannot elect anyone without its
        vote, which it refuses them (its log, holding the removal, is more up to date),
        while by its own configuration it is not a voter: the cluster stalls for good
        (found by the simulator, seed 10172). Letting it campaign is safe: votes are
        still counted in its latest configuration, as for any candidate, and it leads as
        a leader outside its configuration does (section 4.2.2) until the removal
        commits, then steps down. Once it knows the removal committed it stops."""
        if self._is_voter:
            return True
        configs = self._configs
        return (len(configs) >= 2 and self.config_index > self.commit_index
                and self.id in configs[-2][1].voters)

    def _use_latest_config(self) -> None:
        conf = self.configuration
        self.voters = conf.voters
        self.learners = conf.learners
        self._voter_set = frozenset(conf.voters)
        self._is_voter = self.id in self._voter_set
        self.peers = tuple(i for i in conf.ids if i != self.id)
        self._voter_peers = tuple(v for v in self.voters if v != self.id)
        self.quorum = len(self.voters) // 2 + 1
        if getattr(self, "role", None) == LEADER:
            # Replicate to every member but this one, from the moment the configuration
            # is appended; a new member starts as a probe at the end of the log.  A
            # member being removed is still sent the log until its removal commits (it
            # counts for nothing meanwhile), so that it learns it was removed and stops
            # campaigning (section 4.2.3) instead of timing out forever.
            last = self.log.last_index
            for peer in self.peers:
                if peer not in self.progress:
                    self.progress[peer] = Progress(next_index=last + 1)
            self._prune_progress()

    def _prune_progress(self) -> None:
        """Forget the members that left, once the configuration without them commits."""
        if self.commit_index >= self.config_index and len(self.progress) > len(self.peers):
            members = self.configuration
            for peer in [p for p in self.progress if p not in members]:
                self._farewell(peer, self.progress.pop(peer))

    def _farewell(self, peer: str, pr: Progress) -> None:
        """A last AppendEntries to a member whose removal committed: the entries after
        what it acknowledged (one batch) and the commit index, so that it learns its
        removal committed and stops campaigning (``_may_campaign``).  Lost, or one batch
        short of the removal, the server only asks with PreVote, which changes nothing
        while the cluster has a leader."""
        prev = pr.match_index
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            return
        entries = self.log.batch_from(
            prev + 1, self.config.max_append_bytes, self.config.max_append_entries
        )
        self._send(AppendEntries(self.term, self.id, peer, prev, prev_term, entries,
                                 self.commit_index, self.read_seq))

    def _note_appended(self, entry: Entry) -> None:
        """A follower appended ``entry``: a configuration takes effect at once."""
        if entry.kind == ENTRY_CONFIG:
            self._configs.append((entry.index, self._decode_config(entry)))
            self._use_latest_config()

    def _revert_configs(self, from_index: int) -> None:
        """The entries from ``from_index`` on were truncated: so were their
        configurations (dissertation 4.1: fall back to the latest one left)."""
        if self._configs[-1][0] < from_index:
            return
        while len(self._configs) > 1 and self._configs[-1][0] >= from_index:
            self._configs.pop()
        self._use_latest_config()

    def _append_config(self, new: Configuration) -> Accepted:
        entry = Entry(self.log.last_index + 1, self.term, new.to_bytes(), ENTRY_CONFIG)
        self._append_local(entry)
        self._configs.append((entry.index, new))
        self._use_latest_config()
        return Accepted(entry.index, entry.term)

    def _noop_committed(self) -> bool:
        """Whether an entry of this leader's term has committed (its no-op, at least).

        Until then the leader may not propose a configuration change: a leader of a
        newer term whose log lacks an uncommitted change of an older leader could
        otherwise commit a change whose majority does not overlap that one's (the
        single-server change bug, Ongaro, raft-dev, 2015; dissertation 4.1 errata)."""
        return self.log.term_at(self.commit_index) == self.term

    def _change_refusal(self, expect_config_index: Optional[int]) -> Optional[ChangeRefused]:
        if expect_config_index is not None and expect_config_index != self.config_index:
            return ChangeRefused(
                "config_changed",
                "the configuration is at index %d, not %d"
                % (self.config_index, expect_config_index),
            )
        if not self._noop_committed():
            return ChangeRefused(
                "leader_not_ready",
                "the leader of term %d has not committed an entry of its term yet; retry"
                % self.term,
            )
        if self.config_index > self.commit_index:
            return ChangeRefused(
                "change_in_progress",
                "the change at index %d has not committed yet" % self.config_index,
            )
        return None

    def _live(self, pr: Progress) -> bool:
        """The follower has answered this leader, and within the last two heartbeats
        (one lost answer forgiven)."""
        return pr.heard and pr.silent_ticks <= 2 * self.config.heartbeat_ticks

    def _caught_up(self, pr: Progress) -> bool:
        return pr.state != SNAPSHOT and (
            self.log.last_index - pr.match_index <= self.config.promote_max_lag
        )

    def _tick_learners(self) -> None:
        """Promote a learner that stayed caught up and heard from for
        ``auto_promote_ticks`` ticks in a row (one change at a time)."""
        wanted = self.config.auto_promote_ticks
        if not wanted or not self.learners or self.transferee is not None:
            return
        for learner in self.learners:
            pr = self.progress.get(learner)
            if pr is None:
                continue
            # Answering at every heartbeat (one lost answer forgiven) and caught up.
            if self._caught_up(pr) and self._live(pr):
                pr.caught_up_ticks += 1
            else:
                pr.caught_up_ticks = 0
        for learner in self.learners:
            pr = self.progress.get(learner)
            if pr is not None and pr.caught_up_ticks >= wanted:
                if self._change_refusal(None) is None:
                    pr.caught_up_ticks = 0
                    self._append_config(self.configuration.changed(PROMOTE, Member(learner)))
                return

    # --------------------------------------------------------------- roles

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.term, self.leader_id)

    def _reset_randomized_timeout(self) -> None:
        e = self.config.election_ticks
        self.randomized_election_ticks = self._rng.randrange(e, 2 * e)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
        self.leader_id = None
        self.leader_commit = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_timeout()
        self._votes = {}
        self.progress = {}
        self.transferee = None
        self._append_pending = False
        self._read_broadcast_pending = False
        self._fail_all_reads()

    def _become_follower(self, term: int, leader_id: Optional[str]) -> None:
        self._reset(term)
        self.role = FOLLOWER
        self.leader_id = leader_id

    def _become_pre_candidate(self) -> None:
        # Section 9.6: no term change and no vote until a majority says it would vote.
        self._reset(self.term)
        self.role = PRE_CANDIDATE
        self._votes = {self.id: True}
        if self._tally()[0] >= self.quorum:
            self._become_candidate()
            return
        for peer in self._voter_peers:
            self._send(
                RequestVote(
                    self.term + 1, self.id, peer, self.log.last_index, self.log.last_term,
                    pre_vote=True,
                )
            )

    def _become_candidate(self, transfer: bool = False) -> None:
        self._reset(self.term + 1)
        self.role = CANDIDATE
        self.voted_for = self.id
        self._votes = {self.id: True}
        if self._tally()[0] >= self.quorum:
            self._become_leader()
            return
        for peer in self._voter_peers:
            self._send(
                RequestVote(self.term, self.id, peer, self.log.last_index, self.log.last_term,
                            transfer=transfer)
            )

    def _handle_timeout_now(self, m: TimeoutNow) -> None:
        """Dissertation 3.10: the leader of this term hands over; campaign at once,
        without PreVote (the leader's cooperation is the proof that it is gone), in a
        new term, with the normal up-to-date check deciding the votes."""
        if self.role != FOLLOWER or not self._is_voter or m.sender != self.leader_id:
            return
        self._become_candidate(transfer=True)

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = LEADER
        self.leader_id = self.id
        last = self.log.last_index
        self.progress = {peer: Progress(next_index=last + 1) for peer in self.peers}
        # Figure 8 / section 8: commit an entry of the new term at once.
        self._append_local(Entry(last + 1, self.term, b"", ENTRY_NOOP))
        for peer in self.peers:
            self._send_append(peer)

    def _in_lease(self) -> bool:
        return (
            self.config.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.config.election_ticks
        )

    # -------------------------------------------------------------- elections

    def _tally(self) -> Tuple[int, int]:
        """Grants and refusals from the voters of this server's latest configuration
        (dissertation 4.1: a server always uses its latest configuration)."""
        voters = self._voter_set
        granted = rejected = 0
        for v, ok in self._votes.items():
            if v in voters:
                if ok:
                    granted += 1
                else:
                    rejected += 1
        return granted, rejected

    def _handle_request_vote(self, m: RequestVote) -> None:
        can_vote = (
            self.voted_for == m.sender
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            if not m.pre_vote:
                self.voted_for = m.sender
                self.election_elapsed = 0
            # A grant carries the requested term: for a pre-vote it is not ours yet.
            self._send(RequestVoteResponse(
                m.term, self.id, m.sender, vote_granted=True, pre_vote=m.pre_vote))
        else:
            self._send(RequestVoteResponse(
                self.term, self.id, m.sender, vote_granted=False, pre_vote=m.pre_vote))

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        if m.pre_vote:
            # A grant names the term we asked about (ours + 1); a refusal names the
            # refuser's term.  Anything else is left over from an earlier round.
            wanted = self.term + 1 if m.vote_granted else self.term
            if self.role != PRE_CANDIDATE or m.term != wanted:
                return
        elif self.role != CANDIDATE or m.term != self.term:
            return
        self._votes[m.sender] = m.vote_granted
        granted, rejected = self._tally()
        if granted >= self.quorum:
            if self.role == PRE_CANDIDATE:
                self._become_candidate()
            else:
                self._become_leader()
        elif rejected >= self.quorum:
            self._become_follower(self.term, None)

    # ------------------------------------------------------------ replication

    def _append_local(self, entry: Entry) -> None:
        self.log.append(entry)
        self._append_pending = True

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                voters = self._voter_set
                active = int(self._is_voter) + sum(
                    1 for peer, pr in self.progress.items() if pr.recent_active and peer in voters
                )
                if active < self.quorum:
                    # Section 6.2: a leader that cannot reach a majority steps down and
                    # stops claiming leadership to clients.
                    self._become_follower(self.term, None)
                    return
                for pr in self.progress.values():
                    pr.recent_active = False
        for pr in self.progress.values():
            pr.silent_ticks += 1
        if self.transferee is not None:
            self._transfer_elapsed += 1
            if (self._transfer_elapsed >= self.config.election_ticks
                    or self.transferee not in self._voter_set):
                # Section 3.10: no new leader within an election timeout (or the target
                # stopped being a voter): abort, and take proposals again.
                self.transferee = None
        self._tick_learners()
        for peer, pr in self.progress.items():
            if pr.state == SNAPSHOT:
                pr.snapshot_elapsed += 1
                if pr.snapshot_elapsed >= self.config.election_ticks:
                    # Over UDP the snapshot or its answer can be lost, and nothing else
                    # ever leaves this state: probe again, which re-offers the snapshot
                    # while the follower still needs one (Figure 13; section 7).
                    pr.become_probe()
                    self._send_append(peer)
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            for peer, pr in self.progress.items():
                self._heartbeat(peer, pr)

    def _heartbeat(self, peer: str, pr: Progress) -> None:
        # Every follower gets a plain heartbeat, whatever else it is sent: a probe or a
        # retransmission may carry a batch too big for one datagram and be lost again
        # and again, and the follower must not take that for a dead leader.
        self._send_heartbeat(peer, pr)
        if pr.state == PROBE:
            pr.probe_sent = False  # one probe per heartbeat interval
            self._send_append(peer)
            return
        if pr.state == REPLICATE:
            stalled = pr.match_index == pr.match_at_heartbeat
            pr.match_at_heartbeat = pr.match_index
            if stalled and pr.match_index < self.log.last_index:
                # No acknowledgement for a whole heartbeat interval while entries are
                # outstanding: over UDP that means loss, or a follower that is down or
                # cut off.  Probe from what it acknowledged: one message per heartbeat
                # until it answers, not a refilled pipeline (max_inflight batches)
                # every interval into a node that may not be there.
                pr.become_probe()
                self._send_append(peer)

    def _send_heartbeat(self, peer: str, pr: Progress, notice: bool = False) -> None:
        # prev = match_index: a heartbeat must never look like a gap to the follower.
        prev = pr.match_index
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            prev, prev_term = 0, 0
        # The leader's whole commit index: the follower commits only up to prev (what it
        # provably shares), and learns how far behind it is (its /ready).
        pr.commit_sent = max(pr.commit_sent, min(self.commit_index, pr.match_index))
        m = AppendEntries(self.term, self.id, peer, prev, prev_term, (), self.commit_index,
                          self.read_seq)
        if notice:
            self._notices.append(m)
        else:
            self._send(m)

    def _send_append(self, peer: str) -> bool:
        """Send entries from next_index (or an empty probe); False if nothing was sent."""
        pr = self.progress[peer]
        if pr.is_paused(self.config.max_inflight):
            return False
        prev = pr.next_index - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            # The entries it needs were compacted: the runtime must send a snapshot.
            pr.become_snapshot(self.log.snapshot_index)
            self._send(
                InstallSnapshot(
                    self.term, self.id, peer, self.log.snapshot_index, self.log.snapshot_term,
                    read_seq=self.read_seq,
                )
            )
            return True
        entries = self.log.batch_from(
            pr.next_index, self.config.max_append_bytes, self.config.max_append_entries
        )
        if pr.state == REPLICATE and not entries:
            return False
        self._send(
            AppendEntries(
                self.term, self.id, peer, prev, prev_term, entries, self.commit_index, self.read_seq
            )
        )
        pr.commit_sent = max(pr.commit_sent, min(self.commit_index, prev + len(entries)))
        pr.sent(prev + len(entries))
        return True

    def _resend_after_gap(self, peer: str, pr: Progress) -> None:
        """One batch after what the follower now holds, for a pipelined message it
        rejected because an earlier one had not arrived yet; next_index stays."""
        prev = pr.match_index
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            return  # compacted: the stall probe will offer a snapshot
        entries = self.log.batch_from(
            prev + 1, self.config.max_append_bytes, self.config.max_append_entries
        )
        if entries:
            self._send(
                AppendEntries(
                    self.term, self.id, peer, prev, prev_term, entries, self.commit_index,
                    self.read_seq,
                )
            )

    def _flush_leader(self) -> None:
        """Turn appended proposals and pending reads into messages (batched per ready)."""
        if self._append_pending or self._read_broadcast_pending:
            self._append_pending = False
            for peer, pr in self.progress.items():
                if pr.state == REPLICATE:
                    while self._send_append(peer):
                        pass
                elif pr.state == PROBE:
                    self._send_append(peer)
        for peer, pr in self.progress.items():
            # Tell followers about a commit they cannot know yet, so they apply promptly.
            if pr.state == REPLICATE and pr.commit_sent < min(self.commit_index, pr.match_index):
                self._send_heartbeat(peer, pr, notice=True)
        if self._read_broadcast_pending:
            self._read_broadcast_pending = False
            for peer, pr in self.progress.items():
                self._send_heartbeat(peer, pr)

    def _handle_append_entries(self, m: AppendEntries) -> None:
        if self.role != FOLLOWER or self.leader_id != m.sender:
            self._become_follower(self.term, m.sender)
        self.election_elapsed = 0
        if m.leader_commit > self.leader_commit:
            self.leader_commit = m.leader_commit
        prev = m.prev_log_index
        entries = m.entries
        if prev < self.commit_index:
            # The committed prefix is the same on every server (Leader Completeness), so
            # whatever the message says about it matches; only look at what follows.
            skip = self.commit_index - prev
            entries = entries[skip:]
            prev = self.commit_index
        elif self.log.term_at(prev) != m.prev_log_term:
            self._reject_append(m)
            return
        for i, entry in enumerate(entries):
            existing = self.log.term_at(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                # A real conflict (section 5.3): only now may the suffix go.
                if entry.index <= self.commit_index:
                    raise SafetyViolation(
                        "leader %s tried to overwrite committed entry %d"
                        % (m.sender, entry.index)
                    )
                self.log.truncate_from(entry.index)
                self._revert_configs(entry.index)
                self._persisted_index = min(self._persisted_index, entry.index - 1)
            self._unstable_from = min(self._unstable_from, entry.index)
            for new in entries[i:]:
                self.log.append(new)
                self._note_appended(new)
            break
        last_new = m.prev_log_index + len(m.entries)
        match = max(last_new, self.commit_index)
        if m.leader_commit > self.commit_index:
            self.commit_index = min(m.leader_commit, max(last_new, self.commit_index))
        self._send(
            AppendEntriesResponse(
                self.term, self.id, m.sender, success=True, match_index=match,
                read_seq=m.read_seq,
            )
        )

    def _reject_append(self, m: AppendEntries) -> None:
        prev = m.prev_log_index
        if prev > self.log.last_index:
            conflict_term, conflict_index = 0, self.log.last_index + 1
        else:
            conflict_term = self.log.term_at(prev) or 0
            conflict_index = max(
                self.log.first_index_of_term(conflict_term, prev), self.commit_index + 1
            )
        self._send(
            AppendEntriesResponse(
                self.term, self.id, m.sender, success=False,
                rejected_index=prev, conflict_index=conflict_index,
                conflict_term=conflict_term, read_seq=m.read_seq,
            )
        )

    def _heard_from(self, pr: Progress, read_seq: int) -> None:
        """Any answer of this term shows the follower alive (CheckQuorum) and, through
        the read round it echoes, confirms this leadership to that round's reads."""
        pr.recent_active = True
        pr.heard = True
        pr.silent_ticks = 0
        if read_seq > pr.read_ack:
            pr.read_ack = read_seq
            self._confirm_reads()

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.sender)
        if pr is None:
            return  # not a member of this leader's configuration (any more)
        self._heard_from(pr, m.read_seq)
        if m.success:
            if m.match_index > self.log.last_index:
                return  # cannot be a response to this leader's messages
            pr.short_rejections = 0
            advanced = pr.acknowledge(m.match_index)
            if advanced and pr.gaps and pr.state == REPLICATE:
                # The follower now ends at match_index: a rejected message that starts
                # exactly there is needed now; one that starts before it arrived by
                # another copy.
                if m.match_index in pr.gaps:
                    self._resend_after_gap(m.sender, pr)
                pr.gaps = [r for r in pr.gaps if r > m.match_index]
            # A success proves the logs agree up to match_index.  When it is no news but
            # the follower has everything (a probe right after a snapshot with nothing
            # after it), leave PROBE too, or each answer would draw another empty probe,
            # forever.  Not when entries remain: an answer to a heartbeat must not
            # refill the pipeline towards a follower whose batches keep getting lost.
            caught_up = m.match_index == pr.match_index == self.log.last_index
            if advanced or (pr.state == PROBE and caught_up):
                if pr.state != REPLICATE:
                    pr.become_replicate()
                if advanced:
                    self._maybe_commit()
                    if self.role != LEADER:
                        return  # its own removal committed: it stepped down
                self._append_pending = True
            if m.sender == self.transferee and pr.match_index == self.log.last_index:
                self._send(TimeoutNow(self.term, self.id, m.sender))
            return
        if (not m.conflict_term and 0 < m.rejected_index == pr.match_index
                and m.conflict_index <= pr.match_index):
            # "Too short" at the very index it acknowledged in this term: its log now
            # ends before entries it made durable and promised (a wiped disk).  Once is
            # a reordered answer; again and again is a lost log, reported (status
            # lost_log).  It is not repaired: a voter that forgot what it acknowledged
            # must be replaced, not refilled.
            pr.short_rejections += 1
            return
        # A rejection only counts if it answers a message sent since the last success:
        # a stale or duplicated one must not move next_index below match_index + 1.
        if not pr.match_index < m.rejected_index < pr.next_index:
            return
        if pr.state == REPLICATE and not m.conflict_term:
            # "Log too short" while pipelining: a message sent before this one is still
            # in flight (UDP reorders it) or was lost.  Tearing the pipeline down and
            # refilling it from match_index on each such answer multiplies traffic.
            # Remember the gap; when a success shows it closed, resend one batch from
            # there.  A real loss is caught by the stall probe at the next heartbeat.
            if m.rejected_index not in pr.gaps:  # duplicated datagrams: keep it bounded
                pr.gaps.append(m.rejected_index)
            return
        if m.conflict_term:
            last_of_term = self.log.last_index_of_term(m.conflict_term)
            hint = last_of_term + 1 if last_of_term else m.conflict_index
        else:
            hint = m.conflict_index
        pr.become_probe(min(hint, m.rejected_index))
        self._send_append(m.sender)

    def _maybe_commit(self) -> None:
        # A majority of the voters of the latest configuration (dissertation 4.1); the
        # leader counts its own durable copy only while it is one of them (4.2.2).
        voters = self._voter_set
        matches = [pr.match_index for peer, pr in self.progress.items() if peer in voters]
        if self._is_voter:
            matches.append(self._persisted_index)
        matches.sort(reverse=True)
        candidate = matches[self.quorum - 1]
        # Figure 8: only entries of the current term are committed by counting replicas.
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            self.commit_index = candidate
            if self._reads_waiting_noop:
                waiting, self._reads_waiting_noop = self._reads_waiting_noop, []
                self._register_reads(waiting)
            if self.commit_index >= self.config_index:
                if not self._is_voter:
                    self._step_down_removed()
                else:
                    self._prune_progress()

    def _step_down_removed(self) -> None:
        """Dissertation 4.2.2: a leader removed from the configuration steps down once
        the entry removing it commits.  It tells the others first, so they apply it
        without waiting for the next leader's no-op."""
        for peer, pr in self.progress.items():
            self._send_heartbeat(peer, pr)
        self._become_follower(self.term, None)

    # ------------------------------------------------------------- snapshots

    def _handle_install_snapshot(self, m: InstallSnapshot) -> None:
        """A whole snapshot from the leader (Figure 13), delivered by the runtime's
        transfer once every byte arrived; it is installed in the next Ready's persist
        step, and the answer leaves only after that."""
        if self.role != FOLLOWER or self.leader_id != m.sender:
            self._become_follower(self.term, m.sender)
        self.election_elapsed = 0
        index = m.last_included_index
        if index > self.commit_index:
            if m.data is None:
                raise CoreError(
                    "snapshot %d arrived without its image, and this node holds only up "
                    "to %d" % (index, self.commit_index)
                )
            if m.configuration is not None:
                base = (m.config_index, m.configuration)
            else:
                base = self.config_at(index)  # a snapshot from before configurations
            meta = SnapshotMeta(
                index, m.last_included_term, configuration=base[1], config_index=base[0]
            )
            if self.log.term_at(index) == meta.term:
                # Section 7: the log holds the snapshot's last entry: keep what follows.
                self.log.compact(meta)
                self._configs = [base] + [c for c in self._configs if c[0] > index]
            else:
                self.log = RaftLog(meta)
                self._configs = [base]
                self._unstable_from = index + 1
                self._persisted_index = min(self._persisted_index, index)
            self._use_latest_config()
            self.commit_index = index
            self.last_applied = index
            self._pending_snapshot = SnapshotImage(meta, m.data)
        self._send(
            InstallSnapshotResponse(
                self.term, self.id, m.sender, index, success=True, read_seq=m.read_seq
            )
        )

    def _handle_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        self._heard_from(pr, m.read_seq)
        if not m.success:
            if pr.state == SNAPSHOT:
                pr.become_probe()
            return
        if m.last_included_index > self.log.last_index:
            return  # cannot be an answer to this leader's snapshot
        advanced = pr.acknowledge(m.last_included_index)
        if (pr.state == SNAPSHOT and pr.match_index >= pr.snapshot_index) or (
            pr.state == PROBE and advanced
        ):
            pr.become_probe()
            self._send_append(m.sender)

    def _handle_snapshot_status(self, m: SnapshotStatus) -> None:
        if self.role != LEADER:
            return
        pr = self.progress.get(m.sender)
        if pr is None or pr.state != SNAPSHOT:
            return
        if not m.finished:
            # The transfer is moving (a large image over UDP takes longer than an
            # election timeout): do not re-offer it yet, and the follower is alive.
            pr.snapshot_elapsed = 0
            pr.recent_active = True
            return
        # etcd's ReportSnapshot: either way, probe.  After a delivery, from just past
        # the snapshot: the follower's answer to that probe ends the matter even if its
        # InstallSnapshotResponse was lost.
        pr.become_probe(pr.snapshot_index + 1 if m.ok else 0)
        self._send_append(m.sender)

    def compact(self, index: int) -> SnapshotMeta:
        """The state machine holds a durable snapshot covering ``index``: drop the log's
        entries up to it.  Returns the new starting point (for the storage)."""
        if index > self.last_applied:
            raise CoreError("cannot compact beyond the applied index")
        term = self.log.term_at(index)
        if term is None:
            raise CoreError("index %d is not in the log (it starts after %d)"
                            % (index, self.log.snapshot_index))
        base = self.config_at(index)
        meta = SnapshotMeta(index, term, configuration=base[1], config_index=base[0])
        self.log.compact(meta)
        self._configs = [base] + [c for c in self._configs if c[0] > index]
        return meta

    # ----------------------------------------------------------------- reads

    def _register_reads(self, ctxs: List[Hashable]) -> None:
        if self._is_voter and self.quorum == 1:
            for ctx in ctxs:
                self._reads_confirmed.append((ctx, self.commit_index))
            return
        self.read_seq += 1
        for ctx in ctxs:
            self._reads_unconfirmed.append((ctx, self.commit_index, self.read_seq))
        self._read_broadcast_pending = True

    def _confirm_reads(self) -> None:
        if not self._reads_unconfirmed:
            return
        voters = self._voter_set
        acks = sorted(
            (pr.read_ack for peer, pr in self.progress.items() if peer in voters), reverse=True
        )
        # Voters only; the leader itself is one of the quorum while it is a voter.
        need = self.quorum - int(self._is_voter)
        confirmed_seq = acks[need - 1] if need > 0 else self.read_seq
        while self._reads_unconfirmed and self._reads_unconfirmed[0][2] <= confirmed_seq:
            ctx, index, _ = self._reads_unconfirmed.popleft()
            self._reads_confirmed.append((ctx, index))

    def _releasable_reads(self) -> bool:
        return bool(self._reads_confirmed) and self._reads_confirmed[0][1] <= self.commit_index

    def _fail_all_reads(self) -> None:
        self._failed_reads.extend(self._reads_waiting_noop)
        self._failed_reads.extend(ctx for ctx, _, _ in self._reads_unconfirmed)
        self._failed_reads.extend(ctx for ctx, _ in self._reads_confirmed)
        self._reads_waiting_noop = []
        self._reads_unconfirmed.clear()
        self._reads_confirmed.clear()

    # ---------------------------------------------------------------- output

    def _send(self, m: Message) -> None:
        """Queue ``m``; it leaves before this batch is durable unless it depends on it."""
        if self._depends_on_unsaved(m):
            self._messages.append(m)
        else:
            self._messages_early.append(m)

    def _depends_on_unsaved(self, m: Message) -> bool:
        """Whether ``m`` promises state that is not durable yet (Figure 2: "before
        responding to RPCs", updated on stable storage).  Judged against what was durable
        before this batch, which is what is on disk while early messages leave."""
        t = type(m)
        if (t is RequestVote or t is RequestVoteResponse) and m.pre_vote:
            return False  # PreVote changes no state and promises nothing (section 9.6)
        durable = self._persisted_hard_state
        if self.term != durable.term or self.voted_for != durable.voted_for:
            return True  # a new term or a new vote, not yet on disk
        if self._pending_snapshot is not None:
            return True  # a snapshot to install: nothing may vouch for the log before it
        if t is AppendEntriesResponse:
            return m.success and m.match_index > self._persisted_index
        if t is InstallSnapshotResponse or t is RequestVote:
            return True
        if t is RequestVoteResponse:
            return m.vote_granted
        return False

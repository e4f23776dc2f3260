"""The node runtime: drives a ``RaftCore`` with a reactor, a storage, a transport and an app.

Every input (a datagram, a timer tick, a proposal, a read) is fed to the core at once;
the resulting batches are carried out once per reactor turn by the shared executor
(``txraft.runtime.executor``), in the order the core decided for each message:

    send what depends on nothing unsaved -> persist (one fsync for the whole batch)
    -> send what promises it -> apply, serve reads -> advance -> answer -> commit notices

so a vote or an acknowledgement never leaves before the state it promises is durable, a
leader's AppendEntries leave while its own fsync runs (dissertation section 10.2.1), and
all the datagrams and proposals that arrived in one turn share one fsync (group commit).
The simulator runs the same executor and the same snapshot transfer.

Nothing here reads a global reactor: the composition root (``txraft.plugins.raftnode``)
injects it, and tests drive this class with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit
from typing import Any, Callable, Dict, Hashable, List, Optional, Tuple

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txraft.core import LEADER, Accepted, ChangeRefused, CoreConfig, RaftCore, SnapshotImage
from txraft.core.config import BIND, VOTER, Configuration, parse_address
from txraft.core.config import Member as ConfigMember
from txraft.core.messages import ENTRY_CONFIG, ENTRY_NOOP, InstallSnapshot, SnapshotMeta
from txraft.errors import (
    CommitTimeout,
    ConfigError,
    MembershipRefused,
    NotLeader,
    Overloaded,
    ProposalDropped,
    RaftError,
    ReadTimeout,
    TransferFailed,
)
from txraft.interfaces import ILogStorage, IRaftNode, IStateMachine
from txraft.runtime.executor import Executor
from txraft.runtime.snapshot import SnapshotStore
from txraft.runtime.status import NodeStatus
from txraft.runtime.transfer import SnapshotTransfers


@attrs.frozen
class Member:
    """One cluster member: where its Raft UDP port and its HTTP API are."""

    node_id: str
    host: str
    port: int
    http_port: int
    #: The URL clients use, when it differs from host:http_port (e.g. behind Docker's
    #: port publishing); used in redirects and status, never for node-to-node traffic.
    advertise_url: Optional[str] = None

    @property
    def http_url(self) -> str:
        host = self.host
        if ":" in host:
            host = "[%s]" % (host,)
        return "http://%s:%d" % (host, self.http_port)

    @property
    def public_url(self) -> str:
        return (self.advertise_url or self.http_url).rstrip("/")


def founding_configuration(members: Dict[str, Member]) -> Configuration:
    """The configuration ``--members`` names: every member a voter, with its Raft
    address (host:port) and the URL clients reach its HTTP API at."""
    out = []
    for m in members.values():
        host = "[%s]" % (m.host,) if ":" in m.host else m.host
        out.append(ConfigMember(m.node_id, VOTER, "%s:%d" % (host, m.port), m.public_url))
    return Configuration(out)


def member_of(m: ConfigMember) -> Optional[Member]:
    """Where to reach a configuration's member (None without a Raft address): its Raft
    address, and its HTTP API on the port of its ``http_url`` (else the Raft port)."""
    address = parse_address(m.address)
    if address is None:
        return None
    http_port = address[1]
    if m.http_url:
        try:
            http_port = urlsplit(m.http_url).port or http_port
        except ValueError:
            pass
    return Member(m.id, address[0], address[1], http_port, advertise_url=m.http_url or None)


@attrs.frozen
class Timing:
    """Wall-clock settings, converted to core ticks here (the core only knows ticks)."""

    tick_seconds: float = 0.01
    election_timeout_seconds: float = 0.15
    heartbeat_seconds: float = 0.05
    proposal_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 2.0
    #: Take a snapshot and compact the log every this many applied entries ...
    snapshot_entries: int = 10000
    #: ... keeping this many entries behind it for followers that lag a little.
    snapshot_trailing_entries: int = 1000
    #: Proposals (and, separately, reads) waiting at once before new ones are refused.
    max_pending: int = 20000
    #: The leader promotes a learner that has stayed caught up this long (0: never;
    #: promote explicitly).
    auto_promote_seconds: float = 2.0

    def core_ticks(self) -> Tuple[int, int]:
        election = max(2, round(self.election_timeout_seconds / self.tick_seconds))
        heartbeat = max(1, round(self.heartbeat_seconds / self.tick_seconds))
        if heartbeat >= election:
            raise ValueError(
                "the heartbeat interval (%gs) must be shorter than the election timeout (%gs)"
                % (self.heartbeat_seconds, self.election_timeout_seconds)
            )
        return election, heartbeat


class FatalNodeError(RaftError):
    """Storage or the state machine failed: continuing could break a promise.

    ``definite`` is False for the work that was waiting when it happened (a write may
    have been appended, even replicated: another leader may still commit it).
    """

    def __init__(self, message: str, definite: bool = True):
        super().__init__(message)
        self.definite = definite


#: A node refused by a peer (an identity notice) reports it this long after the last
#: notice: peers send one a second while they refuse it, and stop once it is replaced.
IDENTITY_REFUSAL_HOLD_SECONDS = 5.0


@implementer(IRaftNode)
class RaftNode(Service):
    """One Raft server process.  See the module docstring for the order of work."""

    log = Logger()

    def __init__(
        self,
        node_id: str,
        members: Dict[str, Member],
        storage: ILogStorage,
        state_machine: IStateMachine,
        reactor: Any,
        rng: Any,
        timing: Timing = Timing(),
        core_config: Optional[CoreConfig] = None,
        on_fatal: Optional[Callable[[Failure], None]] = None,
        snapshots: Optional[SnapshotStore] = None,
        snapshot_chunk_bytes: int = 1200,
        run_in_thread: Optional[Callable[[Callable[[], Any]], Deferred]] = None,
        identity: Any = None,
        peer_identities: Any = None,
        founding: Optional[Configuration] = None,
    ):
        """``founding``: the configuration to start from when the log names none yet
        (default: ``members``, every one a voter, as ``--members`` founds a cluster; a
        node that joined a running cluster passes the configuration it joined with)."""
        if node_id not in members:
            raise ValueError("node id %r is not among the members %r" % (node_id, sorted(members)))
        self.node_id = node_id
        self.members = dict(members)
        self.storage = storage
        self.state_machine = state_machine
        self.transport: Any = None  # set by the composition root (an ITransport)
        self.reactor = reactor
        self.timing = timing
        election, heartbeat = timing.core_ticks()
        promote = round(timing.auto_promote_seconds / timing.tick_seconds)
        if core_config is None:
            core_config = CoreConfig(election_ticks=election, heartbeat_ticks=heartbeat,
                                     auto_promote_ticks=promote)
        else:
            core_config = attrs.evolve(
                core_config, election_ticks=election, heartbeat_ticks=heartbeat,
                auto_promote_ticks=promote,
            )
        self._on_fatal = on_fatal
        self._dead: Optional[Failure] = None
        #: The cluster secret (bytes), which membership changes over HTTP must present;
        #: None: such changes are refused (``txraft.http.membership``).
        self.secret: Optional[bytes] = None

        #: This data directory's identity (``txraft.runtime.identity.NodeIdentity``: uuid,
        #: caught_up, mark_caught_up), or None (tests: no identity, always caught up).
        self.identity = identity
        #: The guard deciding whose datagrams reach the core
        #: (``txraft.runtime.trust.PeerIdentities``), shared with the transport, or None.
        self.peer_identities = peer_identities
        #: Peers that refused this node's identity: id -> (uuid they expect, when).
        self._refusals: Dict[str, Tuple[Optional[str], float]] = {}
        self._refusal_logged = False
        #: This leader's bindings of uuids in the configuration: the index of the
        #: configuration each replaced -> the index of the binding entry.
        self._binds: Dict[int, int] = {}
        #: Changes asked for while one of those bindings was committing: they wait
        #: (Deferred, change() arguments, timeout call).
        self._behind_binding: List[Tuple[Deferred, Tuple[Any, ...], Any]] = []

        self.snapshots = snapshots
        # Runs a function in a worker thread, returning a Deferred (the composition root
        # passes the reactor's thread pool).  Without it snapshots are taken inline.
        self._run_in_thread = run_in_thread
        self._snapshot_running = False
        hard_state, snapshot, entries, applied = self._recover()
        self.core = RaftCore(
            node_id,
            founding if founding is not None else founding_configuration(members),
            core_config,
            rng,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            applied_index=applied,
        )
        # Not yet told to the transport: the first batch does (a node restarted after
        # membership changes must talk to the members its log names, not --members).
        self._config_index = -1
        if peer_identities is not None:
            peer_identities.use_configuration(self.core.configuration)
            self._forget_removed(self.core.config_at(self.core.commit_index)[1])
        self._proposals: Dict[int, Tuple[int, Deferred, Any]] = {}
        self._reads: Dict[Hashable, Tuple[Deferred, Any]] = {}
        # Leadership transfers waiting for a new leader: (target or None, the term
        # they started in, the Deferred, its timeout).
        self._handovers: List[Tuple[Optional[str], int, Deferred, Any]] = []
        self._read_ids = itertools.count(1)
        self._process_call: Any = None
        self._ticker: Optional[LoopingCall] = None
        self.executor = Executor(
            self.core,
            send=self._send_messages,
            save=self._save,
            install_snapshot=self._install_snapshot,
            apply=self._apply,
            release=self._release,
            send_after_apply=self._send_later,
        )
        self.transfers = SnapshotTransfers(
            node_id,
            self._send_direct,
            reactor.seconds,
            latest=self.snapshots.latest if self.snapshots is not None else (lambda: None),
            chunk_bytes=snapshot_chunk_bytes,
            resend_after_seconds=max(0.05, 4 * timing.tick_seconds),
        )
        self.counters: Dict[str, int] = {
            "readies": 0,
            "fsync_batches": 0,
            "entries_persisted": 0,
            "entries_applied": 0,
            "messages_sent": 0,
            "messages_received": 0,
            "proposals": 0,
            "reads": 0,
            "snapshots_taken": 0,
            "snapshots_installed": 0,
            "leader_changes_seen": 0,
            "stale_identity_notices": 0,
        }
        self._last_leader: Optional[str] = None

    def _recover(self) -> Tuple[Any, Any, Any, int]:
        """Reconcile the log, the state machine and the snapshot after a restart.

        The state machine's applied index is durable with its data; the log may lag it
        after a crash between installing a snapshot and compacting the log, and the
        state machine may lag the log's compaction point if its file was lost.
        """
        storage, sm = self.storage, self.state_machine
        hard_state, snapshot, entries = storage.load()
        applied = sm.applied_index()
        last_index = snapshot.index + len(entries)
        if applied > snapshot.index:
            if applied > last_index:
                term_at_applied = None
            elif applied == snapshot.index:
                term_at_applied = snapshot.term
            else:
                term_at_applied = entries[applied - snapshot.index - 1].term
            applied_term = sm.applied_term()
            if term_at_applied != applied_term:
                # Everything applied is committed: make it the log's starting point,
                # with the configuration in force there.
                config_index, conf = self._config_at(snapshot, entries, applied)
                storage.compact(SnapshotMeta(applied, applied_term, configuration=conf,
                                             config_index=config_index))
                hard_state, snapshot, entries = storage.load()
        elif applied < snapshot.index:
            latest = self.snapshots.latest() if self.snapshots is not None else None
            if latest is None or latest[0].index < snapshot.index:
                raise FatalNodeError(
                    "the state machine is at index %d but the log starts after %d and no "
                    "snapshot covers the gap" % (applied, snapshot.index)
                )
            meta, data = latest
            sm.restore(meta.index, meta.term, data)
            applied = sm.applied_index()
        return hard_state, snapshot, entries, applied

    def _config_at(self, snapshot: SnapshotMeta, entries: Any, index: int) -> Tuple[int, Any]:
        """The configuration in force at ``index`` and its entry's index: from the
        snapshot image that ends there (one installed just before a crash), else the
        latest one the log holds up to ``index`` (None: the founding one)."""
        latest = self.snapshots.latest() if self.snapshots is not None else None
        if latest is not None and latest[0].index == index and latest[0].configuration is not None:
            return latest[0].config_index, latest[0].configuration
        found = (snapshot.config_index, snapshot.configuration)
        for entry in entries:
            if entry.index > index:
                break
            if entry.kind == ENTRY_CONFIG:
                found = (entry.index, Configuration.from_bytes(entry.data))
        return found

    # ---------------------------------------------------------------- service

    def startService(self) -> None:
        super().startService()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(self.timing.tick_seconds, now=False)
        if len(self.members) == 1:
            # A cluster of one needs nobody's vote: serve at once.
            self.core.campaign()
        self._schedule()

    def stopService(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self._process_call is not None and self._process_call.active():
            self._process_call.cancel()
        self._process_call = None
        self._fail_everything(NotLeader(None, None), ProposalDropped("the node is stopping"))
        return super().stopService()

    # ----------------------------------------------------------------- inputs

    def receive(self, message: Any) -> None:
        """Called by the transport for each authenticated message addressed to us."""
        if self._dead is not None or not self.running:
            return
        self.counters["messages_received"] += 1
        try:
            self._receive(message)
        except Exception:
            self._fatal(Failure())
            return
        self._schedule()

    def _receive(self, message: Any) -> None:
        if not self.transfers.deliver(message, self.core):
            self.core.step(message)

    def _tick(self) -> None:
        if self._dead is not None or not self.running:
            return
        try:
            self.core.tick()
            self.transfers.tick_for(self.core)
            if self.peer_identities is not None and self.core.role == LEADER:
                self._bind_identities()
        except Exception:
            # An exception would silently stop the LoopingCall: no more heartbeats or
            # elections from a node that looks alive.
            self._fatal(Failure())
            return
        self._schedule()

    def propose(self, data: bytes) -> Deferred:
        if self._dead is not None:
            return _failed(FatalNodeError("node stopped after a fatal error"))
        if not self.running:
            return _failed(ProposalDropped("the node is stopping"))
        if len(self._proposals) >= self.timing.max_pending:
            return _failed(Overloaded(
                "%d proposals are already waiting to commit; retry shortly" % len(self._proposals)
            ))
        outcome = self.core.propose(data)
        if not isinstance(outcome, Accepted):
            return _failed(self._not_leader(outcome.leader_id, outcome.transferring_to))
        self.counters["proposals"] += 1
        d: Deferred = Deferred()
        timeout = self.reactor.callLater(
            self.timing.proposal_timeout_seconds, self._proposal_timed_out, outcome.index
        )
        self._proposals[outcome.index] = (outcome.term, d, timeout)
        self._schedule()
        return d

    def change(
        self,
        op: str,
        member_id: str,
        address: str = "",
        http_url: str = "",
        expect_config_index: Optional[int] = None,
        uuid: str = "",
    ) -> Deferred:
        """Propose one single-server change (``txraft.core.config``: ``add_learner``,
        ``promote``, ``remove``); fires with the index of its entry once that commits.
        ``uuid`` binds a new member to the data directory it must run on.
        Fails with ``NotLeader`` (forward it), ``MembershipRefused`` (nothing appended)
        or, as any proposal, ``CommitTimeout``/``ProposalDropped`` (outcome unknown)."""
        if self._dead is not None:
            return _failed(FatalNodeError("node stopped after a fatal error"))
        if not self.running:
            return _failed(ProposalDropped("the node is stopping"))
        member = ConfigMember(member_id, address=address, http_url=http_url, uuid=uuid)
        # A binding of a uuid (``_bind_identities``) changes no member: a change made
        # against the configuration before it is made against the one after, and one
        # asked for while it commits waits for it rather than being refused.
        while expect_config_index in self._binds:
            expect_config_index = self._binds[expect_config_index]
        outcome = self.core.propose_change(op, member, expect_config_index)
        if isinstance(outcome, ChangeRefused):
            if (outcome.code == "change_in_progress"
                    and self.core.config_index in self._binds.values()):
                d = Deferred()
                timeout = self.reactor.callLater(
                    self.timing.proposal_timeout_seconds, self._binding_wait_timed_out, d)
                self._behind_binding.append(
                    (d, (op, member_id, address, http_url, expect_config_index, uuid),
                     timeout))
                return d
            return _failed(MembershipRefused(outcome.code, outcome.message))
        if not isinstance(outcome, Accepted):
            return _failed(self._not_leader(outcome.leader_id))
        self.log.info("{node}: proposed {op} {member} at index {index}", node=self.node_id,
                      op=op, member=member_id, index=outcome.index)
        d: Deferred = Deferred()
        timeout = self.reactor.callLater(
            self.timing.proposal_timeout_seconds, self._proposal_timed_out, outcome.index
        )
        self._proposals[outcome.index] = (outcome.term, d, timeout)
        self._schedule()
        return d.addCallback(lambda index_and_result: index_and_result[0])

    def transfer_leadership(self, target: Optional[str] = None) -> Deferred:
        """Hand this node's leadership to the voter ``target`` (default: the most
        caught-up one; dissertation 3.10).  Fires with ``(leader_id, term)`` once this
        node hears from the new leader; fails with ``NotLeader`` (forward it),
        ``TransferFailed`` (refused, nothing changed; or ``transfer_timeout`` within
        twice the election timeout, or ``another_leader``).  Proposals are refused
        meanwhile, so that the target has the whole log when it campaigns."""
        if self._dead is not None:
            return _failed(FatalNodeError("node stopped after a fatal error"))
        if not self.running:
            return _failed(NotLeader(None, None))
        outcome = self.core.transfer_leadership(target)
        if isinstance(outcome, ChangeRefused):
            if outcome.code == "already_leader":
                return succeed((self.node_id, self.core.term))
            return _failed(TransferFailed(outcome.code, outcome.message))
        if not isinstance(outcome, Accepted):
            return _failed(self._not_leader(outcome.leader_id))
        self.log.info("{node}: handing the leadership of term {term} to {target}",
                      node=self.node_id, term=outcome.term, target=self.core.transferee)
        d: Deferred = Deferred()
        seconds = 2 * self.timing.election_timeout_seconds
        timeout = self.reactor.callLater(seconds, self._handover_timed_out, d, seconds)
        entry = (target, outcome.term, d, timeout)
        self._handovers.append(entry)
        self._schedule()
        return d

    def _handover_timed_out(self, d: Deferred, seconds: float) -> None:
        for item in list(self._handovers):
            if item[2] is d:
                self._handovers.remove(item)
                still = " (this node still leads)" if self.core.role == LEADER else ""
                d.errback(TransferFailed(
                    "transfer_timeout",
                    "no new leader within %gs%s; retry, or check the target's /raft/status"
                    % (seconds, still)))

    def _handover_done(self, soft: Any, outcomes: list) -> None:
        """A new leader is known: answer the transfers that were waiting for one."""
        if soft.leader_id is None or soft.leader_id == self.node_id:
            return
        waiting, self._handovers = self._handovers, []
        for target, term, d, timeout in waiting:
            if soft.term <= term:
                self._handovers.append((target, term, d, timeout))
                continue
            _cancel(timeout)
            if target is None or target == soft.leader_id:
                outcomes.append((d, (soft.leader_id, soft.term)))
            else:
                outcomes.append((d, Failure(TransferFailed(
                    "another_leader",
                    "%s won the election of term %d instead of %s"
                    % (soft.leader_id, soft.term, target)))))

    def read_barrier(self) -> Deferred:
        if self._dead is not None:
            return _failed(FatalNodeError("node stopped after a fatal error"))
        if not self.running:
            return _failed(NotLeader(None, None))
        if len(self._reads) >= self.timing.max_pending:
            return _failed(Overloaded(
                "%d reads are already waiting for confirmation; retry shortly" % len(self._reads)
            ))
        ctx = next(self._read_ids)
        outcome = self.core.read_index(ctx)
        if not isinstance(outcome, Accepted):
            return _failed(self._not_leader(outcome.leader_id))
        self.counters["reads"] += 1
        d: Deferred = Deferred()
        timeout = self.reactor.callLater(
            self.timing.read_timeout_seconds, self._read_timed_out, ctx
        )
        self._reads[ctx] = (d, timeout)
        self._schedule()
        return d

    # ------------------------------------------------------------ observation

    def leader(self) -> Tuple[Optional[str], Optional[str]]:
        leader_id = self.core.leader_id
        if leader_id is None:
            return None, None
        return leader_id, self.members[leader_id].http_url

    def is_leader(self) -> bool:
        return self.core.role == LEADER

    def is_ready(self) -> bool:
        """A leader is known and this node applied everything it knows to be committed,
        including what the leader last said it had committed: a node that lost its
        data, or is catching up, is not ready."""
        core = self.core
        return (
            self._dead is None
            and core.leader_id is not None
            and core.last_applied >= max(core.commit_index, core.leader_commit)
            and not self._active_refusals()
        )

    # --------------------------------------------------------------- identity

    def identity_refused(self, peer_id: str, expected: bytes, refused: bytes) -> None:
        """The transport's ``on_identity_refused``: ``peer_id`` knows this node's id by
        another data directory (``expected``), so this one lost what it promised."""
        expected_hex = expected.hex() if any(expected) else None
        me = self.core.configuration.get(self.node_id)
        if me is not None and self.identity is not None and me.uuid == self.identity.uuid:
            # The configuration in force binds this id to this very directory: the
            # peer replays an older one (it is catching up), this node lost nothing.
            self.counters["stale_identity_notices"] += 1
            return
        self._refusals[peer_id] = (expected_hex, self.reactor.seconds())
        if not self._refusal_logged:
            self._refusal_logged = True
            self.log.error("{node}: {line}", node=self.node_id,
                           line=self.status_view().identity_refusal())

    def _active_refusals(self) -> Tuple[Tuple[str, Optional[str]], ...]:
        if not self._refusals:
            return ()
        since = self.reactor.seconds() - IDENTITY_REFUSAL_HOLD_SECONDS
        return tuple((peer, expected) for peer, (expected, when)
                     in sorted(self._refusals.items()) if when > since)

    def stale_read_refusal(self) -> Optional[str]:
        """Why this node must not answer reads from its own copy (``?consistency=
        stale``), or None: its peers refuse its identity, or its data directory has
        never caught up with a leader since it was created (it would answer from
        missing data)."""
        if self._refusals and self._active_refusals():
            return self.status_view().identity_refusal()
        if self.identity is not None and not self.identity.caught_up:
            return self.status_view().stale_read_refusal()
        return None

    def _check_caught_up(self) -> None:
        """Record, once, that this new data directory has applied what a leader had
        committed (from then on it may serve stale reads)."""
        core = self.core
        learned = core.commit_index if core.role == LEADER else core.leader_commit
        if learned > 0 and self.is_ready():
            self.identity.mark_caught_up()
            self.log.info("{node}: caught up with the leader at index {index}; stale reads "
                          "are served from now on", node=self.node_id, index=core.last_applied)

    def _bind_identities(self) -> None:
        """On the leader: write the uuid of a member that has none yet (this node's
        own, or the one it heard the member present) into the configuration, so that
        every member, and any server that joins later, knows it from the log instead
        of trusting whatever it hears first (one member per change)."""
        core = self.core
        member = self.peer_identities.next_binding(
            core.configuration, self.identity.uuid if self.identity is not None else None)
        if member is None:
            return
        replaced = core.config_index
        outcome = core.propose_change(BIND, member, replaced)
        if isinstance(outcome, Accepted):
            self._binds[replaced] = outcome.index
            self.log.info("{node}: binding {member} to data directory uuid {uuid} (entry "
                          "{index})", node=self.node_id, member=member.id, uuid=member.uuid,
                          index=outcome.index)

    def _release_behind_binding(self) -> None:
        waiting, self._behind_binding = self._behind_binding, []
        for d, args, timeout in waiting:
            _cancel(timeout)
            self.change(*args).chainDeferred(d)

    def _binding_wait_timed_out(self, d: Deferred) -> None:
        """Nothing of the change was appended: it is refused, to be retried."""
        self._behind_binding = [w for w in self._behind_binding if w[0] is not d]
        d.errback(MembershipRefused(
            "change_in_progress",
            "the binding of a member's uuid has not committed within %gs; retry"
            % self.timing.proposal_timeout_seconds))

    def _forget_removed(self, conf: Configuration) -> None:
        """``conf`` is committed: peers it does not name were removed for good, and may
        come back on new data directories (the replace operation)."""
        gone = self.peer_identities.forget_absent(conf.ids)
        if gone:
            self.log.info("{node}: forgot the identities of {peers}, removed from the "
                          "configuration", node=self.node_id, peers=",".join(gone))

    def status_view(self) -> NodeStatus:
        core = self.core.status()
        leader = self.members.get(core.leader_id) if core.leader_id is not None else None
        return NodeStatus(
            core=core,
            applied_index=core.last_applied,
            http_url=self.members[self.node_id].public_url,
            leader_http_url=leader.public_url if leader is not None else None,
            pending_proposals=len(self._proposals),
            pending_reads=len(self._reads),
            counters=tuple(self.counters.items()),
            transport=tuple(self.transport.stats.items()) if self.transport is not None else None,
            snapshot_transfers=tuple(self.transfers.stats.items()),
            storage=tuple(getattr(self.storage, "stats", {}).items()),
            fatal_error=str(self._dead.value) if self._dead is not None else None,
            ready=self.is_ready(),
            node_uuid=self.identity.uuid if self.identity is not None else None,
            caught_up=self.identity.caught_up if self.identity is not None else True,
            identity_refusals=self._active_refusals(),
            peer_identities=(
                self.peer_identities.view(p for p in core.configuration.ids if p != self.node_id)
                if self.peer_identities is not None and core.configuration is not None else ()),
        )

    def status(self) -> Dict[str, Any]:
        return self.status_view().to_json()

    # ------------------------------------------------------------ the driver

    def _schedule(self) -> None:
        if self._process_call is None and self._dead is None and self.running:
            self._process_call = self.reactor.callLater(0, self._process)

    def _process(self) -> None:
        self._process_call = None
        try:
            self.executor.drain()
            if self.core.config_index != self._config_index:
                self._use_configuration()
            if self.identity is not None and not self.identity.caught_up:
                self._check_caught_up()
            core = self.core
            if self._behind_binding and (
                    core.role != LEADER or core.commit_index >= core.config_index):
                self._release_behind_binding()
        except Exception:
            self._fatal(Failure())

    def _use_configuration(self) -> None:
        """The latest configuration in the log changed (it is in force at once,
        dissertation 4.1): talk to its members, and know where their HTTP APIs are."""
        self._config_index = self.core.config_index
        conf = self.core.configuration
        if self.peer_identities is not None:
            self.peer_identities.use_configuration(conf)
        peers = {}
        for m in conf.members:
            member = member_of(m)
            if member is None:
                return  # a configuration without addresses (ids only): keep the peers
            peers[m.id] = (member.host, member.port)
            if m.id not in self.members:
                self.members[m.id] = member
        set_peers = getattr(self.transport, "set_peers", None)
        if set_peers is not None:
            try:
                set_peers(peers)
            except ConfigError as e:
                # A member this node cannot address (an id longer than its datagram
                # budget): the rest of the cluster still works; say what to fix.
                self.log.error("{node}: cannot talk to the configuration's members: "
                               "{error}", node=self.node_id, error=e)
        self.log.info("{node}: configuration at index {index}: voters {voters}, "
                      "learners {learners}", node=self.node_id, index=self._config_index,
                      voters=",".join(conf.voters), learners=",".join(conf.learners) or "none")

    # The executor's callables, in the order it calls them.

    def _send_messages(self, messages: Any) -> None:
        send = self.transport.send
        for message in messages:
            if type(message) is InstallSnapshot:
                self._start_snapshot_transfer(message)
            else:
                send(message)
        self.counters["messages_sent"] += len(messages)

    def _install_snapshot(self, image: SnapshotImage) -> None:
        """A leader's snapshot, durably: the image file, the state machine restored to it
        (a crash after this is reconciled by ``_recover``), the log compacted behind it."""
        meta = image.meta
        if self.snapshots is not None:
            self.snapshots.save(meta, image.data)
        self.state_machine.restore(meta.index, meta.term, image.data)
        self.storage.compact(meta)
        if self.peer_identities is not None and meta.configuration is not None:
            self._forget_removed(meta.configuration)
        self.counters["snapshots_installed"] += 1
        self.log.info(
            "{node}: installed snapshot at index {index} from {leader}",
            node=self.node_id, index=meta.index, leader=self.core.leader_id,
        )

    def _save(self, hard_state: Any, entries: Any) -> None:
        self.storage.save(hard_state, entries)
        self.counters["fsync_batches"] += 1
        self.counters["entries_persisted"] += len(entries)

    def _apply(self, rd: Any) -> list:
        """Apply the batch in one state-machine transaction; collect the answers it
        settles (they are handed out after ``advance``, in ``_release``)."""
        self.counters["readies"] += 1
        outcomes: list = []
        if self.peer_identities is not None:
            for entry in rd.committed_entries:
                if entry.kind == ENTRY_CONFIG:
                    self._forget_removed(Configuration.from_bytes(entry.data))
        if rd.committed_entries:
            results = self.state_machine.apply_batch(rd.committed_entries)
            self.counters["entries_applied"] += len(rd.committed_entries)
            for entry, result in zip(rd.committed_entries, results):
                pending = self._proposals.pop(entry.index, None)
                if pending is None:
                    continue
                term, d, timeout = pending
                _cancel(timeout)
                if entry.term == term and entry.kind != ENTRY_NOOP:
                    outcomes.append((d, (entry.index, result)))
                else:
                    outcomes.append((d, Failure(
                        ProposalDropped(
                            "another entry (term %d) was committed at index %d; the proposal "
                            "was not applied" % (entry.term, entry.index)
                        )
                    )))
        # Serve reads the batch made safe; fail the ones whose leader was lost.
        applied = rd.committed_entries[-1].index if rd.committed_entries else self.core.last_applied
        for ctx in rd.reads:
            pending = self._reads.pop(ctx, None)
            if pending is not None:
                _cancel(pending[1])
                outcomes.append((pending[0], applied))
        for ctx in rd.failed_reads:
            pending = self._reads.pop(ctx, None)
            if pending is not None:
                _cancel(pending[1])
                outcomes.append((pending[0], Failure(self._not_leader(self.core.leader_id))))
        if rd.soft_state is not None:
            self._role_changed(rd.soft_state, outcomes)
        return outcomes

    def _release(self, outcomes: list) -> None:
        # Only now: a callback may propose or read, which the core takes only after
        # advance() (see RaftCore.ready).
        for d, outcome in outcomes:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
        core = self.core
        if (
            self.snapshots is not None
            and not self._snapshot_running
            and core.last_applied - core.snapshot_index
            >= self.timing.snapshot_entries + self.timing.snapshot_trailing_entries
        ):
            self._snapshot()

    def _send_later(self, messages: Any) -> None:
        # Commit notices promise nothing and nobody waits for them, unlike the answers
        # to the writes this batch committed: send them on the next reactor turn, after
        # the reactor has written those answers to their sockets (one-connection write
        # p50 down 4-15% in bench/cluster_http.py, docs/benchmarks.md).
        self.reactor.callLater(0, self._send_notices, messages)

    def _send_notices(self, messages: Any) -> None:
        if self._dead is None and self.running:
            self._send_messages(messages)

    def _role_changed(self, soft: Any, outcomes: list) -> None:
        self.log.info(
            "{node}: {role} in term {term}, leader {leader}",
            node=self.node_id, role=soft.role, term=soft.term, leader=soft.leader_id,
        )
        if soft.leader_id is not None and soft.leader_id != self._last_leader:
            self.counters["leader_changes_seen"] += 1
            self._last_leader = soft.leader_id
        if self._handovers:
            self._handover_done(soft, outcomes)
        if soft.role != LEADER:
            self._binds = {}  # entries of a leadership that may be overwritten
        # Proposals of an earlier leadership may still be committed by the next leader
        # (or may have been overwritten): the outcome is unknown, and the client must
        # retry with its idempotency key.
        lost = [
            index for index, (term, _, _) in self._proposals.items()
            if soft.role != LEADER or term != soft.term
        ]
        for index in sorted(lost):
            term, d, timeout = self._proposals.pop(index)
            _cancel(timeout)
            outcomes.append((d, Failure(
                ProposalDropped(
                    "leadership (term %d) was lost before entry %d was committed; it may "
                    "still be committed by the next leader (outcome unknown)" % (term, index)
                )
            )))

    # ------------------------------------------------------------- snapshots

    def take_snapshot(self) -> SnapshotMeta:
        """Store the state machine's image durably, then compact the log behind it."""
        if self.snapshots is None:
            raise FatalNodeError("this node has no snapshot store")
        index, term, data = self.state_machine.snapshot()
        meta = self._snapshot_meta(index, term)
        self.snapshots.save(meta, data)
        self._snapshot_stored(meta, data)
        return meta

    def _snapshot_meta(self, index: int, term: int) -> SnapshotMeta:
        """A snapshot at ``index`` records the configuration in force there (a server
        that gets its log from it learns the members from it, dissertation 5.1)."""
        config_index, conf = self.core.config_at(index)
        return SnapshotMeta(index, term, configuration=conf, config_index=config_index)

    def _snapshot(self) -> None:
        begin = getattr(self.state_machine, "begin_snapshot", None)
        if begin is None or self._run_in_thread is None:
            self.take_snapshot()
            return
        # Reading and fsyncing a whole database takes longer than an election timeout
        # once it holds a few megabytes: pin a consistent image here, and read and
        # store it in a worker thread while this thread goes on applying entries.  The
        # log is compacted only once the file is durable.
        index, term, read = begin()
        meta = self._snapshot_meta(index, term)
        store = self.snapshots
        self._snapshot_running = True

        def work() -> bytes:
            data = read()
            store.write(meta, data)
            return data

        def stored(data: bytes) -> None:
            self._snapshot_running = False
            if self._dead is None and self.running:
                store.remember(meta, data)
                self._snapshot_stored(meta, data)

        def failed(failure: Failure) -> None:
            self._snapshot_running = False
            if self._dead is None and self.running:
                self._fatal(failure)

        self._run_in_thread(work).addCallbacks(stored, failed).addErrback(self._fatal)

    def _snapshot_stored(self, meta: SnapshotMeta, data: bytes) -> None:
        self.counters["snapshots_taken"] += 1
        upto = min(meta.index, self.core.last_applied) - self.timing.snapshot_trailing_entries
        if upto > self.core.snapshot_index:
            self.storage.compact(self.core.compact(upto))
        self.log.info(
            "{node}: snapshot at index {index} ({size} bytes); log starts after {first}",
            node=self.node_id, index=meta.index, size=len(data),
            first=self.core.snapshot_index,
        )

    def _start_snapshot_transfer(self, message: InstallSnapshot) -> None:
        started = self.transfers.stats["sent"]
        meta = self.transfers.start(message)
        if meta is None:
            raise FatalNodeError(
                "a follower needs a snapshot at index %d or later but none is stored"
                % message.last_included_index
            )
        if self.transfers.stats["sent"] > started:
            self.log.info(
                "{node}: sending snapshot at index {index} to {peer}",
                node=self.node_id, index=meta.index, peer=message.receiver,
            )

    def _send_direct(self, message: Any) -> None:
        self.transport.send(message)

    # -------------------------------------------------------------- failures

    def _not_leader(self, leader_id: Optional[str],
                    transferring_to: Optional[str] = None) -> NotLeader:
        member = self.members.get(leader_id) if leader_id is not None else None
        if member is None:
            return NotLeader(leader_id, None, transferring_to=transferring_to)
        return NotLeader(leader_id, member.http_url, member.public_url)

    def _proposal_timed_out(self, index: int) -> None:
        pending = self._proposals.pop(index, None)
        if pending is not None:
            pending[1].errback(
                CommitTimeout(
                    "entry %d was not committed within %gs; it may still be (outcome unknown)"
                    % (index, self.timing.proposal_timeout_seconds)
                )
            )

    def _read_timed_out(self, ctx: Hashable) -> None:
        pending = self._reads.pop(ctx, None)
        if pending is not None:
            pending[0].errback(
                ReadTimeout(
                    "leadership could not be confirmed within %gs"
                    % (self.timing.read_timeout_seconds,)
                )
            )

    def _fail_everything(self, read_error: Exception, write_error: Exception) -> None:
        waiting, self._behind_binding = self._behind_binding, []
        for d, _, timeout in waiting:
            _cancel(timeout)
            d.errback(write_error)
        proposals, self._proposals = self._proposals, {}
        for _, d, timeout in proposals.values():
            _cancel(timeout)
            d.errback(write_error)
        reads, self._reads = self._reads, {}
        for d, timeout in reads.values():
            _cancel(timeout)
            d.errback(read_error)
        handovers, self._handovers = self._handovers, []
        for _, _, d, timeout in handovers:
            _cancel(timeout)
            d.errback(read_error)

    def _fatal(self, failure: Failure) -> None:
        self._dead = failure
        self.log.failure(
            "{node}: fatal error; the node stops taking part to keep its promises",
            failure, node=self.node_id,
        )
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self._fail_everything(
            FatalNodeError(str(failure.value)),
            FatalNodeError(
                "the node stopped after a fatal error (%s); this write may still be "
                "committed by the other nodes (outcome unknown)" % (failure.value,),
                definite=False,
            ),
        )
        if self._on_fatal is not None:
            self._on_fatal(failure)


def _cancel(call: Any) -> None:
    if call is not None and call.active():
        call.cancel()


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d

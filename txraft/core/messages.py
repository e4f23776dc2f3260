"""Raft's values: log entries, hard state and the RPC messages, named as in the paper.

Every value is a frozen ``attrs`` class so it can be shared between the core, the
simulator and the wire codec without defensive copies.  Raft is run as message passing
(UDP), so each request and each response is its own message carrying its ``term``, its
``sender`` and its ``receiver``; nothing waits for a reply.  Boolean fields are
keyword-only: ``RequestVoteResponse(..., vote_granted=True)``, never a bare ``True``.

Three families:

- ``Message``: what the Raft core takes in ``RaftCore.step`` and puts in ``Ready``;
- ``SnapshotChunk`` and ``SnapshotChunkAck``: how the runtime's snapshot transfer
  (``txraft.runtime.transfer``) carries an ``InstallSnapshot`` and its image over
  datagrams; the core never sees them;
- ``WIRE_TYPES``: what crosses the network (``txraft.runtime.codec``).  An
  ``InstallSnapshot`` never does as such: the transfer chunks it.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import attrs

from txraft.core.config import Configuration

# Kinds of log entry.  A NOOP is what a new leader appends at once (paper section 8,
# Figure 8): committing it commits every earlier entry and lets ReadIndex start.  A
# CONFIG entry's data is a ``Configuration.to_bytes()``: every server uses the latest one
# in its log from the moment it is appended (dissertation section 4.1).
ENTRY_NORMAL = 0
ENTRY_NOOP = 1
ENTRY_CONFIG = 2
ENTRY_KINDS = (ENTRY_NORMAL, ENTRY_NOOP, ENTRY_CONFIG)


@attrs.frozen(slots=True)
class Entry:
    """One log entry: its position, the term it was created in and its opaque payload."""

    index: int
    term: int
    data: bytes = b""
    kind: int = ENTRY_NORMAL


@attrs.frozen(slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent (Figure 2)."""

    term: int = 0
    voted_for: Optional[str] = None


@attrs.frozen(slots=True)
class SnapshotMeta:
    """The last entry a snapshot covers; the log starts right after it.

    ``configuration`` is the latest configuration at or before ``index`` (the snapshot
    replaces the entries that held it, dissertation section 5.1); None only for snapshots
    written before configurations were logged.  It takes no part in equality.
    """

    index: int = 0
    term: int = 0
    configuration: Optional[Configuration] = attrs.field(default=None, eq=False)
    #: The index of the entry that held ``configuration`` (0: the founding one).
    config_index: int = attrs.field(default=0, eq=False)


@attrs.frozen(slots=True)
class RequestVote:
    """RequestVote RPC (Figure 2); with ``pre_vote`` it is the PreVote probe (section 9.6).

    A pre-vote carries the term the candidate *would* use, without having adopted it.
    ``transfer``: the candidate campaigns because the leader handed it the leadership
    (TimeoutNow, dissertation section 3.10), so a voter that heard from that leader
    recently votes anyway instead of ignoring it (section 4.2.3's lease check).
    """

    term: int
    sender: str
    receiver: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = attrs.field(default=False, kw_only=True)
    transfer: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen(slots=True)
class RequestVoteResponse:
    term: int
    sender: str
    receiver: str
    vote_granted: bool = attrs.field(kw_only=True)
    pre_vote: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen(slots=True)
class AppendEntries:
    """AppendEntries RPC (Figure 2), also the heartbeat.

    ``read_seq`` is echoed by the response; a majority echoing a value proves the leader
    was still the leader after every ReadIndex request numbered up to it (section 6.4).
    """

    term: int
    sender: str
    receiver: str
    prev_log_index: int
    prev_log_term: int
    entries: Tuple[Entry, ...] = ()
    leader_commit: int = 0
    read_seq: int = 0


@attrs.frozen(slots=True)
class AppendEntriesResponse:
    """Answer to one AppendEntries.

    On success ``match_index`` is ``prev_log_index + len(entries)`` of the request: what the
    follower now provably shares with the leader.  On failure ``rejected_index`` is the
    request's ``prev_log_index`` and ``conflict_term``/``conflict_index`` are the follower's
    hint (conflicting term and the first index it holds of that term, or term 0 and its
    ``last_log_index + 1`` when its log is too short), so the leader can skip a whole term
    per round trip.
    """

    term: int
    sender: str
    receiver: str
    success: bool = attrs.field(kw_only=True)
    match_index: int = 0
    rejected_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0
    read_seq: int = 0


@attrs.frozen(slots=True)
class InstallSnapshot:
    """InstallSnapshot RPC (Figure 13), whole: install the leader's snapshot at
    ``last_included_index``/``last_included_term``.

    The leader's core sends it without the image (``data`` is None): the runtime's
    snapshot transfer reads the image from its snapshot store, carries it in
    ``SnapshotChunk`` datagrams and, once every byte has arrived, delivers this message to
    the follower's core with ``data`` set to the image.  The core only ever takes a
    whole snapshot: a chunk given to ``RaftCore.step`` is refused.  ``data`` is opaque to
    the core and takes no part in equality.
    """

    term: int
    sender: str
    receiver: str
    last_included_index: int
    last_included_term: int
    read_seq: int = 0
    data: Any = attrs.field(default=None, eq=False, repr=False)
    #: The configuration the snapshot holds (set with ``data``, by the transfer).
    configuration: Optional[Configuration] = attrs.field(default=None, eq=False)
    #: The index of the entry that held ``configuration`` (0: the founding one).
    config_index: int = attrs.field(default=0, eq=False)


@attrs.frozen(slots=True)
class InstallSnapshotResponse:
    """The follower's core installed (or already held) the snapshot at
    ``last_included_index``; ``success`` false answers a leader of an older term."""

    term: int
    sender: str
    receiver: str
    last_included_index: int
    success: bool = attrs.field(default=True, kw_only=True)
    read_seq: int = 0


@attrs.frozen(slots=True)
class SnapshotChunk:
    """One datagram's worth of a snapshot image, from ``offset``; ``done`` on the last.

    The transfer's own message (``txraft.runtime.transfer``), never the core's.
    ``read_seq`` is the ``InstallSnapshot``'s, handed back to the follower's core with it.
    """

    term: int
    sender: str
    receiver: str
    last_included_index: int
    last_included_term: int
    offset: int
    data: bytes
    done: bool = attrs.field(kw_only=True)
    read_seq: int = 0


@attrs.frozen(slots=True)
class SnapshotChunkAck:
    """The follower holds the first ``next_offset`` bytes of the image at
    ``last_included_index`` (0: none of it, so the leader starts again from the first
    byte); ``done``: it holds all of it (or already held everything it covers)."""

    term: int
    sender: str
    receiver: str
    last_included_index: int
    next_offset: int
    done: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen(slots=True)
class TimeoutNow:
    """Leadership transfer (dissertation section 3.10): the leader, having brought
    ``receiver`` up to date, tells it to start an election at once (skipping PreVote)."""

    term: int
    sender: str
    receiver: str


@attrs.frozen(slots=True)
class SnapshotStatus:
    """A local input (never on the wire): how the runtime's transfer of a snapshot to
    ``sender`` went, reported to the leader's core (etcd's ``ReportSnapshot``).

    ``receiver`` is the leader itself.  ``finished`` with ``ok``: every byte was
    delivered; ``finished`` without ``ok``: the transfer failed; not ``finished``: it is
    still moving (a chunk was acknowledged), so the core does not give up on it.
    """

    term: int
    sender: str
    receiver: str
    finished: bool = attrs.field(kw_only=True)
    ok: bool = attrs.field(default=True, kw_only=True)


#: What ``RaftCore.step`` takes and ``Ready`` carries.
Message = Union[
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    SnapshotStatus,
]

MESSAGE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    SnapshotStatus,
)

#: What crosses the network (an InstallSnapshot goes as SnapshotChunks).
WireMessage = Union[
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshotResponse,
    TimeoutNow,
    SnapshotChunk,
    SnapshotChunkAck,
]

WIRE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshotResponse,
    TimeoutNow,
    SnapshotChunk,
    SnapshotChunkAck,
)

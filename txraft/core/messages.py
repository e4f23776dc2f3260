"""Raft's values: log entries, hard state and the RPC messages, named as in the paper.

Every value is a frozen ``attrs`` class so it can be shared between the core, the
simulator and the wire codec without defensive copies.  Raft is run as message passing
(UDP), so each request and each response is its own message carrying its ``term``, its
``sender`` and its ``receiver``; nothing waits for a reply.
"""

from __future__ import annotations

from typing import Optional, Tuple

import attrs

# Kinds of log entry.  A NOOP is what a new leader appends at once (paper section 8,
# Figure 8): committing it commits every earlier entry and lets ReadIndex start.
ENTRY_NORMAL = 0
ENTRY_NOOP = 1
ENTRY_KINDS = (ENTRY_NORMAL, ENTRY_NOOP)


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
    """The last entry a snapshot covers; the log starts right after it."""

    index: int = 0
    term: int = 0


@attrs.frozen(slots=True)
class RequestVote:
    """RequestVote RPC (Figure 2); with ``pre_vote`` it is the PreVote probe (section 9.6).

    A pre-vote carries the term the candidate *would* use, without having adopted it.
    """

    term: int
    sender: str
    receiver: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False


@attrs.frozen(slots=True)
class RequestVoteResponse:
    term: int
    sender: str
    receiver: str
    vote_granted: bool
    pre_vote: bool = False


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
    success: bool
    match_index: int = 0
    rejected_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0
    read_seq: int = 0


@attrs.frozen(slots=True)
class InstallSnapshot:
    """InstallSnapshot RPC (Figure 13): one chunk of the leader's snapshot.

    The core sends it with empty ``data`` and ``offset`` 0; the node runtime fills in and
    chunks the state machine's snapshot bytes.
    """

    term: int
    sender: str
    receiver: str
    last_included_index: int
    last_included_term: int
    offset: int = 0
    data: bytes = b""
    done: bool = True
    read_seq: int = 0


@attrs.frozen(slots=True)
class InstallSnapshotResponse:
    term: int
    sender: str
    receiver: str
    last_included_index: int
    success: bool = True
    next_offset: int = 0
    read_seq: int = 0


MESSAGE_TYPES = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
)

"""The boundaries of txraft, as zope interfaces (after hashicorp/raft's FSM/LogStore/Transport).

The Raft core depends on none of these: it is a pure state machine.  The node runtime
(``txraft.runtime.node``) joins the core to a storage, a transport and an application state
machine through these interfaces; tests check implementers with ``verifyObject``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IStateMachine(Interface):
    """The replicated application: deterministic, durable, applied exactly once.

    ``apply_batch`` receives committed entries in log order (including NOOP entries, which
    only advance the applied index) and must apply them all and record the index of the
    last one **in the same durable transaction**, so that after a crash every committed
    entry is applied exactly once.
    """

    def applied_index():
        """Return the index of the last applied entry, as stored durably (0 when empty)."""

    def applied_term():
        """Return the term of that entry (0 when empty), stored with it."""

    def apply_batch(entries):
        """Apply ``entries`` (a sequence of ``txraft.core.messages.Entry``) atomically.

        Returns a list with one result per entry (``None`` for NOOP entries).  A result is
        whatever the application wants to hand back to the proposer.  An entry whose
        command is invalid must produce an error result, never an exception: every
        replica must reach the same state.
        """

    def snapshot():
        """Return ``(index, term, data)``: a consistent image of the state as bytes."""

    def restore(index, term, data):
        """Replace the whole state with a snapshot image taken at ``index``/``term``."""

    def close():
        """Release files and connections."""


class ILogStorage(Interface):
    """Durable Raft hard state and log (one write-ahead log; group commit)."""

    def load():
        """Return ``(hard_state, snapshot_meta, entries)`` as last made durable."""

    def save(hard_state, entries):
        """Make ``hard_state`` (or ``None`` when unchanged) and ``entries`` durable.

        Entries replace any stored entries at the same or a higher index (a follower's
        conflicting suffix).  One fsync covers the whole call; when it returns, every
        promise it records survives ``kill -9`` and power loss.
        """

    def compact(snapshot_meta):
        """Forget entries up to ``snapshot_meta.index`` (a durable snapshot covers them)."""

    def close():
        """Release files."""


class ITransport(Interface):
    """Carries Raft messages to peers: best effort, unordered, may duplicate."""

    def send(message):
        """Queue ``message`` for ``message.receiver``; never raises for network reasons."""

    stats = Attribute("A mapping of counter name to value (sent, received, dropped_*)")


class IPeerIdentityStore(Interface):
    """Where a node keeps the uuid it first heard each peer present
    (``txraft.runtime.trust``)."""

    def load():
        """Return ``{peer_id: uuid as 32 hex digits}`` as last saved (empty at first)."""

    def save(records):
        """Replace every record with ``records`` (same form); durable when it returns."""


class IRaftNode(Interface):
    """What an application's HTTP layer needs from the local Raft node.

    Errors come from ``txraft.errors``: ``NotLeader`` (definite: nothing was appended),
    ``ProposalDropped`` and ``CommitTimeout`` (the outcome is unknown), ``ReadTimeout``.
    """

    node_id = Attribute("This node's id (str)")
    state_machine = Attribute("The local IStateMachine, for reads after a barrier")

    def propose(data):
        """Replicate ``data`` (bytes) as one log entry.

        Returns a Deferred that fires with ``(index, result)`` once the entry is applied
        on this node, where ``result`` is what the state machine's ``apply_batch``
        returned for it.  Fails with ``NotLeader`` at once on a non-leader.
        """

    def read_barrier():
        """Return a Deferred that fires (with the applied index) once this node's state
        machine reflects every write committed before the call (ReadIndex, section 6.4).
        Fails with ``NotLeader`` on a non-leader and ``ReadTimeout`` when the leader cannot
        confirm its leadership in time."""

    def leader():
        """Return ``(leader_id, leader_http_url)``; either may be ``None``."""

    def is_leader():
        """True when this node is the leader and has heard from a quorum recently."""

    def is_ready():
        """True when a leader is known, this node has applied what it knows committed,
        and no peer refuses its data directory's identity."""

    def stale_read_refusal():
        """None when this node may answer reads from its own copy
        (``?consistency=stale``); else why not, in one line (its peers refuse its data
        directory's identity, or that directory never caught up with a leader)."""

    def status_view():
        """A ``txraft.runtime.status.NodeStatus``: role, term, leader, indexes, per-peer
        progress, counters (what ``/metrics`` reads)."""

    def status():
        """``status_view().to_json()``: the JSON document of ``GET /raft/status``."""

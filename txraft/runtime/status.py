"""A node's status as one typed value: what ``/raft/status``, ``/metrics`` and the tools read.

``RaftNode.status_view()`` builds it from the core's read-only ``CoreStatus`` and the
node's own counters; ``to_json()`` is the document of ``GET /raft/status``.  Readers use
the fields, never string keys of a dict, so a renamed field is an error where it is read
instead of a metric that silently disappears.  Pure: no Twisted.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import attrs

from txraft.core.raft import CoreStatus

Counters = Tuple[Tuple[str, int], ...]


@attrs.frozen
class NodeStatus:
    """One node's status; counters as ``(name, value)`` pairs in the node's order."""

    core: CoreStatus
    applied_index: int
    http_url: Optional[str] = None
    leader_http_url: Optional[str] = None
    pending_proposals: int = 0
    pending_reads: int = 0
    counters: Counters = ()
    #: The transport's counters, or None for a node without a transport.
    transport: Optional[Counters] = None
    snapshot_transfers: Counters = ()
    #: Why the node stopped, once a fatal error stopped it.
    fatal_error: Optional[str] = None
    #: What ``GET /ready`` answers (``IRaftNode.is_ready``).
    ready: bool = False

    def not_ready_reason(self) -> str:
        """Why ``ready`` is false, in one line for ``/ready``."""
        core = self.core
        if self.fatal_error is not None:
            return "the node stopped after a fatal error (see /raft/status)"
        if core.leader_id is None:
            return "no leader known"
        wanted = max(core.commit_index, core.leader_commit)
        return (
            "behind the leader: applied %d of the %d entries it has committed (catching "
            "up; if this stays, the node may have lost its data: see /raft/status)"
            % (self.applied_index, wanted)
        )

    def to_json(self) -> Dict[str, Any]:
        """The document of ``GET /raft/status``."""
        out = self.core.to_json()
        out["leader_http_url"] = self.leader_http_url
        out["http_url"] = self.http_url
        out["applied_index"] = self.applied_index
        out["pending_proposals"] = self.pending_proposals
        out["pending_reads"] = self.pending_reads
        out["ready"] = self.ready
        out["counters"] = dict(self.counters)
        if self.transport is not None:
            out["transport"] = dict(self.transport)
        out["snapshot_transfers"] = dict(self.snapshot_transfers)
        if self.fatal_error is not None:
            out["fatal_error"] = self.fatal_error
        return out

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

#: Where an operator learns to replace a node that lost its data directory.
REPLACE_DOC = "docs/operations.md#replace-a-node-that-lost-its-disk"


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
    #: The log storage's counters (``FileLogStorage.stats``); empty for others.
    storage: Counters = ()
    #: Why the node stopped, once a fatal error stopped it.
    fatal_error: Optional[str] = None
    #: What ``GET /ready`` answers (``IRaftNode.is_ready``).
    ready: bool = False
    #: This data directory's uuid (hex), or None for a node without an identity.
    node_uuid: Optional[str] = None
    #: Whether this data directory has caught up with a leader since it was created.
    caught_up: bool = True
    #: Peers refusing this node's identity now: ``(peer id, uuid it expects or None)``.
    identity_refusals: Tuple[Tuple[str, Optional[str]], ...] = ()
    #: What this node knows of its peers' identities (``txraft.runtime.trust``).
    peer_identities: Tuple[Any, ...] = ()

    def identity_refusal(self) -> Optional[str]:
        """The one line saying that the cluster knows this node's id by another data
        directory, or None."""
        if not self.identity_refusals:
            return None
        peers = ", ".join(
            "%s expects %s" % (peer, expected or "another") for peer, expected
            in self.identity_refusals)
        return ("this data directory (uuid %s) is not the one the cluster knows as %s (%s): "
                "it lost its data; replace it: %s"
                % (self.node_uuid, self.core.id, peers, REPLACE_DOC))

    def stale_read_refusal(self) -> Optional[str]:
        """Why reads from this node's own copy (``?consistency=stale``) are refused, or
        None."""
        refusal = self.identity_refusal()
        if refusal is not None:
            return refusal
        if not self.caught_up:
            core = self.core
            return (
                "this data directory (uuid %s) has not caught up with a leader since it was "
                "created (applied %d of the %d entries the leader last said it had "
                "committed): its copy may be missing data; read without "
                "?consistency=stale, or retry once /ready answers 200"
                % (self.node_uuid, self.applied_index, max(core.commit_index, core.leader_commit))
            )
        return None

    def not_ready_reason(self) -> str:
        """Why ``ready`` is false, in one line for ``/ready``."""
        core = self.core
        if self.fatal_error is not None:
            return "the node stopped after a fatal error (see /raft/status)"
        refusal = self.identity_refusal()
        if refusal is not None:
            return refusal
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
        out["storage"] = dict(self.storage)
        if self.fatal_error is not None:
            out["fatal_error"] = self.fatal_error
        out["node_uuid"] = self.node_uuid
        out["identity"] = {
            "uuid": self.node_uuid,
            "caught_up": self.caught_up,
            "refused_by": {peer: expected for peer, expected in self.identity_refusals},
            "problem": self.identity_refusal(),
        }
        out["peer_identities"] = {p.peer: p.to_json() for p in self.peer_identities}
        return out

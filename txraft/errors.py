"""Errors the node runtime hands to applications and clients.

Each one says whether the outcome of the operation is known, because a client that
retries must know whether it may have been applied already.
"""

from __future__ import annotations

from typing import Optional


class RaftError(Exception):
    """Base of every txraft error an application may see."""

    #: True when the operation certainly had no effect.
    definite = True


class NotLeader(RaftError):
    """This node is not the leader; ``leader_id``/``leader_url`` name the one it knows of.

    Raised before anything was appended, so the operation certainly had no effect.
    """

    def __init__(
        self,
        leader_id: Optional[str] = None,
        leader_url: Optional[str] = None,
        leader_public_url: Optional[str] = None,
        transferring_to: Optional[str] = None,
    ):
        self.leader_id = leader_id
        #: This node still leads, but is handing the leadership to that voter.
        self.transferring_to = transferring_to
        #: Where other nodes reach the leader's HTTP API (for forwarding).
        self.leader_url = leader_url
        #: Where clients reach it (for redirects); the same unless advertised otherwise.
        self.leader_public_url = leader_public_url or leader_url
        if leader_id is None:
            msg = "this node is not the leader and no leader is known"
            if transferring_to is not None:
                msg = ("this node is handing its leadership to %s and takes no writes "
                       "meanwhile; retry shortly" % (transferring_to,))
        else:
            msg = "this node is not the leader; the leader is %s" % (leader_id,)
            if leader_url:
                msg += " at %s" % (leader_url,)
        super().__init__(msg)


class ProposalDropped(RaftError):
    """The entry was appended but leadership was lost or another entry took its index.

    It may still have been committed by a later leader: the outcome is unknown.
    """

    definite = False


class CommitTimeout(RaftError):
    """The entry was not applied in time; it may still commit: the outcome is unknown."""

    definite = False


class Overloaded(RaftError):
    """Too many proposals or reads are waiting on this node; nothing was appended."""


class ReadTimeout(RaftError):
    """A linearizable read could not be confirmed in time (no effect)."""


class MembershipRefused(RaftError):
    """The leader will not make this configuration change now; nothing was appended.

    ``code`` is the core's (``txraft.core.raft.ChangeRefused``): ``unknown_member``,
    ``change_in_progress``, ``not_caught_up``, ``last_voter``, ``duplicate_member``, ...
    """

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(message)


class StorageCorrupted(RaftError):
    """Durable state is damaged somewhere other than a torn tail; the node must stop."""

    def __init__(self, path: str, offset: int, reason: str):
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__("%s: corrupt record at byte offset %d: %s" % (path, offset, reason))


class ConfigError(RaftError):
    """The node's configuration is wrong; the message is one line a person can act on."""


class TransferFailed(MembershipRefused):
    """A leadership transfer that was refused (nothing changed) or did not complete.

    ``code``: the core's refusal (``not_voter``, ``unknown_member``, ``no_target``,
    ``transfer_in_progress``), ``another_leader`` (an election made another voter the
    leader) or ``transfer_timeout`` (no new leader within the election timeout; the
    transfer was abandoned and this node still leads, or the cluster is electing).
    """

"""The errors every txraft HTTP answer can carry, and what Raft's errors mean in HTTP.

Errors are JSON, ``{"error": {"code", "message", "field"?}}`` (the error document of
``txraft.results``), with a status.  ``HTTPError`` is a ``Refusal`` that may carry
response headers (``Retry-After``, ``Allow``); any ``Refusal`` raised while answering, by
the web layer or by an application's validation, is rendered the same way.

``raft_error`` maps ``txraft.errors`` to answers: 503 ``no_leader``, 504
``commit_timeout`` (the outcome is unknown: a timeout, a dropped proposal, or any error
whose ``definite`` is false, such as the writes waiting when a node stops after a fatal
storage error), 503 ``read_timeout``, 503 ``overloaded``, 503 ``unavailable``.  ``NotLeader`` is not here: it is answered by forwarding the request
to the leader (``txraft.http.forwarding``).
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from txraft.results import Refusal
from txraft.errors import (
    CommitTimeout,
    MembershipRefused,
    Overloaded,
    ProposalDropped,
    RaftError,
    ReadTimeout,
)
from txraft.http.responses import json_response

RETRY_SHORTLY = ((b"Retry-After", b"1"),)


class HTTPError(Refusal):
    """An answer that is an error: raised anywhere in a handler, rendered as JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: Optional[str] = None,
        headers: Iterable[Tuple[bytes, bytes]] = (),
    ):
        super().__init__(status, code, message, field)
        self.headers = tuple(headers)


def render_error(request, error: Refusal) -> bytes:
    """Answer ``request`` with ``error``: its status, its document, its headers."""
    headers = error.headers if isinstance(error, HTTPError) else ()
    return json_response(request, error.status, error.document(), headers)


def no_leader(message: str = "no leader is known; retry shortly") -> HTTPError:
    return HTTPError(503, "no_leader", message, headers=RETRY_SHORTLY)


def commit_timeout(message: Optional[str] = None) -> HTTPError:
    return HTTPError(
        504,
        "commit_timeout",
        message
        or "the write was not confirmed in time; the outcome is unknown (it may still be "
        "applied): retry with the same Idempotency-Key or read before retrying",
    )


def not_found(path: bytes) -> HTTPError:
    return HTTPError(404, "not_found", "no such path: %s" % (path.decode("utf-8", "replace"),))


def method_not_allowed(allowed: Iterable[str]) -> HTTPError:
    """A 405 with the ``Allow`` header listing ``allowed``."""
    allow = ", ".join(sorted(set(allowed)))
    return HTTPError(
        405,
        "method_not_allowed",
        "method not allowed here; allowed: %s" % (allow,),
        headers=((b"Allow", allow.encode("ascii")),),
    )


def internal_error() -> HTTPError:
    return HTTPError(500, "internal_error", "internal error; see the node's log")


#: HTTP status of each refusal of a membership change (``MembershipRefused.code``).
MEMBERSHIP_STATUS = {
    "unknown_member": 404,
    "change_in_progress": 409,
    "not_caught_up": 409,
    "duplicate_member": 409,
    "duplicate_address": 409,
    "already_voter": 409,
    "config_changed": 409,
    "last_voter": 422,
    "invalid_change": 422,
    "leader_not_ready": 503,
    # Leadership transfer (``TransferFailed``).
    "not_voter": 409,
    "no_target": 409,
    "transfer_in_progress": 409,
    "another_leader": 409,
    "transfer_timeout": 504,
}


def raft_error(error: RaftError) -> HTTPError:
    """The answer to a ``RaftError`` other than ``NotLeader``."""
    if isinstance(error, (CommitTimeout, ProposalDropped)):
        return commit_timeout()
    if not error.definite:
        return commit_timeout(
            "%s: retry with the same Idempotency-Key or read before retrying" % (error,))
    if isinstance(error, ReadTimeout):
        return HTTPError(503, "read_timeout",
                         "the leader could not confirm its leadership in time; retry shortly",
                         headers=RETRY_SHORTLY)
    if isinstance(error, MembershipRefused):
        status = MEMBERSHIP_STATUS.get(error.code, 409)
        return HTTPError(status, error.code, error.message,
                         headers=RETRY_SHORTLY if status in (503, 504) else ())
    if isinstance(error, Overloaded):
        return HTTPError(503, "overloaded", "this node has too much waiting work; retry "
                         "shortly", headers=RETRY_SHORTLY)
    return HTTPError(503, "unavailable", str(error), headers=RETRY_SHORTLY)

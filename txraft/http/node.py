"""The node as an application's routes see it: reads and writes through Raft over HTTP.

``RaftHTTP`` gives a route what every replicated service needs and nothing application
specific: request bodies under the node's limit (the serving site's, ``txraft.http.site``,
unless one is given); ``?consistency=stale`` local reads (with
``X-Raft-Applied-Index``) and linearizable reads through ``IRaftNode.read_barrier()`` by
default; writes through ``IRaftNode.propose()``; ``txraft.errors`` turned into answers,
``NotLeader`` by forwarding to the leader (``txraft.http.forwarding``); and
``answer_error``, the one error handler that Klein and the fast path both use.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txraft.results import Refusal
from txraft.errors import NotLeader, RaftError
from txraft.http.errors import (RETRY_SHORTLY, HTTPError, internal_error, no_leader,
                                raft_error, render_error)
from txraft.http.forwarding import DEFAULT_FORWARD_TIMEOUT_SECONDS, Forwarder
from txraft.http.requests import is_stale, read_body, read_json

log = Logger()


class RaftHTTP:
    """The per-node HTTP plumbing an application's routes are built on.

    ``node`` provides ``IRaftNode``; ``clock`` provides ``IReactorTime`` (forwarding
    timeouts, the leader's time in commands); ``http_client`` is treq-like, for
    forwarding (see ``Forwarder``); ``body_limit``, when not None, replaces the limit of
    the site serving each request (``txraft.http.requests.body_limit``).
    """

    def __init__(
        self,
        node,
        clock,
        http_client,
        body_limit: Optional[int] = None,
        forward_timeout_seconds: float = DEFAULT_FORWARD_TIMEOUT_SECONDS,
    ):
        self.node = node
        self.clock = clock
        self.body_limit = body_limit
        self.forwarder = Forwarder(node.node_id, clock, http_client, body_limit,
                                   forward_timeout_seconds)

    # -- request bodies -------------------------------------------------------------------

    def body(self, request) -> bytes:
        """The raw request body, or 413 when it is over the limit."""
        return read_body(request, self.body_limit)

    def json_body(self, request) -> Any:
        """The request body parsed as JSON: 413 too large, 415 not JSON, 400 malformed."""
        return read_json(request, self.body_limit)

    # -- reads and writes through Raft ---------------------------------------------------

    def read(self, request, render: Callable[[], Any], stale: Optional[bool] = None):
        """Answer a read with ``render()``: locally when stale, else after a read barrier.

        A non-leader forwards the request (or redirects); the answer carries
        ``X-Raft-Applied-Index``, the state it reflects.  A stale read is refused (503
        ``stale_read_refused``) on a node whose copy cannot be trusted
        (``IRaftNode.stale_read_refusal``: it lost its data, or never caught up).
        """
        if stale is None:
            stale = is_stale(request)
        if stale:
            refusal = self.node.stale_read_refusal()
            if refusal is not None:
                raise HTTPError(503, "stale_read_refused", refusal, headers=RETRY_SHORTLY)
            request.setHeader(
                b"X-Raft-Applied-Index", b"%d" % (self.node.state_machine.applied_index(),)
            )
            return render()
        d = defer.maybeDeferred(self.node.read_barrier)

        def barrier_passed(applied_index):
            request.setHeader(b"X-Raft-Applied-Index", b"%d" % (applied_index,))
            return render()

        d.addCallbacks(barrier_passed, self.raft_failure, errbackArgs=(request,))
        return d

    def write(self, request, data: bytes, render: Callable[[int, Any], Any]):
        """Propose ``data``; answer with ``render(index, result)`` once it is applied.

        A non-leader forwards the original request to the leader (or redirects).
        """
        d = defer.maybeDeferred(self.node.propose, data)
        d.addCallbacks(_unpack_proposal, self.raft_failure, callbackArgs=(render,),
                       errbackArgs=(request,))
        return d

    def raft_failure(self, failure, request):
        """Turn a ``txraft.errors`` failure into an answer (forwarding on ``NotLeader``);
        any other failure passes on."""
        error = failure.value
        if isinstance(error, NotLeader):
            if error.transferring_to is not None:
                raise no_leader(str(error))
            return self.forwarder.forward(
                request, error.leader_id, error.leader_url, error.leader_public_url
            )
        if isinstance(error, RaftError):
            raise raft_error(error)
        return failure

    # -- errors ---------------------------------------------------------------------------

    def answer_error(self, request, failure):
        """The answer to a handler's failure: Klein's error handler (after its router's
        own errors) and the fast path's, so that both answer every error alike.

        A ``Refusal`` (``HTTPError`` included) is rendered; a ``RaftError`` becomes its
        answer, ``NotLeader`` a forward whose own errors are answered here too; anything
        else is a bug: logged, and a JSON 500.
        """
        if failure.check(RaftError):
            try:
                forwarded = self.raft_failure(failure, request)
            except Exception:
                failure = Failure()
            else:
                if isinstance(forwarded, defer.Deferred):
                    return forwarded.addErrback(self._forward_failed, request)
                return forwarded
        if failure.check(Refusal):
            return render_error(request, failure.value)
        log.failure("unhandled error answering {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return render_error(request, internal_error())

    def _forward_failed(self, failure, request):
        if failure.check(defer.CancelledError):
            # Our client left and the forward was cancelled: nobody to answer.
            return failure
        return self.answer_error(request, failure)


def _unpack_proposal(index_and_result, render):
    index, result = index_and_result
    return render(index, result)

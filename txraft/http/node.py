"""The node as an application's routes see it: reads and writes through Raft over HTTP.

``RaftHTTP`` gives a route what every replicated service needs and nothing application
specific: request bodies under the node's limit; ``?consistency=stale`` local reads (with
``X-Raft-Applied-Index``) and linearizable reads through ``IRaftNode.read_barrier()`` by
default; writes through ``IRaftNode.propose()``; ``txraft.errors`` turned into answers,
``NotLeader`` by forwarding to the leader (``txraft.http.forwarding``); the status,
health, readiness and metrics routes; and the JSON error handlers, for Klein and for
routes served without it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from txraft.apps.results import Refusal, error_document
from txraft.errors import NotLeader, RaftError
from txraft.http.errors import (RETRY_SHORTLY, HTTPError, internal_error, method_not_allowed,
                                not_found, raft_error, render_error)
from txraft.http.forwarding import DEFAULT_FORWARD_TIMEOUT_SECONDS, Forwarder
from txraft.http.metrics import PROMETHEUS_TYPE, prometheus_text
from txraft.http.requests import DEFAULT_BODY_LIMIT, is_stale, read_body, read_json
from txraft.http.responses import json_response

log = Logger()


class RaftHTTP:
    """The per-node HTTP plumbing an application's Klein routes are built on.

    ``node`` provides ``IRaftNode``; ``clock`` provides ``IReactorTime`` (forwarding
    timeouts, the leader's time in commands); ``http_client`` is treq-like, for
    forwarding (see ``Forwarder``).
    """

    def __init__(
        self,
        node,
        clock,
        http_client,
        body_limit: int = DEFAULT_BODY_LIMIT,
        forward_timeout_seconds: float = DEFAULT_FORWARD_TIMEOUT_SECONDS,
    ):
        self.node = node
        self.clock = clock
        self.body_limit = body_limit
        self.forwarder = Forwarder(node.node_id, clock, http_client, body_limit,
                                   forward_timeout_seconds)
        self._handlers = None

    # -- installation -------------------------------------------------------------------

    def install(self, app) -> None:
        """Add the common routes and the JSON error handlers to the Klein ``app``.

        Call it after the application's own ``handle_errors`` registrations, if any: the
        catch-all 500 handler registered here must come last.
        """
        app.route("/raft/status", methods=["GET"], endpoint="raft_status")(self.raft_status)
        app.route("/health", methods=["GET"], endpoint="raft_health")(self.health)
        app.route("/ready", methods=["GET"], endpoint="raft_ready")(self.ready)
        app.route("/metrics", methods=["GET"], endpoint="raft_metrics")(self.metrics)
        for exception_types, handler in self.error_handlers():
            app.handle_errors(*exception_types)(handler)

    def error_handlers(self, routing: bool = True):
        """``(exception types, handler)`` in the order they are tried: what ``install``
        registers with Klein and what ``serve`` runs, so both answer errors alike.

        ``routing=False`` leaves out werkzeug's routing errors, which only Klein's
        router raises (and so werkzeug is imported only where Klein is used).
        """
        handlers = [((Refusal,), self._handle_refusal)]
        if routing:
            from werkzeug.exceptions import HTTPException, MethodNotAllowed

            handlers.append(((MethodNotAllowed,), self._handle_method_not_allowed))
            handlers.append(((HTTPException,), self._handle_routing_error))
        handlers.append(((RaftError,), self._handle_raft_error))
        handlers.append(((Exception,), self._handle_unexpected))
        return tuple(handlers)

    # -- routes served without Klein -----------------------------------------------------

    def serve(self, request, handler: Callable[..., Any], *args: Any):
        """Answer ``request`` with ``handler(request, *args)`` as a Klein route would.

        For an application's hot routes, matched by the application itself: Klein's
        routing (werkzeug's matcher, its Deferred chain and two ``notifyFinish`` per
        request) costs about as much CPU as the rest of a write on the leader.  The
        handler returns bytes, ``None`` or a Deferred of them, or raises; errors go
        through ``error_handlers()`` in order, each handler's own failure to the next
        one, as Klein does; a client that disconnects cancels a pending answer.
        Returns ``NOT_DONE_YET`` (the answer is written here, now or later).
        """
        if self._handlers is None:
            # Handlers served here never raise werkzeug's routing errors.
            self._handlers = self.error_handlers(routing=False)
        gone = [False]
        try:
            result = handler(request, *args)
            recovered = False
        except Exception:
            # A Deferred from an error handler (a forward) already carries the rest of
            # the error handlers, as in Klein.
            result = self._recover(Failure(), request, 0, gone)
            recovered = True
        if isinstance(result, defer.Deferred):

            def finished(reason):
                gone[0] = True
                if isinstance(reason, Failure):
                    result.cancel()

            request.notifyFinish().addBoth(finished)
            if not recovered:
                result.addErrback(self._recover, request, 0, gone)
            result.addCallback(_answer, request, gone)
            result.addErrback(_log_unanswered, request)
        else:
            _answer(result, request, gone)
        return NOT_DONE_YET

    def _recover(self, failure, request, first: int, gone):
        """Klein's error processing: the first matching handler from ``first`` on."""
        if gone[0]:
            if not failure.check(defer.CancelledError):
                log.failure("error after the client left: {method} {uri}", failure,
                            method=request.method, uri=request.uri)
            return _NO_ANSWER
        handlers = self._handlers
        for position in range(first, len(handlers)):
            exception_types, handler = handlers[position]
            if not failure.check(*exception_types):
                continue
            try:
                result = handler(request, failure)
            except Exception:
                failure = Failure()
                continue
            if isinstance(result, defer.Deferred):
                return result.addErrback(self._recover, request, position + 1, gone)
            return result
        request.processingFailed(failure)
        return _NO_ANSWER

    def raft_status(self, request):
        return json_response(request, 200, self.node.status())

    def health(self, request):
        return json_response(request, 200, {"status": "ok"})

    def ready(self, request):
        if self.node.is_ready():
            return json_response(request, 200, {"ready": True})
        return render_error(request, HTTPError(
            503, "not_ready", "no leader known or this node is still catching up",
            headers=RETRY_SHORTLY))

    def metrics(self, request):
        """This node's own status for Prometheus: never forwarded, as each node reports
        itself."""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", PROMETHEUS_TYPE)
        return prometheus_text(self.node.status())

    # -- error handlers -----------------------------------------------------------------

    def _handle_refusal(self, request, failure):
        return render_error(request, failure.value)

    def _handle_method_not_allowed(self, request, failure):
        return render_error(request, method_not_allowed(failure.value.valid_methods or ()))

    def _handle_routing_error(self, request, failure):
        error = failure.value
        code = error.code or 500
        if code == 404:
            return render_error(request, not_found(request.path))
        return json_response(
            request, code, error_document("http_error", error.description or error.name)
        )

    def _handle_raft_error(self, request, failure):
        return self.raft_failure(failure, request)

    def _handle_unexpected(self, request, failure):
        log.failure("unhandled error answering {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return render_error(request, internal_error())

    # -- request bodies and parameters ---------------------------------------------------

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
        ``X-Raft-Applied-Index``, the state it reflects.
        """
        if stale is None:
            stale = is_stale(request)
        if stale:
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
            return self.forwarder.forward(
                request, error.leader_id, error.leader_url, error.leader_public_url
            )
        if isinstance(error, RaftError):
            raise raft_error(error)
        return failure


_NO_ANSWER = object()


def _answer(result, request, gone) -> None:
    """Write what a handler returned and finish, unless the client has left."""
    if result is _NO_ANSWER or gone[0]:
        return
    if isinstance(result, str):
        result = result.encode("utf-8")
    if result:
        # A length instead of Klein's chunked framing: one write, no terminating chunk.
        request.setHeader(b"Content-Length", b"%d" % (len(result),))
        request.write(result)
    request.finish()


def _log_unanswered(failure, request) -> None:
    log.failure("could not write the answer to {method} {uri}", failure,
                method=request.method, uri=request.uri)


def _unpack_proposal(index_and_result, render):
    index, result = index_and_result
    return render(index, result)

"""HTTP plumbing shared by every txraft application (Klein): errors, leader routing, reads.

An application is a state machine plus an HTTP root.  This module gives the HTTP root what
every replicated service needs and nothing application specific:

* JSON errors ``{"error": {"code", "message", "field"?}}`` for everything, including
  routing failures (Klein's HTML 404/405 never leak);
* request bodies with a size limit (413), a JSON content type (415) and well-formed JSON
  (400);
* the mapping of ``txraft.errors`` to statuses (503 ``no_leader``, 504 ``commit_timeout``,
  503 ``read_timeout``);
* leader routing: a node that cannot serve a request itself (a write, or a linearizable
  read, on a follower) forwards it to the leader with the injected treq-like client and
  relays the answer, or answers ``307`` when the client asked ``?redirect=true``.  A
  forwarded request is marked with ``X-Raft-Forwarded-By`` and is never forwarded again,
  so a request cannot loop while nodes disagree about who leads;
* ``?consistency=stale`` local reads (with ``X-Raft-Applied-Index``) and linearizable reads
  through ``IRaftNode.read_barrier()`` by default;
* ``GET /raft/status``, ``GET /health`` and ``GET /ready``;
* ``GET /metrics``: the node's status in the Prometheus text format (0.0.4), built only
  when asked for.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterable, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from urllib.parse import unquote_to_bytes
from zope.interface import implementer

from txraft.apps import idempotency
from txraft.apps.results import Refusal, Result, error_document
from txraft.errors import (CommitTimeout, NotLeader, Overloaded, ProposalDropped, RaftError,
                           ReadTimeout)

log = Logger()

DEFAULT_BODY_LIMIT = 64 * 1024
DEFAULT_FORWARD_TIMEOUT_SECONDS = 5.0

JSON_TYPE = b"application/json"
FORWARDED_BY = b"X-Raft-Forwarded-By"

#: Request headers a forwarded request carries to the leader (besides the marker).
FORWARDED_REQUEST_HEADERS = (
    b"content-type",
    b"accept",
    b"idempotency-key",
    b"if-match",
    b"if-none-match",
)
#: Response headers relayed from the leader's answer (plus every ``x-raft-*``).
RELAYED_RESPONSE_HEADERS = frozenset(
    (
        b"content-type",
        b"location",
        b"etag",
        b"retry-after",
        b"allow",
        b"idempotent-replayed",
    )
)

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (one encoding, no round trips)."""
    return _encode_json(value).encode("utf-8")


@attrs.frozen
class Application:
    """What the node runtime needs to host an application.

    ``make_state_machine(data_dir)`` opens the durable ``IStateMachine``;
    ``make_resource(node, clock, http_client)`` builds the HTTP root ``IResource`` given
    the local ``IRaftNode``, an ``IReactorTime`` and a treq-like client (for forwarding).
    """

    name: str
    make_state_machine: Callable[[str], Any]
    make_resource: Callable[[Any, Any, Any], Any]


class HTTPError(Refusal):
    """An answer that is an error: raised anywhere in a handler, rendered as JSON (as is
    any ``Refusal``); it may carry response headers."""

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


def json_response(request, status: int, value: Any, headers: Iterable[Tuple[bytes, bytes]] = ()) -> bytes:
    """Set status, JSON content type and ``headers`` on ``request``; return the body."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    for name, header_value in headers:
        request.setHeader(name, header_value)
    return dumps(value)


def render_error(request, error: Refusal) -> bytes:
    headers = error.headers if isinstance(error, HTTPError) else ()
    return json_response(request, error.status, error.document(), headers)


def render_result(request, result: Result,
                  headers: Iterable[Tuple[bytes, bytes]] = ()) -> bytes:
    """Answer with ``result``: its status and JSON body, ``X-Raft-Index`` (the entry that
    produced it first) and ``Idempotent-Replayed: true`` on a replay."""
    request.setHeader(b"X-Raft-Index", b"%d" % (result.index,))
    if result.replayed:
        request.setHeader(b"Idempotent-Replayed", b"true")
    if result.body is None:
        request.setResponseCode(result.status)
        return b""
    return json_response(request, result.status, result.body, headers)


def no_leader(message: str = "no leader is known; retry shortly") -> HTTPError:
    return HTTPError(503, "no_leader", message, headers=((b"Retry-After", b"1"),))


def commit_timeout(message: Optional[str] = None) -> HTTPError:
    return HTTPError(
        504,
        "commit_timeout",
        message
        or "the write was not confirmed in time; the outcome is unknown (it may still be "
        "applied): retry with the same Idempotency-Key or read before retrying",
    )


def method_not_allowed(allowed: Iterable[str]) -> HTTPError:
    """A 405 with the ``Allow`` header listing ``allowed``."""
    allow = ", ".join(sorted(set(allowed)))
    return HTTPError(
        405,
        "method_not_allowed",
        "method not allowed here; allowed: %s" % (allow,),
        headers=((b"Allow", allow.encode("ascii")),),
    )


def query_arg(request, name: bytes) -> Optional[str]:
    """The first value of query parameter ``name`` as text, or ``None`` when absent."""
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(
            400, "malformed_query", "query parameter is not UTF-8", field=name.decode("ascii")
        )


def request_key(request) -> Optional[str]:
    """The request's ``Idempotency-Key``, None without one; 422 ``invalid_value`` when
    it is not a valid key."""
    value = request.getHeader(idempotency.HEADER)
    if value is None:
        return None
    key = value.decode("latin-1")
    problem = idempotency.key_problem(key)
    if problem is not None:
        raise HTTPError(422, "invalid_value", problem, field=idempotency.FIELD)
    return key


def is_json_type(content_type: Optional[bytes]) -> bool:
    """``application/json`` or any ``application/*+json`` (e.g. merge-patch), any params."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON_TYPE or (media.startswith(b"application/") and media.endswith(b"+json"))


def _reject_constant(name):
    raise ValueError("%s is not JSON" % (name,))


class RaftHTTP:
    """The per-node HTTP plumbing an application's Klein routes are built on.

    ``node`` provides ``IRaftNode``; ``clock`` provides ``IReactorTime`` (forwarding
    timeouts); ``http_client`` is treq-like (``request(method, url, headers=, data=,
    allow_redirects=)`` whose responses have ``code``, ``headers`` and ``content()``).
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
        self.http_client = http_client
        self.body_limit = body_limit
        self.forward_timeout_seconds = forward_timeout_seconds
        self._node_id_bytes = str(node.node_id).encode("utf-8")
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
        return json_response(
            request,
            503,
            error_document("not_ready", "no leader known or this node is still catching up"),
            ((b"Retry-After", b"1"),),
        )

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
            return render_error(request, HTTPError(404, "not_found", "no such path: %s" % (
                request.path.decode("utf-8", "replace"),)))
        return json_response(
            request, code, error_document("http_error", error.description or error.name)
        )

    def _handle_raft_error(self, request, failure):
        return self.raft_failure(failure, request)

    def _handle_unexpected(self, request, failure):
        log.failure("unhandled error answering {method} {uri}", failure,
                    method=request.method, uri=request.uri)
        return json_response(
            request, 500, error_document("internal_error", "internal error; see the node's log")
        )

    # -- request bodies and parameters ---------------------------------------------------

    def body(self, request) -> bytes:
        """The raw request body, or 413 when it is over the limit."""
        length = request.getHeader(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise HTTPError(400, "bad_request", "malformed Content-Length")
            if declared > self.body_limit:
                raise self._too_large()
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        data = content.read(self.body_limit + 1)
        if len(data) > self.body_limit:
            raise self._too_large()
        return data

    def _too_large(self) -> HTTPError:
        return HTTPError(
            413, "body_too_large", "request body is over the limit of %d bytes" % (self.body_limit,)
        )

    def json_body(self, request) -> Any:
        """The request body parsed as JSON: 413 too large, 415 not JSON, 400 malformed."""
        data = self.body(request)
        if not is_json_type(request.getHeader(b"content-type")):
            raise HTTPError(
                415,
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)",
            )
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            raise HTTPError(400, "malformed_json", "request body is not valid JSON: %s" % (e,))

    def is_stale(self, request) -> bool:
        """True for ``?consistency=stale``; linearizable (the default) otherwise."""
        value = query_arg(request, b"consistency")
        if value is None or value == "linearizable":
            return False
        if value == "stale":
            return True
        raise HTTPError(
            422, "invalid_value", "consistency must be 'linearizable' or 'stale'", field="consistency"
        )

    # -- reads and writes through Raft ---------------------------------------------------

    def read(self, request, render: Callable[[], Any], stale: Optional[bool] = None):
        """Answer a read with ``render()``: locally when stale, else after a read barrier.

        A non-leader forwards the request (or redirects); the answer carries
        ``X-Raft-Applied-Index``, the state it reflects.
        """
        if stale is None:
            stale = self.is_stale(request)
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
        """Turn a ``txraft.errors`` failure into an answer (forwarding on ``NotLeader``)."""
        error = failure.value
        if isinstance(error, NotLeader):
            return self.forward(
                request, error.leader_id, error.leader_url, error.leader_public_url
            )
        if isinstance(error, (CommitTimeout, ProposalDropped)):
            raise commit_timeout()
        if isinstance(error, ReadTimeout):
            raise HTTPError(
                503,
                "read_timeout",
                "the leader could not confirm its leadership in time; retry shortly",
                headers=((b"Retry-After", b"1"),),
            )
        if isinstance(error, Overloaded):
            raise HTTPError(503, "overloaded", "this node has too much waiting work; retry "
                            "shortly", headers=((b"Retry-After", b"1"),))
        if isinstance(error, RaftError):
            raise HTTPError(503, "unavailable", str(error), headers=((b"Retry-After", b"1"),))
        return failure

    # -- leader routing ------------------------------------------------------------------

    def forward(
        self,
        request,
        leader_id: Optional[str],
        leader_url: Optional[str],
        public_url: Optional[str] = None,
    ):
        """Serve ``request`` on the leader: 307 with ``?redirect=true``, else proxy it.

        ``leader_url`` is where this node reaches the leader; ``public_url`` (default: the
        same) is where a client does, and is what a redirect names.
        """
        if leader_url is None or leader_id is None or leader_id == self.node.node_id:
            raise no_leader()
        location_bytes = leader_url.rstrip("/").encode("utf-8") + request.uri
        location = location_bytes.decode("latin-1")
        if request.args.get(b"redirect") == [b"true"]:
            public_bytes = (public_url or leader_url).rstrip("/").encode("utf-8") + request.uri
            public = public_bytes.decode("latin-1")
            return json_response(
                request,
                307,
                {"leader_id": leader_id, "location": public},
                ((b"Location", public_bytes), (b"X-Raft-Leader", leader_id.encode("utf-8"))),
            )
        if request.requestHeaders.hasHeader(FORWARDED_BY):
            # The node that sent us this request thought we lead; we think someone else
            # does.  Leadership is moving: answering beats bouncing the request around.
            raise no_leader("leadership is changing (a forwarded request reached a follower); "
                            "retry shortly")
        headers = {}
        request_headers = request.requestHeaders
        for name in FORWARDED_REQUEST_HEADERS:
            values = request_headers.getRawHeaders(name)
            if values:
                headers[name] = values
        headers[FORWARDED_BY] = [self._node_id_bytes]
        method = request.method
        body = self.body(request)
        inner = self.http_client.request(
            method.decode("ascii"),
            location,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        )
        inner.addCallback(_with_content)
        inner.addTimeout(self.forward_timeout_seconds, self.clock)
        gone = []

        def client_gone(outer):
            # Klein cancels the answer when our client disconnects; stop forwarding.
            gone.append(True)
            inner.cancel()

        outer = defer.Deferred(client_gone)
        inner.addCallbacks(
            self._relay,
            self._forward_failed,
            callbackArgs=(request, leader_id),
            errbackArgs=(request, leader_id, method, gone),
        )
        inner.chainDeferred(outer)
        return outer

    def _relay(self, answer, request, leader_id):
        response, content = answer
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            lower = name.lower()
            if lower in RELAYED_RESPONSE_HEADERS or lower.startswith(b"x-raft-"):
                request.responseHeaders.setRawHeaders(name, values)
        if not request.responseHeaders.hasHeader(b"X-Raft-Leader"):
            request.setHeader(b"X-Raft-Leader", leader_id.encode("utf-8"))
        return content

    def _forward_failed(self, failure, request, leader_id, method, gone=()):
        if gone:
            # Nobody waits for an answer; a cancellation is what Klein expects (and
            # does not log).
            raise defer.CancelledError()
        # Imported here: only a node that forwards loads the HTTP client.
        from twisted.web.client import (RequestGenerationFailed, RequestNotSent,
                                        RequestTransmissionFailed)

        if failure.check(ConnectError, DNSLookupError, RequestNotSent, RequestGenerationFailed,
                         RequestTransmissionFailed):
            # The leader never received the whole request: certainly no effect.
            raise no_leader("the leader %s is unreachable; retry shortly" % (leader_id,))
        if method in (b"GET", b"HEAD"):
            raise no_leader("the leader %s did not answer in time; retry shortly" % (leader_id,))
        raise commit_timeout(
            "the leader %s received the write but did not answer in time; the outcome is "
            "unknown (it may have been applied): retry with the same Idempotency-Key"
            % (leader_id,)
        )


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


def _with_content(response):
    d = response.content()
    d.addCallback(lambda content: (response, content))
    return d


# -- Prometheus metrics --------------------------------------------------------------------

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Gauges read as they are from ``status()``: (key, metric, help).
STATUS_GAUGES = (
    ("term", "txraft_term", "The node's current term."),
    ("commit_index", "txraft_commit_index", "The highest log index known to be committed."),
    ("applied_index", "txraft_applied_index",
     "The highest log index applied to the state machine."),
    ("last_log_index", "txraft_last_log_index", "The index of the last entry of the log."),
    ("last_log_term", "txraft_last_log_term", "The term of the last entry of the log."),
    ("snapshot_index", "txraft_snapshot_index",
     "The last index the log was compacted to (held by a snapshot)."),
    ("pending_proposals", "txraft_pending_proposals",
     "Writes accepted by this leader and waiting to be applied."),
    ("pending_reads", "txraft_pending_reads",
     "Linearizable reads waiting for this leader to confirm its leadership."),
)

#: A leader's view of each peer (``status()["progress"]``): (key, metric, help).
PEER_GAUGES = (
    ("match_index", "txraft_peer_match_index",
     "Leader only: the highest index known to be replicated on the peer."),
    ("next_index", "txraft_peer_next_index", "Leader only: the next index to send the peer."),
    ("inflight", "txraft_peer_inflight_messages",
     "Leader only: AppendEntries sent to the peer and not yet acknowledged."),
    ("recent_active", "txraft_peer_recent_active",
     "Leader only: 1 when the peer was heard from within the last election timeout."),
)

#: ``status()["counters"]``, as ``txraft_node_<name>_total``.
NODE_COUNTERS = {
    "readies": "Batches of work (persist, send, apply) the node ran.",
    "fsync_batches": "Log writes made durable, one fsync each.",
    "entries_persisted": "Log entries written to disk.",
    "entries_applied": "Log entries applied to the state machine.",
    "messages_sent": "Raft messages handed to the transport.",
    "messages_received": "Raft messages received from the transport.",
    "proposals": "Writes accepted while leading.",
    "reads": "Linearizable reads accepted while leading.",
    "snapshots_taken": "Snapshots of the state machine stored.",
    "snapshots_installed": "Snapshots received from a leader and installed.",
    "leader_changes_seen": "Times this node learned of a leader other than the last one "
                           "it knew (itself included).",
}

#: ``status()["transport"]`` stats with a metric of their own (the drops are labelled).
TRANSPORT_COUNTERS = {
    "received": ("txraft_transport_datagrams_received_total",
                 "Datagrams received on the Raft port."),
    "sent": ("txraft_transport_datagrams_sent_total", "Datagrams written to the Raft port."),
    "delivered": ("txraft_transport_messages_delivered_total",
                  "Messages received whole and handed to the node."),
    "messages_sent": ("txraft_transport_messages_sent_total",
                      "Messages written whole, in one datagram or in fragments."),
    "messages_fragmented": ("txraft_transport_messages_fragmented_total",
                            "Messages sent in more than one datagram."),
    "fragments_buffered": ("txraft_transport_fragments_buffered_total",
                           "Fragments received and kept until their message is whole."),
    "reassembled": ("txraft_transport_messages_reassembled_total",
                    "Messages rebuilt from fragments."),
    "dropped_incomplete": ("txraft_transport_incomplete_messages_dropped_total",
                           "Partly received messages discarded (timeout, eviction, size)."),
    "deliver_errors": ("txraft_transport_deliver_errors_total",
                       "Messages the node failed to handle (a bug; logged)."),
    "resolve_errors": ("txraft_transport_resolve_errors_total",
                       "Failed look-ups of a peer's host name."),
    "address_changes": ("txraft_transport_peer_address_changes_total",
                        "Times a peer was found at a new address."),
}
INBOUND_DROPPED = ("txraft_transport_inbound_datagrams_dropped_total",
                   "Datagrams received and dropped, by reason.")
OUTBOUND_MESSAGES_DROPPED = ("txraft_transport_outbound_messages_dropped_total",
                             "Messages to send that were not sent, by reason.")
OUTBOUND_DATAGRAMS_DROPPED = ("txraft_transport_outbound_datagrams_dropped_total",
                              "Datagrams to send that were not written, by reason.")
#: Outbound drops counted per datagram (the others are per message).
DATAGRAM_DROPS = frozenset(("dropped_fault_loss", "send_errors"))
DROP_REASONS = {"internal_errors": "internal_error", "send_errors": "send_error",
                "send_too_large": "too_large"}

#: ``status()["snapshot_transfers"]`` stats.
SNAPSHOT_COUNTERS = {
    "sent": ("txraft_snapshot_transfers_started_total",
             "Snapshot transfers this node began sending, as leader."),
    "chunks_sent": ("txraft_snapshot_chunks_sent_total", "Snapshot chunks sent."),
    "chunks_received": ("txraft_snapshot_chunks_received_total",
                        "Snapshot chunks received and kept."),
    "installed": ("txraft_snapshot_transfers_received_total",
                  "Whole snapshot images received from a leader."),
}

_NOT_IN_NAMES = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_text(status: dict) -> bytes:
    """``status`` (``IRaftNode.status()``) in the Prometheus text exposition format 0.0.4.

    Every family is written with its ``# HELP`` and ``# TYPE`` once; what ``status`` does
    not hold (a follower has no ``progress``, a node without a transport no
    ``transport``) is left out, and a counter this module has no name for still appears,
    as ``txraft_<group>_<name>_total``.
    """
    # Imported here: only this function needs them, and only once a scraper asks.
    from txraft.core import (CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, PROBE, REPLICATE,
                             SNAPSHOT)
    from txraft.runtime.transport import INBOUND_DROPS

    out = _Exposition()
    out.add("txraft_info", "gauge", "Always 1; the labels name this node.",
            {"node_id": status.get("id")}, 1)
    role = status.get("role")
    for name in _states((FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER), role):
        out.add("txraft_role", "gauge", "1 for the node's role, 0 for the others.",
                {"role": name}, name == role)
    out.add("txraft_is_leader", "gauge", "1 when this node is the leader.", {}, role == LEADER)
    if "leader_id" in status:
        out.add("txraft_has_leader", "gauge", "1 when this node knows a leader.", {},
                status["leader_id"] is not None)
    out.add("txraft_fatal_error", "gauge",
            "1 once the node stopped after a fatal error (see /raft/status).", {},
            "fatal_error" in status)
    for key, name, help_text in STATUS_GAUGES:
        if key in status:
            out.add(name, "gauge", help_text, {}, status[key])
    if "voters" in status:
        out.add("txraft_voters", "gauge", "Voting members of the cluster.", {},
                len(status["voters"]))
    for peer, progress in sorted((status.get("progress") or {}).items()):
        labels = {"peer": peer}
        for key, name, help_text in PEER_GAUGES:
            out.add(name, "gauge", help_text, labels, progress[key])
        for state in _states((PROBE, REPLICATE, SNAPSHOT), progress["state"]):
            out.add("txraft_peer_state", "gauge",
                    "Leader only: 1 for how the leader replicates to the peer, 0 for the "
                    "other ways.", {"peer": peer, "state": state}, state == progress["state"])
    for key, value in (status.get("counters") or {}).items():
        out.add("txraft_node_%s_total" % (key,), "counter",
                NODE_COUNTERS.get(key, "Node counter %s." % (key,)), {}, value)
    for key, value in (status.get("transport") or {}).items():
        labels = {}
        if key in TRANSPORT_COUNTERS:
            name, help_text = TRANSPORT_COUNTERS[key]
        elif key in INBOUND_DROPS or key.startswith(("dropped_", "send_")):
            if key in INBOUND_DROPS:
                name, help_text = INBOUND_DROPPED
            elif key in DATAGRAM_DROPS:
                name, help_text = OUTBOUND_DATAGRAMS_DROPPED
            else:
                name, help_text = OUTBOUND_MESSAGES_DROPPED
            labels["reason"] = DROP_REASONS.get(key) or key.split("_", 1)[1]
        else:
            name, help_text = "txraft_transport_%s_total" % (key,), "Transport counter %s." % (
                key,)
        out.add(name, "counter", help_text, labels, value)
    for key, value in (status.get("snapshot_transfers") or {}).items():
        name, help_text = SNAPSHOT_COUNTERS.get(
            key, ("txraft_snapshot_transfer_%s_total" % (key,), "Snapshot transfer counter %s."
                  % (key,)))
        out.add(name, "counter", help_text, {}, value)
    return out.text()


def _states(known, current):
    """A state set's members: the known states, and the current one if it is not."""
    return known if current in known or current is None else known + (current,)


class _Exposition:
    """Families in the order first added, each with its samples."""

    def __init__(self):
        self.families = {}

    def add(self, name, kind, help_text, labels, value):
        if value is None:
            return
        name = _NOT_IN_NAMES.sub("_", name)
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = (kind, help_text, [])
        family[2].append((labels, value))

    def text(self) -> bytes:
        lines = []
        for name, (kind, help_text, samples) in self.families.items():
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append("# HELP %s %s" % (name, help_text))
            lines.append("# TYPE %s %s" % (name, kind))
            for labels, value in samples:
                if labels:
                    pairs = ",".join('%s="%s"' % (label, _label_value(text))
                                     for label, text in labels.items())
                    lines.append("%s{%s} %s" % (name, pairs, _sample_value(value)))
                else:
                    lines.append("%s %s" % (name, _sample_value(value)))
        lines.append("")
        return "\n".join(lines).encode("utf-8")


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value) -> str:
    if isinstance(value, int):  # bool included
        return "%d" % (value,)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# -- what happens before an application's routes -------------------------------------------


@implementer(IResource)
class RequestGuard:
    """Wraps an application's root so that requests the routing layer cannot even decode
    (a path or host that is not UTF-8 once percent-decoded) get a JSON 400 like every
    other error, instead of Klein's plain-text one."""

    isLeaf = True

    def __init__(self, app: IResource):
        self.app = app

    def getChildWithDefault(self, name, request):  # pragma: no cover - isLeaf
        return self

    def putChild(self, path, child):  # pragma: no cover - never used
        raise NotImplementedError("RequestGuard has no children")

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
            host = request.getHeader(b"host")
            if host is not None:
                host.decode("utf-8")
        except UnicodeDecodeError:
            return json_response(
                request,
                400,
                error_document("bad_request", "the request path or host is not UTF-8"),
            )
        return self.app.render(request)


class JSONRequest(Request):
    """A request that never parses form submissions: txraft applications speak JSON, and
    twisted.web answers a malformed multipart body with a bare HTML 400 before any
    resource sees it.  Such a body now reaches the application, which answers 415."""

    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

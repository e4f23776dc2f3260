"""The node's HTTP server: what one client may cost a node before any route runs.

twisted.web's ``Site`` stores a request body of any declared size (in a temporary file
above 100 kB) before a resource can look at it, keeps a connection for as long as a byte
arrives every minute, and takes every connection offered.  On a disk shared with the
Raft log, one upload can fill the volume, and a full disk stops the node.  ``NodeSite``
bounds all three with its ``HTTPLimits``:

* a body over ``body_bytes`` is answered 413 ``body_too_large`` as soon as that is known:
  at the end of the head for a ``Content-Length``, as the chunks arrive for a chunked
  body.  Nothing over the limit is stored, and the same limit is the one
  ``txraft.http.requests.read_body`` applies (``NodeRequest.body_limit``);
* a request head must be complete within ``header_timeout_seconds`` of the connection
  (or of the first byte of a later request on it), and the whole request, answer
  included, within ``request_timeout_seconds``: 408 ``request_timeout`` while the request
  is still arriving, 504 ``request_timeout`` ("outcome unknown") once a route is
  answering it;
* at most ``max_connections`` connections are served at once; one more is answered 503
  ``too_many_connections``.

A refusal is a whole HTTP answer with a JSON error document, then the connection is
closed.  A refusal before the request was received whole runs no route, so it proposes
nothing and reads nothing.  The answer is followed by a FIN at once, and what the client
still sends is read and dropped for up to ``LINGER_SECONDS``: closing a socket with unread
bytes resets it, and the reset can destroy the answer before the client reads it.
"""

from __future__ import annotations

from io import BytesIO

import attrs
from twisted.internet.protocol import Protocol
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from txraft.http.errors import RETRY_SHORTLY, HTTPError
from txraft.http.requests import DEFAULT_BODY_LIMIT, JSONRequest, too_large
from txraft.http.responses import JSON_TYPE, dumps

#: How long a refused connection is read (and what arrives dropped) before it is closed.
LINGER_SECONDS = 2.0

#: twisted.web keeps a body it was told is under this size in memory (see ``gotLength``).
_IN_MEMORY_BYTES = 100000


@attrs.frozen
class HTTPLimits:
    """What one client may cost the node (see the module docstring)."""

    body_bytes: int = DEFAULT_BODY_LIMIT
    header_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 60.0
    max_connections: int = 1024


def refusal(error: HTTPError) -> bytes:
    """``error`` as a whole HTTP/1.1 answer that closes the connection."""
    body = dumps(error.document())
    head = [b"HTTP/1.1 %d %s" % (error.status, RESPONSES.get(error.status, b"Error")),
            b"Content-Type: " + JSON_TYPE,
            b"Content-Length: %d" % (len(body),),
            b"Connection: close"]
    head.extend(name + b": " + value for name, value in error.headers)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _answer_and_close(transport, error: HTTPError, call_later):
    """Write ``error`` and close the connection (see the module docstring): returns the
    delayed call that closes it for good."""
    transport.write(refusal(error))
    transport.loseWriteConnection()
    return call_later(LINGER_SECONDS, transport.abortConnection)


def _cancel(call) -> None:
    if call is not None and call.active():
        call.cancel()


class NodeRequest(JSONRequest):
    """A request whose body is counted against the site's limit as it arrives."""

    #: The body limit of the site serving the request (``read_body`` applies it too).
    body_limit = DEFAULT_BODY_LIMIT
    _received = 0
    #: Answered by the request deadline: what the route writes later is dropped.
    timed_out = False

    def write(self, data):
        if not self.timed_out:
            super().write(data)

    def gotLength(self, length):
        channel = self.channel
        self.body_limit = limit = channel.site.limits.body_bytes
        if length is not None and length > limit:
            self.content = BytesIO()
            channel.refuse(too_large(limit))
            return
        if length is None and limit < _IN_MEMORY_BYTES:
            self.content = BytesIO()  # chunked: twisted.web would open a temporary file
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._received += len(data)
        if self._received > self.body_limit:
            channel.refuse(too_large(self.body_limit))
            return
        self.content.write(data)


class NodeChannel(HTTPChannel):
    """An ``HTTPChannel`` with the head and request deadlines of its site's limits, that
    can refuse a request by answering it and closing (``refuse``)."""

    #: True once a refusal was written: the rest of what the client sends is dropped.
    refused = False
    _head_call = None
    _request_call = None
    _linger_call = None

    def connectionMade(self):
        super().connectionMade()
        self.site.connection_made()
        self._start_deadlines()

    def _start_deadlines(self):
        limits = self.site.limits
        self._head_call = self.callLater(limits.header_timeout_seconds, self._head_late)
        self._request_call = self.callLater(limits.request_timeout_seconds,
                                            self._request_late)

    def _stop_deadlines(self):
        _cancel(self._head_call)
        _cancel(self._request_call)
        self._head_call = self._request_call = None

    def dataReceived(self, data):
        if self.refused:
            return
        if self._request_call is None and not self._handlingRequest:
            self._start_deadlines()  # the first byte of the next request on the connection
        super().dataReceived(data)

    def lineReceived(self, line):
        if not self.refused:
            super().lineReceived(line)

    def rawDataReceived(self, data):
        if not self.refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self):
        _cancel(self._head_call)
        self._head_call = None
        super().allHeadersReceived()

    def allContentReceived(self):
        if not self.refused:
            super().allContentReceived()

    def _send100Continue(self):
        if not self.refused:  # a body over the limit was refused: do not ask for it
            super()._send100Continue()

    def requestDone(self, request):
        self._stop_deadlines()
        if self.persistent and self._dataBuffer:
            # A pipelined request is already waiting: its time starts now.  Before the
            # call below, which may answer it (and call this again) at once.
            self._start_deadlines()
        super().requestDone(request)

    def _head_late(self):
        self._head_call = None
        self.refuse(HTTPError(408, "request_timeout",
                              "the request head did not arrive within %g s"
                              % (self.site.limits.header_timeout_seconds,)))

    def _request_late(self):
        self._request_call = None
        seconds = self.site.limits.request_timeout_seconds
        if not self._handlingRequest:
            self.refuse(HTTPError(408, "request_timeout",
                                  "the request did not arrive whole within %g s" % (seconds,)))
            return
        # A route is answering it: a write may have been proposed, and may still commit.
        request = self.requests[0]
        self.persistent = False  # finishing below closes the connection
        if request.startedWriting:
            self.loseConnection()  # too late for a status: the answer is cut short
            return
        error = HTTPError(504, "request_timeout",
                          "no answer within %g s; the outcome of a write is unknown (it may "
                          "still be applied): retry with the same Idempotency-Key or read "
                          "before retrying" % (seconds,))
        body = dumps(error.document())
        request.responseHeaders = Headers()
        request.setResponseCode(504)
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.write(body)
        request.timed_out = True  # the route's own answer, when it comes, is dropped
        request.finish()

    def refuse(self, error: HTTPError) -> None:
        """Answer ``error`` at once and close, dropping whatever else arrives."""
        if self.refused:
            return
        self.refused = True
        self._stop_deadlines()
        self.setTimeout(None)
        self._networkProducer.resumeProducing()  # keep reading (and dropping) until closed
        self._linger_call = _answer_and_close(self.transport, error, self.callLater)

    def connectionLost(self, reason):
        self._stop_deadlines()
        _cancel(self._linger_call)
        self.site.connection_lost()
        super().connectionLost(reason)


class _TurnedAway(Protocol):
    """A connection over ``max_connections``: answered 503 and closed."""

    def __init__(self, limit: int, call_later):
        self.limit = limit
        self.call_later = call_later
        self._linger_call = None

    def connectionMade(self):
        error = HTTPError(503, "too_many_connections",
                          "this node serves at most %d connections at once; retry shortly"
                          % (self.limit,), headers=RETRY_SHORTLY)
        self._linger_call = _answer_and_close(self.transport, error, self.call_later)

    def dataReceived(self, data):
        pass  # dropped: the answer is already written

    def connectionLost(self, reason):
        _cancel(self._linger_call)


class NodeSite(Site):
    """A ``Site`` that serves each connection within ``limits`` (an ``HTTPLimits``)."""

    protocol = NodeChannel
    requestFactory = NodeRequest

    def __init__(self, resource, limits: HTTPLimits = HTTPLimits(), **kwargs):
        super().__init__(resource, **kwargs)
        self.limits = limits
        #: Connections being served (turned-away ones not included).
        self.connections = 0

    def buildProtocol(self, addr):
        if self.connections >= self.limits.max_connections:
            return _TurnedAway(self.limits.max_connections, self.reactor.callLater)
        return super().buildProtocol(addr)

    def connection_made(self) -> None:
        self.connections += 1

    def connection_lost(self) -> None:
        self.connections -= 1

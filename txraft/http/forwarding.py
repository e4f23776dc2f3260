"""Leader routing: a node that cannot serve a request itself sends it to the leader.

A write, or a linearizable read, that reaches a follower is forwarded to the leader with
the injected treq-like client and the leader's answer is relayed, or answered with a
``307`` to the leader when the client asked ``?redirect=true`` (Raft dissertation §6.2).
A forwarded request is marked with ``X-Raft-Forwarded-By`` and is never forwarded again,
so a request cannot loop while nodes disagree about who leads.  A forward that fails
says whether the leader may have acted on it: 503 ``no_leader`` when it certainly did
not (it was never sent whole, or it was a read), 504 ``commit_timeout`` (outcome unknown)
for a write that may have reached it.  The URL forwarded (or redirected) to is the
leader's configured URL with the request's path and query put in their places
(``leader_location``), never the two strings joined: only the leader's scheme, host and
port can be reached, whatever the request's target.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError

from txraft.http.errors import commit_timeout, no_leader
from txraft.http.requests import read_body
from txraft.http.responses import json_response

DEFAULT_FORWARD_TIMEOUT_SECONDS = 5.0

FORWARDED_BY = b"X-Raft-Forwarded-By"

#: Request headers a forwarded request carries to the leader (besides the marker).
FORWARDED_REQUEST_HEADERS = (
    b"authorization",  # membership changes carry the cluster secret to the leader
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


class Forwarder:
    """Sends requests on to the leader for the node ``node_id``.

    ``clock`` provides ``IReactorTime`` (the forward's timeout); ``http_client`` is
    treq-like (``request(method, url, headers=, data=, allow_redirects=)`` whose
    responses have ``code``, ``headers`` and ``content()``); a forwarded body is read
    with ``body_limit`` (None: the limit of the site serving it).
    """

    def __init__(self, node_id: str, clock, http_client, body_limit: Optional[int],
                 timeout_seconds: float = DEFAULT_FORWARD_TIMEOUT_SECONDS):
        self.node_id = node_id
        self.clock = clock
        self.http_client = http_client
        self.body_limit = body_limit
        self.timeout_seconds = timeout_seconds
        self._node_id_bytes = str(node_id).encode("utf-8")

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
        if leader_url is None or leader_id is None or leader_id == self.node_id:
            raise no_leader()
        if request.args.get(b"redirect") == [b"true"]:
            public = leader_location(public_url or leader_url, request.uri)
            return json_response(
                request,
                307,
                {"leader_id": leader_id, "location": public},
                ((b"Location", public.encode("latin-1")),
                 (b"X-Raft-Leader", leader_id.encode("utf-8"))),
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
        body = read_body(request, self.body_limit)
        try:
            inner = self.http_client.request(
                method.decode("ascii"),
                leader_location(leader_url, request.uri),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except Exception as e:
            # Raised before a connection was even asked for: nothing reached the leader.
            raise no_leader("the request could not be sent to the leader %s (%s); retry "
                            "shortly" % (leader_id, e)) from e
        inner.addCallback(_with_content)
        inner.addTimeout(self.timeout_seconds, self.clock)
        gone = []

        def client_gone(outer):
            # Klein cancels the answer when our client disconnects; stop forwarding.
            gone.append(True)
            inner.cancel()

        outer = defer.Deferred(client_gone)
        inner.addCallbacks(
            _relay,
            _forward_failed,
            callbackArgs=(request, leader_id),
            errbackArgs=(leader_id, method, gone),
        )
        inner.chainDeferred(outer)
        return outer


def leader_location(leader_url: str, target: bytes) -> str:
    """The URL of ``target`` (the request's path and query) on the leader at
    ``leader_url``: its scheme, host and port, its path as a prefix of the target's."""
    base = urlsplit(leader_url)
    path, _, query = target.decode("latin-1").partition("?")
    if not path.startswith("/"):
        path = "/" + path  # a target no node serves (see requests.target_problem)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, query, ""))


def _with_content(response):
    d = response.content()
    d.addCallback(lambda content: (response, content))
    return d


def _relay(answer, request, leader_id):
    response, content = answer
    request.setResponseCode(response.code)
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in RELAYED_RESPONSE_HEADERS or lower.startswith(b"x-raft-"):
            request.responseHeaders.setRawHeaders(name, values)
    if not request.responseHeaders.hasHeader(b"X-Raft-Leader"):
        request.setHeader(b"X-Raft-Leader", leader_id.encode("utf-8"))
    return content


def _forward_failed(failure, leader_id, method, gone):
    if gone:
        # Nobody waits for an answer; a cancellation is what Klein expects (and does
        # not log).
        raise defer.CancelledError()
    # Imported here: only a node that forwards loads the HTTP client.
    from twisted.web.client import (RequestGenerationFailed, RequestNotSent,
                                    RequestTransmissionFailed)

    if failure.check(ConnectError, DNSLookupError, ConnectingCancelledError, RequestNotSent,
                     RequestGenerationFailed, RequestTransmissionFailed):
        # The leader never received the whole request: certainly no effect.  (Cancelled
        # while connecting: the forward timed out before a connection was made.)
        raise no_leader("the leader %s is unreachable; retry shortly" % (leader_id,))
    if method in (b"GET", b"HEAD"):
        raise no_leader("the leader %s did not answer in time; retry shortly" % (leader_id,))
    raise commit_timeout(
        "the leader %s received the write but did not answer in time; the outcome is "
        "unknown (it may have been applied): retry with the same Idempotency-Key"
        % (leader_id,)
    )

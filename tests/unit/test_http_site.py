"""The node's HTTP server over real sockets (``txraft.http.site``): body limits before
buffering, the head and request deadlines, the connection cap, request targets refused
before routing, and the ``twistd raftnode`` options that set the limits.  Each test
listens on 127.0.0.1 port 0 and talks raw HTTP/1.1 with a bounded wait."""

from __future__ import annotations

import json
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txraft.apps import kv_http
from txraft.http.requests import RequestGuard
from txraft.http.site import HTTPLimits, NodeSite
from txraft.plugins import raftnode

from tests.fakes import RecordingClient, kv_leader_and_follower


def serve(testcase, resource, limits: HTTPLimits) -> int:
    """Listen on 127.0.0.1 (a free port, returned) with the node's site until cleanup."""
    site = NodeSite(resource, limits=limits)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


class RawClient(Protocol):
    """Collects what the server sends; ``closed`` fires with it when the server closes."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()
        self.closed_after = None

    def connectionMade(self):
        self.started = time.monotonic()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed_after = time.monotonic() - self.started
        self.closed.callback(self.received)


@defer.inlineCallbacks
def connect(testcase, port):
    client = RawClient()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    testcase.addCleanup(lambda: client.transport.abortConnection())
    return client


@defer.inlineCallbacks
def until_closed(client, seconds: float):
    """What the server sent until it closed the connection; fails the test when it is
    still open after ``seconds``."""
    timer = reactor.callLater(seconds, client.closed.cancel)
    try:
        received = yield client.closed
    except defer.CancelledError:
        raise AssertionError("the connection is still open after %g s; received %r"
                             % (seconds, client.received)) from None
    timer.cancel()
    return received


def parse(answer: bytes):
    """``(status, headers, JSON body)`` of one HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", len(body)))
    return status, headers, json.loads(body[:length]) if body else None


@defer.inlineCallbacks
def refused(testcase, client, status: int, code: str, within: float = 3):
    """Check the server answers ``status`` with error ``code`` in JSON and closes the
    connection within ``within`` seconds; returns the answer's headers and document."""
    answer = yield until_closed(client, within)
    got_status, headers, body = parse(answer)
    testcase.assertEqual((got_status, body["error"]["code"]), (status, code))
    testcase.assertEqual(headers[b"content-type"], b"application/json")
    testcase.assertLess(client.closed_after, within)
    return headers, body


def pause(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def trickle(client, pieces, every: float):
    """Send ``pieces`` one every ``every`` seconds, until the server closes."""
    for piece in pieces:
        if client.closed_after is not None:
            return
        client.transport.write(piece)
        yield pause(every)


class Recorder(Resource):
    """Answers every request with its body's size, recording each request it is given;
    ``hang=True``: never answers."""

    isLeaf = True

    def __init__(self, hang: bool = False):
        super().__init__()
        self.seen = []
        self.hang = hang
        self.hung = []

    def render(self, request):
        body = request.content.read()
        self.seen.append((request.method, request.uri, body))
        if self.hang:
            self.hung.append(request)
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"bytes": len(body)}).encode()


LIMITS = HTTPLimits(body_bytes=1024, header_timeout_seconds=5, request_timeout_seconds=10,
                    max_connections=100)


class BodyLimitTests(TestCase):
    """Issue 13.1: a body over the limit is refused before it is stored."""

    timeout = 20

    def setUp(self):
        self.app = Recorder()
        self.port = serve(self, self.app, LIMITS)

    @defer.inlineCallbacks
    def test_declared_length_over_the_limit_answered_at_once(self):
        """A Content-Length of 50 MB with no body byte sent is answered 413
        body_too_large at once, as JSON, and the connection is closed; no route ran."""
        client = yield connect(self, self.port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Type: "
                               b"application/json\r\nContent-Length: 50000000\r\n\r\n")
        _, body = yield refused(self, client, 413, "body_too_large")
        self.assertIn("1024", body["error"]["message"])
        self.assertEqual(self.app.seen, [])

    @defer.inlineCallbacks
    def test_oversize_upload_cut_off_while_the_body_arrives(self):
        """A 40 MB upload whose body is already on its way gets its 413 (not a reset)
        before the client sent more than a sliver of it."""
        client = yield connect(self, self.port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000"
                               b"\r\n\r\n" + b"x" * 65536)
        yield refused(self, client, 413, "body_too_large")
        self.assertEqual(self.app.seen, [])

    @defer.inlineCallbacks
    def test_expect_continue_over_the_limit_is_not_invited(self):
        """``Expect: 100-continue`` with a body over the limit: the answer is the 413,
        never ``100 Continue`` (which would ask for the body)."""
        client = yield connect(self, self.port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                               b"Content-Length: 2000\r\n\r\n")
        answer = yield until_closed(client, 3)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    @defer.inlineCallbacks
    def test_chunked_body_cut_off_once_over_the_limit(self):
        """A chunked body is counted as it arrives: 413 once over the limit, before its
        end (the terminating chunk is never sent), and no route ran."""
        client = yield connect(self, self.port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.transport.write(b"200\r\n" + b"c" * 512 + b"\r\n")
        yield refused(self, client, 413, "body_too_large")
        self.assertEqual(self.app.seen, [])

    @defer.inlineCallbacks
    def test_bodies_at_the_limit_are_served(self):
        """A body of exactly the limit, by length or chunked, reaches the route whole."""
        client = yield connect(self, self.port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n"
                               + b"a" * 1024
                               + b"PUT /kv/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"b" * 1024
                               + b"\r\n0\r\n\r\n")
        yield until_closed(client, 3)
        self.assertEqual([(uri, len(body)) for _, uri, body in self.app.seen],
                         [(b"/kv/a", 1024), (b"/kv/b", 1024)])
        self.assertEqual(client.received.count(b"HTTP/1.1 200 "), 2)


class DeadlineTests(TestCase):
    """Issue 13.3: a request head, and a whole request, each have a deadline."""

    timeout = 20

    def serve(self, hang=False, header=0.5, request=1.5):
        self.app = Recorder(hang=hang)
        return serve(self, self.app, HTTPLimits(header_timeout_seconds=header,
                                                request_timeout_seconds=request))

    @defer.inlineCallbacks
    def test_trickled_head_closed_at_the_head_deadline(self):
        """A head sent a byte at a time (each byte well within the idle timeout) is
        answered 408 request_timeout and closed at the head deadline, not when the
        trickle ends."""
        port = self.serve(header=0.5, request=30)
        client = yield connect(self, port)
        head = b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
        yield trickle(client, [bytes([byte]) for byte in head[:40]], 0.05)
        yield refused(self, client, 408, "request_timeout", within=1.8)
        self.assertEqual(self.app.seen, [])

    @defer.inlineCallbacks
    def test_silent_connection_closed_at_the_head_deadline(self):
        """A connection that sends nothing is closed at the head deadline."""
        port = self.serve(header=0.5, request=30)
        client = yield connect(self, port)
        yield refused(self, client, 408, "request_timeout", within=1.8)

    @defer.inlineCallbacks
    def test_trickled_body_closed_at_the_request_deadline(self):
        """A head sent at once and a body trickled after it: 408 at the request
        deadline; the route never ran."""
        port = self.serve(header=0.5, request=1.0)
        client = yield connect(self, port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        yield trickle(client, [b"x"] * 40, 0.1)
        yield refused(self, client, 408, "request_timeout", within=2.5)
        self.assertEqual(self.app.seen, [])

    @defer.inlineCallbacks
    def test_unanswered_request_gets_504_at_the_request_deadline(self):
        """A route that does not answer in time: 504 request_timeout (its outcome is
        unknown) at the request deadline, the connection closed; the route's answer,
        when it comes, is dropped."""
        port = self.serve(hang=True, header=0.5, request=1.0)
        client = yield connect(self, port)
        client.transport.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        _, body = yield refused(self, client, 504, "request_timeout")
        self.assertIn("unknown", body["error"]["message"])
        self.assertEqual(len(self.app.seen), 1)
        self.app.hung[0].write(b"the route's answer, too late")  # dropped, not an error

    @defer.inlineCallbacks
    def test_idle_keep_alive_is_not_a_late_head(self):
        """Between requests on a kept-alive connection the head deadline does not run:
        the next request, sent after longer than it, is served."""
        port = self.serve(header=0.3, request=30)
        client = yield connect(self, port)
        client.transport.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        yield pause(0.8)
        client.transport.write(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        yield until_closed(client, 3)
        self.assertEqual([uri for _, uri, _ in self.app.seen], [b"/a", b"/b"])


class ConnectionCapTests(TestCase):
    """Issue 13.3: at most ``max_connections`` connections are served at once."""

    timeout = 20

    @defer.inlineCallbacks
    def test_connection_over_the_cap_answered_503(self):
        """With two connections open, a third is answered 503 too_many_connections
        (JSON, Retry-After) and closed; once one closes, a new one is served."""
        app = Recorder()
        port = serve(self, app, HTTPLimits(max_connections=2))
        first = yield connect(self, port)
        yield connect(self, port)
        third = yield connect(self, port)
        headers, _ = yield refused(self, third, 503, "too_many_connections")
        self.assertEqual(headers[b"retry-after"], b"1")
        first.transport.loseConnection()
        yield first.closed
        yield pause(0.1)
        fourth = yield connect(self, port)
        fourth.transport.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = yield until_closed(fourth, 3)
        self.assertEqual(parse(answer)[0], 200)


BAD_TARGETS = (b"X/kv/a", b"@kv/a?redirect=true", b"1/kv/a", b"http://evil/kv/a",
               b"//kv/a", b"*")


class RequestTargetTests(TestCase):
    """Issue 13.2: a target that is not a path is a JSON 400 on every node, before any
    route: never served as another path, never forwarded."""

    timeout = 30

    def setUp(self):
        self.leader, self.follower = kv_leader_and_follower(
            self, "http://127.0.0.1:5602", "http://127.0.0.1:5603")
        self.to_leader = RecordingClient(failure=ConnectionRefusedError())
        clock = Clock()
        self.ports = {
            "leader": serve(self, RequestGuard(kv_http.make_resource(self.leader, clock, None)),
                            HTTPLimits()),
            "follower": serve(self, RequestGuard(
                kv_http.make_resource(self.follower, clock, self.to_leader)), HTTPLimits()),
        }

    @defer.inlineCallbacks
    def test_malformed_targets_are_400_on_leader_and_follower(self):
        """X/kv/a, @kv/a?redirect=true, 1/kv/a, absolute-form, //kv/a and * are each a
        400 bad_request_target JSON answer for GET and PUT on both nodes: nothing
        forwarded, proposed or served."""
        for node, port in sorted(self.ports.items()):
            for target in BAD_TARGETS:
                for method in (b"GET", b"PUT"):
                    client = yield connect(self, port)
                    client.transport.write(
                        method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close"
                        b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                    answer = yield until_closed(client, 3)
                    status, _, body = parse(answer)
                    self.assertEqual((status, body["error"]["code"]),
                                     (400, "bad_request_target"), (node, method, target))
        self.assertEqual(self.to_leader.requests, [])
        self.assertEqual((self.leader.proposed, self.follower.proposed), ([], []))

    @defer.inlineCallbacks
    def test_good_target_still_forwarded(self):
        """A path target on the follower is forwarded to the leader's URL, path and query
        in place."""
        client = yield connect(self, self.ports["follower"])
        client.transport.write(b"PUT /kv/a?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        answer = yield until_closed(client, 3)
        self.assertEqual(parse(answer)[2]["error"]["code"], "no_leader")
        self.assertEqual([url for _, url, _ in self.to_leader.requests],
                         ["http://127.0.0.1:5602/kv/a?x=1"])


class RedirectParameterTests(TestCase):
    """Issue 13.9: ``?redirect=`` is ``true`` or ``false`` (the document's enum) on
    every node; any other value was taken for false (Schemathesis: 17 cases)."""

    timeout = 30
    setUp = RequestTargetTests.setUp

    @defer.inlineCallbacks
    def ask(self, port, target):
        client = yield connect(self, port)
        client.transport.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
        answer = yield until_closed(client, 3)
        return parse(answer)

    @defer.inlineCallbacks
    def test_other_values_are_422_on_leader_and_follower(self):
        """Other values, an empty one or two of them are 422 invalid_value naming the
        field, before any route: nothing forwarded or read."""
        for node, port in sorted(self.ports.items()):
            for query in (b"yes", b"1", b"", b"TRUE", b"true&redirect=true"):
                status, _, body = yield self.ask(port, b"/kv/a?redirect=" + query)
                self.assertEqual((status, body["error"]["code"], body["error"]["field"]),
                                 (422, "invalid_value", "redirect"), (node, query))
        self.assertEqual(self.to_leader.requests, [])

    @defer.inlineCallbacks
    def test_true_redirects_and_false_forwards(self):
        """On the follower, true is a 307 to the leader and false is forwarded."""
        status, headers, _ = yield self.ask(self.ports["follower"], b"/kv/a?redirect=true")
        self.assertEqual(status, 307)
        status, _, body = yield self.ask(self.ports["follower"], b"/kv/a?redirect=false")
        self.assertEqual(body["error"]["code"], "no_leader")  # the forward was refused
        self.assertEqual([url for _, url, _ in self.to_leader.requests],
                         ["http://127.0.0.1:5602/kv/a?redirect=false"])


class RaftnodeOptionTests(SynchronousTestCase):
    """The limits are ``twistd raftnode`` options, checked before anything starts."""

    def parse(self, *args):
        options = raftnode.Options()
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = str(free.getsockname()[1])
        options.parseOptions(["--app", "kv", "--data-dir", self.mktemp(), "--port", port]
                             + list(args))
        return options

    def test_defaults(self):
        """64 KiB bodies, a 10 s head, a 60 s request and 1024 connections by default:
        the defaults of ``HTTPLimits``."""
        options = self.parse()
        limits = HTTPLimits()
        self.assertEqual(
            (options["max-body-bytes"], options["header-timeout-ms"] / 1000.0,
             options["request-timeout-ms"] / 1000.0, options["max-connections"]),
            (limits.body_bytes, limits.header_timeout_seconds,
             limits.request_timeout_seconds, limits.max_connections))

    def test_request_deadline_must_outlast_the_others(self):
        """A request deadline no longer than the proposal, read or head timeout would cut
        requests short before they can be answered: refused."""
        from twisted.python.usage import UsageError

        for args, problem in (
                (["--request-timeout-ms", "5000"], "--request-timeout-ms must be longer"),
                (["--request-timeout-ms", "9000", "--header-timeout-ms", "9000"],
                 "--request-timeout-ms must be longer"),
                (["--max-connections", "0"], "must be positive")):
            error = self.assertRaises(UsageError, self.parse, *args)
            self.assertIn(problem, str(error), args)

    def test_the_node_site_is_a_node_site(self):
        """The site ``twistd raftnode`` serves HTTP with enforces the limits."""
        self.assertTrue(issubclass(raftnode._web_classes()[1], NodeSite))

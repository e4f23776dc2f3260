"""The key-value store's hot routes answered without Klein (``txraft.http.fastpath``).

Every answer is compared with the one the Klein routes alone give for the same request on
an identical node: the fast path must be invisible to clients, errors included.
"""

from __future__ import annotations

import io
import os

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txraft.apps import kv, kv_http
from txraft.http import fastpath
from txraft.http.fastpath import FastResource
from txraft.http.node import RaftHTTP
from txraft.http.requests import RequestGuard
from txraft.errors import NotLeader, Overloaded
from tests.fakes import FakeRaftNode, RecordingClient, start_request

#: Framing differs on purpose (a Content-Length instead of chunks); nothing else may.
FRAMING = {b"content-length", b"transfer-encoding", b"date"}

PATHS = [
    "/kv/a", "/kv/a/", "/kv/a/b%20c/%C3%A9", "/kv/%2Fa", "/kv//a", "/kv/a%2F", "/kv/a//b",
    "/kv/a%0Ab", "/kv/a%00b", "/kv/a%FFb", "/kv/", "/kv", "/kv/" + "k" * 1025,
    "/kv/" + "k" * 1024, "/kv/a?consistency=stale", "/kv/a?consistency=bogus",
    "/kv/a?consistency=%FF", "/kv/a?redirect=true", "/health", "/ready", "/raft/status",
    "/metrics", "/metrics?redirect=true", "/metrics/", "/health/", "/nope", "/",
]
METHODS = ["GET", "PUT", "DELETE", "POST", "HEAD", "PATCH"]


class Pair:
    """Two identical kv nodes in the same situation: one served by the fast path (with the
    Klein app behind it), one by the Klein app alone; both made from one route table."""

    def __init__(self, testcase, setup=lambda node: None, client=None):
        self.nodes = []
        self.stubs = []
        base = testcase.mktemp()
        for name, fast in (("fast", True), ("klein", False)):
            sm = kv.open_state_machine(os.path.join(base, name), durable=False)
            testcase.addCleanup(sm.close)
            node = FakeRaftNode(sm, "n2", "http://n2.test:5002")
            setup(node)
            api = kv_http.KVAPI(RaftHTTP(node, Clock(), client))
            # Behind the guard, as the node serves them (it answers undecodable paths).
            resource = RequestGuard(FastResource(api.routes) if fast else api.app.resource())
            self.nodes.append(node)
            self.stubs.append(StubTreq(resource))

    def answers(self, testcase, method, url, **kwargs):
        out = []
        for stub in self.stubs:
            d = start_request(stub, method, url, **kwargs)
            stub.flush()
            answer = testcase.successResultOf(d)
            headers = sorted(
                (name.lower(), values)
                for name, values in answer.headers.getAllRawHeaders()
                if name.lower() not in FRAMING
            )
            out.append((answer.code, headers, answer.body))
        return out


class SameAnswersTests(SynchronousTestCase):
    """The fast routes answer exactly as the Klein routes, in every node situation."""

    def check(self, setup=lambda node: None, client=None, bodies=(b"v",), keys=(None,)):
        pair = Pair(self, setup, client)
        for key in keys:
            headers = None if key is None else {"Idempotency-Key": [key]}
            for path in PATHS:
                for method in METHODS:
                    for body in bodies:
                        fast, klein = pair.answers(self, method, "http://n2" + path, data=body,
                                                   headers=headers)
                        self.assertEqual(fast, klein, "%s %s %r" % (method, path, key))
        self.assertEqual(pair.nodes[0].calls, pair.nodes[1].calls)
        self.assertEqual(pair.nodes[0].proposed, pair.nodes[1].proposed)

    def test_leader(self):
        """On a leader: writes, reads, status, and every routing and validation error."""
        self.check(bodies=(b"v", b"x" * (64 * 1024 + 1)))

    def test_idempotency_keys(self):
        """Keyed writes: first answers, replays (the same request again), 422 for a key
        reused by another request, 422 for a malformed key."""
        self.check(bodies=(b"v", b"w"), keys=(b"k1", b"k1", b"bad key", b""))

    def test_idempotency_keys_on_a_follower(self):
        """Keyed writes on a follower that holds no record and cannot reach its leader."""
        self.check(lambda node: node.follow("n1", "http://n1.test:5001"),
                   RecordingClient(failure=ConnectionRefusedError()), keys=(b"k1",))

    def test_idempotency_keys_after_commit_timeouts(self):
        """A keyed write that timed out after being applied, then its retry: alike."""

        def setup(node):
            node.commit_timeout = True
            node.apply_on_timeout = True

        self.check(setup, keys=(b"k1",))

    def test_follower_forwarding(self):
        """On a follower whose leader cannot be reached: the same no_leader answers and
        the same redirects."""
        self.check(lambda node: node.follow("n1", "http://n1.test:5001"),
                   RecordingClient(failure=ConnectionRefusedError()))

    def test_no_leader(self):
        """With no leader known: 503 no_leader everywhere a leader is needed."""
        self.check(lambda node: node.lose_leader())

    def test_commit_and_read_timeouts(self):
        """Commit timeouts (504) and read timeouts (503) answer alike."""

        def setup(node):
            node.commit_timeout = True
            node.read_timeout = True

        self.check(setup)

    def test_overloaded(self):
        """A node refusing work (Overloaded, a RaftError raised at once) answers 503."""

        def setup(node):
            node.propose = lambda data: defer.fail(Overloaded("busy"))

        self.check(setup)


class FastPathTests(SynchronousTestCase):
    def setUp(self):
        sm = kv.open_state_machine(self.mktemp(), durable=False)
        self.addCleanup(sm.close)
        self.node = FakeRaftNode(sm)
        self.api = kv_http.KVAPI(RaftHTTP(self.node, Clock(), None))
        self.resource = FastResource(self.api.routes)
        self.http = StubTreq(self.resource)

    def test_hot_routes_do_not_build_klein(self):
        """Key-value requests and the status, health, readiness and metrics polls are
        answered without building the Klein app (which an idle node then never loads)."""
        for method, path in (("PUT", "/kv/a"), ("GET", "/kv/a"), ("DELETE", "/kv/a"),
                             ("GET", "/health"), ("GET", "/ready"), ("GET", "/raft/status"),
                             ("GET", "/metrics")):
            d = start_request(self.http, method, "http://n1" + path, data=b"v")
            self.http.flush()
            self.assertLess(self.successResultOf(d).code, 300)
        self.assertIsNone(self.api.routes._klein)
        d = start_request(self.http, "GET", "http://n1/nope")
        self.http.flush()
        self.assertEqual(self.successResultOf(d).code, 404)
        self.assertIsNotNone(self.api.routes._klein)

    def test_value_has_a_length(self):
        """A value is sent with a Content-Length, not chunked."""
        d = start_request(self.http, "PUT", "http://n1/kv/k", data=b"value")
        self.http.flush()
        self.successResultOf(d)
        request = DummyRequest([b"kv", b"k"])
        request.path = b"/kv/k"
        request.uri = b"/kv/k?consistency=stale"
        request.args = {b"consistency": [b"stale"]}
        self.resource.render(request)
        self.assertEqual(request.written, [b"value"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"5"])
        self.assertEqual(request.finished, 1)

    def test_client_gone_cancels_quietly(self):
        """A client that leaves while its write waits cancels the answer: nothing is
        written to the closed request and nothing is logged."""
        self.node.hold = True
        request = DummyRequest([b"kv", b"k"])
        request.method = b"PUT"
        request.path = request.uri = b"/kv/k"
        request.content = io.BytesIO(b"v")
        self.resource.render(request)
        request.processingFailed(Failure(ConnectionDone()))  # the connection is lost
        self.node.release()
        self.assertEqual((request.written, request.finished), ([], 0))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpected_error_is_json_500_and_logged(self):
        """A bug in a handler is a JSON 500 (as with Klein), and it is logged."""
        self.node.propose = lambda data: 1 / 0
        d = start_request(self.http, "PUT", "http://n1/kv/k", data=b"v")
        self.http.flush()
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.error_code), (500, "internal_error"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_forward_from_a_raised_not_leader_cancels_quietly(self):
        """A handler that raises NotLeader at once is forwarded (as Klein does through
        its RaftError handler); a client that leaves meanwhile cancels the forward, and
        nothing is written or logged."""
        pending = []

        class Client:
            def request(self, method, url, **kwargs):
                d = defer.Deferred(lambda d: pending.append("cancelled"))
                pending.append((method, url))
                return d

        follower = FakeRaftNode(self.node.state_machine, "n2", "http://n2.test:5002")
        http = RaftHTTP(follower, Clock(), Client())

        def handler(request):
            raise NotLeader("n1", "http://n1.test:5001")

        request = DummyRequest([b"kv", b"k"])
        request.method = b"PUT"
        request.path = request.uri = b"/kv/k"
        request.content = io.BytesIO(b"v")
        fastpath.serve(request, http.answer_error, handler)
        self.assertEqual(pending, [("PUT", "http://n1.test:5001/kv/k")])
        request.processingFailed(Failure(ConnectionDone()))
        self.assertEqual(pending[-1], "cancelled")
        self.assertEqual((request.written, request.finished), ([], 0))
        self.assertEqual(self.flushLoggedErrors(), [])

"""The shared HTTP plumbing (``txraft.http``: errors, requests, leader routing, status),
driven through the kv application and StubTreq."""

from __future__ import annotations

import ast
import io
import json
import os
from urllib.parse import parse_qs

import attrs
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

import txraft
from txraft.apps import kv, kv_http
from txraft.apps.application import Application
from txraft.core.config import Member as ConfigMember
from txraft.http import errors, forwarding, requests, responses
from txraft.http.node import RaftHTTP
from txraft.http.routing import Route, RouteTable
from txraft.results import error_document
from txraft.errors import Overloaded
from txraft.interfaces import IRaftNode, IStateMachine
from txraft.runtime.node import FatalNodeError

from tests.fakes import (FakeRaftNode, RecordingClient, kv_leader_and_follower, request,
                         start_request)


class Cluster:
    """Two kv nodes: ``leader`` (n1) and ``follower`` (n2), the follower forwarding to n1."""

    def __init__(self, testcase):
        self.clock = Clock()
        self.leader, self.follower = kv_leader_and_follower(
            testcase, "http://n1.test:5001", "http://n2.test:5002")
        self.leader_sm = self.leader.state_machine
        self.follower_sm = self.follower.state_machine
        self.leader_http = StubTreq(kv_http.make_resource(self.leader, self.clock, None))
        self.to_leader = RecordingClient(self.leader_http)
        self.follower_http = StubTreq(kv_http.make_resource(self.follower, self.clock, self.to_leader))


class ApplicationTests(SynchronousTestCase):
    def test_application_shape(self):
        """kv_http.application is a frozen Application named kv whose parts build the app."""
        self.assertEqual(kv_http.application.name, "kv")
        self.assertIsInstance(kv_http.application, Application)
        with self.assertRaises(Exception):
            kv_http.application.name = "other"
        sm = kv_http.application.make_state_machine(self.mktemp())
        self.addCleanup(sm.close)
        self.assertTrue(verifyObject(IStateMachine, sm))
        resource = kv_http.application.make_resource(FakeRaftNode(sm), Clock(), None)
        self.assertEqual(request(self, StubTreq(resource), "GET", "http://x/health").code, 200)

    def test_fake_node_provides_interface(self):
        """The FakeRaftNode the HTTP tests rely on really provides IRaftNode."""
        sm = kv.open_state_machine(self.mktemp())
        self.addCleanup(sm.close)
        self.assertTrue(verifyObject(IRaftNode, FakeRaftNode(sm)))

    def test_txraft_never_imports_shop(self):
        """The library never imports the application (import direction txraft <- shop)."""
        root = os.path.dirname(txraft.__file__)
        offenders = []
        for folder, _, files in os.walk(root):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        modules = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        modules = [node.module or ""]
                    else:
                        continue
                    if any(m == "shop" or m.startswith("shop.") for m in modules):
                        offenders.append(path)
        self.assertEqual(offenders, [])


class CommonRouteTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = Cluster(self)

    def test_health(self):
        """GET /health answers 200 as long as the process runs, leader or not."""
        self.cluster.follower.lose_leader()
        answer = request(self, self.cluster.follower_http, "GET", "http://n2/health")
        self.assertEqual((answer.code, answer.json()), (200, {"status": "ok"}))

    def test_ready(self):
        """GET /ready is 200 when the node is ready, 503 (JSON, Retry-After) otherwise."""
        answer = request(self, self.cluster.leader_http, "GET", "http://n1/ready")
        self.assertEqual(answer.code, 200)
        self.cluster.leader.ready = False
        answer = request(self, self.cluster.leader_http, "GET", "http://n1/ready")
        self.assertEqual((answer.code, answer.error_code), (503, "not_ready"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_raft_status(self):
        """GET /raft/status is node.status() as JSON, served locally even on a follower."""
        answer = request(self, self.cluster.follower_http, "GET", "http://n2/raft/status")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(answer.json(), self.cluster.follower.status())
        self.assertEqual(self.cluster.to_leader.requests, [])

    def test_unknown_path_is_json_404(self):
        """An unknown path is a JSON 404, not Klein's HTML page."""
        answer = request(self, self.cluster.leader_http, "GET", "http://n1/nothing/here")
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(answer.error_code, "not_found")

    def test_wrong_method_is_json_405_with_allow(self):
        """A known path with a wrong method is a JSON 405 carrying Allow."""
        answer = request(self, self.cluster.leader_http, "POST", "http://n1/kv/a")
        self.assertEqual((answer.code, answer.error_code), (405, "method_not_allowed"))
        self.assertEqual(answer.header("Allow"), "DELETE, GET, HEAD, PUT")
        answer = request(self, self.cluster.leader_http, "DELETE", "http://n1/health")
        self.assertEqual(answer.code, 405)
        self.assertEqual(answer.header("Allow"), "GET, HEAD")


class JSONBodyTests(SynchronousTestCase):
    """RaftHTTP.json_body through a minimal application of its own."""

    def setUp(self):
        sm = kv.open_state_machine(self.mktemp())
        self.addCleanup(sm.close)
        http = RaftHTTP(FakeRaftNode(sm), Clock(), None, body_limit=100)

        def echo(request):
            return responses.json_response(request, 200, {"got": http.json_body(request)})

        def boom(request):
            raise ZeroDivisionError("bug")

        routes = RouteTable([Route("POST", "/echo", echo, "echo"),
                             Route("GET", "/boom", boom, "boom")], http.answer_error)
        self.stub = StubTreq(routes.klein_resource())

    def post(self, data, content_type="application/json"):
        headers = {"Content-Type": [content_type]} if content_type else {}
        return request(self, self.stub, "POST", "http://x/echo", data=data, headers=headers)

    def test_valid_json(self):
        """A JSON body under the limit is parsed, with or without content-type params."""
        self.assertEqual(self.post(b'{"a": [1, 2]}').json(), {"got": {"a": [1, 2]}})
        answer = self.post(b'"x"', "application/json; charset=utf-8")
        self.assertEqual(answer.json(), {"got": "x"})
        self.assertEqual(self.post(b'{}', "application/merge-patch+json").code, 200)

    def test_malformed_json_is_400(self):
        """Malformed JSON, invalid UTF-8 and NaN/Infinity are 400 malformed_json."""
        for body in (b"{", b"", b"\xff\xfe\xfa", b'{"a": NaN}', b"[Infinity]"):
            answer = self.post(body)
            self.assertEqual((answer.code, answer.error_code), (400, "malformed_json"), body)

    def test_not_json_is_415(self):
        """A body that is not declared JSON is 415, whatever it contains."""
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            answer = self.post(b"{}", content_type)
            self.assertEqual((answer.code, answer.error_code), (415, "unsupported_media_type"))

    def test_over_limit_is_413(self):
        """A body over the limit is 413 before anything parses it."""
        answer = self.post(b'"' + b"x" * 200 + b'"')
        self.assertEqual((answer.code, answer.error_code), (413, "body_too_large"))
        self.assertEqual(self.post(b'"' + b"x" * 98 + b'"').code, 200)

    def test_unexpected_exception_is_json_500(self):
        """A bug in a handler gives a JSON 500 (and is logged), not a traceback page."""
        answer = request(self, self.stub, "GET", "http://x/boom")
        self.assertEqual((answer.code, answer.error_code), (500, "internal_error"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class RaftErrorMappingTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = Cluster(self)
        self.leader = self.cluster.leader
        self.http = self.cluster.leader_http

    def test_no_leader_write(self):
        """A write on a node that knows no leader is 503 no_leader with Retry-After: 1."""
        self.leader.lose_leader()
        answer = request(self, self.http, "PUT", "http://n1/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_no_leader_read(self):
        """A linearizable read with no known leader is 503 no_leader."""
        self.leader.lose_leader()
        answer = request(self, self.http, "GET", "http://n1/kv/a")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_no_leader_redirect(self):
        """?redirect=true with no known leader is 503 no_leader too, never a 307."""
        self.leader.lose_leader()
        answer = request(self, self.http, "GET", "http://n1/kv/a?redirect=true")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))

    def test_commit_timeout(self):
        """CommitTimeout is 504 commit_timeout whose message says the outcome is unknown."""
        self.leader.commit_timeout = True
        answer = request(self, self.http, "PUT", "http://n1/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (504, "commit_timeout"))
        self.assertIn("unknown", answer.json()["error"]["message"])

    def test_proposal_dropped(self):
        """ProposalDropped is also 504 commit_timeout: the entry may still commit."""
        self.leader.drop_proposals = True
        answer = request(self, self.http, "DELETE", "http://n1/kv/a")
        self.assertEqual((answer.code, answer.error_code), (504, "commit_timeout"))

    def test_fatal_error_while_a_write_waits(self):
        """A write that was waiting when the node hit a fatal storage error is 504
        commit_timeout (outcome unknown), not a 500."""
        self.leader.propose = lambda data: defer.fail(
            FatalNodeError("the node stopped after a fatal error (EIO)", definite=False))
        answer = request(self, self.http, "PUT", "http://n1/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (504, "commit_timeout"))
        self.assertIn("EIO", answer.json()["error"]["message"])

    def test_read_timeout(self):
        """ReadTimeout (leadership not confirmed) is 503 read_timeout with Retry-After."""
        self.leader.read_timeout = True
        answer = request(self, self.http, "GET", "http://n1/kv/a")
        self.assertEqual((answer.code, answer.error_code), (503, "read_timeout"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_overloaded(self):
        """A node with too much waiting work refuses definitely: 503 overloaded."""
        self.leader.propose = lambda data: defer.fail(Overloaded())
        answer = request(self, self.http, "PUT", "http://n1/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "overloaded"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_linearizable_read_waits_for_barrier(self):
        """A default read is answered only once read_barrier() fires, with its index."""
        request(self, self.http, "PUT", "http://n1/kv/a", data=b"v")
        self.leader.hold = True
        d = start_request(self.http, "GET", "http://n1/kv/a")
        self.http.flush()
        self.assertNoResult(d)
        self.leader.release()
        self.http.flush()
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.body), (200, b"v"))
        self.assertEqual(answer.header("X-Raft-Applied-Index"), "1")

    def test_read_hot_path(self):
        """A linearizable read on the leader costs one read_barrier and nothing else."""
        request(self, self.http, "GET", "http://n1/kv/a")
        self.assertEqual(dict(self.leader.calls), {"read_barrier": 1})

    def test_bad_consistency(self):
        """An unknown consistency value is 422 invalid_value naming the parameter."""
        answer = request(self, self.http, "GET", "http://n1/kv/a?consistency=eventual")
        self.assertEqual((answer.code, answer.error_code), (422, "invalid_value"))
        self.assertEqual(answer.json()["error"]["field"], "consistency")


class LeaderRoutingTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = Cluster(self)

    def test_follower_forwards_write(self):
        """A write on a follower is forwarded to the leader and its answer relayed."""
        c = self.cluster
        answer = request(self, c.follower_http, "PUT", "http://n2/kv/a?x=1", data=b"value")
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.header("X-Raft-Index"), "1")
        self.assertEqual(answer.header("X-Raft-Leader"), "n1")
        self.assertEqual(c.leader_sm.get(b"a"), b"value")
        [(method, url, kwargs)] = c.to_leader.requests
        self.assertEqual((method, url), ("PUT", "http://n1.test:5001/kv/a?x=1"))
        self.assertEqual(kwargs["headers"][b"X-Raft-Forwarded-By"], [b"n2"])
        self.assertEqual(kwargs["data"], b"value")
        self.assertFalse(kwargs["allow_redirects"])

    def test_follower_forwards_linearizable_read(self):
        """A linearizable read on a follower is served by the leader, headers relayed."""
        c = self.cluster
        request(self, c.leader_http, "PUT", "http://n1/kv/k", data=b"fresh")
        answer = request(self, c.follower_http, "GET", "http://n2/kv/k")
        self.assertEqual((answer.code, answer.body), (200, b"fresh"))
        self.assertEqual(answer.header("Content-Type"), "application/octet-stream")
        self.assertEqual(answer.header("X-Raft-Applied-Index"), "1")
        missing = request(self, c.follower_http, "GET", "http://n2/kv/none")
        self.assertEqual((missing.code, missing.error_code), (404, "not_found"))

    def test_forwarded_headers(self):
        """Content-Type, Idempotency-Key and If-Match go along; Host and others do not."""
        c = self.cluster
        request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v",
                headers={"Content-Type": ["text/plain"], "Idempotency-Key": ["k1"],
                         "If-Match": ['"3"'], "Cookie": ["x=1"]})
        headers = c.to_leader.requests[0][2]["headers"]
        self.assertEqual(headers[b"content-type"], [b"text/plain"])
        self.assertEqual(headers[b"idempotency-key"], [b"k1"])
        self.assertEqual(headers[b"if-match"], [b'"3"'])
        self.assertNotIn(b"cookie", headers)

    def test_stale_read_on_follower_is_local(self):
        """?consistency=stale reads the follower's own replica and says how fresh it is."""
        c = self.cluster
        request(self, c.leader_http, "PUT", "http://n1/kv/k", data=b"new")
        answer = request(self, c.follower_http, "GET", "http://n2/kv/k?consistency=stale")
        self.assertEqual((answer.code, answer.error_code), (404, "not_found"))
        self.assertEqual(answer.header("X-Raft-Applied-Index"), "0")
        self.assertEqual(c.to_leader.requests, [])
        self.assertEqual(c.follower.calls["read_barrier"], 0)

    def test_stale_read_refused_on_a_node_that_lost_its_data(self):
        """A node whose copy cannot be trusted (peers refuse its identity, or its new
        data directory never caught up) answers ?consistency=stale with a JSON 503
        saying why, instead of its empty store; linearizable reads still go to the
        leader, and /raft/members' own view is refused alike."""
        c = self.cluster
        request(self, c.leader_http, "PUT", "http://n1/kv/k", data=b"v")
        c.follower.stale_refusal = "this data directory (uuid ...) lost its data"
        for url in ("http://n2/kv/k?consistency=stale",
                    "http://n2/raft/members?consistency=stale"):
            answer = request(self, c.follower_http, "GET", url)
            self.assertEqual((answer.code, answer.error_code), (503, "stale_read_refused"), url)
            self.assertEqual(answer.json()["error"]["message"], c.follower.stale_refusal)
            self.assertEqual(answer.header("Retry-After"), "1")
        answer = request(self, c.follower_http, "GET", "http://n2/kv/k")
        self.assertEqual(len(c.to_leader.requests), 1)

    def test_redirect(self):
        """?redirect=true answers 307 to the same path and query on the leader."""
        c = self.cluster
        for method in ("GET", "PUT", "DELETE"):
            answer = request(self, c.follower_http, method, "http://n2/kv/a%20b?redirect=true&q=1")
            self.assertEqual(answer.code, 307, method)
            self.assertEqual(answer.header("Location"),
                             "http://n1.test:5001/kv/a%20b?redirect=true&q=1")
            self.assertEqual(answer.header("X-Raft-Leader"), "n1")
        self.assertEqual(c.to_leader.requests, [])
        self.assertEqual(c.leader_sm.applied_index(), 0)

    def test_redirect_names_the_advertised_url(self):
        """A redirect names the leader's advertised (public) URL, while forwarding keeps
        using the member address the nodes share (e.g. behind Docker port publishing)."""
        c = self.cluster
        c.follower.follow("n1", "http://n1.test:5001", "http://127.0.0.1:5001")
        answer = request(self, c.follower_http, "GET", "http://n2/kv/a?redirect=true")
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("Location"), "http://127.0.0.1:5001/kv/a?redirect=true")
        request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v")
        self.assertTrue(c.to_leader.requests[0][1].startswith("http://n1.test:5001/"))

    def test_forwarded_request_is_never_forwarded_again(self):
        """A request already forwarded once that reaches a follower is 503, not re-sent."""
        c = self.cluster
        answer = request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v",
                         headers={"X-Raft-Forwarded-By": ["n3"]})
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual(answer.header("Retry-After"), "1")
        self.assertEqual(c.to_leader.requests, [])

    def test_two_followers_naming_each_other_do_not_loop(self):
        """Two nodes that each think the other leads answer 503 after one hop."""
        base = self.mktemp()
        sm_a = kv.open_state_machine(os.path.join(base, "a"))
        sm_b = kv.open_state_machine(os.path.join(base, "b"))
        self.addCleanup(sm_a.close)
        self.addCleanup(sm_b.close)
        node_a = FakeRaftNode(sm_a, "a", "http://a.test")
        node_b = FakeRaftNode(sm_b, "b", "http://b.test")
        node_a.follow("b", "http://b.test")
        node_b.follow("a", "http://a.test")
        clock = Clock()
        to_a = RecordingClient()
        to_b = RecordingClient()
        http_a = StubTreq(kv_http.make_resource(node_a, clock, to_b))
        http_b = StubTreq(kv_http.make_resource(node_b, clock, to_a))
        to_a.inner, to_b.inner = http_a, http_b
        answer = request(self, http_a, "PUT", "http://a.test/kv/x", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual((len(to_b.requests), len(to_a.requests)), (1, 0))

    def test_connection_refused_is_no_leader(self):
        """A leader that refuses the connection never got the request: 503 no_leader."""
        c = self.cluster
        c.to_leader.failure = ConnectionRefusedError()
        answer = request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual(answer.header("Retry-After"), "1")

    def test_forward_timed_out_while_connecting_is_no_leader(self):
        """A forward whose time ran out before a connection to the leader was made (a
        slow name lookup, an unreachable address) sent nothing: 503 no_leader, not
        "outcome unknown"."""
        c = self.cluster
        c.to_leader.failure = ConnectingCancelledError(None)
        answer = request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))

    def test_broken_forwarded_write_is_unknown_outcome(self):
        """A forwarded write whose answer never came may have been applied: 504."""
        c = self.cluster
        c.to_leader.failure = ResponseNeverReceived([])
        answer = request(self, c.follower_http, "DELETE", "http://n2/kv/a")
        self.assertEqual((answer.code, answer.error_code), (504, "commit_timeout"))
        self.assertIn("unknown", answer.json()["error"]["message"])

    def test_broken_forwarded_read_is_no_leader(self):
        """A forwarded read whose answer never came had no effect: 503 no_leader."""
        c = self.cluster
        c.to_leader.failure = ResponseNeverReceived([])
        answer = request(self, c.follower_http, "GET", "http://n2/kv/a")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))

    def test_forward_timeout(self):
        """A leader that does not answer in time: 504 for a write, 503 for a read."""
        c = self.cluster
        c.leader.hold = True
        write = start_request(c.follower_http, "PUT", "http://n2/kv/a", data=b"v")
        read = start_request(c.follower_http, "GET", "http://n2/kv/a")
        c.follower_http.flush()
        self.assertNoResult(write)
        c.clock.advance(forwarding.DEFAULT_FORWARD_TIMEOUT_SECONDS)
        c.follower_http.flush()
        answer = self.successResultOf(write)
        self.assertEqual((answer.code, answer.error_code), (504, "commit_timeout"))
        answer = self.successResultOf(read)
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))

    def test_client_gone_while_forwarding(self):
        """A forward cancelled because our client left stays a cancellation (which Klein
        ignores) instead of becoming an error answer nobody reads (and Klein logs)."""
        c = self.cluster
        c.leader.hold = True
        http = RaftHTTP(c.follower, c.clock, RecordingClient(c.leader_http))
        fake_request = type("R", (), {})()
        fake_request.uri = b"/kv/a"
        fake_request.args = {}
        fake_request.method = b"PUT"
        fake_request.content = None
        fake_request.requestHeaders = Headers()
        fake_request.getHeader = lambda name: None
        d = http.forwarder.forward(fake_request, "n1", "http://n1.test:5001")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_not_leader_naming_itself(self):
        """A NotLeader naming this very node is treated as no leader, not a self-forward."""
        c = self.cluster
        c.follower.follow("n2", "http://n2.test:5002")
        answer = request(self, c.follower_http, "PUT", "http://n2/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertEqual(c.to_leader.requests, [])

    def forwarder(self):
        c = self.cluster
        return forwarding.Forwarder("n2", c.clock, c.to_leader, requests.DEFAULT_BODY_LIMIT)

    def bare_request(self, uri: bytes, method: bytes = b"PUT"):
        """A request as the forwarder sees it, with a target no site would let through."""
        fake_request = DummyRequest([])
        fake_request.uri = uri
        fake_request.args = parse_qs(uri.partition(b"?")[2])
        fake_request.method = method
        fake_request.content = io.BytesIO(b"v")
        return fake_request

    def test_forward_goes_to_the_leaders_host_and_port_whatever_the_target(self):
        """The forwarded URL is the leader's scheme, host and port with the request's
        path and query in their places: a target of 1/kv/a cannot turn port 5602 into
        56021, nor @kv/a the host into kv/a."""
        c = self.cluster
        for target, url in ((b"1/kv/a?x=1", "http://127.0.0.1:5602/1/kv/a?x=1"),
                            (b"@kv/a", "http://127.0.0.1:5602/@kv/a"),
                            (b"/kv/a?x=1&y=%20", "http://127.0.0.1:5602/kv/a?x=1&y=%20")):
            c.to_leader.requests[:] = []
            self.forwarder().forward(self.bare_request(target), "n1", "http://127.0.0.1:5602")
            self.assertEqual([u for _, u, _ in c.to_leader.requests], [url], target)

    def test_forward_keeps_the_leader_urls_path(self):
        """A leader URL with a path (behind a proxy) keeps it as the prefix."""
        c = self.cluster
        self.forwarder().forward(self.bare_request(b"/kv/a?q=1"), "n1",
                                 "http://leader.test:8080/raft/")
        self.assertEqual(c.to_leader.requests[0][1], "http://leader.test:8080/raft/kv/a?q=1")

    def test_redirect_stays_on_the_leaders_host(self):
        """``@kv/a?redirect=true`` redirects to the leader's host, not to host kv."""
        c = self.cluster
        fake_request = self.bare_request(b"@kv/a?redirect=true", b"GET")
        self.forwarder().forward(fake_request, "n1", "http://127.0.0.1:5602")
        self.assertEqual(fake_request.responseHeaders.getRawHeaders(b"location"),
                         [b"http://127.0.0.1:5602/@kv/a?redirect=true"])

    def test_request_the_client_cannot_send_is_no_leader(self):
        """A forward that fails before anything was sent (the client raises at once) is
        503 no_leader, "retry": never a 500, never "outcome unknown"."""
        c = self.cluster

        class Refusing:
            def request(self, *args, **kwargs):
                raise ValueError("invalid URL")

        follower_http = StubTreq(kv_http.make_resource(c.follower, c.clock, Refusing()))
        answer = request(self, follower_http, "PUT", "http://n2/kv/a", data=b"v")
        self.assertEqual((answer.code, answer.error_code), (503, "no_leader"))
        self.assertIn("could not be sent", answer.json()["error"]["message"])


class HelperTests(SynchronousTestCase):
    def test_dumps_is_compact_utf8(self):
        """dumps() gives compact UTF-8 JSON."""
        self.assertEqual(responses.dumps({"a": "é", "b": [1]}), '{"a":"é","b":[1]}'.encode("utf-8"))

    def test_error_document(self):
        """error_document() has the documented shape, field only when given."""
        self.assertEqual(error_document("c", "m"), {"error": {"code": "c", "message": "m"}})
        self.assertEqual(error_document("c", "m", "f")["error"]["field"], "f")

    def test_is_json_type(self):
        """JSON media types are recognised with parameters and +json suffixes."""
        self.assertTrue(requests.is_json_type(b"Application/JSON; charset=utf-8"))
        self.assertTrue(requests.is_json_type(b"application/merge-patch+json"))
        self.assertFalse(requests.is_json_type(b"text/json"))
        self.assertFalse(requests.is_json_type(None))

    def test_method_not_allowed(self):
        """method_not_allowed() is a 405 with a sorted Allow header."""
        error = errors.method_not_allowed(["PUT", "GET", "GET"])
        self.assertEqual(error.status, 405)
        self.assertEqual(dict(error.headers)[b"Allow"], b"GET, PUT")


class MembersDocumentTests(SynchronousTestCase):
    def test_members_on_a_leader_and_a_follower(self):
        """GET /raft/members: the configuration in force (the latest one in the log),
        each member's Raft address, URL and data directory uuid (bound by the
        configuration, recorded on first contact, or the node's own); on the leader
        also its progress."""
        from txraft.core import Configuration, CoreStatus, Member, PeerStatus
        from txraft.http.status import members_document
        from txraft.runtime.status import NodeStatus
        from txraft.runtime.trust import PeerIdentity

        conf = Configuration((Member("n1", address="h:1", http_url="http://h:1"),
                              Member("n2", "learner", "h:2", "http://h:2", "bb" * 16)))
        leader = CoreStatus(
            id="n1", role="leader", term=3, voted_for="n1", leader_id="n1", commit_index=9,
            last_applied=9, last_log_index=10, last_log_term=3, snapshot_index=0,
            voters=("n1",), learners=("n2",), config_index=7, configuration=conf,
            progress=(("n2", PeerStatus(4, 5, "probe", True, 0, voter=False, lost_log=True)),))
        doc = members_document(NodeStatus(core=leader, applied_index=9, node_uuid="aa" * 16))
        self.assertEqual(doc["config_index"], 7)
        self.assertTrue(doc["from_leader"])
        self.assertEqual(doc["members"], [
            {"id": "n1", "role": "voter", "address": "h:1", "http_url": "http://h:1",
             "uuid": "aa" * 16, "match_index": 10, "lag": 0, "leader": True},
            {"id": "n2", "role": "learner", "address": "h:2", "http_url": "http://h:2",
             "uuid": "bb" * 16, "match_index": 4, "lag": 6, "state": "probe",
             "recent_active": True, "lost_log": True},
        ])
        follower = attrs.evolve(leader, id="n2", role="follower", progress=(),
                                configuration=Configuration((conf.members[0],
                                                             Member("n2", "learner", "h:2"))))
        doc = members_document(NodeStatus(core=follower, applied_index=9, peer_identities=(
            PeerIdentity("n1", "cc" * 16, "recorded"),)))
        self.assertFalse(doc["from_leader"])
        self.assertEqual([sorted(m) for m in doc["members"]],
                         [["address", "http_url", "id", "role", "uuid"]] * 2)
        self.assertEqual([m["uuid"] for m in doc["members"]], ["cc" * 16, None])


class MembershipRouteTests(SynchronousTestCase):
    """POST/DELETE /raft/members: the cluster secret, and well-formed input, first."""

    def setUp(self):
        self.cluster = Cluster(self)
        self.auth = {"Authorization": [b"Bearer cluster-secret"],
                     "Content-Type": [b"application/json"]}

    def add(self, http, body, headers=None):
        return request(self, http, "POST", "http://n1/raft/members",
                       data=json.dumps(body).encode(), headers=headers or self.auth)

    def test_a_node_without_a_secret_refuses_every_change(self):
        """With credentials: 403. Without: 401 like any node (Schemathesis ST203: the
        document says the route needs them), saying the node has no secret either."""
        self.cluster.leader.secret = None
        answer = self.add(self.cluster.leader_http, {"id": "n3", "address": "h:1"})
        self.assertEqual((answer.code, answer.error_code), (403, "forbidden"))
        self.assertIn("--secret-file", answer.json()["error"]["message"])
        answer = self.add(self.cluster.leader_http, {"id": "n3", "address": "h:1"},
                          {"Content-Type": [b"application/json"]})
        self.assertEqual((answer.code, answer.error_code), (401, "unauthorized"))
        self.assertEqual(answer.header("WWW-Authenticate"), 'Bearer realm="txraft"')
        self.assertIn("--secret-file", answer.json()["error"]["message"])
        self.assertEqual(self.cluster.leader.calls["change"], 0)

    def test_the_secret_is_checked_before_anything_else(self):
        """No credentials: 401 with a Bearer challenge; wrong ones: 403."""
        for value, status in ((b"Bearer nope", 403), (b"Basic cluster-secret", 401),
                              (b"cluster-secret", 401), (b"", 401), (b"Bearer ", 401)):
            headers = dict(self.auth, Authorization=[value])
            answer = self.add(self.cluster.leader_http, {"id": "n3", "address": "h:1"}, headers)
            self.assertEqual(answer.code, status, value)
        answer = request(self, self.cluster.leader_http, "DELETE", "http://n1/raft/members/n2")
        self.assertEqual((answer.code, answer.error_code), (401, "unauthorized"))
        self.assertEqual(answer.header("WWW-Authenticate"), 'Bearer realm="txraft"')
        self.assertEqual(self.cluster.leader.calls["change"], 0)

    def test_malformed_members_are_refused_with_the_field(self):
        for body, code, field in [
            ({"id": "n3", "address": "nowhere"}, "malformed_address", "address"),
            ({"id": "n3", "address": "h:99999"}, "malformed_address", "address"),
            ({"id": "n3"}, "malformed_address", "address"),
            ({"id": "", "address": "h:1"}, "invalid_change", "id"),
            ({"id": "a/b", "address": "h:1"}, "invalid_change", "id"),
            ({"id": "n3\n", "address": "h:1"}, "invalid_change", "id"),
            ({"id": "n3", "address": "h:1\n"}, "malformed_address", "address"),
            ({"id": "n3", "address": "a b:1"}, "malformed_address", "address"),
            ({"id": "n3", "address": "a\x1fb:1"}, "malformed_address", "address"),
            ({"id": "x" * 17, "address": "h:1"}, "invalid_change", "id"),
            ({"id": "n3", "address": "h:1", "http_url": "ftp://x"}, "invalid_change", "http_url"),
            ({"id": "n3", "address": "h:1", "expect_config_index": 0}, "invalid_change",
             "expect_config_index"),
            ({"id": "n3", "address": "h:1", "uuid": "ab" * 15}, "invalid_change", "uuid"),
            ({"id": "n3", "address": "h:1", "uuid": "zz" * 16}, "invalid_change", "uuid"),
            ({"id": "n3", "address": "h:1", "uuid": 5}, "invalid_change", "uuid"),
        ]:
            answer = self.add(self.cluster.leader_http, body)
            self.assertEqual((answer.code, answer.error_code), (422, code), body)
            self.assertEqual(answer.json()["error"].get("field"), field, body)
        self.assertEqual(self.cluster.leader.calls["change"], 0)

    def test_the_precondition_is_a_non_negative_integer(self):
        body = json.dumps({"id": "n3", "address": "h:1"}).encode()
        for bad in ("-1", "x", "1.5"):
            answer = request(self, self.cluster.leader_http, "POST",
                             "http://n1/raft/members?expect_config_index=" + bad,
                             data=body, headers=self.auth)
            self.assertEqual((answer.code, answer.error_code), (422, "invalid_change"), bad)
        answer = request(self, self.cluster.leader_http, "POST",
                         "http://n1/raft/members?expect_config_index=1", data=body,
                         headers=self.auth)
        self.assertEqual((answer.code, answer.error_code), (409, "config_changed"))
        answer = request(self, self.cluster.leader_http, "POST",
                         "http://n1/raft/members?expect_config_index=0", data=body,
                         headers=self.auth)
        self.assertEqual(answer.code, 200)

    def test_a_new_member_may_be_bound_to_its_uuid(self):
        """"uuid" (32 hex digits, any case) binds the learner to that data directory in
        the configuration; without it the member is unbound."""
        answer = self.add(self.cluster.leader_http, {"id": "n3", "address": "h:1",
                                                     "uuid": "AB" * 16})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.cluster.leader.configuration.get("n3").uuid, "ab" * 16)
        answer = self.add(self.cluster.leader_http, {"id": "n4", "address": "h:2"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.cluster.leader.configuration.get("n4").uuid, "")

    def test_a_follower_forwards_the_change_with_its_authorization(self):
        answer = self.add(self.cluster.follower_http, {"id": "n3", "address": "h:1"})
        self.assertEqual((answer.code, answer.json()), (200, {"config_index": 1}))
        [(method, url, kwargs)] = self.cluster.to_leader.requests
        self.assertEqual(kwargs["headers"][b"authorization"], [b"Bearer cluster-secret"])
        self.assertEqual(self.cluster.leader.configuration.learners, ("n3",))


class LeadershipTransferRouteTests(SynchronousTestCase):
    """POST /raft/leader: the cluster secret, an optional target, errors as JSON."""

    def setUp(self):
        self.cluster = Cluster(self)
        self.auth = {"Authorization": [b"Bearer cluster-secret"],
                     "Content-Type": [b"application/json"]}

    def transfer(self, http, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        return request(self, http, "POST", "http://n1/raft/leader", data=data,
                       headers=self.auth if headers is None else headers)

    def test_hands_over_and_names_the_new_leader(self):
        for body in (None, {}, {"id": "n2"}):
            self.cluster.leader.lead()
            answer = self.transfer(self.cluster.leader_http, body)
            self.assertEqual(answer.code, 200, body)
            doc = answer.json()
            self.assertEqual((doc["leader"], doc["previous_leader"]), ("n2", "n1"))
            self.assertEqual(doc["term"], self.cluster.leader.term)
        # An empty body needs no Content-Type.
        self.cluster.leader.lead()
        answer = self.transfer(self.cluster.leader_http, None,
                               {"Authorization": [b"Bearer cluster-secret"]})
        self.assertEqual(answer.code, 200)

    def test_needs_the_secret(self):
        answer = self.transfer(self.cluster.leader_http, {}, {})
        self.assertEqual((answer.code, answer.error_code), (401, "unauthorized"))
        answer = self.transfer(self.cluster.leader_http, {},
                               dict(self.auth, Authorization=[b"Bearer nope"]))
        self.assertEqual((answer.code, answer.error_code), (403, "forbidden"))
        self.cluster.leader.secret = None
        answer = self.transfer(self.cluster.leader_http, {})
        self.assertEqual((answer.code, answer.error_code), (403, "forbidden"))
        self.assertEqual(self.cluster.leader.calls["transfer"], 0)

    def test_malformed_bodies(self):
        for body in ([], {"id": ""}, {"id": 3}, {"target": "n2"}, {"id": "n2", "x": 1}, "n2"):
            answer = self.transfer(self.cluster.leader_http, body)
            self.assertEqual((answer.code, answer.error_code), (422, "invalid_change"), body)
        self.assertEqual(self.cluster.leader.calls["transfer"], 0)

    def test_refusals_are_json_errors(self):
        node = self.cluster.leader
        node.configuration = node.configuration.changed("add_learner", ConfigMember("n3"))
        for body, status, code in [({"id": "n9"}, 404, "unknown_member"),
                                   ({"id": "n3"}, 409, "not_voter")]:
            answer = self.transfer(self.cluster.leader_http, body)
            self.assertEqual((answer.code, answer.error_code), (status, code), body)
        node.transfer_failure = ("transfer_timeout", "no new leader within 0.3s")
        answer = self.transfer(self.cluster.leader_http, {})
        self.assertEqual((answer.code, answer.error_code), (504, "transfer_timeout"))
        self.assertEqual(answer.header("Retry-After"), "1")
        self.assertTrue(node.is_leader())

    def test_a_follower_forwards_it_to_the_leader(self):
        answer = self.transfer(self.cluster.follower_http, {"id": "n2"})
        self.assertEqual((answer.code, answer.json()["leader"]), (200, "n2"))
        [(method, url, kwargs)] = self.cluster.to_leader.requests
        self.assertEqual(url, "http://n1.test:5001/raft/leader")
        self.assertEqual(kwargs["headers"][b"authorization"], [b"Bearer cluster-secret"])

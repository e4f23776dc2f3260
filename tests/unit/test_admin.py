"""The fault-injection endpoint (``txraft.http.admin``) through the real kv application
and StubTreq: invisible to everyone but a loopback client with the token."""

from __future__ import annotations

import json
import os

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txraft.apps import kv, kv_http
from txraft.http import admin
from txraft.http.admin import AdminRoot
from txraft.http.requests import RequestGuard
from txraft.runtime.transport import Faults

from tests.fakes import FakeRaftNode, request

TOKEN = b"5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"
METHODS = ("GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS")
PATHS = ("/admin", "/admin/", "/admin/faults", "/admin/faults/", "/admin/faults/x",
         "/admin/other", "/admin/faults/../faults", "/administrator")


class FakeTransport:
    def __init__(self):
        self.faults = Faults()


class AdminTests(SynchronousTestCase):
    def setUp(self):
        sm = kv.open_state_machine(os.path.join(self.mktemp(), "n1"), durable=False)
        self.addCleanup(sm.close)
        self.transport = FakeTransport()
        app = RequestGuard(kv_http.make_resource(FakeRaftNode(sm), Clock(), None))
        self.plain = StubTreq(app)  # a node started without --admin-token-file
        self.with_admin = StubTreq(AdminRoot(app, self.transport, TOKEN))

    def ask(self, stub, method, path, token=None):
        headers = {} if token is None else {"Authorization": [token]}
        return request(self, stub, method, "http://127.0.0.1:5001" + path,
                       headers=headers, data=b'{"loss_rate": 1}')

    def assertLikeAnUnknownPath(self, stub, method, path, token=None):
        unknown = self.ask(self.plain, method, "/no-such-path")
        answer = self.ask(stub, method, path, token)
        context = "%s %s (token %r)" % (method, path, token)
        self.assertEqual(answer.code, unknown.code, context)
        for name in ("content-type", "allow", "www-authenticate", "content-length"):
            if name == "content-length" and method != "HEAD":
                continue  # the body names the path; compared below
            self.assertEqual(answer.header(name), unknown.header(name), (context, name))
        self.assertEqual(sorted(k for k, _ in answer.headers.getAllRawHeaders()),
                         sorted(k for k, _ in unknown.headers.getAllRawHeaders()), context)
        self.assertEqual(answer.body.replace(path.encode(), b"/no-such-path"), unknown.body,
                         context)

    def test_every_admin_path_is_an_unknown_path_without_the_token(self):
        """Any /admin path, any method, without a token, with a wrong one, a near miss,
        another scheme, or on a node with no token at all: the application's own 404
        for a path it does not know, byte for byte (the path aside)."""
        self.assertEqual(self.ask(self.plain, "GET", "/no-such-path").code, 404)
        wrong = (None, b"Bearer wrong", b"Bearer " + TOKEN[:-1], b"Bearer " + TOKEN + b"x",
                 TOKEN, b"Basic " + TOKEN, b"bearer " + TOKEN)
        for path in PATHS:
            for method in METHODS:
                self.assertLikeAnUnknownPath(self.plain, method, path, b"Bearer " + TOKEN)
                for token in wrong:
                    self.assertLikeAnUnknownPath(self.with_admin, method, path, token)
        self.assertEqual(self.transport.faults.loss_rate, 0.0)

    def test_with_the_token_only_faults_exists(self):
        """With the token, every other /admin path is still an unknown path."""
        for path in ("/admin", "/admin/", "/admin/faults/x", "/admin/other"):
            for method in ("GET", "PUT", "DELETE"):
                self.assertLikeAnUnknownPath(self.with_admin, method, path, b"Bearer " + TOKEN)

    def test_a_remote_client_with_the_token_sees_nothing(self):
        """The token alone is not enough: from a non-loopback address, an unknown path."""
        self.patch(admin, "_is_loopback", lambda host: False)
        for method in ("GET", "PUT", "DELETE"):
            self.assertLikeAnUnknownPath(self.with_admin, method, "/admin/faults",
                                         b"Bearer " + TOKEN)
        self.assertEqual(self.transport.faults.loss_rate, 0.0)

    def test_with_the_token_the_endpoint_works(self):
        """A loopback client with the token reads, sets and clears faults."""
        token = b"Bearer " + TOKEN
        answer = self.ask(self.with_admin, "GET", "/admin/faults", token)
        self.assertEqual((answer.code, answer.json()),
                         (200, {"drop_to": [], "drop_from": [], "loss_rate": 0.0}))
        answer = request(self, self.with_admin, "PUT", "http://127.0.0.1:5001/admin/faults/",
                         headers={"Authorization": [token]},
                         data=json.dumps({"drop_to": ["n2"], "loss_rate": 0.5}).encode())
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.transport.faults.drop_to, {"n2"})
        self.assertEqual(self.transport.faults.loss_rate, 0.5)
        answer = self.ask(self.with_admin, "DELETE", "/admin/faults", token)
        self.assertEqual(answer.json()["drop_to"], [])
        self.assertEqual(self.transport.faults.loss_rate, 0.0)
        answer = self.ask(self.with_admin, "POST", "/admin/faults", token)
        self.assertEqual((answer.code, answer.header("allow")), (405, "GET, PUT, DELETE"))
        answer = request(self, self.with_admin, "PUT", "http://127.0.0.1:5001/admin/faults",
                         headers={"Authorization": [token]}, data=b'{"loss_rate": 2}')
        self.assertEqual(answer.code, 422)

    def test_the_application_is_untouched(self):
        """Every other request reaches the application as it would without the root."""
        put = request(self, self.with_admin, "PUT", "http://127.0.0.1:5001/kv/a", data=b"v")
        self.assertEqual(put.code, 204)
        self.assertEqual(request(self, self.with_admin, "GET",
                                 "http://127.0.0.1:5001/kv/a").body, b"v")

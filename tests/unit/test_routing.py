"""One route table feeds both Klein and the fast dispatcher (``txraft.http.routing``).

The key-value store's table is checked against what each generator made of it; a route
added to a table is served by both; a table in which the fast dispatcher could pick
another route than Klein's router is refused when it is compiled.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txraft.apps import kv, kv_http
from txraft.http.fastpath import FastResource
from txraft.http.node import RaftHTTP
from txraft.http.responses import json_response
from txraft.http.routing import Route, RouteTable, path_argument

from tests.fakes import FakeRaftNode, request


def echo(name):
    """A handler that answers which route served it and with which key."""

    def handler(request, key=None):
        return json_response(request, 200, {"route": name, "key": key})

    return handler


class KVTableTests(SynchronousTestCase):
    def setUp(self):
        sm = kv.open_state_machine(self.mktemp(), durable=False)
        self.addCleanup(sm.close)
        self.api = kv_http.KVAPI(RaftHTTP(FakeRaftNode(sm), Clock(), None))

    def test_klein_serves_every_route_of_the_table(self):
        """The Klein app has exactly the table's routes: pattern, method, endpoint."""
        table = {(r.pattern, r.method, r.endpoint) for r in self.api.routes.routes}
        klein = {(rule.rule, method, rule.endpoint)
                 for rule in self.api.app.url_map.iter_rules()
                 for method in rule.methods - {"HEAD", "OPTIONS"}}
        self.assertEqual(klein, table)
        self.assertEqual(len(table), 12)

    def test_fast_dispatcher_serves_the_fast_routes_of_the_table(self):
        """The fast dispatcher holds the table's fast routes, with the same handlers."""
        fast = self.api.routes.fast_routes()
        compiled = {(path.decode(), method.decode(), handler)
                    for path, methods in fast.static.items()
                    for method, handler in methods.items()}
        compiled |= {(fast.prefix.decode() + "<path:key>", method.decode(), handler)
                     for method, handler in fast.prefixed.items()}
        table = {(r.pattern, r.method, r.handler) for r in self.api.routes.routes if r.fast}
        self.assertEqual(compiled, table)
        self.assertEqual({r.pattern for r in self.api.routes.routes if r.fast},
                         {"/kv/<path:key>", "/raft/status", "/health", "/ready", "/metrics"})
        self.assertEqual(fast.prefix, b"/kv/")


class SameTableTests(SynchronousTestCase):
    def serve(self, routes, method, path, fast=True):
        table = RouteTable(routes, lambda request, failure: failure)
        resource = FastResource(table) if fast else table.klein_resource()
        answer = request(self, StubTreq(resource), method, "http://x" + path)
        return answer.code, answer.json(), table

    def test_a_new_route_is_served_by_both(self):
        """A route added to the table is answered alike by the fast path, which does not
        build the Klein app for it, and by Klein."""
        routes = [Route("GET", "/docs/<path:key>", echo("docs"), "docs", fast=True),
                  Route("GET", "/about", echo("about"), "about", fast=True)]
        for path, expected in (("/docs/a/b", {"route": "docs", "key": "a/b"}),
                               ("/about", {"route": "about", "key": None})):
            code, body, table = self.serve(routes, "GET", path)
            self.assertEqual((code, body), (200, expected))
            self.assertIsNone(table._klein)
            self.assertEqual(self.serve(routes, "GET", path, fast=False)[:2], (200, expected))

    def test_what_the_fast_routes_do_not_match_goes_to_klein(self):
        """Another method, another method of a fixed path, or an argument the fast path
        cannot decode: answered by the Klein app, as Klein alone answers them."""
        routes = [Route("GET", "/kv/<path:key>", echo("fast"), "fast", fast=True),
                  Route("PUT", "/kv/<path:key>", echo("put"), "put"),
                  Route("GET", "/about", echo("about"), "about", fast=True),
                  Route("DELETE", "/about", echo("forget"), "forget")]
        for method, path, route in (("PUT", "/kv/a", "put"), ("DELETE", "/about", "forget"),
                                    ("GET", "/kv/a%0Ab", None), ("GET", "/nothing", None)):
            code, body, table = self.serve(routes, method, path)
            self.assertIsNotNone(table._klein, path)
            self.assertEqual((code, body), self.serve(routes, method, path, fast=False)[:2])
            if route is not None:
                self.assertEqual((code, body["route"]), (200, route))
        for path, route in (("/kv/a", "fast"), ("/about", "about")):
            code, body, table = self.serve(routes, "GET", path)
            self.assertEqual((code, body["route"], table._klein), (200, route, None))

    def test_tables_the_fast_path_could_misroute_are_refused(self):
        """A fast route with another converter, a second fast prefix, and any other
        route under the fast prefix (with arguments, or a fixed path werkzeug would
        prefer) or covering it are refused when compiled."""
        handler = echo("x")
        fast = Route("GET", "/kv/<path:key>", handler, "a", fast=True)
        for routes in (
            [Route("GET", "/orders/<int:id>", handler, "a", fast=True)],
            [Route("GET", "/kv/<path:key>/raw", handler, "a", fast=True)],
            [fast, Route("GET", "/docs/<path:key>", handler, "b", fast=True)],
            [fast, Route("GET", "/kv/<id>", handler, "b")],
            [fast, Route("GET", "/kv/special", handler, "b")],
            [fast, Route("GET", "/kv/sub/<path:key>", handler, "b")],
            [fast, Route("GET", "/<path:rest>", handler, "b")],
        ):
            table = RouteTable(routes, lambda request, failure: failure)
            self.assertRaises(ValueError, table.fast_routes)
        RouteTable([fast, Route("PUT", "/kv/<path:key>", handler, "b"),
                    Route("GET", "/kv", handler, "c")], None).fast_routes()

    def test_path_argument_is_werkzeugs_path_converter(self):
        """The fast path decodes what ``<path:...>`` would match and declines the rest."""
        self.assertEqual(path_argument(b"a/b%20c/%C3%A9"), "a/b c/\u00e9")
        for raw in (b"", b"/a", b"%2Fa", b"a\nb", b"a%FFb"):
            self.assertIsNone(path_argument(raw), raw)

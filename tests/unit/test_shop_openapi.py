"""GET /openapi.json stays true: routes, statuses and document shapes match the code."""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import SynchronousTestCase

from shop.api import ShopAPI
from shop.openapi import spec
from txraft.core.config import Configuration
from txraft.core.config import Member as ConfigMember
from txraft.http.node import RaftHTTP

from tests.unit.test_shop_api import ANN, MUG, ShopCluster

METHODS = ("get", "put", "post", "patch", "delete")
IDS = {"products": "p1", "customers": "c3", "orders": "o5"}
VALID = {
    ("products", "post"): dict(MUG, sku="NEW"),
    ("products", "put"): MUG,
    ("products", "patch"): {"stock": 5},
    ("customers", "post"): {"name": "Cy", "email": "cy@example.com"},
    ("customers", "put"): ANN,
    ("customers", "patch"): {"address": "1 Main St"},
    ("orders", "post"): {"customer_id": "c3", "items": [{"product_id": "p1", "quantity": 1}]},
    ("orders", "put"): {"items": [{"product_id": "p1", "quantity": 2}]},
    ("orders", "patch"): {"status": "paid"},
}
CONFLICT = {
    ("products", "post"): (None, MUG),
    ("products", "put"): (None, dict(MUG, sku="OTHER")),
    ("products", "patch"): (None, {"sku": "OTHER"}),
    ("customers", "post"): (None, ANN),
    ("customers", "put"): (None, {"name": "x", "email": "bob@example.com"}),
    ("customers", "patch"): (None, {"email": "bob@example.com"}),
    ("orders", "post"): (None, {"customer_id": "c3", "items": [{"product_id": "p1", "quantity": 99}]}),
    ("orders", "put"): (None, {"items": [{"product_id": "p1", "quantity": 99}]}),
    ("orders", "patch"): (None, {"status": "shipped"}),
    ("orders", "delete"): ("o6", None),
}
# A cluster serves requests until one succeeds (and may have changed the state).
GENERATORS = ("redirect", "malformed", "not_found", "precondition", "too_large", "media",
              "invalid", "conflict", "no_leader", "commit_timeout", "read_timeout", "not_ready",
              "unauthorized", "ok")
# Membership changes: (valid body, member id) per operation, and what "conflict" and
# "invalid" change for them.
MEMBERS = {
    ("/raft/members", "post"): {"id": "n4", "address": "10.0.0.4:5001"},
    ("/raft/leader", "post"): {"id": "n2"},
}
MEMBER_CONFLICT = {("/raft/members", "post"): {"id": "n2", "address": "10.0.0.9:5001"}}


def operations():
    document = spec()
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


class OpenAPITests(SynchronousTestCase):
    def build(self):
        """A two-node cluster holding p1, p2, c3, c4, pending order o5, shipped order o6."""
        cluster = ShopCluster(self)
        post = lambda path, body: cluster("POST", path, data=json.dumps(body).encode(),
                                          headers={"Content-Type": ["application/json"]})
        post("/products", MUG)
        post("/products", dict(MUG, sku="OTHER"))
        post("/customers", ANN)
        post("/customers", {"name": "Bob", "email": "bob@example.com"})
        post("/orders", {"customer_id": "c3", "items": [{"product_id": "p1", "quantity": 1}]})
        post("/orders", {"customer_id": "c4", "items": [{"product_id": "p2", "quantity": 1}]})
        for status in ("paid", "shipped"):
            cluster("PATCH", "/orders/o6", data=json.dumps({"status": status}).encode(),
                    headers={"Content-Type": ["application/json"]})
        self.assertEqual(cluster.nodes["n1"].state_machine.get("o", "o6")["status"], "shipped")
        return cluster

    def produce(self, cluster, path: str, method: str, generator: str) -> int:
        """Run one kind of request; return its status and put the cluster's switches back."""
        try:
            return self._produce(cluster, path, method, generator)
        finally:
            cluster.elect("n1")
            leader = cluster.nodes["n1"]
            leader.commit_timeout = leader.read_timeout = False
            leader.ready = True
            leader.transfer_failure = None

    def _produce(self, cluster, path: str, method: str, generator: str) -> int:
        leader = cluster.nodes["n1"]
        collection = path.split("/")[1]
        ident = IDS.get(collection, "")
        body = VALID.get((collection, method))
        node = "n1"
        query = ""
        headers = {"Content-Type": ["application/json"]}
        membership = path.startswith(("/raft/members", "/raft/leader")) and method != "get"
        transfer = path == "/raft/leader"
        if membership:
            # A learner n3 to promote, voters n1 and n2 (n2 can go, n1 is the leader).
            for n in cluster.nodes.values():
                n.configuration = Configuration((ConfigMember("n1"), ConfigMember("n2"),
                                                 ConfigMember("n3", "learner")))
                n.config_index = 0
            headers["Authorization"] = [b"Bearer cluster-secret"]
            body = MEMBERS.get((path, method))
            ident = "n3" if path.endswith("promote") else "n2"
        data = None if body is None else json.dumps(body).encode()
        if membership and generator == "unauthorized":
            del headers["Authorization"]  # 401
        elif membership and generator == "precondition":
            headers["Authorization"] = [b"Bearer wrong"]  # 403 (If-Match means nothing here)
        elif transfer and generator in ("not_found", "conflict"):
            data = json.dumps({"id": "n999" if generator == "not_found" else "n3"}).encode()
        elif transfer and generator == "commit_timeout":
            leader.transfer_failure = ("transfer_timeout", "no new leader in time")
        elif membership and generator == "not_found":
            ident = "n999"
            if body is not None:  # adding an unknown id is what adding is for: no 404
                data = json.dumps(dict(body, address="nowhere")).encode()
        elif membership and generator == "conflict":
            if (path, method) in MEMBER_CONFLICT:
                data = json.dumps(MEMBER_CONFLICT[(path, method)]).encode()
            elif path.endswith("promote"):
                ident = "n1"  # already a voter
            else:
                query = "?expect_config_index=7"
        elif membership and generator == "invalid":
            if body is not None:
                data = b'{"zzz": 1}'
            else:
                ident = "n1"
                for n in cluster.nodes.values():
                    n.configuration = Configuration.of_voters(["n1"])  # the last voter
                if path.endswith("promote"):
                    query = "?expect_config_index=-1"
        elif generator == "redirect":
            node, query = "n2", "?redirect=true"
        elif generator == "malformed":
            data = b"{"
        elif generator == "not_found":
            ident = collection[0] + "999"
        elif generator == "precondition":
            headers["If-Match"] = ['"99"']
        elif generator == "too_large":
            data = json.dumps({"name": "x" * 70_000}).encode()
        elif generator == "media":
            headers["Content-Type"] = ["text/plain"]
        elif generator == "invalid":
            if method == "get":
                query = "?consistency=bad"
            elif method == "delete":
                headers["Idempotency-Key"] = ["k" * 300]
            else:
                data = b'{"zzz": 1}'
        elif generator == "conflict" and (collection, method) in CONFLICT:
            conflict_id, conflict_body = CONFLICT[(collection, method)]
            ident = conflict_id or ident
            data = None if conflict_body is None else json.dumps(conflict_body).encode()
        elif generator == "no_leader":
            for n in cluster.nodes.values():
                n.lose_leader()
        elif generator == "commit_timeout":
            leader.commit_timeout = True
        elif generator == "read_timeout":
            leader.read_timeout = True
        elif generator == "not_ready":
            leader.ready = False
        url = path.replace("{id}", ident).replace("{member_id}", ident) + query
        kwargs = {"headers": headers}
        if data is not None:
            kwargs["data"] = data
        return cluster(method.upper(), url, node=node, **kwargs).code

    def test_every_route_is_described_and_vice_versa(self):
        """The Klein routes and the spec's paths and methods are the same set."""
        cluster = ShopCluster(self)
        app = ShopAPI(RaftHTTP(cluster.nodes["n1"], cluster.clock, None), cluster.clock).app
        routes = set()
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
        described = {(path, method) for path, method, _ in operations()}
        self.assertEqual(routes, described)

    maxDiff = None

    def test_documented_statuses_are_exactly_those_produced(self):
        """For every operation, the statuses a battery of requests (valid, redirected,
        malformed, unknown id, stale If-Match, too large, not JSON, invalid, conflicting,
        no leader, commit and read timeouts, not ready) produce are exactly the ones
        documented."""
        mismatches = {}
        for path, method, operation in operations():
            documented = {int(status) for status in operation["responses"]}
            cluster = self.build()
            produced = set()
            for generator in GENERATORS:
                status = self.produce(cluster, path, method, generator)
                produced.add(status)
                if 200 <= status < 300 and method != "get":
                    cluster = self.build()
            if produced != documented:
                mismatches["%s %s" % (method.upper(), path)] = (sorted(documented), sorted(produced))
        self.assertEqual(mismatches, {})

    def test_documented_bounds_are_the_ones_enforced(self):
        """Issue 13.9 (Schemathesis: documented-valid values refused): each documented
        ``maximum`` of a list's query parameter is accepted and one more is 422, and the
        Idempotency-Key pattern says what the key check accepts."""
        cluster = self.build()
        params = {p["name"]: p for p in spec()["paths"]["/products"]["get"]["parameters"]
                  if "$ref" not in p}
        components = spec()["components"]["parameters"]
        bounds = {"offset": components["Offset"]["schema"]["maximum"]}
        for name in ("min_price_cents", "max_price_cents"):
            bounds[name] = params[name]["schema"]["maximum"]
        for name, top in sorted(bounds.items()):
            self.assertEqual(cluster("GET", "/products?%s=%d" % (name, top)).code, 200, name)
            refused = cluster("GET", "/products?%s=%d" % (name, top + 1))
            self.assertEqual((refused.code, refused.json()["error"]["field"]), (422, name))
        pattern = re.compile(components["IdempotencyKey"]["schema"]["pattern"])
        from txraft.results import key_problem as problem
        for key in ("a", "k-1", "~!", "a b", "\u00e9", "\t", "x" * 3):
            self.assertEqual(bool(pattern.match(key)), problem(key) is None, repr(key))

    def test_refs_resolve(self):
        """Every $ref in the document points at a component that exists."""
        document = spec()
        refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
        self.assertTrue(refs)
        for ref in refs:
            node = document
            for part in ref.lstrip("#/").split("/"):
                node = node[part]

    def test_documents_match_schemas(self):
        """Products, customers, orders and pages carry exactly the documented properties."""
        cluster = self.build()
        schemas = spec()["components"]["schemas"]
        for path, name in (("/products/p1", "Product"), ("/customers/c3", "Customer"),
                           ("/orders/o5", "Order"), ("/products", "ProductList")):
            body = cluster("GET", path).json()
            self.assertEqual(set(body), set(schemas[name]["properties"]), name)
            self.assertEqual(set(schemas[name]["required"]), set(body), name)
        order_line = cluster("GET", "/orders/o5").json()["items"][0]
        self.assertEqual(set(order_line),
                         set(schemas["Order"]["properties"]["items"]["items"]["properties"]))

    def test_served(self):
        """GET /openapi.json serves the document as OpenAPI 3.1."""
        cluster = ShopCluster(self)
        answer = cluster("GET", "/openapi.json")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(answer.json(), json.loads(json.dumps(spec())))
        self.assertEqual(answer.json()["openapi"], "3.1.0")

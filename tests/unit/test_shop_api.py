"""The shop's HTTP API through StubTreq, with FakeRaftNodes standing in for the cluster:
every endpoint, every error code, leader routing, consistency and idempotent replays."""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from txraft.http import forwarding

from shop import api, state
from shop.app import application

from tests.fakes import FakeCluster, start_request

MUG = {"name": "Mug", "price_cents": 1250, "stock": 10, "category": "kitchen", "sku": "MUG"}
ANN = {"name": "Ann", "email": "ann@example.com"}


class ShopCluster(FakeCluster):
    """Two shop nodes: n1 leads, n2 follows and forwards to n1 through its own client."""

    def __init__(self, testcase):
        super().__init__(testcase, state.open_state_machine, application.make_resource)


class APICase(SynchronousTestCase):
    def setUp(self):
        self.cluster = ShopCluster(self)
        self.leader = self.cluster.nodes["n1"]

    def call(self, method, path, body=None, node="n1", headers=None, **kwargs):
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            headers = dict(headers or {})
            headers.setdefault("Content-Type", ["application/json"])
        return self.cluster(method, path, node=node, headers=headers, **kwargs)

    def assertError(self, answer, status, code, field=None):
        self.assertEqual(answer.code, status, answer)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        if code is not None:
            self.assertEqual(answer.error_code, code, answer)
        if field is not None:
            self.assertEqual(answer.json()["error"].get("field"), field)

    def create(self, path, body, **kwargs):
        answer = self.call("POST", path, body, **kwargs)
        self.assertEqual(answer.code, 201, answer)
        return answer.json()

    def setup_shop(self):
        self.mug = self.create("/products", MUG)["id"]
        self.pen = self.create("/products", {"name": "Pen", "price_cents": 120, "stock": 2,
                                             "category": "office"})["id"]
        self.ann = self.create("/customers", ANN)["id"]


class ProductTests(APICase):
    def test_create(self):
        """POST /products: 201, the product, Location, ETag and X-Raft-Index."""
        answer = self.call("POST", "/products", MUG)
        self.assertEqual(answer.code, 201)
        body = answer.json()
        self.assertEqual(answer.header("Location"), "/products/" + body["id"])
        self.assertEqual(answer.header("ETag"), '"1"')
        self.assertEqual(answer.header("X-Raft-Index"), "1")
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual({k: body[k] for k in MUG}, MUG)
        self.assertEqual(body["description"], None)
        self.assertEqual(body["created_at"], "2026-11-26T10:32:52.500Z")
        self.assertEqual(body["version"], 1)

    def test_get(self):
        """GET /products/{id}: the product with its ETag; unknown ids are 404."""
        created = self.create("/products", MUG)
        answer = self.call("GET", "/products/" + created["id"])
        self.assertEqual((answer.code, answer.json()), (200, created))
        self.assertEqual(answer.header("ETag"), '"1"')
        self.assertError(self.call("GET", "/products/p999"), 404, "not_found")
        self.assertError(self.call("GET", "/products/banana"), 404, "not_found")

    def test_list(self):
        """GET /products filters by category, q, price range and stock, and pages."""
        self.create("/products", MUG)
        self.create("/products", {"name": "Big mug", "price_cents": 2000, "stock": 0,
                                  "category": "kitchen"})
        self.create("/products", {"name": "Pen", "price_cents": 100, "stock": 5})
        names = lambda query: [p["name"] for p in self.call("GET", "/products" + query).json()["items"]]
        self.assertEqual(names(""), ["Mug", "Big mug", "Pen"])
        self.assertEqual(names("?category=kitchen"), ["Mug", "Big mug"])
        self.assertEqual(names("?q=MUG"), ["Mug", "Big mug"])
        self.assertEqual(names("?min_price_cents=1000&max_price_cents=1999"), ["Mug"])
        self.assertEqual(names("?in_stock=true"), ["Mug", "Pen"])
        self.assertEqual(names("?in_stock=false"), ["Big mug"])
        page = self.call("GET", "/products?limit=1&offset=1").json()
        self.assertEqual((page["total"], page["limit"], page["offset"]), (3, 1, 1))
        self.assertEqual([p["name"] for p in page["items"]], ["Big mug"])
        default = self.call("GET", "/products").json()
        self.assertEqual((default["limit"], default["offset"]), (50, 0))

    def test_list_parameter_errors(self):
        """Bad paging or filter values and unknown parameters are 422 naming them."""
        for query, field in (("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"),
                             ("offset=-1", "offset"), ("min_price_cents=1.5", "min_price_cents"),
                             ("max_price_cents=-3", "max_price_cents"),
                             ("in_stock=yes", "in_stock"), ("colour=red", "colour"),
                             ("consistency=weak", "consistency")):
            self.assertError(self.call("GET", "/products?" + query), 422, None, field)
        self.assertEqual(self.call("GET", "/products?limit=500").code, 200)

    def test_replace(self):
        """PUT /products/{id} replaces the product; absent optional fields become null."""
        created = self.create("/products", MUG)
        answer = self.call("PUT", "/products/" + created["id"],
                           {"name": "Cup", "price_cents": 1, "stock": 0})
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("ETag"), '"2"')
        self.assertEqual(answer.header("X-Raft-Index"), "2")
        body = answer.json()
        self.assertEqual((body["name"], body["sku"], body["category"]), ("Cup", None, None))

    def test_replace_requires_every_required_field(self):
        """PUT without a required field is 422 missing_field, refused before proposing."""
        created = self.create("/products", MUG)
        answer = self.call("PUT", "/products/" + created["id"], {"name": "Cup"})
        self.assertError(answer, 422, "missing_field", "price_cents")
        self.assertEqual(self.leader.calls["propose"], 1)

    def test_patch(self):
        """PATCH /products/{id} merges (also as application/merge-patch+json)."""
        created = self.create("/products", MUG)
        answer = self.call("PATCH", "/products/" + created["id"], {"stock": 3, "sku": None},
                           headers={"Content-Type": ["application/merge-patch+json"]})
        self.assertEqual(answer.code, 200)
        body = answer.json()
        self.assertEqual((body["stock"], body["sku"], body["name"], body["version"]),
                         (3, None, "Mug", 2))

    def test_delete(self):
        """DELETE /products/{id}: 204 with X-Raft-Index, then 404."""
        created = self.create("/products", MUG)
        answer = self.call("DELETE", "/products/" + created["id"])
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(answer.header("X-Raft-Index"), "2")
        self.assertError(self.call("GET", "/products/" + created["id"]), 404, "not_found")
        self.assertError(self.call("DELETE", "/products/" + created["id"]), 404, "not_found")

    def test_duplicate_sku(self):
        """A taken sku is 409 duplicate_sku on create, replace and patch."""
        self.create("/products", MUG)
        other = self.create("/products", dict(MUG, sku="OTHER"))["id"]
        self.assertError(self.call("POST", "/products", MUG), 409, "duplicate_sku", "sku")
        self.assertError(self.call("PUT", "/products/" + other, MUG), 409, "duplicate_sku")
        self.assertError(self.call("PATCH", "/products/" + other, {"sku": "MUG"}),
                         409, "duplicate_sku")

    def test_validation(self):
        """Wrong type, unknown field, negative price: 422 naming the field, no proposal."""
        cases = [
            (dict(MUG, price_cents="12"), "invalid_type", "price_cents"),
            (dict(MUG, price_cents=12.5), "invalid_type", "price_cents"),
            (dict(MUG, price_cents=-1), "invalid_value", "price_cents"),
            (dict(MUG, stock=-1), "invalid_value", "stock"),
            (dict(MUG, colour="blue"), "unknown_field", "colour"),
            ({"name": "x", "stock": 1}, "missing_field", "price_cents"),
        ]
        for body, code, field in cases:
            self.assertError(self.call("POST", "/products", body), 422, code, field)
        self.assertError(self.call("POST", "/products", [1, 2]), 422, "invalid_type")
        self.assertEqual(self.leader.calls["propose"], 0)

    def test_if_match(self):
        """If-Match: the current ETag proceeds, another version or a weak tag is 412."""
        pid = self.create("/products", MUG)["id"]
        path = "/products/" + pid
        for method, body in (("PUT", MUG), ("PATCH", {"stock": 1}), ("DELETE", None)):
            self.assertError(self.call(method, path, body, headers={"If-Match": ['"7"']}),
                             412, "precondition_failed")
            self.assertError(self.call(method, path, body, headers={"If-Match": ['W/"1"']}),
                             412, "precondition_failed")
            self.assertError(self.call(method, path, body, headers={"If-Match": ["garbage"]}),
                             412, "precondition_failed")
        answer = self.call("PATCH", path, {"stock": 1}, headers={"If-Match": ['"0", "1"']})
        self.assertEqual((answer.code, answer.header("ETag")), (200, '"2"'))
        answer = self.call("PATCH", path, {"stock": 2}, headers={"If-Match": ["*"]})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.call("DELETE", path, headers={"If-Match": ['"3"']}).code, 204)

    def test_body_errors(self):
        """400 malformed JSON, 415 not JSON, 413 over 64 KiB: before anything is proposed."""
        self.assertError(self.cluster("POST", "/products", data=b"{nope",
                                      headers={"Content-Type": ["application/json"]}),
                         400, "malformed_json")
        self.assertError(self.cluster("POST", "/products", data=json.dumps(MUG).encode(),
                                      headers={"Content-Type": ["text/plain"]}),
                         415, "unsupported_media_type")
        big = dict(MUG, description="x" * (64 * 1024))
        self.assertError(self.call("POST", "/products", big), 413, "body_too_large")
        self.assertError(self.call("PATCH", "/products/p1", big), 413, "body_too_large")
        self.assertEqual(self.leader.calls["propose"], 0)

    def test_routing_errors(self):
        """Unknown paths are JSON 404; wrong methods JSON 405 with Allow."""
        self.assertError(self.call("GET", "/productz"), 404, "not_found")
        self.assertError(self.call("GET", "/products/p1/reviews"), 404, "not_found")
        answer = self.call("DELETE", "/products")
        self.assertError(answer, 405, "method_not_allowed")
        self.assertEqual(answer.header("Allow"), "GET, HEAD, POST")
        answer = self.call("POST", "/orders/o1", {})
        self.assertEqual(answer.header("Allow"), "DELETE, GET, HEAD, PATCH, PUT")


class CustomerTests(APICase):
    def test_crud(self):
        """Customers: create 201, get, list, put, patch, delete 204."""
        created = self.create("/customers", dict(ANN, address="1 Main St"))
        cid = created["id"]
        self.assertEqual(self.call("GET", "/customers/" + cid).json(), created)
        self.create("/customers", {"name": "Bob", "email": "bob@example.com"})
        listing = self.call("GET", "/customers?q=bo").json()
        self.assertEqual([c["name"] for c in listing["items"]], ["Bob"])
        self.assertEqual(self.call("GET", "/customers?email=ANN@example.com").json()["total"], 1)
        replaced = self.call("PUT", "/customers/" + cid, {"name": "Ann B", "email": "annb@example.com"})
        self.assertEqual((replaced.code, replaced.json()["address"]), (200, None))
        patched = self.call("PATCH", "/customers/" + cid, {"address": "2 High St"})
        self.assertEqual((patched.json()["address"], patched.json()["version"]), ("2 High St", 3))
        self.assertEqual(self.call("DELETE", "/customers/" + cid).code, 204)
        self.assertError(self.call("GET", "/customers/" + cid), 404, "not_found")

    def test_errors(self):
        """Duplicate email 409, bad email shape 422, missing email 422, If-Match 412."""
        cid = self.create("/customers", ANN)["id"]
        self.assertError(self.call("POST", "/customers", dict(ANN, email="Ann@Example.com")),
                         409, "duplicate_email", "email")
        self.assertError(self.call("POST", "/customers", dict(ANN, email="not-an-email")),
                         422, "invalid_value", "email")
        self.assertError(self.call("POST", "/customers", {"name": "x"}), 422, "missing_field", "email")
        self.assertError(self.call("PATCH", "/customers/" + cid, {"name": "x"},
                                   headers={"If-Match": ['"2"']}), 412, "precondition_failed")


class OrderTests(APICase):
    def setUp(self):
        super().setUp()
        self.setup_shop()

    def order(self, *lines, customer=None):
        return self.call("POST", "/orders", {
            "customer_id": customer or self.ann,
            "items": [{"product_id": p, "quantity": q} for p, q in lines]})

    def stock(self, pid):
        return self.call("GET", "/products/" + pid).json()["stock"]

    def test_create(self):
        """POST /orders: 201 with captured prices, total, pending status and Location."""
        answer = self.order((self.mug, 2), (self.pen, 1))
        self.assertEqual(answer.code, 201)
        order = answer.json()
        self.assertEqual(answer.header("Location"), "/orders/" + order["id"])
        self.assertEqual(answer.header("ETag"), '"1"')
        self.assertEqual(order["items"], [
            {"product_id": self.mug, "quantity": 2, "unit_price_cents": 1250},
            {"product_id": self.pen, "quantity": 1, "unit_price_cents": 120}])
        self.assertEqual((order["total_cents"], order["status"], order["customer_id"]),
                         (2620, "pending", self.ann))
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (8, 1))
        self.assertEqual(self.call("GET", "/orders/" + order["id"]).json(), order)

    def test_insufficient_stock(self):
        """409 insufficient_stock when any line lacks stock, and nothing changes at all."""
        answer = self.order((self.mug, 2), (self.pen, 3))
        self.assertError(answer, 409, "insufficient_stock", "items[1].quantity")
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (10, 2))
        self.assertEqual(self.call("GET", "/orders").json()["total"], 0)

    def test_validation(self):
        """Zero-line orders, bad quantities, unknown product or customer: 422."""
        self.assertError(self.order(), 422, "empty_order", "items")
        self.assertError(self.order((self.mug, 0)), 422, "invalid_value", "items[0].quantity")
        self.assertError(self.order((self.mug, -1)), 422, "invalid_value", "items[0].quantity")
        self.assertError(self.order((self.mug, 1), ("p404", 1)), 422, "unknown_product",
                         "items[1].product_id")
        self.assertError(self.order((self.mug, 1), customer="c404"), 422, "unknown_customer",
                         "customer_id")
        self.assertError(self.call("POST", "/orders", {"items": []}), 422, "missing_field",
                         "customer_id")

    def test_list(self):
        """GET /orders filters by customer_id and status and pages; a bad status is 422."""
        bob = self.create("/customers", {"name": "Bob", "email": "bob@example.com"})["id"]
        o1 = self.order((self.mug, 1)).json()["id"]
        o2 = self.order((self.mug, 1), customer=bob).json()["id"]
        self.call("PATCH", "/orders/" + o2, {"status": "paid"})
        ids = lambda q: [o["id"] for o in self.call("GET", "/orders" + q).json()["items"]]
        self.assertEqual(ids(""), [o1, o2])
        self.assertEqual(ids("?customer_id=" + bob), [o2])
        self.assertEqual(ids("?status=pending"), [o1])
        self.assertEqual(ids("?status=paid&customer_id=" + self.ann), [])
        self.assertEqual(self.call("GET", "/orders?limit=1").json()["total"], 2)
        self.assertError(self.call("GET", "/orders?status=lost"), 422, "invalid_value", "status")

    def test_replace(self):
        """PUT /orders/{id} replaces a pending order's items, adjusting stock atomically."""
        oid = self.order((self.mug, 4)).json()["id"]
        answer = self.call("PUT", "/orders/" + oid,
                           {"items": [{"product_id": self.pen, "quantity": 2}]})
        self.assertEqual(answer.code, 200)
        self.assertEqual((answer.json()["total_cents"], answer.header("ETag")), (240, '"2"'))
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (10, 0))
        answer = self.call("PUT", "/orders/" + oid,
                           {"items": [{"product_id": self.mug, "quantity": 11}]})
        self.assertError(answer, 409, "insufficient_stock")
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (10, 0))

    def test_replace_non_pending(self):
        """PUT on a paid order is 409 invalid_transition."""
        oid = self.order((self.mug, 1)).json()["id"]
        self.call("PATCH", "/orders/" + oid, {"status": "paid"})
        self.assertError(self.call("PUT", "/orders/" + oid,
                                   {"items": [{"product_id": self.mug, "quantity": 1}]}),
                         409, "invalid_transition")

    def test_status_flow(self):
        """PATCH moves pending → paid → shipped; anything else is 409 invalid_transition."""
        oid = self.order((self.mug, 1)).json()["id"]
        path = "/orders/" + oid
        self.assertError(self.call("PATCH", path, {"status": "shipped"}), 409, "invalid_transition")
        self.assertEqual(self.call("PATCH", path, {"status": "paid"}).json()["status"], "paid")
        self.assertEqual(self.call("PATCH", path, {"status": "shipped"}).json()["status"], "shipped")
        self.assertError(self.call("PATCH", path, {"status": "cancelled"}), 409, "invalid_transition")
        self.assertError(self.call("PATCH", path, {"status": "gone"}), 422, "invalid_value", "status")
        self.assertError(self.call("PATCH", path, {"status": "paid", "x": 1}), 422, "unknown_field")
        self.assertError(self.call("DELETE", path), 409, "invalid_transition")

    def test_cancel_and_delete_restore_stock(self):
        """Cancelling restores stock; deleting an unshipped order restores it too (204)."""
        o1 = self.order((self.mug, 3)).json()["id"]
        o2 = self.order((self.mug, 2)).json()["id"]
        self.assertEqual(self.stock(self.mug), 5)
        self.assertEqual(self.call("PATCH", "/orders/" + o1, {"status": "cancelled"}).code, 200)
        self.assertEqual(self.stock(self.mug), 8)
        answer = self.call("DELETE", "/orders/" + o2)
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(self.stock(self.mug), 10)
        self.assertError(self.call("GET", "/orders/" + o2), 404, "not_found")
        self.assertError(self.call("DELETE", "/orders/" + o2), 404, "not_found")
        self.assertError(self.call("PATCH", "/orders/" + o2, {"status": "paid"}), 404, "not_found")


class RaftRoutingTests(APICase):
    def test_common_routes(self):
        """The shop serves /raft/status, /health, /ready and /openapi.json."""
        for path in ("/raft/status", "/health", "/ready", "/openapi.json"):
            self.assertEqual(self.call("GET", path).code, 200, path)
        self.assertEqual(self.call("GET", "/openapi.json").json()["openapi"], "3.1.0")

    def test_follower_forwards_create(self):
        """A POST on a follower is applied by the leader; its answer comes back whole."""
        answer = self.call("POST", "/products", MUG, node="n2")
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.header("Location"), "/products/" + answer.json()["id"])
        self.assertEqual(answer.header("ETag"), '"1"')
        self.assertEqual(answer.header("X-Raft-Index"), "1")
        self.assertEqual(answer.header("X-Raft-Leader"), "n1")
        self.assertEqual(self.leader.state_machine.list_products()[1], 1)
        self.assertEqual(self.cluster.nodes["n2"].state_machine.list_products()[1], 0)

    def test_follower_forwards_errors(self):
        """Refusals by the leader are relayed with their status and body."""
        self.create("/products", MUG)
        self.assertError(self.call("POST", "/products", MUG, node="n2"), 409, "duplicate_sku")
        self.assertError(self.call("GET", "/products/p9", node="n2"), 404, "not_found")

    def test_linearizable_read_on_follower(self):
        """A default read on a lagging follower is served by the leader: it is fresh."""
        pid = self.create("/products", MUG)["id"]
        answer = self.call("GET", "/products/" + pid, node="n2")
        self.assertEqual((answer.code, answer.json()["id"]), (200, pid))
        self.assertEqual(answer.header("ETag"), '"1"')
        self.assertEqual(answer.header("X-Raft-Applied-Index"), "1")

    def test_stale_read_on_follower(self):
        """?consistency=stale reads the follower's replica and reports its applied index."""
        pid = self.create("/products", MUG)["id"]
        stale = self.call("GET", "/products/%s?consistency=stale" % (pid,), node="n2")
        self.assertError(stale, 404, "not_found")
        self.assertEqual(stale.header("X-Raft-Applied-Index"), "0")
        self.cluster.replicate()
        stale = self.call("GET", "/products?consistency=stale", node="n2")
        self.assertEqual((stale.json()["total"], stale.header("X-Raft-Applied-Index")), (1, "1"))
        self.assertEqual(self.cluster.clients["n2"].requests, [])

    def test_stale_read_refused_where_the_copy_cannot_be_trusted(self):
        """A follower that lost its data (or never caught up) refuses the shop's stale
        reads with a JSON 503 rather than answering from an empty store."""
        self.create("/products", MUG)
        self.cluster.replicate()
        self.cluster.nodes["n2"].stale_refusal = "this data directory lost its data"
        for path in ("/products?consistency=stale", "/orders?consistency=stale"):
            stale = self.call("GET", path, node="n2")
            self.assertError(stale, 503, "stale_read_refused")

    def test_redirect(self):
        """?redirect=true on a follower: 307 to the same path on the leader."""
        answer = self.call("POST", "/products?redirect=true", MUG, node="n2")
        self.assertEqual(answer.code, 307)
        self.assertEqual(answer.header("Location"), "http://n1.test/products?redirect=true")
        self.assertEqual(answer.header("X-Raft-Leader"), "n1")
        answer = self.call("GET", "/orders?status=paid&redirect=true", node="n2")
        self.assertEqual(answer.header("Location"), "http://n1.test/orders?status=paid&redirect=true")
        self.assertEqual(self.leader.calls["propose"], 0)

    def test_no_leader(self):
        """With no leader known, writes and reads are 503 no_leader with Retry-After."""
        for node in self.cluster.nodes.values():
            node.lose_leader()
        for method, path, body in (("POST", "/products", MUG), ("GET", "/products", None),
                                   ("DELETE", "/orders/o1", None)):
            answer = self.call(method, path, body, node="n2")
            self.assertError(answer, 503, "no_leader")
            self.assertEqual(answer.header("Retry-After"), "1")

    def test_commit_timeout(self):
        """A write the leader cannot confirm is 504 commit_timeout, outcome unknown."""
        self.leader.commit_timeout = True
        answer = self.call("POST", "/products", MUG)
        self.assertError(answer, 504, "commit_timeout")
        self.assertIn("unknown", answer.json()["error"]["message"])

    def test_read_timeout(self):
        """A read the leader cannot confirm is 503 read_timeout."""
        self.leader.read_timeout = True
        self.assertError(self.call("GET", "/products"), 503, "read_timeout")

    def test_forwarded_request_is_not_forwarded_again(self):
        """Two nodes each believing the other leads answer 503 instead of looping."""
        self.cluster.nodes["n1"].follow("n2", "http://n2.test")
        self.cluster.nodes["n2"].follow("n1", "http://n1.test")
        answer = self.call("POST", "/products", MUG, node="n2")
        self.assertError(answer, 503, "no_leader")
        self.assertEqual(len(self.cluster.clients["n2"].requests), 1)
        self.assertEqual(len(self.cluster.clients["n1"].requests), 0)

    def test_leader_unreachable(self):
        """A refused connection to the leader is 503 no_leader: nothing was sent."""
        self.cluster.clients["n2"].failure = ConnectionRefusedError()
        self.assertError(self.call("POST", "/products", MUG, node="n2"), 503, "no_leader")

    def test_forward_timeout(self):
        """A forwarded write without an answer in time is 504: its outcome is unknown."""
        self.leader.hold = True
        d = start_request(self.cluster.http["n2"], "POST", "http://n2.test/products",
                          data=json.dumps(MUG).encode(),
                          headers={"Content-Type": ["application/json"]})
        self.cluster.http["n2"].flush()
        self.assertNoResult(d)
        self.cluster.clock.advance(forwarding.DEFAULT_FORWARD_TIMEOUT_SECONDS)
        self.cluster.http["n2"].flush()
        answer = self.successResultOf(d)
        self.assertError(answer, 504, "commit_timeout")


class IdempotencyTests(APICase):
    KEY = {"Idempotency-Key": ["order-42"]}

    def setUp(self):
        super().setUp()
        self.mug = self.create("/products", MUG)["id"]
        self.ann = self.create("/customers", ANN)["id"]
        self.body = {"customer_id": self.ann, "items": [{"product_id": self.mug, "quantity": 2}]}

    def stock(self):
        return self.leader.state_machine.get("p", self.mug)["stock"]

    def test_replay(self):
        """Repeating key, method, path and body returns the first answer, applying nothing."""
        first = self.call("POST", "/orders", self.body, headers=self.KEY)
        proposals = self.leader.calls["propose"]
        again = self.call("POST", "/orders", self.body, headers=self.KEY)
        self.assertEqual((again.code, again.json()), (201, first.json()))
        self.assertEqual(again.header("X-Raft-Index"), first.header("X-Raft-Index"))
        self.assertEqual(again.header("Location"), first.header("Location"))
        self.assertEqual(again.header("Idempotent-Replayed"), "true")
        self.assertIsNone(first.header("Idempotent-Replayed"))
        self.assertEqual(self.leader.calls["propose"], proposals)
        self.assertEqual(self.stock(), 8)

    def test_same_json_different_bytes(self):
        """The body is compared as JSON: key order and spacing do not matter."""
        first = self.call("POST", "/orders", self.body, headers=self.KEY)
        reordered = json.dumps({"items": self.body["items"], "customer_id": self.ann},
                               indent=2).encode()
        again = self.cluster("POST", "/orders", data=reordered,
                             headers=dict(self.KEY, **{"Content-Type": ["application/json"]}))
        self.assertEqual((again.code, again.json()), (201, first.json()))

    def test_reused_key(self):
        """The same key for a different body, path or method is 422 idempotency_key_reused."""
        self.call("POST", "/orders", self.body, headers=self.KEY)
        other = dict(self.body, items=[{"product_id": self.mug, "quantity": 1}])
        self.assertError(self.call("POST", "/orders", other, headers=self.KEY),
                         422, "idempotency_key_reused", "Idempotency-Key")
        self.assertError(self.call("POST", "/products", MUG, headers=self.KEY),
                         422, "idempotency_key_reused")
        self.assertError(self.call("DELETE", "/orders/o3", headers=self.KEY),
                         422, "idempotency_key_reused")
        self.assertEqual(self.stock(), 8)

    def test_bad_key(self):
        """An empty, over-long or non-ASCII Idempotency-Key is 422 naming the header."""
        for key in ("", "k" * 256, "clé"):
            answer = self.call("POST", "/orders", self.body,
                               headers={"Idempotency-Key": [key.encode("utf-8")]})
            self.assertError(answer, 422, "invalid_value", "Idempotency-Key")

    def test_refusals_replay(self):
        """A refused write's answer is replayed too (the same 409), not retried."""
        body = dict(self.body, items=[{"product_id": self.mug, "quantity": 99}])
        first = self.call("POST", "/orders", body, headers=self.KEY)
        self.assertError(first, 409, "insufficient_stock")
        self.call("PATCH", "/products/" + self.mug, {"stock": 100})
        again = self.call("POST", "/orders", body, headers=self.KEY)
        self.assertError(again, 409, "insufficient_stock")
        self.assertEqual(again.header("Idempotent-Replayed"), "true")

    def test_delete_replay(self):
        """A repeated DELETE with its key answers 204 again, not 404."""
        headers = {"Idempotency-Key": ["del-1"]}
        self.assertEqual(self.call("DELETE", "/products/" + self.mug, headers=headers).code, 204)
        again = self.call("DELETE", "/products/" + self.mug, headers=headers)
        self.assertEqual((again.code, again.header("Idempotent-Replayed")), (204, "true"))

    def test_retry_after_commit_timeout_and_leader_change(self):
        """A write whose outcome was unknown (504) and that did commit is not applied twice
        when the client retries with its key on the new leader."""
        self.leader.commit_timeout = True
        self.leader.apply_on_timeout = True
        self.assertError(self.call("POST", "/orders", self.body, headers=self.KEY),
                         504, "commit_timeout")
        self.leader.commit_timeout = False
        self.cluster.replicate()
        self.cluster.elect("n2")
        n2 = self.cluster.nodes["n2"]
        retry = self.call("POST", "/orders", self.body, node="n2", headers=self.KEY)
        self.assertEqual((retry.code, retry.header("Idempotent-Replayed")), (201, "true"))
        self.assertEqual(n2.state_machine.get("p", self.mug)["stock"], 8)
        self.assertEqual(n2.state_machine.list_orders()[1], 1)

    def test_replay_forwarded_to_leader(self):
        """A follower that lacks the record forwards; the leader's log replays the answer."""
        first = self.call("POST", "/orders", self.body, headers=self.KEY)
        again = self.call("POST", "/orders", self.body, node="n2", headers=self.KEY)
        self.assertEqual((again.code, again.json()), (201, first.json()))
        self.assertEqual(again.header("Idempotent-Replayed"), "true")
        self.assertEqual(self.stock(), 8)

    def test_replay_from_any_node(self):
        """A node holding the record answers the repeat itself, even as a follower."""
        first = self.call("POST", "/orders", self.body, headers=self.KEY)
        self.cluster.replicate()
        again = self.call("POST", "/orders", self.body, node="n2", headers=self.KEY)
        self.assertEqual((again.code, again.json()), (201, first.json()))
        self.assertEqual(self.cluster.clients["n2"].requests, [])

    def test_in_flight_duplicate(self):
        """Two identical keyed requests in flight at once commit once; both get one answer."""
        self.leader.hold = True
        http = self.cluster.http["n1"]
        kwargs = dict(data=json.dumps(self.body).encode(),
                      headers=dict(self.KEY, **{"Content-Type": ["application/json"]}))
        d1 = start_request(http, "POST", "http://n1.test/orders", **kwargs)
        d2 = start_request(http, "POST", "http://n1.test/orders", **kwargs)
        http.flush()
        self.leader.release()
        http.flush()
        a1, a2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertEqual((a1.code, a2.code), (201, 201))
        self.assertEqual(a1.json(), a2.json())
        self.assertEqual(a2.header("Idempotent-Replayed"), "true")
        self.assertEqual(self.stock(), 8)


class HelperTests(SynchronousTestCase):
    def test_parse_if_match(self):
        """If-Match parsing: * is any version, weak or foreign tags match nothing."""
        self.assertIsNone(api.parse_if_match(None))
        self.assertIsNone(api.parse_if_match(b"*"))
        self.assertEqual(api.parse_if_match(b'"1", "22"'), [1, 22])
        self.assertEqual(api.parse_if_match(b'W/"1", xyz, "a"'), [])

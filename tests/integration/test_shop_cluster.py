"""The shop on three real ``twistd raftnode --app shop`` processes (real UDP, disks, HTTP).

Concurrent orders race for the last units of stock through every node; afterwards
nothing is oversold, no unit is lost or invented, and every accepted order can be read
on every node.  Bounded in time; every process is killed in cleanup.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import LocalCluster, http

JSON = {"Content-Type": "application/json"}


class ShopClusterTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = LocalCluster(3, self.mktemp(), app="shop")
        self.addCleanup(self.cluster.stop_all)
        self.cluster.start_all()
        try:
            self.cluster.wait_for_leader(timeout=20)
        except TimeoutError as e:
            self.fail("%s\n%s" % (e, self.cluster.logs()))

    def post(self, node_id, path, body, key=None, attempts=20):
        """POST with an Idempotency-Key, retried like shop.client does on 503/504."""
        headers = dict(JSON)
        if key is not None:
            headers["Idempotency-Key"] = key
        result = None
        for attempt in range(attempts):
            result = http("POST", self.cluster.url(node_id) + path, json.dumps(body).encode(),
                          headers, timeout=10)
            if result.status not in (0, 503, 504):
                return result
            time.sleep(min(0.05 * 2 ** attempt, 0.5))
        return result

    def test_last_units_are_never_oversold(self):
        """Orders racing through all nodes for 10 units: stock never negative, units sold
        plus units left equal units stocked, every 201 order readable on every node."""
        product = self.post("n1", "/products", {"name": "Last", "price_cents": 999, "stock": 10})
        self.assertEqual(product.status, 201, product)
        customer = self.post("n2", "/customers", {"name": "Ann", "email": "ann@example.com"})
        self.assertEqual(customer.status, 201, customer)
        product_id, customer_id = product.json()["id"], customer.json()["id"]
        nodes = list(self.cluster.nodes)
        quantities = [1, 2, 1, 3, 1, 1, 2, 1] * 3

        def order(i):
            return quantities[i], self.post(nodes[i % 3], "/orders", {
                "customer_id": customer_id,
                "items": [{"product_id": product_id, "quantity": quantities[i]}]},
                key="race-%d" % (i,))

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(order, range(len(quantities))))
        accepted = [(q, a) for q, a in answers if a.status == 201]
        refused = [a for q, a in answers if a.status == 409]
        self.assertEqual(len(accepted) + len(refused), len(answers),
                         [a for _, a in answers if a.status not in (201, 409)])
        for answer in refused:
            self.assertEqual(answer.json()["error"]["code"], "insufficient_stock")
        sold = sum(q for q, _ in accepted)
        left = http("GET", self.cluster.url("n3") + "/products/" + product_id).json()["stock"]
        self.assertGreaterEqual(left, 0)
        self.assertEqual(sold + left, 10)
        self.assertTrue(accepted)

        last_index = max(int(a.headers["X-Raft-Index"]) for _, a in accepted)
        self.cluster.wait_for_applied(last_index, nodes, timeout=20)
        order_ids = {a.json()["id"] for _, a in accepted}
        self.assertEqual(len(order_ids), len(accepted))
        for node_id in nodes:
            base = self.cluster.url(node_id)
            for order_id in order_ids:
                read = http("GET", "%s/orders/%s?consistency=stale" % (base, order_id))
                self.assertEqual(read.status, 200, (node_id, order_id, read))
            listing = http("GET", base + "/orders?limit=500&consistency=stale").json()
            self.assertEqual({o["id"] for o in listing["items"]}, order_ids, node_id)
            stock = http("GET", "%s/products/%s?consistency=stale" % (base, product_id)).json()
            self.assertEqual(stock["stock"], left, node_id)

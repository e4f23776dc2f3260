"""shop.client and shopctl against two shop nodes behind StubTreq."""

from __future__ import annotations

import io
import json
import os
import sys
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from shop import cli
from shop.client import (DuplicateSku, InsufficientStock, NotFound, OutcomeUnknown,
                         PreconditionFailed, ShopClient, Unavailable, ValidationError, error_for)

from tests.unit.test_shop_api import ANN, MUG, ShopCluster


class Router:
    """A treq-like client reaching the cluster's nodes by host name (others refuse)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.sent = []
        self.before = []

    def request(self, method, url, **kwargs):
        host = urlsplit(url).hostname
        self.sent.append((method, url, kwargs.get("headers", {})))
        for hook in list(self.before):
            hook(method, url)
        node = host.split(".")[0]
        if node not in self.cluster.http:
            return defer.fail(ConnectionRefusedError())
        return self.cluster.http[node].request(method, url, **kwargs)


class ClientCase(SynchronousTestCase):
    def setUp(self):
        self.cluster = ShopCluster(self)
        self.router = Router(self.cluster)
        self.keys = iter("key-%d" % i for i in range(1000))
        self.client = self.make_client(["http://n2.test", "http://n1.test"])

    def make_client(self, urls, **kwargs):
        return ShopClient(urls, http_client=self.router, clock=self.cluster.clock,
                          new_key=lambda: next(self.keys), **kwargs)

    def wait(self, d, seconds=30):
        """Let back-off timers run (in small steps) until ``d`` has a result."""
        for _ in range(int(seconds * 20)):
            for stub in self.cluster.http.values():
                stub.flush()
            if d.called:
                break
            self.cluster.clock.advance(0.05)
        return d

    def result(self, d):
        return self.successResultOf(self.wait(d))

    def failure(self, d, *types):
        return self.failureResultOf(self.wait(d), *types).value


class ClientTests(ClientCase):
    def test_follows_redirect_and_remembers_leader(self):
        """A 307 from a follower leads to the leader, which later calls use directly."""
        product = self.result(self.client.create("products", MUG))
        self.assertEqual(product["name"], "Mug")
        self.assertEqual(self.client.leader_url, "http://n1.test")
        self.assertEqual([urlsplit(u).hostname for _, u, _ in self.router.sent],
                         ["n2.test", "n1.test"])
        self.result(self.client.get("products", product["id"]))
        self.assertEqual(urlsplit(self.router.sent[-1][1]).hostname, "n1.test")
        self.assertEqual(self.cluster.clients["n2"].requests, [])

    def test_writes_carry_an_idempotency_key(self):
        """Every write carries a generated Idempotency-Key; reads carry none."""
        self.result(self.client.create("products", MUG))
        self.result(self.client.list("products"))
        keys = [h.get("Idempotency-Key") for m, _, h in self.router.sent]
        self.assertEqual(keys, [["key-0"], ["key-0"], None])

    def test_retry_after_unknown_outcome_applies_once(self):
        """A 504 whose write did commit is retried with the same key: applied once."""
        leader = self.cluster.nodes["n1"]
        self.result(self.client.create("products", MUG))
        self.result(self.client.create("customers", ANN))
        leader.commit_timeout = leader.apply_on_timeout = True

        def heal(method, url):
            if method == "POST" and len(self.router.sent) > 4:
                leader.commit_timeout = False

        self.router.before.append(heal)
        order = self.result(self.client.create_order("c2", [("p1", 4)]))
        self.assertEqual(order["items"][0]["quantity"], 4)
        self.assertEqual(leader.state_machine.get("p", "p1")["stock"], 6)
        self.assertEqual(leader.state_machine.list_orders()[1], 1)
        posts = [h["Idempotency-Key"] for m, _, h in self.router.sent[-2:]]
        self.assertEqual(posts[0], posts[1])

    def test_leader_change(self):
        """After the leader moves, the old leader's 307 takes the client to the new one."""
        self.result(self.client.create("products", MUG))
        self.cluster.replicate()
        self.cluster.elect("n2")
        self.result(self.client.update("products", "p1", {"stock": 3}))
        self.assertEqual(self.client.leader_url, "http://n2.test")
        self.assertEqual(self.cluster.nodes["n2"].state_machine.get("p", "p1")["stock"], 3)

    def test_unreachable_node_is_skipped(self):
        """A node that refuses connections is skipped for the next one."""
        client = self.make_client(["http://down.test", "http://n1.test"])
        product = self.result(client.create("products", MUG))
        self.assertEqual(product["id"], "p1")

    def test_unreachable_redirect_target_switches_to_forwarding(self):
        """If the leader's advertised URL is unreachable, the nodes forward for us."""
        self.cluster.nodes["n2"].follow("n1", "http://n1-internal.test")
        client = self.make_client(["http://n2.test"])
        self.cluster.clients["n2"].inner = self.cluster.http["n1"]
        product = self.result(client.create("products", MUG))
        self.assertEqual(product["id"], "p1")
        self.assertFalse(client.use_redirects)
        self.assertEqual(len(self.cluster.clients["n2"].requests), 1)

    def test_no_leader_gives_up(self):
        """With no leader anywhere the client retries, then raises Unavailable."""
        for node in self.cluster.nodes.values():
            node.lose_leader()
        client = self.make_client(["http://n1.test", "http://n2.test"], attempts=3)
        error = self.failure(client.list("products"), Unavailable)
        self.assertEqual(error.code, "no_leader")
        self.assertEqual(len(self.router.sent), 3)

    def test_outcome_unknown_after_retries(self):
        """Writes that only ever time out raise OutcomeUnknown, not Unavailable."""
        self.cluster.nodes["n1"].commit_timeout = True
        client = self.make_client(["http://n1.test"], attempts=2)
        error = self.failure(client.create("products", MUG), OutcomeUnknown)
        self.assertIn("may have been applied", error.message)

    def test_typed_errors(self):
        """Error answers become typed exceptions carrying code, message and field."""
        self.result(self.client.create("products", MUG))
        self.result(self.client.create("customers", ANN))
        self.assertEqual(self.failure(self.client.get("products", "p9"), NotFound).code,
                         "not_found")
        self.failure(self.client.create("products", MUG), DuplicateSku)
        error = self.failure(self.client.create("products", {"name": "x"}), ValidationError)
        self.assertEqual(error.field, "price_cents")
        self.failure(self.client.create_order("c2", [("p1", 99)]), InsufficientStock)
        self.failure(self.client.update("products", "p1", {"stock": 1}, if_match=9),
                     PreconditionFailed)
        self.assertIsInstance(error_for(500, b"oops"), Exception)

    def test_delete_and_status(self):
        """delete() returns None; set_order_status() moves an order."""
        self.result(self.client.create("products", MUG))
        self.result(self.client.create("customers", ANN))
        order = self.result(self.client.create_order("c2", [("p1", 1)]))
        paid = self.result(self.client.set_order_status(order["id"], "paid"))
        self.assertEqual(paid["status"], "paid")
        self.assertIsNone(self.result(self.client.delete("products", "p1")))

    def test_cluster_status(self):
        """cluster_status() asks every configured node, reporting unreachable ones."""
        client = self.make_client(["http://n1.test", "http://n2.test", "http://n3.test"])
        statuses = self.result(client.cluster_status())
        self.assertEqual([s["role"] for _, s in statuses[:2]], ["leader", "follower"])
        self.assertIsInstance(statuses[2][1], Unavailable)


class CLITests(ClientCase):
    def shopctl(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        d = defer.ensureDeferred(cli.run(
            ["--cluster", "http://n2.test,http://n1.test"] + list(argv),
            lambda urls, **kw: self.make_client(urls, **kw), out, err))
        status = self.result(d)
        return status, out.getvalue(), err.getvalue()

    def test_members(self):
        """members list prints the configuration (from the leader, with progress);
        add, promote and remove send the cluster secret and print the new index; a
        change without a secret is one line (SystemExit); a refusal exits 1."""
        status, out, _ = self.shopctl("members", "list")
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split()[:3], ["ID", "ROLE", "ADDRESS"])
        self.assertEqual([line.split()[:2] for line in lines[1:3]],
                         [["n1", "voter"], ["n2", "voter"]])
        self.assertEqual(lines[3], "configuration at index 0, leader n1")
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("cluster-secret\n")
        status, out, _ = self.shopctl("members", "add", "n3", "--address", "10.0.0.3:5001",
                                      "--uuid", "ab" * 16, "--secret-file", secret)
        self.assertEqual((status, out), (0, "add n3: configuration at index 1\n"))
        leader = self.cluster.nodes["n1"]
        self.assertEqual(leader.configuration.learners, ("n3",))
        self.assertEqual(leader.configuration.get("n3").uuid, "ab" * 16)
        status, out, _ = self.shopctl("members", "promote", "n3", "--secret-file", secret)
        self.assertEqual(status, 0)
        self.assertEqual(leader.configuration.voters, ("n1", "n2", "n3"))
        status, out, err = self.shopctl("members", "remove", "zz", "--secret-file", secret)
        self.assertEqual(status, 1)
        self.assertIn("unknown_member", err)
        self.patch(os, "environ", {})
        d = defer.ensureDeferred(cli.run(["--cluster", "http://n1.test", "members", "remove",
                                          "n3"], self.make_client, io.StringIO(),
                                         io.StringIO()))
        failure = self.failureResultOf(self.wait(d), SystemExit)
        self.assertIn("need the cluster secret", str(failure.value))
        status, out, err = self.shopctl("--json", "members", "list")
        self.assertEqual(json.loads(out)["members"][2]["role"], "voter")

    def test_leader_transfer(self):
        """leader transfer [ID] sends the secret, prints who leads now; a refusal exits
        1 with its code."""
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("cluster-secret\n")
        status, out, _ = self.shopctl("leader", "transfer", "--secret-file", secret)
        self.assertEqual((status, out), (0, "n2 leads term 2 (was n1)\n"))
        self.assertEqual(self.cluster.nodes["n1"].leader_id, "n2")
        self.cluster.elect("n2")
        status, out, err = self.shopctl("leader", "transfer", "n7", "--secret-file", secret)
        self.assertEqual(status, 1)
        self.assertIn("unknown_member", err)

    def test_products(self):
        """products create/list/get/update/delete print tables and key: value lines."""
        status, out, _ = self.shopctl("products", "create", "--name", "Mug", "--price-cents",
                                      "1250", "--stock", "10", "--category", "kitchen")
        self.assertEqual(status, 0)
        self.assertIn("id           p1", out)
        status, out, _ = self.shopctl("products", "list", "--category", "kitchen")
        self.assertEqual(out.splitlines()[0].split(),
                         ["ID", "NAME", "PRICE", "STOCK", "CATEGORY", "SKU", "VERSION"])
        self.assertEqual(out.splitlines()[1].split(), ["p1", "Mug", "1250", "10", "kitchen", "-", "1"])
        self.assertEqual(out.splitlines()[2], "1 of 1 (offset 0)")
        status, out, _ = self.shopctl("products", "update", "p1", "--stock", "4", "--clear",
                                      "category", "--if-match", "1")
        self.assertIn("stock        4", out)
        self.assertIn("category     -", out)
        status, out, err = self.shopctl("products", "get", "p1", "--stale")
        self.assertEqual(status, 1, "n2's replica has not caught up yet")
        self.assertIn("404 not_found", err)
        self.cluster.replicate()
        status, out, _ = self.shopctl("products", "get", "p1", "--stale")
        self.assertEqual(status, 0)
        self.assertIn("stock        4", out)
        self.assertEqual(self.shopctl("products", "delete", "p1")[1], "deleted p1\n")

    def test_json_output(self):
        """--json prints the API's JSON."""
        self.shopctl("customers", "create", "--name", "Ann", "--email", "ann@example.com")
        status, out, _ = self.shopctl("--json", "customers", "get", "c1")
        self.assertEqual(json.loads(out)["email"], "ann@example.com")
        status, out, _ = self.shopctl("--json", "customers", "list")
        self.assertEqual(json.loads(out)["total"], 1)

    def test_orders(self):
        """orders create with --item, update --status and --item, list filters, delete."""
        self.shopctl("products", "create", "--data", json.dumps(MUG))
        self.shopctl("customers", "create", "--name", "Ann", "--email", "ann@example.com")
        status, out, _ = self.shopctl("orders", "create", "--customer-id", "c2",
                                      "--item", "p1:2", "--item", "p1:1")
        self.assertEqual(status, 0)
        self.assertIn("items        p1:2,p1:1", out)
        self.assertIn("total_cents  3750", out)
        self.assertIn("status       paid", self.shopctl("orders", "update", "o3", "--status",
                                                        "paid")[1])
        status, out, err = self.shopctl("orders", "update", "o3", "--item", "p1:1")
        self.assertEqual(status, 1)
        self.assertIn("invalid_transition", err)
        out = self.shopctl("orders", "list", "--status", "paid")[1]
        self.assertEqual(out.splitlines()[1].split()[:3], ["o3", "c2", "paid"])
        self.assertEqual(self.shopctl("orders", "delete", "o3")[0], 0)

    def test_errors(self):
        """An error answer exits 1 with the code and message on stderr."""
        status, out, err = self.shopctl("products", "get", "p404")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("404 not_found", err)
        status, out, err = self.shopctl("--json", "products", "get", "p404")
        self.assertEqual(json.loads(out)["error"]["code"], "not_found")

    def test_usage_errors(self):
        """Bad arguments are usage errors (argparse), not requests."""
        for argv in (["orders", "create", "--customer-id", "c1", "--item", "p1"],
                     ["products", "create", "--name", "x"],
                     ["orders", "update", "o1"]):
            self.patch(sys, "stderr", io.StringIO())
            d = defer.ensureDeferred(cli.run(argv, self.make_client, io.StringIO(), io.StringIO()))
            self.failureResultOf(d, SystemExit)
        self.assertEqual(self.router.sent, [])

    def test_status(self):
        """shopctl status shows every node's role, term and indexes as a table."""
        self.shopctl("products", "create", "--data", json.dumps(MUG))
        status, out, _ = self.shopctl("status")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["URL", "NODE", "ROLE", "TERM", "LEADER", "COMMIT",
                                            "APPLIED", "LAST", "LOG"])
        self.assertEqual(lines[1].split()[:5], ["http://n2.test", "n2", "follower", "1", "n1"])
        self.assertEqual(lines[2].split()[:6], ["http://n1.test", "n1", "leader", "1", "n1", "1"])
        status, out, _ = self.shopctl("--cluster", "http://n1.test,http://gone.test", "status")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[2].split(),
                         ["http://gone.test", "-", "unreachable", "-", "-", "-", "-", "-"])
        self.assertTrue(out.splitlines()[3].startswith("http://gone.test: "))
        status, out, _ = self.shopctl("--json", "status")
        self.assertEqual([n["status"]["role"] for n in json.loads(out)], ["follower", "leader"])

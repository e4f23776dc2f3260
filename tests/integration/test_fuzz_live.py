"""Fuzzing live ``twistd raftnode`` processes: hostile datagrams and hostile HTTP.

Datagrams: a real node of a three-member cluster (two running, so it has a leader and
commits writes) receives well over 100,000 datagrams on its Raft port: random bytes,
bit flips and truncations of valid datagrams built with the real codec and envelope and
the cluster secret, replays of datagrams it already accepted, datagrams claiming a live
peer's old incarnation, datagrams under a wrong secret or another cluster's id, and
oversized ones.  It must keep serving (a write through it commits), count no internal
error, account every datagram in ``/raft/status``'s transport counters and show the
garbage among the drops.

HTTP: random methods, paths, query strings, headers and bodies against a live shop node
and a live key-value node: every answer is a JSON error when it is a 4xx, nothing is ever
a 5xx, and no connection hangs.  Each request is generated from a printed seed.

Every wait is bounded; processes are killed in the cleanup.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import time
import urllib.parse

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import LocalCluster
from txraft.tools.localcluster import http as blocking_http
from txraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
)
from txraft.runtime.identity import IDENTITY_FILE, read_identity
from txraft.runtime.transport import INBOUND_DROPS, NO_UUID, UDPTransport
from txraft.runtime.trust import REPLICATION_TYPES

TARGET_DATAGRAMS = 100_000
SEED = 20261126


class Recorder:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append(data)


def forger(node_id, cluster, secret, incarnation, cluster_id="txraft", node_uuid=NO_UUID):
    """A transport in this process that builds real envelopes as ``node_id`` would."""
    transport = UDPTransport(
        node_id=node_id, cluster_id=cluster_id,
        peers={n.node_id: ("127.0.0.1", n.port) for n in cluster.nodes.values()},
        secret=secret, deliver=lambda m: None, reactor=Clock(), incarnation=incarnation,
        log=Logger(observer=lambda e: None), node_uuid=node_uuid)
    transport.makeConnection(Recorder())
    return transport


def stale_messages(sender, receiver):
    """Valid messages of every type from an old term (0): a node must ignore them."""
    return [
        RequestVote(0, sender, receiver, 0, 0, pre_vote=False),
        RequestVote(0, sender, receiver, 5, 0, pre_vote=True),
        RequestVoteResponse(0, sender, receiver, vote_granted=True),
        AppendEntries(0, sender, receiver, 0, 0, (Entry(1, 0, b"x" * 40),), 0, 1),
        AppendEntriesResponse(0, sender, receiver, success=True, match_index=3, rejected_index=0, conflict_index=0, conflict_term=0, read_seq=1),
        SnapshotChunk(0, sender, receiver, 10, 0, 0, b"s" * 3000, done=True, read_seq=1),  # 3 fragments
        InstallSnapshotResponse(0, sender, receiver, 10, success=True, read_seq=1),
        SnapshotChunkAck(0, receiver, sender, 10, 100, done=False),
    ]


def datagrams_of(transport, messages, receiver):
    for message in messages:
        transport.send(message)
    out, transport.transport.written = transport.transport.written, []
    return out


def transport_stats(node):
    status = node.status(timeout=5.0)
    if status is None:
        raise AssertionError("%s does not answer /raft/status" % node.node_id)
    return status["transport"]


class LiveDatagramFuzzTests(SynchronousTestCase):
    def test_hostile_datagrams(self):
        """At least 100,000 bad datagrams: the node keeps serving, counts no internal
        error and shows them all as drops in its transport counters."""
        cluster = LocalCluster(3, self.mktemp(), app="kv")
        self.addCleanup(cluster.stop_all)
        cluster.start("n1")
        cluster.start("n2")
        try:
            cluster.wait_for_leader(60, among=["n1", "n2"])
        except TimeoutError as e:
            self.fail("%s\n%s" % (e, cluster.logs()))
        target = cluster.nodes["n1"]
        address = ("127.0.0.1", target.port)
        secret = cluster.secret.encode()
        rng = random.Random(SEED)

        # n3 is a member that never runs: the forger speaks as n3 with the right secret.
        phantom = forger("n3", cluster, secret, incarnation=10**15)
        originals = datagrams_of(phantom, stale_messages("n3", "n1"), "n1")
        # n2 is alive with a much newer incarnation (its boot time in microseconds):
        # these are authentic (its data directory's uuid) but from "an older n2", so
        # replays by definition.
        n2_uuid = read_identity(os.path.join(cluster.nodes["n2"].data_dir,
                                             IDENTITY_FILE)).uuid_bytes
        old_n2 = datagrams_of(forger("n2", cluster, secret, incarnation=1, node_uuid=n2_uuid),
                              stale_messages("n2", "n1") * 4, "n1")
        # ... and from an n2 on another data directory (a wiped disk): wrong identity,
        # refused before they touch n2's replay window although their incarnation is
        # far newer.  (Not a leader's replication, which is delivered from any uuid; a
        # holder of the secret who sends that under a newer incarnation takes n2's place
        # whatever the uuid: the secret authenticates the cluster, not the node.)
        wiped_n2 = datagrams_of(forger("n2", cluster, secret, incarnation=10**17,
                                       node_uuid=b"\x5a" * 16),
                                [m for m in stale_messages("n2", "n1")
                                 if type(m) not in REPLICATION_TYPES], "n1")
        wrong_secret = datagrams_of(forger("n3", cluster, b"guessed", incarnation=10**15 + 1),
                                    stale_messages("n3", "n1"), "n1")
        wrong_cluster = datagrams_of(forger("n3", cluster, secret, 10**15 + 2, "staging"),
                                     stale_messages("n3", "n1"), "n1")
        bases = originals + old_n2

        def mutate():
            kind = rng.randrange(9)
            if kind == 0:
                return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
            base = bytearray(rng.choice(bases))
            if kind in (1, 2):  # flip one to three bits
                for _ in range(rng.randint(1, 3)):
                    bit = rng.randrange(len(base) * 8)
                    base[bit // 8] ^= 1 << (bit % 8)
                return bytes(base)
            if kind == 3:
                return bytes(base[:rng.randrange(len(base))])
            if kind == 4:  # a replay of something it already accepted
                return rng.choice(originals)
            if kind == 5:
                return rng.choice(old_n2)
            if kind == 6:
                return rng.choice(wrong_secret)
            if kind == 7:
                return rng.choice(wrong_cluster if rng.random() < 0.5 else wiped_n2)
            return bytes(base) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 1600)))

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        before = transport_stats(target)
        for data in originals:  # accepted once each (stale, so ignored by Raft)
            sock.sendto(data, address)
        time.sleep(0.2)

        sent = 0
        deadline = time.monotonic() + 50
        received = 0
        while time.monotonic() < deadline:
            for _ in range(200):
                sock.sendto(mutate(), address)
            sent += 200
            time.sleep(0.004)  # stay near what the node can read, or the kernel drops
            if sent % 10_000 == 0:
                received = transport_stats(target)["received"] - before["received"]
                if received >= TARGET_DATAGRAMS + len(originals) + 500:
                    break
        # Let it drain what is queued, then read the final counters.
        time.sleep(0.5)
        after = transport_stats(target)
        received = after["received"] - before["received"]
        self.assertGreaterEqual(received, TARGET_DATAGRAMS,
                                "only %d of %d datagrams sent were received" % (received, sent))

        delta = {name: after[name] - before.get(name, 0) for name in after}
        drops = sum(delta[name] for name in INBOUND_DROPS)
        self.assertEqual(after["internal_errors"], 0, after)
        self.assertEqual(after["deliver_errors"], 0, after)
        # Every datagram ever received has exactly one outcome.
        self.assertEqual(after["received"], after["delivered"] + after["fragments_buffered"]
                         + sum(after[name] for name in INBOUND_DROPS), after)
        # Nothing fuzzed got through: the only deliveries besides the stale originals
        # (at most once each) are the live peer's own traffic, all of it dropped garbage.
        self.assertGreaterEqual(drops, TARGET_DATAGRAMS - len(originals), delta)
        for reason in ("dropped_bad_mac", "dropped_replayed", "dropped_malformed",
                       "dropped_wrong_cluster", "dropped_oversized", "dropped_wrong_identity"):
            self.assertGreater(delta[reason], 100, (reason, delta))

        # Still serving: a write through it commits, and reads see it.
        self.assertTrue(target.alive(), cluster.logs())
        result = blocking_http("PUT", target.url + "/kv/after-fuzz", b"still here", timeout=15)
        self.assertEqual(result.status, 204, "%r\n%s" % (result, cluster.logs()))
        result = blocking_http("GET", target.url + "/kv/after-fuzz", timeout=15)
        self.assertEqual(result.body, b"still here")

        # And it answers HTTP garbage politely too (the key-value routes).
        HTTPFuzzer(self, target.url, "kv", seed=SEED).run(400)


# -- HTTP -----------------------------------------------------------------------------------


def _percent(rng, text):
    return urllib.parse.quote(text, safe="/")


def error_code(content):
    try:
        return json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class HTTPFuzzer:
    """Random but well-framed HTTP requests; checks every answer."""

    METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "FOO"]
    HEADER_VALUES = {
        "Content-Type": ["application/json", "application/merge-patch+json", "text/plain",
                         "", "application/json; charset=latin-1", "x/y+json", "\u00e9/\u00e8",
                         "multipart/form-data; boundary=x"],
        "Idempotency-Key": ["k", "key-%d", "x" * 300, "\u00ff\u00fe", " ", "a b", "*"],
        "If-Match": ['"1"', "*", 'W/"1"', '"abc"', '"99999999999999999999999"', "1",
                     '"1", "2"', '""', "\u00e9"],
        "Accept": ["*/*", "text/html", "application/xml", ""],
        "X-Raft-Forwarded-By": ["n2", "", "\u00e9\u00e9"],
        "Authorization": ["Bearer x", "Basic Zm9vOmJhcg==", ""],
        "If-None-Match": ["*", '"1"'],
    }

    def __init__(self, test, base_url, app, seed):
        self.test = test
        self.base = urllib.parse.urlsplit(base_url)
        self.app = app
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = {"p": ["p1"], "c": ["c1"], "o": ["o1"]}

    # -- generation -------------------------------------------------------------------------

    def ident(self, prefix):
        rng = self.rng
        choices = list(self.ids.get(prefix, [])) + [
            prefix + "0", prefix + "-1", prefix + str(2**70), prefix, "x", "%00", "%ff",
            prefix + "1" * 40, "\u00e9", "..", prefix + "1.5", prefix + " 1"]
        return rng.choice(choices)

    def path(self):
        rng = self.rng
        if self.app == "kv":
            bases = ["/kv/" + _percent(rng, rng.choice(
                ["k", "a/b/c", "x" * 1100, "\u00e9\u6f22", "..", "%ff", "", " "])),
                "/kv", "/kv/", "/raft/status", "/health", "/ready", "/admin/faults",
                "/", "/nothing/here", "//kv//k"]
        else:
            kind = rng.choice("pco")
            collection = {"p": "products", "c": "customers", "o": "orders"}[kind]
            bases = ["/" + collection, "/%s/%s" % (collection, _percent(rng, self.ident(kind))),
                     "/%s/%s/extra" % (collection, _percent(rng, self.ident(kind))), "/openapi.json",
                     "/raft/status", "/health", "/ready", "/admin/faults", "/",
                     "/" + collection + "/", "/%2e%2e/" + collection, "/products?", "/x" * 200]
        path = rng.choice(bases)
        if rng.random() < 0.5:
            params = []
            for _ in range(rng.randint(1, 4)):
                name = rng.choice(["limit", "offset", "consistency", "redirect", "category",
                                   "q", "in_stock", "min_price_cents", "max_price_cents",
                                   "customer_id", "status", "email", "bogus", "%ff", ""])
                value = rng.choice(["-1", "0", "1", "abc", "99999999999999999999", "stale",
                                    "linearizable", "true", "maybe", "%ff%fe", "", "%00",
                                    "pending", "\u00e9", "p1"])
                params.append("%s=%s" % (name, value if "%" in value else _percent(rng, value)))
            path += ("&" if "?" in path else "?") + "&".join(params)
        return path

    def json_value(self, depth=0):
        rng = self.rng
        choice = rng.randrange(10 if depth < 3 else 6)
        if choice == 0:
            return None
        if choice == 1:
            return rng.choice([True, False])
        if choice == 2:
            return rng.choice([0, -1, 1, 2**31, 2**63, 2**70, -(2**70), 10**9, 10**10 + 1])
        if choice == 3:
            return rng.choice([0.5, -0.0, 1e308, 1.5])
        if choice == 4:
            return rng.choice(["", "x", "a@b.cd", "\u00e9" * 10, "x" * 5000, "p1", "c1",
                               "pending", "paid", "shipped", "cancelled", "\x00"])
        if choice == 5:
            return rng.choice(self.ids["p"] + self.ids["c"] + self.ids["o"])
        if choice in (6, 7):
            return [self.json_value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["name", "price_cents", "stock", "email", "address", "customer_id",
                            "items", "product_id", "quantity", "status", "sku", "category",
                            "description", "bogus", ""]): self.json_value(depth + 1)
                for _ in range(rng.randint(0, 5))}

    def valid_document(self, kind, method):
        rng = self.rng
        if kind == "p":
            doc = {"name": "n%d" % rng.randrange(100), "price_cents": rng.randint(0, 1000),
                   "stock": rng.randint(0, 5)}
            for field, value in (("description", "d"), ("category", "c%d" % rng.randrange(3)),
                                 ("sku", "s%d" % rng.randrange(30))):
                if rng.random() < 0.3:
                    doc[field] = value
        elif kind == "c":
            doc = {"name": "c", "email": "fuzz%d@x.example" % rng.randrange(50)}
            if rng.random() < 0.3:
                doc["address"] = "somewhere"
        elif method == "PATCH":
            doc = {"status": rng.choice(["paid", "shipped", "cancelled", "pending"])}
        else:
            doc = {"customer_id": rng.choice(self.ids["c"]),
                   "items": [{"product_id": rng.choice(self.ids["p"]),
                              "quantity": rng.randint(0, 3)}
                             for _ in range(rng.randint(1, 3))]}
            if method == "PUT" and rng.random() < 0.5:
                del doc["customer_id"]
        if method == "PATCH" and kind != "o":
            doc = {k: v for k, v in doc.items() if rng.random() < 0.5}
        return doc

    def document(self, doc=None):
        rng = self.rng
        if doc is None:
            doc = self.valid_document(rng.choice("pco"), rng.choice(["POST", "PUT", "PATCH"]))
        doc = dict(doc)
        for _ in range(rng.randint(0, 3)):
            action = rng.randrange(3)
            key = rng.choice(list(doc) + ["bogus", "items", "stock"])
            if action == 0:
                doc[key] = self.json_value(1)
            elif action == 1:
                doc.pop(key, None)
            else:
                doc[key] = {"nested": [doc.get(key)]}
        return doc

    def body(self):
        rng = self.rng
        kind = rng.randrange(10)
        if kind == 0:
            return b""
        if kind == 1:
            return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        if kind == 2:
            return b"[" * 100_000 + b"]" * 100_000  # deep nesting; over the size limit
        if kind == 3:
            return b"[" * 5000 + b"]" * 5000  # deep nesting under the limit
        if kind == 4:
            return json.dumps({"name": "x" * 70_000}).encode()
        if kind == 5:
            return b'{"name": NaN, "price_cents": Infinity}'
        if kind == 6:
            return json.dumps(self.json_value()).encode()
        return json.dumps(self.document()).encode()

    def headers(self, body):
        rng = self.rng
        headers = {}
        for name, values in self.HEADER_VALUES.items():
            if rng.random() < 0.3:
                value = rng.choice(values)
                if "%d" in value:
                    value = value % rng.randrange(50)
                headers[name] = value
        if rng.random() < 0.8 and body:
            headers["Content-Type"] = headers.get("Content-Type", "application/json")
        return headers

    # -- sending and checking -----------------------------------------------------------------

    def send(self, method, path, body, headers, timeout=15.0):
        conn = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=timeout)
        try:
            # putrequest/putheader: http.client would refuse some of our values otherwise.
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value.encode("utf-8"))
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def sensible(self):
        """A request on a real route with a fitting method and a mostly valid body."""
        rng = self.rng
        kind = rng.choice("pco")
        collection = {"p": "products", "c": "customers", "o": "orders"}[kind]
        if rng.random() < 0.4:
            method = rng.choice(["GET", "POST", "POST"])
            path = "/" + collection
            if method == "GET" and rng.random() < 0.5:
                path += "?" + rng.choice(["limit=2&offset=1", "consistency=stale", "q=n1",
                                          "in_stock=true", "status=paid", "customer_id=c1",
                                          "min_price_cents=5&max_price_cents=500"])
        else:
            method = rng.choice(["GET", "PUT", "PATCH", "DELETE"])
            ids = self.ids.get(kind) or [kind + "1"]
            path = "/%s/%s" % (collection, rng.choice(ids) if rng.random() < 0.85
                                else _percent(rng, self.ident(kind)))
        body = b""
        if method in ("POST", "PUT", "PATCH"):
            doc = self.valid_document(kind, method)
            if rng.random() < 0.5:
                doc = self.document(doc)
            body = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"} if body else {}
        if rng.random() < 0.3:
            headers.update(self.headers(body))
        return method, path, body, headers

    def run(self, count):
        test = self.test
        started = time.monotonic()
        for i in range(count):
            if self.rng.random() < 0.6:
                method, path, body, headers = self.sensible()
            else:
                method = self.rng.choice(self.METHODS)
                path = self.path()
                body = (self.body() if method not in ("GET", "HEAD") or self.rng.random() < 0.1
                        else b"")
                headers = self.headers(body)
            what = "request %d of seed %d: %s %s headers=%r body=%r" % (
                i, self.seed, method, path[:200], headers, body[:200])
            try:
                status, response_headers, content = self.send(method, path, body, headers)
            except socket.timeout:
                test.fail("hung connection on " + what)
            except (OSError, http.client.HTTPException) as e:
                test.fail("connection error %r on %s" % (e, what))
            if status == 503 and "X-Raft-Forwarded-By" in headers:
                # By design: a follower does not forward a request marked as forwarded
                # already (it could loop); it answers no_leader instead.
                if method != "HEAD":
                    test.assertEqual(error_code(content), "no_leader",
                                     "%r on %s" % (content, what))
                continue
            test.assertLess(status, 500, "%d %r on %s" % (status, content[:300], what))
            if 400 <= status < 500 and method != "HEAD":
                try:
                    error = json.loads(content)["error"]
                except (ValueError, KeyError, TypeError):
                    test.fail("a %d that is not a JSON error: %r on %s" % (status, content[:300], what))
                test.assertIsInstance(error.get("code"), str, what)
            if status == 201 and method == "POST":
                try:
                    created = json.loads(content)["id"]
                    self.ids.setdefault(created[0], []).append(created)
                except (ValueError, KeyError, TypeError, IndexError):
                    pass
        return time.monotonic() - started


class LiveHTTPFuzzTests(SynchronousTestCase):
    def test_hostile_http_against_the_shop(self):
        """Random requests against the leader and a follower (which forwards them) of a
        live shop cluster: 4xx answers are JSON errors, never a 5xx, never a hung
        connection; both still serve afterwards."""
        cluster = LocalCluster(3, self.mktemp(), app="shop")
        self.addCleanup(cluster.stop_all)
        cluster.start("n1")
        cluster.start("n2")
        try:
            leader = cluster.wait_for_leader(60, among=["n1", "n2"])
        except TimeoutError as e:
            self.fail("%s\n%s" % (e, cluster.logs()))
        follower = "n2" if leader == "n1" else "n1"
        fuzzers = [HTTPFuzzer(self, cluster.url(node_id), "shop", seed=SEED + i)
                   for i, node_id in enumerate((leader, follower))]
        first = fuzzers[0]
        # Some real rows so that ids in paths and bodies sometimes exist.
        for i in range(3):
            first.send("POST", "/products", json.dumps(
                {"name": "p%d" % i, "price_cents": 100, "stock": 5}).encode(),
                {"Content-Type": "application/json"})
            first.send("POST", "/customers", json.dumps(
                {"name": "c%d" % i, "email": "c%d@x.example" % i}).encode(),
                {"Content-Type": "application/json"})
        for kind, collection in (("p", "products"), ("c", "customers")):
            status, _, content = first.send("GET", "/" + collection, b"", {})
            ids = [item["id"] for item in json.loads(content)["items"]]
            for fuzzer in fuzzers:
                fuzzer.ids[kind] = list(ids)
        for fuzzer in fuzzers:
            fuzzer.run(2500)
        for node_id in (leader, follower):
            self.assertTrue(cluster.nodes[node_id].alive(), cluster.logs())
            result = blocking_http("POST", cluster.url(node_id) + "/products", json.dumps(
                {"name": "after", "price_cents": 1, "stock": 1}).encode(),
                {"Content-Type": "application/json"}, timeout=15)
            self.assertEqual(result.status, 201, result)
            with open(cluster.nodes[node_id].log_path) as f:
                self.assertNotIn("Traceback", f.read())


class RegressionTests(SynchronousTestCase):
    """Reproducers of the contract breaks the HTTP fuzzer found (issue 4: every error is
    ``{"error": {...}}`` JSON), fixed by ``txraft.http.requests.RequestGuard`` and ``JSONRequest``."""

    def setUp(self):
        cluster = LocalCluster(1, self.mktemp(), app="shop")
        self.addCleanup(cluster.stop_all)
        cluster.start_all()
        cluster.wait_for_leader(60)
        self.fuzzer = HTTPFuzzer(self, cluster.url("n1"), "shop", seed=0)

    def assertJSONError(self, status, content):
        self.assertTrue(400 <= status < 500, status)
        self.assertIsInstance(json.loads(content)["error"]["code"], str)

    def test_non_utf8_path(self):
        """GET /products/%ff: a JSON 404 or 400, not Klein's text/html 400."""
        status, _, content = self.fuzzer.send("GET", "/products/%ff", b"", {})
        self.assertJSONError(status, content)

    def test_malformed_multipart_post(self):
        """POST /products with Content-Type multipart/form-data and a JSON body: a JSON
        415, as for any other non-JSON content type (PUT already gets one)."""
        status, _, content = self.fuzzer.send(
            "POST", "/products", b'{"name": "a", "price_cents": 1, "stock": 1}',
            {"Content-Type": "multipart/form-data; boundary=x"})
        self.assertJSONError(status, content)
        self.assertEqual(status, 415)


"""GET /metrics: each node's status in the Prometheus text exposition format 0.0.4.

Every answer is parsed strictly (``parse`` below: HELP and TYPE once per family and before
its samples, one group per family, sample lines ``name{labels} value``, label escaping),
and its values are compared with the node's own ``status()``: a real ``RaftNode`` on a
simulated network (leader, follower, snapshot transfers, a fatal error), the kv and shop
HTTP roots, and one real ``twistd raftnode`` process.
"""

from __future__ import annotations

import os
import re

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from shop import state as shop_state
from shop.app import application as shop_application
from tests import REPO_ROOT
from txraft.apps import kv, kv_http
from txraft.core import CoreStatus, PeerStatus
from txraft.http.metrics import prometheus_text
from txraft.runtime.status import NodeStatus
from txraft.http.node import RaftHTTP
from txraft.runtime.transport import INBOUND_DROPS, OUTBOUND_DROPS, STATS_NAMES

from tests.fakes import FakeCluster, request
from tests.unit.test_node import SNAPSHOT_TIMING, Cluster, result_of

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)\Z")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_labels(text: str) -> dict:
    """``a="x",b="y\\"z"`` as a dict, escapes undone; raises ValueError when malformed."""
    labels = {}
    position = 0
    while position < len(text):
        equals = text.index("=", position)
        name = text[position:equals]
        if not LABEL_NAME.match(name) or name in labels:
            raise ValueError("bad or repeated label name %r" % (name,))
        if text[equals + 1 : equals + 2] != '"':
            raise ValueError("label value not quoted")
        value = []
        position = equals + 2
        while True:
            char = text[position]
            if char == "\\":
                value.append(ESCAPES[text[position + 1]])
                position += 2
            elif char == '"':
                position += 1
                break
            elif char == "\n":
                raise ValueError("raw newline in a label value")
            else:
                value.append(char)
                position += 1
        labels[name] = "".join(value)
        if position < len(text):
            if text[position] != ",":
                raise ValueError("labels not separated by a comma")
            position += 1
    return labels


def parse(testcase, body: bytes) -> dict:
    """Families by name: ``{"help", "type", "samples": {frozenset(labels): value}}``.

    Fails ``testcase`` on anything the 0.0.4 format or our naming rules forbid.
    """
    text = body.decode("utf-8")
    testcase.assertTrue(text.endswith("\n"), "the exposition ends with a newline")
    families = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            keyword, name, rest = line[2:6], *line[7:].split(" ", 1)
            testcase.assertTrue(NAME.match(name), line)
            family = families.setdefault(name, {"samples": {}})
            testcase.assertNotIn(keyword.lower(), family, "%s twice for %s" % (keyword, name))
            testcase.assertEqual(family["samples"], {}, "%s after samples: %s" % (keyword, line))
            if keyword == "TYPE":
                testcase.assertIn(rest, ("counter", "gauge"), line)
            else:
                testcase.assertNotIn("\\", rest.replace("\\\\", "").replace("\\n", ""), line)
            family[keyword.lower()] = rest
            current = name
            continue
        testcase.assertFalse(line.startswith("#") or not line.strip(), repr(line))
        match = SAMPLE.match(line)
        testcase.assertIsNotNone(match, repr(line))
        name, label_text, value = match.groups()
        testcase.assertEqual(name, current, "samples of %s are not grouped" % (name,))
        family = families[name]
        testcase.assertEqual(set(family) - {"samples"}, {"help", "type"}, name)
        labels = frozenset(parse_labels(label_text or "").items())
        testcase.assertNotIn(labels, family["samples"], "a sample twice: %r" % (line,))
        family["samples"][labels] = float(value)
    for name, family in families.items():
        testcase.assertTrue(name.startswith("txraft_"), name)
        testcase.assertTrue(family["samples"], "%s has no samples" % (name,))
        testcase.assertEqual(name.endswith("_total"), family["type"] == "counter", name)
    return families


def value(families, name, **labels):
    return families[name]["samples"][frozenset(labels.items())]


def documented_families() -> set:
    with open(os.path.join(REPO_ROOT, "docs", "deploy.md"), encoding="utf-8") as f:
        section = f.read().split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(txraft_\w+)", section))


class ParserTests(SynchronousTestCase):
    def test_rejects_what_the_format_forbids(self):
        """The parser the other tests rely on refuses repeated HELP, samples before
        their TYPE, ungrouped samples, bad escapes and unquoted label values."""
        bad = [
            b"# HELP txraft_a x\n# HELP txraft_a x\n# TYPE txraft_a gauge\ntxraft_a 1\n",
            b"# HELP txraft_a x\ntxraft_a 1\n",
            b"# HELP txraft_a x\n# TYPE txraft_a gauge\ntxraft_a 1\n"
            b"# HELP txraft_b x\n# TYPE txraft_b gauge\ntxraft_b 1\ntxraft_a 2\n",
            b'# HELP txraft_a x\n# TYPE txraft_a gauge\ntxraft_a{l="\\q"} 1\n',
            b"# HELP txraft_a x\n# TYPE txraft_a gauge\ntxraft_a{l=x} 1\n",
            b"# HELP txraft_a x\n# TYPE txraft_a counter\ntxraft_a 1\n",
            b"# HELP txraft_a x\n# TYPE txraft_a gauge\ntxraft_a 1",
        ]
        for body in bad:
            with self.assertRaises(Exception, msg=body):
                parse(self, body)


def made(node_id="n1", role="follower", transport=None, counters=(), snapshot_transfers=(),
         progress=(), leader_id=None):
    """A hand-made ``NodeStatus`` (the typed value ``RaftNode.status_view()`` returns)."""
    core = CoreStatus(id=node_id, role=role, term=3, voted_for=None, leader_id=leader_id,
                      commit_index=5, last_applied=5, last_log_index=6, last_log_term=3,
                      snapshot_index=0, voters=("n1", "n2", "n3"), progress=progress)
    return NodeStatus(core=core, applied_index=5, counters=tuple(counters),
                      transport=None if transport is None else tuple(transport.items()),
                      snapshot_transfers=tuple(snapshot_transfers))


class ExpositionTests(SynchronousTestCase):
    """``txraft.http.metrics.prometheus_text`` on hand-made statuses."""

    def test_label_values_are_escaped(self):
        """Backslash, double quote and newline in a label value are escaped, so the
        value reads back whole and every sample stays on one line."""
        node_id = 'a"b\\c\nd'
        families = parse(self, prometheus_text(made(node_id=node_id)))
        self.assertEqual(families["txraft_info"]["samples"],
                         {frozenset({("node_id", node_id)}): 1.0})

    def test_every_transport_stat_is_one_sample(self):
        """Each transport stat is exactly one sample (none lost, none counted twice);
        the inbound drops share one family with a reason each, as do the outbound
        ones, per message or per datagram."""
        stats = {name: 1000 + i for i, name in enumerate(STATS_NAMES)}
        families = parse(self, prometheus_text(made(transport=stats)))
        samples = [v for name, family in families.items() if name.startswith("txraft_transport_")
                   for v in family["samples"].values()]
        self.assertEqual(sorted(samples), sorted(float(v) for v in stats.values()))
        inbound = families["txraft_transport_inbound_datagrams_dropped_total"]["samples"]
        self.assertEqual(sorted(inbound.values()), sorted(float(stats[n]) for n in INBOUND_DROPS))
        outbound = [
            v for name in ("txraft_transport_outbound_messages_dropped_total",
                           "txraft_transport_outbound_datagrams_dropped_total")
            for v in families[name]["samples"].values()
        ]
        self.assertEqual(sorted(outbound), sorted(float(stats[n]) for n in OUTBOUND_DROPS))
        self.assertEqual(value(families, "txraft_transport_outbound_datagrams_dropped_total",
                               reason="send_error"), stats["send_errors"])
        self.assertEqual(value(families, "txraft_transport_inbound_datagrams_dropped_total",
                               reason="bad_mac"), stats["dropped_bad_mac"])
        self.assertEqual(value(families, "txraft_transport_datagrams_received_total"),
                         stats["received"])

    def test_unknown_counters_still_appear(self):
        """A counter added to the node, the transport or the snapshot transfers later
        is exposed under a generic name rather than silently left out."""
        families = parse(self, prometheus_text(made(
            counters=[("new_thing", 3)],
            transport={"something_else": 4, "dropped_new_reason": 5},
            snapshot_transfers=[("aborted", 6)],
        )))
        self.assertEqual(value(families, "txraft_node_new_thing_total"), 3)
        self.assertEqual(value(families, "txraft_transport_something_else_total"), 4)
        self.assertEqual(value(families, "txraft_transport_outbound_messages_dropped_total",
                               reason="new_reason"), 5)
        self.assertEqual(value(families, "txraft_snapshot_transfer_aborted_total"), 6)

    def test_only_what_status_holds(self):
        """What a status does not hold (no transport, no followers' progress, no
        counters) leaves its families out; a leader's view of its peers appears."""
        families = parse(self, prometheus_text(made(role="candidate")))
        self.assertEqual({name for name in families
                          if name.startswith(("txraft_transport_", "txraft_peer_",
                                              "txraft_node_", "txraft_snapshot_t"))}, set())
        self.assertEqual(value(families, "txraft_role", role="candidate"), 1)
        self.assertEqual(value(families, "txraft_has_leader"), 0)
        self.assertEqual(value(families, "txraft_voters"), 3)
        peer = PeerStatus(match_index=4, next_index=5, state="replicate", recent_active=True,
                          inflight=1)
        families = parse(self, prometheus_text(made(role="leader", leader_id="n1",
                                                    progress=(("n2", peer),))))
        self.assertEqual(value(families, "txraft_peer_match_index", peer="n2"), 4)
        self.assertEqual(value(families, "txraft_peer_state", peer="n2", state="replicate"), 1)
        self.assertEqual(value(families, "txraft_has_leader"), 1)


class RealNodeTests(SynchronousTestCase):
    """The metrics of real ``RaftNode``s (simulated network and clock) are their status."""

    def check_equal(self, node) -> dict:
        """Parse ``node``'s metrics and assert every value equals its ``status()``."""
        status = node.status()
        families = parse(self, prometheus_text(node.status_view()))
        self.assertEqual(value(families, "txraft_info", node_id=node.node_id), 1)
        for role in ("follower", "pre_candidate", "candidate", "leader"):
            self.assertEqual(value(families, "txraft_role", role=role), role == status["role"])
        self.assertEqual(value(families, "txraft_is_leader"), node.is_leader())
        self.assertEqual(value(families, "txraft_has_leader"), status["leader_id"] is not None)
        self.assertEqual(value(families, "txraft_fatal_error"), "fatal_error" in status)
        for key in ("term", "commit_index", "applied_index", "last_log_index", "last_log_term",
                    "snapshot_index", "pending_proposals", "pending_reads"):
            self.assertEqual(value(families, "txraft_" + key), status[key], key)
        self.assertEqual(value(families, "txraft_voters"), len(status["voters"]))
        self.assertEqual(value(families, "txraft_learners"), len(status["learners"]))
        self.assertEqual(value(families, "txraft_config_index"), status["config_index"])
        for name, count in status["counters"].items():
            self.assertEqual(value(families, "txraft_node_%s_total" % (name,)), count, name)
        snapshot = {
            "sent": "txraft_snapshot_transfers_started_total",
            "installed": "txraft_snapshot_transfers_received_total",
            "chunks_sent": "txraft_snapshot_chunks_sent_total",
            "chunks_received": "txraft_snapshot_chunks_received_total",
            "malformed": "txraft_snapshot_transfer_malformed_total",
        }
        self.assertEqual(set(status["snapshot_transfers"]), set(snapshot))
        for key, name in snapshot.items():
            self.assertEqual(value(families, name), status["snapshot_transfers"][key], key)
        progress = status.get("progress", {})
        peer_families = {name for name in families if name.startswith("txraft_peer_")}
        self.assertEqual(bool(peer_families), bool(progress))
        for peer, pr in progress.items():
            self.assertEqual(value(families, "txraft_peer_match_index", peer=peer),
                             pr["match_index"])
            self.assertEqual(value(families, "txraft_peer_next_index", peer=peer),
                             pr["next_index"])
            self.assertEqual(value(families, "txraft_peer_inflight_messages", peer=peer),
                             pr["inflight"])
            self.assertEqual(value(families, "txraft_peer_recent_active", peer=peer),
                             pr["recent_active"])
            self.assertEqual(value(families, "txraft_peer_state", peer=peer, state=pr["state"]),
                             1)
        return families

    def test_leader_and_followers(self):
        """Section 5.2: in a three-node cluster after an election and writes, the leader's
        and each follower's metrics are their own status, value for value; only the
        leader reports its peers."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        for i in range(5):
            leader.propose(b"v%d" % i)
        cluster.run(0.2)
        families = self.check_equal(leader)
        self.assertEqual(value(families, "txraft_is_leader"), 1)
        self.assertEqual(value(families, "txraft_node_proposals_total"), 5)
        for node in cluster.nodes.values():
            if node is not leader:
                families = self.check_equal(node)
                self.assertEqual(value(families, "txraft_role", role="follower"), 1)
                self.assertEqual(value(families, "txraft_commit_index"), leader.core.commit_index)

    def test_counters_only_grow(self):
        """After more writes and reads, every counter sample is still there and none is
        lower; the work done shows in the ones it should."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        leader.transport.stats = dict.fromkeys(STATS_NAMES, 0)

        def counters(node):
            families = parse(self, prometheus_text(node.status_view()))
            return {(name, labels): v for name, family in families.items()
                    if family["type"] == "counter" for labels, v in family["samples"].items()}

        before = {node_id: counters(node) for node_id, node in cluster.nodes.items()}
        for i in range(10):
            leader.propose(b"w%d" % i)
            leader.read_barrier()
            leader.transport.stats["messages_sent"] += 1
            cluster.run(0.05)
        for node_id, node in cluster.nodes.items():
            after = counters(node)
            self.assertEqual(set(after), set(before[node_id]), node_id)
            for key, count in after.items():
                self.assertGreaterEqual(count, before[node_id][key], (node_id, key))
        after = counters(leader)
        for name in ("txraft_node_proposals_total", "txraft_node_reads_total",
                     "txraft_node_entries_applied_total", "txraft_node_fsync_batches_total",
                     "txraft_transport_messages_sent_total"):
            key = (name, frozenset())
            self.assertGreater(after[key], before[leader.node_id][key], name)

    def test_snapshot_transfers(self):
        """Section 7: a follower brought up to date by a snapshot, and its leader, report
        the transfer (chunks sent and received, one image received)."""
        cluster = Cluster(self, 3, timing=SNAPSHOT_TIMING, snapshot_root=self.mktemp())
        cluster.run(1.0)
        victim = next(i for i in cluster.nodes if i != cluster.leader().node_id)
        cluster.nodes[victim].stopService()
        for i in range(60):
            cluster.leader().propose(b"s%d" % i)
            cluster.run(0.01)
        cluster.run(0.2)
        follower = cluster.start(victim)
        cluster.run(2.0)
        leader = cluster.leader()
        families = self.check_equal(follower)
        self.assertEqual(value(families, "txraft_snapshot_transfers_received_total"), 1)
        self.assertGreater(value(families, "txraft_snapshot_chunks_received_total"), 0)
        self.assertGreater(value(families, "txraft_snapshot_index"), 0)
        families = self.check_equal(leader)
        self.assertGreater(value(families, "txraft_snapshot_transfers_started_total"), 0)
        self.assertGreater(value(families, "txraft_snapshot_chunks_sent_total"), 0)

    def test_fatal_error(self):
        """A node stopped by a failed fsync says so: txraft_fatal_error 1."""
        cluster = Cluster(self, 1)
        cluster.clock.advance(0)
        node = cluster.nodes["n1"]
        self.assertEqual(value(self.check_equal(node), "txraft_fatal_error"), 0)
        cluster.storages["n1"].fail = True
        result_of(node.propose(b"x"))
        cluster.clock.advance(0)
        self.flushLoggedErrors(OSError)
        self.assertEqual(value(self.check_equal(node), "txraft_fatal_error"), 1)

    def test_documented(self):
        """docs/deploy.md's metrics table names every family a node can expose."""
        stats = dict.fromkeys(STATS_NAMES, 1)
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        leader.transport.stats = stats
        names = set(parse(self, prometheus_text(leader.status_view())))
        self.assertIn("txraft_peer_match_index", names)
        self.assertEqual(names - documented_families(), set())


class HTTPTests(SynchronousTestCase):
    """``GET /metrics`` on every application, the same on the plain and Klein routes."""

    def check_route(self, cluster):
        """On the leader and the follower: 200, the exposition content type, the node's
        own status (never forwarded), HEAD without a body, other methods 405 as JSON."""
        for node_id in ("n1", "n2"):
            answer = cluster("GET", "/metrics", node=node_id)
            self.assertEqual(answer.code, 200)
            self.assertEqual(answer.header("Content-Type"), CONTENT_TYPE)
            node = cluster.nodes[node_id]
            self.assertEqual(answer.body, prometheus_text(node.status_view()))
            families = parse(self, answer.body)
            self.assertEqual(value(families, "txraft_info", node_id=node_id), 1)
            self.assertEqual(value(families, "txraft_is_leader"), node_id == "n1")
            self.assertEqual(value(families, "txraft_applied_index"),
                             node.state_machine.applied_index())
            head = cluster("HEAD", "/metrics", node=node_id)
            self.assertEqual((head.code, head.body), (200, b""))
            self.assertEqual(head.header("Content-Type"), CONTENT_TYPE)
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                refused = cluster(method, "/metrics", node=node_id, data=b"x")
                self.assertEqual((refused.code, refused.error_code),
                                 (405, "method_not_allowed"), method)
                self.assertEqual(refused.header("Allow"), "GET, HEAD")
        answer = cluster("GET", "/metrics?redirect=true", node="n2")
        self.assertEqual(answer.code, 200)
        for client in cluster.clients.values():
            self.assertEqual(client.requests, [])

    def test_kv(self):
        """The key-value app (its plain twisted.web root)."""
        cluster = FakeCluster(self, kv.open_state_machine, kv_http.make_resource)
        cluster("PUT", "/kv/a", data=b"v")
        self.check_route(cluster)

    def test_kv_klein_routes(self):
        """The key-value app's Klein routes alone answer the same."""

        def klein_only(node, clock, client):
            return kv_http.KVAPI(RaftHTTP(node, clock, client)).app.resource()

        cluster = FakeCluster(self, kv.open_state_machine, klein_only)
        self.check_route(cluster)

    def test_shop(self):
        """The shop."""
        cluster = FakeCluster(self, shop_state.open_state_machine,
                              shop_application.make_resource)
        self.check_route(cluster)

    def test_real_node_behind_the_kv_root(self):
        """A real RaftNode behind the kv root: the answer is its status, and asking
        costs the node nothing it would count."""
        cluster = Cluster(self, 3)
        cluster.run(1.0)
        leader = cluster.leader()
        stub = StubTreq(kv_http.make_resource(leader, Clock(), None))
        counters = dict(leader.counters)
        answer = request(self, stub, "GET", "http://n1/metrics")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.body, prometheus_text(leader.status_view()))
        self.assertEqual(leader.counters, counters)

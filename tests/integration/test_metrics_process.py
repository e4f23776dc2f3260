"""GET /metrics from one real ``twistd raftnode --app kv`` process over real HTTP."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_metrics import CONTENT_TYPE, parse, value
from txraft.tools.localcluster import LocalCluster, http

class ProcessTests(SynchronousTestCase):
    def test_one_real_node(self):
        """One `twistd raftnode --app kv` process answers GET /metrics over real HTTP
        with its real transport's counters, after a write."""
        cluster = LocalCluster(1, self.mktemp(), app="kv")
        self.addCleanup(cluster.stop_all)
        cluster.start_all()
        cluster.wait_for_leader(20)
        url = cluster.url("n1")
        written = http("PUT", url + "/kv/k", b"v")
        self.assertEqual(written.status, 204, written)
        answer = http("GET", url + "/metrics")
        self.assertEqual(answer.status, 200, cluster.logs())
        self.assertEqual(answer.headers["Content-Type"], CONTENT_TYPE)
        families = parse(self, answer.body)
        self.assertEqual(value(families, "txraft_is_leader"), 1)
        self.assertGreaterEqual(value(families, "txraft_applied_index"),
                                int(written.headers["X-Raft-Index"]))
        self.assertEqual(value(families, "txraft_node_proposals_total"), 1)
        self.assertIn("txraft_transport_datagrams_received_total", families)
        self.assertIn("txraft_snapshot_chunks_sent_total", families)

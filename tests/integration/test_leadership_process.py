"""Leadership transfer with real ``twistd raftnode`` processes: ``POST /raft/leader``
(dissertation 3.10) and the hand-over a leader makes when it is stopped with SIGTERM
(``docker stop``, a Kubernetes rollout).  ``bench/failover.py --signal both`` measures
the gap this saves against an election after kill -9; these tests only prove that it
happens."""

from __future__ import annotations

import json
import re
import time

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import http

from tests.integration.test_processes import ClusterTestMixin


class LeadershipTransferProcessTests(ClusterTestMixin, SynchronousTestCase):
    def transfer(self, node_id, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token is not False:
            headers["Authorization"] = "Bearer %s" % (token or self.cluster.secret,)
        data = json.dumps(body).encode() if body is not None else None
        return http("POST", self.cluster.url(node_id) + "/raft/leader", data, headers,
                    timeout=10)

    def test_post_raft_leader_hands_the_leadership_to_the_target(self):
        """Sent to a follower, the request is forwarded to the leader, which answers
        once the named voter leads (a term later); every node agrees; refusals are
        JSON errors and change nothing."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        for token, status in ((False, 401), ("wrong", 403)):
            self.assertEqual(self.transfer(leader, {}, token).status, status)
        unknown = self.transfer(leader, {"id": "nobody"})
        self.assertEqual((unknown.status, unknown.json()["error"]["code"]),
                         (404, "unknown_member"))
        # (On a loaded machine an election may have moved the leadership meanwhile.)
        leader = cluster.wait_for_leader(5)
        follower, target = sorted(n for n in cluster.nodes if n != leader)
        term = cluster.nodes[leader].status()["term"]
        answer = self.transfer(follower, {"id": target})
        if answer.status != 200:
            self.fail_with_logs("transfer failed: %r" % (answer,))
        doc = answer.json()
        self.assertEqual(doc["leader"], target)
        self.assertNotEqual(doc["previous_leader"], target)
        self.assertGreater(doc["term"], term)
        self.assertEqual(cluster.wait_for_leader(10), target)
        self.assertEqual(self.put(follower, "after", b"transfer").status, 204)
        # The default target: some other voter; the old leader is one again now.
        answer = self.transfer(leader, {})
        self.assertEqual(answer.status, 200, answer)
        self.assertNotEqual(answer.json()["leader"], target)
        self.assertEqual(cluster.wait_for_leader(10), answer.json()["leader"])

    def test_a_leader_stopped_with_sigterm_hands_over_first(self):
        """SIGTERM to the leader: before it exits it makes another voter the leader
        (its log says who, and how long it took); the cluster keeps committing, and
        the new leader's term is just one more (no election rounds)."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        term = cluster.nodes[leader].status()["term"]
        self.assertEqual(self.put(leader, "before", b"stop").status, 204)
        cluster.stop(leader)
        # (twistd re-raises the signal it stopped for once it has shut down: -15.)
        self.assertEqual(cluster.nodes[leader].process.returncode, -15)
        with open(cluster.nodes[leader].log_path) as f:
            log = f.read()
        found = re.search(r"stopping: (\S+) leads term (\d+) \((\d+) ms after the request\)",
                          log)
        if found is None:
            self.fail_with_logs("the stopped leader did not hand over")
        new_leader, new_term = found.group(1), int(found.group(2))
        self.assertNotEqual(new_leader, leader)
        self.assertEqual(new_term, term + 1)
        survivors = [n for n in cluster.nodes if n != leader]
        self.assertEqual(cluster.wait_for_leader(10, among=survivors), new_leader)
        self.assertEqual(self.put(survivors[0], "after", b"stop").status, 204)
        self.assertEqual(cluster.nodes[new_leader].status()["term"], new_term)
        # A follower stopped with SIGTERM has nothing to hand over: it just stops.
        follower = next(n for n in survivors if n != new_leader)
        started = time.monotonic()
        cluster.stop(follower)
        self.assertLess(time.monotonic() - started, 5)
        with open(cluster.nodes[follower].log_path) as f:
            self.assertNotIn("handing the leadership over", f.read())

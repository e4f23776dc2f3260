"""``twistd raftnode --join`` with real processes: a brand-new server joins a running
cluster as a learner, catches up, is promoted, survives a restart; refusals are one line
and a non-zero exit (issue 12, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import REPO_ROOT, free_port, http

from tests.integration.test_processes import ClusterTestMixin


class JoinProcessTests(ClusterTestMixin, SynchronousTestCase):
    def members(self, node_id):
        return {m["id"]: m for m in http(
            "GET", self.cluster.url(node_id) + "/raft/members").json()["members"]}

    def wait_until(self, predicate, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail_with_logs(what)
            time.sleep(0.2)

    def test_a_new_server_joins_catches_up_is_promoted_and_restarts(self):
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        for i in range(20):
            self.assertEqual(self.put(leader, "k%d" % i, b"v%d" % i).status, 204)
        node = cluster.new_node("n4")
        cluster.start("n4")
        self.wait_until(lambda: self.members(cluster.wait_for_leader(10)).get("n4", {}).get(
            "role") == "voter", "n4 was never added and promoted")
        member = self.members(cluster.wait_for_leader(10))["n4"]
        self.assertEqual(member["address"], "127.0.0.1:%d" % node.port)
        self.assertEqual(member["http_url"], node.url)
        self.assertEqual(member["uuid"], node.uuid())  # bound by the join request
        self.wait_until(lambda: http("GET", node.url + "/ready").status == 200,
                        "n4 never became ready")
        self.assertEqual(self.stale_get("n4", "k19").body, b"v19")
        top = int(self.put("n4", "from-n4", b"x").headers["X-Raft-Index"])
        cluster.wait_for_applied(top, list(cluster.nodes))
        with open(node.log_path) as f:
            log = f.read()
        self.assertIn("added to the cluster as a learner", log)
        # kill -9 and the same command again: it uses its record, not the cluster.
        cluster.kill("n4")
        cluster.start("n4")
        self.wait_until(lambda: http("GET", node.url + "/ready").status == 200,
                        "n4 did not come back")
        with open(node.log_path) as f:
            self.assertIn("--join is not needed any more", f.read())
        self.assertEqual(self.stale_get("n4", "from-n4").body, b"x")
        # The others, restarted with their --members, still talk to n4 (the log names it).
        cluster.kill(leader)
        cluster.start(leader)
        cluster.wait_for_leader(15)
        top = int(self.put("n4", "after", b"restarts").headers["X-Raft-Index"])
        cluster.wait_for_applied(top, list(cluster.nodes))

    def twistd(self, *args, timeout=60):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("TXRAFT_SECRET", None)
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "raftnode", "--app", "kv"] + list(args),
            env=env, capture_output=True, timeout=timeout, text=True, cwd=REPO_ROOT)

    def test_refusals_are_one_line_and_a_failure_status(self):
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        wrong = os.path.join(cluster.root, "wrong.secret")
        with open(wrong, "w") as f:
            f.write("not the cluster secret\n")  # long enough to be tried
        cases = [
            (["--id", "n9", "--secret-file", wrong], "--secret-file"),
            (["--id", "n2", "--secret-file", cluster.secret_file], "already has a member n2"),
        ]
        for extra, expected in cases:
            port = free_port()
            result = self.twistd("--port", str(port), "--join", cluster.url(leader),
                                 "--data-dir", os.path.abspath(self.mktemp()), *extra)
            self.assertNotEqual(result.returncode, 0, result)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(expected, lines[0])
        self.assertEqual(sorted(self.members(leader)), ["n1", "n2", "n3"])
        # Flags that cannot go together are refused before anything starts.
        result = self.twistd("--port", str(free_port()), "--id", "n9", "--join",
                             cluster.url(leader), "--members", cluster.members)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--join and --members", result.stderr + result.stdout)

    def test_a_follower_behind_hears_a_leader_its_log_does_not_name(self):
        """Dissertation 4.1: n3 is down while n4 joins and becomes the leader; started
        again, n3's log names n1..n3 only, yet it hears n4 (an authenticated stranger)
        and catches up to the entries that name it."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        cluster.wait_for_leader(15)
        cluster.kill("n3")
        cluster.new_node("n4")
        cluster.start("n4")
        self.wait_until(lambda: self.members(cluster.wait_for_leader(10, among=["n1", "n2"])
                                             ).get("n4", {}).get("role") == "voter",
                        "n4 was never promoted")
        for _ in range(10):
            leader = cluster.wait_for_leader(10, among=["n1", "n2", "n4"])
            if leader == "n4":
                break
            answer = http("POST", cluster.url(leader) + "/raft/leader",
                          b'{"id": "n4"}', {"Authorization": "Bearer " + cluster.secret,
                                            "Content-Type": "application/json"}, timeout=10)
            self.assertIn(answer.status, (200, 409, 503, 504), answer)
        self.assertEqual(cluster.wait_for_leader(10, among=["n1", "n2", "n4"]), "n4")
        top = int(self.put("n4", "while", b"n3 was down").headers["X-Raft-Index"])
        cluster.start("n3")
        cluster.wait_for_applied(top, ["n3"], timeout=30)
        self.assertEqual(self.stale_get("n3", "while").body, b"n3 was down")
        status = cluster.nodes["n3"].status()
        self.assertEqual(status["leader_id"], "n4")

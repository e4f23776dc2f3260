"""Real ``twistd raftnode`` processes on 127.0.0.1: real UDP, real disks, real HTTP.

Each test starts its own cluster in a fresh directory and kills every process in its
cleanup, whatever happened.  Waits are bounded; a failure prints the nodes' logs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import REPO_ROOT, LocalCluster, free_port, http


def twistd(*args, cwd=None, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TXRAFT_SECRET", None)
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"] + list(args),
        cwd=cwd or REPO_ROOT, env=env, capture_output=True, timeout=timeout, text=True,
    )


def wipe(data_dir):
    """Empty a node's data directory as a recreated volume would (its log file stays,
    for the test's failure report)."""
    for name in os.listdir(data_dir):
        if name != "node.log":
            path = os.path.join(data_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def all_bound(url):
    """Whether ``GET /raft/members`` there names every member's uuid (the leader binds
    them into the configuration one change at a time)."""
    answer = http("GET", url + "/raft/members")
    return answer.status == 200 and all(m["uuid"] for m in answer.json()["members"])


class ClusterTestMixin:
    def make_cluster(self, size, **kwargs):
        cluster = LocalCluster(size, self.mktemp(), **kwargs)
        self.addCleanup(cluster.stop_all)
        self.cluster = cluster
        return cluster

    def fail_with_logs(self, message):
        self.fail("%s\n%s" % (message, self.cluster.logs()))

    def put(self, node_id, key, value, **params):
        query = "&".join("%s=%s" % kv for kv in params.items())
        url = "%s/kv/%s%s" % (self.cluster.url(node_id), key, "?" + query if query else "")
        return http("PUT", url, value)

    def stale_get(self, node_id, key):
        return http("GET", "%s/kv/%s?consistency=stale" % (self.cluster.url(node_id), key))


class ThreeNodeTests(ClusterTestMixin, SynchronousTestCase):
    def test_elect_replicate_kill_leader_restart(self):
        """Sections 5.2-5.4 end to end: a leader is elected; writes through any node
        commit and are readable everywhere; kill -9 of the leader elects another and no
        acknowledged write is lost; the killed node restarts from disk and catches up."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        acknowledged = {}
        # Writes through every node: followers forward to the leader.
        for i, node_id in enumerate(sorted(cluster.nodes) * 4):
            result = self.put(node_id, "k%d" % i, b"v%d" % i)
            if result.status != 204:
                self.fail_with_logs("write via %s failed: %r" % (node_id, result))
            acknowledged["k%d" % i] = (b"v%d" % i, int(result.headers["X-Raft-Index"]))
        top = max(index for _, index in acknowledged.values())
        cluster.wait_for_applied(top, list(cluster.nodes))
        for node_id in cluster.nodes:
            for key, (value, _) in acknowledged.items():
                self.assertEqual(self.stale_get(node_id, key).body, value)

        cluster.kill(leader)
        survivors = [n for n in cluster.nodes if n != leader]
        new_leader = cluster.wait_for_leader(10, among=survivors)
        self.assertNotEqual(new_leader, leader)
        for i in range(10):
            result = self.put(survivors[i % 2], "after%d" % i, b"a%d" % i)
            if result.status != 204:
                self.fail_with_logs("write after failover failed: %r" % (result,))
            acknowledged["after%d" % i] = (b"a%d" % i, int(result.headers["X-Raft-Index"]))
        # Linearizable reads on the survivors see every acknowledged write.
        for key, (value, _) in acknowledged.items():
            result = http("GET", "%s/kv/%s" % (cluster.url(survivors[0]), key))
            self.assertEqual((result.status, result.body), (200, value), key)

        cluster.start(leader)
        top = max(index for _, index in acknowledged.values())
        cluster.wait_for_applied(top, list(cluster.nodes), timeout=15)
        for key, (value, _) in acknowledged.items():
            self.assertEqual(self.stale_get(leader, key).body, value, key)

    def test_node_with_wrong_secret_is_ignored(self):
        """Datagrams under another secret are dropped: the node neither joins nor
        disrupts the cluster, and the others count its datagrams as forged."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        intruder = next(n for n in cluster.nodes if n != leader)
        cluster.kill(intruder)
        wrong = os.path.join(cluster.root, "wrong.secret")
        with open(wrong, "w") as f:
            f.write("not-the-cluster-secret\n")
        cluster.start(intruder, secret_file=wrong)
        term_before = cluster.nodes[leader].status()["term"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = cluster.nodes[intruder].status()
            if status is not None and status["term"] > term_before + 1:
                break  # it keeps campaigning, alone
            time.sleep(0.1)
        leader_status = cluster.nodes[leader].status()
        self.assertEqual(leader_status["role"], "leader")
        self.assertEqual(leader_status["term"], term_before)
        self.assertGreater(leader_status["transport"]["dropped_bad_mac"], 0)
        self.assertIsNone(cluster.nodes[intruder].status()["leader_id"])
        result = self.put(leader, "still", b"works")
        self.assertEqual(result.status, 204)


class SnapshotProcessTests(ClusterTestMixin, SynchronousTestCase):
    def test_restarted_follower_catches_up_from_a_snapshot(self):
        """Section 7 with real processes: a follower down while the others compacted
        their logs is repaired by an InstallSnapshot transfer over UDP, then restarts
        again from its own compacted state."""
        cluster = self.make_cluster(
            3, extra_args=["--snapshot-entries", "40", "--snapshot-trailing-entries", "5"]
        )
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        follower = next(n for n in cluster.nodes if n != leader)
        cluster.stop(follower)
        top = 0
        for i in range(150):
            result = self.put(leader, "k%d" % i, b"x" * 200 + b"%d" % i)
            if result.status != 204:
                self.fail_with_logs("write failed: %r" % (result,))
            top = int(result.headers["X-Raft-Index"])
        status = cluster.nodes[leader].status()
        self.assertGreater(status["snapshot_index"], 40)
        cluster.start(follower)
        cluster.wait_for_applied(top, [follower], timeout=20)
        status = cluster.nodes[follower].status()
        self.assertEqual(status["counters"]["snapshots_installed"], 1)
        for i in (0, 77, 149):
            self.assertEqual(self.stale_get(follower, "k%d" % i).body, b"x" * 200 + b"%d" % i)
        cluster.kill(follower)
        cluster.start(follower)
        cluster.wait_for_applied(top, [follower], timeout=20)
        self.assertEqual(self.stale_get(follower, "k149").body, b"x" * 200 + b"149")


    def test_a_follower_whose_data_was_wiped_is_refused_then_replaced(self):
        """Node identity (docs/operations.md, "Replace a node that lost its disk"): a
        follower killed, its data directory emptied and started again with the same
        command (a recreated Docker volume) comes back with a new uuid.  Its peers
        refuse it (dropped_wrong_identity, per peer in /raft/status and /metrics) so its
        votes and acknowledgements never count; it is told so and says it in /ready
        and /raft/status, and refuses stale reads instead of serving an empty store.
        Then it is replaced while it runs: removed, added back bound to its new uuid,
        caught up, ready, promoted, with the data."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        top = 0
        for i in range(20):
            result = self.put(leader, "k%d" % i, b"v%d" % i)
            if result.status != 204:
                self.fail_with_logs("write failed: %r" % (result,))
            top = int(result.headers["X-Raft-Index"])
        cluster.wait_for_applied(top, list(cluster.nodes))
        follower, other = [n for n in cluster.nodes if n != leader]
        old_uuid = cluster.nodes[follower].uuid()
        self.wait_until(lambda: all_bound(cluster.url(leader)),
                        "the leader never bound every member's uuid")
        cluster.kill(follower)
        wipe(cluster.nodes[follower].data_dir)
        cluster.start(follower)
        url = cluster.url(follower)

        def refused():
            ready = http("GET", url + "/ready")
            if ready.status == 200:
                self.fail_with_logs("the wiped follower answered /ready 200: %r" % (ready,))
            status = cluster.nodes[follower].status() or {}
            refused_by = status.get("identity", {}).get("refused_by", {})
            return ready.status == 503 and leader in refused_by

        self.wait_until(refused, "the wiped follower never learnt that it was refused")
        new_uuid = cluster.nodes[follower].uuid()
        self.assertNotEqual(new_uuid, old_uuid)
        ready = http("GET", url + "/ready").json()["error"]
        self.assertEqual(ready["code"], "not_ready")
        self.assertIn("this data directory (uuid %s) is not the one the cluster knows as %s"
                      % (new_uuid, follower), ready["message"])
        self.assertIn("docs/operations.md#replace-a-node-that-lost-its-disk", ready["message"])
        status = cluster.nodes[follower].status()
        self.assertEqual(status["node_uuid"], new_uuid)
        self.assertEqual(status["identity"]["refused_by"][leader], old_uuid)
        self.assertEqual(status["identity"]["problem"], ready["message"])
        self.assertEqual((status["ready"], status["applied_index"]), (False, 0))
        stale = self.stale_get(follower, "k3")
        self.assertEqual((stale.status, stale.json()["error"]["code"]),
                         (503, "stale_read_refused"), stale)
        # The leader refuses what it hears from the wiped node; the other follower,
        # which may never hear it (it follows the leader's heartbeats and does not
        # campaign), knows the old uuid from the configuration all the same.
        leader_status = cluster.nodes[leader].status()
        self.assertGreater(leader_status["transport"]["dropped_wrong_identity"], 0)
        seen = leader_status["peer_identities"][follower]
        self.assertEqual(seen["last_refused"], new_uuid)
        for peer in (leader, other):
            seen = cluster.nodes[peer].status()["peer_identities"][follower]
            self.assertEqual((seen["uuid"], seen["source"]), (old_uuid, "configuration"))
        metrics = http("GET", cluster.url(leader) + "/metrics").body.decode()
        self.assertRegex(metrics, r'txraft_peer_wrong_identity_datagrams_total\{peer="%s"\} '
                         r'[1-9]' % follower)
        self.assertIn('txraft_transport_inbound_datagrams_dropped_total{reason="wrong_identity"}',
                      metrics)
        self.assertIn("\ntxraft_identity_refused 1\n",
                      http("GET", url + "/metrics").body.decode())
        self.assertIn("lost its data", open(cluster.nodes[follower].log_path).read())
        self.assertEqual(http("GET", cluster.url(other) + "/ready").status, 200)
        result = self.put(leader, "during", b"refused")
        self.assertEqual(result.status, 204)  # the other two commit without it

        # docs/operations.md's replacement, the node left running: remove it, add it
        # back bound to its new uuid; it is sent the log as a learner, catches up and
        # is promoted.
        auth = {"Authorization": "Bearer %s" % cluster.secret}
        removed = http("DELETE", cluster.url(leader) + "/raft/members/" + follower,
                       headers=auth, timeout=10)
        self.assertEqual(removed.status, 200, removed)
        added = http("POST", cluster.url(leader) + "/raft/members",
                     json.dumps({"id": follower, "http_url": url, "uuid": new_uuid,
                                 "address": "127.0.0.1:%d" % cluster.nodes[follower].port}
                                ).encode(),
                     dict(auth, **{"Content-Type": "application/json"}), timeout=10)
        self.assertEqual(added.status, 200, added)
        self.wait_until(lambda: http("GET", url + "/ready").status == 200,
                        "the replaced follower never became ready", timeout=30)
        self.assertEqual(self.stale_get(follower, "k3").body, b"v3")
        self.assertEqual(self.stale_get(follower, "during").body, b"refused")
        self.wait_until(lambda: {m["id"]: m["role"] for m in http(
            "GET", cluster.url(leader) + "/raft/members").json()["members"]}.get(
                follower) == "voter", "the replaced follower was never promoted")
        by_id = {m["id"]: m for m in http(
            "GET", cluster.url(leader) + "/raft/members").json()["members"]}
        self.assertEqual(by_id[follower]["uuid"], new_uuid)
        status = cluster.nodes[follower].status()
        self.assertEqual(status["identity"], {"uuid": new_uuid, "caught_up": True,
                                              "refused_by": {}, "problem": None})
        for peer in (leader, other):
            peer_status = cluster.nodes[peer].status()["peer_identities"][follower]
            self.assertEqual(peer_status["uuid"], new_uuid)

    def test_a_data_directory_refuses_another_node_id(self):
        """A data directory is one node's: started with another --id it is refused
        with one line saying what to do, before anything is written."""
        cluster = self.make_cluster(3)
        cluster.start("n1")
        deadline = time.monotonic() + 20
        while cluster.nodes["n1"].uuid() is None or cluster.nodes["n1"].status() is None:
            if time.monotonic() > deadline:
                self.fail_with_logs("n1 never started")
            time.sleep(0.1)
        cluster.kill("n1")
        n2 = cluster.nodes["n2"]
        result = twistd("-n", "--pidfile=", "raftnode", "--app", "kv", "--id", "n2",
                        "--port", str(n2.port), "--members", cluster.members,
                        "--data-dir", cluster.nodes["n1"].data_dir,
                        "--secret-file", cluster.secret_file)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("is node n1's", output)
        self.assertIn("start it with --id n1, or give n2 a data directory of its own", output)
        self.assertNotIn("Traceback", output)

    def wait_until(self, condition, what, timeout=15):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail_with_logs(what)
            time.sleep(0.1)


class MembershipProcessTests(ClusterTestMixin, SynchronousTestCase):
    def change(self, method, node_id, path, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token is not False:
            headers["Authorization"] = "Bearer %s" % (token or self.cluster.secret,)
        data = json.dumps(body).encode() if body is not None else None
        return http(method, self.cluster.url(node_id) + path, data, headers, timeout=10)

    def members(self, node_id):
        """GET /raft/members there, retried while leadership moves (503)."""
        deadline = time.monotonic() + 10
        while True:
            answer = http("GET", self.cluster.url(node_id) + "/raft/members")
            if answer.status == 200 or time.monotonic() > deadline:
                return answer.json()
            time.sleep(0.1)

    def test_remove_a_member_and_add_it_back(self):
        """Dissertation chapter 4 with real processes: DELETE /raft/members/{id} sent to
        a follower is forwarded to the leader and commits; the cluster goes on with two
        voters (writes commit); the removed node, still running with its data, is
        added back as a learner (POST /raft/members), catches up and is promoted
        automatically.  Without the secret (401), or with a wrong one (403), nothing
        changes."""
        cluster = self.make_cluster(3)
        cluster.start_all()
        leader = cluster.wait_for_leader(15)
        follower, victim = [n for n in cluster.nodes if n != leader]
        # The leader binds each member's uuid into the configuration, one change each.
        deadline = time.monotonic() + 10
        while not all_bound(cluster.url(leader)):
            if time.monotonic() > deadline:
                self.fail_with_logs("the members' uuids were never bound")
            time.sleep(0.1)
        founded = self.members(leader)["config_index"]
        self.assertGreaterEqual(founded, 3)
        for token, status, code in ((False, 401, "unauthorized"), ("wrong", 403, "forbidden")):
            refused = self.change("DELETE", leader, "/raft/members/" + victim, token=token)
            self.assertEqual((refused.status, refused.json()["error"]["code"]), (status, code))
        unknown = self.change("DELETE", leader, "/raft/members/nobody")
        self.assertEqual((unknown.status, unknown.json()["error"]["code"]),
                         (404, "unknown_member"))
        removed = self.change("DELETE", follower, "/raft/members/" + victim)
        if removed.status != 200:
            self.fail_with_logs("remove failed: %r" % (removed,))
        config_index = removed.json()["config_index"]
        doc = self.members(leader)
        self.assertEqual(doc["config_index"], config_index)
        self.assertEqual(sorted(m["id"] for m in doc["members"]), sorted([leader, follower]))
        result = self.put(leader, "after", b"removed")
        self.assertEqual(result.status, 204)  # two voters commit it
        stale = self.change("POST", leader, "/raft/members?expect_config_index=%d" % founded,
                            {"id": victim, "address": "127.0.0.1:%d"
                             % cluster.nodes[victim].port})
        self.assertEqual((stale.status, stale.json()["error"]["code"]),
                         (409, "config_changed"))
        added = self.change("POST", leader,
                            "/raft/members?expect_config_index=%d" % config_index,
                            {"id": victim, "address": "127.0.0.1:%d"
                             % cluster.nodes[victim].port,
                             "http_url": cluster.url(victim)})
        if added.status != 200:
            self.fail_with_logs("add failed: %r" % (added,))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            roles = {m["id"]: m["role"] for m in self.members(leader)["members"]}
            if roles.get(victim) == "voter":
                break
            time.sleep(0.2)
        else:
            self.fail_with_logs("%s was not promoted: %r" % (victim, self.members(leader)))
        top = int(self.put(leader, "back", b"again").headers["X-Raft-Index"])
        cluster.wait_for_applied(top, list(cluster.nodes))
        self.assertEqual(self.stale_get(victim, "after").body, b"removed")
        # txraft-cluster's `remove` and `add` go through LocalCluster the same way.
        for change in (cluster.remove_member, cluster.add_member):
            result = change(victim)
            if result.status != 200:
                self.fail_with_logs("%s: %r" % (change.__name__, result))
            deadline = time.monotonic() + 10
            while self.members(leader)["config_index"] < result.json()["config_index"]:
                if time.monotonic() > deadline:
                    self.fail_with_logs("the change did not commit")
                time.sleep(0.1)


class FiveNodeTests(ClusterTestMixin, SynchronousTestCase):
    def test_five_nodes_survive_two_failures(self):
        """A 5-node cluster keeps committing with two nodes killed (a minority), and the
        two catch up when they return."""
        cluster = self.make_cluster(5)
        cluster.start_all()
        leader = cluster.wait_for_leader(20)
        victims = [n for n in sorted(cluster.nodes) if n != leader][:1] + [leader]
        for victim in victims:
            cluster.kill(victim)
        survivors = [n for n in cluster.nodes if n not in victims]
        cluster.wait_for_leader(10, among=survivors)
        written = {}
        for i in range(15):
            result = self.put(survivors[i % 3], "k%d" % i, b"%d" % i)
            if result.status != 204:
                self.fail_with_logs("write failed: %r" % (result,))
            written["k%d" % i] = int(result.headers["X-Raft-Index"])
        for victim in victims:
            cluster.start(victim)
        cluster.wait_for_applied(max(written.values()), list(cluster.nodes), timeout=15)
        for node_id in cluster.nodes:
            for i in range(15):
                self.assertEqual(self.stale_get(node_id, "k%d" % i).body, b"%d" % i)


class CommandLineTests(SynchronousTestCase):
    def test_plugin_is_listed_and_documents_its_options(self):
        """`twistd --help` lists raftnode and `twistd raftnode --help` documents options."""
        listing = twistd("--help")
        self.assertIn("raftnode", listing.stdout)
        helptext = twistd("raftnode", "--help").stdout
        for option in ("--port", "--members", "--data-dir", "--secret-file", "--app",
                       "--election-timeout-ms", "--heartbeat-ms", "--max-datagram", "--id"):
            self.assertIn(option, helptext)

    def check_one_line_error(self, args, expected, cwd=None):
        result = twistd("-n", "--pidfile=", "raftnode", *args, cwd=cwd or self.mktemp_dir())
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn(expected, output)
        self.assertNotIn("Traceback", output)

    def mktemp_dir(self):
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_duplicate_member_ids(self):
        """Duplicate ids in --members are refused with one line."""
        self.check_one_line_error(
            ["--id", "a", "--members", "a=127.0.0.1:1,a=127.0.0.1:2"], "appears twice"
        )

    def test_unknown_id(self):
        """An --id that is not a member is refused with one line."""
        port = free_port()
        self.check_one_line_error(
            ["--id", "zz", "--port", str(port), "--members", "a=127.0.0.1:%d" % port],
            "not among the members",
        )

    def test_several_members_without_a_secret(self):
        """A node of a two-member cluster started with no secret exits with a failure
        status and one line on stderr saying how to make one; nothing on stdout."""
        result = twistd("-n", "--pidfile=", "raftnode", "--members",
                        "a=127.0.0.1:7001,b=127.0.0.1:7002", "--id", "a", "--port", "7001",
                        cwd=self.mktemp_dir())
        self.assertNotEqual(result.returncode, 0)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("needs a secret", lines[0])
        self.assertIn("secrets.token_hex", lines[0])
        self.assertEqual(result.stdout, "")

    def test_port_in_use(self):
        """A port already taken is refused with one line, not a retry loop."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        self.check_one_line_error(["--port", str(port), "--app", "kv"], "already in use")

    def test_unwritable_data_dir(self):
        """A data directory that cannot be written is refused with one line."""
        if os.geteuid() == 0:
            target = "/proc/txraft-cannot-exist"
        else:
            target = self.mktemp_dir()
            os.chmod(target, 0o500)
        self.check_one_line_error(
            ["--port", str(free_port()), "--app", "kv", "--data-dir", target], "data directory"
        )

    def test_single_node_serves_quickly(self):
        """`twistd -n raftnode --port P` alone serves writes well under a second after
        it listens (measured from process start, generously bounded here)."""
        port = free_port()
        cwd = self.mktemp_dir()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "raftnode", "--app", "kv", "--port", str(port)],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result = http("PUT", "http://127.0.0.1:%d/kv/x" % port, b"1", timeout=1)
            if result.status == 204:
                break
            time.sleep(0.05)
        self.assertEqual(result.status, 204)
        self.assertTrue(os.path.isdir(os.path.join(cwd, "data", "node1")))

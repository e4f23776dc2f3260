"""``--join``'s conversation with the cluster (``txraft.runtime.join``), against a fake
HTTP API; the real processes are in ``tests/integration/test_join_process.py``."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from txraft.core.config import LEARNER, Configuration, Member
from txraft.errors import ConfigError
from txraft.runtime import join
from txraft.runtime.join import JoinRefused, join_cluster, load_joined, save_joined

ME = Member("n4", LEARNER, "10.0.0.4:5004", "http://10.0.0.4:5004", "ab" * 16)
BASE = Configuration((Member("n1", address="10.0.0.1:5001", http_url="http://10.0.0.1:5001"),
                      Member("n2", address="10.0.0.2:5002")))


def document(conf, config_index=7):
    return {"config_index": config_index, "from_leader": True, "leader_id": "n1",
            "members": [dict(m.to_json(), match_index=3) for m in conf.members]}


class FakeCluster:
    """Answers POST and GET /raft/members like a cluster whose leader is n1."""

    def __init__(self, conf=BASE):
        self.conf = conf
        self.calls = []
        self.answers = []  # scripted (status, doc) for POSTs, then the real behaviour
        self.unreachable = set()

    async def request(self, method, url, body, headers):
        self.calls.append((method, url, body, dict(headers)))
        base = url.split("/raft/")[0]
        if base in self.unreachable:
            raise ConnectionRefusedError("connection refused")
        if method == "GET":
            return 200, document(self.conf)
        if self.answers:
            return self.answers.pop(0)
        if headers.get("Authorization") != "Bearer s3cret":
            return 403, {"error": {"code": "forbidden", "message": "not the secret"}}
        if body["id"] in self.conf:
            return 409, {"error": {"code": "duplicate_member", "message": "taken"}}
        self.conf = self.conf.changed("add_learner", Member(
            body["id"], address=body["address"], http_url=body.get("http_url", ""),
            uuid=body.get("uuid", "")))
        return 200, {"config_index": 7}


class JoinTests(SynchronousTestCase):
    def setUp(self):
        self.now = [0.0]
        self.slept = []
        self.lines = []

    def run_join(self, cluster, urls=("http://10.0.0.2:5002",), secret=b"s3cret", me=ME):
        async def sleep(seconds):
            self.slept.append(seconds)
            self.now[0] += seconds

        d = defer.ensureDeferred(join_cluster(urls, me, secret, cluster.request, sleep,
                                              lambda: self.now[0], 10.0, self.lines.append))
        return d

    def test_asks_to_be_added_then_reads_the_configuration(self):
        cluster = FakeCluster()
        index, conf = self.successResultOf(self.run_join(cluster))
        self.assertEqual(index, 7)
        self.assertEqual(conf.get("n4"), ME)
        method, url, body, headers = cluster.calls[0]
        self.assertEqual((method, url), ("POST", "http://10.0.0.2:5002/raft/members"))
        self.assertEqual(body, {"id": "n4", "address": "10.0.0.4:5004",
                                "http_url": "http://10.0.0.4:5004", "uuid": "ab" * 16})
        self.assertEqual(headers["Authorization"], "Bearer s3cret")
        self.assertEqual(cluster.calls[1][:2], ("GET", "http://10.0.0.2:5002/raft/members"))

    def test_a_restart_after_the_request_finds_itself_added(self):
        cluster = FakeCluster(BASE.changed("add_learner", ME))
        index, conf = self.successResultOf(self.run_join(cluster))
        self.assertEqual(conf.get("n4").address, ME.address)
        self.assertIn("an earlier --join", self.lines[0])

    def test_an_id_taken_by_another_server_is_refused(self):
        for other in (Member("n4", address="10.0.0.9:5004"),
                      Member("n4", address=ME.address, uuid="cd" * 16)):
            cluster = FakeCluster(BASE.changed("add_learner", other))
            failure = self.failureResultOf(self.run_join(cluster), JoinRefused)
            self.assertIn("already has a member n4", str(failure.value))
            self.assertIn("another --id", str(failure.value))

    def test_a_wrong_secret_is_one_line(self):
        failure = self.failureResultOf(self.run_join(FakeCluster(), secret=b"nope"),
                                       JoinRefused)
        self.assertIn("HTTP 403", str(failure.value))
        self.assertIn("--secret-file", str(failure.value))
        self.assertNotIn("\n", str(failure.value))

    def test_transient_refusals_and_unreachable_members_are_retried(self):
        cluster = FakeCluster()
        cluster.unreachable.add("http://10.0.0.1:5001")
        cluster.answers = [
            (503, {"error": {"code": "no_leader", "message": "no leader is known"}}),
            (409, {"error": {"code": "change_in_progress", "message": "wait"}}),
        ]
        urls = ("http://10.0.0.1:5001", "http://10.0.0.2:5002")
        index, conf = self.successResultOf(self.run_join(cluster, urls))
        self.assertIn("n4", conf)
        self.assertEqual(len(self.slept), 2)
        self.assertIn("retrying", self.lines[0])

    def test_gives_up_at_the_deadline(self):
        cluster = FakeCluster()
        cluster.unreachable.add("http://10.0.0.2:5002")
        failure = self.failureResultOf(self.run_join(cluster), JoinRefused)
        self.assertIn("no member added this node within 10s", str(failure.value))
        self.assertIn("connection refused", str(failure.value))
        self.assertGreaterEqual(self.now[0], 10.0)

    def test_other_refusals_are_final(self):
        cluster = FakeCluster()
        cluster.answers = [(409, {"error": {"code": "duplicate_address",
                                            "message": "10.0.0.4:5004 is n3's"}})]
        failure = self.failureResultOf(self.run_join(cluster), JoinRefused)
        self.assertIn("duplicate_address", str(failure.value))
        self.assertEqual(self.slept, [])


class JoinedFileTests(SynchronousTestCase):
    def write(self, path, data):
        with open(path, "wb") as f:
            f.write(data)

    def test_round_trip_and_absence(self):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        self.assertIsNone(load_joined(data_dir))
        conf = BASE.changed("add_learner", ME)
        save_joined(data_dir, 9, conf, self.write)
        self.assertEqual(load_joined(data_dir), (9, conf))

    def test_a_damaged_record_says_what_to_do(self):
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        self.write(join.joined_path(data_dir), b"\x93\x01garbage")
        error = self.assertRaises(ConfigError, load_joined, data_dir)
        self.assertIn("join again", str(error))

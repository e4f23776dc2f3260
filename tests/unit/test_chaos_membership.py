"""The chaos harness's membership client without processes: ``MembershipClient``
against scripted HTTP answers (retries while the cluster is busy, an unknown outcome
settled by reading the configuration, the deadline, an unsupported ``POST /raft/leader``).
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.chaos.membership import MembershipClient, wipe
from txraft.tools.localcluster import HTTPResult


def answer(status, body=None, code=None):
    if code is not None:
        body = {"error": {"code": code, "message": code}}
    return HTTPResult(status, {}, json.dumps(body).encode() if body is not None else b"")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class ScriptedRequests:
    """Answers from a list, recording each request."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []

    def __call__(self, method, url, body=None, headers=None, timeout=5.0):
        self.sent.append((method, url, body and json.loads(body), headers))
        return self.answers.pop(0)


class OneNode:
    def __init__(self, node_id="n1"):
        self.node_id, self.port, self.url = node_id, 7001, "http://n1.test"
        self.paused = False

    def alive(self):
        return True

    def status(self, timeout=1.0):
        return {"role": "leader", "term": 3}


class ClientTests(SynchronousTestCase):
    def client(self, answers, deadline=30.0):
        clock = FakeClock()
        cluster = type("C", (), {})()
        cluster.nodes = {"n1": OneNode(), "n3": OneNode("n3")}
        requests = ScriptedRequests(answers)
        logged = []
        client = MembershipClient(cluster, "s3cret", lambda action, **f: logged.append(
            dict(f, action=action)), lambda: ["n1"], request=requests, clock=clock,
            pause=clock.advance, deadline_seconds=deadline)
        return client, requests, logged

    def test_busy_answers_are_retried(self):
        """409 change_in_progress and any 503 mean "not now": the same change is sent
        again, with the secret, until it is answered; every request is logged."""
        client, requests, logged = self.client([
            answer(409, code="change_in_progress"), answer(503, code="leader_not_ready"),
            answer(503, code="no_leader"), answer(200, {"config_index": 12})])
        outcome = client.remove("n3")
        self.assertEqual((outcome.ok, outcome.attempts, outcome.body), (True, 4, {"config_index": 12}))
        self.assertEqual({(m, u) for m, u, _, _ in requests.sent},
                         {("DELETE", "http://n1.test/raft/members/n3")})
        self.assertEqual({h["Authorization"] for *_, h in requests.sent}, {"Bearer s3cret"})
        self.assertEqual([e["status"] for e in logged if e["action"] == "member_request"],
                         [409, 503, 503, 200])
        self.assertEqual(logged[-1]["action"], "member_remove")

    def test_unknown_outcome_settled_by_the_configuration(self):
        """After a 504 (or no answer) the change may have committed: the configuration is
        read before sending it again, and it is done if that shows it."""
        members = answer(200, {"from_leader": True, "config_index": 20, "members": [
            {"id": "n1", "role": "voter", "address": "a:1", "http_url": ""},
            {"id": "n3", "role": "learner", "address": "a:3", "http_url": ""}]})
        client, requests, _ = self.client([answer(504, code="commit_timeout"), members])
        outcome = client.add("n3")
        self.assertEqual((outcome.ok, outcome.attempts), (True, 1))
        self.assertEqual([m for m, *_ in requests.sent], ["POST", "GET"])
        self.assertEqual(requests.sent[0][2]["id"], "n3")
        # The same, when the configuration cannot be read but the retry says "already".
        client, requests, _ = self.client([HTTPResult(0, {}, b"", error="timed out"),
                                           answer(503, code="no_leader"),
                                           answer(404, code="unknown_member")])
        self.assertTrue(client.remove("n3").ok)

    def test_refusals_and_the_deadline(self):
        """A refusal that retrying cannot change fails at once; busy answers fail once
        the deadline has passed."""
        client, requests, _ = self.client([answer(422, code="last_voter")])
        outcome = client.remove("n1")
        self.assertEqual((outcome.ok, outcome.status, outcome.code, outcome.attempts),
                         (False, 422, "last_voter", 1))
        client, requests, _ = self.client([answer(409, code="change_in_progress")] * 50,
                                          deadline=3.0)
        outcome = client.remove("n2")
        self.assertFalse(outcome.ok)
        self.assertEqual(outcome.code, "change_in_progress")
        self.assertLess(outcome.attempts, 50)

    def test_transfer(self):
        """POST /raft/leader: a route the nodes lack (404 not_found, 405) is
        "unsupported", not a failure; 404 unknown_member is a failure; busy answers are
        retried; 200 carries the new leader."""
        for missing in (answer(404, code="not_found"), answer(405, code="method_not_allowed")):
            client, requests, _ = self.client([missing])
            outcome = client.transfer("n2")
            self.assertEqual((outcome.ok, outcome.code), (False, "unsupported"))
            self.assertEqual(requests.sent[0][:3], ("POST", "http://n1.test/raft/leader",
                                                    {"id": "n2"}))
        client, requests, _ = self.client([answer(404, code="unknown_member")])
        self.assertEqual(client.transfer("n9").code, "unknown_member")
        client, requests, _ = self.client([answer(409, code="transfer_in_progress"),
                                           answer(504, code="transfer_timeout"),
                                           answer(200, {"leader": "n3", "term": 8})])
        outcome = client.transfer(None)
        self.assertEqual((outcome.ok, outcome.body, outcome.attempts),
                         (True, {"leader": "n3", "term": 8}, 3))
        self.assertEqual(requests.sent[0][2], {})

    def test_wipe_keeps_the_log(self):
        """A wiped data directory keeps only the node's log file."""
        root = self.mktemp()
        os.makedirs(os.path.join(root, "snapshots"))
        for name in ("node.log", "raft.db", "snapshots/1.snap"):
            with open(os.path.join(root, name), "w") as f:
                f.write("x")
        self.assertEqual(wipe(root), ["raft.db", "snapshots"])
        self.assertEqual(os.listdir(root), ["node.log"])

"""The chaos harness's membership actions without processes.

``MembershipClient`` against scripted HTTP answers (retries while the cluster is busy, an
unknown outcome settled by reading the configuration, the deadline, an unsupported
``POST /raft/leader``), and the nemesis's schedule with the new kinds against
``FakeCluster``, a cluster of pretend nodes whose configuration changes the way the
HTTP API says it does, on a fake clock: the same seed gives the same schedule, each
action takes its documented steps in order, a member out of the configuration gets no
client traffic, a removed server that campaigns is caught, and a failed action is
repaired.  Then the harness's last check, on pretend statuses: the final configuration
is the founding one and each of its members caught up.  The real-process round is
``tests.integration.test_chaos``.
"""

from __future__ import annotations

import json
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.chaos.harness import ChaosRun, Config, Report
from txraft.tools.chaos.membership import MembershipClient, wipe
from txraft.tools.chaos.nemesis import (DEFAULT_WEIGHTS, FAULT_KINDS, MEMBERSHIP_KINDS,
                                        MEMBERSHIP_WEIGHTS, Nemesis)
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


class FakeNode:
    def __init__(self, cluster, node_id, data_dir):
        self.cluster = cluster
        self.node_id = node_id
        self.port = 7000 + int(node_id[1:])
        self.http_port = self.port
        self.url = "http://%s.test" % node_id
        self.data_dir = data_dir
        self.paused = False
        self.running = True
        self.term_seen = 1  # the term it last heard of (frozen once out)
        self.snapshots_installed = 0
        os.makedirs(data_dir)
        self.touch()

    def touch(self):
        with open(os.path.join(self.data_dir, "raft.log"), "w") as f:
            f.write("entries")
        with open(os.path.join(self.data_dir, "node.log"), "a") as f:
            f.write("log line\n")

    def alive(self):
        return self.running

    def status(self, timeout=1.0):
        if not self.running or self.paused:
            return None
        c = self.cluster
        c.tick()
        member = self.node_id in c.roles
        if member:
            self.term_seen = c.term
        elif c.removed_campaign:
            self.term_seen = c.term + 1
        return {"id": self.node_id, "term": self.term_seen,
                "role": "leader" if c.leader == self.node_id else "follower",
                "leader_id": c.leader if member else None,
                "voters": c.voters(), "learners": c.learners(),
                "commit_index": c.index, "applied_index": c.index,
                "counters": {"snapshots_installed": self.snapshots_installed}}


class FakeCluster:
    """Pretend nodes and the membership API's behaviour, on ``clock``.

    A learner whose process runs is promoted two seconds after it was added (the
    leader's auto-promotion), unless ``promote`` is false; removing the leader elects
    the lowest other voter in the next term.  ``POST /raft/leader`` answers
    ``transfer`` (default: 404, the route does not exist).
    """

    secret = "s3cret"

    def __init__(self, root, clock, size=3):
        self.clock = clock
        self.nodes = {"n%d" % i: FakeNode(self, "n%d" % i, os.path.join(root, "n%d" % i))
                      for i in range(1, size + 1)}
        self.roles = {i: "voter" for i in self.nodes}
        self.added_at = {}
        self.leader = "n1"
        self.term = 1
        self.index = 10
        self.config_index = 0
        self.promote = True
        self.removed_campaign = False
        self.transfer = answer(404, code="not_found")
        self.requests = []
        self.actions = []
        self.started_empty = []

    def voters(self):
        return sorted(i for i, r in self.roles.items() if r == "voter")

    def learners(self):
        return sorted(i for i, r in self.roles.items() if r == "learner")

    def tick(self):
        for node_id, at in list(self.added_at.items()):
            if self.promote and self.nodes[node_id].running and self.clock() >= at + 2.0:
                self.roles[node_id] = "voter"
                self._changed()
                del self.added_at[node_id]

    def _changed(self):
        self.index += 1
        self.config_index = self.index

    # LocalCluster's process control
    def pause(self, node_id):
        self.actions.append(("pause", node_id))
        self.nodes[node_id].paused = True

    def resume(self, node_id):
        self.actions.append(("resume", node_id))
        self.nodes[node_id].paused = False

    def kill(self, node_id):
        self.actions.append(("kill", node_id))
        self.nodes[node_id].running = False

    def stop(self, node_id):
        self.actions.append(("stop", node_id))
        self.nodes[node_id].running = False

    def start(self, node_id):
        self.actions.append(("start", node_id))
        node = self.nodes[node_id]
        node.running = True
        if os.listdir(node.data_dir) == ["node.log"]:
            self.started_empty.append(node_id)
            node.snapshots_installed = 1
            node.term_seen = 0

    # the HTTP API
    def request(self, method, url, body=None, headers=None, timeout=5.0):
        node_id = url.split("//")[1].split(".")[0]
        path = url.split(".test", 1)[1]
        self.requests.append((method, path, node_id))
        if not self.nodes[node_id].running:
            return HTTPResult(0, {}, b"", error="connection refused")
        if self.nodes[node_id].paused:
            return HTTPResult(0, {}, b"", error="timed out")
        self.tick()
        if method == "GET" and path == "/raft/members":
            return answer(200, {"from_leader": True, "config_index": self.config_index,
                                "members": [{"id": i, "role": r, "address": "127.0.0.1:%d"
                                             % self.nodes[i].port, "http_url": self.nodes[i].url}
                                            for i, r in sorted(self.roles.items())]})
        if headers.get("Authorization") != "Bearer " + self.secret:
            return answer(401, code="unauthorized")
        if method == "POST" and path == "/raft/leader":
            return self.transfer(json.loads(body)) if callable(self.transfer) else self.transfer
        if method == "DELETE":
            victim = path.rsplit("/", 1)[1]
            if victim not in self.roles:
                return answer(404, code="unknown_member")
            del self.roles[victim]
            self._changed()
            if victim == self.leader:
                self.leader = self.voters()[0]
                self.term += 1
            return answer(200, {"config_index": self.config_index})
        if method == "POST" and path == "/raft/members":
            doc = json.loads(body)
            if doc["id"] in self.roles:
                return answer(409, code="duplicate_member")
            self.roles[doc["id"]] = "learner"
            self.added_at[doc["id"]] = self.clock()
            self._changed()
            return answer(200, {"config_index": self.config_index})
        if method == "POST" and path.endswith("/promote"):
            member = path.split("/")[3]
            self.roles[member] = "voter"
            self.added_at.pop(member, None)
            self._changed()
            return answer(200, {"config_index": self.config_index})
        return answer(404, code="not_found")


class FakeNetwork:
    def cut(self, cuts):
        pass

    def lossy(self, nodes, rate):
        pass

    def heal(self):
        pass


def make_nemesis(test, seed=5, weights=None, size=3, until=60.0, failover_chance=0.0,
                 **kwargs):
    clock = FakeClock()
    cluster = FakeCluster(test.mktemp(), clock, size)
    outs = []  # serving() whenever the schedule sleeps

    def wait(seconds):
        outs.append((clock(), tuple(nemesis.serving())))
        clock.advance(seconds)
        if clock() >= until:
            nemesis.stop.set()
        return nemesis.stop.is_set()

    def membership(log, serving, pause):
        return MembershipClient(cluster, cluster.secret, log, serving, request=cluster.request,
                                clock=clock, pause=pause, deadline_seconds=kwargs.get(
                                    "membership_seconds", 30.0))

    nemesis = Nemesis(cluster, seed, "token", 0.15, clock=clock,
                      weights=weights or dict(MEMBERSHIP_WEIGHTS),
                      network=lambda log: FakeNetwork(), membership=membership,
                      pause=clock.advance, wait=wait, failover_chance=failover_chance,
                      **kwargs)
    nemesis.outs = outs
    return nemesis, cluster


def run_schedule(nemesis):
    if nemesis.membership_enabled:
        test_remembered = nemesis.members.remember()
        assert test_remembered
    nemesis._run()
    return [e for e in nemesis.events if e["action"] != "member_request"]


class ConfigTests(SynchronousTestCase):
    def test_membership_mix(self):
        """--membership adds every membership action to the mix (default or named); the
        default mix alone has none; membership kinds can be named like any other."""
        self.assertEqual(Config().weights(), None)
        self.assertFalse(set(DEFAULT_WEIGHTS) & set(MEMBERSHIP_KINDS))
        self.assertEqual(Config().membership_actions(), [])
        config = Config(membership=True, workload="shop", nodes=5, duration=1800, seed=8)
        self.assertEqual(config.weights(), dict(DEFAULT_WEIGHTS, **MEMBERSHIP_WEIGHTS))
        self.assertEqual(config.membership_actions(), list(MEMBERSHIP_KINDS))
        self.assertTrue(config.command().endswith("--membership"))
        self.assertEqual(Config(faults="kill,wipe_replace").weights(),
                         {"kill": 3, "wipe_replace": MEMBERSHIP_WEIGHTS["wipe_replace"]})
        self.assertEqual(Config(faults="pause", membership=True).weights(),
                         dict({"pause": 3}, **MEMBERSHIP_WEIGHTS))
        self.assertEqual(FAULT_KINDS[-3:], MEMBERSHIP_KINDS)

    def test_report_rows(self):
        """The table counts each membership action by outcome and shows the final
        configuration; a run without them shows no such rows."""
        report = Report(Config(membership=True), faults={"remove_add": 3, "transfer": 2},
                        membership={"remove_add": {"done": 2, "failed": 1},
                                    "wipe_replace": {}, "transfer": {"unsupported": 2}},
                        final_configuration="n1,n2,n3 voters, no learners (config index 9)")
        rows = dict(m.groups() for m in map(re.compile(r"\s*(\S.*?)\s{2,}(\S.*)$").match,
                                             report.table().splitlines()) if m)
        self.assertEqual(rows["remove_add"], "3 (done 2, failed 1)")
        self.assertEqual(rows["wipe_replace"], "0 (done 0, failed 0)")
        self.assertEqual(rows["transfer"], "2 (done 0, failed 0, unsupported 2)")
        self.assertEqual(rows["members after heal"],
                         "n1,n2,n3 voters, no learners (config index 9)")
        plain = Report(Config()).table()
        self.assertNotIn("remove_add", plain)
        self.assertNotIn("members after heal", plain)


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
        "unsupported", not a failure; 404 unknown_member and 409 not_voter are failures;
        busy answers (a transfer under way, 504, 503) are retried; 200 carries the new
        leader."""
        for missing in (answer(404, code="not_found"), answer(405, code="method_not_allowed")):
            client, requests, _ = self.client([missing])
            outcome = client.transfer("n2")
            self.assertEqual((outcome.ok, outcome.code), (False, "unsupported"))
            self.assertEqual(requests.sent[0][:3], ("POST", "http://n1.test/raft/leader",
                                                    {"id": "n2"}))
        client, requests, _ = self.client([answer(404, code="unknown_member")])
        self.assertEqual(client.transfer("n9").code, "unknown_member")
        client, requests, _ = self.client([answer(409, code="not_voter")])
        self.assertEqual((client.transfer("n3").code, len(requests.sent)), ("not_voter", 1))
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


class ScheduleTests(SynchronousTestCase):
    """The nemesis with membership actions, on ``FakeCluster``."""

    def test_same_seed_same_schedule(self):
        """Kinds, shapes and timing come from the seed (the nodes are picked from what
        the cluster says at run time, the same here)."""
        weights = dict(DEFAULT_WEIGHTS, **MEMBERSHIP_WEIGHTS)
        for kind in DEFAULT_WEIGHTS:  # the network and process faults need real nodes
            weights[kind] = 0
        first, _ = make_nemesis(self, seed=11, weights=weights)
        second, _ = make_nemesis(self, seed=11, weights=weights)
        self.assertEqual(run_schedule(first), run_schedule(second))
        other, _ = make_nemesis(self, seed=12, weights=weights)
        self.assertNotEqual(run_schedule(other), run_schedule(first))
        kinds = {e["action"] for e in first.events}
        self.assertTrue({"remove_add", "wipe_replace", "transfer"} <= kinds, kinds)

    def test_actions_follow_the_documented_steps(self):
        """remove_add: removed (leader or follower), out for a while, wiped, started,
        added, promoted by the leader; wipe_replace: killed, wiped, removed while down,
        started empty, added, promoted.  Until promoted it gets no client traffic;
        afterwards every node is a voter again and nothing is reported."""
        nemesis, cluster = make_nemesis(self, seed=1)
        events = run_schedule(nemesis)
        steps = {"remove_add": ["remove_add", "member_remove", "leader_without", "out", "wipe",
                                "start_empty", "member_add", "promoted", "remove_add_done"],
                 "wipe_replace": ["wipe_replace", "kill", "wipe", "member_remove",
                                  "start_empty", "member_add", "promoted",
                                  "wipe_replace_done"]}
        groups = []
        for e in events:
            if e["action"] in MEMBERSHIP_KINDS or e["action"].endswith("_skipped"):
                groups.append([])
            if groups and e["action"] not in ("stop", "kill") or e["action"] == "kill" \
                    and groups[-1][0]["action"] == "wipe_replace":
                groups[-1].append(e)
        done = {kind: 0 for kind in steps}
        for group in groups:
            kind, victim = group[0]["action"], group[0].get("node")
            if kind not in steps:
                continue
            self.assertEqual([e["action"] for e in group], steps[kind], group)
            done[kind] += 1
            promoted = [e["t"] for e in group if e["action"] == "promoted"][0]
            # (event times are rounded to 0.1 ms)
            window = [out for t, out in nemesis.outs
                      if group[0]["t"] - 1e-3 <= t < promoted - 1e-3]
            self.assertTrue(window)
            self.assertTrue(all(victim not in out for out in window), (victim, window))
        self.assertGreater(done["remove_add"], 0)
        self.assertGreater(done["wipe_replace"], 0)
        self.assertEqual(nemesis.membership_summary()["remove_add"]["done"], done["remove_add"])
        self.assertTrue(any(g[0]["action"] == "remove_add" and g[0]["was_leader"] for g in groups))
        self.assertTrue(any(g[0]["action"] == "remove_add" and not g[0]["was_leader"]
                            for g in groups))
        self.assertEqual(len(cluster.started_empty),
                         sum(1 for e in events if e["action"] == "start_empty"))
        self.assertEqual((nemesis.errors, nemesis.anomalies), ([], []))
        self.assertEqual(cluster.voters(), ["n1", "n2", "n3"])
        self.assertEqual(nemesis.serving(), ["n1", "n2", "n3"])

    def test_unsupported_transfer(self):
        """Nodes without POST /raft/leader: said once, counted as unsupported, and later
        transfers send nothing."""
        said = []
        nemesis, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=20.0,
                                        say=said.append)
        run_schedule(nemesis)
        summary = nemesis.membership_summary()["transfer"]
        self.assertGreater(summary["unsupported"], 1)
        self.assertEqual((summary["done"], summary["failed"]), (0, 0))
        self.assertEqual(len(said), 1)
        self.assertIn("POST /raft/leader answered 404", said[0])
        self.assertEqual(sum(1 for m, p, _ in cluster.requests if p == "/raft/leader"), 1)
        self.assertEqual(nemesis.errors, [])

    def test_transfer_checks_the_answer(self):
        """A 200 must name the asked target, and the cluster must then agree on it; an
        answer that does not is reported."""
        nemesis, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=5.0)

        def moved(body):
            wanted = body.get("id") or "n2"
            cluster.leader, cluster.term = wanted, cluster.term + 1
            return answer(200, {"leader": wanted, "term": cluster.term, "took_ms": 120})

        cluster.transfer = moved
        run_schedule(nemesis)
        self.assertGreater(nemesis.membership_summary()["transfer"]["done"], 0)
        self.assertEqual((nemesis.anomalies, nemesis.errors), ([], []))
        liar, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=5.0)
        cluster.transfer = answer(200, {"leader": "n3", "term": 1})  # nothing moved
        run_schedule(liar)
        self.assertTrue(liar.anomalies)
        self.assertEqual(liar.membership_summary()["transfer"]["done"], 0)

    def test_transfer_answers_that_are_not_contradictions(self):
        """Seen in a 30-minute soak: a retry after a 504 is a transfer of its own from
        whoever leads by then, so its answer may name the first leader (its
        ``previous_leader`` says whom it handed over from); and a new leader that lost
        the leadership before a majority was seen following it is unconfirmed, not an
        anomaly. A majority following another node in the named term still is one."""
        nemesis, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=5.0)

        def back(body):
            first = cluster.leader
            if body.get("id"):
                cluster.leader, cluster.term = body["id"], cluster.term + 1
                return answer(200, {"leader": body["id"], "term": cluster.term,
                                    "previous_leader": first})
            # Handed to another voter (the first attempt's unknown outcome), then back
            # to the first leader by the retry, which the one in between answered.
            between = "n2" if first != "n2" else "n3"
            cluster.term += 2
            return answer(200, {"leader": first, "term": cluster.term,
                                "previous_leader": between})

        cluster.transfer = back
        run_schedule(nemesis)
        self.assertEqual((nemesis.anomalies, nemesis.errors), ([], []))
        events = [e for e in nemesis.events if e["action"] == "transfer"]
        self.assertIn(None, [e["target"] for e in events])

        # Forwarded to the target after it became the leader: "already leads".
        already, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=5.0)

        def led_already(body):
            wanted = body.get("id") or "n2"
            cluster.leader, cluster.term = wanted, cluster.term + 1
            return answer(200, {"leader": wanted, "term": cluster.term,
                                "previous_leader": wanted if body.get("id") else "n1"})

        cluster.transfer = led_already
        run_schedule(already)
        self.assertEqual((already.anomalies, already.errors), ([], []))

        moved_on, cluster = make_nemesis(self, seed=1, weights={"transfer": 1}, until=5.0)

        def fleeting(body):
            wanted = body.get("id") or "n2"
            cluster.leader, cluster.term = "n1" if wanted != "n1" else "n3", cluster.term + 2
            return answer(200, {"leader": wanted, "term": cluster.term - 1})

        cluster.transfer = fleeting
        run_schedule(moved_on)
        self.assertEqual((moved_on.anomalies, moved_on.errors), ([], []))
        summary = moved_on.membership_summary()["transfer"]
        self.assertEqual(summary["done"], summary["unconfirmed"])
        self.assertGreater(summary["done"], 0)

    def test_a_removed_server_that_campaigns_is_caught(self):
        """Dissertation 4.2.3: a removed server still running must not start elections;
        one seen in a higher term than the others is a violation."""
        nemesis, cluster = make_nemesis(self, seed=1, weights={"remove_add": 1}, until=10.0)
        cluster.removed_campaign = True
        events = run_schedule(nemesis)
        running = [e for e in events if e["action"] == "remove_add" and e["keep_running"]]
        self.assertTrue(running, events)
        self.assertTrue(any("a removed server ran an election" in e for e in nemesis.errors),
                        nemesis.errors)

    def test_removal_during_a_leader_pause(self):
        """With ``failover_chance`` 1 every removal meets a leader pause: the leader is
        resumed before the action goes on, and every change is still done."""
        nemesis, cluster = make_nemesis(self, seed=1, until=30.0, failover_chance=1.0)
        events = run_schedule(nemesis)
        pauses = [e for e in events if e["action"] == "pause"]
        actions = [e for e in events if e["action"] in ("remove_add", "wipe_replace")]
        self.assertEqual(len(pauses), len(actions))
        self.assertTrue(any(e["action"] == "remove_add" and e["was_leader"] for e in actions))
        self.assertTrue(all(e["during"] == "membership change" for e in pauses))
        self.assertEqual([a for a, _ in cluster.actions if a in ("pause", "resume")],
                         ["pause", "resume"] * len(pauses))
        self.assertFalse(any(node.paused for node in cluster.nodes.values()))
        self.assertEqual(nemesis.errors, [])
        self.assertEqual(cluster.voters(), ["n1", "n2", "n3"])

    def test_a_failed_action_is_repaired(self):
        """A learner the leader never promotes fails the action (an error of the run);
        the nemesis then promotes it itself so the run goes on with every member."""
        nemesis, cluster = make_nemesis(self, seed=3, weights={"wipe_replace": 1}, until=5.0,
                                        membership_seconds=4.0)
        cluster.promote = False
        events = run_schedule(nemesis)
        self.assertTrue(any(e.startswith("membership: wipe_replace of") and "promotion" in e
                            for e in nemesis.errors), nemesis.errors)
        self.assertIn("repair", [e["action"] for e in events])
        self.assertEqual(cluster.voters(), ["n1", "n2", "n3"])
        self.assertEqual(nemesis.serving(), ["n1", "n2", "n3"])
        self.assertEqual(nemesis.restore(), [])


class StatusNode:
    def __init__(self, status):
        self._status = status

    def status(self, timeout=1.0):
        return self._status


class FinalCheckTests(SynchronousTestCase):
    """After healing, every member of the final configuration must be caught up and the
    configuration must be the founding one, every node a voter."""

    def run_with(self, voters, learners=(), applied=None):
        run = ChaosRun(Config(nodes=3, membership=True))
        run.node_ids = ["n1", "n2", "n3"]
        applied = applied or {}
        run.cluster = type("C", (), {})()
        run.cluster.nodes = {i: StatusNode({
            "id": i, "role": "leader" if i == "n1" else "follower", "term": 4, "leader_id": "n1",
            "voters": list(voters), "learners": list(learners), "config_index": 77,
            "commit_index": 50, "applied_index": applied.get(i, 50)}) for i in run.node_ids}
        report = Report(run.config)
        run._settle(report)
        return report

    def test_founding_configuration_caught_up(self):
        """Every founding node a voter, all applied the leader's commit: settled."""
        self.assertEqual(self.run_with(["n1", "n2", "n3"]).violations, [])

    def test_a_member_left_out(self):
        """A node the nemesis failed to add back is named; it is not waited for, since it
        is no member (its lag is not the question)."""
        [problem] = self.run_with(["n1", "n2"], applied={"n3": 3}).violations
        self.assertIn("membership once settled", problem)
        self.assertIn("voters ['n1', 'n2'], learners [], missing ['n3']", problem)
        [problem] = self.run_with(["n1", "n2"], ["n3"]).violations
        self.assertIn("learners ['n3']", problem)

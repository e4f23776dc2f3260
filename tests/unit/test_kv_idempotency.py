"""``Idempotency-Key`` on the key-value store's writes (``txraft.apps.idempotency``): keyed
commands in the state machine, their deterministic retention on every replica, their
place in snapshots, and the HTTP contract (replay, reuse, retries after an unknown
outcome, leader routing)."""

from __future__ import annotations

import os
import shutil
import tempfile

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase


from txraft.apps import kv, kv_http
from txraft import results
from txraft.results import Result
from txraft.core.messages import ENTRY_NOOP, Entry

from tests.fakes import FakeCluster, start_request

T0 = 1_795_689_172_000  # ms


def keyed_put(index, key, value, ikey, ts=T0, term=1):
    return Entry(index, term, kv.encode_keyed(kv.encode_put(key, value), ts, ikey))


def keyed_delete(index, key, ikey, ts=T0, term=1):
    return Entry(index, term, kv.encode_keyed(kv.encode_delete(key), ts, ikey))


def count_records(sm):
    return sm._db.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0]


class KeyedCommandTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.sm = kv.open_state_machine(self.dir, durable=False)
        self.addCleanup(lambda: self.sm.close())

    def reopen(self, **kwargs):
        self.sm.close()
        self.sm = kv.KVStateMachine(os.path.join(self.dir, "kv.db"), False, **kwargs)

    def test_first_application(self):
        """A keyed put or delete applies like a plain one; its result is 204 at its own
        index, recorded under the key."""
        [put] = self.sm.apply_batch([keyed_put(1, b"a", b"1", "w1")])
        self.assertEqual(put, Result(204, None, 1))
        self.assertEqual(self.sm.get(b"a"), b"1")
        [delete] = self.sm.apply_batch([keyed_delete(2, b"a", "w2")])
        self.assertEqual(delete, Result(204, None, 2))
        self.assertIsNone(self.sm.get(b"a"))
        self.assertEqual(self.sm.idempotency_record("w1")[1], Result(204, None, 1, True))

    def test_replay_applies_nothing(self):
        """The same key and request again answers the first outcome (its index, replayed)
        and does not apply: a later write to the key is not overwritten."""
        self.sm.apply_batch([keyed_put(1, b"a", b"old", "w1"),
                             Entry(2, 1, kv.encode_put(b"a", b"new"))])
        [again] = self.sm.apply_batch([keyed_put(3, b"a", b"old", "w1", ts=T0 + 5)])
        self.assertEqual(again, Result(204, None, 1, replayed=True))
        self.assertEqual(self.sm.get(b"a"), b"new")
        [again] = self.sm.apply_batch([keyed_delete(4, b"b", "d1"), keyed_delete(5, b"b", "d1")])[1:]
        self.assertEqual(again, Result(204, None, 4, replayed=True))

    def test_reused_key(self):
        """The same idempotency key with another request (key, value or method) is 422
        idempotency_key_reused, applies nothing and is not recorded."""
        self.sm.apply_batch([keyed_put(1, b"a", b"1", "w1")])
        for index, entry in enumerate([keyed_put(0, b"a", b"2", "w1"),
                                       keyed_put(0, b"b", b"1", "w1"),
                                       keyed_delete(0, b"a", "w1")], start=2):
            [result] = self.sm.apply_batch([Entry(index, 1, entry.data)])
            self.assertEqual((result.status, result.index, result.replayed), (422, index, False))
            self.assertEqual(result.body["error"], {
                "code": "idempotency_key_reused", "field": "Idempotency-Key",
                "message": "this Idempotency-Key was used for a different request"})
        self.assertEqual((self.sm.get(b"a"), self.sm.get(b"b")), (b"1", None))
        self.assertEqual(count_records(self.sm), 1)

    def test_malformed_keyed_commands(self):
        """A keyed command with a bad time or key is invalid_command, like any malformed
        command: applied nowhere, recorded nowhere."""
        bad = [msgpack.packb([0, b"k", b"v", -1, "w"]), msgpack.packb([0, b"k", b"v", 2**62, "w"]),
               msgpack.packb([0, b"k", b"v", 1.5, "w"]), msgpack.packb([0, b"k", b"v", 1, ""]),
               msgpack.packb([0, b"k", b"v", 1, "has space"]), msgpack.packb([0, b"k", b"v", 1, b"w"]),
               msgpack.packb([1, b"k", 1, "w", "x"]), msgpack.packb([0, b"k", 1, "w"])]
        results = self.sm.apply_batch([Entry(i, 1, data) for i, data in enumerate(bad, start=1)])
        self.assertEqual([r["error"]["code"] for r in results], ["invalid_command"] * len(bad))
        self.assertEqual(self.sm._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0], 0)
        self.assertEqual(count_records(self.sm), 0)

    def test_survives_reopen(self):
        """Records are replicated state: after a restart a repeat is still a replay."""
        self.sm.apply_batch([keyed_put(1, b"a", b"1", "w1")])
        self.reopen()
        [again] = self.sm.apply_batch([keyed_put(2, b"a", b"1", "w1")])
        self.assertEqual(again, Result(204, None, 1, replayed=True))

    def test_retention_by_leader_time(self):
        """A key is forgotten once a later keyed command's leader time is past the
        retention window; plain commands carry no time and change nothing; a leader
        clock that goes backwards does not bring time back."""
        self.reopen(idempotency_retention_ms=10_000)
        self.sm.apply_batch([keyed_put(1, b"a", b"1", "w1", ts=100_000),
                             Entry(2, 1, kv.encode_put(b"a", b"2"))])
        [replay] = self.sm.apply_batch([keyed_put(3, b"a", b"1", "w1", ts=110_000)])
        self.assertTrue(replay.replayed)
        self.sm.apply_batch([keyed_put(4, b"x", b"1", "w2", ts=110_001),
                             keyed_put(5, b"x", b"1", "w3", ts=50)])
        self.assertIsNone(self.sm.idempotency_record("w1"))
        self.assertEqual(self.sm.idempotency_record("w3")[1].index, 5)
        # w3 was stamped 110_001 (time never goes back): kept until 120_001.
        self.sm.apply_batch([keyed_put(6, b"y", b"1", "w4", ts=120_001)])
        self.assertIsNotNone(self.sm.idempotency_record("w3"))
        [again] = self.sm.apply_batch([keyed_put(7, b"a", b"1", "w1", ts=120_002)])
        self.assertEqual(again, Result(204, None, 7))
        self.assertIsNone(self.sm.idempotency_record("w3"))

    def test_retention_by_count(self):
        """Beyond the maximum number of keys the oldest (by log index) go first."""
        self.reopen(idempotency_max_keys=2)
        self.sm.apply_batch([keyed_put(i, b"a", b"1", "w%d" % i) for i in (1, 2, 3)])
        self.assertEqual([self.sm.idempotency_record("w%d" % i) is not None for i in (1, 2, 3)],
                         [False, True, True])
        self.reopen(idempotency_max_keys=2)
        self.sm.apply_batch([keyed_put(4, b"a", b"1", "w4")])
        self.assertIsNone(self.sm.idempotency_record("w2"))
        self.assertEqual(count_records(self.sm), 2)


class SnapshotTests(SynchronousTestCase):
    def open(self, **kwargs):
        sm = kv.KVStateMachine(os.path.join(self.mktemp() + ".db"), False, **kwargs)
        self.addCleanup(sm.close)
        return sm

    def test_round_trip_with_records(self):
        """A snapshot holds the idempotency records, the leader time and their count:
        restored elsewhere, the state is byte-identical and both replicas go on alike
        (replays, expiry and the key bound included)."""
        sm = self.open(idempotency_retention_ms=1000, idempotency_max_keys=3)
        sm.apply_batch([keyed_put(1, b"a", b"1", "w1", ts=5000),
                        keyed_delete(2, b"b", "w2", ts=5500),
                        Entry(3, 2, kv.encode_put(b"c", b"3")),
                        keyed_put(4, b"d", b"4", "w3", ts=5200)])
        index, term, data = sm.snapshot()
        image = msgpack.unpackb(data)
        self.assertEqual(image["format"], "txraft.kv/2")
        self.assertEqual([row[0] for row in image["tables"]["idempotency"]], ["w1", "w2", "w3"])
        self.assertEqual(dict(image["tables"]["meta"])["last_ms"], 5500)
        other = self.open(idempotency_retention_ms=1000, idempotency_max_keys=3)
        other.apply_batch([keyed_put(1, b"zzz", b"gone", "old")])
        other.restore(index, term, data)
        self.assertEqual(other.dump(), sm.dump())
        self.assertIsNone(other.idempotency_record("old"))
        follow_on = [keyed_put(5, b"a", b"1", "w1", ts=5900),   # replay
                     keyed_put(6, b"e", b"5", "w4", ts=6400),   # w1 expires; 3 keys kept
                     keyed_put(7, b"e", b"6", "w5", ts=6400)]   # w2 goes (bound)
        results = [r.replayed for r in sm.apply_batch(follow_on)]
        self.assertEqual([r.replayed for r in other.apply_batch(follow_on)], results)
        self.assertEqual(results, [True, False, False])
        self.assertEqual(other.dump(), sm.dump())
        self.assertEqual([other.idempotency_record(k) is not None
                          for k in ("w1", "w2", "w3", "w4", "w5")],
                         [False, False, True, True, True])

    def test_begin_snapshot_holds_records(self):
        """A snapshot read in the background is the same image, records included."""
        sm = self.open()
        sm.apply_batch([keyed_put(1, b"a", b"1", "w1")])
        index, term, read = sm.begin_snapshot()
        expected = sm.dump()
        sm.apply_batch([keyed_put(2, b"b", b"2", "w2")])
        self.assertEqual(read(), expected)

    def test_restores_a_snapshot_of_the_previous_format(self):
        """A txraft.kv/1 snapshot (before idempotency keys: what a node of the previous
        release sent or saved) restores as the same data with no records."""
        sm = self.open()
        sm.apply_batch([Entry(1, 1, kv.encode_put(b"a", b"1")), Entry(2, 1, b"", ENTRY_NOOP)])
        old = msgpack.packb({"format": "txraft.kv/1", "tables": {
            "meta": [["applied_index", 2], ["applied_term", 1]], "kv": [[b"a", b"1"]]}})
        other = self.open()
        other.apply_batch([keyed_put(1, b"zzz", b"gone", "old", ts=T0)])
        other.restore(2, 1, old)
        self.assertEqual(other.dump(), sm.dump())
        [result] = other.apply_batch([keyed_put(3, b"b", b"2", "old")])
        self.assertEqual(result, Result(204, None, 3))

    def test_refuses_a_snapshot_without_records(self):
        """A txraft.kv/2 image that lacks the idempotency table is refused, state kept."""
        sm = self.open()
        sm.apply_batch([keyed_put(1, b"a", b"1", "w1")])
        data = msgpack.packb({"format": "txraft.kv/2", "tables": {"meta": [], "kv": []}})
        with self.assertRaises(ValueError):
            sm.restore(9, 9, data)
        self.assertEqual((sm.applied_index(), sm.get(b"a")), (1, b"1"))


# -- replica determinism ----------------------------------------------------------------

kv_keys = st.sampled_from([b"a", b"b", b"\x00"])
idem_keys = st.sampled_from(["w1", "w2", "w3", "w4", "w5"])
command = st.one_of(
    st.tuples(st.just("put"), kv_keys, st.binary(max_size=3)),
    st.tuples(st.just("delete"), kv_keys),
    st.tuples(st.just("keyed_put"), kv_keys, st.sampled_from([b"", b"x"]), idem_keys,
              st.integers(0, 3000)),
    st.tuples(st.just("keyed_delete"), kv_keys, idem_keys, st.integers(0, 3000)),
    st.tuples(st.just("noop")),
)


def to_entries(commands):
    entries = []
    for i, c in enumerate(commands, start=1):
        if c[0] == "put":
            entries.append(Entry(i, 1, kv.encode_put(c[1], c[2])))
        elif c[0] == "delete":
            entries.append(Entry(i, 1, kv.encode_delete(c[1])))
        elif c[0] == "keyed_put":
            entries.append(keyed_put(i, c[1], c[2], c[3], ts=c[4]))
        elif c[0] == "keyed_delete":
            entries.append(keyed_delete(i, c[1], c[2], ts=c[3]))
        else:
            entries.append(Entry(i, 1, b"", ENTRY_NOOP))
    return entries


@settings(max_examples=60, deadline=None)
@given(st.lists(command, max_size=40), st.lists(st.integers(1, 6), max_size=8),
       st.integers(0, 40))
def check_replicas_agree(commands, cuts, snapshot_at):
    # A plain function: trial may load this module twice in one run and Hypothesis
    # refuses one test run from two different TestCase instances.
    base = tempfile.mkdtemp()
    try:
        def open_one(name):
            return kv.KVStateMachine(os.path.join(base, name + ".db"), False,
                                     idempotency_retention_ms=1000, idempotency_max_keys=3)

        one, two, three = open_one("one"), open_one("two"), open_one("three")
        entries = to_entries(commands)
        results = one.apply_batch(entries)
        # Another replica, in other batches, with a restart in the middle.
        position, got = 0, []
        for n, cut in enumerate(cuts + [len(entries)]):
            got += two.apply_batch(entries[position:position + cut])
            position += cut
            if n == 0:
                two.close()
                two = open_one("two")
        assert got == results, (got, results)
        assert one.dump() == two.dump()
        # A third that installs a snapshot of the first's state part way, then goes on.
        at = min(snapshot_at, len(entries))
        four = open_one("four")
        four.apply_batch(entries[:at])
        three.restore(*four.snapshot())
        four.close()
        assert three.apply_batch(entries[at:]) == results[at:]
        assert three.dump() == one.dump()
        for sm in (one, two, three):
            sm.close()
    finally:
        shutil.rmtree(base)


class ReplicaDeterminismTests(SynchronousTestCase):
    def test_replicas_agree(self):
        """Replicas applying the same entries (in other batches, across a restart, or
        from a snapshot) give the same answers and byte-identical state, idempotency
        records, their expiry by leader time and their bound included: nothing depends
        on a replica's own clock."""
        check_replicas_agree()


# -- HTTP -------------------------------------------------------------------------------


class HTTPTests(SynchronousTestCase):
    KEY = {"Idempotency-Key": ["write-42"]}

    def setUp(self):
        self.cluster = FakeCluster(self, kv.open_state_machine, kv_http.make_resource)
        self.leader = self.cluster.nodes["n1"]
        self.sm = self.leader.state_machine

    def put(self, value, node="n1", key="a", headers=KEY):
        return self.cluster("PUT", "/kv/" + key, node=node, data=value, headers=headers)

    def test_plain_writes_unchanged(self):
        """Without the header a write is the plain command (no time, no key) and its
        answer has no idempotency header; a repeat applies again."""
        first = self.put(b"v", headers=None)
        again = self.put(b"v", headers=None)
        self.assertEqual((first.code, first.header("X-Raft-Index")), (204, "1"))
        self.assertEqual((again.code, again.header("X-Raft-Index")), (204, "2"))
        self.assertIsNone(again.header("Idempotent-Replayed"))
        self.assertEqual(self.leader.proposed, [kv.encode_put(b"a", b"v")] * 2)

    def test_keyed_write_carries_leader_time(self):
        """A keyed write's entry carries the proposing node's time in ms and the key."""
        answer = self.put(b"v")
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(answer.header("X-Raft-Index"), "1")
        self.assertIsNone(answer.header("Idempotent-Replayed"))
        self.assertEqual(msgpack.unpackb(self.leader.proposed[0]),
                         [kv.OP_PUT, b"a", b"v", 1_795_689_172_500, "write-42"])

    def test_replay(self):
        """The same key, method, path and body answers the first outcome again: 204,
        the first X-Raft-Index, Idempotent-Replayed: true; nothing is applied or even
        proposed (the node holds the record)."""
        self.put(b"v")
        self.put(b"newer", headers={"Idempotency-Key": ["other"]})
        again = self.put(b"v")
        self.assertEqual((again.code, again.body, again.header("X-Raft-Index"),
                          again.header("Idempotent-Replayed")), (204, b"", "1", "true"))
        self.assertEqual(self.leader.calls["propose"], 2)
        self.assertEqual(self.sm.get(b"a"), b"newer")

    def test_delete_replay(self):
        """A repeated keyed DELETE answers its first 204 again."""
        headers = {"Idempotency-Key": ["del-1"]}
        self.put(b"v", headers=None)
        first = self.cluster("DELETE", "/kv/a", headers=headers)
        self.put(b"back", headers=None)
        again = self.cluster("DELETE", "/kv/a", headers=headers)
        self.assertEqual((again.code, again.header("X-Raft-Index")),
                         (204, first.header("X-Raft-Index")))
        self.assertEqual(again.header("Idempotent-Replayed"), "true")
        self.assertEqual(self.sm.get(b"a"), b"back")

    def test_reused_key(self):
        """The same idempotency key for another body, key or method is 422
        idempotency_key_reused (JSON code, message, field), and nothing is applied."""
        self.put(b"v")
        for method, path, data in (("PUT", "/kv/a", b"w"), ("PUT", "/kv/b", b"v"),
                                   ("DELETE", "/kv/a", None)):
            answer = self.cluster(method, path, data=data, headers=self.KEY)
            self.assertEqual((answer.code, answer.header("Content-Type")),
                             (422, "application/json"))
            self.assertEqual(answer.json()["error"], {
                "code": "idempotency_key_reused", "field": "Idempotency-Key",
                "message": "this Idempotency-Key was used for a different request"})
        self.assertEqual((self.sm.get(b"a"), self.sm.get(b"b")), (b"v", None))

    def test_bad_key(self):
        """An empty, over-long or non-ASCII Idempotency-Key is 422 invalid_value naming
        the header, and nothing is proposed."""
        for key in (b"", b"k" * 256, "clé".encode("utf-8"), b"two words"):
            answer = self.put(b"v", headers={"Idempotency-Key": [key]})
            self.assertEqual((answer.code, answer.error_code), (422, "invalid_value"))
            self.assertEqual(answer.json()["error"]["field"], "Idempotency-Key")
        self.assertEqual(self.leader.calls["propose"], 0)
        self.assertEqual(self.put(b"v", headers={"Idempotency-Key": [b"k" * 255]}).code, 204)

    def test_retry_after_commit_timeout_and_leader_change(self):
        """A write whose outcome was unknown (504) and that did commit is not applied again
        when the client retries with its key on the new leader: the first index answers."""
        self.leader.commit_timeout = True
        self.leader.apply_on_timeout = True
        lost = self.put(b"v")
        self.assertEqual((lost.code, lost.error_code), (504, "commit_timeout"))
        self.leader.commit_timeout = False
        self.put(b"later", headers=None)
        self.cluster.replicate()
        self.cluster.elect("n2")
        n2 = self.cluster.nodes["n2"]
        retry = self.put(b"v", node="n2")
        self.assertEqual((retry.code, retry.header("X-Raft-Index"),
                          retry.header("Idempotent-Replayed")), (204, "1", "true"))
        self.assertEqual(n2.state_machine.get(b"a"), b"later")

    def test_retry_after_a_lost_write(self):
        """A 504 whose entry never committed: the retry with the key applies it, once."""
        self.leader.commit_timeout = True
        self.assertEqual(self.put(b"v").code, 504)
        self.leader.commit_timeout = False
        retry = self.put(b"v")
        self.assertEqual((retry.code, retry.header("X-Raft-Index")), (204, "1"))
        self.assertIsNone(retry.header("Idempotent-Replayed"))
        self.assertEqual(self.sm.get(b"a"), b"v")

    def test_replay_forwarded_to_leader(self):
        """A follower that lacks the record forwards (with the header); the leader
        answers the replay, relayed with its headers."""
        self.put(b"v")
        again = self.put(b"v", node="n2")
        self.assertEqual((again.code, again.header("X-Raft-Index"),
                          again.header("Idempotent-Replayed")), (204, "1", "true"))
        [(method, url, kwargs)] = self.cluster.clients["n2"].requests
        self.assertEqual(kwargs["headers"][b"idempotency-key"], [b"write-42"])

    def test_replay_from_any_node(self):
        """A node holding the record answers the repeat itself, even as a follower; a
        different request with the key is refused there too."""
        self.put(b"v")
        self.cluster.replicate()
        again = self.put(b"v", node="n2")
        self.assertEqual((again.code, again.header("X-Raft-Index"),
                          again.header("Idempotent-Replayed")), (204, "1", "true"))
        self.assertEqual(self.put(b"w", node="n2").code, 422)
        self.assertEqual(self.cluster.clients["n2"].requests, [])

    def test_in_flight_duplicate(self):
        """Two identical keyed writes in flight at once: both are proposed, the second
        entry replays the first's answer; the value is written once."""
        self.leader.hold = True
        http = self.cluster.http["n1"]
        d1 = start_request(http, "PUT", "http://n1.test/kv/a", data=b"v", headers=self.KEY)
        d2 = start_request(http, "PUT", "http://n1.test/kv/a", data=b"v", headers=self.KEY)
        http.flush()
        self.leader.release()
        http.flush()
        a1, a2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertEqual((a1.code, a2.code), (204, 204))
        self.assertEqual((a1.header("X-Raft-Index"), a2.header("X-Raft-Index")), ("1", "1"))
        self.assertEqual(a2.header("Idempotent-Replayed"), "true")
        self.assertEqual(self.sm.applied_index(), 2)


class HelperTests(SynchronousTestCase):
    def test_fingerprint_is_of_the_plain_command(self):
        """The HTTP layer and the state machine fingerprint the same bytes: the plain
        command the keyed one extends."""
        command = kv.encode_put(b"k\x00", b"v")
        keyed = msgpack.unpackb(kv.encode_keyed(command, 7, "w"))
        self.assertEqual(msgpack.packb(keyed[:-2]), command)
        self.assertNotEqual(kv.fingerprint(kv.encode_put(b"k", b"")),
                            kv.fingerprint(kv.encode_delete(b"k")))

    def test_key_problem(self):
        """Keys are 1 to 255 visible ASCII characters."""
        self.assertIsNone(results.key_problem("a" * 255))
        for key in ("", "a" * 256, "a b", "é", b"a", None):
            self.assertIsNotNone(results.key_problem(key))

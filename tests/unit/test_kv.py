"""The key-value application: its SQLite state machine and its HTTP API."""

from __future__ import annotations

import os
import shutil
import tempfile

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txraft.apps import kv, kv_http
from txraft.interfaces import IStateMachine
from txraft.core.messages import ENTRY_NOOP, Entry

from tests.fakes import FakeRaftNode, request


def put(index, key, value, term=1):
    return Entry(index, term, kv.encode_put(key, value))


def delete(index, key, term=1):
    return Entry(index, term, kv.encode_delete(key))


class StateMachineTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        self.sm = kv.open_state_machine(self.dir)
        self.addCleanup(lambda: self.sm.close())

    def reopen(self):
        self.sm.close()
        self.sm = kv.open_state_machine(self.dir)

    def test_provides_interface(self):
        """KVStateMachine provides IStateMachine."""
        self.assertTrue(verifyObject(IStateMachine, self.sm))

    def test_non_durable_mode(self):
        """durable=False (tests only) turns fsync off and nothing else."""
        sm = kv.open_state_machine(self.mktemp(), durable=False)
        self.addCleanup(sm.close)
        self.assertEqual(sm._db.execute("PRAGMA synchronous").fetchone()[0], 0)
        self.assertEqual(sm._db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_durability_settings(self):
        """The database is one kv.db file in WAL mode with synchronous=NORMAL: the Raft log is
        the durable record, and a rolled-back state machine re-applies from it."""
        path = os.path.join(self.dir, "kv.db")
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.sm._db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.sm._db.execute("PRAGMA synchronous").fetchone()[0], 1)

    def test_put_get_delete(self):
        """Put stores, put overwrites, delete removes, deleting a missing key is fine."""
        results = self.sm.apply_batch([put(1, b"a", b"1"), put(2, b"a", b"2"), put(3, b"b", b"")])
        self.assertEqual(results, [None, None, None])
        self.assertEqual((self.sm.get(b"a"), self.sm.get(b"b")), (b"2", b""))
        self.sm.apply_batch([delete(4, b"a"), delete(5, b"zz")])
        self.assertIsNone(self.sm.get(b"a"))
        self.assertEqual(self.sm.applied_index(), 5)

    def test_noop_advances_index(self):
        """A NOOP entry only advances the applied index and term; its result is None."""
        self.assertEqual(self.sm.apply_batch([Entry(1, 3, b"", ENTRY_NOOP)]), [None])
        self.assertEqual((self.sm.applied_index(), self.sm.applied_term()), (1, 3))

    def test_invalid_commands_are_error_results(self):
        """Undecodable or malformed commands give an error result, never an exception."""
        bad = [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([9, b"k"]),
               msgpack.packb([0, "str-key", b"v"]), msgpack.packb([0, b"k"]),
               msgpack.packb([1, b"k", b"extra"])]
        entries = [Entry(i + 1, 1, data) for i, data in enumerate(bad)]
        results = self.sm.apply_batch(entries)
        self.assertEqual([r["error"]["code"] for r in results], ["invalid_command"] * len(bad))
        self.assertEqual(self.sm.applied_index(), len(bad))
        self.assertEqual(self.sm._db.execute("SELECT COUNT(*) FROM kv").fetchone()[0], 0)

    def test_exactly_once_across_reopen(self):
        """After close and reopen, an already applied batch is skipped, not re-applied."""
        self.sm.apply_batch([put(1, b"a", b"1"), delete(2, b"a")])
        self.reopen()
        self.assertEqual(self.sm.applied_index(), 2)
        results = self.sm.apply_batch([put(1, b"a", b"1"), delete(2, b"a"), put(3, b"c", b"3")])
        self.assertEqual(results, [None, None, None])
        self.assertIsNone(self.sm.get(b"a"))
        self.assertEqual(self.sm.get(b"c"), b"3")
        self.reopen()
        self.assertEqual((self.sm.applied_index(), self.sm.applied_term()), (3, 1))

    def test_gap_is_refused_atomically(self):
        """A batch that skips an index raises and changes nothing, not even its prefix."""
        self.sm.apply_batch([put(1, b"a", b"1")])
        with self.assertRaises(ValueError):
            self.sm.apply_batch([put(2, b"b", b"2"), put(4, b"c", b"3")])
        self.assertIsNone(self.sm.get(b"b"))
        self.assertEqual(self.sm.applied_index(), 1)
        self.reopen()
        self.assertEqual(self.sm.applied_index(), 1)
        self.assertIsNone(self.sm.get(b"b"))

    def test_snapshot_restore(self):
        """Restoring a snapshot elsewhere gives an identical state and applied index/term."""
        self.sm.apply_batch([put(1, b"a", b"1", term=2), put(2, b"\x00b", b"\xff", term=2)])
        index, term, data = self.sm.snapshot()
        self.assertEqual((index, term), (2, 2))
        other = kv.open_state_machine(self.mktemp())
        self.addCleanup(other.close)
        other.apply_batch([put(1, b"zzz", b"gone")])
        other.restore(index, term, data)
        self.assertEqual(other.dump(), self.sm.dump())
        self.assertEqual((other.applied_index(), other.applied_term()), (2, 2))
        self.assertIsNone(other.get(b"zzz"))
        self.assertEqual(other.get(b"\x00b"), b"\xff")
        other.apply_batch([put(3, b"n", b"next")])
        self.assertEqual(other.applied_index(), 3)

    def test_restore_refuses_foreign_snapshot(self):
        """A snapshot that is not a kv image is refused and the state is unchanged."""
        self.sm.apply_batch([put(1, b"a", b"1")])
        for data in (msgpack.packb({"format": "other/1", "tables": {}}),
                     msgpack.packb({"format": "txraft.kv/1", "tables": {"kv": []}})):
            with self.assertRaises(ValueError):
                self.sm.restore(9, 9, data)
        self.assertEqual((self.sm.applied_index(), self.sm.get(b"a")), (1, b"1"))

    def test_snapshot_is_not_pickle(self):
        """Snapshots are msgpack."""
        data = self.sm.snapshot()[2]
        self.assertEqual(msgpack.unpackb(data)["format"], "txraft.kv/2")


keys = st.sampled_from([b"a", b"b", b"c", b"\x00", b"long" * 10])
commands = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, st.binary(max_size=8)),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("garbage"), st.binary(max_size=4)),
        st.tuples(st.just("noop")),
    ),
    max_size=30,
)


def to_entries(commands):
    entries = []
    for i, command in enumerate(commands, start=1):
        if command[0] == "put":
            entries.append(put(i, command[1], command[2]))
        elif command[0] == "delete":
            entries.append(delete(i, command[1]))
        elif command[0] == "garbage":
            entries.append(Entry(i, 1, command[1]))
        else:
            entries.append(Entry(i, 1, b"", ENTRY_NOOP))
    return entries


@settings(max_examples=40, deadline=None)
@given(commands, st.lists(st.integers(1, 5), max_size=10))
def check_replicas_converge(commands, cuts):
    # A plain function, not a method: trial may load this module twice in one run and
    # Hypothesis refuses one test run from two different TestCase instances.
    base = tempfile.mkdtemp()
    try:
        one = kv.open_state_machine(os.path.join(base, "one"), durable=False)
        two = kv.open_state_machine(os.path.join(base, "two"), durable=False)
        entries = to_entries(commands)
        one.apply_batch(entries)
        position = 0
        for cut in cuts + [len(entries)]:
            two.apply_batch(entries[position:position + cut])
            position += cut
        two.apply_batch(entries[position:])
        assert one.dump() == two.dump()
        one.close()
        two.close()
    finally:
        shutil.rmtree(base)


class ReplicaPropertyTests(SynchronousTestCase):
    def test_replicas_converge(self):
        """Two replicas applying the same entries in different batches end byte-identical."""
        check_replicas_converge()


class HTTPTests(SynchronousTestCase):
    def setUp(self):
        self.sm = kv.open_state_machine(self.mktemp())
        self.addCleanup(self.sm.close)
        self.node = FakeRaftNode(self.sm)
        self.http = StubTreq(kv_http.make_resource(self.node, Clock(), None))

    def test_put(self):
        """PUT /kv/<key> stores the raw body and answers 204 with X-Raft-Index."""
        answer = request(self, self.http, "PUT", "http://n1/kv/greeting", data=b"\x00hi")
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(answer.header("X-Raft-Index"), "1")
        self.assertEqual(self.sm.get(b"greeting"), b"\x00hi")

    def test_get(self):
        """GET /kv/<key> answers the raw value as application/octet-stream."""
        request(self, self.http, "PUT", "http://n1/kv/k", data=b"v")
        answer = request(self, self.http, "GET", "http://n1/kv/k")
        self.assertEqual((answer.code, answer.body), (200, b"v"))
        self.assertEqual(answer.header("Content-Type"), "application/octet-stream")

    def test_get_missing(self):
        """GET of an absent key is a JSON 404."""
        answer = request(self, self.http, "GET", "http://n1/kv/none")
        self.assertEqual((answer.code, answer.error_code), (404, "not_found"))

    def test_delete(self):
        """DELETE /kv/<key> answers 204 with X-Raft-Index; the key is then absent."""
        request(self, self.http, "PUT", "http://n1/kv/k", data=b"v")
        answer = request(self, self.http, "DELETE", "http://n1/kv/k")
        self.assertEqual((answer.code, answer.header("X-Raft-Index")), (204, "2"))
        self.assertEqual(request(self, self.http, "GET", "http://n1/kv/k").code, 404)

    def test_keys_with_slashes_and_escapes(self):
        """Keys may contain slashes and percent-escaped bytes; they are UTF-8 text."""
        request(self, self.http, "PUT", "http://n1/kv/a/b%20c/%C3%A9", data=b"v")
        self.assertEqual(self.sm.get("a/b c/é".encode("utf-8")), b"v")
        self.assertEqual(request(self, self.http, "GET", "http://n1/kv/a/b%20c/%C3%A9").body, b"v")

    def test_empty_key_is_404(self):
        """/kv/ names no key: 404."""
        self.assertEqual(request(self, self.http, "PUT", "http://n1/kv/", data=b"v").code, 404)

    def test_long_key_is_422(self):
        """A key over 1024 bytes is 422 invalid_value on field key."""
        answer = request(self, self.http, "PUT", "http://n1/kv/" + "k" * 1025, data=b"v")
        self.assertEqual((answer.code, answer.error_code), (422, "invalid_value"))
        self.assertEqual(self.node.calls["propose"], 0)

    def test_large_value_is_413(self):
        """A value over the 64 KiB body limit is 413 and nothing is proposed."""
        answer = request(self, self.http, "PUT", "http://n1/kv/k", data=b"v" * (64 * 1024 + 1))
        self.assertEqual((answer.code, answer.error_code), (413, "body_too_large"))
        self.assertEqual(self.node.calls["propose"], 0)
        self.assertEqual(request(self, self.http, "PUT", "http://n1/kv/k",
                                 data=b"v" * (64 * 1024)).code, 204)

    def test_stale_read(self):
        """?consistency=stale reads locally, without a barrier, with X-Raft-Applied-Index."""
        request(self, self.http, "PUT", "http://n1/kv/k", data=b"v")
        answer = request(self, self.http, "GET", "http://n1/kv/k?consistency=stale")
        self.assertEqual((answer.code, answer.body), (200, b"v"))
        self.assertEqual(answer.header("X-Raft-Applied-Index"), "1")
        self.assertEqual(self.node.calls["read_barrier"], 0)

    def test_linearizable_read_uses_barrier(self):
        """A default GET goes through read_barrier()."""
        request(self, self.http, "GET", "http://n1/kv/k")
        self.assertEqual(self.node.calls["read_barrier"], 1)

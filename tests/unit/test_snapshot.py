"""Snapshot files and SQLite images pinned for a worker thread (Raft section 7).  The
transfer of snapshots is tested in ``test_transfer``."""

from __future__ import annotations

import os
import struct
import threading
import zlib

from twisted.trial.unittest import SynchronousTestCase

from txraft.apps.kv import KVStateMachine, encode_put
from txraft.core.config import LEARNER, Configuration, Member
from txraft.core.messages import ENTRY_NORMAL, Entry, SnapshotMeta
from txraft.errors import StorageCorrupted
from txraft.runtime.snapshot import SnapshotStore


class StoreTests(SynchronousTestCase):
    def test_round_trip_and_reopen(self):
        """A saved snapshot is what latest() returns, also from a new store object."""
        path = self.mktemp()
        store = SnapshotStore(path)
        self.assertIsNone(store.latest())
        store.save(SnapshotMeta(10, 2), b"image")
        self.assertEqual(store.latest(), (SnapshotMeta(10, 2), b"image"))
        self.assertEqual(SnapshotStore(path).latest(), (SnapshotMeta(10, 2), b"image"))

    def test_the_configuration_is_stored_with_the_image(self):
        """Dissertation 5.1: the image file records the configuration at its index (the
        entries that held it are compacted away); the checksum covers it, and a file
        of the earlier format (no configuration) still reads."""
        directory = self.mktemp()
        conf = Configuration((Member("n1", address="h:1"), Member("n2", LEARNER, "h:2")))
        SnapshotStore(directory).save(SnapshotMeta(9, 2, configuration=conf, config_index=4),
                                      b"image")
        meta, data = SnapshotStore(directory).latest()
        self.assertEqual((meta, data), (SnapshotMeta(9, 2), b"image"))
        self.assertEqual((meta.configuration, meta.config_index), (conf, 4))
        path = os.path.join(directory, "snapshot.bin")
        with open(path, "r+b") as f:
            raw = bytearray(f.read())
            raw[60] ^= 0xFF  # inside the configuration
            f.seek(0)
            f.write(raw)
        with self.assertRaises(StorageCorrupted):
            SnapshotStore(directory).latest()
        legacy = struct.pack(">8sQQQI", b"TXRSNAP1", 7, 1, 3, zlib.crc32(b"old")) + b"old"
        with open(path, "wb") as f:
            f.write(legacy)
        meta, data = SnapshotStore(directory).latest()
        self.assertEqual((meta, data, meta.configuration), (SnapshotMeta(7, 1), b"old", None))

    def test_an_older_image_never_replaces_a_newer_one(self):
        """A follower can install a leader's snapshot while its own older one is still
        being written in a worker thread: the older write is skipped, on disk and in
        memory."""
        path = self.mktemp()
        store = SnapshotStore(path)
        store.save(SnapshotMeta(20, 2), b"new")
        self.assertFalse(store.write(SnapshotMeta(10, 2), b"old"))
        store.remember(SnapshotMeta(10, 2), b"old")
        self.assertEqual(store.latest(), (SnapshotMeta(20, 2), b"new"))
        self.assertEqual(SnapshotStore(path).latest(), (SnapshotMeta(20, 2), b"new"))
        self.assertFalse(SnapshotStore(path).write(SnapshotMeta(15, 2), b"old"))

    def test_leftover_temporary_file_is_removed_at_start(self):
        """A crash while writing leaves ``snapshot.bin.tmp`` (up to the state machine's
        size, never read); opening the store deletes it and keeps the last image."""
        directory = self.mktemp()
        SnapshotStore(directory).save(SnapshotMeta(5, 2), b"image")
        leftover = os.path.join(directory, "snapshot.bin.tmp")
        with open(leftover, "wb") as f:
            f.write(b"half an image")
        store = SnapshotStore(directory)
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(store.latest(), (SnapshotMeta(5, 2), b"image"))

    def test_write_from_another_thread(self):
        """write() runs in a worker thread; remember() then publishes the image."""
        store = SnapshotStore(self.mktemp())
        result = []
        worker = threading.Thread(
            target=lambda: result.append(store.write(SnapshotMeta(5, 1), b"abc"))
        )
        worker.start()
        worker.join()
        self.assertEqual(result, [True])
        store.remember(SnapshotMeta(5, 1), b"abc")
        self.assertEqual(store.latest(), (SnapshotMeta(5, 1), b"abc"))


class PinnedSQLiteImageTests(SynchronousTestCase):
    def machine(self):
        path = os.path.join(self.mktemp(), "kv.sqlite")
        os.makedirs(os.path.dirname(path))
        sm = KVStateMachine(path, durable=False)
        self.addCleanup(sm.close)
        return sm

    def apply(self, sm, start, count, term=1):
        sm.apply_batch([
            Entry(i, term, encode_put(b"k%d" % (i % 7), b"v%d" % i), ENTRY_NORMAL)
            for i in range(start, start + count)
        ])

    def test_read_in_a_thread_sees_the_state_when_it_began(self):
        """begin_snapshot() pins the state: the image read later in another thread,
        after more entries were applied, equals snapshot() at the pin, and restores
        to the same state on another replica."""
        sm = self.machine()
        self.apply(sm, 1, 30)
        expected = sm.snapshot()
        index, term, read = sm.begin_snapshot()
        self.assertEqual((index, term), expected[:2])
        self.apply(sm, 31, 30, term=2)
        out = []
        worker = threading.Thread(target=lambda: out.append(read()))
        worker.start()
        worker.join()
        self.assertEqual(out, [expected[2]])
        self.assertEqual(sm.applied_index(), 60)
        other = self.machine()
        other.restore(index, term, out[0])
        self.assertEqual(other.snapshot(), expected)

"""A data directory's identity file and the peers' records (``txraft.runtime.identity``),
and how ``twistd raftnode`` refuses a directory that is not the node's."""

from __future__ import annotations

import json
import os

from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txraft.plugins import raftnode
from txraft.runtime import identity as identity_module
from txraft.runtime.identity import (
    IDENTITY_FILE,
    PEERS_FILE,
    FilePeerStore,
    IdentityError,
    open_identity,
    read_identity,
    write_atomically,
)


class IdentityFileTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, IDENTITY_FILE)
        self.uuids = iter(["%032x" % i for i in range(1, 100)])

    def open(self, node_id="n2", cluster_id="shop", **kwargs):
        kwargs.setdefault("new_uuid", lambda: next(self.uuids))
        kwargs.setdefault("now", lambda: 1_800_000_000.0)
        return open_identity(self.dir, node_id, cluster_id, **kwargs)

    def test_created_in_an_empty_directory(self):
        """An empty directory gets node id, cluster id, a new uuid and the creation
        time, versioned; it has not caught up with any leader yet."""
        identity = self.open()
        self.assertEqual((identity.how, identity.uuid, identity.caught_up),
                         ("created", "%032x" % 1, False))
        with open(self.path) as f:
            self.assertEqual(json.load(f), {
                "format": 1, "node_id": "n2", "cluster_id": "shop", "uuid": "%032x" % 1,
                "created": "2027-01-15T08:00:00Z", "caught_up": False})

    def test_a_real_uuid4(self):
        """Without an injected source the uuid is a random uuid4, different each time."""
        first = open_identity(self.dir, "n2", "shop")
        os.remove(self.path)
        second = open_identity(self.dir, "n2", "shop")
        self.assertEqual(len(first.uuid), 32)
        self.assertEqual(first.uuid[12], "4")  # the version digit of a uuid4
        self.assertNotEqual(first.uuid, second.uuid)

    def test_read_back_at_every_start(self):
        """A directory with its identity and its Raft log keeps its uuid across starts."""
        created = self.open()
        os.makedirs(os.path.join(self.dir, "raft"))
        open(os.path.join(self.dir, "raft", "%020d.wal" % 1), "wb").close()
        again = self.open()
        self.assertEqual((again.how, again.uuid), ("existing", created.uuid))

    def test_written_durably_before_it_is_returned(self):
        """The file is written once, through the atomic writer, before open returns."""
        writes = []
        self.open(write=lambda path, data: writes.append((path, json.loads(data))))
        [(path, record)] = writes
        self.assertEqual((path, record["uuid"]), (self.path, "%032x" % 1))

    def test_atomic_write_order(self):
        """write_atomically: the temporary file is fsynced before it replaces the file,
        and the directory is fsynced after the rename (FACTS.md: a created or renamed
        file needs its directory fsynced)."""
        events = []

        def fsync(fd):
            events.append(("fsync file", os.path.exists(self.path + ".tmp"),
                           os.path.exists(self.path)))
            os.fsync(fd)

        def fsync_directory(path):
            with open(self.path, "rb") as f:
                events.append(("fsync dir", path, f.read()))

        write_atomically(self.path, b"new", fsync=fsync, fsync_directory=fsync_directory)
        self.assertEqual(events, [("fsync file", True, False),
                                  ("fsync dir", os.path.abspath(self.dir), b"new")])
        self.assertFalse(os.path.exists(self.path + ".tmp"))

    def test_another_node_id_is_refused(self):
        """A start with another --id than the directory's is refused with one line that
        says what to do."""
        self.open()
        os.makedirs(os.path.join(self.dir, "raft"))
        with self.assertRaises(IdentityError) as caught:
            self.open(node_id="n3")
        message = str(caught.exception)
        self.assertIn("is node n2's", message)
        self.assertIn("start it with --id n2, or give n3 a data directory of its own", message)
        self.assertNotIn("\n", message)

    def test_another_cluster_id_is_refused(self):
        """A start with another --cluster-id than the directory's is refused."""
        self.open()
        with self.assertRaises(IdentityError) as caught:
            self.open(cluster_id="staging")
        self.assertIn("belongs to cluster 'shop', not 'staging': start it with "
                      "--cluster-id shop", str(caught.exception))

    def test_damaged_file_is_refused(self):
        """A damaged identity file is never replaced silently: one line, what to do."""
        for content in (b"garbage", b"{}", json.dumps({"format": 1, "node_id": "n2",
                        "cluster_id": "shop", "uuid": "xyz", "created": "t",
                        "caught_up": False}).encode()):
            with open(self.path, "wb") as f:
                f.write(content)
            with self.assertRaises(IdentityError) as caught:
                self.open()
            self.assertIn("is damaged", str(caught.exception))
            self.assertIn("docs/operations.md#replace-a-node-that-lost-its-disk",
                          str(caught.exception))

    def test_upgrade_of_a_directory_without_identity(self):
        """A directory with a Raft log but no identity (an older version's) gets one,
        counts as caught up (it served before), and the upgrade is logged."""
        os.makedirs(os.path.join(self.dir, "raft"))
        open(os.path.join(self.dir, "raft", "%020d.wal" % 1), "wb").close()
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        identity = self.open()
        self.assertEqual((identity.how, identity.caught_up), ("upgraded", True))
        self.assertEqual(read_identity(self.path).uuid, identity.uuid)
        self.assertTrue(any("older version" in e.get("log_format", "") for e in logged))

    def test_snapshots_alone_are_state(self):
        """A snapshot file counts as Raft state too; a LOCK file or a node.log does not."""
        os.makedirs(os.path.join(self.dir, "raft"))
        open(os.path.join(self.dir, "raft", "LOCK"), "wb").close()
        open(os.path.join(self.dir, "node.log"), "wb").close()
        self.assertFalse(identity_module.has_raft_state(self.dir))
        os.makedirs(os.path.join(self.dir, "snapshots"))
        open(os.path.join(self.dir, "snapshots", "snapshot"), "wb").close()
        self.assertTrue(identity_module.has_raft_state(self.dir))

    def test_identity_without_its_log_is_renewed(self):
        """An identity whose Raft log is gone (a partial wipe) is void: a new uuid,
        not caught up, so that peers that knew the old one refuse it."""
        old = self.open()
        renewed = self.open()
        self.assertEqual(renewed.how, "renewed")
        self.assertNotEqual(renewed.uuid, old.uuid)
        self.assertFalse(renewed.caught_up)
        self.assertEqual(read_identity(self.path).uuid, renewed.uuid)

    def test_caught_up_is_recorded_once(self):
        """mark_caught_up rewrites the file (atomically) once; later calls do nothing."""
        writes = []

        def write(path, data):
            writes.append(data)
            write_atomically(path, data)

        identity = self.open(write=write)
        identity.mark_caught_up()
        identity.mark_caught_up()
        self.assertEqual(len(writes), 2)
        self.assertTrue(read_identity(self.path).caught_up)
        self.assertEqual(read_identity(self.path).uuid, identity.uuid)


class FilePeerStoreTests(SynchronousTestCase):
    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)

    def test_round_trip(self):
        """Records saved are loaded by the next store on the same directory."""
        store = FilePeerStore(self.dir)
        self.assertEqual(store.load(), {})
        store.save({"n1": "ab" * 16})
        self.assertEqual(FilePeerStore(self.dir).load(), {"n1": "ab" * 16})

    def test_saved_through_the_atomic_writer(self):
        """Every save is one atomic, durable write of the whole record."""
        writes = []
        store = FilePeerStore(self.dir, write=lambda path, data: writes.append((path, data)))
        store.save({"n1": "ab" * 16})
        self.assertEqual(writes, [(os.path.join(self.dir, PEERS_FILE),
                                   b'{"format": 1, "peers": {"n1": "' + b"ab" * 16 + b'"}}\n')])

    def test_damaged_file_is_refused(self):
        """A damaged record file is reported (one line), never taken as empty."""
        for content in (b"junk", b'{"format": 1, "peers": {"n1": "short"}}', b"[]"):
            with open(os.path.join(self.dir, PEERS_FILE), "wb") as f:
                f.write(content)
            with self.assertRaises(IdentityError) as caught:
                FilePeerStore(self.dir)
            self.assertIn("is damaged", str(caught.exception))


class PluginTests(SynchronousTestCase):
    """``twistd raftnode``'s options: the identity is read (or made) first."""

    def setUp(self):
        self.patch(raftnode, "_check_port_free", lambda *args: None)
        self.dir = os.path.abspath(self.mktemp())
        self.secret = os.path.abspath(self.mktemp())
        with open(self.secret, "w") as f:
            f.write("a-cluster-secret-of-two-members\n")

    def parse(self, *args):
        options = raftnode.Options()
        options.parseOptions(["--app", "kv", "--data-dir", self.dir, "--port", "7001",
                              "--members", "n1=127.0.0.1:7001,n2=127.0.0.1:7002",
                              "--secret-file", self.secret] + list(args))
        return options

    def test_identity_before_anything_else(self):
        """The identity file exists before the Raft log is first opened."""
        from txraft.runtime import storage

        seen = []
        real = storage.FileLogStorage.__init__

        def init(store, directory, *args, **kwargs):
            seen.append((os.path.exists(os.path.join(self.dir, IDENTITY_FILE)),
                         os.path.exists(directory)))
            real(store, directory, *args, **kwargs)

        self.patch(storage.FileLogStorage, "__init__", init)
        options = self.parse()
        self.assertEqual(seen, [(True, False)])
        self.assertEqual(options["identity"].node_id, "n1")
        self.assertEqual(options["identity"].how, "created")

    def test_wrong_id_is_one_usage_line(self):
        """The directory of n1 started as n2 is refused as a usage error of one line."""
        self.parse()
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--id", "n2", "--port", "7002")
        self.assertIn("is node n1's", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--cluster-id", "other")
        self.assertIn("belongs to cluster 'txraft'", str(caught.exception))

"""The guard deciding whose datagrams reach the core: ``txraft.runtime.trust``."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txraft.core.config import LEARNER, Configuration, Member
from txraft.interfaces import IPeerIdentityStore
from txraft.runtime.trust import (
    CONFIGURATION,
    RECORDED,
    MemoryPeerStore,
    PeerIdentities,
    PeerIdentity,
    parse_uuid,
)

U1, U2, U3 = (bytes([n]) * 16 for n in (1, 2, 3))


class FailingStore(MemoryPeerStore):
    def save(self, records):
        raise OSError("disk full")


class PeerIdentitiesTests(SynchronousTestCase):
    def setUp(self):
        self.store = MemoryPeerStore()
        self.guard = PeerIdentities(self.store, "n1")

    def test_store_provides_the_interface(self):
        """MemoryPeerStore provides IPeerIdentityStore, as the file store does."""
        verifyObject(IPeerIdentityStore, self.store)

    def test_trust_on_first_use(self):
        """The first uuid heard from a peer is recorded and delivered; the same one
        again is delivered; another is refused and counted."""
        self.assertTrue(self.guard.admit("n2", U1))
        self.assertEqual(self.store.records, {"n2": U1.hex()})
        self.assertTrue(self.guard.admit("n2", U1))
        self.assertFalse(self.guard.admit("n2", U2))
        self.assertFalse(self.guard.admit("n2", U2))
        self.assertEqual(self.guard.view(), (
            PeerIdentity("n2", U1.hex(), RECORDED, 2, U2.hex()),))
        self.assertEqual(self.store.saves, 1)

    def test_a_leaders_replication_is_tolerated(self):
        """replication=True (AppendEntries, snapshot chunks) is delivered from another
        uuid than expected, and counted apart from the refusals; anything else is not."""
        self.guard.admit("n2", U1)
        self.assertTrue(self.guard.admit("n2", U2, replication=True))
        self.assertFalse(self.guard.admit("n2", U2))
        self.assertEqual(self.guard.view(), (
            PeerIdentity("n2", U1.hex(), RECORDED, 1, U2.hex(), tolerated=1),))
        self.assertEqual(self.guard.expected("n2"), U1)  # nothing recorded by it

    def test_recorded_before_delivery(self):
        """admit saves the record before it answers True: a store that cannot save
        makes admit raise (the datagram is then dropped) and records nothing, so a
        vote is never counted from an identity that is not durable."""
        guard = PeerIdentities(FailingStore(), "n1")
        self.assertRaises(OSError, guard.admit, "n2", U1)
        self.assertIsNone(guard.expected("n2"))
        self.assertEqual(guard.view(), ())

    def test_records_survive_a_restart(self):
        """A new guard on the same store expects what the old one recorded."""
        self.guard.admit("n2", U1)
        again = PeerIdentities(self.store, "n1")
        self.assertFalse(again.admit("n2", U2))
        self.assertTrue(again.admit("n2", U1))

    def test_configuration_binding_overrides_the_record(self):
        """A uuid bound by the configuration is expected whatever was recorded; members
        without one are trusted on first use; this node's own entry is ignored."""
        self.guard.admit("n2", U1)
        conf = Configuration((Member("n1", uuid=U3.hex()), Member("n2", uuid=U2.hex()),
                              Member("n3")))
        self.guard.use_configuration(conf)
        self.assertFalse(self.guard.admit("n2", U1))
        self.assertTrue(self.guard.admit("n2", U2))
        self.assertTrue(self.guard.admit("n3", U3))
        self.assertEqual([(p.peer, p.source) for p in self.guard.view()],
                         [("n2", CONFIGURATION), ("n3", RECORDED)])
        # Without the binding, the record is what counts again.
        self.guard.use_configuration(Configuration.of_voters(["n1", "n2", "n3"]))
        self.assertTrue(self.guard.admit("n2", U1))

    def test_malformed_binding_matches_nothing(self):
        """A configuration uuid that is not 32 hex digits refuses the member rather than
        falling back to trust on first use."""
        self.guard.use_configuration(Configuration((Member("n1"), Member("n2", uuid="zz"))))
        self.assertFalse(self.guard.admit("n2", U1))
        self.assertIsNone(self.guard.expected("n2"))
        self.assertEqual(self.store.records, {})

    def test_forget_after_committed_removal(self):
        """A committed configuration without a peer forgets its record (durably), so
        it can come back on a new data directory, trusted on first use again."""
        self.guard.admit("n2", U1)
        self.guard.admit("n3", U1)
        self.assertEqual(self.guard.forget_absent(["n1", "n3"]), ["n2"])
        self.assertEqual(self.store.records, {"n3": U1.hex()})
        self.assertEqual(self.guard.forget_absent(["n1", "n3"]), [])
        self.assertEqual(self.store.saves, 3)
        self.assertTrue(self.guard.admit("n2", U2))
        self.assertFalse(self.guard.admit("n2", U1))

    def test_senders_outside_the_configuration_are_never_recorded(self):
        """A removed member still running (or a stranger holding the secret) is
        delivered, unrecorded, and refused only against what was expected of it; once
        added back, the first uuid heard from the member is recorded.  (The chaos
        harness's remove_add: the old process, heard after its removal committed, had
        been recorded again, and the member added back on a new data directory was
        then bound to the old uuid and refused for good.)"""
        self.guard.use_configuration(Configuration.of_voters(["n1", "n2", "n3"]))
        self.guard.admit("n3", U1)
        self.guard.use_configuration(Configuration.of_voters(["n1", "n2"]))
        self.guard.forget_absent(["n1", "n2"])  # n3's removal committed
        self.assertTrue(self.guard.admit("n3", U1))  # the old process, still running
        self.assertEqual(self.store.records, {})
        self.assertIsNone(self.guard.expected("n3"))
        self.guard.use_configuration(Configuration((
            Member("n1"), Member("n2"), Member("n3", LEARNER))))  # added back
        self.assertTrue(self.guard.admit("n3", U2))  # the new data directory
        self.assertEqual(self.store.records, {"n3": U2.hex()})
        self.assertFalse(self.guard.admit("n3", U1))

    def test_forget_keeps_bindings(self):
        """Forgetting touches records only: a binding stays as long as the
        configuration in force has it."""
        self.guard.use_configuration(Configuration((Member("n1"),
                                                    Member("n2", LEARNER, uuid=U2.hex()))))
        self.guard.forget_absent(["n1"])
        self.assertEqual(self.guard.expected("n2"), U2)

    def test_next_binding(self):
        """For a leader: the first member without a uuid whose uuid is known (its own
        given, the others recorded), to write into the configuration; none once all
        known ones are bound."""
        conf = Configuration.of_voters(["n1", "n2", "n3"])
        self.assertEqual(self.guard.next_binding(conf), None)
        self.assertEqual(self.guard.next_binding(conf, U1.hex()), Member("n1", uuid=U1.hex()))
        self.guard.admit("n3", U3)
        bound = conf.with_uuid("n1", U1.hex())
        self.assertEqual(self.guard.next_binding(bound, U1.hex()), Member("n3", uuid=U3.hex()))
        self.assertIsNone(self.guard.next_binding(bound.with_uuid("n3", U3.hex()), U1.hex()))

    def test_parse_uuid(self):
        """Node uuids are written as 32 hexadecimal digits."""
        self.assertEqual(parse_uuid("01" * 16), U1)
        for bad in ("", "01" * 15, "zz" * 16, None, 5, "01" * 17):
            self.assertIsNone(parse_uuid(bad))

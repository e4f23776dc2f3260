"""Tests for ``txraft.runtime.transport.UDPTransport``.

Most tests wire transports together through a fake datagram transport (a recorder of
``write(data, addr)``), a ``task.Clock`` and a fake resolver: no sockets, no real time.
One test sends a message over real UDP sockets on 127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import random
import socket
import struct

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import DNSLookupError, MessageLengthError
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txraft.runtime.codec import encode_message
from txraft.errors import ConfigError
from txraft.interfaces import ITransport
from txraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
)
from txraft.runtime.transport import (
    INBOUND_DROPS,
    MAC_SIZE,
    NO_SECRET_WARNING,
    OUTBOUND_DROPS,
    MAX_STRANGERS,
    PEER_ID_RESERVE,
    STATS_NAMES,
    FLAG_MAC,
    FLAG_NOTICE,
    FLAG_REPLICATION,
    Faults,
    UDPTransport,
    envelope_mac,
)
from txraft.runtime.trust import MemoryPeerStore, PeerIdentities

SECRET = b"correct horse battery staple"
UUID_A = bytes.fromhex("a1" * 16)
UUID_B = bytes.fromhex("b2" * 16)
UUID_WIPED = bytes.fromhex("ee" * 16)
ADDR = {"a": ("10.0.0.1", 9000), "b": ("10.0.0.2", 9000), "c": ("10.0.0.3", 9000)}
DNS = {"node-a": "10.0.0.1", "node-b": "10.0.0.2", "node-c": "10.0.0.3"}


class FakeDatagramTransport:
    """Records what a DatagramProtocol writes; can be told to fail."""

    def __init__(self):
        self.written = []
        self.error = None

    def write(self, data, addr):
        if self.error is not None:
            raise self.error
        self.written.append((data, addr))

    def take(self):
        written, self.written = self.written, []
        return written


class FakeReactor(Clock):
    """A Clock that also resolves names from a dict, recording every lookup."""

    def __init__(self, names):
        super().__init__()
        self.names = dict(names)
        self.lookups = []
        self.hold = False
        self.held = []

    def resolve(self, name, timeout=(1, 3, 11, 45)):
        self.lookups.append(name)
        if self.hold:
            d = defer.Deferred()
            self.held.append((name, d))
            return d
        if name in self.names:
            return defer.succeed(self.names[name])
        return defer.fail(DNSLookupError(name))


def sample_messages():
    return [
        RequestVote(3, "a", "b", 10, 2, pre_vote=True),
        RequestVoteResponse(3, "a", "b", vote_granted=True),
        AppendEntries(3, "a", "b", 9, 2, (Entry(10, 3, b"x" * 64), Entry(11, 3, b"")), 9, 4),
        AppendEntriesResponse(3, "a", "b", success=False, match_index=0, rejected_index=9, conflict_index=5, conflict_term=1, read_seq=4),
        SnapshotChunk(3, "a", "b", 100, 2, 0, b"snapshot", done=False, read_seq=1),
        InstallSnapshotResponse(3, "a", "b", 100, success=True, read_seq=1),
        SnapshotChunkAck(3, "a", "b", 100, 8, done=False),
    ]


class TransportTestMixin:
    """Builds transports on a shared fake reactor and carries datagrams between them."""

    def setUp(self):
        self.reactor = FakeReactor(DNS)
        self.events = []
        self.inbox = {}
        self.udp = {}

    def make(self, node_id="b", peers=None, secret=SECRET, incarnation=1000, start=True,
             **kwargs):
        if peers is None:
            peers = {p: ("node-" + p, 9000) for p in "abc" if p != node_id}
        self.inbox[node_id] = inbox = []
        transport = UDPTransport(
            node_id=node_id,
            cluster_id=kwargs.pop("cluster_id", "shop"),
            peers=peers,
            secret=secret,
            deliver=kwargs.pop("deliver", inbox.append),
            reactor=self.reactor,
            incarnation=incarnation,
            log=Logger(observer=self.events.append),
            **kwargs,
        )
        if start:
            fake = self.udp[node_id] = FakeDatagramTransport()
            transport.makeConnection(fake)
            self.addCleanup(lambda: transport.numPorts and transport.doStop())
        return transport

    def datagrams(self, node_id):
        """Take what ``node_id`` has written so far: a list of (bytes, address)."""
        return self.udp[node_id].take()

    def carry(self, sender, receiver, source=None):
        """Hand every datagram ``sender`` wrote to ``receiver``; return how many."""
        written = self.datagrams(sender.node_id)
        for data, _ in written:
            receiver.datagramReceived(data, source or ADDR[sender.node_id])
        return len(written)

    def one_datagram(self, sender, message):
        sender.send(message)
        [(data, _)] = self.datagrams(sender.node_id)
        return data

    def assertAccounted(self, transport):
        """Every datagram received has exactly one outcome in stats."""
        stats = transport.stats
        outcomes = stats["delivered"] + stats["fragments_buffered"] + sum(
            stats[name] for name in INBOUND_DROPS
        )
        self.assertEqual(stats["received"], outcomes, stats)

    def nonzero(self, transport, names):
        return {name: transport.stats[name] for name in names if transport.stats[name]}


class InterfaceAndConfigTests(TransportTestMixin, SynchronousTestCase):
    def test_provides_itransport(self):
        """UDPTransport provides ITransport, with every counter present and zero."""
        transport = self.make()
        verifyObject(ITransport, transport)
        self.assertEqual(set(transport.stats), set(STATS_NAMES))
        self.assertEqual(set(transport.stats.values()), {0})

    def test_max_payload(self):
        """max_payload is max_datagram less the envelope (header with room for the
        longest peer id, at least PEER_ID_RESERVE bytes so that members added later
        fit, and the MAC, counted even without a secret): for cluster "shop" and
        one-letter ids, 10 + 2 + 16 (the sender's uuid) + (1 + 16) + 28 + 32 = 105
        bytes."""
        transport = self.make()
        self.assertEqual(transport.max_payload, 1400 - 105)
        no_secret = self.make("c", secret=None, max_datagram=1000)
        self.assertEqual(no_secret.max_payload, 1000 - 105)

    def test_peers_change_with_the_configuration(self):
        """set_peers adds, moves and drops peers as membership changes: nothing is sent
        to a dropped peer (unknown_receiver) until it is heard again (as a stranger,
        test_unknown_sender) or added back; an id longer than the budget leaves room
        for is refused and nothing changes."""
        a, c = self.make("a", peers=ADDR), self.make("c", peers=ADDR)
        self.assertEqual(set(a.peer_addresses()), {"b", "c"})
        a.set_peers({"a": ADDR["a"], "b": ADDR["b"]})
        self.assertEqual(set(a.peer_addresses()), {"b"})
        a.send(RequestVote(1, "a", "c", 0, 0))
        self.assertEqual((self.datagrams("a"), a.stats["dropped_unknown_receiver"]), ([], 1))
        with self.assertRaises(ConfigError):
            a.set_peers({"b": ADDR["b"], "x" * (PEER_ID_RESERVE + 1): ("10.0.0.9", 9000)})
        self.assertEqual(set(a.peer_addresses()), {"b"})
        a.set_peers({"b": ADDR["b"], "c": ADDR["c"], "d": ("10.0.0.4", 9000)})
        c.send(RequestVote(2, "c", "a", 0, 0))
        self.carry(c, a)
        self.assertEqual([m.term for m in self.inbox["a"]], [2])
        a.send(RequestVote(2, "a", "d", 0, 0))
        [(_, address)] = self.datagrams("a")
        self.assertEqual(address, ("10.0.0.4", 9000))

    def test_config_errors(self):
        """Bad ids, an empty secret, a bad peer address or a max_datagram too small for
        the envelope are ConfigError at construction."""
        for kwargs in [
            {"node_id": ""},
            {"node_id": "x" * 65},
            {"cluster_id": 5},
            {"secret": b""},
            {"secret": "text"},
            {"peers": {"a": ("node-a", 0)}},
            {"peers": {"a": "node-a:9000"}},
            {"peers": {"": ("node-a", 9000)}},
            {"max_datagram": 100},
            {"max_datagram": 70000},
            {"incarnation": -1},
        ]:
            base = dict(node_id="b", cluster_id="shop", peers={"a": ("node-a", 9000)},
                        secret=SECRET, deliver=list.append, reactor=self.reactor,
                        incarnation=1)
            base.update(kwargs)
            self.assertRaises(ConfigError, UDPTransport, **base)

    def test_own_entry_in_peers_is_ignored(self):
        """The whole cluster map may be passed as peers; this node's entry is skipped."""
        transport = self.make("b", peers={p: ("node-" + p, 9000) for p in "abc"})
        self.assertEqual(sorted(transport.peer_addresses()), ["a", "c"])


class RoundTripTests(TransportTestMixin, SynchronousTestCase):
    def test_every_message_type(self):
        """Each message type sent by one transport is delivered, equal, by the other."""
        a, b = self.make("a"), self.make("b")
        for message in sample_messages():
            a.send(message)
        count = len(sample_messages())
        self.assertEqual(self.carry(a, b), count)
        self.assertEqual(self.inbox["b"], sample_messages())
        self.assertEqual(a.stats["sent"], count)
        self.assertEqual(a.stats["messages_sent"], count)
        self.assertEqual(b.stats["received"], count)
        self.assertEqual(b.stats["delivered"], count)
        self.assertEqual(self.nonzero(b, INBOUND_DROPS), {})
        self.assertAccounted(b)

    def test_both_directions(self):
        """A request and its response travel each way over the same pair."""
        a, b = self.make("a"), self.make("b")
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.carry(a, b)
        b.send(RequestVoteResponse(1, "b", "a", vote_granted=True))
        self.carry(b, a)
        self.assertEqual(self.inbox["a"], [RequestVoteResponse(1, "b", "a", vote_granted=True)])

    def test_datagram_goes_to_resolved_address(self):
        """Host names are resolved at start; datagrams go to the IP address."""
        a = self.make("a")
        self.assertEqual(self.reactor.lookups, ["node-b", "node-c"])
        a.send(RequestVote(1, "a", "b", 0, 0))
        [(_, address)] = self.datagrams("a")
        self.assertEqual(address, ("10.0.0.2", 9000))

    def test_ip_literal_peers_are_not_resolved(self):
        """Peers given by IP address are used as they are, never looked up."""
        a = self.make("a", peers={"b": ADDR["b"]})
        self.reactor.advance(60)
        self.assertEqual(self.reactor.lookups, [])
        self.assertEqual(a.peer_addresses(), {"b": ADDR["b"]})

    def test_envelope_layout_and_mac(self):
        """The datagram is magic, version 2, flags, sender id, sender uuid, receiver
        id, incarnation, counter, fragment info, the codec's bytes and an HMAC-SHA256
        over all of it; counters increase."""
        a = self.make("a", incarnation=0x0102030405060708, node_uuid=UUID_A)
        message = RequestVote(1, "a", "b", 0, 0)
        first = self.one_datagram(a, message)
        second = self.one_datagram(a, message)
        payload = encode_message(message)
        head = (b"TXR\x02\x01\x04shop\x01a" + UUID_A + b"\x01b"
                + struct.pack(">Q", 0x0102030405060708))
        self.assertEqual(first[:len(head)], head)
        self.assertEqual(
            struct.unpack(">QQHH", first[len(head):len(head) + 20]), (1, 1, 0, 1)
        )
        self.assertEqual(
            struct.unpack(">QQHH", second[len(head):len(head) + 20]), (2, 2, 0, 1)
        )
        self.assertEqual(first[len(head) + 20:-MAC_SIZE], payload)
        self.assertEqual(first[-MAC_SIZE:], envelope_mac(SECRET, first[:-MAC_SIZE]))
        # The hand-rolled HMAC is the standard one with the derived key.
        key = hmac.new(SECRET, b"txraft udp envelope v1", hashlib.sha256).digest()
        self.assertEqual(
            first[-MAC_SIZE:], hmac.new(key, first[:-MAC_SIZE], hashlib.sha256).digest()
        )

    def test_max_payload_fits_one_datagram(self):
        """A message encoding to exactly max_payload bytes goes in one datagram of at
        most max_datagram bytes; one that does not fit the datagram to its peer is
        fragmented (to a peer with a one-byte id, the room left for a longer id counts
        as payload)."""
        a, b = self.make("a"), self.make("b")

        def snapshot(size):
            return SnapshotChunk(1, "a", "b", 5, 1, 0, b"s" * size, done=True)

        size = max(n for n in range(a.max_payload) if
                   len(encode_message(snapshot(n))) <= a.max_payload)
        self.assertEqual(len(encode_message(snapshot(size))), a.max_payload)
        a.send(snapshot(size))
        [(data, _)] = self.datagrams("a")
        self.assertEqual(len(data), 1400 - (PEER_ID_RESERVE - 1))  # "b" is one byte
        room = size + PEER_ID_RESERVE - 1
        a.send(snapshot(room))
        self.assertEqual([len(d) for d, _ in self.datagrams("a")], [1400])
        a.send(snapshot(room + 1))
        written = self.datagrams("a")
        self.assertEqual(len(written), 2)
        for data, _ in written:
            b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.inbox["b"], [snapshot(room + 1)])


class GarbageTests(TransportTestMixin, SynchronousTestCase):
    """Bad datagrams are dropped, counted under their reason, and never raise."""

    def setUp(self):
        super().setUp()
        self.a = self.make("a")
        self.b = self.make("b")
        self.valid = self.one_datagram(self.a, RequestVote(1, "a", "b", 0, 0))

    def tearDown(self):
        self.assertAccounted(self.b)

    def test_garbage(self):
        """Random bytes, an empty datagram and other protocols' bytes are malformed."""
        for data in [b"", b"\x00", b"hello", b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)),
                     b"TXR", b"TXR\x02\x80" + self.valid[5:]]:
            self.b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_malformed": 7})
        self.assertEqual(self.inbox["b"], [])

    def test_truncated(self):
        """Every proper prefix of a valid datagram is dropped, never delivered."""
        for n in range(len(self.valid)):
            self.b.datagramReceived(self.valid[:n], ADDR["a"])
        self.assertEqual(self.inbox["b"], [])
        self.assertEqual(self.b.stats["received"], len(self.valid))

    def test_bit_flips(self):
        """Flipping any single bit of a valid datagram makes it undeliverable."""
        for bit in range(len(self.valid) * 8):
            data = bytearray(self.valid)
            data[bit // 8] ^= 1 << (bit % 8)
            self.b.datagramReceived(bytes(data), ADDR["a"])
        self.assertEqual(self.inbox["b"], [])
        self.assertGreater(self.b.stats["dropped_bad_mac"], 0)
        # The genuine datagram still gets through afterwards: no state was touched.
        self.b.datagramReceived(self.valid, ADDR["a"])
        self.assertEqual(len(self.inbox["b"]), 1)

    def test_forged(self):
        """A datagram authenticated with another secret is dropped_bad_mac."""
        forger = self.make("a", secret=b"guessed", start=False)
        forger.makeConnection(FakeDatagramTransport())
        forger.send(RequestVote(1, "a", "b", 0, 0))
        [(data, _)] = forger.transport.take()
        self.b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_bad_mac": 1})

    def test_missing_mac(self):
        """A datagram from a node without a secret is dropped_bad_mac by one with it."""
        plain = self.make("a", secret=None)
        self.b.datagramReceived(self.one_datagram(plain, RequestVote(1, "a", "b", 0, 0)),
                                ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_bad_mac": 1})

    def test_wrong_cluster(self):
        """A datagram of another cluster (even with the same secret) is dropped."""
        other = self.make("a", cluster_id="staging")
        self.b.datagramReceived(self.one_datagram(other, RequestVote(1, "a", "b", 0, 0)),
                                ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_wrong_cluster": 1})

    def test_bad_version(self):
        """Our magic with another envelope version is dropped_bad_version: version 1
        (before node uuids) and any later one."""
        for version in (1, 3, 255):
            self.b.datagramReceived(b"TXR" + bytes([version]) + self.valid[4:], ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_bad_version": 3})

    def test_oversized(self):
        """A datagram longer than max_datagram is dropped before any parsing."""
        self.b.datagramReceived(self.valid + b"\x00" * 1400, ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_oversized": 1})

    def test_wrong_receiver(self):
        """A datagram addressed to another node (sent to our address) is dropped."""
        self.a.send(RequestVote(1, "a", "c", 0, 0))
        self.carry(self.a, self.b)
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_not_for_me": 1})

    def test_unknown_sender(self):
        """Dissertation 4.1: a sender outside our configuration is heard when it holds
        the cluster secret (a leader our log does not name yet), and answered at the
        address it came from, until a configuration says who the members are; with a
        wrong MAC, or without a secret at all, it is dropped.  At most MAX_STRANGERS
        are kept: the one heard from longest ago goes first."""
        stranger = self.make("z", peers={"b": ADDR["b"]})
        stranger.send(RequestVote(1, "z", "b", 0, 0))
        self.carry(stranger, self.b, source=("10.0.0.26", 9000))
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {})
        self.assertEqual(self.inbox["b"], [RequestVote(1, "z", "b", 0, 0)])
        self.assertEqual(self.b.stats["strangers_heard"], 1)
        self.b.send(RequestVoteResponse(1, "b", "z", vote_granted=False))
        [(_, address)] = self.datagrams("b")
        self.assertEqual(address, ("10.0.0.26", 9000))
        self.b.set_peers({"a": ADDR["a"], "c": ADDR["c"]})  # the configuration decides
        self.assertNotIn("z", self.b.peer_addresses())
        self.assertAccounted(self.b)
        # A wrong secret, or none: dropped before anything is kept.
        forger = self.make("y", peers={"b": ADDR["b"]}, secret=b"not the secret")
        forger.send(RequestVote(1, "y", "b", 0, 0))
        self.carry(forger, self.b, source=("10.0.0.25", 9000))
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_bad_mac": 1})
        open_b = self.make("b", secret=None)
        open_z = self.make("z", peers={"b": ADDR["b"]}, secret=None)
        open_z.send(RequestVote(1, "z", "b", 0, 0))
        self.carry(open_z, open_b, source=("10.0.0.26", 9000))
        self.assertEqual(self.nonzero(open_b, INBOUND_DROPS), {"dropped_unknown_peer": 1})
        # The table is bounded.
        for i in range(MAX_STRANGERS + 1):
            self.reactor.advance(1)
            sender = self.make("s%d" % i, peers={"b": ADDR["b"]})
            sender.send(RequestVote(1, "s%d" % i, "b", 0, 0))
            self.carry(sender, self.b, source=("10.0.1.%d" % i, 9000))
        strangers = {p for p in self.b.peer_addresses() if p.startswith("s")}
        self.assertEqual(strangers, {"s%d" % i for i in range(1, MAX_STRANGERS + 1)})

    def test_message_ids_must_match_envelope(self):
        """A message whose sender or receiver differs from the envelope's is malformed."""
        self.a.send(RequestVote(1, "c", "b", 0, 0))
        self.carry(self.a, self.b)
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_malformed": 1})

    def test_undecodable_payload(self):
        """An authenticated datagram whose payload the codec refuses is dropped."""
        head_len = len(self.valid) - MAC_SIZE - len(encode_message(RequestVote(1, "a", "b", 0, 0)))
        body = self.valid[:head_len] + b"\xc1"
        self.b.datagramReceived(body + envelope_mac(SECRET, body), ADDR["a"])
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_undecodable": 1})

    def test_drops_are_logged_at_a_rate_limit(self):
        """Many drops of one reason log once per interval, with the running count."""
        for _ in range(50):
            self.b.datagramReceived(b"junk", ADDR["a"])
        self.reactor.advance(10)
        self.b.datagramReceived(b"junk", ADDR["a"])
        logged = [e for e in self.events if e.get("reason") == "dropped_malformed"]
        self.assertEqual([e["count"] for e in logged], [1, 51])


class ReplayTests(TransportTestMixin, SynchronousTestCase):
    """Replay protection: each authenticated datagram at most once; no old incarnations."""

    def test_same_datagram_twice(self):
        """A duplicated datagram is delivered once and then dropped_replayed."""
        a, b = self.make("a"), self.make("b")
        data = self.one_datagram(a, RequestVote(1, "a", "b", 0, 0))
        b.datagramReceived(data, ADDR["a"])
        b.datagramReceived(data, ADDR["a"])
        self.assertEqual(len(self.inbox["b"]), 1)
        self.assertEqual(b.stats["dropped_replayed"], 1)
        self.assertAccounted(b)

    def test_reordering_within_the_window(self):
        """Datagrams arriving out of order are all delivered if within the window; one
        older than the window is dropped."""
        a, b = self.make("a"), self.make("b", replay_window=8)
        sent = [self.one_datagram(a, RequestVote(i, "a", "b", 0, 0)) for i in range(12)]
        # Message i has counter i + 1.
        for i in (2, 0, 1, 11, 3, 10):
            b.datagramReceived(sent[i], ADDR["a"])
        # After message 11 the window covers counters 5..12: message 3 is too old.
        self.assertEqual([m.term for m in self.inbox["b"]], [2, 0, 1, 11, 10])
        self.assertEqual(b.stats["dropped_replayed"], 1)
        b.datagramReceived(sent[4], ADDR["a"])
        b.datagramReceived(sent[10], ADDR["a"])
        self.assertEqual(self.inbox["b"][-1].term, 4)
        self.assertEqual(b.stats["dropped_replayed"], 2)

    def test_old_incarnation(self):
        """After hearing a sender's new incarnation, datagrams of its old one (even
        never seen before) are dropped; a fresh incarnation restarts the counters."""
        b = self.make("b")
        old = self.make("a", incarnation=1000)
        pending = self.one_datagram(old, RequestVote(1, "a", "b", 0, 0))
        new = self.make("a", incarnation=2000)
        b.datagramReceived(self.one_datagram(new, RequestVote(2, "a", "b", 0, 0)), ADDR["a"])
        b.datagramReceived(pending, ADDR["a"])
        self.assertEqual([m.term for m in self.inbox["b"]], [2])
        self.assertEqual(b.stats["dropped_replayed"], 1)

    def test_unauthenticated_datagrams_do_not_move_the_window(self):
        """A forged datagram with a huge counter or incarnation changes nothing."""
        a, b = self.make("a"), self.make("b")
        valid = self.one_datagram(a, RequestVote(1, "a", "b", 0, 0))
        forged = bytearray(valid)
        forged[30:38] = b"\xff" * 8  # incarnation
        b.datagramReceived(bytes(forged), ADDR["a"])
        b.datagramReceived(valid, ADDR["a"])
        self.assertEqual(len(self.inbox["b"]), 1)
        self.assertEqual(b.stats["dropped_bad_mac"], 1)


class FragmentationTests(TransportTestMixin, SynchronousTestCase):
    def big(self, size=100_000, term=1):
        return SnapshotChunk(term, "a", "b", 50, 1, 0, bytes(range(256)) * (size // 256), done=True)

    def test_large_message_round_trip(self):
        """A message larger than a datagram is split into datagrams of at most
        max_datagram bytes and reassembled, in any arrival order."""
        a, b = self.make("a"), self.make("b")
        a.send(self.big())
        written = self.datagrams("a")
        self.assertGreater(len(written), 70)
        self.assertLessEqual(max(len(d) for d, _ in written), 1400)
        for data, _ in reversed(written):
            b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.inbox["b"], [self.big()])
        self.assertEqual(a.stats["messages_fragmented"], 1)
        self.assertEqual(b.stats["reassembled"], 1)
        self.assertEqual(b.stats["fragments_buffered"], len(written) - 1)
        self.assertEqual(b._peers["a"].partial_cost, 0)
        self.assertAccounted(b)

    def test_lost_fragment(self):
        """With one fragment lost the message is never delivered; the partial message
        is dropped after the reassembly timeout and its memory released."""
        a, b = self.make("a"), self.make("b", reassembly_timeout_seconds=5)
        a.send(self.big())
        written = self.datagrams("a")
        del written[3]
        for data, _ in written:
            b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.inbox["b"], [])
        self.assertGreater(b._peers["a"].partial_cost, 100_000)
        self.reactor.advance(4.9)
        self.assertEqual(b.stats["dropped_incomplete"], 0)
        self.reactor.advance(0.1)
        self.assertEqual(b.stats["dropped_incomplete"], 1)
        self.assertEqual(len(b._peers["a"].partials), 0)
        self.assertEqual(b._peers["a"].partial_cost, 0)
        self.assertAccounted(b)

    def test_partial_messages_are_bounded(self):
        """However many incomplete messages a peer sends, at most max_partial_messages
        are kept (oldest evicted) and a newer complete message still gets through."""
        a, b = self.make("a"), self.make("b", max_partial_messages=3)
        for term in range(10):
            a.send(self.big(20_000, term))
            written = self.datagrams("a")
            for data, _ in written[1:]:
                b.datagramReceived(data, ADDR["a"])
            self.assertLessEqual(len(b._peers["a"].partials), 3)
        self.assertEqual(b.stats["dropped_incomplete"], 7)
        self.assertLessEqual(b._peers["a"].partial_cost, 2 * b.max_message_size)
        a.send(self.big(20_000, 99))
        self.carry(a, b)
        self.assertEqual([m.term for m in self.inbox["b"]], [99])

    def test_reassembly_byte_budget(self):
        """A peer's buffered fragments never exceed twice max_message_size: the oldest
        partial messages are evicted to make room."""
        a = self.make("a")
        b = self.make("b", max_message_size=50_000, max_partial_messages=10)
        for term in range(5):
            a.send(self.big(40_000, term))
            for data, _ in self.datagrams("a")[1:]:
                b.datagramReceived(data, ADDR["a"])
                self.assertLessEqual(b._peers["a"].partial_cost, 100_000)
        self.assertGreaterEqual(b.stats["dropped_incomplete"], 3)
        self.assertAccounted(b)

    def test_message_larger_than_the_limit(self):
        """The sender refuses a message above max_message_size; a receiver with a lower
        limit drops a larger reassembly as dropped_too_large."""
        a, b = self.make("a", max_message_size=200_000), self.make("b", max_message_size=50_000)
        a.send(self.big(300_000))
        self.assertEqual(a.stats["send_too_large"], 1)
        self.assertEqual(self.datagrams("a"), [])
        a.send(self.big(100_000))
        self.carry(a, b)
        self.assertEqual(self.inbox["b"], [])
        self.assertGreaterEqual(b.stats["dropped_too_large"], 1)
        self.assertEqual(b._peers["a"].partial_cost, 0)
        self.assertAccounted(b)

    def test_timers_stop_with_the_protocol(self):
        """Stopping the protocol cancels its timers and frees partial messages."""
        a, b = self.make("a"), self.make("b")
        a.send(self.big())
        b.datagramReceived(self.datagrams("a")[0][0], ADDR["a"])
        self.assertNotEqual(b._peers["a"].partial_cost, 0)
        a.doStop()
        b.doStop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(b._peers["a"].partial_cost, 0)


class AddressTests(TransportTestMixin, SynchronousTestCase):
    def test_re_resolution_after_silence(self):
        """A named peer silent for the configured time is looked up again, and the new
        address is used (a container that came back elsewhere)."""
        a = self.make("a", peers={"b": ("node-b", 9000)})
        self.assertEqual(self.reactor.lookups, ["node-b"])
        self.reactor.names["node-b"] = "10.0.0.20"
        self.reactor.advance(2)
        self.assertEqual(self.reactor.lookups, ["node-b", "node-b"])
        a.send(RequestVote(1, "a", "b", 0, 0))
        [(_, address)] = self.datagrams("a")
        self.assertEqual(address, ("10.0.0.20", 9000))

    def test_re_resolution_is_rate_limited(self):
        """A silent peer is looked up at most once per resolve interval."""
        self.make("a", peers={"b": ("node-b", 9000)}, resolve_interval_seconds=2)
        for _ in range(40):
            self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.lookups), 1 + 10)

    def test_no_re_resolution_while_heard(self):
        """A peer we keep hearing from is not looked up again."""
        a = self.make("a", peers={"b": ("node-b", 9000)})
        b = self.make("b", peers={"a": ADDR["a"]})
        for i in range(10):
            self.reactor.advance(1)
            b.send(RequestVote(i, "b", "a", 0, 0))
            self.carry(b, a)
        self.assertEqual(self.reactor.lookups, ["node-b"])
        self.assertEqual(len(self.inbox["a"]), 10)

    def test_unresolved_peer(self):
        """Until a name resolves, messages to that peer are counted dropped_unresolved;
        the lookup is retried and sending resumes once it succeeds."""
        del self.reactor.names["node-b"]
        a = self.make("a", peers={"b": ("node-b", 9000)})
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.assertEqual(a.stats["dropped_unresolved"], 1)
        self.assertEqual(a.stats["resolve_errors"], 1)
        self.reactor.names["node-b"] = "10.0.0.2"
        self.reactor.advance(2)
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.assertEqual([addr for _, addr in self.datagrams("a")], [ADDR["b"]])

    def test_address_learning(self):
        """An authenticated datagram from a peer at a new address moves the peer there;
        replays from elsewhere and reordered old datagrams do not."""
        a, b = self.make("a"), self.make("b")
        first = self.one_datagram(a, RequestVote(1, "a", "b", 0, 0))
        second = self.one_datagram(a, RequestVote(2, "a", "b", 0, 0))
        b.datagramReceived(second, ("10.0.0.9", 9001))
        self.assertEqual(b.peer_addresses()["a"], ("10.0.0.9", 9001))
        b.datagramReceived(second, ("10.6.6.6", 9000))  # replayed
        b.datagramReceived(first, ("10.0.0.1", 9000))  # older, arriving late
        self.assertEqual(b.peer_addresses()["a"], ("10.0.0.9", 9001))
        b.send(RequestVoteResponse(2, "b", "a", vote_granted=True))
        self.assertEqual([addr for _, addr in self.datagrams("b")], [("10.0.0.9", 9001)])
        forged = bytearray(self.one_datagram(a, RequestVote(3, "a", "b", 0, 0)))
        forged[-1] ^= 1
        b.datagramReceived(bytes(forged), ("10.6.6.6", 9000))
        self.assertEqual(b.peer_addresses()["a"], ("10.0.0.9", 9001))

    def test_learned_address_beats_a_slower_lookup(self):
        """A lookup started before the peer spoke from a new address does not undo it."""
        a, b = self.make("a"), self.make("b", peers={"a": ("node-a", 9000)})
        self.reactor.hold = True
        self.reactor.advance(2)  # b looks node-a up again: a has been silent
        b.datagramReceived(self.one_datagram(a, RequestVote(1, "a", "b", 0, 0)),
                           ("10.0.0.9", 9000))
        for name, d in self.reactor.held:
            d.callback("10.0.0.1")
        self.assertEqual(b.peer_addresses()["a"], ("10.0.0.9", 9000))


class SendErrorTests(TransportTestMixin, SynchronousTestCase):
    def test_write_errors_are_counted(self):
        """MessageLengthError and socket errors from write() are counted, not raised."""
        a = self.make("a")
        for error in (MessageLengthError("too long"), OSError(errno.ECONNREFUSED, "refused"),
                      OSError(errno.ENOBUFS, "no buffers")):
            self.udp["a"].error = error
            a.send(RequestVote(1, "a", "b", 0, 0))
        self.assertEqual(a.stats["send_errors"], 3)
        self.assertEqual(a.stats["sent"], 0)

    def test_unknown_receiver(self):
        """A message to a node that is not a peer is counted, not raised."""
        a = self.make("a")
        a.send(RequestVote(1, "a", "zz", 0, 0))
        self.assertEqual(self.nonzero(a, OUTBOUND_DROPS), {"dropped_unknown_receiver": 1})

    def test_not_running(self):
        """Before the protocol starts (and after it stops) sends are counted dropped."""
        a = self.make("a", peers={"b": ADDR["b"]}, start=False)
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.assertEqual(a.stats["dropped_not_running"], 1)

    def test_deliver_errors_are_contained(self):
        """An exception from deliver() is logged and counted; datagramReceived returns."""
        a = self.make("a")

        def deliver(message):
            raise RuntimeError("core bug")

        b = self.make("b", deliver=deliver)
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.carry(a, b)
        self.assertEqual(b.stats["deliver_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        self.assertTrue(any(e.get("log_failure") for e in self.events))


class NoSecretTests(TransportTestMixin, SynchronousTestCase):
    def test_warning_once(self):
        """Without a secret a warning is logged once per transport (not again on a
        restart of the protocol), and messages still flow."""
        a, b = self.make("a", secret=None), self.make("b", secret=None)
        b.doStop()
        b.doStart()
        warnings = [e for e in self.events if e.get("log_format") == NO_SECRET_WARNING]
        self.assertEqual(len(warnings), 2)  # one per transport
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.carry(a, b)
        self.assertEqual(len(self.inbox["b"]), 1)

    def test_no_warning_with_a_secret(self):
        """With a secret there is no warning."""
        self.make("a")
        self.assertFalse(any(e.get("log_format") == NO_SECRET_WARNING for e in self.events))

    def test_tag_is_ignored_without_a_secret(self):
        """A node without a secret accepts datagrams carrying a MAC, ignoring it."""
        a, b = self.make("a"), self.make("b", secret=None)
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.carry(a, b)
        self.assertEqual(len(self.inbox["b"]), 1)


class IdentityTests(TransportTestMixin, SynchronousTestCase):
    """Node identity (envelope version 2): the sender's uuid, checked by the guard."""

    def setUp(self):
        super().setUp()
        self.store = MemoryPeerStore()
        self.guard = PeerIdentities(self.store, "a")
        self.notices = []
        self.a = self.make("a", node_uuid=UUID_A, identities=self.guard)
        self.b = self.make("b", node_uuid=UUID_B)

    def wiped_b(self, **kwargs):
        """b restarted on an emptied data directory: a new uuid (and incarnation)."""
        self.refusals = []
        wiped = UDPTransport(
            node_id="b", cluster_id="shop", peers={p: ("node-" + p, 9000) for p in "ac"},
            secret=SECRET, deliver=lambda m: self.refusals.append(("message", m)),
            reactor=self.reactor, incarnation=5000, log=Logger(observer=self.events.append),
            node_uuid=UUID_WIPED,
            on_identity_refused=lambda *args: self.refusals.append(args), **kwargs)
        wiped.makeConnection(FakeDatagramTransport())
        return wiped

    def send(self, sender, message):
        sender.send(message)
        for data, _ in sender.transport.take():
            self.a.datagramReceived(data, ADDR["b"])

    def test_first_uuid_recorded_before_delivery(self):
        """The first datagram from b records b's uuid in the store before the message
        reaches the node: a vote is never counted from an identity not on disk."""
        seen = []
        self.a._deliver = lambda m: seen.append(dict(self.store.records))
        self.send(self.b, RequestVoteResponse(1, "b", "a", vote_granted=True))
        self.assertEqual(seen, [{"b": UUID_B.hex()}])
        self.assertEqual(self.a.stats["delivered"], 1)

    def test_wrong_identity_is_dropped_counted_and_answered(self):
        """Once b is known, a datagram from b's id with another uuid is dropped, counted
        (dropped_wrong_identity, and per peer by the guard) and answered with one
        authenticated identity notice to where it came from; more refusals within a
        second are not answered again."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.datagrams("a")
        wiped = self.wiped_b()
        for term in (2, 3):
            self.send(wiped, RequestVoteResponse(term, "b", "a", vote_granted=True))
        self.assertEqual(len(self.inbox["a"]), 1)  # only the genuine b's
        self.assertEqual(self.nonzero(self.a, INBOUND_DROPS), {"dropped_wrong_identity": 2})
        self.assertEqual(self.guard.view()[0].dropped_wrong_identity, 2)
        self.assertAccounted(self.a)
        [(notice, address)] = self.datagrams("a")
        self.assertEqual(address, ADDR["b"])
        self.assertEqual(notice[3:5], bytes([2, FLAG_MAC | FLAG_NOTICE]))
        self.assertEqual(notice[-MAC_SIZE - 32:-MAC_SIZE], UUID_B + UUID_WIPED)
        self.assertEqual(notice[-MAC_SIZE:], envelope_mac(SECRET, notice[:-MAC_SIZE]))
        self.assertEqual(self.a.stats["identity_notices_sent"], 1)
        self.reactor.advance(1.0)
        self.send(wiped, RequestVoteResponse(4, "b", "a", vote_granted=True))
        self.assertEqual(len(self.datagrams("a")), 1)

    def test_the_notice_reaches_the_refused_node(self):
        """The wiped node hands the notice to on_identity_refused (peer, the uuid the
        peer expects, its own), counts it as delivered and received; its peers' uuids
        are trusted on first use by its own guard too."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.datagrams("a")
        wiped = self.wiped_b(identities=PeerIdentities(MemoryPeerStore(), "b"))
        self.send(wiped, RequestVote(2, "b", "a", 0, 0))
        [(notice, _)] = self.datagrams("a")
        wiped.datagramReceived(notice, ADDR["a"])
        self.assertEqual(self.refusals, [("a", UUID_B, UUID_WIPED)])
        self.assertEqual((wiped.stats["delivered"], wiped.stats["identity_notices_received"]),
                         (1, 1))
        self.assertAccounted(wiped)
        self.assertEqual(wiped.identities.expected("a"), UUID_A)

    def test_notices_are_authenticated_and_about_me(self):
        """A notice is dropped like any datagram without the right MAC, when it is a
        replay, and when it names another uuid than the receiver's."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.datagrams("a")
        wiped = self.wiped_b()
        self.send(wiped, RequestVote(2, "b", "a", 0, 0))
        [(notice, _)] = self.datagrams("a")
        forged = bytearray(notice)
        forged[-1] ^= 1
        wiped.datagramReceived(bytes(forged), ADDR["a"])
        self.b.datagramReceived(notice, ADDR["a"])  # the genuine b: not its uuid
        wiped.datagramReceived(notice, ADDR["a"])
        wiped.datagramReceived(notice, ADDR["a"])
        self.assertEqual(self.refusals, [("a", UUID_B, UUID_WIPED)])
        self.assertEqual(self.nonzero(wiped, INBOUND_DROPS),
                         {"dropped_bad_mac": 1, "dropped_replayed": 1})
        self.assertEqual(self.nonzero(self.b, INBOUND_DROPS), {"dropped_malformed": 1})

    def test_a_leaders_replication_is_tolerated(self):
        """AppendEntries and snapshot chunks are flagged as a leader's replication and
        delivered even from another uuid than expected (counted as tolerated, not
        answered): a follower replaying old configurations may expect a uuid its
        leader's data directory no longer has, and must still reach the newer ones."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.datagrams("a")
        wiped = self.wiped_b()
        heartbeat = AppendEntries(2, "b", "a", 0, 0, (), 0, 1)
        chunk = SnapshotChunk(2, "b", "a", 5, 1, 0, b"s", done=True)
        wiped.send(heartbeat)
        [(data, _)] = wiped.transport.take()
        self.assertEqual(data[4], FLAG_MAC | FLAG_REPLICATION)
        self.a.datagramReceived(data, ADDR["b"])
        self.send(wiped, chunk)
        self.send(wiped, RequestVote(3, "b", "a", 0, 0))
        self.assertEqual(self.inbox["a"][1:], [heartbeat, chunk])
        self.assertEqual((self.guard.view()[0].tolerated,
                          self.guard.view()[0].dropped_wrong_identity), (2, 1))
        self.assertEqual(self.a.stats["identity_notices_sent"], 1)  # for the RequestVote

    def test_the_replication_flag_only_on_replication(self):
        """A datagram flagged as replication that holds another message is malformed
        (the flag cannot smuggle a vote past the guard)."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        wiped = self.wiped_b()
        wiped.send(RequestVoteResponse(2, "b", "a", vote_granted=True))
        [(data, _)] = wiped.transport.take()
        body = bytearray(data[:-MAC_SIZE])
        body[4] |= FLAG_REPLICATION
        self.a.datagramReceived(bytes(body) + envelope_mac(SECRET, bytes(body)), ADDR["b"])
        self.assertEqual(len(self.inbox["a"]), 1)
        self.assertEqual(self.a.stats["dropped_malformed"], 1)
        body[4] = FLAG_MAC | FLAG_NOTICE | FLAG_REPLICATION
        self.a.datagramReceived(bytes(body) + envelope_mac(SECRET, bytes(body)), ADDR["b"])
        self.assertEqual(self.a.stats["dropped_malformed"], 2)

    def test_a_refused_notice_is_not_answered(self):
        """Two nodes that refuse each other do not exchange notices forever."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.datagrams("a")
        guard_b = PeerIdentities(MemoryPeerStore({"a": UUID_WIPED.hex()}), "b")
        wiped = self.wiped_b(identities=guard_b)
        self.send(wiped, RequestVote(2, "b", "a", 0, 0))
        [(notice, _)] = self.datagrams("a")
        wiped.datagramReceived(notice, ADDR["a"])
        self.assertEqual(wiped.stats["dropped_wrong_identity"], 1)
        self.assertEqual(wiped.transport.take(), [])
        self.assertEqual(self.refusals, [])

    def test_refused_datagrams_change_nothing(self):
        """Refused datagrams, even of a much newer incarnation, move neither the replay
        window nor the peer's address: the genuine b is still heard afterwards."""
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        wiped = self.wiped_b()  # incarnation 5000, b's is 1000
        wiped.send(RequestVote(2, "b", "a", 0, 0))
        for data, _ in wiped.transport.take():
            self.a.datagramReceived(data, ("10.9.9.9", 9000))
        self.send(self.b, RequestVote(3, "b", "a", 0, 0))
        self.assertEqual([m.term for m in self.inbox["a"]], [1, 3])
        self.assertEqual(self.a.stats["address_changes"], 0)

    def test_a_failing_store_drops_the_datagram(self):
        """If the first uuid cannot be made durable the datagram is not delivered (an
        internal error, logged), and the next one tries again."""
        class Failing(MemoryPeerStore):
            fail = True

            def save(self, records):
                if self.fail:
                    raise OSError("disk full")
                super().save(records)

        store = Failing()
        self.a.identities = PeerIdentities(store, "a")
        self.send(self.b, RequestVote(1, "b", "a", 0, 0))
        self.assertEqual((self.inbox["a"], self.a.stats["internal_errors"]), ([], 1))
        self.flushLoggedErrors(OSError)
        store.fail = False
        self.send(self.b, RequestVote(2, "b", "a", 0, 0))
        self.assertEqual([m.term for m in self.inbox["a"]], [2])

    def test_without_a_guard_nothing_is_checked(self):
        """A transport given no guard delivers whatever uuid its peers carry."""
        b = self.make("b", node_uuid=UUID_B)
        c = self.make("c", node_uuid=UUID_WIPED)
        c.send(RequestVote(1, "c", "b", 0, 0))
        self.carry(c, b)
        self.assertEqual(len(self.inbox["b"]), 1)

    def test_node_uuid_must_be_16_bytes(self):
        """A malformed own uuid is a configuration error."""
        for bad in (b"", b"x" * 15, "a" * 16):
            self.assertRaises(ConfigError, self.make, "c", node_uuid=bad)


class FaultTests(TransportTestMixin, SynchronousTestCase):
    def test_drop_to_and_from(self):
        """drop_to drops outgoing messages to a peer, drop_from incoming ones; clear()
        restores delivery."""
        a, b = self.make("a"), self.make("b")
        a.faults.drop_to.add("b")
        a.send(RequestVote(1, "a", "b", 0, 0))
        self.assertEqual(self.datagrams("a"), [])
        self.assertEqual(a.stats["dropped_fault_to"], 1)
        a.faults.clear()
        b.faults.drop_from.add("a")
        a.send(RequestVote(2, "a", "b", 0, 0))
        self.carry(a, b)
        self.assertEqual(b.stats["dropped_fault_from"], 1)
        b.faults.clear()
        a.send(RequestVote(3, "a", "b", 0, 0))
        self.carry(a, b)
        self.assertEqual([m.term for m in self.inbox["b"]], [3])

    def test_deterministic_loss(self):
        """Without a random source, loss_rate 0.25 drops exactly every fourth datagram."""
        a = self.make("a")
        a.faults.loss_rate = 0.25
        for i in range(8):
            a.send(RequestVote(i, "a", "b", 0, 0))
        self.assertEqual(len(self.datagrams("a")), 6)
        self.assertEqual(a.stats["dropped_fault_loss"], 2)

    def test_seeded_loss(self):
        """With a seeded Random the same datagrams are lost on every run."""
        outcomes = []
        for _ in range(2):
            faults = Faults(loss_rate=0.5, random=random.Random(7))
            a = self.make("a", faults=faults)
            for i in range(40):
                a.send(RequestVote(i, "a", "b", 0, 0))
            outcomes.append([len(self.datagrams("a")), a.stats["dropped_fault_loss"]])
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(sum(outcomes[0]), 40)
        self.assertTrue(0 < outcomes[0][1] < 40)


class EnvelopePropertyTests(TransportTestMixin, SynchronousTestCase):
    """Whatever arrives, datagramReceived returns and counts it exactly once."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1500))
    def test_arbitrary_bytes(self, data):
        """Arbitrary bytes never raise, are never delivered, and are accounted for."""
        self.setUp()
        b = self.make("b")
        b.datagramReceived(data, ADDR["a"])
        self.assertEqual(self.inbox["b"], [])
        self.assertEqual(b.stats["internal_errors"], 0)
        self.assertAccounted(b)

    @settings(max_examples=300, deadline=None)
    @given(st.booleans(), st.integers(0, 3), st.data())
    def test_mutated_datagrams(self, secret, which, data):
        """Valid datagrams with bytes flipped, cut, spliced or appended never raise;
        with a secret, nothing altered is delivered.  (Without one, alterations reach
        the codec and must be refused or decoded there.)"""
        self.setUp()
        key = SECRET if secret else None
        a, b = self.make("a", secret=key), self.make("b", secret=key)
        message = sample_messages()[which] if which < 3 else SnapshotChunk(
            1, "a", "b", 1, 1, 0, b"q" * 3000, done=True)
        a.send(message)
        datagrams = [d for d, _ in self.datagrams("a")]
        i = data.draw(st.integers(0, len(datagrams) - 1))
        raw = bytearray(datagrams[i])
        how = data.draw(st.sampled_from(["flip", "cut", "splice", "append"]))
        if how == "flip":
            for _ in range(data.draw(st.integers(1, 4))):
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            start = data.draw(st.integers(0, len(raw) - 1))
            del raw[start:data.draw(st.integers(start + 1, len(raw)))]
        elif how == "splice":
            at = data.draw(st.integers(0, len(raw)))
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=20))
        else:
            raw += data.draw(st.binary(min_size=1, max_size=20))
        assume(bytes(raw) != datagrams[i])  # two flips of one byte can cancel out
        datagrams[i] = bytes(raw)
        for d in datagrams:
            b.datagramReceived(d, ADDR["a"])
        self.assertEqual(b.stats["internal_errors"], 0)
        if secret:
            self.assertEqual(self.inbox["b"], [])
        for delivered in self.inbox["b"]:
            self.assertEqual((delivered.sender, delivered.receiver), ("a", "b"))
        self.assertAccounted(b)


class RealUDPTests(TestCase):
    """Over real sockets on 127.0.0.1, with the global reactor."""

    timeout = 10

    def _bound_socket(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def test_request_and_response(self):
        """A message crosses real UDP, and the reply finds its way back: to an IP
        literal one way, and by resolving "localhost" the other."""
        from twisted.internet import reactor

        sock_a, sock_b = self._bound_socket(), self._bound_socket()
        port_a, port_b = sock_a.getsockname()[1], sock_b.getsockname()[1]
        replied = defer.Deferred()
        transports = {}

        def deliver_b(message):
            transports["b"].send(RequestVoteResponse(message.term, "b", "a", vote_granted=True))

        def make(node_id, peers, deliver):
            return UDPTransport(node_id=node_id, cluster_id="shop", peers=peers,
                                secret=SECRET, deliver=deliver, reactor=reactor,
                                incarnation=1)

        transports["a"] = make("a", {"b": ("127.0.0.1", port_b)}, replied.callback)
        transports["b"] = make("b", {"a": ("localhost", port_a)}, deliver_b)
        for node_id, sock in (("a", sock_a), ("b", sock_b)):
            port = reactor.adoptDatagramPort(
                sock.fileno(), socket.AF_INET, transports[node_id], maxPacketSize=1401
            )
            sock.close()  # the port holds its own duplicate of the descriptor
            self.addCleanup(port.stopListening)
        transports["a"].send(RequestVote(7, "a", "b", 0, 0))

        def check(message):
            self.assertEqual(message, RequestVoteResponse(7, "b", "a", vote_granted=True))
            self.assertEqual(transports["b"].stats["delivered"], 1)

        return replied.addCallback(check)

"""Property tests of the wire codec and the UDP envelope, beyond ``test_codec`` and
``test_transport``.

``test_codec`` already fuzzes ``decode_message`` with short arbitrary bytes, plausible
headers, wrong msgpack shapes and mutated encodings, and round-trips every message type;
``test_transport`` walks every bit flip and truncation of one datagram.  What is added
here:

* the codec on longer inputs and on ``bytearray``/``memoryview`` (what a socket may hand
  over), which must behave exactly like ``bytes``;
* the envelope as a property: any message of any type, however large, crosses a pair
  of transports unchanged (fragmented when needed, fragments in any order);
* arbitrary datagrams into ``UDPTransport.datagramReceived``: with and without a secret,
  arbitrary bytes, arbitrary envelope fields around arbitrary payloads, and datagrams
  that are authenticated with the right secret but carry forged fields (fragment index,
  count, counters, incarnation, payload).  The transport never raises, never counts an
  internal error, accounts every datagram in exactly one outcome, and delivers only
  well-formed messages from the envelope's sender to this node.
"""

from __future__ import annotations

import random
import struct

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from txraft.runtime.codec import CodecError, decode_message, encode_message
from txraft.core.messages import WIRE_TYPES, RequestVote, SnapshotChunk
from txraft.runtime.transport import (
    FLAG_MAC,
    INBOUND_DROPS,
    MAC_SIZE,
    MAGIC,
    NO_UUID,
    VERSION,
    UDPTransport,
    envelope_mac,
)

from tests.unit.test_codec import messages

SECRET = b"fuzzing secret"
CLUSTER = "fuzz"
ADDRESSES = {"a": ("127.0.0.1", 9001), "b": ("127.0.0.1", 9002), "c": ("127.0.0.1", 9003)}


class Recorder:
    def __init__(self):
        self.written = []

    def write(self, data, addr):
        self.written.append((data, addr))


def make(node_id, secret=SECRET, incarnation=1000, **kwargs):
    """A started transport with a fake datagram transport; returns (transport, inbox)."""
    inbox = []
    transport = UDPTransport(
        node_id=node_id, cluster_id=CLUSTER,
        peers={p: a for p, a in ADDRESSES.items() if p != node_id},
        secret=secret, deliver=inbox.append, reactor=Clock(), incarnation=incarnation,
        log=Logger(observer=lambda event: None), **kwargs)
    transport.makeConnection(Recorder())
    return transport, inbox


def addressed(message, sender="a", receiver="b"):
    """``message`` with its sender and receiver replaced."""
    return attrs.evolve(message, sender=sender, receiver=receiver)


def accounted(transport):
    stats = transport.stats
    return stats["received"] == stats["delivered"] + stats["fragments_buffered"] + sum(
        stats[name] for name in INBOUND_DROPS)


def header(sender=b"a", receiver=b"b", cluster=CLUSTER.encode(), flags=FLAG_MAC,
           version=VERSION, uuid=NO_UUID):
    return (MAGIC + bytes([version, flags, len(cluster)]) + cluster + bytes([len(sender)])
            + sender + uuid + bytes([len(receiver)]) + receiver)


FIELDS = struct.Struct(">QQQHH")  # incarnation, counter, message id, index, count
u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 50))
u16 = st.one_of(st.integers(0, 2**16 - 1), st.integers(0, 4))


class CodecInputTypeTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_buffer_types_decode_like_bytes(self, message):
        """bytearray and memoryview of an encoding decode to the same message."""
        data = encode_message(message)
        self.assertEqual(decode_message(bytearray(data)), message)
        self.assertEqual(decode_message(memoryview(data)), message)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(min_size=200, max_size=4000))
    def test_long_arbitrary_bytes(self, data):
        """Long arbitrary inputs (whole datagrams' worth) decode or raise CodecError."""
        try:
            message = decode_message(data)
        except CodecError:
            return
        self.assertIn(type(message), WIRE_TYPES)


class EnvelopeRoundTripTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(messages, st.randoms(use_true_random=False))
    def test_any_message_crosses_unchanged(self, message, rnd):
        """Any valid message from a to b arrives equal, whole or fragmented, with its
        fragments delivered in any order."""
        message = addressed(message)
        a, _ = make("a")
        b, inbox = make("b")
        a.send(message)
        datagrams = [data for data, _ in a.transport.written]
        self.assertTrue(all(len(d) <= a.max_datagram for d in datagrams))
        rnd.shuffle(datagrams)
        for data in datagrams:
            b.datagramReceived(data, ADDRESSES["a"])
        self.assertEqual(inbox, [message])
        self.assertTrue(accounted(b))

    def test_fragments_of_a_snapshot_chunk(self):
        """A 200 kB SnapshotChunk needs ~150 datagrams and survives reordering."""
        message = SnapshotChunk(3, "a", "b", 10, 2, 0, bytes(range(256)) * 800, done=True, read_seq=1)
        a, _ = make("a")
        b, inbox = make("b")
        a.send(message)
        datagrams = [data for data, _ in a.transport.written]
        self.assertGreater(len(datagrams), 100)
        random.Random(5).shuffle(datagrams)
        for data in datagrams:
            b.datagramReceived(data, ADDRESSES["a"])
        self.assertEqual(inbox, [message])


class GarbageDatagramTests(SynchronousTestCase):
    """Whatever arrives, the receiver stays consistent."""

    def feed(self, receiver, inbox, datagrams):
        for data in datagrams:
            receiver.datagramReceived(data, ADDRESSES["a"])
        self.assertEqual(receiver.stats["internal_errors"], 0)
        self.assertEqual(receiver.stats["deliver_errors"], 0)
        self.assertTrue(accounted(receiver), receiver.stats)
        for message in inbox:
            self.assertIn(type(message), WIRE_TYPES)
            self.assertEqual((message.sender, message.receiver), ("a", "b"))
        self.assertLessEqual(sum(len(p.partials) for p in receiver._peers.values()),
                             2 * receiver.max_partial_messages)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=1500), max_size=10), st.booleans())
    def test_arbitrary_bytes(self, datagrams, with_secret):
        """Arbitrary datagrams, to a node with or without a secret, deliver nothing."""
        b, inbox = make("b", secret=SECRET if with_secret else None)
        self.feed(b, inbox, datagrams)
        self.assertEqual(inbox, [])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([b"a", b"c", b"b", b"", b"zz"]),
                              st.sampled_from([b"b", b"a", b""]),
                              st.sampled_from([0, FLAG_MAC, 0x03, 0x05, 0x07, 0x80]),
                              st.tuples(u64, u64, u64, u16, u16),
                              st.binary(max_size=300)), max_size=12))
    def test_plausible_envelopes_without_a_secret(self, specs):
        """A node without a secret parses every field of every datagram: arbitrary
        incarnations, counters, fragment indexes and counts, and payloads exercise the
        replay window and reassembly, which must stay consistent and bounded."""
        b, inbox = make("b", secret=None)
        datagrams = [header(sender, receiver, flags=flags) + FIELDS.pack(*fields) + payload
                     for sender, receiver, flags, fields, payload in specs]
        self.feed(b, inbox, datagrams)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.tuples(st.integers(999, 1001), u64, u64, u16, u16),
                              st.one_of(st.binary(max_size=200),
                                        messages.map(lambda m: encode_message(addressed(m))))),
                    max_size=12))
    def test_authenticated_forgeries(self, specs):
        """Datagrams that carry a valid MAC (a member with the secret gone rogue) but
        arbitrary fields and payloads: still no internal error, every one accounted, and
        nothing delivered that is not a valid message from a to b."""
        b, inbox = make("b")
        datagrams = []
        for fields, payload in specs:
            body = header() + FIELDS.pack(*fields) + payload
            datagrams.append(body + envelope_mac(SECRET, body))
        self.feed(b, inbox, datagrams)

    @settings(max_examples=200, deadline=None)
    @given(messages, st.data())
    def test_mutated_datagrams(self, message, data):
        """A valid datagram cut short, extended, with bytes overwritten or MAC'd with
        another secret is never delivered; the genuine one still is afterwards."""
        message = addressed(message)
        a, _ = make("a", max_message_size=1 << 20)
        b, inbox = make("b", max_message_size=1 << 20)
        a.send(message)
        datagrams = [d for d, _ in a.transport.written]
        victim = bytearray(data.draw(st.sampled_from(datagrams)))
        how = data.draw(st.sampled_from(["truncate", "append", "overwrite", "resign"]))
        if how == "truncate":
            del victim[data.draw(st.integers(0, len(victim) - 1)):]
        elif how == "append":
            victim += data.draw(st.binary(min_size=1, max_size=16))
        elif how == "overwrite":
            at = data.draw(st.integers(0, len(victim) - 1))
            chunk = data.draw(st.binary(min_size=1, max_size=8))
            before = bytes(victim)
            victim[at:at + len(chunk)] = chunk
            victim = victim[:len(before)]
            if bytes(victim) == before:
                return
        else:
            body = bytes(victim[:-MAC_SIZE])
            victim = bytearray(body + envelope_mac(b"not the secret", body))
        self.feed(b, inbox, [bytes(victim)])
        self.assertEqual(inbox, [])
        for d in datagrams:
            b.datagramReceived(d, ADDRESSES["a"])
        self.assertEqual(inbox, [message])

    def test_replays_of_every_datagram(self):
        """Each datagram of a conversation replayed later is dropped_replayed."""
        a, _ = make("a")
        b, inbox = make("b")
        for term in range(50):
            a.send(RequestVote(term, "a", "b", 0, 0))
        datagrams = [d for d, _ in a.transport.written]
        self.feed(b, inbox, datagrams + datagrams[::-1])
        self.assertEqual([m.term for m in inbox], list(range(50)))
        self.assertEqual(b.stats["dropped_replayed"], 50)

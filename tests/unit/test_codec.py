"""Tests for ``txraft.runtime.codec``: round trips, exact sizes, and refusal of every bad input."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txraft.runtime.codec import (
    MAX_ID_CHARS,
    MAX_UINT,
    TAG_APPEND_ENTRIES,
    TAG_REQUEST_VOTE,
    TAG_TIMEOUT_NOW,
    CodecError,
    append_entries_overhead,
    decode_message,
    encode_message,
    encoded_entry_size,
)
from txraft.core.config import LEARNER, VOTER, Configuration, Member
from txraft.core.messages import (
    ENTRY_CONFIG,
    ENTRY_KINDS,
    ENTRY_NOOP,
    WIRE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotStatus,
    TimeoutNow,
)

uints = st.one_of(
    st.integers(0, 300), st.integers(0, MAX_UINT), st.sampled_from([0, 127, 128, 255, 256,
    65535, 65536, 2**32 - 1, 2**32, MAX_UINT])
)
ids = st.text(min_size=1, max_size=MAX_ID_CHARS)
datas = st.one_of(st.binary(max_size=64), st.binary(min_size=250, max_size=70000))
configurations = st.builds(
    lambda ids, roles: Configuration(
        Member(i, VOTER if n == 0 or voter else LEARNER, "10.0.0.%d:5001" % n)
        for n, (i, voter) in enumerate(zip(sorted(ids), roles))
    ),
    st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=7),
    st.lists(st.booleans(), min_size=7, max_size=7),
)


@st.composite
def entry_payloads(draw):
    """``(data, kind)``: a configuration entry's data is a configuration."""
    kind = draw(st.sampled_from(ENTRY_KINDS))
    if kind == ENTRY_CONFIG:
        return draw(configurations).to_bytes(), kind
    return draw(st.binary(max_size=300)), kind


entries = st.builds(
    lambda index, term, payload: Entry(index, term, *payload),
    uints, uints, entry_payloads(),
)


@st.composite
def append_entries(draw):
    """A well-formed AppendEntries: entries run on from prev_log_index, terms never
    decrease from prev_log_term and stay within the message's term."""
    term = draw(uints)
    prev_term = draw(st.integers(0, term))
    prev_index = draw(st.integers(0, MAX_UINT - 20))
    batch, last_term = [], prev_term
    for i in range(draw(st.integers(0, 20))):
        last_term = draw(st.integers(last_term, term))
        batch.append(Entry(prev_index + 1 + i, last_term, *draw(entry_payloads())))
    return AppendEntries(term, draw(ids), draw(ids), prev_index, prev_term, tuple(batch),
                         draw(uints), draw(uints))


append_entries = append_entries()
messages = st.one_of(
    st.builds(RequestVote, term=uints, sender=ids, receiver=ids, last_log_index=uints,
              last_log_term=uints, pre_vote=st.booleans()),
    st.builds(RequestVote, term=uints, sender=ids, receiver=ids, last_log_index=uints,
              last_log_term=uints, transfer=st.booleans()),
    st.builds(TimeoutNow, term=uints, sender=ids, receiver=ids),
    st.builds(RequestVoteResponse, term=uints, sender=ids, receiver=ids,
              vote_granted=st.booleans(), pre_vote=st.booleans()),
    append_entries,
    st.builds(AppendEntriesResponse, term=uints, sender=ids, receiver=ids,
              success=st.booleans(), match_index=uints, rejected_index=uints,
              conflict_index=uints, conflict_term=uints, read_seq=uints),
    st.builds(InstallSnapshotResponse, term=uints, sender=ids, receiver=ids,
              last_included_index=uints, success=st.booleans(), read_seq=uints),
    st.builds(SnapshotChunk, term=uints, sender=ids, receiver=ids,
              last_included_index=uints, last_included_term=uints, offset=uints,
              data=datas, done=st.booleans(), read_seq=uints),
    st.builds(SnapshotChunkAck, term=uints, sender=ids, receiver=ids,
              last_included_index=uints, next_offset=uints, done=st.booleans()),
)

# Any msgpack-representable value, including the kinds our format never uses.
msgpack_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
        st.text(max_size=80), st.binary(max_size=80),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=12),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=30,
)

# Each message type's tag and arity (tag included), to build plausible-looking garbage.
SHAPES = [(1, 8), (2, 6), (3, 9), (4, 10), (7, 7), (8, 10), (9, 7), (10, 4)]


def _assert_decodes_or_refuses(data):
    try:
        message = decode_message(data)
    except CodecError:
        return None
    assert type(message) in WIRE_TYPES, message
    # Whatever decodes is canonical enough to survive another round trip.
    assert decode_message(encode_message(message)) == message
    return message


class RoundTripTests(SynchronousTestCase):
    """Every valid message survives encode then decode unchanged."""

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_round_trip(self, message):
        """decode(encode(m)) == m for arbitrary valid messages of every type."""
        data = encode_message(message)
        self.assertIsInstance(data, bytes)
        self.assertEqual(decode_message(data), message)

    def test_every_type_has_a_distinct_tag(self):
        """Each message class encodes with its own tag, first in the array."""
        samples = [
            RequestVote(1, "a", "b", 2, 3, pre_vote=True),
            RequestVoteResponse(1, "a", "b", vote_granted=True),
            AppendEntries(3, "a", "b", 2, 1, (Entry(3, 3, b"x"),), 2, 7),
            AppendEntriesResponse(1, "a", "b", success=False, match_index=0, rejected_index=2, conflict_index=1, conflict_term=1, read_seq=7),
            InstallSnapshotResponse(1, "a", "b", 10, success=True, read_seq=3),
            TimeoutNow(4, "a", "b"),
            SnapshotChunk(1, "a", "b", 10, 1, 0, b"snap", done=False, read_seq=3),
            SnapshotChunkAck(1, "b", "a", 10, 4, done=False),
        ]
        self.assertEqual([type(m) for m in samples], list(WIRE_TYPES))
        tags = [msgpack.unpackb(encode_message(m))[0] for m in samples]
        self.assertEqual(len(set(tags)), len(tags))
        for m in samples:
            self.assertEqual(decode_message(encode_message(m)), m)

    def test_wire_format_is_stable(self):
        """The bytes of a known message never change (peers of other versions read them)."""
        message = AppendEntries(5, "n1", "n2", 7, 4, (Entry(8, 5, b"hi", ENTRY_NOOP),), 6, 9)
        self.assertEqual(
            encode_message(message),
            bytes.fromhex("99 03 05 a2 6e 31 a2 6e 32 07 04 91 94 08 05 c4 02 68 69 01 06 09"),
        )

    def test_unicode_ids(self):
        """Ids are text: non-ASCII ids of the maximum length round-trip."""
        message = RequestVoteResponse(3, "\U0001f600" * MAX_ID_CHARS, "é", vote_granted=False)
        self.assertEqual(decode_message(encode_message(message)), message)


class EncodeErrorTests(SynchronousTestCase):
    """Encoding refuses what it cannot represent with CodecError."""

    def test_not_a_message(self):
        """An object that is not one of WIRE_TYPES is refused."""
        self.assertRaises(CodecError, encode_message, Entry(1, 1))
        self.assertRaises(CodecError, encode_message, {"term": 1})

    def test_core_only_messages_never_reach_the_wire(self):
        """A whole InstallSnapshot travels as SnapshotChunks, and a SnapshotStatus is a
        local report: the codec refuses both rather than put an image or a report in
        one datagram."""
        self.assertRaises(CodecError, encode_message,
                          InstallSnapshot(1, "a", "b", 10, 1, data=b"image"))
        self.assertRaises(CodecError, encode_message,
                          SnapshotStatus(1, "b", "a", finished=True))

    def test_retired_tags_are_refused(self):
        """Tags 5 and 6 (snapshot chunks and their answers before chunks had types of
        their own) are never decoded as anything: a tag is never reused."""
        for tag, arity in ((5, 10), (6, 8)):
            raw = msgpack.packb([tag] + [0] * (arity - 1))
            self.assertRaises(CodecError, decode_message, raw)

    def test_unpackable_field(self):
        """A field msgpack cannot pack (an object, an int beyond 64 bits) is refused,
        and the shared packer is left clean for the next message."""
        self.assertRaises(CodecError, encode_message, RequestVote(1, "a", "b", object(), 0))
        self.assertRaises(CodecError, encode_message, RequestVote(2**70, "a", "b", 0, 0))
        message = RequestVote(1, "a", "b", 0, 0)
        self.assertEqual(decode_message(encode_message(message)), message)


class DecodeErrorTests(SynchronousTestCase):
    """decode_message raises CodecError, and only CodecError, for any bad input."""

    def _refused(self, value):
        data = value if isinstance(value, bytes) else msgpack.packb(value, use_bin_type=True)
        self.assertRaises(CodecError, decode_message, data)

    def test_bad_tags(self):
        """Unknown, boolean, negative or non-integer tags and empty arrays are refused."""
        valid = [1, "a", "b", 2, 3, False]
        for tag in (0, 7, 99, -1, True, False, "1", 1.0, None, b"\x01"):
            self._refused([tag] + valid)
        self._refused([])
        self._refused(1)
        self._refused("RequestVote")

    def test_wrong_arity(self):
        """One field too many or too few is refused for every type."""
        for tag, arity in SHAPES:
            self._refused([tag] + [0] * (arity - 2))
            self._refused([tag] + [0] * arity)

    def test_wrong_field_types(self):
        """Bools where ints belong and vice versa, negative or huge ints, floats,
        bad ids and str where bytes belong are refused."""
        good = [TAG_REQUEST_VOTE, 1, "a", "b", 2, 3, False, False]
        self.assertEqual(type(decode_message(msgpack.packb(good))), RequestVote)
        for position, bad in [
            (1, True), (1, -1), (1, MAX_UINT + 1), (1, 2**64 - 1), (1, 1.0), (1, None),
            (2, ""), (2, "x" * (MAX_ID_CHARS + 1)), (2, b"a"), (2, 5),
            (3, None), (6, 0), (6, 1), (6, None), (6, "true"), (7, 1), (7, None),
        ]:
            value = list(good)
            value[position] = bad
            self._refused(value)
        # A transfer campaign skips PreVote: a message claiming both is malformed.
        self._refused([TAG_REQUEST_VOTE, 1, "a", "b", 2, 3, True, True])
        for position, bad in [(1, -1), (2, ""), (3, 7)]:
            value = [TAG_TIMEOUT_NOW, 1, "a", "b"]
            value = list(good)
            value[position] = bad
            self._refused(value)

    def test_bad_entries(self):
        """Malformed entries (wrong arity, unknown kind, str data, negative index,
        entries not an array) make the whole AppendEntries invalid."""
        base = [TAG_APPEND_ENTRIES, 1, "a", "b", 0, 0, [[1, 1, b"x", 0]], 0, 0]
        self.assertEqual(len(decode_message(msgpack.packb(base, use_bin_type=True)).entries), 1)
        for bad in ([1, 1, b"x"], [1, 1, b"x", 0, 0], [1, 1, b"x", 99], [1, 1, "x", 0],
                    [-1, 1, b"x", 0], [1, True, b"x", 0], [1, 1, b"x", False], 5, b"e"):
            value = list(base)
            value[6] = [bad]
            self._refused(value)
        value = list(base)
        value[6] = b"not an array"
        self._refused(value)

    def test_configuration_entries_must_decode(self):
        """A configuration entry takes effect in the core the moment it is appended
        (dissertation 4.1), so one whose data is not a well-formed configuration (not
        msgpack, wrong shape, duplicate ids, no such role) never leaves the decoder."""
        good = Configuration.of_voters(["a", "b"]).to_bytes()
        base = [TAG_APPEND_ENTRIES, 1, "a", "b", 0, 0, [[1, 1, good, ENTRY_CONFIG]], 0, 0]
        decoded = decode_message(msgpack.packb(base, use_bin_type=True))
        self.assertEqual(Configuration.from_bytes(decoded.entries[0].data).voters, ("a", "b"))
        for bad in (
            b"", b"\xc1", b"x=1",
            msgpack.packb([1, [["a", "voter", "", "", ""], ["a", "voter", "", "", ""]]]),
            msgpack.packb([1, [["a", "boss", "", "", ""]]]),
            msgpack.packb([2, [["a", "voter", "", "", ""]]]),
            msgpack.packb([1, [["a", "voter", "", ""]]]),
            msgpack.packb({"members": ["a"]}),
        ):
            value = list(base)
            value[6] = [[1, 1, bad, ENTRY_CONFIG]]
            self._refused(value)

    def test_entries_must_follow_prev_log_index(self):
        """Figure 2 / Log Matching: entries that do not run on from prev_log_index are
        refused by the decoder, not by the log's assertion after a truncation."""
        for batch in ([[1, 1, b"x", 0], [3, 1, b"y", 0]], [[2, 1, b"x", 0]],
                      [[1, 1, b"x", 0], [1, 1, b"x", 0]]):
            self._refused([TAG_APPEND_ENTRIES, 1, "a", "b", 0, 0, batch, 0, 0])

    def test_entry_terms_within_prev_log_term_and_term(self):
        """Section 5.3: terms never decrease along a log, and a leader holds no entry
        of a later term than its own."""
        for prev_term, batch in ((0, [[1, 9, b"x", 0]]), (3, [[1, 2, b"x", 0]]),
                                 (1, [[1, 2, b"x", 0], [2, 1, b"y", 0]])):
            self._refused([TAG_APPEND_ENTRIES, 5, "a", "b", 0, prev_term, batch, 0, 0])
        ok = [TAG_APPEND_ENTRIES, 5, "a", "b", 0, 1, [[1, 1, b"x", 0], [2, 5, b"y", 0]], 0, 0]
        self.assertEqual(len(decode_message(msgpack.packb(ok, use_bin_type=True)).entries), 2)

    def test_snapshot_data_must_be_bytes(self):
        """SnapshotChunk data sent as str (msgpack raw string) is refused."""
        self._refused([8, 1, "a", "b", 10, 1, 0, "text", True, 0])

    def test_msgpack_level_garbage(self):
        """Trailing bytes, truncation, invalid UTF-8, maps, ext types, deep nesting and
        length headers promising more than the input holds are all refused."""
        good = encode_message(RequestVote(1, "a", "b", 2, 3))
        self._refused(good + b"\x00")
        self._refused(good[:-1])
        self._refused(b"")
        self._refused(b"\xc1")  # never used by msgpack
        self._refused(b"\x97\x01\x01\xa1\xff\xa1b\x02\x03\xc2")  # invalid UTF-8 id
        self._refused({"tag": 1})
        self._refused(msgpack.packb([1, 1, "a", "b", 2, 3, msgpack.ExtType(1, b"x")]))
        self._refused(b"\xd6\xff\x00\x00\x00\x00")  # timestamp ext
        self._refused(b"\x91" * 5000 + b"\x01")  # nesting beyond msgpack's stack
        self._refused(b"\xdd\xff\xff\xff\xff")  # array32 header, no elements
        self._refused(b"\xc6\xff\xff\xff\xff")  # bin32 header, no bytes
        self._refused(b"\xdb\x00\x01\x00\x00" + b"a" * 10)  # long str, short input

    def test_non_bytes_input(self):
        """Input that is not a bytes-like object is refused with CodecError too."""
        for value in (None, "\x97", 5, [1, 2]):
            self.assertRaises(CodecError, decode_message, value)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data):
        """Arbitrary bytes decode to a valid message or raise CodecError, nothing else."""
        _assert_decodes_or_refuses(data)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(SHAPES), st.binary(max_size=120))
    def test_arbitrary_bytes_after_a_valid_header(self, shape, tail):
        """Bytes that start like a real message (array header and tag) still only ever
        decode or raise CodecError."""
        tag, arity = shape
        _assert_decodes_or_refuses(bytes([0x90 | arity, tag]) + tail)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(SHAPES), st.lists(msgpack_values, max_size=11))
    def test_arbitrary_msgpack_structures(self, shape, fields):
        """Well-formed msgpack of the wrong shape or types (floats, maps, negative ints,
        nested lists) decodes only if valid, else raises CodecError."""
        tag, _ = shape
        _assert_decodes_or_refuses(msgpack.packb([tag] + fields, use_bin_type=True))

    @settings(max_examples=300, deadline=None)
    @given(messages, st.data())
    def test_mutated_encodings(self, message, data):
        """A valid encoding with a flipped bit, cut short or with bytes appended decodes
        to a valid message or raises CodecError."""
        encoded = bytearray(encode_message(message))
        how = data.draw(st.sampled_from(["flip", "truncate", "append"]))
        if how == "flip":
            position = data.draw(st.integers(0, len(encoded) * 8 - 1))
            encoded[position // 8] ^= 1 << (position % 8)
        elif how == "truncate":
            del encoded[data.draw(st.integers(0, len(encoded) - 1)):]
        else:
            encoded += data.draw(st.binary(min_size=1, max_size=8))
        result = _assert_decodes_or_refuses(bytes(encoded))
        if how != "flip":
            self.assertIsNone(result)


class SizeTests(SynchronousTestCase):
    """Exact sizes, so the Raft core can fill AppendEntries up to a byte budget."""

    @settings(max_examples=300, deadline=None)
    @given(entries, st.sampled_from([0, 1, 255, 256, 65535, 65536]))
    def test_encoded_entry_size_is_exact(self, entry, length):
        """encoded_entry_size equals the msgpack size of the entry as encoded, for data
        lengths on both sides of every bin header boundary."""
        entry = Entry(entry.index, entry.term, b"z" * length, entry.kind)
        packed = msgpack.packb([entry.index, entry.term, entry.data, entry.kind],
                               use_bin_type=True)
        self.assertEqual(encoded_entry_size(entry), len(packed))

    @settings(max_examples=300, deadline=None)
    @given(append_entries)
    def test_append_entries_overhead_bounds_the_encoding(self, message):
        """An AppendEntries never encodes to more than its overhead plus its entries."""
        budget = append_entries_overhead(message.sender, message.receiver) + sum(
            encoded_entry_size(e) for e in message.entries
        )
        self.assertLessEqual(len(encode_message(message)), budget)

"""The wire format of Raft messages: msgpack arrays with a small integer type tag.

Pure functions, no I/O.  ``encode_message`` turns any message of
``txraft.core.messages.WIRE_TYPES`` into bytes; ``decode_message`` turns bytes back into a
message or raises ``CodecError`` -- and nothing else -- for any input at all, because it
reads datagrams from the network.

Layout: ``[tag, field, field, ...]`` with the fields in the order the ``attrs`` class
declares them; an ``Entry`` is ``[index, term, data, kind]``.  Integers are unsigned and at
most ``MAX_UINT`` (2**63 - 1, so they also fit a signed 64-bit column), ids are non-empty
``str`` of at most ``MAX_ID_CHARS`` characters, payloads are msgpack ``bin``.

A tag is never reused for a different layout: changing a message means a new tag (and the
transport's envelope version covers the rest).

``encode_message`` does not re-validate field values (it is on the per-datagram hot path);
``decode_message`` is the authority, and a message the core builds from validated input
round-trips.  ``encoded_entry_size`` and ``append_entries_overhead`` give exact byte
counts for building AppendEntries batches under a byte budget.
"""

from __future__ import annotations

import msgpack

from txraft.core.config import ConfigChangeError, Configuration
from txraft.core.messages import (
    ENTRY_CONFIG,
    ENTRY_KINDS,
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotChunk,
    SnapshotChunkAck,
    TimeoutNow,
)

MAX_UINT = 2**63 - 1
MAX_ID_CHARS = 64
# An id of MAX_ID_CHARS characters is at most 4 bytes per character in UTF-8.
_MAX_ID_BYTES = 4 * MAX_ID_CHARS

TAG_REQUEST_VOTE = 1
TAG_REQUEST_VOTE_RESPONSE = 2
TAG_APPEND_ENTRIES = 3
TAG_APPEND_ENTRIES_RESPONSE = 4
# 5 and 6 were InstallSnapshot chunks and their answers (with a next_offset field)
# before chunks got message types of their own; they are never reused.
TAG_INSTALL_SNAPSHOT_RESPONSE = 7
TAG_SNAPSHOT_CHUNK = 8
TAG_SNAPSHOT_CHUNK_ACK = 9
TAG_TIMEOUT_NOW = 10

_ENTRY_KINDS = frozenset(ENTRY_KINDS)


class CodecError(ValueError):
    """The bytes are not a valid encoded message (or the value cannot be encoded)."""


# One Packer, reused: ``packb`` builds a new Packer per call and costs ~3x more.  The
# Packer resets its buffer when packing fails, so a failed call leaves it clean.
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_unpackb = msgpack.unpackb


def encode_message(msg) -> bytes:
    """Return the wire bytes of ``msg`` (one of ``WIRE_TYPES``).

    Raises ``CodecError`` for an unknown type or a value msgpack cannot pack.
    """
    cls = type(msg)
    if cls is AppendEntries:
        fields = [
            TAG_APPEND_ENTRIES,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.prev_log_index,
            msg.prev_log_term,
            [[e.index, e.term, e.data, e.kind] for e in msg.entries],
            msg.leader_commit,
            msg.read_seq,
        ]
    elif cls is AppendEntriesResponse:
        fields = [
            TAG_APPEND_ENTRIES_RESPONSE,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.success,
            msg.match_index,
            msg.rejected_index,
            msg.conflict_index,
            msg.conflict_term,
            msg.read_seq,
        ]
    elif cls is RequestVote:
        fields = [
            TAG_REQUEST_VOTE,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.last_log_index,
            msg.last_log_term,
            msg.pre_vote,
            msg.transfer,
        ]
    elif cls is RequestVoteResponse:
        fields = [
            TAG_REQUEST_VOTE_RESPONSE,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.vote_granted,
            msg.pre_vote,
        ]
    elif cls is SnapshotChunk:
        fields = [
            TAG_SNAPSHOT_CHUNK,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.last_included_index,
            msg.last_included_term,
            msg.offset,
            msg.data,
            msg.done,
            msg.read_seq,
        ]
    elif cls is SnapshotChunkAck:
        fields = [
            TAG_SNAPSHOT_CHUNK_ACK,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.last_included_index,
            msg.next_offset,
            msg.done,
        ]
    elif cls is TimeoutNow:
        fields = [TAG_TIMEOUT_NOW, msg.term, msg.sender, msg.receiver]
    elif cls is InstallSnapshotResponse:
        fields = [
            TAG_INSTALL_SNAPSHOT_RESPONSE,
            msg.term,
            msg.sender,
            msg.receiver,
            msg.last_included_index,
            msg.success,
            msg.read_seq,
        ]
    else:
        raise CodecError("cannot encode %s: not a wire message" % (cls.__name__,))
    try:
        return _pack(fields)
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError("cannot encode %s: %s" % (cls.__name__, e)) from None


def decode_message(data):
    """Return the message encoded in ``data``; raise ``CodecError`` for anything else.

    Garbage, truncation, trailing bytes, wrong tag, arity or field types, out-of-range
    integers, oversized or deeply nested containers: all of them are ``CodecError``.
    """
    try:
        # Maps and extension types never occur in our format: refuse them while
        # parsing.  Array and bin lengths default to len(data), which bounds what a
        # forged length header can make msgpack allocate; strings are ids, so short.
        obj = _unpackb(
            data,
            use_list=False,
            raw=False,
            max_str_len=_MAX_ID_BYTES,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types; all mean "not our format"
        raise CodecError("not valid msgpack: %s" % (e.__class__.__name__,)) from None
    if type(obj) is not tuple or not obj:
        raise CodecError("not a tagged array")
    tag = obj[0]
    decoder = _DECODERS.get(tag) if type(tag) is int else None
    if decoder is None:
        raise CodecError("unknown message tag %r" % (tag,))
    return decoder(obj)


# -- validation helpers: each returns its argument or raises CodecError ---------------


def _uint(v):
    if type(v) is not int or v < 0 or v > MAX_UINT:
        raise CodecError("expected an unsigned integer, got %r" % (_short(v),))
    return v


def _id(v):
    if type(v) is not str or not v or len(v) > MAX_ID_CHARS:
        raise CodecError("expected a node id, got %r" % (_short(v),))
    return v


def _bool(v):
    if type(v) is not bool:
        raise CodecError("expected a bool, got %r" % (_short(v),))
    return v


def _bytes(v):
    if type(v) is not bytes:
        raise CodecError("expected bytes, got %r" % (_short(v),))
    return v


def _short(v):
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _arity(obj, n, name):
    if len(obj) != n:
        raise CodecError("%s needs %d fields, got %d" % (name, n - 1, len(obj) - 1))


def _decode_entries(raw, prev_log_index: int, prev_log_term: int, term: int):
    """An AppendEntries' entries, in the shape Log Matching relies on (Figure 2, section
    5.3): they run on from ``prev_log_index`` with no gap, and their terms never decrease,
    from ``prev_log_term`` up to at most the leader's ``term``.  Checked here, before the
    follower may truncate its log for a message it cannot append."""
    if type(raw) is not tuple:
        raise CodecError("entries must be an array")
    entries = []
    append = entries.append
    due, last_term = prev_log_index, prev_log_term
    for e in raw:
        if type(e) is not tuple or len(e) != 4:
            raise CodecError("an entry must be a 4-element array")
        index, entry_term, data, kind = e
        if (
            type(index) is not int
            or type(entry_term) is not int
            or not (0 <= index <= MAX_UINT)
            or not (0 <= entry_term <= MAX_UINT)
        ):
            raise CodecError("entry index and term must be unsigned integers")
        if type(data) is not bytes:
            raise CodecError("entry data must be bytes")
        if type(kind) is not int or kind not in _ENTRY_KINDS:
            raise CodecError("unknown entry kind %r" % (_short(kind),))
        if kind == ENTRY_CONFIG:
            # The core takes a configuration entry at its word the moment it is
            # appended: one that does not decode never gets that far.
            try:
                Configuration.from_bytes(data)
            except ConfigChangeError as e:
                raise CodecError("entry %d: %s" % (index, e.message))
        due += 1
        if index != due:
            raise CodecError("AppendEntries: entry %d where %d was due" % (index, due))
        if not last_term <= entry_term <= term:
            raise CodecError(
                "AppendEntries: entry %d has term %d, outside %d..%d"
                % (index, entry_term, last_term, term)
            )
        last_term = entry_term
        append(Entry(index, entry_term, data, kind))
    return tuple(entries)


def _decode_request_vote(obj):
    _arity(obj, 8, "RequestVote")
    _, term, sender, receiver, last_log_index, last_log_term, pre_vote, transfer = obj
    pre_vote, transfer = _bool(pre_vote), _bool(transfer)
    if pre_vote and transfer:
        # A transfer campaign skips PreVote (dissertation 3.10): never both.
        raise CodecError("a RequestVote cannot be both a pre-vote and a transfer")
    return RequestVote(
        _uint(term),
        _id(sender),
        _id(receiver),
        _uint(last_log_index),
        _uint(last_log_term),
        pre_vote=pre_vote,
        transfer=transfer,
    )


def _decode_timeout_now(obj):
    _arity(obj, 4, "TimeoutNow")
    _, term, sender, receiver = obj
    return TimeoutNow(_uint(term), _id(sender), _id(receiver))


def _decode_request_vote_response(obj):
    _arity(obj, 6, "RequestVoteResponse")
    _, term, sender, receiver, vote_granted, pre_vote = obj
    return RequestVoteResponse(
        _uint(term), _id(sender), _id(receiver), vote_granted=_bool(vote_granted),
        pre_vote=_bool(pre_vote),
    )


def _decode_append_entries(obj):
    _arity(obj, 9, "AppendEntries")
    _, term, sender, receiver, prev_log_index, prev_log_term, entries, commit, seq = obj
    term, prev_log_index, prev_log_term = _uint(term), _uint(prev_log_index), _uint(prev_log_term)
    return AppendEntries(
        term,
        _id(sender),
        _id(receiver),
        prev_log_index,
        prev_log_term,
        _decode_entries(entries, prev_log_index, prev_log_term, term),
        _uint(commit),
        _uint(seq),
    )


def _decode_append_entries_response(obj):
    _arity(obj, 10, "AppendEntriesResponse")
    (_, term, sender, receiver, success, match_index, rejected_index, conflict_index,
     conflict_term, read_seq) = obj
    return AppendEntriesResponse(
        _uint(term),
        _id(sender),
        _id(receiver),
        success=_bool(success),
        match_index=_uint(match_index),
        rejected_index=_uint(rejected_index),
        conflict_index=_uint(conflict_index),
        conflict_term=_uint(conflict_term),
        read_seq=_uint(read_seq),
    )


def _decode_snapshot_chunk(obj):
    _arity(obj, 10, "SnapshotChunk")
    (_, term, sender, receiver, last_included_index, last_included_term, offset, data,
     done, read_seq) = obj
    return SnapshotChunk(
        _uint(term),
        _id(sender),
        _id(receiver),
        _uint(last_included_index),
        _uint(last_included_term),
        _uint(offset),
        _bytes(data),
        done=_bool(done),
        read_seq=_uint(read_seq),
    )


def _decode_snapshot_chunk_ack(obj):
    _arity(obj, 7, "SnapshotChunkAck")
    _, term, sender, receiver, last_included_index, next_offset, done = obj
    return SnapshotChunkAck(
        _uint(term),
        _id(sender),
        _id(receiver),
        _uint(last_included_index),
        _uint(next_offset),
        done=_bool(done),
    )


def _decode_install_snapshot_response(obj):
    _arity(obj, 7, "InstallSnapshotResponse")
    _, term, sender, receiver, last_included_index, success, read_seq = obj
    return InstallSnapshotResponse(
        _uint(term),
        _id(sender),
        _id(receiver),
        _uint(last_included_index),
        success=_bool(success),
        read_seq=_uint(read_seq),
    )


_DECODERS = {
    TAG_REQUEST_VOTE: _decode_request_vote,
    TAG_REQUEST_VOTE_RESPONSE: _decode_request_vote_response,
    TAG_APPEND_ENTRIES: _decode_append_entries,
    TAG_APPEND_ENTRIES_RESPONSE: _decode_append_entries_response,
    TAG_INSTALL_SNAPSHOT_RESPONSE: _decode_install_snapshot_response,
    TAG_SNAPSHOT_CHUNK: _decode_snapshot_chunk,
    TAG_SNAPSHOT_CHUNK_ACK: _decode_snapshot_chunk_ack,
    TAG_TIMEOUT_NOW: _decode_timeout_now,
}


# -- sizes, for byte budgets ------------------------------------------------------------


def _uint_size(n):
    # msgpack's smallest encoding of a non-negative int.
    if n < 0x80:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def _bin_header_size(n):
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    return 5


def _str_size(s):
    n = len(s.encode("utf-8"))
    if n < 32:
        return 1 + n
    if n < 0x100:
        return 2 + n
    if n < 0x10000:
        return 3 + n
    return 5 + n


def encoded_entry_size(entry) -> int:
    """The exact number of bytes ``entry`` adds to an encoded AppendEntries.

    (The entries array header may grow from 1 to 3 or 5 bytes past 15 and 65535
    entries; ``append_entries_overhead`` already counts the largest header.)
    """
    n = len(entry.data)
    return (
        1  # fixarray of 4
        + _uint_size(entry.index)
        + _uint_size(entry.term)
        + _bin_header_size(n)
        + n
        + _uint_size(entry.kind)
    )


def append_entries_overhead(sender: str, receiver: str) -> int:
    """An upper bound on the bytes of an AppendEntries from ``sender`` to ``receiver``
    excluding its entries: integers at their largest, the entries header at its largest.

    So ``len(encode_message(m)) <= append_entries_overhead(m.sender, m.receiver) +
    sum(encoded_entry_size(e) for e in m.entries)`` for every AppendEntries ``m``; a
    leader fills a batch while that sum stays within the transport's ``max_payload``.
    """
    return (
        1  # fixarray of 9
        + 1  # tag
        + _str_size(sender)
        + _str_size(receiver)
        + 5 * 9  # term, prev_log_index, prev_log_term, leader_commit, read_seq
        + 5  # array32 header for the entries
    )

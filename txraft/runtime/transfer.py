"""Snapshot transfer: how an ``InstallSnapshot`` and its image cross a datagram network.

The leader's core decides that a follower needs a snapshot and emits an
``InstallSnapshot`` without the image.  ``SnapshotTransfers.start`` takes it from there:
it reads the image from the snapshot store and sends it as ``SnapshotChunk`` messages
that each fit one datagram, a window at a time.  The follower's side accepts chunks only
in order and acknowledges each with ``SnapshotChunkAck(next_offset=bytes held)``; the
leader resends from the acknowledged offset when acknowledgements stop, backing off.
When the last chunk is in, ``received`` returns the whole ``InstallSnapshot`` (with the
image as ``data``) for the follower's core, which installs it through the executor and
answers with ``InstallSnapshotResponse``.  The leader's core hears how the transfer goes
through ``RaftCore.report_snapshot``: moving, finished, or failed.

Message passing like everything else: chunks and acknowledgements may be lost,
duplicated or reordered, either side may crash and restart mid-transfer, and a deposed
leader's partial image is dropped.  Pure: ``send`` and ``seconds`` (a clock) are
injected; no reactor, no I/O.  The node and the simulator run this same class.

What travels is the snapshot's *payload*: a small header, then the state machine's
image.  The header carries the configuration the snapshot holds and the index of its
entry (dissertation section 5.1: a snapshot replaces the log entries that held the
configuration, so it must carry it); it is a 4-byte big-endian length and a msgpack
``[1, config_index, configuration bytes or None]``.  A payload whose header does not
decode is dropped and counted (``stats["malformed"]``), never given to the core.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, Optional, Tuple

import msgpack

from txraft.core.config import ConfigChangeError, Configuration
from txraft.core.messages import (
    InstallSnapshot,
    SnapshotChunk,
    SnapshotChunkAck,
    SnapshotMeta,
    WireMessage,
)
from txraft.core.progress import PROBE, SNAPSHOT

#: What ``acknowledged`` reports to the leader's core.
MOVING = "moving"
FINISHED = "finished"

_LENGTH = struct.Struct(">I")
_PAYLOAD_FORMAT = 1
_MAX_HEADER_BYTES = 64 * 1024


def encode_payload(meta: SnapshotMeta, data: bytes) -> bytes:
    """The bytes a transfer carries: the header (see the module docstring), then ``data``."""
    conf = meta.configuration.to_bytes() if meta.configuration is not None else None
    header = msgpack.packb([_PAYLOAD_FORMAT, meta.config_index, conf], use_bin_type=True)
    return _LENGTH.pack(len(header)) + header + bytes(data)


def decode_payload(payload: bytes) -> Tuple[Optional[Configuration], int, bytes]:
    """``(configuration, config_index, image)`` of a whole payload, or ValueError."""
    if len(payload) < _LENGTH.size:
        raise ValueError("snapshot payload shorter than its header length")
    (size,) = _LENGTH.unpack_from(payload)
    if size > _MAX_HEADER_BYTES or _LENGTH.size + size > len(payload):
        raise ValueError("snapshot payload header of %d bytes does not fit" % size)
    try:
        header = msgpack.unpackb(payload[_LENGTH.size : _LENGTH.size + size], raw=False,
                                 max_map_len=0, max_array_len=3)
    except Exception as e:
        raise ValueError("undecodable snapshot payload header: %s" % e)
    if (
        not isinstance(header, list) or len(header) != 3 or header[0] != _PAYLOAD_FORMAT
        or type(header[1]) is not int or header[1] < 0
        or not (header[2] is None or isinstance(header[2], bytes))
    ):
        raise ValueError("malformed snapshot payload header")
    conf = None
    if header[2] is not None:
        try:
            conf = Configuration.from_bytes(header[2])
        except ConfigChangeError as e:
            raise ValueError(e.message)
    return conf, header[1], payload[_LENGTH.size + size :]


class _Outgoing:
    __slots__ = ("meta", "data", "acked", "sent", "last_progress", "term", "backoff",
                 "read_seq")

    def __init__(self, meta: SnapshotMeta, data: bytes, term: int, read_seq: int,
                 now: float, backoff: float):
        self.meta = meta
        self.data = data
        self.term = term
        self.read_seq = read_seq
        self.acked = 0
        self.sent = 0
        self.last_progress = now
        self.backoff = backoff


class _Incoming:
    __slots__ = ("leader", "term", "meta", "buffer")

    def __init__(self, leader: str, term: int, meta: SnapshotMeta):
        self.leader = leader
        self.term = term
        self.meta = meta
        self.buffer = bytearray()


class SnapshotTransfers:
    """Both halves of snapshot transfer for one node.

    ``send(message)`` puts a message on the network; ``seconds()`` reads the clock;
    ``latest()`` returns the latest durable snapshot as ``(meta, data)`` or None.
    """

    def __init__(
        self,
        node_id: str,
        send: Callable[[WireMessage], None],
        seconds: Callable[[], float],
        latest: Callable[[], Optional[Tuple[SnapshotMeta, bytes]]] = lambda: None,
        chunk_bytes: int = 1200,
        window: int = 32,
        resend_after_seconds: float = 0.2,
        max_backoff_seconds: float = 1.0,
        max_snapshot_bytes: int = 1 << 30,
    ):
        self.node_id = node_id
        self._send = send
        self._seconds = seconds
        self._latest = latest
        self.chunk_bytes = max(1, chunk_bytes)
        self.window = window
        self.resend_after_seconds = resend_after_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_snapshot_bytes = max_snapshot_bytes
        self.outgoing: Dict[str, _Outgoing] = {}
        self.incoming: Optional[_Incoming] = None
        self.stats = {"chunks_sent": 0, "chunks_received": 0, "sent": 0, "installed": 0,
                      "malformed": 0}

    # ------------------------------------------------------------- with a core

    def deliver(self, m: Any, core: Any) -> bool:
        """Take ``m`` if it is the transfer's (a chunk or a chunk acknowledgement) and
        tell ``core`` (a ``RaftCore``) what it means; False for any other message, which
        the caller steps into the core itself.  The node and the simulators all route
        datagrams through here."""
        kind = type(m)
        if kind is SnapshotChunk:
            whole = self.received(m, core.term, core.leader_id, core.commit_index)
            if whole is not None:
                core.step(whole)
            return True
        if kind is SnapshotChunkAck:
            moved = self.acknowledged(m)
            if moved == MOVING:
                core.report_snapshot(m.sender, finished=False)
            elif moved == FINISHED:
                core.report_snapshot(m.sender, finished=True, ok=True)
            return True
        return False

    def tick_for(self, core: Any) -> None:
        """``tick`` with what ``core`` still wants: a transfer of its current term to a
        follower it probes or sends a snapshot to (a probe is how the core re-checks a
        silent transfer; it usually ends with the snapshot offered again, and the
        transfer should go on where it was)."""
        if self.outgoing:
            self.tick(lambda peer, term: core.term == term
                      and core.peer_state(peer) in (SNAPSHOT, PROBE))

    # ------------------------------------------------------------- leader side

    def start(self, message: InstallSnapshot) -> Optional[SnapshotMeta]:
        """Carry the core's ``InstallSnapshot`` to its receiver; returns the snapshot
        being sent, or None if none stored covers ``last_included_index``.

        The core asks again whenever it re-enters its snapshot state for the peer (for
        example after an election timeout without an answer).  A transfer of this term
        that already covers the index goes on from the last acknowledged byte:
        restarting a large transfer from scratch each time, with the newest image, meant
        a follower behind a slow or lossy link never finished one.
        """
        peer, term = message.receiver, message.term
        out = self.outgoing.get(peer)
        if out is not None and out.term == term and out.meta.index >= message.last_included_index:
            out.sent = out.acked
            out.read_seq = message.read_seq
            out.last_progress = self._seconds()
            self._pump(peer)
            return out.meta
        latest = self._latest()
        if latest is None or latest[0].index < message.last_included_index:
            return None
        meta, data = latest
        self.outgoing[peer] = _Outgoing(meta, encode_payload(meta, data), term,
                                        message.read_seq, self._seconds(),
                                        self.resend_after_seconds)
        self.stats["sent"] += 1
        self._pump(peer)
        return meta

    def stop(self, peer: str) -> None:
        self.outgoing.pop(peer, None)

    def acknowledged(self, m: SnapshotChunkAck) -> Optional[str]:
        """Take a chunk acknowledgement: ``MOVING`` if the transfer made progress,
        ``FINISHED`` once the follower holds the whole image (the transfer ends), else
        None.

        ``next_offset`` 0 (the follower holds no part of this image, for example after
        it restarted) rewinds the transfer to the first byte, at most once per back-off.
        """
        out = self.outgoing.get(m.sender)
        if out is None or m.last_included_index != out.meta.index or m.term != out.term:
            return None
        if m.done:
            del self.outgoing[m.sender]
            return FINISHED
        if m.next_offset == 0:
            now = self._seconds()
            if out.acked == 0 and now - out.last_progress < out.backoff:
                return None
            out.acked = out.sent = 0
            out.last_progress = now
            self._pump(m.sender)
            return None
        if m.next_offset <= out.acked:
            return None
        out.acked = min(m.next_offset, len(out.data))
        out.last_progress = self._seconds()
        out.backoff = self.resend_after_seconds
        if out.sent < out.acked:
            out.sent = out.acked
        self._pump(m.sender)
        return MOVING

    def tick(self, still_wanted: Callable[[str, int], bool]) -> None:
        """Drop transfers the core no longer wants; resend stalled ones."""
        now = self._seconds()
        for peer in list(self.outgoing):
            out = self.outgoing[peer]
            if not still_wanted(peer, out.term):
                del self.outgoing[peer]
                continue
            if now - out.last_progress >= out.backoff:
                # Nothing acknowledged for a while: resend from the last acknowledged
                # byte, backing off so a dead peer does not cost a window per tick.
                out.sent = out.acked
                out.last_progress = now
                out.backoff = min(self.max_backoff_seconds, out.backoff * 2)
                if out.acked == 0:
                    latest = self._latest()
                    if latest is not None and latest[0].index > out.meta.index:
                        out.meta, out.data = latest[0], encode_payload(*latest)
                self._pump(peer)

    def _pump(self, peer: str) -> None:
        out = self.outgoing[peer]
        total = len(out.data)
        limit = out.acked + self.window * self.chunk_bytes
        while out.sent < min(total, limit) or (total == 0 and out.sent == 0 and out.acked == 0):
            offset = out.sent
            chunk = out.data[offset : offset + self.chunk_bytes]
            self._send(
                SnapshotChunk(
                    out.term, self.node_id, peer, out.meta.index, out.meta.term, offset,
                    bytes(chunk), done=offset + len(chunk) >= total, read_seq=out.read_seq,
                )
            )
            self.stats["chunks_sent"] += 1
            out.sent = offset + len(chunk)
            if total == 0:
                break

    # ----------------------------------------------------------- follower side

    def received(
        self,
        m: SnapshotChunk,
        term: int,
        leader_id: Optional[str],
        commit_index: int,
    ) -> Optional[InstallSnapshot]:
        """Take one chunk; return the whole ``InstallSnapshot`` for the core once the
        image is in (or at once, without an image, when ``commit_index`` shows this node
        already holds everything the snapshot covers: its last answer was lost)."""
        if m.term != term or m.sender != leader_id:
            return None  # the leader's heartbeats bring the term and leader first
        meta = SnapshotMeta(m.last_included_index, m.last_included_term)
        inc = self.incoming
        if inc is not None and (inc.term != term or inc.leader != leader_id):
            # A deposed leader's partial image: it will never be finished.
            inc = self.incoming = None
        if inc is None or inc.meta != meta:
            if meta.index <= commit_index:
                # Nothing to receive: say so, and let the core answer (once per offer).
                self._ack(m, 0, done=True)
                return self._whole(m, None) if m.offset == 0 else None
            if m.offset != 0:
                self._ack(m, 0)
                return None
            inc = self.incoming = _Incoming(m.sender, m.term, meta)
        if m.offset != len(inc.buffer):
            self._ack(m, len(inc.buffer))
            return None
        if len(inc.buffer) + len(m.data) > self.max_snapshot_bytes:
            self.incoming = None
            self._ack(m, 0)
            return None
        inc.buffer += m.data
        self.stats["chunks_received"] += 1
        if not m.done:
            self._ack(m, len(inc.buffer))
            return None
        self.incoming = None
        try:
            conf, config_index, image = decode_payload(bytes(inc.buffer))
        except ValueError:
            # An authenticated leader sent something this node cannot read (a bug, or a
            # version mismatch): never install it; start over, and count it.
            self.stats["malformed"] += 1
            self._ack(m, 0)
            return None
        self._ack(m, len(inc.buffer), done=True)
        self.stats["installed"] += 1
        return self._whole(m, image, conf, config_index)

    def receiving_from(self, leader: str, term: int) -> bool:
        """Whether a transfer from ``leader`` in ``term`` is under way."""
        inc = self.incoming
        return inc is not None and inc.leader == leader and inc.term == term

    def _whole(self, m: SnapshotChunk, data: Optional[bytes],
               configuration: Optional[Configuration] = None,
               config_index: int = 0) -> InstallSnapshot:
        return InstallSnapshot(
            m.term, m.sender, self.node_id, m.last_included_index, m.last_included_term,
            read_seq=m.read_seq, data=data, configuration=configuration,
            config_index=config_index,
        )

    def _ack(self, m: SnapshotChunk, offset: int, done: bool = False) -> None:
        self._send(SnapshotChunkAck(m.term, self.node_id, m.sender, m.last_included_index,
                                    offset, done=done))

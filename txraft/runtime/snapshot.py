"""Snapshots: a durable file store, and their transfer to a follower over UDP.

A snapshot is the state machine's image at an applied index (``IStateMachine.snapshot``).
The node keeps the latest one on disk so it can compact its log (section 7) and send it
to a follower that needs entries the log no longer holds.

The transfer is message passing like everything else: the leader sends ``InstallSnapshot``
chunks that each fit one datagram, a window at a time; the follower accepts them only in
order and acknowledges with ``InstallSnapshotResponse(success=True, next_offset=bytes
received)``; the leader resends from the acknowledged offset when acknowledgements stop.
When the last chunk is in, the follower stores the image, restores its state machine,
and only then tells its Raft core, whose answer (``next_offset`` 0) ends the transfer.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.logger import Logger

from txraft.errors import StorageCorrupted
from txraft.core.messages import InstallSnapshot, InstallSnapshotResponse, SnapshotMeta
from txraft.runtime.storage import fsync_directory

log = Logger()

_MAGIC = b"TXRSNAP1"
_HEADER = struct.Struct(">8sQQQI")  # magic, index, term, length, crc32
_FILE = "snapshot.bin"


class SnapshotStore:
    """Keeps the latest snapshot in ``directory/snapshot.bin`` (atomic replace, fsynced).

    ``write`` is safe to call from a worker thread (the leader writes its own snapshots
    off the reactor thread); ``save`` writes and remembers, ``remember`` makes a written
    image the one ``latest`` returns.  A write never replaces a newer image: a follower
    may install a leader's snapshot while its own older one is still being written.
    """

    def __init__(self, directory: str):
        self.directory = directory
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
            # The directory's own entry must survive a power loss before the log is
            # compacted behind a file in it.
            fsync_directory(os.path.dirname(os.path.abspath(directory)))
        self.path = os.path.join(directory, _FILE)
        self._latest: Optional[Tuple[SnapshotMeta, bytes]] = None
        self._loaded = False
        self._lock = threading.Lock()
        self._durable_index = self._index_on_disk()

    def _index_on_disk(self) -> int:
        try:
            with open(self.path, "rb") as f:
                header = f.read(_HEADER.size)
        except FileNotFoundError:
            return 0
        if len(header) < _HEADER.size:
            return 0  # latest() reports the damage
        return _HEADER.unpack(header)[1]

    def write(self, meta: SnapshotMeta, data: bytes) -> bool:
        """Make ``data`` the durable snapshot unless a newer one already is; thread-safe."""
        with self._lock:
            if meta.index <= self._durable_index and os.path.exists(self.path):
                return False
            tmp = self.path + ".tmp"
            header = _HEADER.pack(_MAGIC, meta.index, meta.term, len(data), zlib.crc32(data))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(header + data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_directory(self.directory)
            self._durable_index = meta.index
            return True

    def remember(self, meta: SnapshotMeta, data: bytes) -> None:
        """``latest()`` returns this image from now on (unless it holds a newer one)."""
        current = self.latest()
        if current is None or current[0].index < meta.index:
            self._latest = (meta, data)
            self._loaded = True

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        self.write(meta, data)
        self.remember(meta, data)

    def latest(self) -> Optional[Tuple[SnapshotMeta, bytes]]:
        """The latest durable snapshot, or None.  A damaged file stops the node."""
        if self._loaded:
            return self._latest
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._loaded = True
            return None
        if len(raw) < _HEADER.size:
            raise StorageCorrupted(self.path, 0, "snapshot header truncated")
        magic, index, term, length, crc = _HEADER.unpack_from(raw)
        if magic != _MAGIC:
            raise StorageCorrupted(self.path, 0, "not a txraft snapshot")
        data = raw[_HEADER.size :]
        if len(data) != length:
            raise StorageCorrupted(self.path, _HEADER.size, "snapshot body truncated")
        if zlib.crc32(data) != crc:
            raise StorageCorrupted(self.path, _HEADER.size, "snapshot checksum mismatch")
        self._latest = (SnapshotMeta(index, term), data)
        self._loaded = True
        return self._latest


class _Outgoing:
    __slots__ = ("meta", "data", "acked", "sent", "last_progress", "term", "backoff")

    def __init__(self, meta: SnapshotMeta, data: bytes, term: int, now: float, backoff: float):
        self.meta = meta
        self.data = data
        self.term = term
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
    """Both halves of snapshot transfer for one node; owned by ``RaftNode``.

    ``send(message)`` puts a message on the wire; ``seconds()`` reads the clock.
    """

    def __init__(
        self,
        node_id: str,
        send: Callable[[Any], None],
        seconds: Callable[[], float],
        latest: Callable[[], Optional[Tuple[SnapshotMeta, bytes]]] = lambda: None,
        chunk_bytes: int = 1200,
        window: int = 32,
        resend_after_seconds: float = 0.2,
        max_snapshot_bytes: int = 1 << 30,
    ):
        self.node_id = node_id
        self._send = send
        self._seconds = seconds
        self._latest = latest
        self.chunk_bytes = max(64, chunk_bytes)
        self.window = window
        self.resend_after_seconds = resend_after_seconds
        self.max_snapshot_bytes = max_snapshot_bytes
        self.outgoing: Dict[str, _Outgoing] = {}
        self.incoming: Optional[_Incoming] = None
        self.stats = {"chunks_sent": 0, "chunks_received": 0, "sent": 0, "installed": 0}

    # ------------------------------------------------------------- leader side

    def start(self, peer: str, term: int, min_index: int) -> bool:
        """Send ``peer`` a snapshot covering at least ``min_index``; False if none is stored.

        The core asks again whenever it re-enters its snapshot state for the peer (for
        example after an election timeout without an answer).  A transfer of this term
        that already covers ``min_index`` goes on from the last acknowledged byte:
        restarting a large transfer from scratch each time, with the newest image, meant
        a follower behind a slow or lossy link never finished one.
        """
        out = self.outgoing.get(peer)
        if out is not None and out.term == term and out.meta.index >= min_index:
            out.sent = out.acked
            out.last_progress = self._seconds()
            self._pump(peer)
            return True
        latest = self._latest()
        if latest is None or latest[0].index < min_index:
            return False
        meta, data = latest
        self.outgoing[peer] = _Outgoing(meta, data, term, self._seconds(), self.resend_after_seconds)
        self.stats["sent"] += 1
        log.info(
            "sending snapshot at index {index} ({size} bytes) to {peer}",
            index=meta.index, size=len(data), peer=peer,
        )
        self._pump(peer)
        return True

    def stop(self, peer: str) -> None:
        self.outgoing.pop(peer, None)

    def acknowledged(self, m: InstallSnapshotResponse) -> bool:
        """Take a chunk acknowledgement; True if the transfer made progress.

        A refusal (``success`` false: the follower holds no part of this image, for
        example after it restarted) rewinds the transfer to the first byte.
        """
        out = self.outgoing.get(m.sender)
        if out is None or m.last_included_index != out.meta.index or m.term != out.term:
            return False
        if not m.success:
            now = self._seconds()
            if out.acked == 0 and now - out.last_progress < out.backoff:
                return False
            out.acked = out.sent = 0
            out.last_progress = now
            self._pump(m.sender)
            return False
        if m.next_offset <= out.acked:
            return False
        out.acked = min(m.next_offset, len(out.data))
        out.last_progress = self._seconds()
        out.backoff = self.resend_after_seconds
        if out.sent < out.acked:
            out.sent = out.acked
        self._pump(m.sender)
        return True

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
                out.backoff = min(1.0, out.backoff * 2)
                if out.acked == 0:
                    latest = self._latest()
                    if latest is not None and latest[0].index > out.meta.index:
                        out.meta, out.data = latest
                self._pump(peer)

    def _pump(self, peer: str) -> None:
        out = self.outgoing[peer]
        total = len(out.data)
        limit = out.acked + self.window * self.chunk_bytes
        while out.sent < min(total, limit) or (total == 0 and out.sent == 0 and out.acked == 0):
            offset = out.sent
            chunk = out.data[offset : offset + self.chunk_bytes]
            done = offset + len(chunk) >= total
            self._send(
                InstallSnapshot(
                    out.term, self.node_id, peer, out.meta.index, out.meta.term,
                    offset=offset, data=chunk, done=done,
                )
            )
            self.stats["chunks_sent"] += 1
            out.sent = offset + len(chunk)
            if total == 0:
                break

    # ----------------------------------------------------------- follower side

    def received(
        self, m: InstallSnapshot, term: int, leader_id: Optional[str]
    ) -> Optional[Tuple[SnapshotMeta, bytes]]:
        """Take one chunk; return ``(meta, data)`` once the whole image has arrived."""
        if m.term != term or m.sender != leader_id:
            return None  # the leader's heartbeats bring the term and leader first
        meta = SnapshotMeta(m.last_included_index, m.last_included_term)
        inc = self.incoming
        if inc is not None and (inc.term != term or inc.leader != leader_id):
            # A deposed leader's partial image: it will never be finished.
            inc = self.incoming = None
        if inc is None or inc.leader != m.sender or inc.term != m.term or inc.meta != meta:
            if m.offset != 0:
                self._ack(m, 0)
                return None
            inc = self.incoming = _Incoming(m.sender, m.term, meta)
        if m.offset != len(inc.buffer):
            self._ack(m, len(inc.buffer))
            return None
        if len(inc.buffer) + len(m.data) > self.max_snapshot_bytes:
            self.incoming = None
            return None
        inc.buffer += m.data
        self.stats["chunks_received"] += 1
        if m.done:
            self.incoming = None
            self.stats["installed"] += 1
            return meta, bytes(inc.buffer)
        self._ack(m, len(inc.buffer))
        return None

    def receiving_from(self, leader: str, term: int) -> bool:
        """Whether a transfer from ``leader`` in ``term`` is under way."""
        inc = self.incoming
        return inc is not None and inc.leader == leader and inc.term == term

    def _ack(self, m: InstallSnapshot, offset: int) -> None:
        # success with a positive offset is a chunk acknowledgement; anything else goes
        # to the leader's Raft core (see the module docstring).
        self._send(
            InstallSnapshotResponse(
                m.term, self.node_id, m.sender, m.last_included_index,
                success=offset > 0, next_offset=offset,
            )
        )

"""Snapshots on disk: the latest image of the state machine, durable and checksummed.

A snapshot is the state machine's image at an applied index (``IStateMachine.snapshot``).
The node keeps the latest one on disk so it can compact its log (section 7) and send it
to a follower that needs entries the log no longer holds (``txraft.runtime.transfer``
carries it).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import Optional, Tuple

from txraft.errors import StorageCorrupted
from txraft.core.messages import SnapshotMeta
from txraft.runtime.storage import fsync_directory

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

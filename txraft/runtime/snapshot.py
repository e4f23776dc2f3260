"""Snapshots on disk: the latest image of the state machine, durable and checksummed.

A snapshot is the state machine's image at an applied index (``IStateMachine.snapshot``).
The node keeps the latest one on disk so it can compact its log (section 7) and send it
to a follower that needs entries the log no longer holds (``txraft.runtime.transfer``
carries it).

The file is a header (``TXRSNAP2``: index, term, the index of the configuration entry,
the configuration's length, the image's length, a CRC-32 of both), the configuration
(``Configuration.to_bytes``: a snapshot replaces the entries that held it, dissertation
section 5.1) and the image.  Files written before configurations were logged
(``TXRSNAP1``, no configuration) are still read.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from typing import Optional, Tuple

from txraft.errors import StorageCorrupted
from txraft.core.config import ConfigChangeError, Configuration
from txraft.core.messages import SnapshotMeta
from txraft.runtime.storage import fsync_directory

_MAGIC_V1 = b"TXRSNAP1"
_HEADER_V1 = struct.Struct(">8sQQQI")  # magic, index, term, length, crc32
_MAGIC = b"TXRSNAP2"
# magic, index, term, config index, config length, image length, crc32 of both
_HEADER = struct.Struct(">8sQQQIQI")
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
        self._tmp = self.path + ".tmp"
        self._remove_leftover()
        self._latest: Optional[Tuple[SnapshotMeta, bytes]] = None
        self._loaded = False
        self._lock = threading.Lock()
        self._durable_index = self._index_on_disk()

    def _remove_leftover(self) -> None:
        """Delete the half-written image a crash during ``write`` left behind (it is never
        read, and could be as large as the state machine)."""
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            return
        fsync_directory(self.directory)

    def _parse(self, raw: bytes) -> Tuple[SnapshotMeta, bytes]:
        """``(meta, image)`` of a whole file, or ``StorageCorrupted``."""
        magic = raw[:8]
        if magic == _MAGIC_V1:
            header, conf_len = _HEADER_V1, 0
            if len(raw) < header.size:
                raise StorageCorrupted(self.path, 0, "snapshot header truncated")
            _, index, term, length, crc = header.unpack_from(raw)
            config_index = 0
        elif magic == _MAGIC:
            header = _HEADER
            if len(raw) < header.size:
                raise StorageCorrupted(self.path, 0, "snapshot header truncated")
            _, index, term, config_index, conf_len, length, crc = header.unpack_from(raw)
        elif len(raw) < 8:
            raise StorageCorrupted(self.path, 0, "snapshot header truncated")
        else:
            raise StorageCorrupted(self.path, 0, "not a txraft snapshot")
        body = raw[header.size :]
        if len(body) != conf_len + length:
            raise StorageCorrupted(self.path, header.size, "snapshot body truncated")
        if zlib.crc32(body) != crc:
            raise StorageCorrupted(self.path, header.size, "snapshot checksum mismatch")
        configuration = None
        if conf_len:
            try:
                configuration = Configuration.from_bytes(body[:conf_len])
            except ConfigChangeError as e:
                raise StorageCorrupted(self.path, header.size, "snapshot configuration: %s"
                                       % e.message)
        meta = SnapshotMeta(index, term, configuration=configuration, config_index=config_index)
        return meta, body[conf_len:]

    def _index_on_disk(self) -> int:
        try:
            with open(self.path, "rb") as f:
                header = f.read(_HEADER.size)
        except FileNotFoundError:
            return 0
        if len(header) < _HEADER_V1.size:
            return 0  # latest() reports the damage
        return struct.unpack_from(">Q", header, 8)[0]  # the index, in either format

    def write(self, meta: SnapshotMeta, data: bytes) -> bool:
        """Make ``data`` the durable snapshot unless a newer one already is; thread-safe."""
        with self._lock:
            if meta.index <= self._durable_index and os.path.exists(self.path):
                return False
            tmp = self._tmp
            conf = meta.configuration.to_bytes() if meta.configuration is not None else b""
            header = _HEADER.pack(_MAGIC, meta.index, meta.term, meta.config_index, len(conf),
                                  len(data), zlib.crc32(data, zlib.crc32(conf)))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(header + conf + data)
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
        self._latest = self._parse(raw)
        self._loaded = True
        return self._latest

"""Durable Raft storage: hard state and log in one segmented write-ahead log.

``FileLogStorage`` appends every promise (hard state, entries, snapshot markers) to one
append-only file, so a whole ``save()`` batch costs one ``write`` and one ``fsync``
(group commit).  ``MemoryLogStorage`` has the same semantics in memory, for the
deterministic simulator and for tests.

On-disk format
--------------

A data directory holds ``LOCK`` (``flock``-ed while open), ``MANIFEST`` (below) and
segments named ``<seq, 20 digits>.wal``.  A segment starts with a 16-byte file header (``TXRWAL01`` and
its sequence number as u64 little-endian) followed by records::

    u32 payload length | u32 CRC32 of (type byte + payload) | u8 type | msgpack payload

    HARD_STATE (1)  [term, voted_for]
    ENTRY      (2)  [index, term, kind, data]
    SNAPSHOT   (3)  [index, term, keep_suffix]

Records are replayed in file order across segments.  An ENTRY at index ``i`` drops every
entry at ``i`` or above first (a follower replacing a conflicting suffix).  A SNAPSHOT
marker drops entries up to ``index``; ``keep_suffix`` says whether the entries after it
survive (paper section 7: they do only when the log holds ``index`` with the same
``term``).  The writer decides ``keep_suffix`` once, so replay never needs the entry the
marker refers to, which may live in a segment that was deleted.

A new segment is built in a ``.tmp`` file that starts with the current hard state and
snapshot marker, is fsynced, renamed into place and made durable with a directory fsync,
so a segment either exists whole or not at all.  ``compact`` deletes the oldest segments
once none of their entries can matter any more; replay then starts at a later segment,
and the entries it lacks must be covered by a later snapshot marker (checked).

The manifest
------------

``MANIFEST`` says what was durable the last time it was written: the sequence number of
the last segment, the length of every segment that was fsynced, the hard state, and how
many torn tails were ever cut (``tail_cuts``, for ``/metrics``)::

    "TXRMAN01" | u32 payload length | u32 CRC32 of payload | msgpack payload
    payload: [last seq, [[seq, durable length], ...], term, voted_for, tail_cuts]

It is replaced atomically (``MANIFEST.tmp``, fsync, rename, directory fsync) when a
segment is created, after a compaction, at open and at a clean close -- never per
append, so a ``save()`` still costs one write and one fsync.  Every length it records was
already fsynced when it was written (each append is fsynced before ``save`` returns; a
new segment is fsynced and its rename made durable before the manifest names it; at open
the last segment is fsynced first), so the lengths it claims are true after any crash.

Why a crash can only tear what the manifest does not cover
---------------------------------------------------------

A segment only ever grows, except when open cuts a torn tail, and that cut is always at
or after the durable length (below it there is nothing torn to cut).  A kill between any
two system calls therefore leaves:

* during an append: the last segment longer than its durable length, with a torn last
  batch; replay cuts the first bad record when nothing valid follows it.  This is the
  only damage a crash makes, and the only one ever cut;
* during a roll: a ``.tmp`` segment (deleted at open), or the new segment renamed into
  place but not yet in the manifest: the last segment on disk is then the manifest's
  last plus one, which is accepted (nothing was appended to it yet; more segments than
  the manifest names are never a loss, e.g. after an older txraft ran on the directory);
* during a manifest write: a ``MANIFEST.tmp`` (deleted at open) and the previous
  manifest, whose claims are all still true (lengths only grow, segments only appear at
  the end);
* during a compaction: the oldest segments deleted but still named by the manifest;
  segments missing below the first one are accepted exactly as before (a later snapshot
  marker must cover their entries).

Loss no crash can cause raises ``StorageCorrupted``: the manifest's last segment is
missing (the last segment deleted would otherwise reopen an older log, and term and vote
would fall back to the older segment's copy: a second vote in one term), a segment
shorter than its durable length, a bad record before the durable length, a hard state
older than the manifest's, a damaged manifest.  Past the durable length of the last
segment only the per-record checksums speak, as before: a bad record there with nothing
valid after it is cut (logged at error level, counted); the durable length catches up at
every roll, compaction, open and clean close.

A directory written before the manifest existed opens as before and gets one (logged).

Anything else -- a bad record with a valid record after it, any damage in an older
segment, an index gap, an unknown record type, a missing segment -- raises
``StorageCorrupted`` too: history is never rewritten silently.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
import zlib
from typing import Callable, List, Optional, Tuple

import msgpack
from twisted.logger import Logger
from zope.interface import implementer

from txraft.errors import ConfigError, StorageCorrupted
from txraft.interfaces import ILogStorage
from txraft.core.config import ConfigChangeError, Configuration
from txraft.core.messages import Entry, HardState, SnapshotMeta
from txraft.runtime.status import REPLACE_DOC

log = Logger()

HARD_STATE = 1
ENTRY = 2
SNAPSHOT = 3
RECORD_TYPES = (HARD_STATE, ENTRY, SNAPSHOT)

FILE_MAGIC = b"TXRWAL01"
FILE_HEADER = struct.Struct("<8sQ")
RECORD_HEADER = struct.Struct("<IIB")
# A record holds one entry; one claiming more than this is a damaged length field, so
# replay need not trust it and save refuses to write it.
MAX_RECORD_BYTES = 1 << 30
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".wal"
LOCK_NAME = "LOCK"
MANIFEST_NAME = "MANIFEST"
MANIFEST_MAGIC = b"TXRMAN01"
MANIFEST_HEADER = struct.Struct("<8sII")
TMP_SUFFIX = ".tmp"
#: The one line every ``StorageCorrupted`` found at open ends with: what to do.
CORRUPTED_ADVICE = (
    "the log cannot be trusted (acknowledged writes or the vote of a term may be gone); "
    "do not edit the files: treat this node as one that lost its disk, %s" % (REPLACE_DOC,)
)

_SEGMENT_NAME = re.compile(r"^([0-9]{20})\.wal$")
_CRC_SEED = {t: zlib.crc32(bytes([t])) for t in RECORD_TYPES}
_RECORD_TYPE_BYTE = re.compile(b"[\x01\x02\x03]")
# Errors that mean "this directory cannot be used", as opposed to a failing disk.
_CONFIG_ERRNOS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOENT,
)


# Indirections so tests can count fsyncs and inject short writes without patching os.
# (fdatasync would do for appends; measured here it was no faster than fsync.)
def _fsync(fd: int) -> None:
    os.fsync(fd)


def _write(fd: int, data) -> int:
    return os.write(fd, data)


def _write_all(fd: int, data) -> None:
    """Write all of ``data``: ``write`` may write less than it was given (POSIX)."""
    view = memoryview(data)
    while view:
        written = _write(fd, view)
        view = view[written:]


def fsync_directory(path: str) -> None:
    """Make the creation, renaming or removal of files in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_if_present(path: str) -> Optional[bytes]:
    """The whole file at ``path``, or None when there is none."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_atomically(path: str, data: bytes, fsync: Callable[[int], None] = os.fsync,
                     fsync_directory: Callable[[str], None] = fsync_directory) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file
    whole: write a temporary file, fsync it, rename it over ``path``, fsync the
    directory."""
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def _frame(record_type: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, _CRC_SEED[record_type])
    return RECORD_HEADER.pack(len(payload), crc, record_type) + payload


def _segment_name(seq: int) -> str:
    return "%020d%s" % (seq, SEGMENT_SUFFIX)


class _Corrupt(Exception):
    """A replayed record contradicts the log; becomes ``StorageCorrupted`` with a place."""


class _Log:
    """What is durable: hard state, snapshot and the entries after it.

    Both storages and the replay of segments go through these methods, so a write and
    its replay have one definition.  ``base`` is the index the held ``entries`` follow;
    it is above ``snapshot.index`` only while replaying a directory whose oldest segments
    were deleted (entries in between lived there and a later marker must cover them).
    """

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot = SnapshotMeta()
        self.base = 0
        self.entries: List[Entry] = []

    @property
    def last_index(self) -> int:
        return self.base + len(self.entries)

    def term_at(self, index: int) -> Optional[int]:
        if index == self.snapshot.index:
            return self.snapshot.term
        if self.base < index <= self.last_index:
            return self.entries[index - self.base - 1].term
        return None

    def check_entries(self, entries) -> None:
        """Raise ``ValueError`` unless ``entries`` can be saved (before anything is written)."""
        first = entries[0].index
        if first <= self.snapshot.index:
            raise ValueError(
                "entry %d is covered by the snapshot at %d" % (first, self.snapshot.index)
            )
        if first > self.last_index + 1:
            raise ValueError(
                "entry %d leaves a gap after the last index %d" % (first, self.last_index)
            )
        expected = first
        for entry in entries:
            if not isinstance(entry, Entry):
                raise ValueError("not an Entry: %r" % (entry,))
            if entry.index != expected:
                raise ValueError("entries are not contiguous at index %d" % (entry.index,))
            if (
                type(entry.term) is not int
                or entry.term < 0
                or type(entry.kind) is not int
                or type(entry.data) is not bytes
            ):
                raise ValueError("entry %d has a bad term, kind or data" % (entry.index,))
            expected += 1

    def add_entries(self, entries) -> None:
        """Append ``entries`` (checked), dropping stored entries at their index and above."""
        first = entries[0].index
        if first <= self.last_index:
            if first <= self.base:
                self.base = first - 1
                self.entries = []
            else:
                del self.entries[first - self.base - 1 :]
        self.entries.extend(entries)

    def add_replayed_entry(self, entry: Entry, first_of_replay: bool) -> None:
        if entry.index <= self.snapshot.index:
            raise _Corrupt(
                "entry %d is at or below the snapshot index %d"
                % (entry.index, self.snapshot.index)
            )
        if entry.index > self.last_index + 1:
            if not (first_of_replay and not self.entries):
                raise _Corrupt(
                    "index gap: entry %d follows last index %d"
                    % (entry.index, self.last_index)
                )
            # Replay starts after deleted segments: the entries in between were there.
            self.base = entry.index - 1
        self.add_entries([entry])

    def keeps_suffix(self, meta: SnapshotMeta) -> bool:
        """Section 7: keep the entries after ``meta`` only if the log holds it as is."""
        return meta.index < self.last_index and self.term_at(meta.index) == meta.term

    def add_snapshot(self, meta: SnapshotMeta, keep_suffix: bool) -> None:
        if keep_suffix and meta.index < self.last_index:
            if meta.index > self.base:
                del self.entries[: meta.index - self.base]
                self.base = meta.index
        else:
            self.entries = []
            self.base = meta.index
        self.snapshot = meta

    def add_replayed_snapshot(self, meta: SnapshotMeta, keep_suffix: bool) -> None:
        if meta.index < self.snapshot.index:
            raise _Corrupt(
                "snapshot marker %d is below the snapshot index %d"
                % (meta.index, self.snapshot.index)
            )
        if meta.index == self.snapshot.index:
            if meta.term != self.snapshot.term:
                raise _Corrupt(
                    "snapshot marker %d has term %d, not %d"
                    % (meta.index, meta.term, self.snapshot.term)
                )
            if self.snapshot.configuration is None and meta.configuration is not None:
                self.snapshot = meta
            return
        if keep_suffix and meta.index > self.base:
            term = self.term_at(meta.index)
            if term is not None and term != meta.term:
                raise _Corrupt(
                    "snapshot marker %d term %d keeps entries after an entry of term %d"
                    % (meta.index, meta.term, term)
                )
        self.add_snapshot(meta, keep_suffix)

    @staticmethod
    def check_hard_state(hard_state) -> None:
        if not (
            isinstance(hard_state, HardState)
            and type(hard_state.term) is int
            and hard_state.term >= 0
            and (hard_state.voted_for is None or isinstance(hard_state.voted_for, str))
        ):
            raise ValueError("not a valid HardState: %r" % (hard_state,))

    def load(self) -> Tuple[HardState, SnapshotMeta, List[Entry]]:
        return self.hard_state, self.snapshot, list(self.entries)


class _Segment:
    """One segment file and the highest index of the entries in it that may still matter.

    ``live_max`` only shrinks when later records supersede entries (a replaced suffix,
    a snapshot marker that discards the log), so ``live_max <= snapshot.index`` means
    the segment can be deleted without changing what replay produces.  ``size`` is its
    length once it is no longer the last segment (all of it fsynced).
    """

    __slots__ = ("seq", "path", "live_max", "size")

    def __init__(self, seq: int, path: str) -> None:
        self.seq = seq
        self.path = path
        self.live_max = 0
        self.size = 0


class _Manifest:
    """What ``MANIFEST`` recorded as durable (see the module docstring)."""

    __slots__ = ("last", "durable", "hard_state", "tail_cuts")

    def __init__(self, last: int, durable, hard_state: HardState, tail_cuts: int) -> None:
        self.last = last
        #: seq -> the length of that segment known to be fsynced.
        self.durable = durable
        self.hard_state = hard_state
        self.tail_cuts = tail_cuts

    def to_bytes(self) -> bytes:
        payload = msgpack.packb(
            [self.last, sorted(self.durable.items()), self.hard_state.term,
             self.hard_state.voted_for, self.tail_cuts],
            use_bin_type=True,
        )
        return MANIFEST_HEADER.pack(MANIFEST_MAGIC, len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def from_bytes(cls, raw: bytes) -> "_Manifest":
        """Parse a whole manifest; ``_Corrupt`` when it is not one (it is replaced by a
        rename, so no crash leaves it torn)."""
        if len(raw) < MANIFEST_HEADER.size:
            raise _Corrupt("MANIFEST is truncated")
        magic, length, crc = MANIFEST_HEADER.unpack_from(raw)
        payload = raw[MANIFEST_HEADER.size :]
        if magic != MANIFEST_MAGIC:
            raise _Corrupt("MANIFEST has a bad magic")
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise _Corrupt("MANIFEST fails its checksum")
        try:
            last, durable, term, voted_for, tail_cuts = msgpack.unpackb(payload, raw=False)
            durable = {seq: size for seq, size in durable}
        except Exception as e:
            raise _Corrupt("MANIFEST is malformed: %s" % (e,))
        numbers = [last, term, tail_cuts] + list(durable) + list(durable.values())
        if not (
            all(type(n) is int and n >= 0 for n in numbers)
            and (voted_for is None or isinstance(voted_for, str))
        ):
            raise _Corrupt("MANIFEST is malformed: %r" % (payload,))
        return cls(last, durable, HardState(term, voted_for), tail_cuts)


def _decode_record(record_type: int, payload) -> object:
    try:
        value = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as e:
        raise _Corrupt("undecodable payload: %s" % (e,))
    if record_type == HARD_STATE:
        if (
            isinstance(value, list)
            and len(value) == 2
            and type(value[0]) is int
            and value[0] >= 0
            and (value[1] is None or isinstance(value[1], str))
        ):
            return HardState(value[0], value[1])
    elif record_type == ENTRY:
        if (
            isinstance(value, list)
            and len(value) == 4
            and all(type(v) is int for v in value[:3])
            and value[0] >= 1
            and value[1] >= 0
            and isinstance(value[3], bytes)
        ):
            return Entry(index=value[0], term=value[1], data=value[3], kind=value[2])
    elif record_type == SNAPSHOT:
        # [index, term, keep_suffix] before configurations were logged; now also
        # [..., config_index, configuration bytes or None] (dissertation section 5.1).
        if (
            isinstance(value, list)
            and len(value) in (3, 5)
            and type(value[0]) is int
            and type(value[1]) is int
            and value[0] >= 0
            and value[1] >= 0
            and isinstance(value[2], bool)
        ):
            if len(value) == 3:
                return (SnapshotMeta(value[0], value[1]), value[2])
            config_index, conf = value[3], value[4]
            if type(config_index) is int and 0 <= config_index <= value[0] and (
                conf is None or isinstance(conf, bytes)
            ):
                try:
                    configuration = Configuration.from_bytes(conf) if conf is not None else None
                except ConfigChangeError as e:
                    raise _Corrupt("snapshot record configuration: %s" % e.message)
                meta = SnapshotMeta(value[0], value[1], configuration=configuration,
                                    config_index=config_index)
                return (meta, value[2])
    raise _Corrupt("malformed record of type %d: %r" % (record_type, value))


def _valid_record_at(buf, offset: int) -> bool:
    """True when a whole record with a good CRC and a known type starts at ``offset``."""
    if offset + RECORD_HEADER.size > len(buf):
        return False
    length, crc, record_type = RECORD_HEADER.unpack_from(buf, offset)
    start = offset + RECORD_HEADER.size
    if record_type not in _CRC_SEED or length > MAX_RECORD_BYTES or start + length > len(buf):
        return False
    return zlib.crc32(buf[start : start + length], _CRC_SEED[record_type]) == crc


def _valid_record_after(buf, offset: int) -> Optional[int]:
    """The offset of a valid record starting after ``offset``, or None.

    Tells a torn tail (only garbage follows the bad record) from damage in the middle
    of the log, including a damaged length field that claims to run past the end.
    """
    for match in _RECORD_TYPE_BYTE.finditer(buf, offset + 1 + RECORD_HEADER.size - 1):
        candidate = match.start() - (RECORD_HEADER.size - 1)
        if _valid_record_at(buf, candidate):
            return candidate
    return None


@implementer(ILogStorage)
class FileLogStorage:
    """A crash-safe ``ILogStorage`` in ``directory``: one fsync per ``save()``.

    Opening the directory takes an exclusive lock, replays every segment (cutting a
    torn tail off the last one) and keeps what is durable in memory; ``load()`` returns
    it without reading the files again.
    """

    def __init__(self, directory: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be positive")
        self.directory = os.path.abspath(directory)
        self.segment_bytes = segment_bytes
        #: Counters for benchmarks and tests.
        self.save_count = 0
        self.fsync_count = 0
        #: Torn tails cut off at open, over the directory's life (kept in MANIFEST).
        self.tail_cuts = 0
        self._log = _Log()
        self._segments: List[_Segment] = []
        self._fd: Optional[int] = None
        self._size = 0
        self._lock_fd: Optional[int] = None
        self._failed: Optional[BaseException] = None
        #: Set once replay is done: only then is there a durable state to record.
        self._recovered = False
        self._packer = msgpack.Packer(use_bin_type=True)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _sync(self, fd: int) -> None:
        _fsync(fd)
        self.fsync_count += 1

    def _sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ opening

    def _config_error(self, e: OSError, doing: str) -> ConfigError:
        return ConfigError(
            "data directory %s is not usable (%s: %s)"
            % (self.directory, doing, e.strerror or e)
        )

    def _open(self) -> None:
        try:
            self._make_directory(self.directory)
        except OSError as e:
            if e.errno in _CONFIG_ERRNOS:
                raise self._config_error(e, "cannot create it") from None
            raise
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError("data directory %s is not writable" % (self.directory,))
        try:
            self._lock_fd = os.open(
                os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644
            )
        except OSError as e:
            if e.errno in _CONFIG_ERRNOS:
                raise self._config_error(e, "cannot create its LOCK file") from None
            raise
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "data directory %s is in use by another process" % (self.directory,)
            ) from None
        try:
            self._recover()
        except OSError as e:
            if e.errno in _CONFIG_ERRNOS:
                raise self._config_error(e, "cannot write its segments") from None
            raise
        except StorageCorrupted as e:
            raise StorageCorrupted(
                e.path, e.offset, "%s; %s" % (e.reason, CORRUPTED_ADVICE)
            ) from None

    def _make_directory(self, path: str) -> None:
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent != path:
            self._make_directory(parent)
        os.mkdir(path, 0o755)
        self._sync_dir(parent)

    def _recover(self) -> None:
        names = os.listdir(self.directory)
        leftovers = [
            n for n in names if n.endswith((SEGMENT_SUFFIX + TMP_SUFFIX, MANIFEST_NAME + TMP_SUFFIX))
        ]
        for name in leftovers:
            # A roll or a manifest write that crashed before its rename: what it would
            # have replaced is still in place.
            os.unlink(os.path.join(self.directory, name))
        if leftovers:
            self._sync_dir(self.directory)
        manifest = self._read_manifest()
        seqs = sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, names) if m)
        if not seqs:
            if manifest is not None:
                raise StorageCorrupted(
                    os.path.join(self.directory, _segment_name(manifest.last)),
                    0,
                    "every segment is missing, though MANIFEST names %s as the last"
                    % (_segment_name(manifest.last),),
                )
            self._create_segment(1)
            self._recovered = True
            return
        for previous, seq in zip(seqs, seqs[1:]):
            if seq != previous + 1:
                raise StorageCorrupted(
                    os.path.join(self.directory, _segment_name(previous + 1)),
                    0,
                    "segment missing (found %s after %s)"
                    % (_segment_name(seq), _segment_name(previous)),
                )
        durable = {}
        if manifest is not None:
            self.tail_cuts = manifest.tail_cuts
            durable = manifest.durable
            if seqs[-1] < manifest.last:
                raise StorageCorrupted(
                    os.path.join(self.directory, _segment_name(manifest.last)),
                    0,
                    "segment missing: MANIFEST names it as the last segment, with %d bytes "
                    "made durable, but the last one found is %s"
                    % (durable.get(manifest.last, 0), _segment_name(seqs[-1])),
                )
        first_entry = [True]
        for position, seq in enumerate(seqs):
            segment = _Segment(seq, os.path.join(self.directory, _segment_name(seq)))
            self._segments.append(segment)
            segment.size = self._replay(
                segment, position == len(seqs) - 1, first_entry, durable.get(seq, 0)
            )
        self._size = segment.size
        if self._log.base != self._log.snapshot.index:
            raise StorageCorrupted(
                self._segments[0].path,
                FILE_HEADER.size,
                "entries %d to %d are missing (an older segment was lost)"
                % (self._log.snapshot.index + 1, self._log.base),
            )
        if manifest is not None:
            self._check_hard_state(manifest.hard_state)
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        # What replay read may be a crashed writer's unsynced pages: make it durable
        # before the manifest says it is.
        self._sync(self._fd)
        if manifest is None:
            log.info(
                "No {name} in {directory} (written before txraft kept one, or a crash "
                "while creating the directory): writing one",
                name=MANIFEST_NAME,
                directory=self.directory,
            )
        self._write_manifest()
        self._recovered = True

    def _check_hard_state(self, recorded: HardState) -> None:
        """The term and vote replayed are never older than the manifest's copy."""
        replayed = self._log.hard_state
        if replayed.term < recorded.term or (
            replayed.term == recorded.term
            and recorded.voted_for is not None
            and replayed.voted_for != recorded.voted_for
        ):
            raise StorageCorrupted(
                self._segments[-1].path,
                0,
                "the log holds term %d (vote %r), older than term %d (vote %r) recorded "
                "in MANIFEST" % (replayed.term, replayed.voted_for, recorded.term,
                                 recorded.voted_for),
            )

    def _manifest_path(self) -> str:
        return os.path.join(self.directory, MANIFEST_NAME)

    def _read_manifest(self) -> Optional[_Manifest]:
        path = self._manifest_path()
        raw = read_if_present(path)
        if raw is None:
            return None
        try:
            return _Manifest.from_bytes(raw)
        except _Corrupt as e:
            raise StorageCorrupted(path, 0, str(e)) from None

    def _write_manifest(self) -> None:
        """Atomically record what is durable now (every length here was fsynced)."""
        durable = {segment.seq: segment.size for segment in self._segments[:-1]}
        durable[self._segments[-1].seq] = self._size
        manifest = _Manifest(
            self._segments[-1].seq, durable, self._log.hard_state, self.tail_cuts
        )
        write_atomically(self._manifest_path(), manifest.to_bytes(), fsync=self._sync,
                         fsync_directory=self._sync_dir)

    def _record_manifest(self) -> None:
        try:
            self._write_manifest()
        except BaseException as e:
            self._failed = e
            raise

    def _replay(
        self, segment: _Segment, is_last: bool, first_entry: List[bool], durable: int
    ) -> int:
        """Apply one segment's records; returns the size of the segment that is kept.

        ``durable``: how much of it the manifest says was fsynced (0 when unknown).
        """
        path = segment.path
        with open(path, "rb") as f:
            buf = f.read()
        if len(buf) < FILE_HEADER.size:
            raise StorageCorrupted(path, 0, "segment header is truncated")
        if len(buf) < durable:
            raise StorageCorrupted(
                path,
                len(buf),
                "segment is %d bytes long, but MANIFEST recorded %d bytes of it as durable"
                % (len(buf), durable),
            )
        magic, seq = FILE_HEADER.unpack_from(buf, 0)
        if magic != FILE_MAGIC:
            raise StorageCorrupted(path, 0, "not a txraft segment (bad magic)")
        if seq != segment.seq:
            raise StorageCorrupted(path, 0, "segment header names sequence %d" % (seq,))
        view = memoryview(buf)
        offset = FILE_HEADER.size
        end = len(buf)
        state = self._log
        while offset < end:
            reason = None
            if end - offset < RECORD_HEADER.size:
                reason = "short record header"
            else:
                length, crc, record_type = RECORD_HEADER.unpack_from(buf, offset)
                start = offset + RECORD_HEADER.size
                if length > MAX_RECORD_BYTES:
                    reason = "record length %d is implausible" % (length,)
                elif start + length > end:
                    reason = "record of %d bytes runs past the end of the file" % (length,)
                else:
                    payload = view[start : start + length]
                    seed = _CRC_SEED.get(record_type)
                    if seed is None:
                        seed = zlib.crc32(bytes([record_type]))
                    if zlib.crc32(payload, seed) != crc:
                        reason = "bad CRC"
                    elif record_type not in _CRC_SEED:
                        # Written whole with this type: a newer format or a bug, not a tear.
                        raise StorageCorrupted(
                            path, offset, "unknown record type %d" % (record_type,)
                        )
            if reason is not None:
                if not is_last:
                    raise StorageCorrupted(path, offset, reason)
                if offset < durable:
                    raise StorageCorrupted(
                        path,
                        offset,
                        "%s, before byte %d, which MANIFEST recorded as durable (a crash "
                        "cannot tear what was fsynced)" % (reason, durable),
                    )
                found = _valid_record_after(view, offset)
                if found is not None:
                    raise StorageCorrupted(
                        path,
                        offset,
                        "%s, with a valid record after it at offset %d" % (reason, found),
                    )
                self._cut_tail(path, offset, end, reason)
                return offset
            try:
                value = _decode_record(record_type, payload)
                if record_type == HARD_STATE:
                    state.hard_state = value
                elif record_type == ENTRY:
                    self._note_entries(segment, [value])
                    state.add_replayed_entry(value, first_entry[0])
                    first_entry[0] = False
                else:
                    meta, keep_suffix = value
                    state.add_replayed_snapshot(meta, keep_suffix)
                    if not keep_suffix:
                        self._note_discard()
            except _Corrupt as e:
                raise StorageCorrupted(path, offset, str(e)) from None
            offset = start + length
        return offset

    def _cut_tail(self, path: str, offset: int, end: int, reason: str) -> None:
        # An error, not a warning: after a crash it is expected, but it is also what
        # damage past the durable length would look like, and it should be seen.
        log.error(
            "Cutting a torn tail off {path} at offset {offset} ({reason}); "
            "{cut} bytes were never acknowledged (a crash during a write)",
            path=path,
            offset=offset,
            reason=reason,
            cut=end - offset,
        )
        self.tail_cuts += 1
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            self._sync(fd)
        finally:
            os.close(fd)

    # -------------------------------------------------------------- bookkeeping

    def _note_entries(self, segment: _Segment, entries) -> None:
        first = entries[0].index
        if first <= self._log.last_index:
            for older in self._segments:
                if older.live_max >= first:
                    older.live_max = first - 1
        segment.live_max = max(segment.live_max, entries[-1].index)

    def _note_discard(self) -> None:
        for segment in self._segments:
            segment.live_max = 0

    # ------------------------------------------------------------------ writing

    def _check_open(self) -> None:
        if self._failed is not None:
            raise OSError(
                errno.EIO,
                "storage in %s failed earlier (%s); restart to recover"
                % (self.directory, self._failed),
            )
        if self._fd is None:
            raise ValueError("storage is closed")

    def _append(self, data: bytes) -> None:
        """Write ``data`` at the end of the current segment and fsync it, once."""
        try:
            _write_all(self._fd, data)
            self._sync(self._fd)
        except BaseException as e:
            # After a failed write or fsync the file's contents are unknown (a later
            # fsync may report success for pages the kernel dropped): stop here.
            self._failed = e
            raise
        self._size += len(data)

    def _state_records(self) -> bytes:
        hs = self._log.hard_state
        snap = self._log.snapshot
        conf = snap.configuration.to_bytes() if snap.configuration is not None else None
        return _frame(HARD_STATE, self._packer.pack((hs.term, hs.voted_for))) + _frame(
            SNAPSHOT, self._packer.pack((snap.index, snap.term, True, snap.config_index, conf))
        )

    def _create_segment(self, seq: int) -> None:
        path = os.path.join(self.directory, _segment_name(seq))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            data = FILE_HEADER.pack(FILE_MAGIC, seq) + self._state_records()
            _write_all(fd, data)
            self._sync(fd)
            os.rename(tmp, path)
            self._sync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        if self._segments:
            self._segments[-1].size = self._size
        self._fd = fd
        self._size = len(data)
        self._segments.append(_Segment(seq, path))
        # Only now, with the segment durable, may the manifest name it as the last.
        self._write_manifest()

    def _rotate_if_full(self) -> None:
        if self._size >= self.segment_bytes:
            try:
                self._create_segment(self._segments[-1].seq + 1)
            except BaseException as e:
                self._failed = e
                raise
            log.debug("Started segment {path}", path=self._segments[-1].path)

    def save(self, hard_state: Optional[HardState], entries) -> None:
        """Make ``hard_state`` (unless None) and ``entries`` durable with one fsync."""
        if hard_state is None and not entries:
            return
        self._check_open()
        pack = self._packer.pack
        parts = []
        if hard_state is not None:
            self._log.check_hard_state(hard_state)
            parts.append(_frame(HARD_STATE, pack((hard_state.term, hard_state.voted_for))))
        if entries:
            self._log.check_entries(entries)
            header = RECORD_HEADER.pack
            seed = _CRC_SEED[ENTRY]
            crc32 = zlib.crc32
            for e in entries:
                payload = pack((e.index, e.term, e.kind, e.data))
                if len(payload) > MAX_RECORD_BYTES:
                    raise ValueError("entry %d is too large to store" % (e.index,))
                parts.append(header(len(payload), crc32(payload, seed), ENTRY))
                parts.append(payload)
        self._rotate_if_full()
        self._append(b"".join(parts))
        self.save_count += 1
        if hard_state is not None:
            self._log.hard_state = hard_state
        if entries:
            self._note_entries(self._segments[-1], entries)
            self._log.add_entries(entries)

    def load(self) -> Tuple[HardState, SnapshotMeta, List[Entry]]:
        """Return ``(hard_state, snapshot_meta, entries)`` as last made durable."""
        if self._lock_fd is None:
            raise ValueError("storage is closed")
        return self._log.load()

    def compact(self, snapshot_meta: SnapshotMeta) -> None:
        """Durably drop entries up to ``snapshot_meta.index`` and delete dead segments.

        As in section 7, the entries after the snapshot survive only when the log holds
        its last entry with the same term; otherwise the whole log is discarded.
        """
        self._check_open()
        if snapshot_meta.index <= self._log.snapshot.index:
            return
        keep_suffix = self._log.keeps_suffix(snapshot_meta)
        conf = snapshot_meta.configuration
        record = _frame(
            SNAPSHOT,
            self._packer.pack((
                snapshot_meta.index, snapshot_meta.term, keep_suffix,
                snapshot_meta.config_index, conf.to_bytes() if conf is not None else None,
            )),
        )
        self._rotate_if_full()
        self._append(record)
        self._log.add_snapshot(snapshot_meta, keep_suffix)
        if not keep_suffix:
            self._note_discard()
        self._delete_dead_segments()
        # Compactions are rare: the durable length catches up with the log here.
        self._record_manifest()

    def _delete_dead_segments(self) -> None:
        dead = []
        for segment in self._segments[:-1]:
            if segment.live_max > self._log.snapshot.index:
                break
            dead.append(segment)
        if not dead:
            return
        try:
            # Oldest first, so a crash part way leaves a contiguous run of segments.
            for segment in dead:
                os.unlink(segment.path)
                self._segments.remove(segment)
            self._sync_dir(self.directory)
        except BaseException as e:
            self._failed = e
            raise
        log.info(
            "Deleted {count} segments up to index {index}",
            count=len(dead),
            index=self._log.snapshot.index,
        )

    def segment_paths(self) -> List[str]:
        """The segment files currently in use, oldest first."""
        return [segment.path for segment in self._segments]

    @property
    def stats(self):
        """Counters for ``/metrics`` (``txraft_storage_<name>_total``)."""
        return {"tail_cuts": self.tail_cuts}

    def close(self) -> None:
        """Record what is durable, release the segment and the directory lock; idempotent."""
        if self._fd is not None:
            if self._recovered and self._failed is None:
                try:
                    self._write_manifest()
                except Exception:
                    # The previous manifest is still true, only less complete.
                    log.failure("Could not record {directory}'s durable state at close",
                                directory=self.directory)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@implementer(ILogStorage)
class MemoryLogStorage:
    """``ILogStorage`` in memory: whatever ``save`` was given is "durable" at once.

    It survives a simulated crash as long as the simulator keeps the object.
    ``save_count`` counts the saves that would have cost an fsync; ``saves`` records
    each of them as ``(hard_state, entries)`` so tests can assert the exact sequence.
    """

    def __init__(self) -> None:
        self._log = _Log()
        self.save_count = 0
        self.compact_count = 0
        self.saves: List[Tuple[Optional[HardState], Tuple[Entry, ...]]] = []
        self.closed = False

    def save(self, hard_state: Optional[HardState], entries) -> None:
        if hard_state is None and not entries:
            return
        if self.closed:
            raise ValueError("storage is closed")
        if hard_state is not None:
            self._log.check_hard_state(hard_state)
        entries = tuple(entries)
        if entries:
            self._log.check_entries(entries)
        self.save_count += 1
        self.saves.append((hard_state, entries))
        if hard_state is not None:
            self._log.hard_state = hard_state
        if entries:
            self._log.add_entries(entries)

    def load(self) -> Tuple[HardState, SnapshotMeta, List[Entry]]:
        return self._log.load()

    def compact(self, snapshot_meta: SnapshotMeta) -> None:
        if self.closed:
            raise ValueError("storage is closed")
        if snapshot_meta.index <= self._log.snapshot.index:
            return
        self.compact_count += 1
        self._log.add_snapshot(snapshot_meta, self._log.keeps_suffix(snapshot_meta))

    def close(self) -> None:
        self.closed = True

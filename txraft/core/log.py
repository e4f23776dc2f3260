"""The in-memory Raft log the core works on: entries after a snapshot point.

Pure data structure; durability is the storage's job.  Index arithmetic lives here so the
core reads like the paper.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Iterable, List, Optional, Tuple

from txraft.core.messages import Entry, SnapshotMeta

#: Rough per-entry framing overhead used for byte budgets (msgpack array, ints, tags).
ENTRY_OVERHEAD_BYTES = 24


def _term_of(entry: Entry) -> int:
    return entry.term


class RaftLog:
    """Entries ``snapshot_index + 1 .. last_index``; terms never decrease along the log."""

    def __init__(self, snapshot: SnapshotMeta = SnapshotMeta(), entries: Iterable[Entry] = ()):
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term
        self.entries: List[Entry] = list(entries)
        for offset, entry in enumerate(self.entries):
            if entry.index != self.snapshot_index + 1 + offset:
                raise ValueError(
                    "log is not contiguous at entry %d (index %d)" % (offset, entry.index)
                )

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        if self.entries:
            return self.entries[-1].term
        return self.snapshot_term

    def term_at(self, index: int) -> Optional[int]:
        """Term of the entry at ``index``; ``None`` when compacted away or beyond the end."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int) -> Tuple[Entry, ...]:
        """Entries with ``lo <= index < hi`` (clipped to what the log holds)."""
        base = self.snapshot_index + 1
        lo = max(lo, base)
        if hi <= lo:
            return ()
        return tuple(self.entries[lo - base : hi - base])

    def batch_from(self, lo: int, max_bytes: int, max_count: int) -> Tuple[Entry, ...]:
        """Entries from ``lo`` up to a byte budget; always at least one if any exist."""
        base = self.snapshot_index + 1
        start = lo - base
        if start < 0 or start >= len(self.entries):
            return ()
        end = start
        size = 0
        limit = min(len(self.entries), start + max_count)
        while end < limit:
            size += len(self.entries[end].data) + ENTRY_OVERHEAD_BYTES
            if size > max_bytes and end > start:
                break
            end += 1
        return tuple(self.entries[start:end])

    def append(self, entry: Entry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        self.entries.append(entry)

    def truncate_from(self, index: int) -> None:
        """Drop entries at ``index`` and after (only for a follower's real conflict)."""
        del self.entries[max(0, index - self.snapshot_index - 1) :]

    def first_index_of_term(self, term: int, at_or_before: int) -> int:
        """First index holding ``term``, searching back from ``at_or_before``."""
        hi = at_or_before - self.snapshot_index
        pos = bisect_left(self.entries, term, 0, max(0, hi), key=_term_of)
        return self.snapshot_index + 1 + pos

    def last_index_of_term(self, term: int) -> int:
        """Last index holding ``term``, or 0 if the log has no entry of that term."""
        pos = bisect_right(self.entries, term, key=_term_of)
        if pos == 0 or self.entries[pos - 1].term != term:
            if term == self.snapshot_term and pos == 0:
                return self.snapshot_index
            return 0
        return self.snapshot_index + pos

    def is_up_to_date(self, last_log_index: int, last_log_term: int) -> bool:
        """Section 5.4.1: is a candidate's log at least as up-to-date as this one?"""
        if last_log_term != self.last_term:
            return last_log_term > self.last_term
        return last_log_index >= self.last_index

    def compact(self, snapshot: SnapshotMeta) -> None:
        """Drop entries covered by ``snapshot`` (which must be at or before the end)."""
        if snapshot.index <= self.snapshot_index:
            return
        if snapshot.index <= self.last_index and self.term_at(snapshot.index) == snapshot.term:
            del self.entries[: snapshot.index - self.snapshot_index]
        else:
            self.entries = []
        self.snapshot_index = snapshot.index
        self.snapshot_term = snapshot.term

"""The durable, exactly-once half of any SQLite-backed state machine (plain Python).

``SQLiteStateMachine`` keeps one database file in WAL mode with ``synchronous=NORMAL``,
runs each ``apply_batch`` as one transaction that also records the applied index and
term, and snapshots the whole database as msgpack.  The key-value store
(``txraft.apps.kv``) and the shop (``shop.state``) are built on it.

Why NORMAL and not FULL: the Raft log, fsynced before any entry is applied, is the
durable record; the state machine is a cache of it, as etcd's bbolt is of its WAL.  With
NORMAL a transaction survives a killed process at once and an OS crash or power loss
once the WAL is checkpointed; a loss rolls the applied index back together with the
data (same transaction), and the node re-applies those entries from its log -- or, if
the log was compacted past them, restores the snapshot file, which is fsynced before any
compaction.  Exactly once either way, and one fsync fewer on every write's path.

Nothing here imports Twisted or the web layer (``tests/unit/test_layering.py``).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, List, Sequence, Tuple

import msgpack

from txraft.core.messages import ENTRY_NORMAL

_META_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT OR IGNORE INTO meta VALUES ('applied_index', 0)",
    "INSERT OR IGNORE INTO meta VALUES ('applied_term', 0)",
)


class SQLiteStateMachine:
    """The exactly-once, durable half of an ``IStateMachine`` on one SQLite file.

    Subclasses give ``ddl`` (CREATE statements), ``tables`` (``(name, order_by)`` for
    every table a snapshot holds, ``meta`` excluded) and ``apply_command(entry)``.
    Each ``apply_batch`` is one transaction: its entries' effects and the new applied
    index commit together, so after a crash an entry is applied exactly once.  Entries at
    or below the applied index are skipped (their result is ``None``).
    """

    ddl: Tuple[str, ...] = ()
    tables: Tuple[Tuple[str, str], ...] = ()
    snapshot_format: str = "sqlite/1"

    def __init__(self, path: str, durable: bool = True):
        """Open (creating if need be) the database at ``path``.

        ``durable=False`` turns fsync off entirely (``synchronous=OFF``, checkpoints
        included): only for tests and throwaway nodes.
        """
        self.path = path
        created = not os.path.exists(path)
        db = sqlite3.connect(path, isolation_level=None)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError("%s: SQLite refused WAL mode (got %s)" % (path, mode))
        db.execute("PRAGMA synchronous=NORMAL" if durable else "PRAGMA synchronous=OFF")
        db.execute("BEGIN IMMEDIATE")
        for statement in _META_SCHEMA + tuple(self.ddl):
            db.execute(statement)
        db.execute("COMMIT")
        if created and durable:
            _fsync_directory(os.path.dirname(os.path.abspath(path)))
        self._db = db
        self._load_meta()

    def _load_meta(self) -> None:
        meta = dict(self._db.execute("SELECT name, value FROM meta"))
        self._applied_index = meta["applied_index"]
        self._applied_term = meta["applied_term"]
        self.load_meta(meta)

    def load_meta(self, meta: dict) -> None:
        """Hook: read application counters kept in ``meta`` (after open, restore and a
        failed batch, so in-memory copies never run ahead of what committed)."""

    # -- IStateMachine --------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied_index

    def applied_term(self) -> int:
        return self._applied_term

    def apply_batch(self, entries: Sequence) -> List[Any]:
        db = self._db
        applied_index = self._applied_index
        applied_term = self._applied_term
        results: List[Any] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for entry in entries:
                if entry.index <= applied_index:
                    results.append(None)
                    continue
                if entry.index != applied_index + 1:
                    raise ValueError(
                        "%s: entry %d applied after %d; the runtime skipped entries"
                        % (self.path, entry.index, applied_index)
                    )
                if entry.kind == ENTRY_NORMAL:
                    results.append(self.apply_command(entry))
                else:
                    results.append(None)
                applied_index = entry.index
                applied_term = entry.term
            if applied_index != self._applied_index:
                db.execute(
                    "UPDATE meta SET value = ? WHERE name = 'applied_index'", (applied_index,)
                )
                db.execute(
                    "UPDATE meta SET value = ? WHERE name = 'applied_term'", (applied_term,)
                )
            self.before_commit()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load_meta()
            raise
        self._applied_index = applied_index
        self._applied_term = applied_term
        return results

    def apply_command(self, entry) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def before_commit(self) -> None:
        """Hook: write application counters to ``meta`` inside the batch's transaction."""

    def dump(self) -> bytes:
        """Every table, rows in primary-key order, as msgpack: equal states, equal bytes."""
        return self._dump(self._db)

    def _dump(self, db) -> bytes:
        tables = {"meta": [list(row) for row in db.execute("SELECT * FROM meta ORDER BY name")]}
        for name, order_by in self.tables:
            tables[name] = [
                list(row) for row in db.execute("SELECT * FROM %s ORDER BY %s" % (name, order_by))
            ]
        return msgpack.packb({"format": self.snapshot_format, "tables": tables})

    def snapshot(self) -> Tuple[int, int, bytes]:
        return self._applied_index, self._applied_term, self.dump()

    def begin_snapshot(self) -> Tuple[int, int, Callable[[], bytes]]:
        """Pin the current state; return ``(index, term, read)``.

        ``read()`` returns the same bytes ``snapshot()`` would have returned now, and may
        run in another thread while ``apply_batch`` goes on: it reads through a second
        connection whose read transaction (WAL mode) started here.
        """
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            reader.execute("BEGIN")
            # The first read fixes the transaction's view of the database.
            meta = dict(reader.execute("SELECT name, value FROM meta"))
        except BaseException:
            reader.close()
            raise
        if (meta["applied_index"], meta["applied_term"]) != (
            self._applied_index, self._applied_term
        ):
            reader.close()
            raise RuntimeError("%s: a snapshot began inside an apply batch" % (self.path,))

        def read() -> bytes:
            try:
                return self._dump(reader)
            finally:
                reader.close()

        return self._applied_index, self._applied_term, read

    def upgrade_image(self, image: Any) -> Any:
        """Hook: turn a snapshot image of an older format into the current one (a node
        restores what a leader of the previous release sent or saved); others as is."""
        return image

    def restore(self, index: int, term: int, data: bytes) -> None:
        image = self.upgrade_image(msgpack.unpackb(data, raw=False))
        if not isinstance(image, dict) or image.get("format") != self.snapshot_format:
            raise ValueError("%s: not a %s snapshot" % (self.path, self.snapshot_format))
        tables = image["tables"]
        expected = {"meta"} | {name for name, _ in self.tables}
        if set(tables) != expected:
            raise ValueError("%s: snapshot tables %s, expected %s"
                             % (self.path, sorted(tables), sorted(expected)))
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for name in sorted(expected):
                db.execute("DELETE FROM %s" % (name,))
                rows = tables[name]
                if rows:
                    marks = ",".join("?" * len(rows[0]))
                    db.executemany("INSERT INTO %s VALUES (%s)" % (name, marks), rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('applied_index', ?)", (index,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('applied_term', ?)", (term,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._load_meta()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _fsync_directory(path: str) -> None:
    """Make the creation of a file in directory ``path`` durable.

    The same as ``txraft.runtime.storage.fsync_directory``, which cannot be imported
    here: the runtime module loads Twisted (its logger), and a state machine must not.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Exactly-once writes for SQLite state machines: ``Idempotency-Key`` records kept in the
replicated state (Raft dissertation §6.3), shared by every txraft application.  Plain
Python; reading the header is the web layer's (``txraft.http.requests``).

A client that does not know whether its write took effect (a 504, a lost leader) sends it
again with the same key; the state machine answers with the recorded first outcome
instead of applying the request twice.  A record is ``(key, fingerprint, status, body,
log_index, created_ms)``: the fingerprint tells "the same request" (the application
decides what that means) from another request reusing the key (422
``idempotency_key_reused``, never recorded); ``log_index`` is the entry that produced the
answer first, which a replay reports again.

Everything is decided from the log, so every replica keeps the same records:

* time is the leader's: a command carries ``ts`` (milliseconds since the epoch) stamped
  by the proposing leader, and the state machine uses ``now = max(ts, last now)``, so
  time never goes backwards even across leaders whose clocks disagree;
* a record is deleted when a later stamped command's ``now`` is more than
  ``retention_ms`` (24 hours by default) past the record's, and the oldest records (by
  log index) are deleted when there are more than ``max_keys`` (100,000 by default).

Every replica must run with the same two values.  The records live in the state
machine's own database (table ``idempotency``, counters ``last_ms`` and
``idempotency_count`` in ``meta``), so they are part of its snapshots.
"""

from __future__ import annotations

from typing import Optional, Tuple

import msgpack

from txraft.results import FIELD, Refusal, Result

DAY_MS = 24 * 60 * 60 * 1000
DEFAULT_RETENTION_MS = DAY_MS
DEFAULT_MAX_KEYS = 100_000

#: Statements for the state machine's ``ddl`` (after ``meta`` exists).
DDL = (
    "INSERT OR IGNORE INTO meta VALUES ('last_ms', 0)",
    "INSERT OR IGNORE INTO meta VALUES ('idempotency_count', 0)",
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY, fingerprint BLOB NOT NULL, status INTEGER NOT NULL,
        body BLOB NOT NULL, log_index INTEGER NOT NULL UNIQUE, created_ms INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_ms)",
)
#: The entry for the state machine's ``tables`` (what its snapshots hold).
TABLE = ("idempotency", "key")
#: What a snapshot's ``meta`` holds for these records in a fresh state machine.
INITIAL_META = (["idempotency_count", 0], ["last_ms", 0])


def key_reused(index: int) -> Result:
    """The answer to the command at ``index`` reusing a key of another request."""
    return Result(422, _key_reused().document(), index)


def _key_reused() -> Refusal:
    return Refusal(422, "idempotency_key_reused",
                   "this Idempotency-Key was used for a different request", FIELD)


class IdempotencyRecords:
    """The records of one state machine: call ``start`` at every stamped command, then
    ``answer`` (a replay or a refusal, or None to apply the command) and ``record``.

    The owner wires ``load_meta`` and ``before_commit`` into its hooks of the same names
    and passes its connection; nothing here commits.
    """

    def __init__(self, retention_ms: int = DEFAULT_RETENTION_MS,
                 max_keys: int = DEFAULT_MAX_KEYS):
        self.retention_ms = retention_ms
        self.max_keys = max_keys
        self._last_ms = 0
        self._count = 0
        self._dirty = False

    def load_meta(self, meta: dict) -> None:
        self._last_ms = meta["last_ms"]
        self._count = meta["idempotency_count"]
        self._dirty = False

    def before_commit(self, db) -> None:
        if self._dirty:
            db.executemany(
                "UPDATE meta SET value = ? WHERE name = ?",
                ((self._last_ms, "last_ms"), (self._count, "idempotency_count")),
            )
            self._dirty = False

    def start(self, db, ts: int) -> int:
        """The command's ``now`` (``ts`` or later), after forgetting expired records."""
        now = ts
        if now < self._last_ms:
            now = self._last_ms
        elif now > self._last_ms:
            self._last_ms = now
            self._dirty = True
        if self._count:
            deleted = db.execute(
                "DELETE FROM idempotency WHERE created_ms < ?", (now - self.retention_ms,)
            ).rowcount
            if deleted:
                self._count -= deleted
                self._dirty = True
        return now

    def find(self, db, key: str) -> Optional[Tuple[bytes, Result]]:
        """``(fingerprint, first answer)`` recorded for ``key``, or None."""
        row = db.execute(
            "SELECT fingerprint, status, body, log_index FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        fp, status, body, index = row
        return fp, Result(status, msgpack.unpackb(body, raw=False), index, replayed=True)

    def answer(self, db, key: str, fp: bytes, index: int) -> Optional[Result]:
        """For the command at ``index``: the replayed first answer, 422 when ``key`` was
        used for another request, or None when ``key`` is new."""
        found = self.find(db, key)
        if found is None:
            return None
        if found[0] != fp:
            return key_reused(index)
        return found[1]

    def record(self, db, key: str, fp: bytes, result: Result, now: int) -> None:
        """Keep ``result`` as the answer to ``key`` (the oldest keys go beyond the bound)."""
        db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                   (key, fp, result.status, msgpack.packb(result.body), result.index, now))
        self._count += 1
        self._dirty = True
        excess = self._count - self.max_keys
        if excess > 0:
            deleted = db.execute(
                "DELETE FROM idempotency WHERE log_index IN "
                "(SELECT log_index FROM idempotency ORDER BY log_index LIMIT ?)", (excess,)
            ).rowcount
            self._count -= deleted


def recorded_answer(found: Optional[Tuple[bytes, Result]], fp: bytes) -> Optional[Result]:
    """What a node holding ``found`` (from ``IdempotencyRecords.find``) answers at once,
    without a log entry: the first answer again, or a 422 ``Refusal`` when the key was
    used for another request; None when it holds no record (the write goes through the
    log)."""
    if found is None:
        return None
    if found[0] != fp:
        raise _key_reused()
    return found[1]

"""A minimal replicated key-value store: the test and benchmark application's state machine.

Keys and values are bytes; the state lives in SQLite (``txraft.apps.sqlite``).  A write
may carry an ``Idempotency-Key`` (``txraft.apps.idempotency``): a repeat of the same
request (method, key, body) answers the first outcome again (its status and log index,
marked replayed) without applying it again; the same idempotency key with another
request is 422 ``idempotency_key_reused``.  Writes without a key take the path they
always took and cost nothing more.  Plain Python: its HTTP API is ``txraft.apps.kv_http``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional, Tuple

import msgpack
from zope.interface import implementer

from txraft.apps import idempotency
from txraft.apps.idempotency import IdempotencyRecords
from txraft import results
from txraft.results import Result, error_document
from txraft.apps.sqlite import SQLiteStateMachine
from txraft.interfaces import IStateMachine

OP_PUT = 0
OP_DELETE = 1


def encode_put(key: bytes, value: bytes) -> bytes:
    return msgpack.packb([OP_PUT, key, value])


def encode_delete(key: bytes) -> bytes:
    return msgpack.packb([OP_DELETE, key])


def fingerprint(command: bytes) -> bytes:
    """What makes two keyed writes "the same request": the plain command they encode
    (``encode_put``/``encode_delete``: method, key and value, unambiguously)."""
    return hashlib.sha256(command).digest()


def encode_keyed(command: bytes, ts: int, idempotency_key: str) -> bytes:
    """The plain ``command`` with the leader's time (ms) and an idempotency key after it:
    ``[0, key, value, ts, idempotency_key]`` or ``[1, key, ts, idempotency_key]``."""
    return msgpack.packb(msgpack.unpackb(command) + [ts, idempotency_key])


@implementer(IStateMachine)
class KVStateMachine(SQLiteStateMachine):
    """Keys and values are bytes; a command is msgpack ``[0, key, value]`` or ``[1, key]``,
    optionally followed by the leader's time and an idempotency key (``encode_keyed``).

    The result of a plain entry is ``None``, or an error document for a command that does
    not decode (every replica reaches the same verdict).  A keyed entry's result is an
    ``Result``: 204 at its own index, the first 204 again (its index,
    ``replayed``), or 422 ``idempotency_key_reused``.
    """

    ddl = (
        "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    ) + idempotency.DDL
    tables = (("kv", "key"), idempotency.TABLE)
    snapshot_format = "txraft.kv/2"

    def __init__(self, path: str, durable: bool = True,
                 idempotency_retention_ms: int = idempotency.DEFAULT_RETENTION_MS,
                 idempotency_max_keys: int = idempotency.DEFAULT_MAX_KEYS):
        self.idempotency = IdempotencyRecords(idempotency_retention_ms, idempotency_max_keys)
        super().__init__(path, durable)

    def load_meta(self, meta: dict) -> None:
        self.idempotency.load_meta(meta)

    def before_commit(self) -> None:
        self.idempotency.before_commit(self._db)

    def upgrade_image(self, image):
        # txraft.kv/1 (before idempotency keys): the same plus no records yet.
        if isinstance(image, dict) and image.get("format") == "txraft.kv/1" \
                and isinstance(image.get("tables"), dict) \
                and set(image["tables"]) == {"meta", "kv"}:
            tables = dict(image["tables"])
            tables["meta"] = list(tables["meta"]) + [list(row) for row in idempotency.INITIAL_META]
            tables[idempotency.TABLE[0]] = []
            return {"format": self.snapshot_format, "tables": tables}
        return image

    def apply_command(self, entry):
        try:
            command = msgpack.unpackb(entry.data, raw=False)
        except Exception:
            return error_document("invalid_command", "entry %d is not msgpack" % (entry.index,))
        if (
            isinstance(command, list)
            and len(command) >= 2
            and isinstance(command[1], bytes)
        ):
            op = command[0]
            if op == OP_PUT and len(command) == 3 and isinstance(command[2], bytes):
                self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (command[1], command[2]))
                return None
            if op == OP_DELETE and len(command) == 2:
                self._db.execute("DELETE FROM kv WHERE key = ?", (command[1],))
                return None
            if (op == OP_PUT and len(command) == 5 and isinstance(command[2], bytes)) or (
                    op == OP_DELETE and len(command) == 4):
                ts, key = command[-2:]
                if type(ts) is int and 0 <= ts < 2**62 and results.key_problem(key) is None:
                    return self._apply_keyed(command[:-2], ts, key, entry.index)
        return error_document("invalid_command", "entry %d is not a kv command" % (entry.index,))

    def _apply_keyed(self, command: list, ts: int, key: str, index: int) -> Result:
        db = self._db
        records = self.idempotency
        now = records.start(db, ts)
        fp = fingerprint(msgpack.packb(command))
        answer = records.answer(db, key, fp, index)
        if answer is not None:
            return answer
        if command[0] == OP_PUT:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (command[1], command[2]))
        else:
            db.execute("DELETE FROM kv WHERE key = ?", (command[1],))
        result = Result(204, None, index)
        records.record(db, key, fp, result, now)
        return result

    def get(self, key: bytes) -> Optional[bytes]:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def idempotency_record(self, key: str) -> Optional[Tuple[bytes, Result]]:
        """``(fingerprint, first answer)`` recorded for ``key``, or None."""
        return self.idempotency.find(self._db, key)


def open_state_machine(data_dir: str, durable: bool = True) -> KVStateMachine:
    os.makedirs(data_dir, exist_ok=True)
    return KVStateMachine(os.path.join(data_dir, "kv.db"), durable)

"""A minimal replicated key-value store: the test and benchmark application.

``PUT /kv/<key>`` (raw body) → 204, ``GET /kv/<key>`` → the raw value, ``DELETE /kv/<key>``
→ 204; writes answer with ``X-Raft-Index``.  Reads are linearizable unless
``?consistency=stale``; followers forward or redirect through ``txraft.http.web``.

A write may carry an ``Idempotency-Key`` (``txraft.apps.idempotency``): a repeat of the same
request (method, key, body) answers the first outcome again (its status and
``X-Raft-Index``, with ``Idempotent-Replayed: true``) without applying it again; the same
idempotency key with another request is 422 ``idempotency_key_reused``.  Writes without
the header take the path they always took and cost nothing more.

The state lives in SQLite.  ``SQLiteStateMachine`` is the durable, exactly-once part any
SQLite-backed application can reuse (the shop does): one file in WAL mode with
``synchronous=NORMAL``, one transaction per ``apply_batch`` that also records the applied
index and term, whole-database snapshots as msgpack.

Why NORMAL and not FULL: the Raft log, fsynced before any entry is applied, is the
durable record; the state machine is a cache of it, as etcd's bbolt is of its WAL.  With
NORMAL a transaction survives a killed process at once and an OS crash or power loss
once the WAL is checkpointed; a loss rolls the applied index back together with the
data (same transaction), and the node re-applies those entries from its log -- or, if
the log was compacted past them, restores the snapshot file, which is fsynced before any
compaction.  Exactly once either way, and one fsync fewer on every write's path.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

import msgpack
from twisted.web.resource import IResource
from zope.interface import implementer

from txraft.apps import idempotency
from txraft.apps.idempotency import (IdempotencyRecords, Result, recorded_answer, render_result,
                                request_key)
from txraft.interfaces import IStateMachine
from txraft.core.messages import ENTRY_NORMAL
from txraft.runtime.storage import fsync_directory
from txraft.http.web import Application, HTTPError, RaftHTTP, error_document, json_response

MAX_KEY_BYTES = 1024

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
            fsync_directory(os.path.dirname(os.path.abspath(path)))
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


# -- the key-value state machine ---------------------------------------------------------

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
    ``idempotency.Result``: 204 at its own index, the first 204 again (its index,
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
                if type(ts) is int and 0 <= ts < 2**62 and idempotency.key_problem(key) is None:
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


# -- HTTP ------------------------------------------------------------------------------


class KVAPI:
    """The Klein routes of the key-value store."""

    def __init__(self, http: RaftHTTP):
        self.http = http
        self.state_machine = http.node.state_machine
        self._app = None

    @property
    def app(self):
        """The Klein app, built on first use: ``KVResource`` answers the hot routes
        without it, and Klein with werkzeug is ~5 MiB of an idle node's memory."""
        if self._app is None:
            from klein import Klein

            app = Klein()
            app.route("/kv/<path:key>", methods=["GET"], endpoint="kv_get")(self.get)
            app.route("/kv/<path:key>", methods=["PUT"], endpoint="kv_put")(self.put)
            app.route("/kv/<path:key>", methods=["DELETE"], endpoint="kv_delete")(self.delete)
            self.http.install(app)
            self._app = app
        return self._app

    @staticmethod
    def _key(key: str) -> bytes:
        raw = key.encode("utf-8")
        if len(raw) > MAX_KEY_BYTES:
            raise HTTPError(422, "invalid_value", "key is over %d bytes" % (MAX_KEY_BYTES,),
                            field="key")
        return raw

    def get(self, request, key):
        raw = self._key(key)
        return self.http.read(request, lambda: self._value(request, raw))

    def _value(self, request, key: bytes):
        value = self.state_machine.get(key)
        if value is None:
            raise HTTPError(404, "not_found", "no such key")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return value

    def put(self, request, key):
        raw = self._key(key)
        command = encode_put(raw, self.http.body(request))
        if request.getHeader(idempotency.HEADER) is not None:
            return self._write_keyed(request, command)
        return self.http.write(request, command,
                               lambda index, result: self._written(request, index, result))

    def delete(self, request, key):
        raw = self._key(key)
        command = encode_delete(raw)
        if request.getHeader(idempotency.HEADER) is not None:
            return self._write_keyed(request, command)
        return self.http.write(request, command,
                               lambda index, result: self._written(request, index, result))

    def _write_keyed(self, request, command: bytes):
        """A write with an ``Idempotency-Key``: answered from this node's record when it
        holds one, else proposed with the key and the leader's time."""
        key = request_key(request)
        recorded = recorded_answer(self.state_machine.idempotency_record(key),
                                   fingerprint(command))
        if recorded is not None:
            return render_result(request, recorded)
        keyed = encode_keyed(command, int(self.http.clock.seconds() * 1000), key)
        return self.http.write(request, keyed,
                               lambda index, result: self._written(request, index, result))

    @staticmethod
    def _written(request, index, result):
        if result is None:
            request.setHeader(b"X-Raft-Index", b"%d" % (index,))
            request.setResponseCode(204)
            return b""
        if isinstance(result, Result):
            return render_result(request, result)
        request.setHeader(b"X-Raft-Index", b"%d" % (index,))
        return json_response(request, 500, result)


@implementer(IResource)
class KVResource:
    """The HTTP root of the key-value store: ``GET``/``PUT``/``DELETE /kv/<key>`` are
    matched here and answered through ``RaftHTTP.serve``; everything else (other
    methods, other paths, keys the route would not match) goes to the Klein app.

    Measured on this project's benchmark machine, Klein answers about half as many
    requests per CPU second as plain twisted.web; these routes are the benchmark's and
    most clients' whole traffic.
    """

    isLeaf = True

    def __init__(self, api: KVAPI):
        self.api = api
        self.http = api.http
        self._fallback = None
        self._routes = {b"GET": api.get, b"PUT": api.put, b"DELETE": api.delete}
        http = api.http
        # Polled by clients, load balancers and orchestrators: answering them must not
        # load Klein into an otherwise idle node.
        self._plain = {
            b"/raft/status": http.raft_status,
            b"/health": http.health,
            b"/ready": http.ready,
            b"/metrics": http.metrics,
        }

    @property
    def fallback(self):
        """The Klein app's resource, for everything the hot routes do not match."""
        if self._fallback is None:
            self._fallback = self.api.app.resource()
        return self._fallback

    def getChildWithDefault(self, name, request):  # pragma: no cover - isLeaf
        return self

    def putChild(self, path, child):  # pragma: no cover - never used
        raise NotImplementedError("KVResource has no children")

    def render(self, request):
        path = request.path
        if path[:4] == b"/kv/":
            handler = self._routes.get(request.method)
            if handler is not None:
                key = _route_key(path[4:])
                if key is not None:
                    return self.http.serve(request, handler, key)
        elif request.method == b"GET":
            handler = self._plain.get(path)
            if handler is not None:
                return self.http.serve(request, handler)
        return self.fallback.render(request)


def _route_key(raw: bytes) -> Optional[str]:
    """The key the Klein route ``/kv/<path:key>`` would match in ``raw`` (the path after
    ``/kv/``), or ``None`` when that route would not match it as is (no key, a leading
    slash werkzeug redirects, a newline, not UTF-8): those go to Klein."""
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    if not raw or raw[:1] == b"/" or b"\n" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def make_resource(node, clock, http_client):
    return KVResource(KVAPI(RaftHTTP(node, clock, http_client)))


application = Application("kv", open_state_machine, make_resource)

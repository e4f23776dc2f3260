"""The shop's replicated state machine: products, customers, orders on SQLite.

Determinism: applying the same entries gives every replica byte-identical tables.  Nothing
here reads a clock, draws a random number or iterates an unordered collection:

* ids come from the log index of the entry that created the row (``p12``, ``c7``,
  ``o40``): opaque to clients, unique, identical everywhere;
* time comes from the command: the proposing leader stamps ``ts`` (milliseconds since the
  epoch) and the state machine uses ``now = max(ts, last now)``, so timestamps never go
  backwards even across leaders whose clocks disagree;
* each command runs inside a SAVEPOINT: a command that is refused (validation, conflict,
  precondition) rolls back whatever it touched, so an order changes all of its lines'
  stock or none.

Commands are msgpack maps ``{"op", "ts", "id"?, "data"?, "ifm"?, "key"?, "fp"?}``:
``ifm`` lists the versions an ``If-Match`` accepts, ``key``/``fp`` are the idempotency key
and the request fingerprint.  The result of an entry is a ``Result``: the HTTP status and
JSON body of the answer, and the log index that first produced it.

Idempotency records and their retention are ``txraft.apps.idempotency``'s (the key-value
store keeps them the same way): a record is deleted when a later command's ``now`` is
more than ``idempotency_retention_ms`` (24 hours by default) past the record's, and the
oldest records (by log index) are deleted when there are more than
``idempotency_max_keys`` (100,000 by default).  Both are checked at every command.
Every replica must run with the same two values.  Answers with status 500 (a bug) and
422 ``idempotency_key_reused`` are not recorded.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
import msgpack
from zope.interface import implementer

from txraft.apps import idempotency
from txraft.results import Result
from txraft.apps.sqlite import SQLiteStateMachine
from txraft.interfaces import IStateMachine

from shop import schema
from shop.schema import Refusal, ascii_lower

DAY_MS = idempotency.DAY_MS
DEFAULT_IDEMPOTENCY_RETENTION_MS = idempotency.DEFAULT_RETENTION_MS
DEFAULT_IDEMPOTENCY_MAX_KEYS = idempotency.DEFAULT_MAX_KEYS

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def iso_time(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds."""
    moment = _EPOCH + datetime.timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ms % 1000,)


def error(status: int, code: str, message: str, field: Optional[str] = None) -> Refusal:
    return Refusal(status, code, message, field)


def not_found(kind: str, ident: str) -> Refusal:
    return error(404, "not_found", "no %s with id %s" % (kind, ident))


@attrs.frozen
class Kind:
    """A simple resource (products, customers): its table, id prefix and fields."""

    name: str
    prefix: str
    table: str
    fields: Tuple[schema.Field, ...]


PRODUCT = Kind("product", "p", "products", schema.PRODUCT_FIELDS)
CUSTOMER = Kind("customer", "c", "customers", schema.CUSTOMER_FIELDS)
KINDS = {"p": PRODUCT, "c": CUSTOMER}

SCHEMA = idempotency.DDL + (
    """CREATE TABLE IF NOT EXISTS products (
        seq INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT, category TEXT,
        sku TEXT UNIQUE, price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
        stock INTEGER NOT NULL CHECK (stock >= 0), version INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS products_category ON products (category)",
    """CREATE TABLE IF NOT EXISTS customers (
        seq INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, address TEXT,
        email_key TEXT NOT NULL UNIQUE, version INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS orders (
        seq INTEGER PRIMARY KEY, customer_seq INTEGER NOT NULL, status TEXT NOT NULL,
        total_cents INTEGER NOT NULL, version INTEGER NOT NULL,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_seq)",
    "CREATE INDEX IF NOT EXISTS orders_status ON orders (status)",
    """CREATE TABLE IF NOT EXISTS order_lines (
        order_seq INTEGER NOT NULL, line_no INTEGER NOT NULL, product_seq INTEGER NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0), unit_price_cents INTEGER NOT NULL,
        PRIMARY KEY (order_seq, line_no)) WITHOUT ROWID""",
)

PRODUCT_COLUMNS = "seq, name, description, category, sku, price_cents, stock, version, created_ms, updated_ms"
CUSTOMER_COLUMNS = "seq, name, email, address, version, created_ms, updated_ms"
ORDER_COLUMNS = "seq, customer_seq, status, total_cents, version, created_ms, updated_ms"


def parse_id(prefix: str, ident: Any) -> Optional[int]:
    """The sequence number behind id ``ident`` of a kind, or None (no such id can exist)."""
    if type(ident) is not str or len(ident) < 2 or ident[0] != prefix:
        return None
    digits = ident[1:]
    if not digits.isascii() or not digits.isdigit() or digits[0] == "0" or len(digits) > 18:
        return None
    return int(digits)


def product_document(row) -> dict:
    seq, name, description, category, sku, price_cents, stock, version, created, updated = row
    return {
        "id": "p%d" % (seq,), "name": name, "description": description, "category": category,
        "sku": sku, "price_cents": price_cents, "stock": stock, "version": version,
        "created_at": iso_time(created), "updated_at": iso_time(updated),
    }


def customer_document(row) -> dict:
    seq, name, email, address, version, created, updated = row
    return {
        "id": "c%d" % (seq,), "name": name, "email": email, "address": address,
        "version": version, "created_at": iso_time(created), "updated_at": iso_time(updated),
    }


def order_document(row, lines) -> dict:
    seq, customer_seq, status, total_cents, version, created, updated = row
    return {
        "id": "o%d" % (seq,), "customer_id": "c%d" % (customer_seq,), "status": status,
        "items": [
            {"product_id": "p%d" % (product_seq,), "quantity": quantity,
             "unit_price_cents": unit_price}
            for product_seq, quantity, unit_price in lines
        ],
        "total_cents": total_cents, "version": version,
        "created_at": iso_time(created), "updated_at": iso_time(updated),
    }


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@implementer(IStateMachine)
class ShopStateMachine(SQLiteStateMachine):
    ddl = SCHEMA
    tables = (
        ("products", "seq"),
        ("customers", "seq"),
        ("orders", "seq"),
        ("order_lines", "order_seq, line_no"),
        idempotency.TABLE,
    )
    snapshot_format = "shop/1"

    def __init__(self, path: str, idempotency_retention_ms: int = DEFAULT_IDEMPOTENCY_RETENTION_MS,
                 idempotency_max_keys: int = DEFAULT_IDEMPOTENCY_MAX_KEYS, durable: bool = True):
        self.idempotency = idempotency.IdempotencyRecords(idempotency_retention_ms,
                                                          idempotency_max_keys)
        super().__init__(path, durable)
        self._operations = {
            "product.create": self._create_simple,
            "product.replace": self._replace_simple,
            "product.patch": self._patch_simple,
            "product.delete": self._delete_simple,
            "customer.create": self._create_simple,
            "customer.replace": self._replace_simple,
            "customer.patch": self._patch_simple,
            "customer.delete": self._delete_simple,
            "order.create": self._create_order,
            "order.replace": self._replace_order,
            "order.patch": self._patch_order,
            "order.delete": self._delete_order,
        }

    def load_meta(self, meta: dict) -> None:
        self.idempotency.load_meta(meta)

    def before_commit(self) -> None:
        self.idempotency.before_commit(self._db)

    # -- applying -------------------------------------------------------------------------

    def apply_command(self, entry) -> Result:
        index = entry.index
        try:
            command = msgpack.unpackb(entry.data, raw=False)
        except Exception:
            return Result(400, error(400, "invalid_command", "entry is not msgpack").document(), index)
        problem = _command_problem(command, self._operations)
        if problem is not None:
            return Result(400, error(400, "invalid_command", problem).document(), index)
        db = self._db
        now = self.idempotency.start(db, command["ts"])
        key = command.get("key")
        if key is not None:
            answer = self.idempotency.answer(db, key, command["fp"], index)
            if answer is not None:
                return answer
        db.execute("SAVEPOINT command")
        try:
            status, body = self._operations[command["op"]](command, index, now)
        except Refusal as refusal:
            status, body = refusal.status, refusal.document()
        except (ValueError, TypeError, KeyError, OverflowError, sqlite3.IntegrityError) as e:
            # A bug, but a deterministic one: every replica refuses the same way.
            status, body = 500, error(500, "internal_error",
                                      "command failed: %s" % (type(e).__name__,)).document()
        if status >= 300:
            db.execute("ROLLBACK TO command")
        db.execute("RELEASE command")
        result = Result(status, body, index)
        if key is not None and status != 500:
            self.idempotency.record(db, key, command["fp"], result, now)
        return result

    # -- products and customers -------------------------------------------------------------

    def _kind(self, command) -> Kind:
        return PRODUCT if command["op"].startswith("product.") else CUSTOMER

    def _existing(self, kind: Kind, command) -> Tuple[int, int]:
        """(seq, version) of the command's target, 404 when absent, 412 on If-Match."""
        ident = command.get("id")
        seq = parse_id(kind.prefix, ident)
        row = None if seq is None else self._db.execute(
            "SELECT version FROM %s WHERE seq = ?" % (kind.table,), (seq,)).fetchone()
        if row is None:
            raise not_found(kind.name, str(ident))
        _check_if_match(command, row[0])
        return seq, row[0]

    def _check_unique(self, kind: Kind, values: dict, seq: int) -> None:
        db = self._db
        if kind is PRODUCT:
            sku = values.get("sku")
            if sku is not None and db.execute(
                    "SELECT 1 FROM products WHERE sku = ? AND seq != ?", (sku, seq)).fetchone():
                raise error(409, "duplicate_sku", "another product has sku %s" % (sku,), "sku")
        elif "email" in values:
            if db.execute("SELECT 1 FROM customers WHERE email_key = ? AND seq != ?",
                          (ascii_lower(values["email"]), seq)).fetchone():
                raise error(409, "duplicate_email", "another customer has this email", "email")

    def _write_simple(self, kind: Kind, seq: int, values: dict, now: int, version: int) -> dict:
        """Insert (version 1) or update (later versions) a product or customer row."""
        db = self._db
        if kind is PRODUCT:
            row = (values["name"], values["description"], values["category"], values["sku"],
                   values["price_cents"], values["stock"], version, now)
            if version == 1:
                db.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq,) + row[:-1] + (now, now))
            else:
                db.execute("UPDATE products SET name = ?, description = ?, category = ?, sku = ?, "
                           "price_cents = ?, stock = ?, version = ?, updated_ms = ? WHERE seq = ?",
                           row + (seq,))
        else:
            row = (values["name"], values["email"], values["address"],
                   ascii_lower(values["email"]), version, now)
            if version == 1:
                db.execute("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq,) + row[:-1] + (now, now))
            else:
                db.execute("UPDATE customers SET name = ?, email = ?, address = ?, email_key = ?, "
                           "version = ?, updated_ms = ? WHERE seq = ?", row + (seq,))
        return self._simple_document(kind, seq)

    def _simple_document(self, kind: Kind, seq: int) -> Optional[dict]:
        if kind is PRODUCT:
            row = self._db.execute(
                "SELECT %s FROM products WHERE seq = ?" % (PRODUCT_COLUMNS,), (seq,)).fetchone()
            return None if row is None else product_document(row)
        row = self._db.execute(
            "SELECT %s FROM customers WHERE seq = ?" % (CUSTOMER_COLUMNS,), (seq,)).fetchone()
        return None if row is None else customer_document(row)

    def _create_simple(self, command, index, now):
        kind = self._kind(command)
        values = schema.validate_full(kind.fields, command.get("data"))
        self._check_unique(kind, values, index)
        return 201, self._write_simple(kind, index, values, now, 1)

    def _replace_simple(self, command, index, now):
        kind = self._kind(command)
        seq, version = self._existing(kind, command)
        values = schema.validate_full(kind.fields, command.get("data"))
        self._check_unique(kind, values, seq)
        return 200, self._write_simple(kind, seq, values, now, version + 1)

    def _patch_simple(self, command, index, now):
        kind = self._kind(command)
        seq, version = self._existing(kind, command)
        patch = schema.validate_patch(kind.fields, command.get("data"))
        values = self._simple_document(kind, seq)
        values.update(patch)
        self._check_unique(kind, patch, seq)
        return 200, self._write_simple(kind, seq, values, now, version + 1)

    def _delete_simple(self, command, index, now):
        kind = self._kind(command)
        seq, _ = self._existing(kind, command)
        self._db.execute("DELETE FROM %s WHERE seq = ?" % (kind.table,), (seq,))
        return 204, None

    # -- orders ----------------------------------------------------------------------------

    def _existing_order(self, command) -> Tuple[int, int, str]:
        ident = command.get("id")
        seq = parse_id("o", ident)
        row = None if seq is None else self._db.execute(
            "SELECT version, status FROM orders WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise not_found("order", str(ident))
        _check_if_match(command, row[0])
        return seq, row[0], row[1]

    def _customer_seq(self, customer_id: str) -> int:
        seq = parse_id("c", customer_id)
        if seq is None or not self._db.execute(
                "SELECT 1 FROM customers WHERE seq = ?", (seq,)).fetchone():
            raise error(422, "unknown_customer", "no customer with id %s" % (customer_id,),
                        "customer_id")
        return seq

    def _take_stock(self, items: List[Tuple[str, int]], now: int) -> List[Tuple[int, int, int]]:
        """Check and decrement stock for every line, or refuse; return the order lines."""
        db = self._db
        lines = []
        needed: Dict[int, int] = {}
        for i, (product_id, quantity) in enumerate(items):
            seq = parse_id("p", product_id)
            row = None if seq is None else db.execute(
                "SELECT price_cents, stock FROM products WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise error(422, "unknown_product", "no product with id %s" % (product_id,),
                            "items[%d].product_id" % (i,))
            price, available = row
            needed[seq] = needed.get(seq, 0) + quantity
            if needed[seq] > available:
                raise error(409, "insufficient_stock",
                            "product %s has %d in stock, the order needs %d"
                            % (product_id, available, needed[seq]),
                            "items[%d].quantity" % (i,))
            lines.append((seq, quantity, price))
        for seq, quantity in needed.items():  # insertion order: the order of the lines
            db.execute("UPDATE products SET stock = stock - ?, version = version + 1, "
                       "updated_ms = ? WHERE seq = ?", (quantity, now, seq))
        return lines

    def _return_stock(self, order_seq: int, now: int) -> None:
        """Put an order's units back on the shelves (lines of deleted products are lost)."""
        db = self._db
        rows = db.execute(
            "SELECT product_seq, SUM(quantity) FROM order_lines WHERE order_seq = ? "
            "GROUP BY product_seq ORDER BY product_seq", (order_seq,)).fetchall()
        db.executemany("UPDATE products SET stock = stock + ?, version = version + 1, "
                       "updated_ms = ? WHERE seq = ?",
                       [(quantity, now, seq) for seq, quantity in rows])

    def _write_lines(self, order_seq: int, lines) -> int:
        self._db.execute("DELETE FROM order_lines WHERE order_seq = ?", (order_seq,))
        self._db.executemany(
            "INSERT INTO order_lines VALUES (?, ?, ?, ?, ?)",
            [(order_seq, n, seq, quantity, price) for n, (seq, quantity, price) in enumerate(lines)])
        return sum(quantity * price for _, quantity, price in lines)

    def _create_order(self, command, index, now):
        order = schema.validate_order(command.get("data"))
        customer_seq = self._customer_seq(order["customer_id"])
        lines = self._take_stock(order["items"], now)
        total = self._write_lines(index, lines)
        self._db.execute("INSERT INTO orders VALUES (?, ?, 'pending', ?, 1, ?, ?)",
                         (index, customer_seq, total, now, now))
        return 201, self.order_by_seq(index)

    def _replace_order(self, command, index, now):
        seq, version, status = self._existing_order(command)
        order = schema.validate_order(command.get("data"), require_customer=False)
        if status != "pending":
            raise error(409, "invalid_transition",
                        "only a pending order's items can be replaced; this one is %s" % (status,))
        customer_seq = None
        if order["customer_id"] is not None:
            customer_seq = self._customer_seq(order["customer_id"])
        self._return_stock(seq, now)
        lines = self._take_stock(order["items"], now)
        total = self._write_lines(seq, lines)
        self._db.execute(
            "UPDATE orders SET customer_seq = COALESCE(?, customer_seq), total_cents = ?, "
            "version = ?, updated_ms = ? WHERE seq = ?", (customer_seq, total, version + 1, now, seq))
        return 200, self.order_by_seq(seq)

    def _patch_order(self, command, index, now):
        seq, version, status = self._existing_order(command)
        new_status = schema.validate_status_patch(command.get("data"))
        if new_status not in schema.TRANSITIONS[status]:
            raise error(409, "invalid_transition",
                        "an order cannot go from %s to %s" % (status, new_status), "status")
        if new_status == "cancelled":
            self._return_stock(seq, now)
        self._db.execute("UPDATE orders SET status = ?, version = ?, updated_ms = ? WHERE seq = ?",
                         (new_status, version + 1, now, seq))
        return 200, self.order_by_seq(seq)

    def _delete_order(self, command, index, now):
        seq, version, status = self._existing_order(command)
        if status == "shipped":
            raise error(409, "invalid_transition", "a shipped order cannot be deleted")
        if status != "cancelled":
            self._return_stock(seq, now)
        self._db.execute("DELETE FROM order_lines WHERE order_seq = ?", (seq,))
        self._db.execute("DELETE FROM orders WHERE seq = ?", (seq,))
        return 204, None

    # -- reads (the HTTP layer calls these after a read barrier, or stale) ------------------

    def get(self, prefix: str, ident: str) -> Optional[dict]:
        """The document with id ``ident`` of the kind with id prefix ``prefix``, or None."""
        seq = parse_id(prefix, ident)
        if seq is None:
            return None
        if prefix == "o":
            return self.order_by_seq(seq)
        return self._simple_document(KINDS[prefix], seq)

    def order_by_seq(self, seq: int) -> Optional[dict]:
        db = self._db
        row = db.execute("SELECT %s FROM orders WHERE seq = ?" % (ORDER_COLUMNS,), (seq,)).fetchone()
        if row is None:
            return None
        lines = db.execute("SELECT product_seq, quantity, unit_price_cents FROM order_lines "
                           "WHERE order_seq = ? ORDER BY line_no", (seq,)).fetchall()
        return order_document(row, lines)

    def _page(self, table, columns, where, params, limit, offset):
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        total = self._db.execute("SELECT COUNT(*) FROM %s%s" % (table, clause), params).fetchone()[0]
        rows = self._db.execute(
            "SELECT %s FROM %s%s ORDER BY seq LIMIT ? OFFSET ?" % (columns, table, clause),
            params + [limit, offset]).fetchall()
        return rows, total

    def list_products(self, category=None, q=None, min_price_cents=None, max_price_cents=None,
                      in_stock=None, limit=schema.DEFAULT_LIMIT, offset=0):
        where, params = [], []
        if category is not None:
            where.append("category = ?")
            params.append(category)
        if q is not None:
            where.append("name LIKE ? ESCAPE '\\'")
            params.append(_like(q))
        if min_price_cents is not None:
            where.append("price_cents >= ?")
            params.append(min_price_cents)
        if max_price_cents is not None:
            where.append("price_cents <= ?")
            params.append(max_price_cents)
        if in_stock is not None:
            where.append("stock > 0" if in_stock else "stock = 0")
        rows, total = self._page("products", PRODUCT_COLUMNS, where, params, limit, offset)
        return [product_document(row) for row in rows], total

    def list_customers(self, q=None, email=None, limit=schema.DEFAULT_LIMIT, offset=0):
        where, params = [], []
        if q is not None:
            where.append("name LIKE ? ESCAPE '\\'")
            params.append(_like(q))
        if email is not None:
            where.append("email_key = ?")
            params.append(ascii_lower(email))
        rows, total = self._page("customers", CUSTOMER_COLUMNS, where, params, limit, offset)
        return [customer_document(row) for row in rows], total

    def list_orders(self, customer_id=None, status=None, limit=schema.DEFAULT_LIMIT, offset=0):
        where, params = [], []
        if customer_id is not None:
            where.append("customer_seq = ?")
            params.append(parse_id("c", customer_id) or -1)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        rows, total = self._page("orders", ORDER_COLUMNS, where, params, limit, offset)
        lines: Dict[int, list] = {row[0]: [] for row in rows}
        if rows:
            marks = ",".join("?" * len(rows))
            for order_seq, product_seq, quantity, price in self._db.execute(
                    "SELECT order_seq, product_seq, quantity, unit_price_cents FROM order_lines "
                    "WHERE order_seq IN (%s) ORDER BY order_seq, line_no" % (marks,),
                    [row[0] for row in rows]):
                lines[order_seq].append((product_seq, quantity, price))
        return [order_document(row, lines[row[0]]) for row in rows], total

    def idempotency_record(self, key: str) -> Optional[Tuple[bytes, Result]]:
        """``(fingerprint, first answer)`` recorded for ``key``, or None."""
        return self.idempotency.find(self._db, key)


def _check_if_match(command, version: int) -> None:
    accepted = command.get("ifm")
    if accepted is not None and version not in accepted:
        raise error(412, "precondition_failed",
                    "If-Match does not match the current version %d" % (version,))


def _command_problem(command, operations) -> Optional[str]:
    """Why ``command`` is not a well-formed shop command, or None."""
    if type(command) is not dict:
        return "a command is a map"
    if command.get("op") not in operations:
        return "unknown operation %r" % (command.get("op"),)
    ts = command.get("ts")
    if type(ts) is not int or not 0 <= ts < 2**62:
        return "ts must be a non-negative integer"
    if "id" in command and type(command["id"]) is not str:
        return "id must be a string"
    ifm = command.get("ifm")
    if ifm is not None and (type(ifm) is not list or any(type(v) is not int for v in ifm)):
        return "ifm must be a list of integers"
    key = command.get("key")
    if key is not None:
        try:
            schema.check_idempotency_key(key)
        except Refusal as refusal:
            return refusal.message
        if type(command.get("fp")) is not bytes or len(command["fp"]) != 32:
            return "fp must be 32 bytes"
    return None


def encode_command(op: str, ts: int, ident: Optional[str] = None, data: Any = None,
                   if_match: Optional[Sequence[int]] = None, key: Optional[str] = None,
                   fp: Optional[bytes] = None) -> bytes:
    """The log entry payload for one shop command (see the module docstring)."""
    command: Dict[str, Any] = {"op": op, "ts": ts}
    if ident is not None:
        command["id"] = ident
    if data is not None:
        command["data"] = data
    if if_match is not None:
        command["ifm"] = list(if_match)
    if key is not None:
        command["key"] = key
        command["fp"] = fp
    return msgpack.packb(command)


def open_state_machine(data_dir: str, durable: bool = True) -> ShopStateMachine:
    os.makedirs(data_dir, exist_ok=True)
    return ShopStateMachine(os.path.join(data_dir, "shop.db"), durable=durable)

"""The shop's state machine: every command and every refusal, exactly-once apply,
idempotency and its retention, snapshots, and replica convergence."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txraft.interfaces import IStateMachine
from txraft.core.messages import ENTRY_NOOP, Entry

from shop import schema, state
from shop.state import ShopStateMachine, encode_command, iso_time

FP_A = b"a" * 32
FP_B = b"b" * 32


class ShopCase(SynchronousTestCase):
    """Opens a fresh shop state machine and applies commands one entry at a time."""

    def setUp(self):
        self.dir = self.mktemp()
        self.sm = self.open()
        self.addCleanup(lambda: self.sm.close())
        self.ts = 1_000_000

    def open(self, **kwargs):
        # fsync is off here: what these tests check does not depend on it, and the
        # durable settings have their own test.
        os.makedirs(self.dir, exist_ok=True)
        kwargs.setdefault("durable", False)
        return ShopStateMachine(os.path.join(self.dir, "shop.db"), **kwargs)

    def reopen(self, **kwargs):
        self.sm.close()
        self.sm = self.open(**kwargs)

    def apply(self, op, data=None, ident=None, ts=None, ifm=None, key=None, fp=None):
        if ts is None:
            self.ts += 1000
            ts = self.ts
        index = self.sm.applied_index() + 1
        entry = Entry(index, 1, encode_command(op, ts, ident, data, ifm, key, fp))
        [result] = self.sm.apply_batch([entry])
        return result

    def assertRefused(self, result, status, code, field=None):
        self.assertEqual(result.status, status, result)
        self.assertEqual(result.body["error"]["code"], code, result)
        if field is not None:
            self.assertEqual(result.body["error"].get("field"), field, result)

    def product(self, **fields):
        data = {"name": "Mug", "price_cents": 500, "stock": 10}
        data.update(fields)
        result = self.apply("product.create", data)
        self.assertEqual(result.status, 201, result)
        return result.body

    def customer(self, **fields):
        data = {"name": "Ann", "email": "ann@example.com"}
        data.update(fields)
        result = self.apply("customer.create", data)
        self.assertEqual(result.status, 201, result)
        return result.body

    def order(self, customer_id, *items):
        result = self.apply("order.create", {
            "customer_id": customer_id,
            "items": [{"product_id": p, "quantity": q} for p, q in items]})
        return result

    def stock(self, product_id):
        return self.sm.get("p", product_id)["stock"]


class BasicsTests(ShopCase):
    def test_provides_interface(self):
        """ShopStateMachine provides IStateMachine."""
        self.assertTrue(verifyObject(IStateMachine, self.sm))

    def test_durability_settings(self):
        """By default: one shop.db file in WAL mode with synchronous=NORMAL: the Raft log is
        the durable record, and a rolled-back state machine re-applies from it."""
        self.sm.close()
        self.sm = ShopStateMachine(os.path.join(self.dir, "shop.db"))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "shop.db")))
        self.assertEqual(self.sm._db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.sm._db.execute("PRAGMA synchronous").fetchone()[0], 1)

    def test_open_state_machine(self):
        """open_state_machine(data_dir) creates the directory and shop.db in it."""
        data_dir = os.path.join(self.mktemp(), "node")
        sm = state.open_state_machine(data_dir)
        self.addCleanup(sm.close)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "shop.db")))

    def test_iso_time(self):
        """Leader-stamped milliseconds render as ISO 8601 UTC with milliseconds."""
        self.assertEqual(iso_time(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(iso_time(1795689172123), "2026-11-26T10:32:52.123Z")

    def test_noop(self):
        """A NOOP entry advances the applied index and has no result."""
        self.assertEqual(self.sm.apply_batch([Entry(1, 2, b"", ENTRY_NOOP)]), [None])
        self.assertEqual(self.sm.applied_index(), 1)

    def test_malformed_commands(self):
        """Undecodable or ill-formed commands are 400 invalid_command and change nothing."""
        bad = [
            b"\xc1",
            msgpack.packb([1, 2]),
            msgpack.packb({"op": "product.explode", "ts": 1}),
            msgpack.packb({"op": "product.create", "ts": -1, "data": {}}),
            msgpack.packb({"op": "product.create", "ts": "now", "data": {}}),
            msgpack.packb({"op": "product.delete", "ts": 1, "id": 5}),
            msgpack.packb({"op": "product.delete", "ts": 1, "id": "p1", "ifm": ["1"]}),
            msgpack.packb({"op": "product.delete", "ts": 1, "id": "p1", "key": "k"}),
            msgpack.packb({"op": "product.delete", "ts": 1, "id": "p1", "key": "", "fp": FP_A}),
        ]
        before = self.sm.dump()
        results = self.sm.apply_batch([Entry(i + 1, 1, d) for i, d in enumerate(bad)])
        for result in results:
            self.assertRefused(result, 400, "invalid_command")
        self.assertEqual(self.sm.applied_index(), len(bad))
        after = msgpack.unpackb(self.sm.dump())["tables"]
        self.assertEqual({k: v for k, v in after.items() if k != "meta"},
                         {k: v for k, v in msgpack.unpackb(before)["tables"].items() if k != "meta"})

    def test_time_never_goes_backwards(self):
        """A command stamped earlier than the last one is applied at the last time seen."""
        p = self.product()
        result = self.apply("product.patch", {"stock": 1}, p["id"], ts=5)
        self.assertEqual(result.body["updated_at"], p["updated_at"])

    def test_internal_errors_are_deterministic_refusals(self):
        """A command that trips an unexpected error is refused (500) and rolled back."""
        p = self.product()
        self.sm._operations["product.delete"] = lambda command, index, now: (
            self.sm._db.execute("DELETE FROM products"), {}["missing"])
        result = self.apply("product.delete", ident=p["id"])
        self.assertRefused(result, 500, "internal_error")
        self.assertIsNotNone(self.sm.get("p", p["id"]))


class ProductTests(ShopCase):
    def test_create(self):
        """Creating a product gives 201 with id, fields, version 1 and timestamps."""
        result = self.apply("product.create", {"name": "Mug", "price_cents": 1250, "stock": 3,
                                               "category": "kitchen", "sku": "MUG-1",
                                               "description": "Blue"}, ts=1795689172123)
        self.assertEqual(result.status, 201)
        self.assertEqual(result.index, 1)
        self.assertEqual(result.body, {
            "id": "p1", "name": "Mug", "description": "Blue", "category": "kitchen",
            "sku": "MUG-1", "price_cents": 1250, "stock": 3, "version": 1,
            "created_at": "2026-11-26T10:32:52.123Z", "updated_at": "2026-11-26T10:32:52.123Z"})
        self.assertEqual(self.sm.get("p", "p1"), result.body)

    def test_ids_follow_the_log(self):
        """Ids are derived from the creating entry's index, so every replica agrees."""
        self.apply("product.create", {"name": "x"})  # refused, still uses index 1
        self.assertEqual(self.product()["id"], "p2")
        self.assertEqual(self.customer()["id"], "c3")

    def test_create_validation(self):
        """Missing, unknown, mistyped and out-of-range fields are 422 naming the field."""
        cases = [
            ({"price_cents": 1, "stock": 1}, "missing_field", "name"),
            ({"name": "a", "stock": 1}, "missing_field", "price_cents"),
            ({"name": "a", "price_cents": 1, "stock": 1, "colour": "red"}, "unknown_field", "colour"),
            ({"name": "a", "price_cents": "1", "stock": 1}, "invalid_type", "price_cents"),
            ({"name": "a", "price_cents": 1.0, "stock": 1}, "invalid_type", "price_cents"),
            ({"name": "a", "price_cents": True, "stock": 1}, "invalid_type", "price_cents"),
            ({"name": "a", "price_cents": -1, "stock": 1}, "invalid_value", "price_cents"),
            ({"name": "a", "price_cents": 1, "stock": -5}, "invalid_value", "stock"),
            ({"name": "a", "price_cents": schema.MAX_PRICE_CENTS + 1, "stock": 1},
             "invalid_value", "price_cents"),
            ({"name": "  ", "price_cents": 1, "stock": 1}, "invalid_value", "name"),
            ({"name": "a" * 201, "price_cents": 1, "stock": 1}, "invalid_value", "name"),
            ({"name": 7, "price_cents": 1, "stock": 1}, "invalid_type", "name"),
            ({"name": None, "price_cents": 1, "stock": 1}, "invalid_type", "name"),
            ({"name": "a", "price_cents": 1, "stock": 1, "sku": ""}, "invalid_value", "sku"),
        ]
        for data, code, field in cases:
            self.assertRefused(self.apply("product.create", data), 422, code, field)
        self.assertRefused(self.apply("product.create", ["not", "an", "object"]), 422, "invalid_type")
        self.assertEqual(self.sm.list_products()[1], 0)

    def test_duplicate_sku(self):
        """A second product with the same sku is 409 duplicate_sku and is not created."""
        self.product(sku="S1")
        self.assertRefused(self.apply("product.create", {"name": "b", "price_cents": 1,
                                                         "stock": 1, "sku": "S1"}),
                           409, "duplicate_sku", "sku")
        self.assertEqual(self.sm.list_products()[1], 1)
        self.product(sku=None)
        self.product()  # products without sku do not collide

    def test_replace(self):
        """PUT replaces every field: absent optional fields become null, version grows."""
        p = self.product(sku="S1", category="c", description="d")
        result = self.apply("product.replace", {"name": "Cup", "price_cents": 1, "stock": 2},
                            p["id"])
        self.assertEqual(result.status, 200)
        body = result.body
        self.assertEqual((body["name"], body["sku"], body["category"], body["description"]),
                         ("Cup", None, None, None))
        self.assertEqual((body["version"], body["created_at"]), (2, p["created_at"]))
        self.assertNotEqual(body["updated_at"], p["updated_at"])

    def test_replace_refusals(self):
        """PUT: 404 unknown id, 422 incomplete body, 409 someone else's sku."""
        p = self.product()
        self.product(sku="TAKEN")
        full = {"name": "a", "price_cents": 1, "stock": 1}
        for ident in ("p99", "x1", "p01", "p", "c1", ""):
            self.assertRefused(self.apply("product.replace", full, ident), 404, "not_found")
        self.assertRefused(self.apply("product.replace", {"name": "a"}, p["id"]),
                           422, "missing_field")
        self.assertRefused(self.apply("product.replace", dict(full, sku="TAKEN"), p["id"]),
                           409, "duplicate_sku")
        self.assertEqual(self.sm.get("p", p["id"])["version"], 1)

    def test_patch(self):
        """PATCH merges: given fields change, null clears optional ones, others stay."""
        p = self.product(sku="S1", category="c")
        result = self.apply("product.patch", {"price_cents": 99, "category": None}, p["id"])
        self.assertEqual(result.status, 200)
        self.assertEqual((result.body["price_cents"], result.body["category"],
                          result.body["sku"], result.body["name"]), (99, None, "S1", "Mug"))
        self.assertEqual(result.body["version"], 2)
        same_sku = self.apply("product.patch", {"sku": "S1"}, p["id"])
        self.assertEqual(same_sku.status, 200)

    def test_patch_refusals(self):
        """PATCH: null on a required field 422, unknown field 422, taken sku 409, 404."""
        p = self.product()
        self.product(sku="TAKEN")
        self.assertRefused(self.apply("product.patch", {"name": None}, p["id"]),
                           422, "invalid_type", "name")
        self.assertRefused(self.apply("product.patch", {"id": "p9"}, p["id"]),
                           422, "unknown_field", "id")
        self.assertRefused(self.apply("product.patch", {"sku": "TAKEN"}, p["id"]),
                           409, "duplicate_sku")
        self.assertRefused(self.apply("product.patch", {}, "p77"), 404, "not_found")

    def test_delete(self):
        """DELETE removes the product (204, no body); a second DELETE is 404."""
        p = self.product()
        result = self.apply("product.delete", ident=p["id"])
        self.assertEqual((result.status, result.body), (204, None))
        self.assertIsNone(self.sm.get("p", p["id"]))
        self.assertRefused(self.apply("product.delete", ident=p["id"]), 404, "not_found")

    def test_if_match(self):
        """If-Match versions: a mismatch is 412 with no effect, a match proceeds."""
        p = self.product()
        for op, data in (("product.replace", {"name": "n", "price_cents": 1, "stock": 1}),
                         ("product.patch", {"stock": 0}), ("product.delete", None)):
            self.assertRefused(self.apply(op, data, p["id"], ifm=[7]), 412, "precondition_failed")
            self.assertRefused(self.apply(op, data, p["id"], ifm=[]), 412, "precondition_failed")
        self.assertEqual(self.sm.get("p", p["id"])["version"], 1)
        self.assertEqual(self.apply("product.patch", {"stock": 0}, p["id"], ifm=[3, 1]).status, 200)
        self.assertEqual(self.apply("product.delete", None, p["id"], ifm=[2]).status, 204)


class CustomerTests(ShopCase):
    def test_create_replace_patch_delete(self):
        """Customers support the same five operations as products."""
        c = self.customer(address="1 Main St")
        self.assertEqual((c["id"], c["name"], c["email"], c["address"], c["version"]),
                         ("c1", "Ann", "ann@example.com", "1 Main St", 1))
        replaced = self.apply("customer.replace", {"name": "Bo", "email": "bo@example.com"}, c["id"])
        self.assertEqual((replaced.status, replaced.body["address"], replaced.body["version"]),
                         (200, None, 2))
        patched = self.apply("customer.patch", {"address": "Elsewhere"}, c["id"])
        self.assertEqual((patched.body["address"], patched.body["email"]),
                         ("Elsewhere", "bo@example.com"))
        self.assertEqual(self.apply("customer.delete", ident=c["id"]).status, 204)
        self.assertIsNone(self.sm.get("c", c["id"]))

    def test_email_shape(self):
        """An email without the shape local@domain.tld is 422 invalid_value."""
        for email in ("plain", "a@b", "a b@c.d", "@b.c", "a@@b.c"):
            self.assertRefused(self.apply("customer.create", {"name": "x", "email": email}),
                               422, "invalid_value", "email")
        self.assertRefused(self.apply("customer.create", {"name": "x"}), 422, "missing_field", "email")

    def test_duplicate_email(self):
        """Emails are unique regardless of ASCII case: 409 duplicate_email on create and change."""
        self.customer(email="Ann@Example.com")
        self.assertRefused(self.apply("customer.create", {"name": "x", "email": "ann@example.COM"}),
                           409, "duplicate_email", "email")
        other = self.customer(email="other@example.com")
        self.assertRefused(self.apply("customer.patch", {"email": "ANN@example.com"}, other["id"]),
                           409, "duplicate_email")
        self.assertRefused(self.apply("customer.replace", {"name": "x", "email": "ann@example.com"},
                                      other["id"]), 409, "duplicate_email")
        self.assertEqual(self.apply("customer.patch", {"email": "OTHER@example.com"},
                                    other["id"]).status, 200)

    def test_refusals(self):
        """Unknown customer ids are 404; If-Match mismatches are 412."""
        c = self.customer()
        self.assertRefused(self.apply("customer.patch", {"name": "x"}, "c9"), 404, "not_found")
        self.assertRefused(self.apply("customer.delete", ident=c["id"], ifm=[2]),
                           412, "precondition_failed")


class OrderTests(ShopCase):
    def setUp(self):
        super().setUp()
        self.c = self.customer()["id"]
        self.mug = self.product(name="Mug", price_cents=500, stock=10)["id"]
        self.pen = self.product(name="Pen", price_cents=120, stock=2)["id"]

    def test_create(self):
        """An order captures unit prices, totals them, is pending and takes the stock."""
        result = self.order(self.c, (self.mug, 3), (self.pen, 2))
        self.assertEqual(result.status, 201)
        order = result.body
        self.assertEqual(order["id"], "o%d" % (result.index,))
        self.assertEqual(order["customer_id"], self.c)
        self.assertEqual(order["status"], "pending")
        self.assertEqual(order["items"], [
            {"product_id": self.mug, "quantity": 3, "unit_price_cents": 500},
            {"product_id": self.pen, "quantity": 2, "unit_price_cents": 120}])
        self.assertEqual(order["total_cents"], 1740)
        self.assertEqual(order["version"], 1)
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (7, 0))
        self.assertEqual(self.sm.get("p", self.mug)["version"], 2)
        self.apply("product.patch", {"price_cents": 1}, self.mug)
        self.assertEqual(self.sm.get("o", order["id"])["total_cents"], 1740)

    def test_insufficient_stock_changes_nothing(self):
        """If any line lacks stock the order is 409 insufficient_stock and no stock moves."""
        before = (self.sm.get("p", self.mug), self.sm.get("p", self.pen))
        result = self.order(self.c, (self.mug, 3), (self.pen, 3))
        self.assertRefused(result, 409, "insufficient_stock", "items[1].quantity")
        self.assertEqual((self.sm.get("p", self.mug), self.sm.get("p", self.pen)), before)
        self.assertEqual(self.sm.list_orders()[1], 0)

    def test_repeated_product_lines_add_up(self):
        """Two lines of the same product are checked against the stock together."""
        self.assertRefused(self.order(self.c, (self.pen, 1), (self.pen, 2)),
                           409, "insufficient_stock", "items[1].quantity")
        self.assertEqual(self.order(self.c, (self.pen, 1), (self.pen, 1)).status, 201)
        self.assertEqual(self.stock(self.pen), 0)

    def test_create_validation(self):
        """Unknown customer/product, empty orders and bad quantities are 422."""
        self.assertRefused(self.order("c999", (self.mug, 1)), 422, "unknown_customer", "customer_id")
        self.assertRefused(self.order(self.mug, (self.mug, 1)), 422, "unknown_customer")
        self.assertRefused(self.order(self.c, (self.mug, 1), ("p999", 1)),
                           422, "unknown_product", "items[1].product_id")
        self.assertRefused(self.order(self.c), 422, "empty_order", "items")
        self.assertRefused(self.order(self.c, (self.mug, 0)), 422, "invalid_value", "items[0].quantity")
        self.assertRefused(self.order(self.c, (self.mug, -2)), 422, "invalid_value")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c, "items": [
            {"product_id": self.mug, "quantity": 1, "note": "x"}]}),
            422, "unknown_field", "items[0].note")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c, "items": [
            {"product_id": self.mug}]}), 422, "missing_field", "items[0].quantity")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c, "items": [
            {"product_id": self.mug, "quantity": "1"}]}), 422, "invalid_type", "items[0].quantity")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c, "items": {}}),
                           422, "invalid_type", "items")
        self.assertRefused(self.apply("order.create", {"items": []}), 422, "missing_field", "customer_id")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c}), 422, "missing_field", "items")
        self.assertRefused(self.apply("order.create", {"customer_id": self.c, "items": [
            {"product_id": self.mug, "quantity": 1}] * 101}), 422, "invalid_value", "items")
        self.assertEqual(self.stock(self.mug), 10)

    def test_replace_adjusts_stock(self):
        """PUT swaps a pending order's items: old units return, new units are taken."""
        order = self.order(self.c, (self.mug, 3)).body
        result = self.apply("order.replace", {"items": [{"product_id": self.mug, "quantity": 10}]},
                            order["id"])
        self.assertEqual(result.status, 200)
        self.assertEqual((result.body["total_cents"], result.body["version"]), (5000, 2))
        self.assertEqual(self.stock(self.mug), 0)
        result = self.apply("order.replace", {"items": [{"product_id": self.pen, "quantity": 2}]},
                            order["id"])
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (10, 0))
        self.assertEqual(result.body["items"], [
            {"product_id": self.pen, "quantity": 2, "unit_price_cents": 120}])

    def test_replace_without_stock_changes_nothing(self):
        """A PUT asking for more than exists is 409 and the order and stock are untouched."""
        order = self.order(self.c, (self.mug, 3)).body
        result = self.apply("order.replace", {"items": [{"product_id": self.mug, "quantity": 11}]},
                            order["id"])
        self.assertRefused(result, 409, "insufficient_stock")
        self.assertEqual(self.stock(self.mug), 7)
        self.assertEqual(self.sm.get("o", order["id"]), order)

    def test_replace_customer(self):
        """PUT may name another (existing) customer; an unknown one is 422."""
        other = self.customer(email="b@example.com")["id"]
        order = self.order(self.c, (self.mug, 1)).body
        items = [{"product_id": self.mug, "quantity": 1}]
        self.assertRefused(self.apply("order.replace", {"customer_id": "c404", "items": items},
                                      order["id"]), 422, "unknown_customer")
        result = self.apply("order.replace", {"customer_id": other, "items": items}, order["id"])
        self.assertEqual(result.body["customer_id"], other)

    def test_replace_refusals(self):
        """PUT on a non-pending order is 409 invalid_transition; unknown id 404; If-Match 412."""
        order = self.order(self.c, (self.mug, 1)).body
        items = {"items": [{"product_id": self.mug, "quantity": 1}]}
        self.assertRefused(self.apply("order.replace", items, "o999"), 404, "not_found")
        self.assertRefused(self.apply("order.replace", items, order["id"], ifm=[5]),
                           412, "precondition_failed")
        self.apply("order.patch", {"status": "paid"}, order["id"])
        self.assertRefused(self.apply("order.replace", items, order["id"]), 409, "invalid_transition")

    def test_status_transitions(self):
        """pending → paid → shipped; every other move is 409 invalid_transition."""
        order = self.order(self.c, (self.mug, 1)).body
        self.assertRefused(self.apply("order.patch", {"status": "shipped"}, order["id"]),
                           409, "invalid_transition", "status")
        self.assertRefused(self.apply("order.patch", {"status": "pending"}, order["id"]),
                           409, "invalid_transition")
        paid = self.apply("order.patch", {"status": "paid"}, order["id"])
        self.assertEqual((paid.status, paid.body["status"], paid.body["version"]), (200, "paid", 2))
        self.assertRefused(self.apply("order.patch", {"status": "paid"}, order["id"]),
                           409, "invalid_transition")
        shipped = self.apply("order.patch", {"status": "shipped"}, order["id"])
        self.assertEqual(shipped.body["status"], "shipped")
        for status in ("cancelled", "pending", "paid"):
            self.assertRefused(self.apply("order.patch", {"status": status}, order["id"]),
                               409, "invalid_transition")
        self.assertEqual(self.stock(self.mug), 9)

    def test_status_patch_validation(self):
        """PATCH /orders accepts only a known status: 422 otherwise."""
        order = self.order(self.c, (self.mug, 1)).body
        self.assertRefused(self.apply("order.patch", {"status": "lost"}, order["id"]),
                           422, "invalid_value", "status")
        self.assertRefused(self.apply("order.patch", {"status": 1}, order["id"]),
                           422, "invalid_type", "status")
        self.assertRefused(self.apply("order.patch", {}, order["id"]), 422, "missing_field")
        self.assertRefused(self.apply("order.patch", {"status": "paid", "items": []}, order["id"]),
                           422, "unknown_field", "items")
        self.assertRefused(self.apply("order.patch", {"status": "paid"}, "o1234"), 404, "not_found")

    def test_cancel_restores_stock(self):
        """Cancelling a pending or a paid order puts its units back."""
        first = self.order(self.c, (self.mug, 4), (self.pen, 2)).body
        second = self.order(self.c, (self.mug, 6)).body
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (0, 0))
        self.apply("order.patch", {"status": "cancelled"}, first["id"])
        self.assertEqual((self.stock(self.mug), self.stock(self.pen)), (4, 2))
        self.apply("order.patch", {"status": "paid"}, second["id"])
        self.apply("order.patch", {"status": "cancelled"}, second["id"])
        self.assertEqual(self.stock(self.mug), 10)

    def test_delete(self):
        """DELETE removes an unshipped order and returns its stock exactly once."""
        pending = self.order(self.c, (self.mug, 2)).body
        cancelled = self.order(self.c, (self.mug, 3)).body
        self.apply("order.patch", {"status": "cancelled"}, cancelled["id"])
        self.assertEqual(self.stock(self.mug), 8)
        self.assertEqual(self.apply("order.delete", ident=pending["id"]).status, 204)
        self.assertEqual(self.apply("order.delete", ident=cancelled["id"]).status, 204)
        self.assertEqual(self.stock(self.mug), 10)
        self.assertIsNone(self.sm.get("o", pending["id"]))
        self.assertEqual(self.sm._db.execute("SELECT COUNT(*) FROM order_lines").fetchone()[0], 0)
        self.assertRefused(self.apply("order.delete", ident=pending["id"]), 404, "not_found")

    def test_delete_shipped_is_refused(self):
        """A shipped order cannot be deleted: 409 invalid_transition; If-Match is checked."""
        order = self.order(self.c, (self.mug, 1)).body
        self.assertRefused(self.apply("order.delete", ident=order["id"], ifm=[9]),
                           412, "precondition_failed")
        self.apply("order.patch", {"status": "paid"}, order["id"])
        self.apply("order.patch", {"status": "shipped"}, order["id"])
        self.assertRefused(self.apply("order.delete", ident=order["id"]), 409, "invalid_transition")

    def test_deleted_product_in_cancelled_order(self):
        """Cancelling an order whose product was deleted works; those units are gone."""
        order = self.order(self.c, (self.mug, 1), (self.pen, 1)).body
        self.apply("product.delete", ident=self.pen)
        result = self.apply("order.patch", {"status": "cancelled"}, order["id"])
        self.assertEqual(result.status, 200)
        self.assertEqual(self.stock(self.mug), 10)

    def test_stock_cannot_go_negative(self):
        """The table refuses negative stock even if a bug tried to write it."""
        with self.assertRaises(sqlite3.IntegrityError):
            self.sm._db.execute("UPDATE products SET stock = -1")


class ListTests(ShopCase):
    def test_product_filters_and_paging(self):
        """Products filter by category, name substring, price range and stock; pages."""
        self.product(name="Blue Mug", category="kitchen", price_cents=500, stock=0)
        self.product(name="Red mug", category="kitchen", price_cents=900)
        self.product(name="Pen", category="office", price_cents=100)
        self.product(name="100% cotton_shirt", category="clothes", price_cents=2000)
        names = lambda **kw: [p["name"] for p in self.sm.list_products(**kw)[0]]
        self.assertEqual(names(category="kitchen"), ["Blue Mug", "Red mug"])
        self.assertEqual(names(q="MUG"), ["Blue Mug", "Red mug"])
        self.assertEqual(names(q="0%"), ["100% cotton_shirt"])
        self.assertEqual(names(q="n_s"), ["100% cotton_shirt"])
        self.assertEqual(names(q="%"), ["100% cotton_shirt"])
        self.assertEqual(names(min_price_cents=500, max_price_cents=900), ["Blue Mug", "Red mug"])
        self.assertEqual(names(in_stock=True), ["Red mug", "Pen", "100% cotton_shirt"])
        self.assertEqual(names(in_stock=False), ["Blue Mug"])
        items, total = self.sm.list_products(limit=2, offset=1)
        self.assertEqual(([p["name"] for p in items], total), (["Red mug", "Pen"], 4))
        self.assertEqual(self.sm.list_products(offset=10), ([], 4))

    def test_customer_filters(self):
        """Customers filter by name substring and by email (ASCII case-insensitive)."""
        self.customer(name="Ann", email="ann@example.com")
        self.customer(name="Bob", email="bob@example.com")
        self.assertEqual([c["name"] for c in self.sm.list_customers(q="b")[0]], ["Bob"])
        self.assertEqual(self.sm.list_customers(email="BOB@example.com")[1], 1)

    def test_order_filters(self):
        """Orders filter by customer and status, with their items, in creation order."""
        ann = self.customer()["id"]
        bob = self.customer(email="bob@example.com")["id"]
        mug = self.product()["id"]
        o1 = self.order(ann, (mug, 1)).body["id"]
        o2 = self.order(bob, (mug, 2)).body["id"]
        o3 = self.order(ann, (mug, 3)).body["id"]
        self.apply("order.patch", {"status": "paid"}, o3)
        ids = lambda **kw: [o["id"] for o in self.sm.list_orders(**kw)[0]]
        self.assertEqual(ids(), [o1, o2, o3])
        self.assertEqual(ids(customer_id=ann), [o1, o3])
        self.assertEqual(ids(customer_id="nonsense"), [])
        self.assertEqual(ids(status="paid"), [o3])
        self.assertEqual(ids(customer_id=ann, status="pending"), [o1])
        self.assertEqual([o["items"][0]["quantity"] for o in self.sm.list_orders()[0]], [1, 2, 3])


class IdempotencyTests(ShopCase):
    def test_replay_returns_first_answer(self):
        """The same key and fingerprint replays the first answer and applies nothing."""
        c = self.customer()["id"]
        mug = self.product(stock=5)["id"]
        data = {"customer_id": c, "items": [{"product_id": mug, "quantity": 2}]}
        first = self.apply("order.create", data, key="k1", fp=FP_A)
        again = self.apply("order.create", data, key="k1", fp=FP_A)
        self.assertEqual((again.status, again.body, again.index), (201, first.body, first.index))
        self.assertTrue(again.replayed)
        self.assertFalse(first.replayed)
        self.assertEqual(self.stock(mug), 3)
        self.assertEqual(self.sm.list_orders()[1], 1)

    def test_reused_key(self):
        """The same key with a different request is 422 idempotency_key_reused."""
        self.apply("product.create", {"name": "a", "price_cents": 1, "stock": 1}, key="k", fp=FP_A)
        result = self.apply("product.create", {"name": "b", "price_cents": 1, "stock": 1},
                            key="k", fp=FP_B)
        self.assertRefused(result, 422, "idempotency_key_reused", "Idempotency-Key")
        self.assertEqual(self.sm.list_products()[1], 1)

    def test_refusals_are_recorded(self):
        """A refused request's answer is the first answer too, replayed as such."""
        p = self.product(stock=1)
        first = self.apply("product.patch", {"stock": 2}, p["id"], ifm=[9], key="k", fp=FP_A)
        self.assertRefused(first, 412, "precondition_failed")
        again = self.apply("product.patch", {"stock": 2}, p["id"], ifm=[9], key="k", fp=FP_A)
        self.assertEqual((again.status, again.body, again.replayed), (412, first.body, True))

    def test_delete_replay(self):
        """A replayed DELETE answers 204 again instead of 404."""
        p = self.product()
        self.apply("product.delete", ident=p["id"], key="d", fp=FP_A)
        again = self.apply("product.delete", ident=p["id"], key="d", fp=FP_A)
        self.assertEqual((again.status, again.body, again.replayed), (204, None, True))

    def test_survives_reopen(self):
        """Idempotency records are replicated state: they survive a restart."""
        first = self.apply("product.create", {"name": "a", "price_cents": 1, "stock": 1},
                           key="k", fp=FP_A)
        self.reopen()
        again = self.apply("product.create", {"name": "a", "price_cents": 1, "stock": 1},
                           key="k", fp=FP_A)
        self.assertEqual((again.body, again.index, again.replayed), (first.body, first.index, True))
        fp, recorded = self.sm.idempotency_record("k")
        self.assertEqual((fp, recorded), (FP_A, again))
        self.assertIsNone(self.sm.idempotency_record("other"))

    def test_retention_by_time(self):
        """A key is forgotten once a later command is stamped past the retention window."""
        self.reopen(idempotency_retention_ms=10_000)
        data = {"name": "a", "price_cents": 1, "stock": 1}
        self.apply("product.create", data, key="k", fp=FP_A, ts=100_000)
        self.assertEqual(self.apply("product.create", data, key="k", fp=FP_A,
                                    ts=110_000).replayed, True)
        self.apply("product.create", dict(data, name="b"), ts=110_001)
        self.assertIsNone(self.sm.idempotency_record("k"))
        self.assertEqual(self.apply("product.create", data, key="k", fp=FP_A).status, 201)
        self.assertEqual(self.sm.list_products()[1], 3)

    def test_retention_by_count(self):
        """Beyond the maximum number of keys the oldest keys are forgotten first."""
        self.reopen(idempotency_max_keys=2)
        data = {"name": "a", "price_cents": 1, "stock": 1}
        for key in ("k1", "k2", "k3"):
            self.apply("product.create", data, key=key, fp=FP_A)
        self.assertEqual([self.sm.idempotency_record(k) is not None for k in ("k1", "k2", "k3")],
                         [False, True, True])
        self.reopen(idempotency_max_keys=2)
        self.apply("product.create", data, key="k4", fp=FP_A)
        self.assertIsNone(self.sm.idempotency_record("k2"))
        self.assertEqual(self.sm._db.execute("SELECT COUNT(*) FROM idempotency").fetchone()[0], 2)


class DurabilityTests(ShopCase):
    def test_exactly_once_across_reopen(self):
        """Re-applying an already applied batch after a restart is skipped entirely."""
        c = self.customer()["id"]
        mug = self.product(stock=5)["id"]
        entry = Entry(3, 1, encode_command("order.create", 5000, data={
            "customer_id": c, "items": [{"product_id": mug, "quantity": 2}]}))
        self.sm.apply_batch([entry])
        self.reopen()
        self.assertEqual(self.sm.applied_index(), 3)
        self.assertEqual(self.sm.apply_batch([entry]), [None])
        self.assertEqual(self.stock(mug), 3)
        self.assertEqual(self.sm.list_orders()[1], 1)

    def test_batch_is_one_transaction(self):
        """A batch that fails (an index gap) leaves no trace of its earlier entries."""
        entries = [Entry(1, 1, encode_command("product.create", 1, data={
            "name": "a", "price_cents": 1, "stock": 1})),
            Entry(3, 1, encode_command("product.create", 2, data={
                "name": "b", "price_cents": 1, "stock": 1}))]
        with self.assertRaises(ValueError):
            self.sm.apply_batch(entries)
        self.reopen()
        self.assertEqual((self.sm.applied_index(), self.sm.list_products()[1]), (0, 0))

    def test_snapshot_restore(self):
        """A snapshot restored elsewhere reproduces the state byte for byte."""
        c = self.customer()["id"]
        mug = self.product()["id"]
        self.order(c, (mug, 2))
        self.apply("product.create", {"name": "k", "price_cents": 1, "stock": 1}, key="k", fp=FP_A)
        index, term, data = self.sm.snapshot()
        other = ShopStateMachine(os.path.join(self.mktemp() + "-db"))
        self.addCleanup(other.close)
        other.restore(index, term, data)
        self.assertEqual(other.dump(), self.sm.dump())
        self.assertEqual(other.applied_index(), index)
        # Both go on identically (time, counters and idempotency included).
        for sm in (self.sm, other):
            [result] = sm.apply_batch([Entry(index + 1, 1, encode_command(
                "product.create", 1, data={"name": "k", "price_cents": 1, "stock": 1},
                key="k", fp=FP_A))])
            self.assertTrue(result.replayed)
        self.assertEqual(other.dump(), self.sm.dump())

    def test_restore_replaces_everything(self):
        """Restoring over existing data leaves nothing of the old state."""
        snapshot = self.sm.snapshot()
        self.product()
        self.sm.restore(*snapshot)
        self.assertEqual((self.sm.list_products()[1], self.sm.applied_index()), (0, 0))


# -- replica convergence ---------------------------------------------------------------

# Every sequence starts with SETUP (products p1-p3, customers c4-c5, orders o6-o7), so the
# random commands mostly name things that exist.
SETUP = [
    (("product.create", None, {"name": "Mug", "price_cents": 500, "stock": 20, "sku": "A"}),
     0, None, None),
    (("product.create", None, {"name": "Pen", "price_cents": 120, "stock": 9}), 0, None, None),
    (("product.create", None, {"name": "Cap", "price_cents": 900, "stock": 1}), 0, None, None),
    (("customer.create", None, {"name": "Ann", "email": "a@x.io"}), 0, None, None),
    (("customer.create", None, {"name": "Bob", "email": "b@x.io"}), 0, None, None),
    (("order.create", None, {"customer_id": "c4", "items": [{"product_id": "p1", "quantity": 2}]}),
     0, None, None),
    (("order.create", None, {"customer_id": "c5", "items": [{"product_id": "p2", "quantity": 1},
                                                            {"product_id": "p3", "quantity": 1}]}),
     0, None, None),
]
product_ids = st.sampled_from(["p1", "p2", "p3", "p3", "p9"])
customer_ids = st.sampled_from(["c4", "c5", "c5", "c1"])
order_ids = st.sampled_from(["o6", "o7", "o6", "o7", "o9", "o10", "o11", "o12"])
product_data = st.fixed_dictionaries(
    {"name": st.sampled_from(["Mug", "Pen", "Pen", ""]), "price_cents": st.integers(0, 300),
     "stock": st.integers(0, 5)},
    optional={"sku": st.sampled_from(["A", "B", None])})
customer_data = st.fixed_dictionaries(
    {"name": st.just("N"), "email": st.sampled_from(["a@x.io", "A@X.io", "c@x.io", "bad"])})
items = st.lists(st.fixed_dictionaries({"product_id": product_ids,
                                        "quantity": st.sampled_from([1, 1, 2, 3, 0])}),
                 min_size=1, max_size=3)
order_data = st.fixed_dictionaries({"customer_id": customer_ids, "items": items})
command = st.one_of(
    st.tuples(st.just("product.create"), st.none(), product_data),
    st.tuples(st.just("product.replace"), product_ids, product_data),
    st.tuples(st.just("product.patch"), product_ids,
              st.fixed_dictionaries({}, optional={"stock": st.integers(-1, 5),
                                                  "sku": st.sampled_from(["A", None])})),
    st.tuples(st.just("product.delete"), product_ids, st.none()),
    st.tuples(st.just("customer.create"), st.none(), customer_data),
    st.tuples(st.just("customer.patch"), customer_ids, customer_data),
    st.tuples(st.just("customer.delete"), customer_ids, st.none()),
    st.tuples(st.just("order.create"), st.none(), order_data),
    st.tuples(st.just("order.create"), st.none(), order_data),
    st.tuples(st.just("order.replace"), order_ids, st.fixed_dictionaries({"items": items})),
    st.tuples(st.just("order.patch"), order_ids,
              st.fixed_dictionaries({"status": st.sampled_from(schema.STATUSES)})),
    st.tuples(st.just("order.delete"), order_ids, st.none()),
)
commands = st.lists(
    st.tuples(command, st.integers(0, 3000),
              st.sampled_from([None, None, None, None, "k1", "k2"]),
              st.sampled_from([None, None, None, [1], [2]])),
    max_size=40)


def to_entries(commands):
    entries = []
    for i, ((op, ident, data), ts, key, ifm) in enumerate(SETUP + commands, start=1):
        fp = None if key is None else (op + repr(data)).encode().ljust(32, b".")[:32]
        entries.append(Entry(i, 1, encode_command(op, ts, ident, data, ifm, key, fp)))
    return entries


@settings(max_examples=40, deadline=None)
@given(commands, st.lists(st.integers(1, 7), max_size=8))
def check_replicas_converge(commands, cuts):
    # A plain function, not a method: Hypothesis refuses one test run from two TestCase
    # instances, which happens when trial loads this module twice.
    base = tempfile.mkdtemp()
    try:
        one = ShopStateMachine(os.path.join(base, "one.db"), idempotency_retention_ms=1000,
                               idempotency_max_keys=1, durable=False)
        two = ShopStateMachine(os.path.join(base, "two.db"), idempotency_retention_ms=1000,
                               idempotency_max_keys=1, durable=False)
        entries = to_entries(commands)
        results_one = one.apply_batch(entries)
        results_two, position = [], 0
        for cut in cuts + [len(entries)]:
            results_two += two.apply_batch(entries[position:position + cut])
            position += cut
        assert results_one == results_two
        assert one.dump() == two.dump()
        assert one.list_products(limit=500) == two.list_products(limit=500)
        assert one.list_orders(limit=500) == two.list_orders(limit=500)
        assert one._db.execute("SELECT seq FROM products WHERE stock < 0").fetchone() is None
        three = ShopStateMachine(os.path.join(base, "three.db"), durable=False)
        three.restore(*one.snapshot())
        assert three.dump() == one.dump()
        for sm in (one, two, three):
            sm.close()
    finally:
        shutil.rmtree(base)


class ReplicaPropertyTests(SynchronousTestCase):
    def test_replicas_converge(self):
        """Two replicas applying the same entries, batched differently, end byte-identical,
        give identical results, and never hold negative stock; a snapshot of one restored
        into a third replica is identical too."""
        check_replicas_converge()

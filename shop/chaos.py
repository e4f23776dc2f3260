"""The shop's chaos workload: ``txraft-chaos --workload shop`` (``shop.chaos:ShopWorkload``).

Orders, cancellations, payments, shipping, deletions, If-Match restocks and reads on a
rotating set of products, one customer per client, through the shop's HTTP API (see
``txraft.tools.chaos.workload`` for how answers become outcomes).  The stock of each
product is checked for linearizability (``StockModel``); ``verify`` checks the shop's
invariants after the run: stock never negative, sold + left = stocked, every 201 order on
every node exactly once, identical replicas, idempotency keys applied at most once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from txraft.tools.chaos.checker import (
    CONFLICT,
    INSUFFICIENT,
    OK,
    PLACED,
    REFUSED_OUTPUT,
    UNKNOWN,
    Op,
    StockModel,
)
from txraft.tools.chaos.history import Record, settle
from txraft.tools.chaos.workload import (RETAINED_KEYS, Context, Reply, attempt, backoff, call,
                                         note_anomaly, read_verdict)

JSON = {"Content-Type": "application/json"}


#: How long the final linearizable reads may take, all products together.
FINAL_READS_SECONDS = 120


class ShopWorkload:
    """Orders, cancellations, payments, shipping, deletions, If-Match restocks and reads
    on a rotating set of products; one customer per client."""

    name = "shop"
    app = "shop"

    def __init__(self, products: int = 5, initial_stock: int = 25, ops_per_product: int = 400):
        self.n_products = products
        self.initial_stock = initial_stock
        self.ops_per_product = ops_per_product
        self._lock = threading.Lock()
        self.products: Dict[str, int] = {}  # product id -> initial stock
        self.active: List[List[Any]] = []  # [product id, stock ops so far]
        self.customers: Dict[str, str] = {}  # process -> customer id
        self._serial = 0
        self.final_state: Dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _key(self, process: str) -> str:
        # Unique within a run (every run starts a fresh cluster) and the same on replay.
        with self._lock:
            self._serial += 1
            return "%s-%d" % (process, self._serial)

    def request(self, ctx: Context, process: str, rng: random.Random, f: str,
                args: Dict[str, Any], method: str, path: str, data: Any = None,
                headers: Optional[Dict[str, str]] = None, patience: float = 20.0) -> Record:
        """One logical write with an Idempotency-Key, retried until a definite answer,
        ``patience`` seconds or the harness aborting."""
        key = self._key(process)
        hdrs = dict(JSON)
        hdrs["Idempotency-Key"] = key
        hdrs.update(headers or {})
        body = None if data is None else json.dumps(data).encode()
        args = dict(args, idempotency_key=key)
        record = ctx.history.invoke(process, f, args, ctx.now())
        deadline = record.invoke + patience
        tries = 0
        while True:
            reply, v = attempt(ctx, record, rng, method, path, body, hdrs)
            if v == OK:
                break
            if ctx.aborting.is_set() or ctx.now() > deadline:
                break
            backoff(ctx, rng, reply, tries)
            tries += 1
        status = settle(record.attempts)
        result = None
        if v == OK:
            result = {"status": reply.status, "code": reply.error_code(),
                      "replayed": reply.headers.get("idempotent-replayed") == "true"}
            if reply.body and reply.status < 300:
                result["body"] = reply.json()
            if reply.status in (400, 405, 413, 415) or reply.error_code() == "idempotency_key_reused":
                note_anomaly(ctx, record, reply, "")
        ctx.history.finish(record, status, result, record.attempts[-1].end)
        return record

    def read_product(self, ctx, process, rng, product, node=None) -> Record:
        record = ctx.history.invoke(process, "read_product", {"product": product}, ctx.now())
        reply, v = attempt(ctx, record, rng, "GET", "/products/" + product,
                           verdict=read_verdict, node=node)
        result = None
        if reply.status == 200:
            doc = reply.json()
            result = {"stock": doc["stock"], "version": doc["version"]}
        elif reply.status == 404:
            v = OK
            note_anomaly(ctx, record, reply, "")
        ctx.history.finish(record, v, result, record.attempts[-1].end)
        return record

    def _create_product(self, ctx, process, rng, patience=30.0) -> Optional[str]:
        with self._lock:
            self._serial += 1
            serial = self._serial
        data = {"name": "product %d" % serial, "price_cents": 100 + serial,
                "stock": self.initial_stock, "category": "chaos", "sku": "sku-%d" % serial}
        record = self.request(ctx, process, rng, "create_product", {"data": data}, "POST",
                              "/products", data, patience=patience)
        if record.status == OK and record.result["status"] == 201:
            product = record.result["body"]["id"]
            with self._lock:
                self.products[product] = self.initial_stock
                self.active.append([product, 0])
            return product
        return None

    def _pick_product(self, rng) -> Optional[Tuple[str, bool]]:
        """A product to work on and whether it just used up its budget (the caller then
        creates a replacement, after its operation)."""
        with self._lock:
            if not self.active:
                return None
            slot = rng.randrange(len(self.active))
            entry = self.active[slot]
            entry[1] += 1
            if entry[1] >= self.ops_per_product:
                del self.active[slot]
                retire = True
            else:
                retire = False
            return entry[0], retire

    # -- setup and clients -------------------------------------------------------------------

    def setup(self, ctx: Context, processes: List[str]) -> None:
        rng = random.Random(0)
        for _ in range(self.n_products):
            if self._create_product(ctx, "setup", rng) is None:
                raise RuntimeError("could not create a product during setup")
        for process in processes:
            data = {"name": "customer %s" % process, "email": "%s@chaos.example" % process}
            record = self.request(ctx, "setup", rng, "create_customer", {"data": data},
                                  "POST", "/customers", data, patience=30.0)
            if record.status != OK or record.result["status"] != 201:
                raise RuntimeError("could not create customer %s: %r" % (process, record))
            self.customers[process] = record.result["body"]["id"]

    def client(self, ctx: Context, process: str, rng: random.Random) -> None:
        orders: Dict[str, Dict[str, Any]] = {}  # id -> {"status", "lines"}; ours alone
        while not ctx.stopping.is_set():
            x = rng.random()
            if x < 0.45:
                self._order(ctx, process, rng, orders)
            elif x < 0.57:
                self._transition(ctx, process, rng, orders, "cancelled")
            elif x < 0.65:
                self._transition(ctx, process, rng, orders, "paid")
            elif x < 0.70:
                self._transition(ctx, process, rng, orders, "shipped")
            elif x < 0.75:
                self._delete(ctx, process, rng, orders)
            elif x < 0.79:
                self._replace(ctx, process, rng, orders)
            elif x < 0.85:
                self._restock(ctx, process, rng)
            elif x < 0.95:
                picked = self._pick_product(rng)
                if picked:
                    self.read_product(ctx, process, rng, picked[0])
                    self._maybe_replace(ctx, process, rng, picked)
            else:
                self._list(ctx, process, rng)
            ctx.aborting.wait(rng.uniform(0, 0.01))

    def _maybe_replace(self, ctx, process, rng, picked) -> None:
        if picked[1]:
            # Keep the set of active products from shrinking through failed creations.
            for _ in range(3):
                if self._create_product(ctx, process, rng) or ctx.aborting.is_set():
                    break

    def _order(self, ctx, process, rng, orders) -> None:
        first = self._pick_product(rng)
        if first is None:
            return
        lines = [{"product_id": first[0], "quantity": rng.randint(1, 3)}]
        if rng.random() < 0.15:
            second = self._pick_product(rng)
            if second is not None and second[0] != first[0]:
                lines.append({"product_id": second[0], "quantity": rng.randint(1, 3)})
            if second is not None:
                self._maybe_replace(ctx, process, rng, second)
        data = {"customer_id": self.customers[process], "items": lines}
        record = self.request(ctx, process, rng, "order", {"data": data}, "POST", "/orders", data)
        if record.status == OK and record.result["status"] == 201:
            body = record.result["body"]
            orders[body["id"]] = {"status": "pending", "lines": lines}
        self._maybe_replace(ctx, process, rng, first)

    def _transition(self, ctx, process, rng, orders, target) -> None:
        allowed = {"cancelled": ("pending", "paid"), "paid": ("pending",),
                   "shipped": ("paid",)}[target]
        ids = sorted(i for i, o in orders.items() if o["status"] in allowed)
        if not ids:
            return
        order_id = rng.choice(ids)
        order = orders[order_id]
        record = self.request(ctx, process, rng, "transition",
                              {"order": order_id, "to": target, "from": order["status"],
                               "lines": order["lines"]},
                              "PATCH", "/orders/" + order_id, {"status": target})
        if record.status == OK and record.result["status"] == 200:
            order["status"] = target
        elif record.status == OK:
            # A refusal of a transition we know to be legal: report it, stop touching it.
            note_anomaly(ctx, record, Reply(record.result["status"], {}, b"", True), "")
            order["status"] = "uncertain"
        elif record.status == UNKNOWN:
            order["status"] = "uncertain"

    def _replace(self, ctx, process, rng, orders) -> None:
        """PUT new items on one of our pending single-line orders: the old units go back
        and the new ones are taken in one step, or nothing happens (409)."""
        ids = sorted(i for i, o in orders.items()
                     if o["status"] == "pending" and len(o["lines"]) == 1)
        if not ids:
            return
        order_id = rng.choice(ids)
        order = orders[order_id]
        old = order["lines"][0]
        picked = None
        if rng.random() < 0.5:
            product = old["product_id"]
        else:
            picked = self._pick_product(rng)
            if picked is None:
                return
            product = picked[0]
        lines = [{"product_id": product, "quantity": rng.randint(1, 4)}]
        record = self.request(ctx, process, rng, "replace_order",
                              {"order": order_id, "old": order["lines"], "lines": lines},
                              "PUT", "/orders/" + order_id, {"items": lines})
        code = (record.result or {}).get("status")
        if record.status == OK and code == 200:
            order["lines"] = lines
        elif record.status == OK and (code != 409 or record.result.get("code")
                                      != "insufficient_stock"):
            note_anomaly(ctx, record, Reply(code, {}, b"", True), "")
            order["status"] = "uncertain"
        elif record.status == UNKNOWN:
            order["status"] = "uncertain"
        if picked is not None:
            self._maybe_replace(ctx, process, rng, picked)

    def _delete(self, ctx, process, rng, orders) -> None:
        ids = sorted(i for i, o in orders.items() if o["status"] in ("pending", "paid", "cancelled"))
        if not ids:
            return
        order_id = rng.choice(ids)
        order = orders[order_id]
        record = self.request(ctx, process, rng, "delete_order",
                              {"order": order_id, "from": order["status"],
                               "lines": order["lines"]},
                              "DELETE", "/orders/" + order_id)
        if record.status == OK and record.result["status"] == 204:
            order["status"] = "deleted"
        elif record.status == OK:
            note_anomaly(ctx, record, Reply(record.result["status"], {}, b"", True), "")
            order["status"] = "uncertain"
        elif record.status == UNKNOWN:
            order["status"] = "uncertain"

    def _restock(self, ctx, process, rng) -> None:
        picked = self._pick_product(rng)
        if picked is None:
            return
        product = picked[0]
        read = self.read_product(ctx, process, rng, product)
        if read.status == OK and read.result is not None:
            old = read.result["stock"]
            new = old + rng.randint(1, 6)
            self.request(ctx, process, rng, "restock",
                         {"product": product, "old": old, "new": new,
                          "version": read.result["version"]},
                         "PATCH", "/products/" + product, {"stock": new},
                         headers={"If-Match": '"%d"' % read.result["version"]})
        self._maybe_replace(ctx, process, rng, picked)

    def _list(self, ctx, process, rng) -> None:
        stale = rng.random() < 0.5
        if rng.random() < 0.5:
            path = "/products?in_stock=true&limit=100"
        else:
            path = "/orders?customer_id=%s&limit=100" % self.customers[process]
        if stale:
            path += "&consistency=stale"
        record = ctx.history.invoke(process, "list", {"path": path}, ctx.now())
        reply, v = attempt(ctx, record, rng, "GET", path, verdict=read_verdict)
        if reply.status not in (200, 503, 0):
            note_anomaly(ctx, record, reply, "")
        ctx.history.finish(record, v, None, record.attempts[-1].end)

    # -- after the faults ------------------------------------------------------------------

    def final(self, ctx: Context, rng: random.Random) -> List[str]:
        """Linearizable reads of every product (checked with the rest), then every table
        read stale from every node, which must be identical."""
        problems = []
        # Bounded as a whole: a cluster left without a quorum must fail the run with a
        # reason, not hold it for 20 tries of every product (the 30-minute soak that
        # lost its quorum waited here with no end in sight).
        deadline = time.monotonic() + FINAL_READS_SECONDS
        for product in sorted(self.products):
            for tries in range(20):
                if time.monotonic() > deadline:
                    problems.append("final reads gave up after %ds (no leader?) at %s"
                                    % (FINAL_READS_SECONDS, product))
                    return problems
                record = self.read_product(ctx, "final", rng, product, node=ctx.leader() or None)
                if record.status == OK:
                    break
                time.sleep(0.1)
            else:
                problems.append("final read of %s never succeeded" % product)
        for node_id in ctx.node_ids:
            tables = {}
            for collection in ("products", "customers", "orders"):
                items, problem = self._read_all(ctx.url(node_id), collection)
                if problem:
                    problems.append("%s on %s: %s" % (collection, node_id, problem))
                tables[collection] = items
            self.final_state[node_id] = tables
        first = ctx.node_ids[0]
        for node_id in ctx.node_ids[1:]:
            for collection in ("products", "customers", "orders"):
                a = self.final_state[first][collection]
                b = self.final_state[node_id][collection]
                if a != b:
                    problems.append("replicas differ on %s: %s and %s (%d vs %d items; first "
                                    "difference %s)" % (collection, first, node_id, len(a),
                                                        len(b), _first_difference(a, b)))
        return problems

    @staticmethod
    def _read_all(base: str, collection: str) -> Tuple[List[Any], str]:
        items: List[Any] = []
        offset = 0
        while True:
            reply = call(base, "GET", "/%s?limit=500&offset=%d&consistency=stale"
                         % (collection, offset))
            if reply.status != 200:
                return items, "HTTP %d %s" % (reply.status, reply.error)
            page = reply.json()
            items.extend(page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items, ""

    def project(self, records: List[Record]) -> Dict[str, List[Op]]:
        parts: Dict[str, List[Op]] = {}

        def add(product, op_input, output, r):
            status = r.status
            if status == UNKNOWN:
                output = None
            parts.setdefault("stock:" + product, []).append(
                Op("%d:%s" % (r.id, product), op_input, output, status, r.invoke,
                   r.complete, r.process))

        for r in records:
            result = r.result or {}
            code = result.get("status")
            if r.f == "read_product":
                if r.status == OK and r.result is not None:
                    add(r.args["product"], ("read",), r.result["stock"], r)
            elif r.f == "order":
                lines = r.args["data"]["items"]
                exclusive = len(lines) == 1
                if r.status == OK and code not in (201, 409):
                    continue  # refused for another reason (a bug, reported): no effect
                output = PLACED if code == 201 else INSUFFICIENT
                if code == 409 and result.get("code") != "insufficient_stock":
                    continue
                for line in lines:
                    add(line["product_id"], ("order", line["quantity"], exclusive), output, r)
            elif r.f == "transition" and r.args["to"] == "cancelled":
                output = OK if code == 200 else REFUSED_OUTPUT
                for line in r.args["lines"]:
                    add(line["product_id"], ("cancel", line["quantity"]), output, r)
            elif r.f == "delete_order" and r.args["from"] != "cancelled":
                output = OK if code == 204 else REFUSED_OUTPUT
                for line in r.args["lines"]:
                    add(line["product_id"], ("cancel", line["quantity"]), output, r)
            elif r.f == "replace_order":
                if r.status == OK and not (code == 200 or result.get("code")
                                           == "insufficient_stock"):
                    continue
                [old], [new] = r.args["old"], r.args["lines"]
                if old["product_id"] == new["product_id"]:
                    add(new["product_id"], ("replace", old["quantity"], new["quantity"]),
                        OK if code == 200 else INSUFFICIENT, r)
                else:
                    add(old["product_id"], ("cancel", old["quantity"]),
                        OK if code == 200 else REFUSED_OUTPUT, r)
                    add(new["product_id"], ("order", new["quantity"], True),
                        PLACED if code == 200 else INSUFFICIENT, r)
            elif r.f == "restock":
                output = OK if code == 200 else CONFLICT
                if r.status == OK and code not in (200, 412):
                    continue
                add(r.args["product"], ("restock", r.args["old"], r.args["new"]), output, r)
        return parts

    def model_for(self, partition: str):
        return StockModel(self.products[partition.split(":", 1)[1]])

    def verify(self, ctx: Context, records: List[Record]) -> List[str]:
        """The shop's invariants on the final state (identical on every node by now)."""
        problems: List[str] = []
        if not self.final_state:
            return ["no final state was read"]
        state = self.final_state[ctx.node_ids[0]]
        products = {p["id"]: p for p in state["products"]}
        orders = state["orders"]
        ids = [o["id"] for o in orders]
        if len(ids) != len(set(ids)):
            problems.append("an order id is listed twice")
        by_id = {o["id"]: o for o in orders}

        # Stock never negative; units sold + units left == units stocked.
        sold: Dict[str, int] = {p: 0 for p in self.products}
        for order in orders:
            if order["status"] != "cancelled":
                for item in order["items"]:
                    sold[item["product_id"]] = sold.get(item["product_id"], 0) + item["quantity"]
        restocked: Dict[str, int] = {p: 0 for p in self.products}
        maybe: Dict[str, List[int]] = {p: [] for p in self.products}
        for r in records:
            if r.f != "restock":
                continue
            delta = r.args["new"] - r.args["old"]
            if r.status == OK and r.result["status"] == 200:
                restocked[r.args["product"]] += delta
            elif r.status == UNKNOWN:
                maybe[r.args["product"]].append(delta)
        for product, initial in sorted(self.products.items()):
            doc = products.get(product)
            if doc is None:
                problems.append("product %s is missing" % product)
                continue
            if doc["stock"] < 0:
                problems.append("product %s has negative stock %d" % (product, doc["stock"]))
            gap = sold[product] + doc["stock"] - initial - restocked[product]
            if gap != 0 and not _subset_sums_to(maybe[product], gap):
                problems.append(
                    "product %s: sold %d + left %d != stocked %d (initial %d + restocks %d; "
                    "unknown restocks %r)" % (product, sold[product], doc["stock"],
                                              initial + restocked[product], initial,
                                              restocked[product], maybe[product]))

        # Every 201 order exists exactly once with what was ordered (unless we deleted
        # it); no order appeared that no client can account for.
        placed: Dict[str, Record] = {}
        unknown_creates: Dict[str, int] = {}
        customer_of = {c: p for p, c in self.customers.items()}
        deleted, maybe_deleted = set(), set()
        last_status: Dict[str, str] = {}
        items: Dict[str, Any] = {}  # order id -> its last acknowledged lines (None: unsure)
        for r in records:
            code = (r.result or {}).get("status")
            if r.f == "order":
                if r.status == OK and code == 201:
                    order_id = r.result["body"]["id"]
                    if order_id in placed:
                        problems.append("order id %s was answered to two different requests "
                                        "(#%d and #%d)" % (order_id, placed[order_id].id, r.id))
                    placed[order_id] = r
                    last_status[order_id] = "pending"
                    items[order_id] = r.args["data"]["items"]
                elif r.status == UNKNOWN:
                    customer = r.args["data"]["customer_id"]
                    unknown_creates[customer] = unknown_creates.get(customer, 0) + 1
            elif r.f == "delete_order":
                if r.status == OK and code == 204:
                    deleted.add(r.args["order"])
                elif r.status == UNKNOWN:
                    maybe_deleted.add(r.args["order"])
            elif r.f == "transition":
                if r.status == OK and code == 200:
                    last_status[r.args["order"]] = r.args["to"]
                elif r.status == UNKNOWN:
                    last_status[r.args["order"]] = "uncertain"
            elif r.f == "replace_order":
                if r.status == OK and code == 200:
                    items[r.args["order"]] = r.args["lines"]
                elif r.status == UNKNOWN:
                    items[r.args["order"]] = None
        for order_id, r in sorted(placed.items()):
            found = by_id.get(order_id)
            if order_id in deleted:
                if found is not None:
                    problems.append("order %s was deleted (204) but exists" % order_id)
                continue
            if found is None:
                if order_id not in maybe_deleted:
                    problems.append("order %s got a 201 (op #%d) but does not exist"
                                    % (order_id, r.id))
                continue
            got = [(i["product_id"], i["quantity"]) for i in found["items"]]
            wanted = got if items[order_id] is None else [
                (i["product_id"], i["quantity"]) for i in items[order_id]]
            if wanted != got or found["customer_id"] != r.args["data"]["customer_id"]:
                problems.append("order %s holds %r for %s, ordered %r for %s" % (
                    order_id, got, found["customer_id"], wanted, r.args["data"]["customer_id"]))
            expected = last_status.get(order_id)
            if expected not in (None, "uncertain") and found["status"] != expected:
                problems.append("order %s is %s, its last acknowledged change made it %s"
                                % (order_id, found["status"], expected))
        extra: Dict[str, List[str]] = {}
        for order in orders:
            if order["id"] not in placed:
                extra.setdefault(order["customer_id"], []).append(order["id"])
        for customer, extra_ids in sorted(extra.items()):
            allowed = unknown_creates.get(customer, 0)
            if customer not in customer_of or len(extra_ids) > allowed:
                problems.append(
                    "customer %s has %d orders no 201 accounts for (%s) but only %d order "
                    "requests of unknown outcome: an idempotency key applied twice?"
                    % (customer, len(extra_ids), ", ".join(sorted(extra_ids)), allowed))
        return problems

    def replay_keys(self, ctx: Context, records: List[Record], rng: random.Random,
                    limit: int = 40) -> List[str]:
        """Send some completed writes again with their keys: each must get its first
        answer back (marked replayed) and change nothing."""
        problems = []
        # Only keys the shop still retains: it keeps the latest 100,000 keys (and 24 h);
        # an older key is forgotten by design and a replay would run the request again.
        keyed = [r for r in records if "idempotency_key" in r.args]
        candidates = [r for r in keyed[-RETAINED_KEYS:]
                      if r.status == OK and r.f in ("order", "restock")
                      and r.result["status"] in (201, 200, 409, 412)]
        rng.shuffle(candidates)
        for r in candidates[:limit]:
            if r.f == "order":
                method, path, data, headers = "POST", "/orders", r.args["data"], {}
            else:
                method, path = "PATCH", "/products/" + r.args["product"]
                data = {"stock": r.args["new"]}
                headers = {"If-Match": '"%d"' % r.args["version"]}
            hdrs = dict(JSON, **headers)
            hdrs["Idempotency-Key"] = r.args["idempotency_key"]
            reply = call(ctx.url(rng.choice(ctx.node_ids)), method, path,
                         json.dumps(data).encode(), hdrs)
            if reply.status == 503:
                continue
            same = reply.status == r.result["status"]
            if same and reply.status < 300:
                same = reply.json().get("id") == r.result["body"].get("id")
            if not same or reply.headers.get("idempotent-replayed") != "true":
                problems.append("replaying op #%d (%s, key %s) answered %d %s%s, first answer %d"
                                % (r.id, r.f, r.args["idempotency_key"], reply.status,
                                   reply.body[:120], "" if reply.headers.get(
                                       "idempotent-replayed") == "true" else " (not replayed)",
                                   r.result["status"]))
        return problems + self._unchanged_after_replays(ctx)

    def _unchanged_after_replays(self, ctx: Context) -> List[str]:
        """Replayed requests must not have changed any table."""
        before = self.final_state.get(ctx.node_ids[0])
        if before is None:
            return []
        problems = ctx.settle()
        for node_id in ctx.node_ids:
            for collection in ("products", "customers", "orders"):
                items, problem = self._read_all(ctx.url(node_id), collection)
                if problem:
                    problems.append("after replays, %s on %s: %s" % (collection, node_id, problem))
                elif items != before[collection]:
                    problems.append("replaying idempotency keys changed %s on %s"
                                    % (collection, node_id))
        return problems


def _subset_sums_to(values: List[int], target: int) -> bool:
    if len(values) > 20:
        return True  # too many unknowns to tell: not a verdict (rare; counted as unknown)
    sums = {0}
    for v in values:
        sums |= {s + v for s in sums}
    return target in sums


def _first_difference(a: List[Any], b: List[Any]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return "%r vs %r" % (x, y)
    return "one list is longer"

"""The shop's HTTP API (Klein), built on ``txraft.http``: the contract of issue 4.

Every write is validated here first (422 with ``field``) so that bad requests cost no log
entry, then proposed as one command that the state machine validates again.  The answer
to a write is the state machine's ``Result``: its status and body, ``X-Raft-Index`` (the
entry that produced it), an ``ETag`` of the resource's version and, on 201, ``Location``.

``Idempotency-Key``: the key and a fingerprint of the request (method, path, JSON body)
travel in the command; the state machine records the first answer and replays it.  A
node that already holds the record answers a repeat at once, without a log entry.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from txraft.apps.idempotency import recorded_answer
from txraft.http.errors import HTTPError
from txraft.http.node import RaftHTTP
from txraft.http.requests import idempotency_key, query_arg
from txraft.http.responses import dumps, json_response, render_result
from txraft.http.routing import Route, RouteTable
from txraft.http.membership import membership_routes
from txraft.http.status import status_routes

from shop import schema
from shop.openapi import spec
from shop.schema import invalid
from shop.state import Result, encode_command

COLLECTIONS = {"p": "products", "c": "customers", "o": "orders"}
KIND_NAMES = {"p": "product", "c": "customer", "o": "order"}
GENERIC_QUERY = ("consistency", "redirect")
LIST_QUERY = {
    "p": ("category", "q", "min_price_cents", "max_price_cents", "in_stock", "limit", "offset"),
    "c": ("q", "email", "limit", "offset"),
    "o": ("customer_id", "status", "limit", "offset"),
}


def parse_if_match(value: Optional[bytes]) -> Optional[List[int]]:
    """The versions an ``If-Match`` header accepts; None when any version will do.

    ETags are ``"<version>"``.  Weak tags never match (If-Match compares strongly) and
    tags that are not ours match nothing, so they end in 412 rather than being ignored.
    """
    if value is None:
        return None
    versions = []
    for tag in value.decode("latin-1").split(","):
        tag = tag.strip()
        if tag == "*":
            return None
        if len(tag) >= 3 and tag[0] == '"' and tag[-1] == '"' and tag[1:-1].isdigit() \
                and tag[1:-1].isascii() and len(tag) < 21:
            versions.append(int(tag[1:-1]))
    return versions


def etag(version: int) -> bytes:
    return b'"%d"' % (version,)


def _integer(value: Optional[str], name: str, low: int, high: int, default: Optional[int]):
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise invalid("invalid_value", "%s must be an integer from %d to %d" % (name, low, high), name)
    return int(value)


class ShopAPI:
    """The Klein app of one node: routes for products, customers, orders and the spec."""

    def __init__(self, http: RaftHTTP, clock):
        self.http = http
        self.clock = clock
        self.state_machine = http.node.state_machine
        self._spec = dumps(spec())
        routes = []
        for prefix, collection in COLLECTIONS.items():
            name = KIND_NAMES[prefix]
            item = "/%s/<id>" % (collection,)
            for method, path, handler, endpoint in (
                ("GET", "/" + collection, self.list, "list_" + collection),
                ("POST", "/" + collection, self.create, "create_" + name),
                ("GET", item, self.get, "get_" + name),
                ("PUT", item, self.replace, "replace_" + name),
                ("PATCH", item, self.patch, "patch_" + name),
                ("DELETE", item, self.delete, "delete_" + name),
            ):
                routes.append(Route(method, path, self._bind(handler, prefix), endpoint))
        routes.append(Route("GET", "/openapi.json", self.openapi, "openapi"))
        self.routes = RouteTable(
            routes + list(status_routes(http.node)) + list(membership_routes(http)),
            http.answer_error,
        )
        self.app = self.routes.klein()

    @staticmethod
    def _bind(method: Callable, prefix: str) -> Callable:
        def handler(request, **kwargs):
            return method(request, prefix, **kwargs)

        handler.__name__ = "%s_%s" % (method.__name__, prefix)
        return handler

    def resource(self):
        return self.app.resource()

    # -- reads ---------------------------------------------------------------------------

    def openapi(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return self._spec

    def get(self, request, prefix, id):
        return self.http.read(request, lambda: self._document(request, prefix, id))

    def _document(self, request, prefix, ident):
        document = self.state_machine.get(prefix, ident)
        if document is None:
            raise HTTPError(404, "not_found", "no %s with id %s" % (KIND_NAMES[prefix], ident))
        return json_response(request, 200, document, ((b"ETag", etag(document["version"])),))

    def list(self, request, prefix):
        allowed = LIST_QUERY[prefix]
        for name in request.args:
            text = name.decode("latin-1")
            if text not in allowed and text not in GENERIC_QUERY:
                raise invalid("unknown_field", "unknown query parameter %r" % (text,), text)
        arg = lambda name: query_arg(request, name.encode("ascii"))
        limit = _integer(arg("limit"), "limit", 1, schema.MAX_LIMIT, schema.DEFAULT_LIMIT)
        offset = _integer(arg("offset"), "offset", 0, schema.MAX_OFFSET, 0)
        sm = self.state_machine
        if prefix == "p":
            in_stock = arg("in_stock")
            if in_stock not in (None, "true", "false"):
                raise invalid("invalid_value", "in_stock must be true or false", "in_stock")
            filters = dict(
                category=arg("category"),
                q=arg("q"),
                min_price_cents=_integer(arg("min_price_cents"), "min_price_cents", 0,
                                         schema.MAX_PRICE_CENTS, None),
                max_price_cents=_integer(arg("max_price_cents"), "max_price_cents", 0,
                                         schema.MAX_PRICE_CENTS, None),
                in_stock=None if in_stock is None else in_stock == "true",
            )
            query = sm.list_products
        elif prefix == "c":
            filters = dict(q=arg("q"), email=arg("email"))
            query = sm.list_customers
        else:
            status = arg("status")
            if status is not None and status not in schema.STATUSES:
                raise invalid("invalid_value", "status must be one of %s"
                              % (", ".join(schema.STATUSES),), "status")
            filters = dict(customer_id=arg("customer_id"), status=status)
            query = sm.list_orders

        def render():
            items, total = query(limit=limit, offset=offset, **filters)
            return json_response(request, 200, {"items": items, "total": total,
                                                "limit": limit, "offset": offset})

        return self.http.read(request, render)

    # -- writes --------------------------------------------------------------------------

    def create(self, request, prefix):
        data = self.http.json_body(request)
        if prefix == "o":
            schema.validate_order(data)
        else:
            schema.validate_full(schema.PRODUCT_FIELDS if prefix == "p" else schema.CUSTOMER_FIELDS,
                                 data)
        return self._submit(request, KIND_NAMES[prefix] + ".create", None, data)

    def replace(self, request, prefix, id):
        data = self.http.json_body(request)
        if prefix == "o":
            schema.validate_order(data, require_customer=False)
        else:
            schema.validate_full(schema.PRODUCT_FIELDS if prefix == "p" else schema.CUSTOMER_FIELDS,
                                 data)
        return self._submit(request, KIND_NAMES[prefix] + ".replace", id, data)

    def patch(self, request, prefix, id):
        data = self.http.json_body(request)
        if prefix == "o":
            schema.validate_status_patch(data)
        else:
            schema.validate_patch(schema.PRODUCT_FIELDS if prefix == "p" else schema.CUSTOMER_FIELDS,
                                  data)
        return self._submit(request, KIND_NAMES[prefix] + ".patch", id, data)

    def delete(self, request, prefix, id):
        return self._submit(request, KIND_NAMES[prefix] + ".delete", id, None)

    def _submit(self, request, op: str, ident: Optional[str], data: Any):
        key = idempotency_key(request)
        fp = None
        if key is not None:
            fp = schema.fingerprint(request.method.decode("ascii"),
                                    request.path.decode("latin-1"), data)
            recorded = recorded_answer(self.state_machine.idempotency_record(key), fp)
            if recorded is not None:
                return self._answer(request, recorded)
        command = encode_command(
            op, int(self.clock.seconds() * 1000), ident, data,
            parse_if_match(request.getHeader(b"if-match")), key, fp)
        return self.http.write(request, command, lambda index, result: self._answer(request, result))

    @staticmethod
    def _answer(request, result: Result):
        if not isinstance(result, Result):
            raise RuntimeError("the state machine answered %r" % (result,))
        body = result.body
        headers = []
        if body is not None and result.status < 300:
            headers.append((b"ETag", etag(body["version"])))
            if result.status == 201:
                ident = body["id"]
                headers.append((b"Location", ("/%s/%s" % (COLLECTIONS[ident[0]], ident)).encode()))
        return render_result(request, result, headers)


def make_resource(node, clock, http_client):
    """``Application.make_resource`` of the shop."""
    return ShopAPI(RaftHTTP(node, clock, http_client), clock).resource()

"""The shop's data rules, checked twice: by the HTTP layer before proposing and by the
state machine when applying (the log, not the HTTP layer, is the trust boundary).

Everything here is a pure function of its arguments and deliberately avoids behaviour that
could differ between Python versions on different replicas (Unicode case mapping and
whitespace tables): only ASCII is case-folded or treated as blank.  A broken rule raises
``Refusal`` (``txraft.results``: a plain exception carrying a status, a code, a message
and the field at fault); the state machine records it as a ``Result``, the HTTP layer
answers it as a JSON error.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import attrs

from txraft import results
from txraft.results import Refusal

MAX_PRICE_CENTS = 10**10  # 100 million in whole units
MAX_STOCK = 10**9
MAX_QUANTITY = 10**6
MAX_ORDER_LINES = 100  # so total_cents stays far below 2**63
MAX_ID_CHARS = 32
MAX_IDEMPOTENCY_KEY_CHARS = results.MAX_KEY_CHARS
MAX_OFFSET = 2**62  # the largest ?offset= of a list (SQLite's OFFSET is a signed 64-bit int)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

STATUSES = ("pending", "paid", "shipped", "cancelled")
TRANSITIONS = {
    "pending": ("paid", "cancelled"),
    "paid": ("shipped", "cancelled"),
    "shipped": (),
    "cancelled": (),
}

_ASCII_BLANK = " \t\r\n\f\v"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
EMAIL_PATTERN = r"^[^@ \t\r\n]+@[^@ \t\r\n]+\.[^@ \t\r\n]+$"
_EMAIL = re.compile(EMAIL_PATTERN, re.ASCII)


def invalid(code: str, message: str, field: Optional[str]) -> Refusal:
    return Refusal(422, code, message, field)


def ascii_lower(value: str) -> str:
    return value.translate(_ASCII_LOWER)


@attrs.frozen
class Field:
    """One client-writable field: a string (length bounds) or an integer (value bounds)."""

    name: str
    kind: str  # "string" | "integer"
    required: bool
    minimum: int
    maximum: int
    description: str
    format: Optional[str] = None

    def check(self, value: Any, where: str) -> Any:
        if value is None:
            if self.required:
                raise invalid("invalid_type", "%s is required and cannot be null" % (where,), where)
            return None
        if self.kind == "integer":
            if type(value) is not int:
                raise invalid("invalid_type", "%s must be an integer" % (where,), where)
            if not self.minimum <= value <= self.maximum:
                raise invalid("invalid_value", "%s must be between %d and %d"
                              % (where, self.minimum, self.maximum), where)
            return value
        if type(value) is not str:
            raise invalid("invalid_type", "%s must be a string" % (where,), where)
        if len(value) > self.maximum or len(value.strip(_ASCII_BLANK)) < self.minimum:
            if self.minimum:
                message = "%s must be 1 to %d characters and not blank" % (where, self.maximum)
            else:
                message = "%s must be at most %d characters" % (where, self.maximum)
            raise invalid("invalid_value", message, where)
        if self.format == "email" and not _EMAIL.match(value):
            raise invalid("invalid_value", "%s is not an email address" % (where,), where)
        return value


PRODUCT_FIELDS = (
    Field("name", "string", True, 1, 200, "Display name."),
    Field("description", "string", False, 0, 5000, "Free text."),
    Field("category", "string", False, 1, 100, "Category, matched exactly by the filter."),
    Field("sku", "string", False, 1, 64, "Stock-keeping unit, unique across products."),
    Field("price_cents", "integer", True, 0, MAX_PRICE_CENTS, "Unit price in cents."),
    Field("stock", "integer", True, 0, MAX_STOCK, "Units available."),
)
CUSTOMER_FIELDS = (
    Field("name", "string", True, 1, 200, "Full name."),
    Field("email", "string", True, 3, 254,
          "Email address, unique across customers (ASCII letters compared without case).",
          format="email"),
    Field("address", "string", False, 0, 1000, "Postal address."),
)
ORDER_STATUS_FIELD = "status"


def check_object(value: Any, where: str = "body") -> dict:
    if type(value) is not dict:
        raise invalid("invalid_type", "%s must be a JSON object" % (where,), None if where == "body" else where)
    return value


def _check_known(fields, data: dict) -> None:
    known = {f.name for f in fields}
    for name in data:
        if name not in known:
            raise invalid("unknown_field", "unknown field %r" % (name,), name)


def validate_full(fields, data: Any) -> Dict[str, Any]:
    """A complete representation (POST, PUT): required fields present, others may be absent."""
    data = check_object(data)
    _check_known(fields, data)
    out = {}
    for field in fields:
        if field.name not in data:
            if field.required:
                raise invalid("missing_field", "%s is required" % (field.name,), field.name)
            out[field.name] = None
        else:
            out[field.name] = field.check(data[field.name], field.name)
    return out


def validate_patch(fields, data: Any) -> Dict[str, Any]:
    """A JSON merge patch (RFC 7396): given fields only; null clears an optional field."""
    data = check_object(data)
    _check_known(fields, data)
    return {field.name: field.check(data[field.name], field.name)
            for field in fields if field.name in data}


def check_id(value: Any, where: str) -> str:
    if type(value) is not str:
        raise invalid("invalid_type", "%s must be a string" % (where,), where)
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise invalid("invalid_value", "%s must be 1 to %d characters" % (where, MAX_ID_CHARS), where)
    return value


def validate_items(items: Any) -> List[Tuple[str, int]]:
    if type(items) is not list:
        raise invalid("invalid_type", "items must be an array", "items")
    if not items:
        raise invalid("empty_order", "an order needs at least one item", "items")
    if len(items) > MAX_ORDER_LINES:
        raise invalid("invalid_value", "an order has at most %d items" % (MAX_ORDER_LINES,), "items")
    lines = []
    for i, item in enumerate(items):
        where = "items[%d]" % (i,)
        check_object(item, where)
        for name in item:
            if name not in ("product_id", "quantity"):
                raise invalid("unknown_field", "unknown field %r" % (name,), "%s.%s" % (where, name))
        for name in ("product_id", "quantity"):
            if name not in item:
                raise invalid("missing_field", "%s.%s is required" % (where, name),
                              "%s.%s" % (where, name))
        product_id = check_id(item["product_id"], where + ".product_id")
        quantity = item["quantity"]
        if type(quantity) is not int:
            raise invalid("invalid_type", "%s.quantity must be an integer" % (where,),
                          where + ".quantity")
        if not 1 <= quantity <= MAX_QUANTITY:
            raise invalid("invalid_value", "%s.quantity must be between 1 and %d"
                          % (where, MAX_QUANTITY), where + ".quantity")
        lines.append((product_id, quantity))
    return lines


def validate_order(data: Any, require_customer: bool = True) -> Dict[str, Any]:
    """``{"customer_id", "items"}`` of POST /orders (PUT: ``customer_id`` optional)."""
    data = check_object(data)
    for name in data:
        if name not in ("customer_id", "items"):
            raise invalid("unknown_field", "unknown field %r" % (name,), name)
    if "items" not in data:
        raise invalid("missing_field", "items is required", "items")
    customer_id = None
    if "customer_id" in data:
        customer_id = check_id(data["customer_id"], "customer_id")
    elif require_customer:
        raise invalid("missing_field", "customer_id is required", "customer_id")
    return {"customer_id": customer_id, "items": validate_items(data["items"])}


def validate_status_patch(data: Any) -> str:
    """``{"status": ...}`` of PATCH /orders/{id}."""
    data = check_object(data)
    for name in data:
        if name != "status":
            raise invalid("unknown_field", "unknown field %r (only status can change)" % (name,), name)
    if "status" not in data:
        raise invalid("missing_field", "status is required", "status")
    status = data["status"]
    if type(status) is not str:
        raise invalid("invalid_type", "status must be a string", "status")
    if status not in STATUSES:
        raise invalid("invalid_value", "status must be one of %s" % (", ".join(STATUSES),), "status")
    return status


def check_idempotency_key(key: Any) -> str:
    problem = results.key_problem(key)
    if problem is not None:
        raise invalid("invalid_value", problem, results.FIELD)
    return key


def fingerprint(method: str, path: str, body: Any) -> bytes:
    """What makes two requests "the same" for an idempotency key: method, path and the
    body's JSON value (so key order and whitespace do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(("%s\0%s\0%s" % (method, path, canonical)).encode("ascii")).digest()

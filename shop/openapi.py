"""The OpenAPI 3.1 description of the shop's HTTP API, served at ``GET /openapi.json``.

Built from the same field rules the code validates with (``shop.schema``), and kept true
by ``tests/unit/test_shop_openapi.py``: every route is described and every description is a
route, every documented status is produced by some request and every status a request
produces is documented.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from shop import schema
from txraft.core.config import ADDRESS_PATTERN, MEMBER_ID_PATTERN
from shop.state import (DEFAULT_IDEMPOTENCY_MAX_KEYS, DEFAULT_IDEMPOTENCY_RETENTION_MS)

REF = "#/components/%s/%s"


def _ref(section: str, name: str) -> dict:
    return {"$ref": REF % (section, name)}


def _field_schema(field: schema.Field, nullable: bool) -> dict:
    if field.kind == "integer":
        out: Dict[str, Any] = {"type": "integer", "minimum": field.minimum, "maximum": field.maximum}
    else:
        out = {"type": "string", "maxLength": field.maximum}
        if field.minimum:
            out["minLength"] = field.minimum
        if field.format:
            out["format"] = field.format
    if nullable:
        out["type"] = [out["type"], "null"]
    out["description"] = field.description
    return out


def _input_schema(fields, mode: str) -> dict:
    """``full`` (POST/PUT: required fields required) or ``patch`` (merge patch)."""
    properties = {f.name: _field_schema(f, nullable=not f.required or mode == "never")
                  for f in fields}
    out: Dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": False}
    if mode == "full":
        out["required"] = [f.name for f in fields if f.required]
    else:
        out["description"] = ("JSON merge patch (RFC 7396): given fields change, null clears "
                              "an optional field, absent fields stay.")
    return out


def _document_schema(fields, description: str) -> dict:
    properties: Dict[str, Any] = {"id": {"type": "string", "description": "Opaque id."}}
    for f in fields:
        properties[f.name] = _field_schema(f, nullable=not f.required)
    properties.update(_STAMPS)
    return {"type": "object", "description": description, "properties": properties,
            "required": list(properties), "additionalProperties": False}


_STAMPS = {
    "version": {"type": "integer", "minimum": 1,
                "description": "Grows by one at every change; the ETag is its quoted value."},
    "created_at": {"type": "string", "format": "date-time",
                   "description": "Stamped by the leader that accepted the write (UTC)."},
    "updated_at": {"type": "string", "format": "date-time"},
}


def _list_schema(item: str) -> dict:
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": _ref("schemas", item)},
            "total": {"type": "integer", "description": "Matches before paging."},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
        "required": ["items", "total", "limit", "offset"],
        "additionalProperties": False,
    }


def _id_field() -> dict:
    """An id in a request body, as ``shop.schema.check_id`` accepts it."""
    return {"type": "string", "minLength": 1, "maxLength": schema.MAX_ID_CHARS}


def _order_items() -> dict:
    return {
        "type": "array", "minItems": 1, "maxItems": schema.MAX_ORDER_LINES,
        "items": {
            "type": "object",
            "properties": {
                "product_id": _id_field(),
                "quantity": {"type": "integer", "minimum": 1, "maximum": schema.MAX_QUANTITY},
            },
            "required": ["product_id", "quantity"],
            "additionalProperties": False,
        },
        "description": "Lines of the same product are checked against its stock together.",
    }


SCHEMAS: Dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {"error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                           "field": {"type": "string",
                                     "description": "The one field at fault, when there is one."}},
            "required": ["code", "message"],
        }},
        "required": ["error"],
    },
    "Product": _document_schema(schema.PRODUCT_FIELDS, "A product for sale."),
    "ProductInput": _input_schema(schema.PRODUCT_FIELDS, "full"),
    "ProductPatch": _input_schema(schema.PRODUCT_FIELDS, "patch"),
    "ProductList": _list_schema("Product"),
    "Customer": _document_schema(schema.CUSTOMER_FIELDS, "A customer."),
    "CustomerInput": _input_schema(schema.CUSTOMER_FIELDS, "full"),
    "CustomerPatch": _input_schema(schema.CUSTOMER_FIELDS, "patch"),
    "CustomerList": _list_schema("Customer"),
    "Order": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "Opaque id."},
            "customer_id": {"type": "string"},
            "status": {"type": "string", "enum": list(schema.STATUSES)},
            "items": {"type": "array", "items": {
                "type": "object",
                "properties": {"product_id": {"type": "string"},
                               "quantity": {"type": "integer", "minimum": 1},
                               "unit_price_cents": {
                                   "type": "integer",
                                   "description": "The product's price when the order was placed."}},
                "required": ["product_id", "quantity", "unit_price_cents"],
                "additionalProperties": False}},
            "total_cents": {"type": "integer"},
            **_STAMPS,
        },
        "required": ["id", "customer_id", "status", "items", "total_cents", "version",
                     "created_at", "updated_at"],
        "additionalProperties": False,
    },
    "OrderInput": {
        "type": "object",
        "properties": {"customer_id": _id_field(), "items": _order_items()},
        "required": ["customer_id", "items"],
        "additionalProperties": False,
    },
    "OrderReplace": {
        "type": "object",
        "description": "New items for a pending order (and optionally another customer).",
        "properties": {"customer_id": _id_field(), "items": _order_items()},
        "required": ["items"],
        "additionalProperties": False,
    },
    "OrderStatus": {
        "type": "object",
        "description": "pending → paid → shipped; pending or paid → cancelled (restores stock).",
        "properties": {"status": {"type": "string", "enum": list(schema.STATUSES)}},
        "required": ["status"],
        "additionalProperties": False,
    },
    "OrderList": _list_schema("Order"),
    "RaftStatus": {"type": "object", "description": "This node's Raft state: id, role, term, "
                   "leader, commit and applied index, last log index, peer progress."},
    "RaftMembers": {
        "type": "object",
        "required": ["id", "leader_id", "from_leader", "config_index", "members"],
        "properties": {
            "id": {"type": "string"},
            "leader_id": {"type": ["string", "null"]},
            "from_leader": {"type": "boolean",
                            "description": "True when this node leads: the progress "
                                           "fields are then present."},
            "config_index": {"type": "integer", "minimum": 0,
                             "description": "Index of the entry holding the configuration "
                                            "(0: the founding one)."},
            "members": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "role", "address", "http_url"],
                "properties": {
                    "id": {"type": "string"},
                    "role": {"enum": ["voter", "learner"]},
                    "address": {"type": "string", "description": "host:port of its Raft UDP."},
                    "http_url": {"type": "string"},
                    "match_index": {"type": "integer"},
                    "lag": {"type": "integer", "description": "Entries behind the leader."},
                    "state": {"enum": ["probe", "replicate", "snapshot"]},
                    "recent_active": {"type": "boolean"},
                    "lost_log": {"type": "boolean"},
                    "leader": {"type": "boolean"},
                    "uuid": {"type": ["string", "null"],
                             "description": "Its data directory's uuid, when known."},
                },
            }},
        },
    },
}

HEADERS = {
    "WWW-Authenticate": {"description": "Bearer: the cluster secret.",
                         "schema": {"type": "string"}},
    "X-Raft-Index": {"description": "Log index at which the write (first) committed.",
                     "schema": {"type": "integer"}},
    "X-Raft-Applied-Index": {"description": "Applied index of the state this read reflects.",
                             "schema": {"type": "integer"}},
    "ETag": {"description": 'The resource version, quoted: "3".', "schema": {"type": "string"}},
    "Location": {"description": "Path of the created resource.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "X-Raft-Leader": {"description": "Id of the leader.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "true when this is the recorded first answer.",
                            "schema": {"type": "string"}},
}


def _headers(*names: str) -> dict:
    return {name: _ref("headers", name) for name in names}


def _error(description: str, *headers: str) -> dict:
    out = {"description": description,
           "content": {"application/json": {"schema": _ref("schemas", "Error")}}}
    if headers:
        out["headers"] = _headers(*headers)
    return out


RESPONSES = {
    "Redirect": {"description": "With ?redirect=true on a follower: repeat the request at "
                 "Location on the leader.", "headers": _headers("Location", "X-Raft-Leader")},
    "BadRequest": _error("malformed_json: the body is not JSON."),
    "NotFound": _error("not_found: no such id."),
    "PreconditionFailed": _error("precondition_failed: If-Match does not match the version."),
    "TooLarge": _error("body_too_large: the body is over the node's --max-body-bytes "
                       "(64 KiB by default)."),
    "UnsupportedMediaType": _error("unsupported_media_type: the body must be application/json."),
    "Invalid": _error("Validation: missing_field, unknown_field, invalid_type, invalid_value, "
                      "empty_order, unknown_product, unknown_customer, idempotency_key_reused. "
                      "`field` names the culprit."),
    "Unavailable": _error("no_leader (no leader known, or leadership is moving), "
                          "read_timeout or overloaded: nothing was done; retry after "
                          "Retry-After seconds.", "Retry-After"),
    "CommitTimeout": _error("commit_timeout: the write was not confirmed in time and its "
                            "outcome is unknown (it may have been applied). Retry with the same "
                            "Idempotency-Key."),
}

PARAMETERS = {
    "Id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
    "Consistency": {
        "name": "consistency", "in": "query", "required": False,
        "schema": {"type": "string", "enum": ["linearizable", "stale"], "default": "linearizable"},
        "description": "linearizable (ReadIndex through the leader) or stale (this node's "
                       "replica; see X-Raft-Applied-Index; 503 stale_read_refused on a "
                       "node that lost its data or never caught up)."},
    "Redirect": {
        "name": "redirect", "in": "query", "required": False,
        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
        "description": "true: on a follower, answer 307 to the leader instead of forwarding "
                       "(false, the default). Any other value is 422 invalid_value."},
    "IdempotencyKey": {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": schema.MAX_IDEMPOTENCY_KEY_CHARS,
                   "pattern": "^[!-~]+$"},  # visible ASCII, as txraft.results checks
        "description": "Repeating a key with the same method, path and body returns the first "
                       "answer without applying anything again; with a different request it is "
                       "422 idempotency_key_reused. Keys are kept %d hours (leader-stamped time) "
                       "and at most %d at once (the oldest go first)."
                       % (DEFAULT_IDEMPOTENCY_RETENTION_MS // 3_600_000, DEFAULT_IDEMPOTENCY_MAX_KEYS)},
    "IfMatch": {
        "name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
        "description": 'ETag(s) of the version the change applies to, e.g. "3"; 412 otherwise.'},
    "Limit": {"name": "limit", "in": "query", "required": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": schema.MAX_LIMIT,
                         "default": schema.DEFAULT_LIMIT}},
    "Offset": {"name": "offset", "in": "query", "required": False,
               "schema": {"type": "integer", "minimum": 0, "maximum": schema.MAX_OFFSET,
                          "default": 0}},
}


def _query(name: str, type_: str = "string", **extra) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": dict(type=type_, **extra)}


LIST_FILTERS = {
    "products": [
        _query("category", description="Exact category."),
        _query("q", description="Substring of the name (ASCII letters without case)."),
        _query("min_price_cents", "integer", minimum=0, maximum=schema.MAX_PRICE_CENTS),
        _query("max_price_cents", "integer", minimum=0, maximum=schema.MAX_PRICE_CENTS),
        _query("in_stock", enum=["true", "false"]),
    ],
    "customers": [
        _query("q", description="Substring of the name."),
        _query("email", description="Exact email (ASCII letters without case)."),
    ],
    "orders": [
        _query("customer_id"),
        _query("status", enum=list(schema.STATUSES)),
    ],
}

CONFLICTS = {
    ("products", "create"): "duplicate_sku",
    ("products", "replace"): "duplicate_sku",
    ("products", "patch"): "duplicate_sku",
    ("customers", "create"): "duplicate_email",
    ("customers", "replace"): "duplicate_email",
    ("customers", "patch"): "duplicate_email",
    ("orders", "create"): "insufficient_stock (nothing changes)",
    ("orders", "replace"): "insufficient_stock (nothing changes) or invalid_transition "
                           "(the order is not pending)",
    ("orders", "patch"): "invalid_transition",
    ("orders", "delete"): "invalid_transition (a shipped order stays)",
}


def _json_body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref("schemas", name)}}}


def _ok(status_description: str, schema_name: str, *headers: str) -> dict:
    out = {"description": status_description,
           "content": {"application/json": {"schema": _ref("schemas", schema_name)}}}
    if headers:
        out["headers"] = _headers(*headers)
    return out


def _operations(collection: str, kind: str) -> Tuple[dict, dict]:
    title = kind.capitalize()
    names = {"products": "Product", "customers": "Customer", "orders": "Order"}
    doc = names[collection]
    read_params = [_ref("parameters", "Consistency"), _ref("parameters", "Redirect")]
    write_params = [_ref("parameters", "IdempotencyKey"), _ref("parameters", "Redirect")]
    item_write_params = [_ref("parameters", "IfMatch")] + write_params
    common_write = {"307": _ref("responses", "Redirect"), "422": _ref("responses", "Invalid"),
                    "503": _ref("responses", "Unavailable"),
                    "504": _ref("responses", "CommitTimeout")}
    body_errors = {"400": _ref("responses", "BadRequest"), "413": _ref("responses", "TooLarge"),
                   "415": _ref("responses", "UnsupportedMediaType")}

    def conflict(operation: str) -> dict:
        code = CONFLICTS.get((collection, operation))
        return {"409": _error(code)} if code else {}

    collection_ops = {
        "get": {
            "operationId": "list_" + collection,
            "summary": "List %s, filtered and paged (ordered by creation)." % (collection,),
            "parameters": LIST_FILTERS[collection] + [_ref("parameters", "Limit"),
                                                      _ref("parameters", "Offset")] + read_params,
            "responses": {"200": _ok("A page.", doc + "List", "X-Raft-Applied-Index"),
                          "307": _ref("responses", "Redirect"),
                          "422": _ref("responses", "Invalid"),
                          "503": _ref("responses", "Unavailable")},
        },
        "post": {
            "operationId": "create_" + kind,
            "summary": "Create a %s." % (kind,),
            "parameters": write_params,
            "requestBody": _json_body(doc + "Input"),
            "responses": {"201": _ok(title + " created.", doc, "Location", "ETag", "X-Raft-Index"),
                          **body_errors, **conflict("create"), **common_write},
        },
    }
    replace_body = "OrderReplace" if collection == "orders" else doc + "Input"
    patch_body = "OrderStatus" if collection == "orders" else doc + "Patch"
    item_ops = {
        "parameters": [_ref("parameters", "Id")],
        "get": {
            "operationId": "get_" + kind,
            "summary": "Read one %s." % (kind,),
            "parameters": read_params,
            "responses": {"200": _ok("The %s." % (kind,), doc, "ETag", "X-Raft-Applied-Index"),
                          "307": _ref("responses", "Redirect"),
                          "404": _ref("responses", "NotFound"),
                          "422": _ref("responses", "Invalid"),
                          "503": _ref("responses", "Unavailable")},
        },
        "put": {
            "operationId": "replace_" + kind,
            "summary": ("Replace the items of a pending order, adjusting stock atomically."
                        if collection == "orders" else
                        "Replace a %s (absent optional fields become null)." % (kind,)),
            "parameters": item_write_params,
            "requestBody": _json_body(replace_body),
            "responses": {"200": _ok("Replaced.", doc, "ETag", "X-Raft-Index"),
                          "404": _ref("responses", "NotFound"),
                          "412": _ref("responses", "PreconditionFailed"),
                          **body_errors, **conflict("replace"), **common_write},
        },
        "patch": {
            "operationId": "patch_" + kind,
            "summary": ("Move an order to another status." if collection == "orders"
                        else "Change some fields of a %s (JSON merge patch)." % (kind,)),
            "parameters": item_write_params,
            "requestBody": _json_body(patch_body),
            "responses": {"200": _ok("Changed.", doc, "ETag", "X-Raft-Index"),
                          "404": _ref("responses", "NotFound"),
                          "412": _ref("responses", "PreconditionFailed"),
                          **body_errors, **conflict("patch"), **common_write},
        },
        "delete": {
            "operationId": "delete_" + kind,
            "summary": ("Cancel and remove an order that is not shipped, restoring its stock."
                        if collection == "orders" else "Delete a %s." % (kind,)),
            "parameters": item_write_params,
            "responses": {"204": {"description": "Deleted.", "headers": _headers("X-Raft-Index")},
                          "404": _ref("responses", "NotFound"),
                          "412": _ref("responses", "PreconditionFailed"),
                          **conflict("delete"), **common_write},
        },
    }
    return collection_ops, item_ops


def spec() -> dict:
    """The OpenAPI 3.1 document."""
    paths: Dict[str, Any] = {}
    for collection, kind in (("products", "product"), ("customers", "customer"),
                             ("orders", "order")):
        collection_ops, item_ops = _operations(collection, kind)
        paths["/" + collection] = collection_ops
        paths["/%s/{id}" % (collection,)] = item_ops
    paths["/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document.",
        "responses": {"200": {"description": "OpenAPI 3.1.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/raft/status"] = {"get": {
        "operationId": "raft_status", "summary": "This node's Raft status (served locally).",
        "responses": {"200": _ok("Status.", "RaftStatus")}}}
    paths["/raft/members"] = {"get": {
        "operationId": "raft_members",
        "summary": "The cluster configuration: from the leader (forwarded, with each "
                   "member's match index and lag), or this node's own with "
                   "?consistency=stale.",
        "parameters": [_ref("parameters", "Consistency"), _ref("parameters", "Redirect")],
        "responses": {"200": _ok("Members.", "RaftMembers", "X-Raft-Applied-Index"),
                      "307": _ref("responses", "Redirect"),
                      "422": _ref("responses", "Invalid"),
                      "503": _ref("responses", "Unavailable")}}}
    change_errors = {
        "307": _ref("responses", "Redirect"),
        "401": _error("unauthorized: no 'Authorization: Bearer <the cluster secret>'.",
                      "WWW-Authenticate"),
        "403": _error("forbidden: not the cluster secret, or this node has none."),
        "404": _error("unknown_member."),
        "409": _error("change_in_progress, not_caught_up, duplicate_member, "
                      "duplicate_address, already_voter or config_changed."),
        "422": _error("last_voter, malformed_address or invalid_change (a malformed id, "
                      "http_url or uuid)."),
        "503": _error("leader_not_ready, or no leader known; nothing was done: retry.",
                      "Retry-After"),
        "504": _ref("responses", "CommitTimeout"),
    }
    add_errors = dict(change_errors, **{
        "400": _ref("responses", "BadRequest"),
        "413": _ref("responses", "TooLarge"),
        "415": _ref("responses", "UnsupportedMediaType"),
    })
    del add_errors["404"]
    expect = {"name": "expect_config_index", "in": "query", "required": False,
              "schema": {"type": "integer", "minimum": 0},
              "description": "Refuse (409 config_changed) unless the configuration is "
                             "still the one at this index."}
    member_id = {"name": "member_id", "in": "path", "required": True,
                 "schema": {"type": "string"}}
    committed = {"description": "The change committed.", "content": {"application/json": {
        "schema": {"type": "object", "required": ["config_index"],
                   "properties": {"config_index": {"type": "integer"}}}}}}
    secured = [{"clusterSecret": []}]
    paths["/raft/members"]["post"] = {
        "operationId": "raft_members_add",
        "summary": "Add a learner (needs the cluster secret; forwarded to the leader).",
        "security": secured,
        "parameters": [expect],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["id", "address"],
            "properties": {"id": {"type": "string", "pattern": MEMBER_ID_PATTERN},
                           "address": {"type": "string", "pattern": ADDRESS_PATTERN,
                                       "description": "Raft host:port (UDP)."},
                           "http_url": {"type": "string", "pattern": "^(https?://.*)?$"},
                           "uuid": {"type": "string", "pattern": "^[0-9A-Fa-f]{32}$",
                                    "description": "Bind the member to this data "
                                                   "directory (its node_uuid)."}},
            "additionalProperties": False}}}},
        "responses": dict({"200": committed}, **add_errors)}
    paths["/raft/members/{member_id}/promote"] = {"post": {
        "operationId": "raft_members_promote",
        "summary": "Promote a caught-up learner to voter (needs the cluster secret).",
        "security": secured, "parameters": [member_id, expect],
        "responses": dict({"200": committed}, **change_errors)}}
    paths["/raft/members/{member_id}"] = {"delete": {
        "operationId": "raft_members_remove",
        "summary": "Remove a voter or a learner (needs the cluster secret).",
        "security": secured, "parameters": [member_id, expect],
        "responses": dict({"200": committed}, **change_errors)}}
    transfer_errors = dict(change_errors, **{
        "400": _ref("responses", "BadRequest"),
        "413": _ref("responses", "TooLarge"),
        "415": _ref("responses", "UnsupportedMediaType"),
        "409": _error("not_voter (a learner), no_target (no other voter), "
                      "transfer_in_progress, or another_leader (another voter won)."),
        "422": _error("invalid_change: the body is not empty, {} or {\"id\": ...}."),
        "504": _error("transfer_timeout: no new leader within twice the election timeout; "
                      "the transfer was abandoned.", "Retry-After"),
    })
    paths["/raft/leader"] = {"post": {
        "operationId": "raft_leader_transfer",
        "summary": "Hand the leadership to a voter (default: the most caught-up one); "
                   "answers once it leads (needs the cluster secret; forwarded to the "
                   "leader).",
        "security": secured,
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"id": {"type": "string", "pattern": MEMBER_ID_PATTERN}},
            "additionalProperties": False}}}},
        "responses": dict({"200": {"description": "The target leads.", "content": {
            "application/json": {"schema": {
                "type": "object", "required": ["leader", "term", "previous_leader"],
                "properties": {"leader": {"type": "string"}, "term": {"type": "integer"},
                               "previous_leader": {"type": "string"}}}}}}},
            **transfer_errors)}}
    paths["/metrics"] = {"get": {
        "operationId": "raft_metrics",
        "summary": "This node's status in the Prometheus text format 0.0.4 (served locally).",
        "responses": {"200": {"description": "Metrics.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/health"] = {"get": {
        "operationId": "raft_health", "summary": "200 while the process runs.",
        "responses": {"200": {"description": "Alive.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    paths["/ready"] = {"get": {
        "operationId": "raft_ready",
        "summary": "200 when a leader is known and this node has caught up.",
        "responses": {"200": {"description": "Ready.",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      "503": _error("not_ready.", "Retry-After")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "txraft shop",
            "version": "1",
            "description": (
                "A replicated e-commerce store. Every node serves every request: a follower "
                "forwards writes and linearizable reads to the leader (or answers 307 with "
                "?redirect=true). Money is integer cents. Errors are "
                '{"error": {"code", "message", "field"?}}. Unknown paths are 404 and wrong '
                "methods 405 with Allow, both as JSON."),
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "responses": RESPONSES, "parameters": PARAMETERS,
                       "headers": HEADERS,
                       "securitySchemes": {"clusterSecret": {
                           "type": "http", "scheme": "bearer",
                           "description": "The cluster secret (--secret-file)."}}},
    }

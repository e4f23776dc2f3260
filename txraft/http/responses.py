"""Answers in JSON: the one encoding, and the answer to a state machine's ``Result``."""

from __future__ import annotations

import json
from typing import Any, Iterable, Tuple

from txraft.results import Result

JSON_TYPE = b"application/json"

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (one encoding, no round trips)."""
    return _encode_json(value).encode("utf-8")


def json_response(request, status: int, value: Any, headers: Iterable[Tuple[bytes, bytes]] = ()) -> bytes:
    """Set status, JSON content type and ``headers`` on ``request``; return the body."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    for name, header_value in headers:
        request.setHeader(name, header_value)
    return dumps(value)


def render_result(request, result: Result,
                  headers: Iterable[Tuple[bytes, bytes]] = ()) -> bytes:
    """Answer with ``result``: its status and JSON body, ``X-Raft-Index`` (the entry that
    produced it first) and ``Idempotent-Replayed: true`` on a replay."""
    request.setHeader(b"X-Raft-Index", b"%d" % (result.index,))
    if result.replayed:
        request.setHeader(b"Idempotent-Replayed", b"true")
    if result.body is None:
        request.setResponseCode(result.status)
        return b""
    return json_response(request, result.status, result.body, headers)

"""The key-value store's HTTP API: ``twistd raftnode --app kv``.

``PUT /kv/<key>`` (raw body) → 204, ``GET /kv/<key>`` → the raw value, ``DELETE /kv/<key>``
→ 204; writes answer with ``X-Raft-Index``.  Reads are linearizable unless
``?consistency=stale``; followers forward or redirect (``txraft.http.forwarding``).  A
write with an ``Idempotency-Key`` that this node holds a record of is answered at once,
from the record, without a log entry.

The three routes and the status routes are fast routes (``txraft.http.fastpath``): the
benchmark's and most clients' whole traffic never reaches Klein.
"""

from __future__ import annotations

from txraft.apps import idempotency
from txraft.apps.application import Application
from txraft.apps.kv import (encode_delete, encode_keyed, encode_put, fingerprint,
                            open_state_machine)
from txraft import results
from txraft.results import Result
from txraft.http.errors import HTTPError
from txraft.http.fastpath import FastResource
from txraft.http.node import RaftHTTP
from txraft.http.requests import idempotency_key
from txraft.http.responses import json_response, render_result
from txraft.http.routing import Route, RouteTable
from txraft.http.membership import membership_routes
from txraft.http.status import status_routes

MAX_KEY_BYTES = 1024


class KVAPI:
    """The routes of the key-value store, in one table (``routes``)."""

    def __init__(self, http: RaftHTTP):
        self.http = http
        self.state_machine = http.node.state_machine
        self.routes = RouteTable(
            (
                Route("GET", "/kv/<path:key>", self.get, "kv_get", fast=True),
                Route("PUT", "/kv/<path:key>", self.put, "kv_put", fast=True),
                Route("DELETE", "/kv/<path:key>", self.delete, "kv_delete", fast=True),
            ) + status_routes(http.node) + membership_routes(http),
            http.answer_error,
        )

    @property
    def app(self):
        """The Klein app of every route (built on first use)."""
        return self.routes.klein()

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
        if request.getHeader(results.HEADER) is not None:
            return self._write_keyed(request, command)
        return self.http.write(request, command,
                               lambda index, result: self._written(request, index, result))

    def delete(self, request, key):
        raw = self._key(key)
        command = encode_delete(raw)
        if request.getHeader(results.HEADER) is not None:
            return self._write_keyed(request, command)
        return self.http.write(request, command,
                               lambda index, result: self._written(request, index, result))

    def _write_keyed(self, request, command: bytes):
        """A write with an ``Idempotency-Key``: answered from this node's record when it
        holds one, else proposed with the key and the leader's time."""
        key = idempotency_key(request)
        recorded = idempotency.recorded_answer(self.state_machine.idempotency_record(key),
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


def make_resource(node, clock, http_client):
    """``Application.make_resource`` of the key-value store: the fast routes first."""
    return FastResource(KVAPI(RaftHTTP(node, clock, http_client)).routes)


application = Application("kv", open_state_machine, make_resource)

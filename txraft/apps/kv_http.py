"""The key-value store's HTTP API: ``twistd raftnode --app kv``.

``PUT /kv/<key>`` (raw body) → 204, ``GET /kv/<key>`` → the raw value, ``DELETE /kv/<key>``
→ 204; writes answer with ``X-Raft-Index``.  Reads are linearizable unless
``?consistency=stale``; followers forward or redirect (``txraft.http.forwarding``).  A
write with an ``Idempotency-Key`` that this node holds a record of is answered at once,
from the record, without a log entry.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import unquote_to_bytes

from twisted.web.resource import IResource
from zope.interface import implementer

from txraft.apps import idempotency
from txraft.apps.kv import (encode_delete, encode_keyed, encode_put, fingerprint,
                            open_state_machine)
from txraft.apps.application import Application
from txraft.apps.results import Result
from txraft.http.errors import HTTPError
from txraft.http.node import RaftHTTP
from txraft.http.requests import idempotency_key
from txraft.http.responses import json_response, render_result

MAX_KEY_BYTES = 1024


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

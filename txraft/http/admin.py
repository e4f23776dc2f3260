"""A local-only, authenticated admin endpoint for fault injection (chaos testing).

Off unless the node is started with ``--admin-token-file``.  Requests must come from a
loopback address and carry ``Authorization: Bearer <token>``; everything else gets 404
(so the endpoint's existence is not advertised).

    GET    /admin/faults   -> {"drop_to": [...], "drop_from": [...], "loss_rate": 0.0}
    PUT    /admin/faults   <- the same shape (any subset of fields); replaces those fields
    DELETE /admin/faults   -> clears every fault

Faults act in the UDP transport (``txraft.runtime.transport.Faults``): ``drop_to`` drops what
this node sends to those peers, ``drop_from`` what it receives from them, ``loss_rate``
a fraction of everything it sends.  Partitions are built by setting both sides.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

from twisted.web.resource import IResource, Resource
from zope.interface import implementer

_LIMIT = 16 * 1024


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json(request: Any, status: int, value: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode("utf-8")


def _error(request: Any, status: int, code: str, message: str) -> bytes:
    return _json(request, status, {"error": {"code": code, "message": message}})


class FaultsResource(Resource):
    isLeaf = True

    def __init__(self, transport: Any, token: bytes):
        super().__init__()
        self.transport = transport
        self.token = token

    def render(self, request: Any) -> bytes:
        client = request.getClientAddress()
        host = getattr(client, "host", "")
        supplied = request.getHeader(b"authorization") or b""
        expected = b"Bearer " + self.token
        if not _is_loopback(host) or not hmac.compare_digest(supplied, expected):
            return _error(request, 404, "not_found", "no such resource")
        if request.postpath not in ([], [b""]):
            return _error(request, 404, "not_found", "no such resource")
        method = request.method
        if method == b"GET":
            return _json(request, 200, self._describe())
        if method == b"DELETE":
            self.transport.faults.clear()
            return _json(request, 200, self._describe())
        if method == b"PUT":
            body = request.content.read(_LIMIT + 1)
            if len(body) > _LIMIT:
                return _error(request, 413, "body_too_large", "at most %d bytes" % _LIMIT)
            try:
                spec = json.loads(body)
                self._apply(spec)
            except (ValueError, TypeError) as e:
                return _error(request, 422, "invalid_faults", str(e))
            return _json(request, 200, self._describe())
        request.setHeader(b"allow", b"GET, PUT, DELETE")
        return _error(request, 405, "method_not_allowed", "use GET, PUT or DELETE")

    def _apply(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise ValueError("expected a JSON object")
        unknown = set(spec) - {"drop_to", "drop_from", "loss_rate"}
        if unknown:
            raise ValueError("unknown fields: %s" % ", ".join(sorted(unknown)))
        changes = {}
        for field in ("drop_to", "drop_from"):
            if field in spec:
                value = spec[field]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("%s must be a list of node ids" % field)
                changes[field] = set(value)
        if "loss_rate" in spec:
            rate = spec["loss_rate"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError("loss_rate must be a number from 0 to 1")
            changes["loss_rate"] = float(rate)
        faults = self.transport.faults
        for field, value in changes.items():
            setattr(faults, field, value)

    def _describe(self) -> Any:
        faults = self.transport.faults
        return {
            "drop_to": sorted(faults.drop_to),
            "drop_from": sorted(faults.drop_from),
            "loss_rate": faults.loss_rate,
        }


@implementer(IResource)
class AdminRoot(Resource):
    """Serves ``/admin/faults`` itself and hands every other path to the application."""

    def __init__(self, app: IResource, transport: Any, token: bytes):
        super().__init__()
        self.app = app
        self.admin = Resource()
        self.admin.putChild(b"faults", FaultsResource(transport, token))

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        if name == b"admin":
            return self.admin
        # Give the whole path back to the application, untouched.
        request.postpath.insert(0, request.prepath.pop())
        return self.app

    def render(self, request: Any) -> Any:
        return self.app.render(request)

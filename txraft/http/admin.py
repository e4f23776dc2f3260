"""A local-only, authenticated admin endpoint for fault injection (chaos testing).

Off unless the node is started with ``--admin-token-file``.  Requests must come from a
loopback address and carry ``Authorization: Bearer <token>``; every other request, to
any ``/admin`` path included, goes to the application untouched and gets its answer to
a path it does not know (the same JSON 404 as ``/no-such-path``), so nothing tells a
scanner the endpoint exists.

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
    """``/admin/faults`` for a request ``AdminRoot`` has let through."""

    isLeaf = True

    def __init__(self, transport: Any):
        super().__init__()
        self.transport = transport

    def render(self, request: Any) -> bytes:
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


#: ``request.postpath`` of the one admin path there is (a root that is a leaf sees them all).
_FAULTS_PATHS = ([b"admin", b"faults"], [b"admin", b"faults", b""])


@implementer(IResource)
class AdminRoot:
    """Serves ``/admin/faults`` to a loopback client with the token; hands every other
    request, whatever its path, method or credentials, to the application untouched."""

    isLeaf = True

    def __init__(self, app: IResource, transport: Any, token: bytes):
        self.app = app
        self.faults = FaultsResource(transport)
        self._expected = b"Bearer " + token

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:  # pragma: no cover
        return self  # a leaf: twisted.web renders it with the whole path in postpath

    def putChild(self, path: bytes, child: IResource) -> None:  # pragma: no cover
        raise NotImplementedError("AdminRoot has no children")

    def _admitted(self, request: Any) -> bool:
        host = getattr(request.getClientAddress(), "host", "")
        supplied = request.getHeader(b"authorization") or b""
        # Both checks always run, the token compared in constant time.
        token_ok = hmac.compare_digest(supplied, self._expected)
        return _is_loopback(host) and token_ok

    def render(self, request: Any) -> Any:
        if self._admitted(request) and request.postpath in _FAULTS_PATHS:
            return self.faults.render(request)
        return self.app.render(request)

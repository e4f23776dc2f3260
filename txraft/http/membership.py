"""The cluster's members over HTTP: ``GET /raft/members``, and the changes ``POST
/raft/members`` (add a learner), ``POST /raft/members/{id}/promote`` and ``DELETE
/raft/members/{id}``.

``GET /raft/members`` is a read like the application's: linearizable by default (a
follower forwards it to the leader, or redirects with ``?redirect=true``, and the leader
answers after confirming its leadership, with each member's progress), or this node's
own view with ``?consistency=stale``.

Every node serves them; a follower forwards them to the leader like a write.  Each needs
``Authorization: Bearer <the cluster secret>`` (compared in constant time; 401 without
it, 403 with a wrong one): a node started without a secret refuses them all with 403,
since anyone who can reach its HTTP port could otherwise reshape the cluster.  An optional ``?expect_config_index=N`` makes the change conditional on the configuration still being
the one at that index (409 ``config_changed`` otherwise).

The answer, once the change has committed, is 200 ``{"config_index": N}``; refusals are
JSON errors with the configuration unchanged: 404 unknown id; 409 another change in
progress, a learner not caught up, a duplicate id or address, or a moved configuration;
422 the last voter, or a malformed id, address or uuid; 503 (retry) while the leader has
not committed an entry of its term yet.

A new member's optional ``"uuid"`` (32 hex digits, its data directory's: ``GET
/raft/status`` on it, or its start-up log line) binds it in the configuration: every
node then accepts that member's datagrams from that data directory only, instead of
trusting the first one it hears (``txraft.runtime.trust``).

``POST /raft/leader`` (body empty, ``{}`` or ``{"id": "<voter>"}``; the same secret)
hands the leadership over (dissertation 3.10): the leader stops taking writes, brings the
target (default: the most caught-up voter) up to date and tells it to campaign at once.
The answer comes when the target leads: 200 ``{"leader", "term", "previous_leader"}``;
or a JSON error: 404 unknown id, 409 a learner target, no other voter, another transfer
under way or another voter won, 504 ``transfer_timeout`` when no new leader was known
within twice the election timeout (the transfer was abandoned).
"""

from __future__ import annotations

import hmac
import re
from typing import Optional, Tuple

from twisted.internet import defer

from txraft.core.config import (
    ADD_LEARNER,
    ADDRESS_PATTERN,
    MAX_MEMBER_ID_BYTES,
    MEMBER_ID_PATTERN,
    PROMOTE,
    REMOVE,
    parse_address,
)
from txraft.http.errors import HTTPError
from txraft.http.requests import read_body
from txraft.http.responses import json_response
from txraft.http.routing import Route
from txraft.http.status import members_document


_MEMBER_ID = re.compile(MEMBER_ID_PATTERN)
_ADDRESS = re.compile(ADDRESS_PATTERN)
_UUID = re.compile(r"^[0-9A-Fa-f]{32}$")
_CHALLENGE = ((b"WWW-Authenticate", b'Bearer realm="txraft"'),)


def _authorize(node, request) -> None:
    """401 without credentials (on any node: the document says the route needs them),
    403 with wrong ones or on a node without a secret."""
    secret = getattr(node, "secret", None)
    header = request.getHeader(b"authorization")
    scheme, _, token = (header or b"").partition(b" ")
    if header is None or scheme.lower() != b"bearer" or not token.strip():
        raise HTTPError(401, "unauthorized",
                        "membership changes need 'Authorization: Bearer <the cluster secret>'"
                        + ("" if secret else " (and this node has none: start every node "
                           "with --secret-file)"),
                        headers=_CHALLENGE)
    if not secret:
        raise HTTPError(403, "forbidden",
                        "this node has no cluster secret, so it accepts no membership "
                        "changes; start every node with --secret-file")
    if not hmac.compare_digest(token.strip(), secret):
        raise HTTPError(403, "forbidden", "that is not the cluster secret")


def _index(raw) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        value = -1
    else:
        try:
            value = int(raw)
        except ValueError:
            value = -1
    if value < 0:
        raise HTTPError(422, "invalid_change", "expect_config_index must be a non-negative "
                        "integer", field="expect_config_index")
    return value


def _expect(request) -> Optional[int]:
    """The precondition, from the query string."""
    values = request.args.get(b"expect_config_index")
    if not values:
        return None
    return _index(values[-1].decode("ascii", "replace"))


def _new_member_uuid(value) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise HTTPError(422, "invalid_change",
                        "uuid must be the member's data directory uuid: 32 hexadecimal "
                        "digits (its /raft/status node_uuid)", field="uuid")
    return value.lower()


def _new_member_id(value) -> str:
    if not isinstance(value, str) or not _MEMBER_ID.fullmatch(value):
        raise HTTPError(422, "invalid_change",
                        "id must be 1 to %d letters, digits, '.', '_' or '-'"
                        % MAX_MEMBER_ID_BYTES, field="id")
    return value


def membership_routes(http) -> Tuple[Route, ...]:
    """The change routes for ``http`` (a ``RaftHTTP``), for an application's table."""
    node = http.node

    def members(request):
        return http.read(
            request, lambda: json_response(request, 200, members_document(node.status_view())))

    def answered(index, request):
        return json_response(request, 200, {"config_index": index})

    def change(request, op, member_id, address="", http_url="", uuid=""):
        expect = _expect(request)
        extra = {"uuid": uuid} if uuid else {}
        d = defer.maybeDeferred(node.change, op, member_id, address, http_url, expect,
                                **extra)
        d.addCallbacks(answered, http.raft_failure, callbackArgs=(request,),
                       errbackArgs=(request,))
        return d

    def add(request):
        _authorize(node, request)
        body = http.json_body(request)
        if not isinstance(body, dict):
            raise HTTPError(422, "invalid_change", 'the body must be {"id", "address", '
                            '"http_url"?, "uuid"?}')
        for name in body:
            if name not in ("id", "address", "http_url", "uuid"):
                raise HTTPError(422, "invalid_change", "unknown field %r" % (name[:64],),
                                field=name[:64])
        member_id = _new_member_id(body.get("id"))
        address = body.get("address")
        if (not isinstance(address, str) or not _ADDRESS.fullmatch(address)
                or parse_address(address) is None):
            raise HTTPError(422, "malformed_address",
                            "address must be the member's Raft host:port (or [v6]:port)",
                            field="address")
        http_url = body.get("http_url", "")
        if not isinstance(http_url, str) or (
            http_url and not http_url.startswith(("http://", "https://"))
        ):
            raise HTTPError(422, "invalid_change", "http_url must be an http(s) URL",
                            field="http_url")
        uuid = _new_member_uuid(body["uuid"]) if "uuid" in body else ""
        return change(request, ADD_LEARNER, member_id, address, http_url.rstrip("/"), uuid)

    # An existing member's id is whatever --members or an earlier change made it: an
    # id that names none is 404 unknown_member, from the leader's configuration.
    def promote(request, member_id):
        _authorize(node, request)
        return change(request, PROMOTE, member_id)

    def remove(request, member_id):
        _authorize(node, request)
        return change(request, REMOVE, member_id)

    def transfer(request):
        _authorize(node, request)
        body = http.json_body(request) if read_body(request, http.body_limit).strip() else {}
        if not isinstance(body, dict) or any(name != "id" for name in body):
            raise HTTPError(422, "invalid_change", 'the body must be empty, {} or {"id": '
                            '"<a voter>"}')
        target = body.get("id")
        if target is not None:
            target = _new_member_id(target)
        previous = node.node_id

        def led(leader_and_term):
            leader, term = leader_and_term
            return json_response(request, 200, {"leader": leader, "term": term,
                                                "previous_leader": previous})

        d = defer.maybeDeferred(node.transfer_leadership, target)
        d.addCallbacks(led, http.raft_failure, errbackArgs=(request,))
        return d

    return (
        Route("GET", "/raft/members", members, "raft_members"),
        Route("POST", "/raft/members", add, "raft_members_add"),
        Route("POST", "/raft/members/<member_id>/promote", promote, "raft_members_promote"),
        Route("DELETE", "/raft/members/<member_id>", remove, "raft_members_remove"),
        Route("POST", "/raft/leader", transfer, "raft_leader_transfer"),
    )

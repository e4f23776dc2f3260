"""The routes every node serves about itself, never forwarded: ``GET /raft/status``
(``IRaftNode.status()`` as JSON), ``GET /health`` (200 while the process runs),
``GET /ready`` (200 once a leader is known and this node has applied what the leader
last said it had committed, and no peer refuses its identity; else 503 with the reason),
and ``GET /metrics`` (Prometheus, ``txraft.http.metrics``).  ``members_document`` is the
body of ``GET /raft/members`` (``txraft.http.membership``).

They are fast routes: polled by clients, load balancers, orchestrators and scrapers,
answering them must not load Klein into an otherwise idle node.
"""

from __future__ import annotations

from typing import Tuple

from txraft.http.errors import RETRY_SHORTLY, HTTPError, render_error
from txraft.http.metrics import PROMETHEUS_TYPE, prometheus_text
from txraft.http.responses import json_response
from txraft.http.routing import Route


def status_routes(node) -> Tuple[Route, ...]:
    """The routes for ``node`` (an ``IRaftNode``), for an application's table."""

    def raft_status(request):
        return json_response(request, 200, node.status())

    def health(request):
        return json_response(request, 200, {"status": "ok"})

    def ready(request):
        if node.is_ready():
            return json_response(request, 200, {"ready": True})
        return render_error(request, HTTPError(
            503, "not_ready", node.status_view().not_ready_reason(), headers=RETRY_SHORTLY))

    def metrics(request):
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", PROMETHEUS_TYPE)
        return prometheus_text(node.status_view())

    return (
        Route("GET", "/raft/status", raft_status, "raft_status", fast=True),
        Route("GET", "/health", health, "raft_health", fast=True),
        Route("GET", "/ready", ready, "raft_ready", fast=True),
        Route("GET", "/metrics", metrics, "raft_metrics", fast=True),
    )


def members_document(view) -> dict:
    """``GET /raft/members``: the latest configuration in this node's log (the one in
    force, dissertation 4.1) and, when this node leads, how far each member is.  Each
    member's ``uuid`` is its data directory's when known (bound by the configuration,
    recorded on first contact, or this node's own), else null."""
    core = view.core
    leading = core.role == "leader"
    members = []
    conf = core.configuration
    known = {p.peer: p.uuid for p in getattr(view, "peer_identities", ())}
    known[core.id] = getattr(view, "node_uuid", None)
    for m in conf.members if conf is not None else ():
        doc = {"id": m.id, "role": m.role, "address": m.address, "http_url": m.http_url,
               "uuid": m.uuid or known.get(m.id)}
        if leading:
            if m.id == core.id:
                doc.update(match_index=core.last_log_index, lag=0, leader=True)
            else:
                peer = core.peer(m.id)
                if peer is not None:
                    doc.update(match_index=peer.match_index,
                               lag=max(0, core.last_log_index - peer.match_index),
                               state=peer.state, recent_active=peer.recent_active,
                               lost_log=peer.lost_log)
        members.append(doc)
    return {"id": core.id, "leader_id": core.leader_id, "from_leader": leading,
            "config_index": core.config_index, "members": members}

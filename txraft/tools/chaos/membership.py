"""Membership changes for the nemesis, through the cluster's own HTTP API.

``MembershipClient`` is what an operator following ``docs/operations.md`` would do, as
code: ``DELETE /raft/members/{id}``, ``POST /raft/members`` (a learner, which the leader
promotes once it has caught up), ``GET /raft/members`` to see where things stand, and
``POST /raft/leader`` (leadership transfer), each with ``Authorization: Bearer <the
cluster secret>``.  A change is retried while the cluster is busy or leaderless (409
``change_in_progress``, 503 ``leader_not_ready`` or ``no_leader``, 504, no answer) until a
deadline; after an answer that leaves the outcome unknown (504, a lost connection) the
next try first reads the configuration, since the change may have committed: a change
is done when the configuration says so, whichever attempt made it.

Every request is logged through ``log`` with its status, error code and duration, so a
failed run's ``nemesis.jsonl`` tells which change took how long.  ``wipe`` empties a data
directory the way a recreated volume would (its ``node.log`` stays, for the run's
report).  Nothing here sleeps on the global clock: ``clock`` and ``pause`` are injected.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import attrs

from txraft.tools.localcluster import HTTPResult, LocalCluster, http

#: Refusals that mean "not now": another change is committing, or the leader has not
#: committed an entry of its term yet.  Any 503 (no leader during a fault, overloaded)
#: is retried too.
RETRY_CODES = frozenset({"change_in_progress", "leader_not_ready"})
#: Statuses after which the change may or may not have happened.
UNKNOWN_STATUSES = frozenset({0, 504})
#: A transfer's 409s that may go away (``POST /raft/leader`` on main: a transfer under
#: way, an election that made another voter leader); ``not_voter`` and ``no_target``
#: will not.
TRANSFER_RETRY_CODES = frozenset({"transfer_in_progress", "another_leader",
                                  "change_in_progress"})


def error_code(result: HTTPResult) -> Optional[str]:
    try:
        return result.json()["error"]["code"]
    except Exception:
        return None


def wipe(data_dir: str) -> List[str]:
    """Empty ``data_dir`` except its ``node.log``; the names removed."""
    removed = []
    for name in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else ():
        if name == "node.log":
            continue
        path = os.path.join(data_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    return removed


@attrs.define
class Outcome:
    """How one change went: ``ok``, the last answer's status and code, how many
    requests it took and how long."""

    ok: bool
    status: int = 0
    code: Optional[str] = None
    attempts: int = 0
    seconds: float = 0.0
    body: Any = None
    detail: str = ""


class MembershipClient:
    """Membership changes to ``cluster`` (a ``LocalCluster``) with its secret.

    ``serving()`` names the nodes to send requests to (members of the configuration whose
    process runs); the leader among them is asked first, and a follower forwards.
    """

    def __init__(self, cluster: LocalCluster, secret: str, log: Callable[..., None],
                 serving: Callable[[], Iterable[str]], request: Callable[..., HTTPResult] = http,
                 clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[float], Any] = time.sleep, deadline_seconds: float = 30.0):
        self.cluster = cluster
        self.secret = secret
        self.log = log
        self.serving = serving
        self.request = request
        self.clock = clock
        self.pause = pause
        self.deadline_seconds = deadline_seconds
        #: Each founding member's Raft address and HTTP URL, as the configuration has
        #: them (``remember``); a member is added back with exactly these.
        self.addresses: Dict[str, Tuple[str, str]] = {}

    # -- looking ------------------------------------------------------------------------

    def leader(self) -> Optional[str]:
        """The serving node that claims to lead in the highest term, if any."""
        best = None
        for node_id in sorted(self.serving()):
            status = self.cluster.nodes[node_id].status(timeout=0.5)
            if status and status.get("role") == "leader":
                if best is None or status["term"] > best[1]:
                    best = (node_id, status["term"])
        return best[0] if best else None

    def _targets(self) -> List[str]:
        serving = sorted(self.serving())
        leader = self.leader()
        return ([leader] if leader else []) + [i for i in serving if i != leader]

    def _send(self, method: str, path: str, body: Any = None,
              timeout: float = 10.0) -> Tuple[Optional[str], HTTPResult]:
        """One request to the leader (or, when it cannot be reached, the next serving
        node); ``(node asked, result)``."""
        headers = {"Authorization": "Bearer " + self.secret, "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode("utf-8")
        result = HTTPResult(0, {}, b"", error="no serving node")
        asked = None
        for node_id in self._targets():
            asked = node_id
            result = self.request(method, self.cluster.nodes[node_id].url + path, data, headers,
                                  timeout=timeout)
            if result.status != 0:
                break
        return asked, result

    def members(self) -> Optional[Dict[str, Any]]:
        """The configuration in force, from the leader (``GET /raft/members``), or None."""
        _, result = self._send("GET", "/raft/members", timeout=3.0)
        if result.status != 200:
            return None
        doc = result.json()
        return doc if doc.get("from_leader") else None

    def roles(self, doc: Optional[Dict[str, Any]]) -> Dict[str, str]:
        return {m["id"]: m["role"] for m in (doc or {}).get("members", ())}

    def remember(self, deadline_seconds: float = 30.0) -> bool:
        """Record each member's address and HTTP URL from the configuration in force."""
        deadline = self.clock() + deadline_seconds
        while True:
            doc = self.members()
            if doc is not None:
                for m in doc["members"]:
                    self.addresses[m["id"]] = (m["address"], m.get("http_url") or "")
                return True
            if self.clock() > deadline:
                return False
            self.pause(0.2)

    # -- changing -----------------------------------------------------------------------

    def _deadline(self, started: float, deadline_seconds: Optional[float]) -> float:
        return started + (self.deadline_seconds if deadline_seconds is None
                          else deadline_seconds)

    def _change(self, what: str, node_id: str, method: str, path: str, body: Any,
                done: Callable[[Dict[str, str]], bool], already: Tuple[Tuple[int, str], ...],
                deadline_seconds: Optional[float]) -> Outcome:
        """Send one change until it is answered, or the configuration shows it done.

        ``done(roles)`` tells from a configuration whether the change happened; an answer
        in ``already`` (status, code) means so when an earlier attempt's outcome was
        unknown."""
        started = self.clock()
        deadline = self._deadline(started, deadline_seconds)
        attempts = 0
        unknown = False
        while True:
            if unknown:
                doc = self.members()
                if doc is not None and done(self.roles(doc)):
                    outcome = Outcome(True, 200, None, attempts, self.clock() - started,
                                      {"config_index": doc["config_index"]},
                                      "an earlier attempt committed")
                    break
            attempts += 1
            t = self.clock()
            asked, result = self._send(method, path, body)
            code = error_code(result)
            self.log("member_request", change=what, node=node_id, asked=asked,
                     status=result.status, code=code, attempt=attempts,
                     seconds=round(self.clock() - t, 3), error=result.error or None)
            if result.status == 200:
                outcome = Outcome(True, 200, None, attempts, self.clock() - started,
                                  result.json())
                break
            if unknown and (result.status, code) in already:
                outcome = Outcome(True, result.status, code, attempts, self.clock() - started,
                                  None, "an earlier attempt committed")
                break
            retry = result.status in UNKNOWN_STATUSES or code in RETRY_CODES or \
                result.status == 503
            unknown = unknown or result.status in UNKNOWN_STATUSES
            if not retry or self.clock() > deadline:
                outcome = Outcome(False, result.status, code, attempts, self.clock() - started,
                                  None, result.body[:300].decode("utf-8", "replace")
                                  or result.error)
                break
            self.pause(min(1.0, 0.05 * 2 ** min(attempts, 5)))
        self.log("member_" + what, node=node_id, ok=outcome.ok, status=outcome.status,
                 code=outcome.code, attempts=outcome.attempts, seconds=round(outcome.seconds, 3),
                 config_index=(outcome.body or {}).get("config_index"),
                 detail=outcome.detail or None)
        return outcome

    def remove(self, node_id: str, deadline_seconds: Optional[float] = None) -> Outcome:
        """``DELETE /raft/members/{id}``, answered once the removal has committed."""
        return self._change("remove", node_id, "DELETE", "/raft/members/" + node_id, None,
                            lambda roles: node_id not in roles,
                            ((404, "unknown_member"),), deadline_seconds)

    def add(self, node_id: str, deadline_seconds: Optional[float] = None) -> Outcome:
        """``POST /raft/members``: ``node_id`` joins as a learner, at its old address."""
        node = self.cluster.nodes[node_id]
        address, http_url = self.addresses.get(node_id) or (
            "%s:%d" % (getattr(node, "host", "127.0.0.1"), node.port), node.url)
        return self._change("add", node_id, "POST", "/raft/members",
                            {"id": node_id, "address": address, "http_url": http_url},
                            lambda roles: node_id in roles,
                            ((409, "duplicate_member"), (409, "already_voter")), deadline_seconds)

    def promote(self, node_id: str, deadline_seconds: Optional[float] = None) -> Outcome:
        """``POST /raft/members/{id}/promote`` (only for repairs: the actions wait for
        the leader's own promotion)."""
        return self._change("promote", node_id, "POST", "/raft/members/%s/promote" % node_id,
                            None, lambda roles: roles.get(node_id) == "voter",
                            ((409, "already_voter"),), deadline_seconds)

    def wait_voter(self, node_id: str, deadline_seconds: Optional[float] = None) -> Outcome:
        """Wait until the configuration in force has ``node_id`` as a voter."""
        started = self.clock()
        deadline = self._deadline(started, deadline_seconds)
        polls = 0
        role = None
        while True:
            polls += 1
            doc = self.members()
            if doc is not None:
                role = self.roles(doc).get(node_id)
                if role == "voter":
                    return Outcome(True, 200, None, polls, self.clock() - started,
                                   {"config_index": doc["config_index"]})
            if self.clock() > deadline:
                return Outcome(False, 0, None, polls, self.clock() - started, None,
                               "%s is %s after %.1f s" % (node_id, role or "not a member",
                                                          self.clock() - started))
            self.pause(0.2)

    def transfer(self, target: Optional[str], deadline_seconds: float = 10.0) -> Outcome:
        """``POST /raft/leader`` with ``{}`` (the leader picks) or ``{"id": target}``.

        Answered 200 ``{"leader", "term", ...}`` once the new leader leads, or a JSON
        error.  Busy answers (503, 504, none, a 409 in ``TRANSFER_RETRY_CODES``) are
        retried until the deadline; a 404 ``not_found`` or a 405 means the nodes have no
        such route (``code`` is then ``unsupported``)."""
        started = self.clock()
        body = {} if target is None else {"id": target}
        attempts = 0
        while True:
            attempts += 1
            t = self.clock()
            asked, result = self._send("POST", "/raft/leader", body)
            code = error_code(result)
            self.log("member_request", change="transfer", node=target, asked=asked,
                     status=result.status, code=code, attempt=attempts,
                     seconds=round(self.clock() - t, 3), error=result.error or None)
            if result.status == 200:
                try:
                    answer = result.json()
                except ValueError:
                    answer = None
                return Outcome(True, 200, None, attempts, self.clock() - started, answer)
            if result.status == 405 or (result.status == 404 and code in ("not_found", None)):
                return Outcome(False, result.status, "unsupported", attempts,
                               self.clock() - started, None,
                               result.body[:200].decode("utf-8", "replace"))
            retry = result.status in (0, 503, 504) or (
                result.status == 409 and code in TRANSFER_RETRY_CODES)
            if not retry or self.clock() - started > deadline_seconds:
                return Outcome(False, result.status, code, attempts, self.clock() - started,
                               None, result.body[:300].decode("utf-8", "replace")
                               or result.error)
            self.pause(min(1.0, 0.1 * 2 ** min(attempts, 3)))

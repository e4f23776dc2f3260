"""Joining a running cluster: ``twistd raftnode --join URL[,URL...]``.

A node started on an empty data directory without ``--members`` asks a member to add it
as a learner (``POST /raft/members`` with the cluster secret; a follower forwards it to
the leader), reads the configuration that now names it (``GET /raft/members``, answered
by the leader), and records that configuration in its data directory (``joined``,
fsynced) before it starts Raft: with an empty log it has no other record of the cluster
it belongs to.  From then on it is a learner like any other: the leader sends it the log
or a snapshot, and promotes it once it has caught up (``txraft.core``).

The recorded configuration is the node's base, as ``--members`` is a founding node's: the
configuration in force is the latest one in its log or snapshot, and the base only until
its log names one (it does at once: the entry that added it is in the log it receives).

Restarting in the middle is safe.  With ``joined`` written, the node starts from it and
does not ask again.  Killed after the request and before the record, it asks again and
is told its id is taken: when the configuration names it with its own Raft address (and
its data directory's uuid, once bound), that is its own earlier request, and it carries
on; any other holder of the id is a refusal.

A refusal is one line for the operator and a non-zero exit (``JoinRefused``): a wrong
secret, an id taken by another server, an address already used, a malformed request,
or no member answering within the deadline.  Refusals that may pass (another change in
progress, a leader that has just been elected, no leader) are retried.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable, Dict, Optional, Sequence, Tuple

import msgpack

from txraft.core.config import ConfigChangeError, Configuration, Member
from txraft.errors import ConfigError
from txraft.runtime.storage import read_if_present

JOINED_FILE = "joined"
_FORMAT = 1

#: ``request(method, url, body or None, headers) -> (status, JSON document or None)``;
#: raises ``OSError``/``ConnectionError``-like exceptions when the URL cannot be reached.
Request = Callable[[str, str, Optional[Dict[str, Any]], Dict[str, str]],
                   Awaitable[Tuple[int, Any]]]

#: HTTP answers worth asking again (a change in progress, an election, no leader).
_RETRY = {409: ("change_in_progress", "leader_not_ready", "transfer_in_progress"),
          503: None, 504: None}


class JoinRefused(ConfigError):
    """The cluster will not take this node, or cannot be reached: one line saying why."""


def joined_path(data_dir: str) -> str:
    return os.path.join(data_dir, JOINED_FILE)


def save_joined(data_dir: str, config_index: int, configuration: Configuration,
                write: Callable[[str, bytes], None]) -> None:
    """Record the configuration this node joined with (``write`` is atomic and durable)."""
    data = msgpack.packb([_FORMAT, config_index, configuration.to_bytes()], use_bin_type=True)
    write(joined_path(data_dir), data)


def load_joined(data_dir: str) -> Optional[Tuple[int, Configuration]]:
    """The recorded configuration, or None when this node did not join (or not yet)."""
    path = joined_path(data_dir)
    raw = read_if_present(path)
    if raw is None:
        return None
    try:
        version, config_index, conf = msgpack.unpackb(raw, raw=False, use_list=False)
        if version != _FORMAT or type(config_index) is not int or config_index < 0:
            raise ValueError("unknown format")
        return config_index, Configuration.from_bytes(conf)
    except (ValueError, TypeError, ConfigChangeError, msgpack.ExtraData,
            msgpack.FormatError, msgpack.StackError) as e:
        raise ConfigError(
            "%s is damaged (%s): this directory's record of the cluster it joined is "
            "lost; empty the directory and join again (docs/operations.md)" % (path, e)
        ) from None


def configuration_from_document(doc: Any) -> Tuple[int, Configuration]:
    """``(config_index, Configuration)`` from a ``GET /raft/members`` answer."""
    try:
        members = [
            Member(m["id"], m["role"], m.get("address", ""), m.get("http_url", ""),
                   m.get("uuid", "") or "")
            for m in doc["members"]
        ]
        config_index = doc["config_index"]
        if type(config_index) is not int or config_index < 0:
            raise ValueError("config_index")
        return config_index, Configuration(members)
    except (KeyError, TypeError, ValueError, ConfigChangeError) as e:
        raise ValueError("not a /raft/members document (%s)" % (e,)) from None


def _error(doc: Any) -> Tuple[str, str]:
    try:
        error = doc["error"]
        return str(error["code"]), str(error["message"])
    except (KeyError, TypeError):
        return "", ""


async def join_cluster(
    urls: Sequence[str],
    me: Member,
    secret: bytes,
    request: Request,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    deadline_seconds: float = 120.0,
    log: Callable[[str], None] = lambda line: None,
) -> Tuple[int, Configuration]:
    """Have the cluster add ``me`` as a learner; the configuration that names it."""
    auth = {"Authorization": "Bearer " + secret.decode("utf-8", "replace"),
            "Content-Type": "application/json"}
    body: Dict[str, Any] = {"id": me.id, "address": me.address}
    if me.http_url:
        body["http_url"] = me.http_url
    if me.uuid:
        body["uuid"] = me.uuid
    deadline = clock() + deadline_seconds
    last = "no member was asked"
    pause = 0.2
    while True:
        for url in urls:
            url = url.rstrip("/")
            try:
                status, doc = await request("POST", url + "/raft/members", body, auth)
            except Exception as e:  # unreachable, reset, timed out: try the next one
                last = "%s: %s" % (url, e.__class__.__name__ if not str(e) else e)
                continue
            code, message = _error(doc)
            if status == 200:
                return await _configuration(url, me, request)
            if status == 409 and code == "duplicate_member":
                config_index, conf = await _configuration(url, None, request)
                mine = conf.get(me.id)
                if mine is not None and mine.address == me.address and (
                        not mine.uuid or not me.uuid or mine.uuid == me.uuid):
                    log("%s already names %s at %s (an earlier --join of this directory)"
                        % (url, me.id, me.address))
                    return config_index, conf
                raise JoinRefused(
                    "--join: the cluster already has a member %s (at %s%s): start this node "
                    "with another --id, or remove that member first (DELETE /raft/members/%s)"
                    % (me.id, mine.address if mine else "?",
                       ", another data directory" if mine and mine.uuid else "", me.id))
            if status in (401, 403):
                raise JoinRefused(
                    "--join: %s refused the request (HTTP %d: %s): start this node with the "
                    "cluster's --secret-file" % (url, status, message or code))
            retry = _RETRY.get(status, ())
            if retry is None or code in (retry or ()):
                last = "%s: HTTP %d %s" % (url, status, message or code)
                continue
            raise JoinRefused("--join: %s refused to add %s (HTTP %d %s: %s)"
                              % (url, me.id, status, code, message))
        if clock() >= deadline:
            raise JoinRefused("--join: no member added this node within %gs (last: %s); "
                              "check the URLs and that the cluster has a leader"
                              % (deadline_seconds, last))
        log("--join: retrying (%s)" % (last,))
        await sleep(pause)
        pause = min(2.0, pause * 2)


async def _configuration(url: str, me: Optional[Member], request: Request
                         ) -> Tuple[int, Configuration]:
    status, doc = await request("GET", url + "/raft/members", None,
                                {"Accept": "application/json"})
    if status != 200:
        code, message = _error(doc)
        raise JoinRefused("--join: %s added this node but its configuration could not be "
                          "read (HTTP %d %s: %s); start it again to retry"
                          % (url, status, code, message))
    try:
        config_index, conf = configuration_from_document(doc)
    except ValueError as e:
        raise JoinRefused("--join: %s answered GET /raft/members with %s" % (url, e)) from None
    if me is not None and me.id not in conf:
        raise JoinRefused("--join: %s answered with a configuration that does not name %s; "
                          "start it again to retry" % (url, me.id))
    return config_index, conf

"""A data directory's identity: which node of which cluster it is, and a random uuid.

``open_identity`` runs at every start, before anything else touches the directory:

- a directory without an ``identity`` file and without Raft state (new, or emptied: a
  wiped disk, a recreated volume) gets one: this node's id, the cluster id, a fresh
  ``uuid4`` and the creation time, written atomically (temporary file, fsync, rename,
  fsync of the directory) before the log or anything else is created there.  Such a
  directory has not caught up with any leader yet (``caught_up`` false);
- a directory that holds a Raft log or snapshots but no identity file was made by a
  version without identities: it gets one as above, but counts as caught up (it served
  before), and the upgrade is logged;
- an existing file is checked: a start whose ``--id`` or ``--cluster-id`` differs from
  the one recorded is refused with one line (``IdentityError``, a ``ConfigError``)
  saying what to do, and so is a damaged file;
- an identity file without the Raft state next to it (the log was deleted, the identity
  copied) is void: the directory gets a new uuid, as a new one would, and a warning.

Peers remember each other's uuids (``txraft.runtime.trust``), so a node whose data
directory was lost comes back with a new uuid and is refused by every peer that knew the
old one, instead of voting and acknowledging with forgotten state.  ``FilePeerStore`` keeps
those records in the same directory, with the same atomic, durable writes.

File format (JSON, UTF-8)::

    {"format": 1, "node_id": "n2", "cluster_id": "txraft",
     "uuid": "<32 hex digits>", "created": "2026-12-02T10:00:00Z", "caught_up": false}

    peer-identities: {"format": 1, "peers": {"n1": "<32 hex digits>", ...}}
"""

from __future__ import annotations

import json
import os
import time
import uuid as uuid_module
from typing import Any, Callable, Dict, Mapping

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from txraft.errors import ConfigError
from txraft.interfaces import IPeerIdentityStore
from txraft.runtime.storage import write_atomically
from txraft.runtime.trust import parse_uuid

log = Logger()

IDENTITY_FILE = "identity"
PEERS_FILE = "peer-identities"
FORMAT = 1
#: Where the operator's steps for a node that lost its data are.
REPLACE_DOC = "docs/operations.md#replace-a-node-that-lost-its-disk"
#: What in a data directory means it holds Raft state, as ``twistd raftnode`` lays it
#: out: (directory, file name ending) of ``FileLogStorage`` segments and snapshots.
STATE_FILES = (("raft", ".wal"), ("snapshots", ""))


class IdentityError(ConfigError):
    """The data directory is not this node's, or its identity file is damaged."""


def has_raft_state(data_dir: str) -> bool:
    """Whether ``data_dir`` holds a Raft log segment or a snapshot file."""
    for name, suffix in STATE_FILES:
        try:
            entries = os.listdir(os.path.join(data_dir, name))
        except (FileNotFoundError, NotADirectoryError):
            continue
        if any(entry.endswith(suffix) and not entry.startswith(".") for entry in entries):
            return True
    return False


@attrs.define
class NodeIdentity:
    """One data directory's identity, as read from (and kept in) its identity file."""

    path: str
    node_id: str
    cluster_id: str
    uuid: str
    created: str
    #: Whether the node ever applied what its leader had committed since the directory
    #: was created: until then it must not serve reads from its own copy.
    caught_up: bool
    #: How this start found it: "created", "upgraded" or "existing".
    how: str = "existing"
    _write: Callable[[str, bytes], None] = write_atomically

    @property
    def uuid_bytes(self) -> bytes:
        return bytes.fromhex(self.uuid)

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "node_id": self.node_id, "cluster_id": self.cluster_id,
                "uuid": self.uuid, "created": self.created, "caught_up": self.caught_up}

    def mark_caught_up(self) -> None:
        """Record, durably, that this directory has caught up with a leader once."""
        if self.caught_up:
            return
        record = dict(self.to_json(), caught_up=True)
        self._write(self.path, _dump(record))
        self.caught_up = True


def _dump(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


def _damaged(path: str, why: str) -> IdentityError:
    return IdentityError(
        "the identity file %s is damaged (%s): restore it from a backup of this data "
        "directory; if the data is lost, move the directory away and replace the node (%s)"
        % (path, why, REPLACE_DOC)
    )


def read_identity(path: str) -> NodeIdentity:
    """Parse an identity file; ``IdentityError`` when it is damaged."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise IdentityError("cannot read the identity file %s: %s" % (path, e.strerror)) from None
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _damaged(path, "not JSON") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _damaged(path, "not an identity record of format %d" % FORMAT)
    fields = {}
    for name in ("node_id", "cluster_id", "uuid", "created"):
        value = record.get(name)
        if not isinstance(value, str) or not value:
            raise _damaged(path, "no %s" % name)
        fields[name] = value
    if parse_uuid(fields["uuid"]) is None:
        raise _damaged(path, "the uuid is not 32 hexadecimal digits")
    caught_up = record.get("caught_up")
    if not isinstance(caught_up, bool):
        raise _damaged(path, "no caught_up flag")
    return NodeIdentity(path=path, caught_up=caught_up, **fields)


def open_identity(data_dir: str, node_id: str, cluster_id: str,
                  new_uuid: Callable[[], str] = lambda: uuid_module.uuid4().hex,
                  now: Callable[[], float] = time.time,
                  write: Callable[[str, bytes], None] = write_atomically) -> NodeIdentity:
    """Read ``data_dir``'s identity, creating it first if the directory has none (see
    the module docstring).  Raises ``IdentityError`` with the line to show the operator."""
    path = os.path.join(data_dir, IDENTITY_FILE)
    if os.path.exists(path):
        identity = read_identity(path)
        identity._write = write
        if identity.node_id != node_id:
            raise IdentityError(
                "the data directory %s is node %s's (cluster %r, uuid %s), not %s's: start "
                "it with --id %s, or give %s a data directory of its own (--data-dir)"
                % (data_dir, identity.node_id, identity.cluster_id, identity.uuid, node_id,
                   identity.node_id, node_id)
            )
        if identity.cluster_id != cluster_id:
            raise IdentityError(
                "the data directory %s belongs to cluster %r, not %r: start it with "
                "--cluster-id %s, or give this node a data directory of its own (--data-dir)"
                % (data_dir, identity.cluster_id, cluster_id, identity.cluster_id)
            )
        if has_raft_state(data_dir):
            return identity
        # The identity survived but the Raft state did not (a partial wipe; or a crash
        # right after the identity was first written, before the log, when nothing had
        # been promised yet): whatever this uuid promised is lost, so it must not be
        # presented again.
        old = identity.uuid
        how = "renewed"
    else:
        old = None
        how = "upgraded" if has_raft_state(data_dir) else "created"
    identity = NodeIdentity(
        path=path, node_id=node_id, cluster_id=cluster_id, uuid=new_uuid(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now())),
        caught_up=how == "upgraded", how=how, write=write,
    )
    write(path, _dump(identity.to_json()))
    if how == "renewed":
        log.warn("{data_dir} has an identity (uuid {old}) but no Raft log: it lost its "
                 "state; it is uuid {uuid} from now on, which its peers will refuse until it "
                 "is replaced ({doc})", data_dir=data_dir, old=old, uuid=identity.uuid,
                 doc=REPLACE_DOC)
    elif how == "upgraded":
        log.info("{data_dir} holds Raft state but no identity (made by an older version): "
                 "node {node} of cluster {cluster} is uuid {uuid} from now on",
                 data_dir=data_dir, node=node_id, cluster=cluster_id, uuid=identity.uuid)
    else:
        log.info("new data directory {data_dir}: node {node} of cluster {cluster}, "
                 "uuid {uuid}", data_dir=data_dir, node=node_id, cluster=cluster_id,
                 uuid=identity.uuid)
    return identity


@implementer(IPeerIdentityStore)
class FilePeerStore:
    """The uuids this node first heard its peers present, in ``peer-identities``.

    Read once at construction (``IdentityError`` when damaged, so a start reports it as
    one line); every ``save`` replaces the file atomically and durably.
    """

    def __init__(self, data_dir: str,
                 write: Callable[[str, bytes], None] = write_atomically) -> None:
        self.path = os.path.join(data_dir, PEERS_FILE)
        self._write = write
        self._records: Dict[str, str] = {}
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        except OSError as e:
            raise IdentityError("cannot read %s: %s" % (self.path, e.strerror)) from None
        try:
            record = json.loads(raw.decode("utf-8"))
            peers = record["peers"]
            ok = record.get("format") == FORMAT and isinstance(peers, dict) and all(
                isinstance(k, str) and parse_uuid(v) is not None for k, v in peers.items())
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise IdentityError(
                "%s is damaged: restore it from a backup, or delete it to trust every peer "
                "again on first contact (safe only if none of them lost its data)" % self.path
            )
        self._records = dict(peers)

    def load(self) -> Dict[str, str]:
        return dict(self._records)

    def save(self, records: Mapping[str, str]) -> None:
        records = dict(records)
        self._write(self.path, _dump({"format": FORMAT, "peers": records}))
        self._records = records

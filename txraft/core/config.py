"""Cluster configurations: who the members are, which of them vote, and how one
configuration becomes the next by a single-server change (dissertation chapter 4).

A ``Configuration`` is a value: a sorted tuple of ``Member`` records.  A change is one of
three operations, each touching one server, so any two consecutive configurations have
overlapping majorities (dissertation section 4.1):

``ADD_LEARNER``
    a new server joins as a learner (a non-voting member, dissertation section 4.2.1):
    it receives the log and snapshots, and counts for nothing;
``PROMOTE``
    a learner becomes a voter;
``REMOVE``
    a voter or a learner leaves;
``BIND``
    a member's ``uuid`` is set: which data directory it runs on (the runtime's node
    identity); voters and learners stay as they are, so majorities do not change.

``Configuration.changed`` is the only way to derive one configuration from another, and it
refuses what would break the rules with a ``ConfigChangeError`` whose ``code`` the HTTP
layer maps to a status.  The core decides *when* a change may be proposed
(``RaftCore.propose_change``); this module decides *whether* it is well formed.

The wire and disk form is msgpack: ``[1, [[id, role, address, http_url, uuid], ...]]``
(never pickle).  The core treats ``address``, ``http_url`` and ``uuid`` as opaque strings:
they are the runtime's (where to send datagrams, where the HTTP API is, which data
directory the member's identity is bound to).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import attrs
import msgpack

VOTER = "voter"
LEARNER = "learner"
ROLES = (VOTER, LEARNER)

ADD_LEARNER = "add_learner"
PROMOTE = "promote"
REMOVE = "remove"
BIND = "bind"
CHANGE_OPS = (ADD_LEARNER, PROMOTE, REMOVE, BIND)

#: The longest id (UTF-8 bytes) a member added by a change may have: the datagram
#: budget every node sets at start leaves room for this much (``txraft.runtime.transport``).
MAX_MEMBER_ID_BYTES = 16

#: A new member's id: what an operator types, a host name part, a Docker service name.
MEMBER_ID_PATTERN = r"^[A-Za-z0-9._-]{1,%d}$" % MAX_MEMBER_ID_BYTES
#: A member's Raft address: host:port or [v6]:port.
ADDRESS_PATTERN = (
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}"
    r"|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
)

_FORMAT = 1
#: Bounds a decoded configuration must respect (they are also what a datagram can carry).
MAX_MEMBERS = 64
MAX_FIELD_BYTES = 512


def parse_address(text: str) -> Optional[Tuple[str, int]]:
    """A member's Raft ``host:port`` (or ``[v6]:port``) as ``(host, port)``; None when
    empty or malformed."""
    if not isinstance(text, str):
        return None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


class ConfigChangeError(ValueError):
    """A change that is not well formed, or a configuration that cannot be decoded.

    ``code`` is stable and machine-readable: ``duplicate_member``, ``duplicate_address``,
    ``unknown_member``, ``already_voter``, ``not_learner``, ``last_voter``,
    ``invalid_change``, ``malformed_configuration``.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen(slots=True)
class Member:
    """One member of a configuration, as every server's log records it."""

    id: str
    role: str = VOTER
    #: host:port of the member's Raft datagrams ("" when the runtime knows it otherwise).
    address: str = ""
    #: The member's HTTP API, for redirects and operators ("" when unknown).
    http_url: str = ""
    #: The node identity of the data directory this member runs on ("" until bound).
    uuid: str = ""

    def to_list(self) -> list:
        return [self.id, self.role, self.address, self.http_url, self.uuid]

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "address": self.address,
            "http_url": self.http_url,
            "uuid": self.uuid,
        }


def _check_member(m: Member) -> None:
    if not isinstance(m.id, str) or not m.id:
        raise ConfigChangeError("invalid_change", "a member needs a non-empty id")
    if m.role not in ROLES:
        raise ConfigChangeError("invalid_change", "role must be %s, not %r" % (" or ".join(ROLES), m.role))
    for name in ("id", "address", "http_url", "uuid"):
        value = getattr(m, name)
        if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_FIELD_BYTES:
            raise ConfigChangeError(
                "invalid_change", "member %s must be a string of at most %d bytes" % (name, MAX_FIELD_BYTES)
            )


@attrs.frozen(slots=True)
class Configuration:
    """The members of the cluster at one point of the log, sorted by id."""

    members: Tuple[Member, ...] = attrs.field(converter=lambda ms: tuple(sorted(ms, key=lambda m: m.id)))

    def __attrs_post_init__(self) -> None:
        if len(self.members) > MAX_MEMBERS:
            raise ConfigChangeError("invalid_change", "at most %d members" % MAX_MEMBERS)
        seen_ids = set()
        seen_addresses = set()
        for m in self.members:
            _check_member(m)
            if m.id in seen_ids:
                raise ConfigChangeError("duplicate_member", "member %r appears twice" % m.id)
            seen_ids.add(m.id)
            if m.address:
                if m.address in seen_addresses:
                    raise ConfigChangeError(
                        "duplicate_address", "address %s is used by two members" % m.address
                    )
                seen_addresses.add(m.address)

    @classmethod
    def of_voters(cls, ids: Iterable[str]) -> "Configuration":
        """Voters known by id only (tests, and clusters bootstrapped from ids)."""
        return cls(tuple(Member(i) for i in ids))

    # -------------------------------------------------------------- queries

    @property
    def ids(self) -> Tuple[str, ...]:
        return tuple(m.id for m in self.members)

    @property
    def voters(self) -> Tuple[str, ...]:
        return tuple(m.id for m in self.members if m.role == VOTER)

    @property
    def learners(self) -> Tuple[str, ...]:
        return tuple(m.id for m in self.members if m.role == LEARNER)

    def get(self, member_id: str) -> Optional[Member]:
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    def is_voter(self, member_id: str) -> bool:
        m = self.get(member_id)
        return m is not None and m.role == VOTER

    def __contains__(self, member_id: object) -> bool:
        return any(m.id == member_id for m in self.members)

    # -------------------------------------------------------------- changes

    def changed(self, op: str, member: Member) -> "Configuration":
        """The configuration after one single-server change, or ``ConfigChangeError``."""
        current = self.get(member.id)
        if op == ADD_LEARNER:
            if current is not None:
                raise ConfigChangeError(
                    "duplicate_member", "member %r is already in the configuration" % member.id
                )
            new = attrs.evolve(member, role=LEARNER)
            _check_member(new)
            return Configuration(self.members + (new,))
        if current is None:
            raise ConfigChangeError("unknown_member", "no member %r in the configuration" % member.id)
        if op == PROMOTE:
            if current.role == VOTER:
                raise ConfigChangeError("already_voter", "member %r is already a voter" % member.id)
            promoted = attrs.evolve(current, role=VOTER)
            return Configuration(tuple(promoted if m.id == member.id else m for m in self.members))
        if op == REMOVE:
            if current.role == VOTER and len(self.voters) == 1:
                raise ConfigChangeError(
                    "last_voter", "member %r is the last voter; the cluster would have none" % member.id
                )
            return Configuration(tuple(m for m in self.members if m.id != member.id))
        if op == BIND:
            if not member.uuid or current.uuid == member.uuid:
                raise ConfigChangeError(
                    "invalid_change", "binding member %r needs a uuid it does not have yet"
                    % member.id
                )
            bound = attrs.evolve(current, uuid=member.uuid)
            _check_member(bound)
            return Configuration(tuple(bound if m.id == member.id else m for m in self.members))
        raise ConfigChangeError("invalid_change", "unknown change %r (one of %s)" % (op, ", ".join(CHANGE_OPS)))

    def with_uuid(self, member_id: str, uuid: str) -> "Configuration":
        """The same configuration with ``member_id``'s identity bound to ``uuid``."""
        if member_id not in self:
            raise ConfigChangeError("unknown_member", "no member %r in the configuration" % member_id)
        return Configuration(
            tuple(attrs.evolve(m, uuid=uuid) if m.id == member_id else m for m in self.members)
        )

    # -------------------------------------------------------------- encoding

    def to_bytes(self) -> bytes:
        return msgpack.packb([_FORMAT, [m.to_list() for m in self.members]], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Configuration":
        """Decode ``to_bytes``' output; anything else is ``ConfigChangeError``."""
        try:
            raw = msgpack.unpackb(
                data, raw=False, strict_map_key=True, max_array_len=MAX_MEMBERS * 8,
                max_str_len=MAX_FIELD_BYTES, max_bin_len=0, max_map_len=0,
            )
        except Exception as e:
            raise ConfigChangeError("malformed_configuration", "undecodable configuration: %s" % e)
        if (
            not isinstance(raw, list) or len(raw) != 2 or raw[0] != _FORMAT
            or not isinstance(raw[1], list)
        ):
            raise ConfigChangeError("malformed_configuration", "not a configuration record")
        members = []
        for item in raw[1]:
            if not isinstance(item, list) or len(item) != 5 or not all(isinstance(f, str) for f in item):
                raise ConfigChangeError("malformed_configuration", "malformed member record")
            members.append(Member(*item))
        try:
            conf = cls(tuple(members))
        except ConfigChangeError as e:
            raise ConfigChangeError("malformed_configuration", e.message)
        if not conf.voters:
            raise ConfigChangeError("malformed_configuration", "a configuration without voters")
        return conf

    def to_json(self) -> Dict[str, Any]:
        return {"members": [m.to_json() for m in self.members]}

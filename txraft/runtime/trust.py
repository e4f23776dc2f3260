"""Which data directory each peer is trusted to be: node identities, trust on first use.

Every data directory has a random node uuid (``txraft.runtime.identity``), and every
datagram carries its sender's (``txraft.runtime.transport``).  ``PeerIdentities`` decides,
for each authenticated datagram from member P carrying uuid U, whether it may reach the
Raft core:

- the uuid expected of P is the configuration's ``Member.uuid`` when it is set (an
  operator bound it, e.g. when adding P back after replacing its disk), else the one
  recorded here the first time P was heard from;
- nothing expected yet: U is recorded, durably, *before* the datagram is delivered (a
  vote or an acknowledgement is never counted from an identity that is not on disk),
  then it is delivered;
- U is the expected one: delivered;
- another uuid: refused and counted.  P's id is a member's, but its data directory is
  not the one that voted and acknowledged as P: it lost (or never had) what P promised.

One kind of traffic is delivered even from another uuid than expected: a leader's
replication (AppendEntries, snapshot chunks; ``admit(..., replication=True)``).  It
counts nothing of its sender's durable state -- a leader's authority is the votes it was
counted, and those are checked -- while a follower that replays an old part of the log
holds the bindings of that time: if it refused its leader because the leader's data
directory has been replaced since, it could never reach the entries that say so.  Such
deliveries are counted (``tolerated``).

Only members are recorded: a sender the configuration in force does not name (a removed
server still running, a stranger the transport hears because it holds the cluster
secret) is checked against what is expected of it, if anything, but never recorded on
first contact.  Found by the chaos harness: a removed member whose process ran on for a
second after its removal committed was recorded again under its old uuid, and the
leader then bound the member added back on a new data directory to that old uuid, so
the new one was refused for good.

A record is forgotten only when a *committed* configuration no longer names P
(``forget_absent``): P was removed for good, and may be added back on a new data
directory (the replace operation, docs/operations.md).  An uncommitted removal may still
be undone by the next leader, so forgetting then would let a wiped P back in as a voter.

Pure: the decision does no I/O of its own, the records live behind ``IPeerIdentityStore``
(``save`` must be durable when it returns).  The node runtime uses it with a file
(``txraft.runtime.identity.FilePeerStore``), the simulator with ``MemoryPeerStore``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import attrs
from zope.interface import implementer

from txraft.core.config import Member
from txraft.core.messages import AppendEntries, SnapshotChunk
from txraft.interfaces import IPeerIdentityStore

#: A node uuid's size on the wire (``uuid.UUID.bytes``).
UUID_SIZE = 16

#: A leader's replication: delivered whatever uuid it carries (``admit``).
REPLICATION_TYPES = frozenset((AppendEntries, SnapshotChunk))

CONFIGURATION = "configuration"
RECORDED = "recorded"

# A binding that is not a well-formed uuid matches nothing: such a member is refused
# rather than trusted on first use.
_UNMATCHABLE = b""


def parse_uuid(text: object) -> Optional[bytes]:
    """The 16 bytes of a node uuid written as 32 hexadecimal digits, or None."""
    if not isinstance(text, str) or len(text) != 2 * UUID_SIZE:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


@attrs.frozen
class PeerIdentity:
    """What this node knows of one peer's identity, for status pages and metrics."""

    peer: str
    #: The uuid expected of it (hex), or None until first contact.
    uuid: Optional[str]
    #: ``CONFIGURATION`` (bound by the configuration), ``RECORDED`` (first contact) or None.
    source: Optional[str]
    #: Datagrams refused because they carried another uuid.
    dropped_wrong_identity: int = 0
    #: The last uuid refused (hex), or None.
    last_refused: Optional[str] = None
    #: A leader's replication delivered although it carried another uuid.
    tolerated: int = 0

    def to_json(self) -> Dict[str, object]:
        """The peer's entry in ``/raft/status``'s ``peer_identities`` (keyed by its id)."""
        return {"uuid": self.uuid, "source": self.source,
                "dropped_wrong_identity": self.dropped_wrong_identity,
                "last_refused": self.last_refused, "tolerated": self.tolerated}


@implementer(IPeerIdentityStore)
class MemoryPeerStore:
    """Records in memory (the simulator, tests); ``saves`` counts durable writes."""

    def __init__(self, records: Optional[Mapping[str, str]] = None) -> None:
        self.records: Dict[str, str] = dict(records or {})
        self.saves = 0

    def load(self) -> Dict[str, str]:
        return dict(self.records)

    def save(self, records: Mapping[str, str]) -> None:
        self.records = dict(records)
        self.saves += 1


class PeerIdentities:
    """The guard: see the module docstring.  ``own_id`` is this node's member id (its
    own entry in a configuration is not a peer's)."""

    def __init__(self, store, own_id: str = "") -> None:
        self._store = store
        self._own_id = own_id
        recorded = {}
        for peer, text in store.load().items():
            value = parse_uuid(text)
            if value is not None:
                recorded[peer] = value
        self._recorded: Dict[str, bytes] = recorded
        self._bound: Dict[str, bytes] = {}
        #: What ``admit`` compares with: a binding, else the record.
        self._expected: Dict[str, bytes] = dict(recorded)
        self._refused: Dict[str, int] = {}
        self._last_refused: Dict[str, bytes] = {}
        #: The members of the configuration in force (None until one is given: then
        #: every sender is recorded on first contact).
        self._members: Optional[frozenset] = None
        self._tolerated: Dict[str, int] = {}

    # ------------------------------------------------------------- decisions

    def admit(self, peer: str, uuid: bytes, replication: bool = False) -> bool:
        """May a datagram from ``peer`` carrying ``uuid`` be delivered?  On first contact
        the uuid is saved (durably, through the store) before True is returned; if the
        store raises, nothing is recorded and the exception propagates (the datagram
        must then be dropped).  ``replication``: it is a leader's replication, delivered
        whatever its uuid (see the module docstring)."""
        expected = self._expected.get(peer)
        if expected is not None:
            if expected == uuid:
                return True
            if replication:
                self._tolerated[peer] = self._tolerated.get(peer, 0) + 1
                return True
            self._refused[peer] = self._refused.get(peer, 0) + 1
            self._last_refused[peer] = uuid
            return False
        if self._members is not None and peer not in self._members:
            return True  # not a member: nothing it says is counted; never recorded
        recorded = dict(self._recorded)
        recorded[peer] = uuid
        self._store.save({p: u.hex() for p, u in recorded.items()})
        self._recorded = recorded
        self._expected[peer] = uuid
        return True

    def expected(self, peer: str) -> Optional[bytes]:
        """The uuid expected of ``peer`` (16 bytes), or None (it will be trusted on
        first contact)."""
        value = self._expected.get(peer)
        return value if value else None

    # ------------------------------------------------------ configurations

    def use_configuration(self, configuration) -> None:
        """The configuration in force changed: its members' ``uuid`` fields, where set,
        are what they must present (they override any record)."""
        self._members = frozenset(configuration.ids)
        bound = {}
        for member in configuration.members:
            if member.uuid and member.id != self._own_id:
                value = parse_uuid(member.uuid)
                bound[member.id] = value if value is not None else _UNMATCHABLE
        self._bound = bound
        expected = dict(self._recorded)
        expected.update(bound)
        self._expected = expected

    def forget_absent(self, member_ids: Iterable[str]) -> List[str]:
        """A configuration without some recorded peers has *committed*: forget their
        records (durably), so each may come back on a new data directory.  Returns the
        ids forgotten."""
        keep = set(member_ids)
        gone = sorted(p for p in self._recorded if p not in keep)
        if not gone:
            return []
        recorded = {p: u for p, u in self._recorded.items() if p in keep}
        self._store.save({p: u.hex() for p, u in recorded.items()})
        self._recorded = recorded
        expected = dict(recorded)
        expected.update(self._bound)
        self._expected = expected
        return gone

    def next_binding(self, configuration, own_uuid: Optional[str] = None) -> Optional[Member]:
        """For a leader: the first member of ``configuration`` without a uuid whose uuid
        is known here (``own_uuid`` for this node, else the one recorded), as the
        ``Member`` a ``BIND`` change writes into the configuration; None when there is
        none.  Once in the log, every member expects that uuid (``use_configuration``),
        including those that never heard the member themselves."""
        for member in configuration.members:
            if member.uuid:
                continue
            if member.id == self._own_id:
                uuid = own_uuid
            else:
                value = self._recorded.get(member.id)
                uuid = value.hex() if value is not None else None
            if uuid:
                return Member(member.id, uuid=uuid)
        return None

    # ---------------------------------------------------------- observation

    def view(self, peers: Iterable[str] = ()) -> Tuple[PeerIdentity, ...]:
        """Every peer this guard knows of (plus ``peers``), sorted by id."""
        names = set(peers) | set(self._expected) | set(self._refused) | set(self._tolerated)
        names.discard(self._own_id)
        out = []
        for peer in sorted(names):
            value = self._expected.get(peer)
            if peer in self._bound:
                source: Optional[str] = CONFIGURATION
            elif value is not None:
                source = RECORDED
            else:
                source = None
            last = self._last_refused.get(peer)
            out.append(PeerIdentity(
                peer, value.hex() if value else None, source, self._refused.get(peer, 0),
                last.hex() if last is not None else None, self._tolerated.get(peer, 0),
            ))
        return tuple(out)

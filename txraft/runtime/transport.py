"""Raft messages over UDP: an authenticated, versioned envelope around ``txraft.runtime.codec``.

``UDPTransport`` is the Twisted edge that implements ``ITransport``.  UDP loses,
duplicates and reorders; Raft treats all three as normal, so this layer adds only what
Raft cannot do itself: it keeps strangers out (HMAC-SHA256 with the cluster secret), drops
replays and duplicates, splits messages too large for one datagram and reassembles them
with bounded memory, finds peers by host name (and again when they move), and never lets a
bad datagram or a socket error escape into the reactor.  It also tells a peer's data
directories apart (node identity, below).

Envelope (version 2, big-endian)::

    offset  size  field
    0       3     magic b"TXR"
    3       1     version (2)
    4       1     flags (bit 0: a MAC follows the payload; bit 1: an identity notice,
                  not a message; bit 2: a leader's replication, AppendEntries or a
                  snapshot chunk; other bits zero, bits 1 and 2 not both)
    5       1+c   cluster id: length byte, UTF-8
    .       1+s   sender id: length byte, UTF-8
    .       16    sender's node uuid (its data directory's, ``txraft.runtime.identity``)
    .       1+r   receiver id: length byte, UTF-8
    .       8     sender incarnation (u64)
    .       8     datagram counter (u64), per sender incarnation, strictly increasing
    .       8     message id (u64): the counter of the message's first fragment
    .       2     fragment index (u16)
    .       2     fragment count (u16), 1 for a message sent whole
    .       n     payload: the codec's bytes, or fragment ``index`` of them
    end-32  32    HMAC-SHA256 over every byte before it (present iff flags bit 0)

A fragment's counter is always ``message id + fragment index``, so a fragment cannot be
duplicated without repeating a counter, which replay protection refuses.

Versions.  Version 1 had no uuid; its datagrams are dropped (``dropped_bad_version``), as
are those of any other version: every node of a cluster is upgraded together (stop them
all, upgrade, start them all), or the upgraded ones cannot talk to the others.

Node identity.  With ``identities`` (a ``txraft.runtime.trust.PeerIdentities``) every
authenticated datagram is checked against the uuid expected of its sender before
anything else of it is used: an unknown sender's uuid is recorded (durably) first, a
different one is dropped (``dropped_wrong_identity``: the member's id, another data
directory, e.g. a node restarted on an emptied disk) -- unless flag bit 2 says it is a
leader's replication, which is delivered anyway (``txraft.runtime.trust`` says why) --
and answered, at most once per
``notice_interval_seconds`` per peer, with an *identity notice*: an envelope with flag
bit 1 whose payload is the uuid expected and the uuid refused (16 bytes each).  A node
that receives one (authenticated, about its own uuid) hands it to ``on_identity_refused``
(it counts as delivered) so the node can say that it lost its data.

Security.  The MAC key is derived from the cluster secret; every member holds it, so any
member can impersonate any other (a shared-key scheme authenticates the cluster, not the
node).  Without a secret nothing is authenticated and a warning is logged at start.

Replay protection.  For each sender the receiver keeps the highest incarnation seen and,
for it, a window of ``replay_window`` counters below the highest counter seen (a bitmap,
as in IPsec).  A datagram is refused when its incarnation is lower than the highest seen,
or its counter is already in the window or older than the window.  Only datagrams that
pass every check up to and including the MAC update this state.  Guarantee: while this
receiver runs, each authenticated datagram is delivered at most once, and nothing from an
incarnation of a sender older than one already heard is delivered.  This relies on each
node choosing a strictly larger incarnation at every start (``twistd raftnode`` uses its
boot time in microseconds, or one more than the last start's, kept in the data directory,
so a clock set backwards across a restart does not make its peers ignore it).  The receiver forgets everything when it restarts, so a recorded datagram can
then be accepted once again; Raft tolerates delayed and duplicated messages, so this
bounds disruption rather than guarding safety.

Addresses.  Peers are given as ``(host, port)``; host names are resolved with
``reactor.resolve`` at start and again while a peer stays silent, because Twisted writes
to IP addresses only and a container may come back with a new address.  An authenticated,
fresh datagram from a peer at a new address moves that peer to it (roaming, as in
WireGuard).

Memory.  A single datagram is at most ``max_datagram`` bytes.  Reassembly keeps per peer
at most ``max_partial_messages`` partial messages and ``2 * max_message_size`` bytes
(counting a fixed cost per fragment), evicting the oldest first and dropping any partial
message after ``reassembly_timeout_seconds``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from typing import Callable, Dict, Mapping, Optional, Tuple

import attrs
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from txraft.core.config import MAX_MEMBER_ID_BYTES
from txraft.runtime.codec import MAX_ID_CHARS, CodecError, decode_message, encode_message
from txraft.errors import ConfigError
from txraft.interfaces import ITransport
from txraft.runtime.trust import REPLICATION_TYPES, UUID_SIZE

MAGIC = b"TXR"
VERSION = 2
FLAG_MAC = 0x01
FLAG_NOTICE = 0x02
FLAG_REPLICATION = 0x04  # on REPLICATION_TYPES (a leader's replication)
#: Every valid flags byte.
_FLAGS = (0, FLAG_MAC, FLAG_NOTICE, FLAG_MAC | FLAG_NOTICE, FLAG_REPLICATION,
          FLAG_MAC | FLAG_REPLICATION)
MAC_SIZE = 32
#: The uuid of a transport given none (tools and tests): no identity.
NO_UUID = bytes(UUID_SIZE)

# A Docker bridge has an MTU of 1500: 1400 bytes of UDP payload leave room for the IP and
# UDP headers (and some tunnel overhead) without IP fragmentation.
DEFAULT_MAX_DATAGRAM = 1400
MAX_UDP_PAYLOAD = 65507
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
MAX_FRAGMENTS = 0xFFFF
# What one buffered fragment costs beyond its bytes (dict slot, bytes object header):
# charged so that many tiny fragments cannot exceed the reassembly budget.
FRAGMENT_COST = 128
#: Authenticated senders outside the configuration talked to at once (``_stranger``).
MAX_STRANGERS = 8

_TAIL = struct.Struct(">QQHH")  # counter, message id, fragment index, fragment count
_FIELDS = struct.Struct(">QQQHH")  # incarnation + _TAIL, as read by the receiver
_FIELDS_SIZE = _FIELDS.size
_pack_tail = _TAIL.pack
_unpack_fields = _FIELDS.unpack_from
_MAX_U64 = 2**64 - 1

NO_SECRET_WARNING = (
    "running without a cluster secret: any host that can reach this UDP port can join"
)

#: Every datagram received lands in exactly one of these (or ``fragments_buffered`` or
#: ``delivered``): ``received == delivered + fragments_buffered + sum(INBOUND_DROPS)``.
INBOUND_DROPS = (
    "dropped_oversized",  # longer than max_datagram
    "dropped_malformed",  # not our envelope, or inconsistent fields / message ids
    "dropped_bad_version",  # our magic, another envelope version
    "dropped_wrong_cluster",  # another cluster id
    "dropped_not_for_me",  # receiver id is not this node
    "dropped_unknown_peer",  # not a configured peer, and no secret to prove it a member
    "dropped_fault_from",  # fault injection: drop_from
    "dropped_bad_mac",  # MAC missing or wrong
    "dropped_wrong_identity",  # authenticated, but another data directory than the one known
    "dropped_replayed",  # old incarnation, counter seen or older than the window
    "dropped_too_large",  # fragment would make the message exceed max_message_size
    "dropped_undecodable",  # authenticated, but the codec refused the payload
    "internal_errors",  # a bug here; logged with its traceback
)

#: Messages handed to ``send`` that were not (fully) written.
OUTBOUND_DROPS = (
    "dropped_unknown_receiver",  # message.receiver is not a configured peer
    "dropped_not_running",  # not attached to a port (before start or after stop)
    "dropped_unresolved",  # the peer has no IP address yet
    "dropped_fault_to",  # fault injection: drop_to (per message)
    "dropped_fault_loss",  # fault injection: loss_rate (per datagram)
    "send_too_large",  # encoding exceeds max_message_size
    "send_errors",  # transport.write raised (per datagram)
)

STATS_NAMES = (
    ("received", "delivered", "fragments_buffered")
    + INBOUND_DROPS
    + ("sent", "messages_sent", "messages_fragmented")
    + OUTBOUND_DROPS
    + (
        "reassembled",  # messages rebuilt from fragments
        "dropped_incomplete",  # partial messages discarded (timeout, eviction, size)
        "deliver_errors",  # deliver() raised; the message counts as delivered
        "resolve_errors",
        "address_changes",
        "strangers_heard",  # authenticated senders outside the configuration, talked to
        "identity_notices_sent",  # "identity refused" answers to wrong-identity senders
        "identity_notices_received",  # ... received (also counted as delivered)
    )
)


@attrs.define
class Faults:
    """Fault injection for chaos tests; inert unless a field is set.

    ``drop_to``/``drop_from`` hold peer ids whose messages are dropped on send/receipt;
    ``loss_rate`` drops that fraction of outgoing datagrams: with ``random`` (a seeded
    ``random.Random``) at random, without it deterministically (every 1/rate-th).
    """

    drop_to: set = attrs.field(factory=set)
    drop_from: set = attrs.field(factory=set)
    loss_rate: float = 0.0
    random: Optional[object] = None
    _loss_credit: float = 0.0

    def clear(self):
        """Stop injecting faults (the random source is kept)."""
        self.drop_to = set()
        self.drop_from = set()
        self.loss_rate = 0.0
        self._loss_credit = 0.0

    def lose(self) -> bool:
        """Decide whether to lose the next outgoing datagram."""
        rate = self.loss_rate
        if rate <= 0.0:
            return False
        if self.random is not None:
            return self.random.random() < rate
        self._loss_credit += rate
        if self._loss_credit >= 1.0:
            self._loss_credit -= 1.0
            return True
        return False


class _Partial:
    """A message being reassembled from fragments."""

    __slots__ = ("count", "chunk_len", "chunks", "size", "cost", "deadline")

    def __init__(self, count, deadline):
        self.count = count
        self.chunk_len = None  # every fragment but the last has this length
        self.chunks = {}
        self.size = 0
        self.cost = 0
        self.deadline = deadline


#: Bytes of peer id the datagram budget always leaves room for, so that members added
#: later (membership changes) with ids up to this long fit the budget set at start.
PEER_ID_RESERVE = MAX_MEMBER_ID_BYTES


class _Peer:
    """What this node knows about one peer: address, send prefix, replay state."""

    __slots__ = (
        "id",
        "id_bytes",
        "host",
        "port",
        "named",
        "address",
        "prefix",
        "mac_inner",
        "prefix_replication",
        "mac_inner_replication",
        "chunk_size",
        "heard_at",
        "resolving",
        "resolve_at",
        "incarnation",
        "top",
        "window",
        "partials",
        "partial_cost",
        "refused",
        "notice_at",
    )

    def __init__(self, peer_id, host, port):
        self.id = peer_id
        self.id_bytes = peer_id.encode("utf-8")
        self.host = host
        self.port = port
        self.named = not (isIPAddress(host) or isIPv6Address(host))
        self.address = None if self.named else (host, port)
        self.prefix = b""
        self.mac_inner = None
        self.prefix_replication = b""
        self.mac_inner_replication = None
        self.chunk_size = 0
        self.heard_at = float("-inf")
        self.resolving = False
        self.resolve_at = float("-inf")
        self.incarnation = -1
        self.top = 0
        self.window = 0
        self.partials = OrderedDict()
        self.partial_cost = 0
        self.refused = None  # the last message refused as too large
        self.notice_at = float("-inf")  # when it was last sent an identity notice


def _check_id(what, value):
    if type(value) is not str or not value or len(value) > MAX_ID_CHARS:
        raise ConfigError(
            "%s must be a non-empty string of at most %d characters, not %r"
            % (what, MAX_ID_CHARS, value)
        )
    if len(value.encode("utf-8")) > 255:
        raise ConfigError("%s %r is longer than 255 bytes in UTF-8" % (what, value))
    return value.encode("utf-8")


def _mac_pads(secret):
    """Pre-keyed inner and outer SHA-256 states of HMAC (RFC 2104) for ``secret``.

    Copying these two public ``hashlib`` objects per datagram costs about half of what
    ``hmac.HMAC.copy()`` does (that method is pure Python around the same states), and
    the result is the same HMAC-SHA256 (the tests check it against ``hmac.new``).
    """
    # A key for this purpose only, so the same secret can key other things safely.
    key = hmac.new(secret, b"txraft udp envelope v1", hashlib.sha256).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    return inner, outer


def envelope_mac(secret: bytes, data: bytes) -> bytes:
    """The MAC a transport keyed with ``secret`` appends to ``data`` (for tests, tools)."""
    key = hmac.new(secret, b"txraft udp envelope v1", hashlib.sha256).digest()
    return hmac.new(key, data, hashlib.sha256).digest()


@implementer(ITransport)
class UDPTransport(DatagramProtocol):
    """Sends and receives Raft messages as authenticated UDP datagrams.

    Everything is injected: ``reactor`` provides ``seconds``, ``callLater`` and
    ``resolve``; ``deliver(message)`` is called, synchronously, with each authenticated
    decoded message whose envelope and message both name this node as receiver and the
    peer as sender.  ``incarnation`` must grow across restarts of this node (see the
    module docstring).  ``peers`` maps every other node's id to ``(host, port)``; an entry
    for ``node_id`` itself is ignored, so the whole cluster map can be passed.

    ``max_payload`` is the largest encoded message that fits one datagram to any peer:
    the Raft core should keep each AppendEntries within it (see
    ``txraft.runtime.codec.append_entries_overhead``).  Larger messages are fragmented.

    ``stats`` counts every outcome (``STATS_NAMES``); ``faults`` is a ``Faults``.

    ``node_uuid`` (16 bytes) is this node's data directory's uuid, sent in every
    datagram; ``identities`` (``txraft.runtime.trust.PeerIdentities``) checks the
    peers' (None: no check); ``on_identity_refused(peer_id, expected, refused)`` is
    called with the two uuids (bytes) of each identity notice received.
    """

    def __init__(
        self,
        *,
        node_id: str,
        cluster_id: str,
        peers: Mapping[str, Tuple[str, int]],
        secret: Optional[bytes],
        deliver: Callable[[object], None],
        reactor,
        incarnation: int,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        log: Optional[Logger] = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_partial_messages: int = 4,
        reassembly_timeout_seconds: float = 5.0,
        resolve_interval_seconds: float = 2.0,
        silence_before_resolve_seconds: float = 2.0,
        replay_window: int = 1024,
        log_interval_seconds: Optional[float] = 10.0,
        faults: Optional[Faults] = None,
        node_uuid: bytes = NO_UUID,
        identities=None,
        on_identity_refused: Optional[Callable[[str, bytes, bytes], None]] = None,
        notice_interval_seconds: float = 1.0,
    ):
        node_bytes = _check_id("node_id", node_id)
        cluster_bytes = _check_id("cluster_id", cluster_id)
        if secret is not None and (type(secret) is not bytes or not secret):
            raise ConfigError("the cluster secret must be non-empty bytes (or None)")
        if type(incarnation) is not int or not 0 <= incarnation <= _MAX_U64:
            raise ConfigError("incarnation must be an unsigned 64-bit integer")
        if not 0 < max_datagram <= MAX_UDP_PAYLOAD:
            raise ConfigError("max_datagram must be between 1 and %d" % MAX_UDP_PAYLOAD)
        if replay_window < 1:
            raise ConfigError("replay_window must be positive")
        if type(node_uuid) is not bytes or len(node_uuid) != UUID_SIZE:
            raise ConfigError("node_uuid must be %d bytes" % UUID_SIZE)

        self.node_id = node_id
        self.cluster_id = cluster_id
        self.incarnation = incarnation
        self.max_datagram = max_datagram
        self.max_message_size = max_message_size
        self.max_partial_messages = max_partial_messages
        self.reassembly_timeout_seconds = reassembly_timeout_seconds
        self.resolve_interval_seconds = resolve_interval_seconds
        self.silence_before_resolve_seconds = silence_before_resolve_seconds
        self.log_interval_seconds = log_interval_seconds
        self.faults = faults if faults is not None else Faults()
        self.stats = dict.fromkeys(STATS_NAMES, 0)
        self.node_uuid = node_uuid
        self.identities = identities
        self.notice_interval_seconds = notice_interval_seconds
        self._on_identity_refused = on_identity_refused

        self._deliver = deliver
        self._reactor = reactor
        self._log = log if log is not None else Logger()
        self._window = replay_window
        self._window_mask = (1 << replay_window) - 1
        self._node_bytes = node_bytes
        self._counter = 0
        self._running = False
        self._warned_no_secret = False
        self._check_call = None
        self._sweep_call = None
        self._last_logged = {}

        if secret is None:
            self._mac_inner = self._mac_outer = None
        else:
            self._mac_inner, self._mac_outer = _mac_pads(secret)
        cluster_part = bytes([len(cluster_bytes)]) + cluster_bytes
        # What every datagram of this cluster starts with, by its flags; looked up whole.
        self._heads = {MAGIC + bytes([VERSION, flags]) + cluster_part: flags
                       for flags in _FLAGS}
        self._head_len = 5 + len(cluster_part)
        own = FLAG_MAC if secret is not None else 0
        self._own_head = MAGIC + bytes([VERSION, own]) + cluster_part
        self._own_head_replication = (MAGIC + bytes([VERSION, own | FLAG_REPLICATION])
                                      + cluster_part)

        self._peers = {}
        self._peers_by_bytes = {}
        #: Peers that left (``set_peers``), kept with their replay state in case they
        #: come back: a removed and re-added peer must not accept old datagrams again.
        self._left: Dict[str, _Peer] = {}
        #: Senders outside the configuration that authenticated themselves (peer id ->
        #: when last heard), at most MAX_STRANGERS; see ``_stranger``.
        self._strangers: Dict[str, float] = {}
        for peer_id, address in peers.items():
            if peer_id != node_id:
                self._add_peer(peer_id, address)

        # Count the MAC even without a secret, so the budget does not depend on it; and
        # room for the longest id a peer may have (peers come and go with membership
        # changes, the budget must not shrink under messages already built).
        longest = max(
            [len(p.id_bytes) for p in self._peers.values()]
            + [len(node_bytes), PEER_ID_RESERVE]
        )
        self._longest_peer_id = longest
        overhead = (
            self._head_len + 1 + len(node_bytes) + UUID_SIZE + 1 + longest + _FIELDS_SIZE
            + MAC_SIZE
        )
        self.max_payload = max_datagram - overhead
        if self.max_payload < 128:
            raise ConfigError(
                "max_datagram %d leaves only %d bytes per datagram for messages after the "
                "%d-byte envelope; raise it" % (max_datagram, self.max_payload, overhead)
            )
        if -(-max_message_size // self.max_payload) > MAX_FRAGMENTS:
            raise ConfigError("max_message_size needs more than %d fragments" % MAX_FRAGMENTS)

    # -- lifecycle ---------------------------------------------------------------------

    def listen(self, port: int, interface: str = ""):
        """Listen on UDP ``port`` with the reactor; returns the listening port.

        Reads one byte more than ``max_datagram`` so that larger datagrams are seen (and
        dropped as oversized) instead of being silently truncated.
        """
        return self._reactor.listenUDP(
            port, self, interface=interface, maxPacketSize=self.max_datagram + 1
        )

    def startProtocol(self):
        self._running = True
        if self._mac_inner is None and not self._warned_no_secret:
            self._warned_no_secret = True
            self._log.warn(NO_SECRET_WARNING)
        for peer in self._peers.values():
            if peer.named:
                self._resolve(peer)
        if self._check_call is None:
            self._check_call = self._reactor.callLater(
                self.resolve_interval_seconds, self._check_peers
            )

    def stopProtocol(self):
        self._running = False
        for call in (self._check_call, self._sweep_call):
            if call is not None and call.active():
                call.cancel()
        self._check_call = self._sweep_call = None
        for peer in self._peers.values():
            peer.partials.clear()
            peer.partial_cost = 0

    def _check_peer(self, peer_id, address):
        """``(id bytes, host, port)`` of a valid peer entry, or ``ConfigError``."""
        peer_bytes = _check_id("peer id", peer_id)
        try:
            host, port = address
        except (TypeError, ValueError):
            raise ConfigError("peer %r: address must be (host, port)" % (peer_id,))
        if type(host) is not str or not host or type(port) is not int or not (
            0 < port < 65536
        ):
            raise ConfigError("peer %r: bad address %r" % (peer_id, address))
        longest = getattr(self, "_longest_peer_id", None)
        if longest is not None and len(peer_bytes) > longest:
            raise ConfigError(
                "peer id %r is %d bytes in UTF-8; this node's datagram budget allows %d"
                % (peer_id, len(peer_bytes), longest)
            )
        return peer_bytes, host, port

    def _add_peer(self, peer_id, address) -> None:
        peer_bytes, host, port = self._check_peer(peer_id, address)
        peer = self._left.pop(peer_id, None)
        if peer is None or (peer.host, peer.port) != (host, port):
            fresh = _Peer(peer_id, host, port)
            if peer is not None:  # same peer, new address: keep its replay state
                fresh.incarnation, fresh.top, fresh.window = peer.incarnation, peer.top, peer.window
            peer = fresh
        # The receiver id sits between our id and our incarnation: build the whole
        # constant part of the header once (twice: with the replication flag too).
        node_bytes = self._node_bytes
        rest = (
            bytes([len(node_bytes)])
            + node_bytes
            + self.node_uuid
            + bytes([len(peer_bytes)])
            + peer_bytes
            + struct.pack(">Q", self.incarnation)
        )
        peer.prefix = self._own_head + rest
        peer.prefix_replication = self._own_head_replication + rest
        if self._mac_inner is not None:
            peer.mac_inner = self._mac_inner.copy()
            peer.mac_inner.update(peer.prefix)
            peer.mac_inner_replication = self._mac_inner.copy()
            peer.mac_inner_replication.update(peer.prefix_replication)
        peer.chunk_size = self.max_datagram - len(peer.prefix) - _TAIL.size - MAC_SIZE
        self._peers[peer_id] = peer
        self._peers_by_bytes[peer_bytes] = peer
        if self._running and peer.named:
            self._resolve(peer)

    def set_peers(self, peers: Mapping[str, Tuple[str, int]]) -> None:
        """Make ``peers`` (id -> (host, port)) the nodes this one talks to, as the
        cluster's configuration changes: new ones are added, gone ones dropped (with
        their partial messages), moved ones get their new address.  An entry for this
        node is ignored.  Raises ``ConfigError`` (and changes nothing) for a bad entry."""
        wanted = {pid: tuple(addr) for pid, addr in peers.items() if pid != self.node_id}
        for pid, addr in wanted.items():  # validate everything before changing anything
            self._check_peer(pid, addr)
        self._strangers = {}  # a configuration says who is a member now
        for pid in [p for p in self._peers if p not in wanted]:
            peer = self._peers.pop(pid)
            del self._peers_by_bytes[peer.id_bytes]
            peer.partials.clear()
            peer.partial_cost = 0
            self._left[pid] = peer
        for pid, addr in wanted.items():
            current = self._peers.get(pid)
            if current is None:
                self._add_peer(pid, addr)
            elif (current.host, current.port) != addr:
                del self._peers[pid]
                del self._peers_by_bytes[current.id_bytes]
                self._left[pid] = current
                self._add_peer(pid, addr)

    def peer_addresses(self):
        """Return ``{peer_id: (ip, port) or None}``: where each peer is sent to now."""
        return {peer_id: peer.address for peer_id, peer in self._peers.items()}

    # -- sending -----------------------------------------------------------------------

    def send(self, message):
        """Send ``message`` to ``message.receiver``.

        Never raises for network reasons: every failure is counted in ``stats``.  A
        message the codec cannot encode is a bug in the caller and raises ``CodecError``.
        """
        stats = self.stats
        peer = self._peers.get(message.receiver)
        if peer is None:
            self._count_out("dropped_unknown_receiver", message.receiver)
            return
        faults = self.faults
        if faults.drop_to and peer.id in faults.drop_to:
            stats["dropped_fault_to"] += 1
            return
        if not self._running:
            stats["dropped_not_running"] += 1
            return
        address = peer.address
        if address is None:
            self._count_out("dropped_unresolved", peer.id)
            return
        payload = encode_message(message)
        size = len(payload)
        chunk = peer.chunk_size
        replication = type(message) in REPLICATION_TYPES
        if size <= chunk:
            self._counter = counter = self._counter + 1
            self._write(peer, address, _pack_tail(counter, counter, 0, 1), payload,
                        replication)
        elif size > self.max_message_size:
            self._count_out("send_too_large", peer.id, size=size)
            return
        else:
            count = -(-size // chunk)
            first = self._counter + 1
            self._counter += count
            view = memoryview(payload)
            for i in range(count):
                tail = _pack_tail(first + i, first, i, count)
                self._write(peer, address, tail, view[i * chunk : (i + 1) * chunk],
                            replication)
            stats["messages_fragmented"] += 1
        stats["messages_sent"] += 1

    def _write(self, peer, address, tail, payload, replication=False):
        faults = self.faults
        if faults.loss_rate and faults.lose():
            self.stats["dropped_fault_loss"] += 1
            return
        if replication:
            prefix, mac_inner = peer.prefix_replication, peer.mac_inner_replication
        else:
            prefix, mac_inner = peer.prefix, peer.mac_inner
        if mac_inner is not None:
            inner = mac_inner.copy()
            inner.update(tail)
            inner.update(payload)
            outer = self._mac_outer.copy()
            outer.update(inner.digest())
            data = b"".join((prefix, tail, payload, outer.digest()))
        else:
            data = b"".join((prefix, tail, payload))
        try:
            self.transport.write(data, address)
        except Exception as e:  # MessageLengthError, OSError (ENOBUFS...), bad address
            self._count_out("send_errors", peer.id, error=repr(e))
            return
        self.stats["sent"] += 1

    # -- receiving ---------------------------------------------------------------------

    def datagramReceived(self, data, addr):
        """Handle one datagram; never raises (each outcome is counted in ``stats``)."""
        self.stats["received"] += 1
        try:
            self._receive(data, addr)
        except Exception:
            self.stats["internal_errors"] += 1
            self._log.failure("internal error handling a datagram from {addr}", addr=addr)

    def _receive(self, data, addr):
        end = len(data)
        if end > self.max_datagram:
            return self._drop("dropped_oversized", addr, size=end)
        head_len = self._head_len
        flags = self._heads.get(data[:head_len])
        if flags is None:
            return self._drop(self._why_not_ours(data), addr)
        has_mac = flags & FLAG_MAC
        if has_mac:
            end -= MAC_SIZE
        notice = flags & FLAG_NOTICE

        # sender id, sender uuid, receiver id (the ids each preceded by its length)
        offset = head_len
        if offset >= end:
            return self._drop("dropped_malformed", addr)
        sender_end = offset + 1 + data[offset]
        uuid_end = sender_end + UUID_SIZE
        if uuid_end >= end:
            return self._drop("dropped_malformed", addr)
        sender_bytes = data[offset + 1 : sender_end]
        receiver_end = uuid_end + 1 + data[uuid_end]
        fields_end = receiver_end + _FIELDS_SIZE
        if fields_end > end:
            return self._drop("dropped_malformed", addr)
        if data[uuid_end + 1 : receiver_end] != self._node_bytes:
            return self._drop("dropped_not_for_me", addr)
        peer = self._peers_by_bytes.get(sender_bytes)
        if peer is None:
            peer = self._stranger(sender_bytes, data, end, has_mac, addr)
            if peer is None:
                return
        elif self._strangers and peer.id in self._strangers:
            self._strangers[peer.id] = self._reactor.seconds()
        drop_from = self.faults.drop_from
        if drop_from and peer.id in drop_from:
            self.stats["dropped_fault_from"] += 1
            return

        if self._mac_inner is not None:
            if not has_mac:
                return self._drop("dropped_bad_mac", addr, peer=peer.id)
            inner = self._mac_inner.copy()
            inner.update(memoryview(data)[:end])
            outer = self._mac_outer.copy()
            outer.update(inner.digest())
            if not hmac.compare_digest(outer.digest(), data[end:]):
                return self._drop("dropped_bad_mac", addr, peer=peer.id)

        incarnation, counter, message_id, index, count = _unpack_fields(data, receiver_end)
        if index >= count or counter != message_id + index:
            return self._drop("dropped_malformed", addr, peer=peer.id)
        if notice and (count != 1 or end - fields_end != 2 * UUID_SIZE):
            return self._drop("dropped_malformed", addr, peer=peer.id)

        # Node identity, before the datagram changes anything (authenticated ones only
        # reach this point; an unknown sender's uuid is made durable here, first).
        identities = self.identities
        if identities is not None:
            uuid = data[sender_end:uuid_end]
            if not identities.admit(peer.id, uuid, bool(flags & FLAG_REPLICATION)):
                return self._refuse(peer, addr, uuid, notice)

        # Replay window (authenticated datagrams only reach this point).
        if incarnation > peer.incarnation:
            peer.incarnation = incarnation
            peer.top = counter
            peer.window = 1
            newest = True
        elif incarnation < peer.incarnation:
            return self._drop("dropped_replayed", addr, peer=peer.id)
        elif counter > peer.top:
            shift = counter - peer.top
            if shift < self._window:
                peer.window = ((peer.window << shift) | 1) & self._window_mask
            else:
                peer.window = 1
            peer.top = counter
            newest = True
        else:
            age = peer.top - counter
            if age >= self._window or (peer.window >> age) & 1:
                return self._drop("dropped_replayed", addr, peer=peer.id)
            peer.window |= 1 << age
            newest = False

        peer.heard_at = self._reactor.seconds()
        if newest and addr != peer.address:
            self._move(peer, addr, "a datagram arrived from it")

        payload = data[fields_end:end]
        if notice:
            return self._noticed(peer, addr, payload)
        if count != 1:
            payload = self._reassemble(peer, addr, incarnation, message_id, index, count,
                                       payload)
            if payload is None:
                return
        try:
            message = decode_message(payload)
        except CodecError as e:
            return self._drop("dropped_undecodable", addr, peer=peer.id, error=str(e))
        if message.sender != peer.id or message.receiver != self.node_id or (
                flags & FLAG_REPLICATION and type(message) not in REPLICATION_TYPES):
            return self._drop("dropped_malformed", addr, peer=peer.id)
        self.stats["delivered"] += 1
        try:
            self._deliver(message)
        except Exception:
            self.stats["deliver_errors"] += 1
            self._log.failure("deliver() failed on a message from {peer}", peer=peer.id)

    def _stranger(self, sender_bytes, data, end, has_mac, addr):
        """A datagram from an id outside the configuration this node applies.

        Dissertation 4.1: a server must hear servers its log does not name yet -- a
        follower whose log is behind (it was down while a server joined and became the
        leader) would otherwise never receive the entries that name its leader.  With a
        cluster secret, a sender whose MAC is right is a member of this cluster: it is
        talked to at the address it came from, as a peer of its own until a
        configuration names it (or leaves it out), at most MAX_STRANGERS at a time (the
        one heard from longest ago goes first).  Without a secret nothing tells a member
        from a stranger: dropped, as before."""
        if self._mac_inner is None or not has_mac:
            return self._drop("dropped_unknown_peer", addr)
        inner = self._mac_inner.copy()
        inner.update(memoryview(data)[:end])
        outer = self._mac_outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), data[end:]):
            return self._drop("dropped_bad_mac", addr)
        try:
            peer_id = sender_bytes.decode("utf-8")
            self._add_peer(peer_id, (str(addr[0]), int(addr[1])))
        except (UnicodeDecodeError, ConfigError, TypeError, ValueError, IndexError):
            return self._drop("dropped_unknown_peer", addr)
        self._strangers[peer_id] = self._reactor.seconds()
        if len(self._strangers) > MAX_STRANGERS:
            oldest = min(self._strangers, key=self._strangers.get)
            self._forget_stranger(oldest)
        self.stats["strangers_heard"] += 1
        self._maybe_log("strangers_heard", peer=peer_id, addr=addr)
        return self._peers.get(peer_id)

    def _forget_stranger(self, peer_id):
        del self._strangers[peer_id]
        peer = self._peers.pop(peer_id, None)
        if peer is not None:
            del self._peers_by_bytes[peer.id_bytes]
            peer.partials.clear()
            peer.partial_cost = 0
            self._left[peer_id] = peer

    def _why_not_ours(self, data):
        if not data.startswith(MAGIC) or len(data) < 5:
            return "dropped_malformed"
        if data[3] != VERSION:
            return "dropped_bad_version"
        if data[4] not in _FLAGS:
            return "dropped_malformed"
        return "dropped_wrong_cluster"

    # -- node identity -----------------------------------------------------------------

    def _refuse(self, peer, addr, uuid, notice):
        """A datagram from ``peer``'s id but another data directory: drop it, and tell
        the sender (rate-limited) so that it can report it lost its data.  A refused
        notice is not answered (two refused nodes must not ping-pong)."""
        self._drop("dropped_wrong_identity", addr, peer=peer.id, uuid=uuid.hex())
        now = self._reactor.seconds()
        if notice or now - peer.notice_at < self.notice_interval_seconds or not self._running:
            return
        peer.notice_at = now
        expected = self.identities.expected(peer.id) or NO_UUID
        self._counter = counter = self._counter + 1
        prefix = peer.prefix
        flags = prefix[len(MAGIC) + 1] | FLAG_NOTICE
        data = b"".join((prefix[:len(MAGIC) + 1], bytes([flags]), prefix[len(MAGIC) + 2:],
                         _pack_tail(counter, counter, 0, 1), expected, uuid))
        if self._mac_inner is not None:
            inner = self._mac_inner.copy()
            inner.update(data)
            outer = self._mac_outer.copy()
            outer.update(inner.digest())
            data += outer.digest()
        try:
            self.transport.write(data, addr)
        except Exception as e:
            self._count_out("send_errors", peer.id, error=repr(e))
            return
        self.stats["sent"] += 1
        self.stats["identity_notices_sent"] += 1

    def _noticed(self, peer, addr, payload):
        """An authenticated identity notice from ``peer``: it refuses our uuid."""
        expected, refused = payload[:UUID_SIZE], payload[UUID_SIZE:]
        if refused != self.node_uuid:
            return self._drop("dropped_malformed", addr, peer=peer.id)
        self.stats["delivered"] += 1
        self.stats["identity_notices_received"] += 1
        if self._on_identity_refused is not None:
            try:
                self._on_identity_refused(peer.id, expected, refused)
            except Exception:
                self.stats["deliver_errors"] += 1
                self._log.failure("on_identity_refused() failed ({peer})", peer=peer.id)

    # -- reassembly --------------------------------------------------------------------

    def _reassemble(self, peer, addr, incarnation, message_id, index, count, chunk):
        """Buffer one fragment; return the whole message's bytes once complete."""
        size = len(chunk)
        last = index == count - 1
        # Fragments before the last all have one length (the sender's chunk size), so
        # any one of them tells the message's size: refuse a too large message at its
        # first fragment, before buffering anything.
        key = (incarnation, message_id)
        if key == peer.refused or (
            not last and size * (count - 1) + 1 > self.max_message_size
        ):
            peer.refused = key  # so its later fragments are not buffered either
            return self._drop("dropped_too_large", addr, peer=peer.id)
        partials = peer.partials
        partial = partials.get(key)
        if partial is None:
            partial = _Partial(
                count, self._reactor.seconds() + self.reassembly_timeout_seconds
            )
            partials[key] = partial
            if self._sweep_call is None:
                self._sweep_call = self._reactor.callLater(
                    self.reassembly_timeout_seconds, self._sweep
                )
        elif partial.count != count or index in partial.chunks:
            return self._drop("dropped_malformed", addr, peer=peer.id)
        if not last:
            if partial.chunk_len is None:
                partial.chunk_len = size
            elif partial.chunk_len != size:
                return self._drop("dropped_malformed", addr, peer=peer.id)
        if partial.size + size > self.max_message_size:
            self._discard(peer, key)
            peer.refused = key
            return self._drop("dropped_too_large", addr, peer=peer.id)
        cost = size + FRAGMENT_COST
        budget = 2 * self.max_message_size
        # Oldest first: the newest partial is the likeliest to complete.
        while partials and (
            peer.partial_cost + cost > budget or len(partials) > self.max_partial_messages
        ):
            oldest = next(iter(partials))
            self._discard(peer, oldest)
            if oldest == key:
                peer.refused = key
                return self._drop("dropped_too_large", addr, peer=peer.id)
        partial.chunks[index] = chunk
        partial.size += size
        partial.cost += cost
        peer.partial_cost += cost
        if len(partial.chunks) < count:
            self.stats["fragments_buffered"] += 1
            return None
        del partials[key]
        peer.partial_cost -= partial.cost
        self.stats["reassembled"] += 1
        chunks = partial.chunks
        return b"".join([chunks[i] for i in range(count)])

    def _discard(self, peer, key):
        partial = peer.partials.pop(key)
        peer.partial_cost -= partial.cost
        self.stats["dropped_incomplete"] += 1
        # Its buffered fragments were counted as fragments_buffered when they arrived.

    def _sweep(self):
        self._sweep_call = None
        now = self._reactor.seconds()
        next_deadline = None
        for peer in self._peers.values():
            for key, partial in list(peer.partials.items()):
                if partial.deadline <= now:
                    self._discard(peer, key)
                elif next_deadline is None or partial.deadline < next_deadline:
                    next_deadline = partial.deadline
        if next_deadline is not None and self._running:
            self._sweep_call = self._reactor.callLater(next_deadline - now, self._sweep)

    # -- addresses ---------------------------------------------------------------------

    def _check_peers(self):
        """Re-resolve named peers that have been silent; runs every resolve interval."""
        self._check_call = None
        now = self._reactor.seconds()
        for peer in self._peers.values():
            if (
                peer.named
                and not peer.resolving
                and now - peer.heard_at >= self.silence_before_resolve_seconds
                and now - peer.resolve_at >= self.resolve_interval_seconds
            ):
                self._resolve(peer)
        if self._running:
            self._check_call = self._reactor.callLater(
                self.resolve_interval_seconds, self._check_peers
            )

    def _resolve(self, peer):
        peer.resolving = True
        started = peer.resolve_at = self._reactor.seconds()

        def resolved(ip):
            peer.resolving = False
            if not (isinstance(ip, str) and (isIPAddress(ip) or isIPv6Address(ip))):
                self._count_out("resolve_errors", peer.id, error="not an IP: %r" % (ip,))
                return
            if peer.address is not None and peer.heard_at >= started:
                return  # it spoke from its address since we asked: that is fresher
            if peer.address != (ip, peer.port):
                self._move(peer, (ip, peer.port), "%s resolved" % (peer.host,))

        def failed(failure):
            peer.resolving = False
            self._count_out("resolve_errors", peer.id, error=failure.getErrorMessage())

        try:
            d = self._reactor.resolve(peer.host)
        except Exception as e:
            peer.resolving = False
            self._count_out("resolve_errors", peer.id, error=repr(e))
            return
        d.addCallbacks(resolved, failed)

    def _move(self, peer, address, why):
        old = peer.address
        peer.address = address
        if old is not None:
            self.stats["address_changes"] += 1
        self._log.info(
            "peer {peer} is now at {address} (was {old}): {why}",
            peer=peer.id,
            address=address,
            old=old,
            why=why,
        )

    # -- accounting --------------------------------------------------------------------

    def _drop(self, reason, addr, **fields):
        self.stats[reason] += 1
        self._maybe_log(reason, addr=addr, **fields)

    def _count_out(self, reason, peer, **fields):
        self.stats[reason] += 1
        self._maybe_log(reason, peer=peer, **fields)

    def _maybe_log(self, reason, **fields):
        interval = self.log_interval_seconds
        if interval is None:
            return
        now = self._reactor.seconds()
        last = self._last_logged.get(reason)
        if last is not None and now - last < interval:
            return
        self._last_logged[reason] = now
        self._log.info(
            "udp transport: {reason} ({count} so far) {details}",
            reason=reason,
            count=self.stats[reason],
            details=fields,
        )

"""``GET /metrics``: a node's status in the Prometheus text exposition format (0.0.4).

Built only when a scraper asks, from the node's typed status
(``IRaftNode.status_view()``, a ``txraft.runtime.status.NodeStatus``): fields, never
string keys, so a renamed field fails where it is read.
"""

from __future__ import annotations

import math
import re
from typing import Any


PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: Gauges read as they are from the status: (``NodeStatus`` or ``CoreStatus`` field,
#: metric, help).
STATUS_GAUGES = (
    ("term", "txraft_term", "The node's current term."),
    ("commit_index", "txraft_commit_index", "The highest log index known to be committed."),
    ("applied_index", "txraft_applied_index",
     "The highest log index applied to the state machine."),
    ("last_log_index", "txraft_last_log_index", "The index of the last entry of the log."),
    ("last_log_term", "txraft_last_log_term", "The term of the last entry of the log."),
    ("snapshot_index", "txraft_snapshot_index",
     "The last index the log was compacted to (held by a snapshot)."),
    ("pending_proposals", "txraft_pending_proposals",
     "Writes accepted by this leader and waiting to be applied."),
    ("pending_reads", "txraft_pending_reads",
     "Linearizable reads waiting for this leader to confirm its leadership."),
    ("leader_commit", "txraft_leader_commit_index",
     "The commit index the leader last told this node (on the leader, its own); "
     "txraft_applied_index below it: the node is behind."),
)

#: A leader's view of each peer: (``txraft.core.PeerStatus`` field, metric, help).
#: The STATUS_GAUGES fields that are the node's, not the core's.
NODE_FIELDS = frozenset(("applied_index", "pending_proposals", "pending_reads"))

PEER_GAUGES = (
    ("match_index", "txraft_peer_match_index",
     "Leader only: the highest index known to be replicated on the peer."),
    ("next_index", "txraft_peer_next_index", "Leader only: the next index to send the peer."),
    ("inflight", "txraft_peer_inflight_messages",
     "Leader only: AppendEntries sent to the peer and not yet acknowledged."),
    ("recent_active", "txraft_peer_recent_active",
     "Leader only: 1 when the peer was heard from within the last election timeout."),
    ("lost_log", "txraft_peer_lost_log",
     "Leader only: 1 when the peer answers that its log ends before entries it "
     "acknowledged (it lost its data: replace it)."),
)

#: ``status()["counters"]``, as ``txraft_node_<name>_total``.
NODE_COUNTERS = {
    "readies": "Batches of work (persist, send, apply) the node ran.",
    "fsync_batches": "Log writes made durable, one fsync each.",
    "entries_persisted": "Log entries written to disk.",
    "entries_applied": "Log entries applied to the state machine.",
    "messages_sent": "Raft messages handed to the transport.",
    "messages_received": "Raft messages received from the transport.",
    "proposals": "Writes accepted while leading.",
    "reads": "Linearizable reads accepted while leading.",
    "snapshots_taken": "Snapshots of the state machine stored.",
    "snapshots_installed": "Snapshots received from a leader and installed.",
    "leader_changes_seen": "Times this node learned of a leader other than the last one "
                           "it knew (itself included).",
    "stale_identity_notices": "Identity notices ignored: the configuration in force binds "
                              "this node to its own data directory (the refusing peer is "
                              "catching up).",
}

#: ``status()["transport"]`` stats with a metric of their own (the drops are labelled).
TRANSPORT_COUNTERS = {
    "received": ("txraft_transport_datagrams_received_total",
                 "Datagrams received on the Raft port."),
    "sent": ("txraft_transport_datagrams_sent_total", "Datagrams written to the Raft port."),
    "delivered": ("txraft_transport_messages_delivered_total",
                  "Messages received whole and handed to the node."),
    "messages_sent": ("txraft_transport_messages_sent_total",
                      "Messages written whole, in one datagram or in fragments."),
    "messages_fragmented": ("txraft_transport_messages_fragmented_total",
                            "Messages sent in more than one datagram."),
    "fragments_buffered": ("txraft_transport_fragments_buffered_total",
                           "Fragments received and kept until their message is whole."),
    "reassembled": ("txraft_transport_messages_reassembled_total",
                    "Messages rebuilt from fragments."),
    "dropped_incomplete": ("txraft_transport_incomplete_messages_dropped_total",
                           "Partly received messages discarded (timeout, eviction, size)."),
    "deliver_errors": ("txraft_transport_deliver_errors_total",
                       "Messages the node failed to handle (a bug; logged)."),
    "resolve_errors": ("txraft_transport_resolve_errors_total",
                       "Failed look-ups of a peer's host name."),
    "address_changes": ("txraft_transport_peer_address_changes_total",
                        "Times a peer was found at a new address."),
    "identity_notices_sent": ("txraft_transport_identity_notices_sent_total",
                              "Identity notices sent to senders whose data directory "
                              "(uuid) is not the one known for their id."),
    "identity_notices_received": ("txraft_transport_identity_notices_received_total",
                                  "Identity notices received: peers refusing this data "
                                  "directory's uuid."),
}
INBOUND_DROPPED = ("txraft_transport_inbound_datagrams_dropped_total",
                   "Datagrams received and dropped, by reason.")
OUTBOUND_MESSAGES_DROPPED = ("txraft_transport_outbound_messages_dropped_total",
                             "Messages to send that were not sent, by reason.")
OUTBOUND_DATAGRAMS_DROPPED = ("txraft_transport_outbound_datagrams_dropped_total",
                              "Datagrams to send that were not written, by reason.")
#: Outbound drops counted per datagram (the others are per message).
DATAGRAM_DROPS = frozenset(("dropped_fault_loss", "send_errors"))
DROP_REASONS = {"internal_errors": "internal_error", "send_errors": "send_error",
                "send_too_large": "too_large"}

#: ``status()["snapshot_transfers"]`` stats.
SNAPSHOT_COUNTERS = {
    "sent": ("txraft_snapshot_transfers_started_total",
             "Snapshot transfers this node began sending, as leader."),
    "chunks_sent": ("txraft_snapshot_chunks_sent_total", "Snapshot chunks sent."),
    "chunks_received": ("txraft_snapshot_chunks_received_total",
                        "Snapshot chunks received and kept."),
    "installed": ("txraft_snapshot_transfers_received_total",
                  "Whole snapshot images received from a leader."),
    "malformed": ("txraft_snapshot_transfer_malformed_total",
                  "Whole snapshot payloads received whose header did not decode (dropped)."),
}

#: ``status()["storage"]`` counters (``FileLogStorage.stats``).
STORAGE_COUNTERS = {
    "tail_cuts": ("txraft_storage_tail_cuts_total",
                  "Torn tails cut off the log at start since the data directory got its "
                  "MANIFEST (a crash during a write; logged at error level)."),
}

_NOT_IN_NAMES = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_text(node: Any) -> bytes:
    """``node`` (a ``NodeStatus``) in the Prometheus text exposition format 0.0.4.

    Every family is written with its ``# HELP`` and ``# TYPE`` once; what the status does
    not hold (a follower has no peers' progress, a node without a transport no transport
    counters, a node that knows no leader no leader) is left out, and a counter this
    module has no name for still appears, as ``txraft_<group>_<name>_total``.
    """
    # Imported here: only this function needs them, and only once a scraper asks.
    from txraft.core import (CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, PROBE, REPLICATE,
                             SNAPSHOT)
    from txraft.runtime.transport import INBOUND_DROPS

    core = node.core
    out = _Exposition()
    out.add("txraft_info", "gauge", "Always 1; the labels name this node.",
            {"node_id": core.id}, 1)
    role = core.role
    for name in _states((FOLLOWER, PRE_CANDIDATE, CANDIDATE, LEADER), role):
        out.add("txraft_role", "gauge", "1 for the node's role, 0 for the others.",
                {"role": name}, name == role)
    out.add("txraft_is_leader", "gauge", "1 when this node is the leader.", {}, role == LEADER)
    out.add("txraft_has_leader", "gauge", "1 when this node knows a leader.", {},
            core.leader_id is not None)
    out.add("txraft_fatal_error", "gauge",
            "1 once the node stopped after a fatal error (see /raft/status).", {},
            node.fatal_error is not None)
    for field, name, help_text in STATUS_GAUGES:
        source = node if field in NODE_FIELDS else core
        out.add(name, "gauge", help_text, {}, getattr(source, field))
    out.add("txraft_voters", "gauge", "Voting members of the cluster.", {}, len(core.voters))
    out.add("txraft_learners", "gauge",
            "Non-voting members (learners) of the latest configuration.", {},
            len(core.learners))
    out.add("txraft_config_index", "gauge",
            "Index of the entry holding the latest configuration (0: the founding one).",
            {}, core.config_index)
    out.add("txraft_identity_refused", "gauge",
            "1 while peers refuse this node's data directory (uuid): it lost its data and "
            "must be replaced.", {}, bool(node.identity_refusals))
    out.add("txraft_caught_up", "gauge",
            "1 once this data directory has caught up with a leader since it was created "
            "(until then stale reads are refused).", {}, node.caught_up)
    for peer in node.peer_identities:
        out.add("txraft_peer_wrong_identity_datagrams_total", "counter",
                "Datagrams from the peer's id refused because they carried another data "
                "directory's uuid.", {"peer": peer.peer}, peer.dropped_wrong_identity)
    for peer_id, peer in core.progress:
        labels = {"peer": peer_id}
        for field, name, help_text in PEER_GAUGES:
            out.add(name, "gauge", help_text, labels, getattr(peer, field))
        for state in _states((PROBE, REPLICATE, SNAPSHOT), peer.state):
            out.add("txraft_peer_state", "gauge",
                    "Leader only: 1 for how the leader replicates to the peer, 0 for the "
                    "other ways.", {"peer": peer_id, "state": state}, state == peer.state)
    for key, value in node.counters:
        out.add("txraft_node_%s_total" % (key,), "counter",
                NODE_COUNTERS.get(key, "Node counter %s." % (key,)), {}, value)
    for key, value in node.transport or ():
        labels = {}
        if key in TRANSPORT_COUNTERS:
            name, help_text = TRANSPORT_COUNTERS[key]
        elif key in INBOUND_DROPS or key.startswith(("dropped_", "send_")):
            if key in INBOUND_DROPS:
                name, help_text = INBOUND_DROPPED
            elif key in DATAGRAM_DROPS:
                name, help_text = OUTBOUND_DATAGRAMS_DROPPED
            else:
                name, help_text = OUTBOUND_MESSAGES_DROPPED
            labels["reason"] = DROP_REASONS.get(key) or key.split("_", 1)[1]
        else:
            name, help_text = "txraft_transport_%s_total" % (key,), "Transport counter %s." % (
                key,)
        out.add(name, "counter", help_text, labels, value)
    for key, value in node.snapshot_transfers:
        name, help_text = SNAPSHOT_COUNTERS.get(
            key, ("txraft_snapshot_transfer_%s_total" % (key,), "Snapshot transfer counter %s."
                  % (key,)))
        out.add(name, "counter", help_text, {}, value)
    for key, value in node.storage:
        name, help_text = STORAGE_COUNTERS.get(
            key, ("txraft_storage_%s_total" % (key,), "Storage counter %s." % (key,)))
        out.add(name, "counter", help_text, {}, value)
    return out.text()


def _states(known, current):
    """A state set's members: the known states, and the current one if it is not."""
    return known if current in known or current is None else known + (current,)


class _Exposition:
    """Families in the order first added, each with its samples."""

    def __init__(self):
        self.families = {}

    def add(self, name, kind, help_text, labels, value):
        if value is None:
            return
        name = _NOT_IN_NAMES.sub("_", name)
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = (kind, help_text, [])
        family[2].append((labels, value))

    def text(self) -> bytes:
        lines = []
        for name, (kind, help_text, samples) in self.families.items():
            help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append("# HELP %s %s" % (name, help_text))
            lines.append("# TYPE %s %s" % (name, kind))
            for labels, value in samples:
                if labels:
                    pairs = ",".join('%s="%s"' % (label, _label_value(text))
                                     for label, text in labels.items())
                    lines.append("%s{%s} %s" % (name, pairs, _sample_value(value)))
                else:
                    lines.append("%s %s" % (name, _sample_value(value)))
        lines.append("")
        return "\n".join(lines).encode("utf-8")


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value) -> str:
    if isinstance(value, int):  # bool included
        return "%d" % (value,)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)

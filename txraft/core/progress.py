"""What a leader knows about one follower's log, and how that knowledge moves (etcd's tracker).

Figure 2 of the paper gives the leader two numbers per follower, ``next_index`` and
``match_index``.  Over a lossy, reordering network the leader also needs to know how far it
may trust ``next_index``; a ``Progress`` is in one of three states:

``PROBE``
    ``next_index`` is a guess (after an election, a rejection or a silence): one
    AppendEntries at a time, until an answer shows where the logs agree.
``REPLICATE``
    ``next_index`` is known good: entries are pipelined, up to ``max_inflight`` batches
    not yet acknowledged.
``SNAPSHOT``
    the follower needs entries the leader compacted away: the runtime is sending it the
    snapshot at ``snapshot_index``, and nothing else is sent but heartbeats.

Every change of state goes through ``become_probe``, ``become_replicate`` and
``become_snapshot``, which also reset what belongs to the state left behind (the
pipeline's ``inflight`` window, its remembered ``gaps``, the probe flag), so no path can
switch state and keep a stale window.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List

import attrs

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"
STATES = (PROBE, REPLICATE, SNAPSHOT)


@attrs.define
class Progress:
    """One follower, as its leader sees it."""

    next_index: int
    match_index: int = 0
    state: str = PROBE
    #: PROBE: an AppendEntries is out and unanswered; send no other until the next beat.
    probe_sent: bool = False
    #: REPLICATE: the last index of each batch sent and not yet acknowledged.
    inflight: Deque[int] = attrs.Factory(deque)
    #: Heard from within the current election timeout (CheckQuorum).
    recent_active: bool = False
    #: Highest ReadIndex round the follower echoed (dissertation section 6.4).
    read_ack: int = 0
    #: Highest commit index told to the follower.
    commit_sent: int = 0
    #: match_index at the previous heartbeat: unchanged with entries outstanding = stalled.
    match_at_heartbeat: int = 0
    #: SNAPSHOT: the snapshot being sent, and ticks since the transfer last moved.
    snapshot_index: int = 0
    snapshot_elapsed: int = 0
    #: REPLICATE: prev_log_index of pipelined messages rejected as "log too short".
    gaps: List[int] = attrs.Factory(list)
    #: Leader ticks since the follower last answered (a learner's promotion needs it live).
    silent_ticks: int = 0
    #: The follower has answered this leader at least once (a fresh Progress's
    #: ``silent_ticks`` of 0 says nothing about a node that never answered).
    heard: bool = False
    #: A learner's consecutive ticks caught up (``RaftCore`` auto-promotion).
    caught_up_ticks: int = 0
    #: Consecutive "log too short" answers to heartbeats at ``match_index``: the
    #: follower no longer holds entries it acknowledged (its log was lost).
    short_rejections: int = 0

    # ------------------------------------------------------------- transitions

    def become_probe(self, next_index: int = 0) -> None:
        """Probe from ``next_index`` (never below ``match_index + 1``; by default from
        just after what the follower acknowledged)."""
        self._reset(PROBE)
        self.next_index = max(self.match_index + 1, next_index)

    def become_replicate(self) -> None:
        """The logs agree up to ``match_index``: pipeline from just after it."""
        self._reset(REPLICATE)
        self.next_index = self.match_index + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        """The follower needs the snapshot at ``snapshot_index``; the runtime sends it."""
        self._reset(SNAPSHOT)
        self.snapshot_index = snapshot_index
        self.snapshot_elapsed = 0

    def _reset(self, state: str) -> None:
        self.state = state
        self.probe_sent = False
        self.inflight.clear()
        self.gaps = []

    # ------------------------------------------------------------- acknowledgements

    def acknowledge(self, match_index: int) -> bool:
        """The follower holds the leader's log up to ``match_index``; True if that is news.

        A stale or duplicated answer never moves ``match_index`` back, and
        ``next_index`` never falls to ``match_index`` or below.
        """
        if match_index <= self.match_index:
            return False
        self.match_index = match_index
        self.next_index = max(self.next_index, match_index + 1)
        inflight = self.inflight
        while inflight and inflight[0] <= match_index:
            inflight.popleft()
        return True

    def sent(self, last_index: int) -> None:
        """An AppendEntries ending at ``last_index`` left (REPLICATE: it is in flight)."""
        if self.state == PROBE:
            self.probe_sent = True
        elif self.state == REPLICATE and last_index >= self.next_index:
            self.next_index = last_index + 1
            self.inflight.append(last_index)

    def is_paused(self, max_inflight: int) -> bool:
        """Whether the leader must wait before sending this follower more entries."""
        if self.state == PROBE:
            return self.probe_sent
        if self.state == REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

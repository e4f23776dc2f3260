"""The one executor of Raft's output: it carries each ``Ready`` batch to disk, network and
state machine in the order the core decided, in the node and in the simulator alike.

The core says, message by message, what may leave before the batch is durable, what
only after, and what only once the batch is applied (``txraft.core.raft.Ready``).  This
module is the only place that turns that into calls, so the order the simulator proves
is the order the node runs::

    send(messages_before_persist)
    install_snapshot(snapshot)          # durable, state machine restored
    save(hard_state, entries)           # one fsync
    send(messages)
    outcome = apply(ready)              # committed entries, reads, role changes
    core.advance(ready)
    release(outcome)                    # answers to proposals and reads
    send_after_apply(messages_after_apply)

The callables are the caller's: the node's write to ``FileLogStorage`` and the UDP
transport, the simulator's to its memory storage and its simulated network.  An
exception from any of them stops the batch where it is, without ``advance``: the node
treats that as fatal, the simulator as a crash at that point (whatever the callables
had made durable stays, the rest is lost).

Pure: no Twisted, no clock, no I/O of its own.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from txraft.core.messages import Entry, HardState, Message
from txraft.core.raft import RaftCore, Ready, SnapshotImage

Send = Callable[[Sequence[Message]], None]


class Executor:
    """Runs a core's batches; see the module docstring for the order."""

    def __init__(
        self,
        core: RaftCore,
        *,
        send: Send,
        save: Callable[[Optional[HardState], Sequence[Entry]], None],
        install_snapshot: Callable[[SnapshotImage], None],
        apply: Callable[[Ready], Any],
        release: Optional[Callable[[Any], None]] = None,
        send_after_apply: Optional[Send] = None,
    ):
        self.core = core
        self._send = send
        self._save = save
        self._install_snapshot = install_snapshot
        self._apply = apply
        self._release = release
        self._send_after_apply = send_after_apply if send_after_apply is not None else send

    def drain(self) -> int:
        """Execute batches until the core has none; returns how many ran."""
        core = self.core
        count = 0
        while core.has_ready():
            self.execute(core.ready())
            count += 1
        return count

    def execute(self, rd: Ready) -> None:
        """Carry out one batch taken from ``core.ready()``."""
        send = self._send
        if rd.messages_before_persist:
            send(rd.messages_before_persist)
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if rd.hard_state is not None or rd.entries:
            self._save(rd.hard_state, rd.entries)
        if rd.messages:
            send(rd.messages)
        outcome = self._apply(rd)
        self.core.advance(rd)
        if self._release is not None:
            self._release(outcome)
        if rd.messages_after_apply:
            self._send_after_apply(rd.messages_after_apply)

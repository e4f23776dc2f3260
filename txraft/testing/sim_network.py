"""The simulator's network: best effort, like UDP, with faults under the test's control.

Every message goes through ``SimNetwork.send``, which may drop it (loss, or a partition
in force when it is sent or when it arrives), duplicate it, and delay each copy
independently -- which reorders messages and lets a stale one arrive long after a newer
one.  All randomness comes from the simulation's single seeded ``random.Random``.

Partitions are sets of blocked directed links, so they can be symmetric (``partition``,
``isolate``) or one-way (``block``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Set, Tuple


class SimNetwork:
    """Directed links between endpoints (node or client ids) with loss, duplication,
    delay and partitions.  Delivery is scheduled on the owning simulation's clock."""

    def __init__(self, sim: Any):
        self._sim = sim
        self._rng = sim.rng
        #: Probability that a copy is lost.
        self.loss = 0.0
        #: Probability that a message is sent twice (each copy delayed on its own).
        self.duplicate = 0.0
        #: Ordinary one-way delay, drawn uniformly in milliseconds.
        self.min_delay_ms = 1
        self.max_delay_ms = 5
        #: Probability and upper bound of an exceptionally long delay (stale messages).
        self.long_delay = 0.0
        self.long_delay_ms = 300
        self._blocked: Set[Tuple[str, str]] = set()
        self.stats: Dict[str, int] = {
            "sent": 0,
            "delivered": 0,
            "lost": 0,
            "duplicated": 0,
            "long_delayed": 0,
            "partitioned": 0,
        }

    # ------------------------------------------------------------ partitions

    def block(self, src: str, dst: str) -> None:
        """Drop everything from ``src`` to ``dst`` (one way)."""
        self._blocked.add((src, dst))

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.discard((src, dst))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between different groups, both ways."""
        groups = [list(g) for g in groups]
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self._blocked.add((x, y))
                        self._blocked.add((y, x))

    def isolate(self, node: str, others: Iterable[str]) -> None:
        self.partition([node], [o for o in others if o != node])

    def heal(self) -> None:
        """Remove every partition (loss, duplication and delay settings stay)."""
        self._blocked.clear()

    def is_blocked(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked

    @property
    def blocked_links(self) -> Set[Tuple[str, str]]:
        return set(self._blocked)

    # -------------------------------------------------------------- traffic

    def send(self, src: str, dst: str, message: Any, deliver: Callable[[Any], None]) -> None:
        """Carry ``message`` from ``src`` to ``dst``; ``deliver(message)`` runs on arrival."""
        stats = self.stats
        stats["sent"] += 1
        if (src, dst) in self._blocked:
            stats["partitioned"] += 1
            return
        rng = self._rng
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            stats["duplicated"] += 1
        for _ in range(copies):
            if self.loss and rng.random() < self.loss:
                stats["lost"] += 1
                continue
            if self.long_delay and rng.random() < self.long_delay:
                stats["long_delayed"] += 1
                delay = rng.randint(self.max_delay_ms, self.long_delay_ms)
            else:
                delay = rng.randint(self.min_delay_ms, self.max_delay_ms)
            self._sim.schedule(delay, self._arrive, (src, dst, message, deliver))

    def _arrive(self, item: Tuple[str, str, Any, Callable[[Any], None]]) -> None:
        src, dst, message, deliver = item
        if (src, dst) in self._blocked:
            self.stats["partitioned"] += 1
            return
        self.stats["delivered"] += 1
        deliver(message)

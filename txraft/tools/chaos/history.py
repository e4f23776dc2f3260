"""What the chaos clients did: one record per logical operation, with every HTTP attempt.

A logical operation is what a user meant ("place this order"); a client may send it several
times (retrying with the same ``Idempotency-Key`` after a timeout).  Its invocation is the
start of the first attempt and its completion the end of the attempt that gave the final
answer; its status is ``ok`` when some attempt got a definite answer (success or refusal),
``fail`` when every attempt certainly had no effect, ``unknown`` otherwise.  Times are
``time.monotonic()`` of the harness process, the one clock every record shares.

Thread safe: client threads record concurrently.  Saved as JSON lines so that a failed run
can be checked again offline (``python -m txraft.tools.chaos check DIR``).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional

import attrs

from txraft.tools.chaos.checker import FAIL, OK, UNKNOWN


@attrs.define
class Attempt:
    """One HTTP exchange of a logical operation."""

    node: str
    start: float
    end: float
    status: int  # HTTP status, 0 when no answer
    verdict: str  # OK (definite answer), FAIL (certainly no effect), UNKNOWN
    detail: str = ""


@attrs.define
class Record:
    """One logical operation.  ``args`` and ``result`` are JSON values."""

    id: int
    process: str
    f: str
    args: Dict[str, Any]
    invoke: float
    complete: Optional[float] = None
    status: str = UNKNOWN
    result: Any = None
    attempts: List[Attempt] = attrs.field(factory=list)

    @property
    def done(self) -> bool:
        return self.complete is not None or self.status != UNKNOWN

    def to_json(self) -> Dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Dict[str, Any]) -> "Record":
        value = dict(value)
        value["attempts"] = [Attempt(**a) for a in value.get("attempts", ())]
        return cls(**value)


def settle(attempts: Iterable[Attempt]) -> str:
    """The status of a logical operation from its attempts (see the module docstring)."""
    attempts = list(attempts)
    if any(a.verdict == OK for a in attempts):
        return OK
    if attempts and all(a.verdict == FAIL for a in attempts):
        return FAIL
    return UNKNOWN


class History:
    """The records of one run, in invocation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: List[Record] = []

    def invoke(self, process: str, f: str, args: Dict[str, Any], now: float) -> Record:
        with self._lock:
            record = Record(len(self._records), process, f, dict(args), now)
            self._records.append(record)
        return record

    @staticmethod
    def finish(record: Record, status: str, result: Any = None,
               complete: Optional[float] = None) -> None:
        """Close ``record``; ``complete`` is None exactly for an unknown outcome."""
        record.status = status
        record.result = result
        record.complete = complete if status != UNKNOWN else None

    def records(self) -> List[Record]:
        with self._lock:
            return list(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            for record in self.records():
                f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str) -> "History":
        history = cls()
        with open(path) as f:
            for line in f:
                if line.strip():
                    history._records.append(Record.from_json(json.loads(line)))
        return history

    def counts(self) -> Dict[str, Dict[str, int]]:
        """``{f: {status: count}}``."""
        out: Dict[str, Dict[str, int]] = {}
        for record in self.records():
            by_status = out.setdefault(record.f, {OK: 0, FAIL: 0, UNKNOWN: 0})
            by_status[record.status] = by_status.get(record.status, 0) + 1
        return out

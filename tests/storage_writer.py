"""A process that writes a ``FileLogStorage`` until it is killed (for the crash tests).

Usage: ``python storage_writer.py DIRECTORY SEED SEGMENT_BYTES [WRITE_BYTES]``.  It
prints ``ready`` once the storage is open, then performs ``operations(SEED)`` one by one
and prints the number of each operation after it returned, i.e. after it was acknowledged
as durable.  The test regenerates the same operations to know what each acknowledgement
promised.

A kill rarely lands inside one ``write`` system call, so with ``WRITE_BYTES`` every write
returns after at most that many bytes (a short write, as POSIX allows) and yields the CPU:
a kill then often leaves a torn batch behind, which recovery must cut off.
"""

from __future__ import annotations

import os
import random
import sys
import time

if __name__ == "__main__":
    # Run as a script from anywhere: make the checkout importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txraft.core.messages import ENTRY_NOOP, ENTRY_NORMAL, Entry, HardState, SnapshotMeta

# Stop on its own if nobody kills it, so a broken test cannot leave it running.
MAX_SECONDS = 30.0
MAX_OPERATIONS = 50_000


def operations(seed, compact=True):
    """Yield ``("save", hard_state, entries)`` and ``("compact", meta)``, deterministically.

    Mostly appends (single entries, batches of up to 64 and some large batches that take
    long enough to be torn by a kill), with term changes, conflicting-suffix
    replacements and, when ``compact``, compactions that keep or discard the suffix.
    """
    rng = random.Random(seed)
    term = 1
    terms = {}  # index -> term of what the writer holds
    snapshot = SnapshotMeta()
    last = 0
    yield ("save", HardState(term, "n1"), ())
    while True:
        roll = rng.random()
        if compact and roll < 0.04 and last > snapshot.index:
            index = rng.randint(snapshot.index + 1, last)
            if rng.random() < 0.2:
                meta = SnapshotMeta(index, terms[index] + 1)
                terms = {}
                last = index
            else:
                meta = SnapshotMeta(index, terms[index])
            terms = {i: t for i, t in terms.items() if i > index}
            snapshot = meta
            yield ("compact", meta)
            continue
        hard_state = None
        first = last + 1
        if roll < 0.12:
            term += 1
            hard_state = HardState(term, rng.choice([None, "n1", "n2"]))
            if roll < 0.08:
                first = max(snapshot.index + 1, last - rng.randint(0, 4))
        if roll > 0.97:
            count, size = rng.randint(200, 600), 1024
        elif roll > 0.6:
            count, size = rng.randint(2, 64), 64
        else:
            count, size = 1, rng.choice([0, 8, 64, 200])
        entries = tuple(
            Entry(
                index=i,
                term=term,
                data=rng.randbytes(size),
                kind=ENTRY_NOOP if rng.random() < 0.05 else ENTRY_NORMAL,
            )
            for i in range(first, first + count)
        )
        for i in range(first, last + 1):
            terms.pop(i, None)
        for e in entries:
            terms[e.index] = e.term
        last = entries[-1].index
        yield ("save", hard_state, entries)


def apply(storage, operation):
    if operation[0] == "save":
        storage.save(operation[1], operation[2])
    else:
        storage.compact(operation[1])


def main(argv):
    from txraft.runtime.storage import FileLogStorage

    from txraft.runtime import storage as storage_module

    directory, seed, segment_bytes = argv[1], int(argv[2]), int(argv[3])
    if len(argv) > 4:
        write_bytes = int(argv[4])
        real_write = storage_module._write

        def short_write(fd, data):
            written = real_write(fd, data[:write_bytes])
            time.sleep(0)
            return written

        storage_module._write = short_write
    storage = FileLogStorage(directory, segment_bytes=segment_bytes)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    deadline = time.monotonic() + MAX_SECONDS
    for number, operation in enumerate(operations(seed), 1):
        apply(storage, operation)
        out.write("%d\n" % (number,))
        out.flush()
        if number >= MAX_OPERATIONS or time.monotonic() > deadline:
            break
    storage.close()


if __name__ == "__main__":
    main(sys.argv)

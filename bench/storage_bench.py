"""How fast FileLogStorage.save() makes entries durable: one entry per save vs. batches.

Usage: ``python bench/storage_bench.py [--seconds S] [--dir DIRECTORY]``.  Each case runs
for about S seconds in a fresh directory (by default under the system temp directory;
pass ``--dir`` to measure a particular disk) and prints saves/s, entries/s and fsyncs/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from txraft.core.messages import Entry, HardState  # noqa: E402
from txraft.runtime.storage import FileLogStorage  # noqa: E402

CASES = [
    ("1 x 64 B entry per save", 1),
    ("64 x 64 B entries per save", 64),
]


def run(parent, batch, seconds):
    directory = tempfile.mkdtemp(prefix="storage-bench-", dir=parent)
    try:
        storage = FileLogStorage(directory)
        storage.save(HardState(1, "n1"), [])
        data = b"x" * 64
        index = 1
        saves = 0
        fsyncs_before = storage.fsync_count
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            storage.save(None, [Entry(i, 1, data) for i in range(index, index + batch)])
            index += batch
            saves += 1
            if saves % 64 == 0 and time.perf_counter() >= deadline:
                break
        elapsed = time.perf_counter() - start
        fsyncs = storage.fsync_count - fsyncs_before
        storage.close()
        return saves / elapsed, (index - 1) / elapsed, fsyncs / elapsed
    finally:
        shutil.rmtree(directory)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None, help="parent directory for the data")
    args = parser.parse_args()
    print("%-28s %12s %12s %12s" % ("case", "saves/s", "entries/s", "fsyncs/s"))
    for name, batch in CASES:
        saves, entries, fsyncs = run(args.dir, batch, args.seconds)
        print("%-28s %12.0f %12.0f %12.0f" % (name, saves, entries, fsyncs))


if __name__ == "__main__":
    main()

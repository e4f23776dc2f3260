"""``FileLogStorage`` under ``kill -9``: a real writer process killed at a random moment."""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests import REPO_ROOT, storage_writer
from tests.unit.test_storage import (SEED, WRITER, describe, partial, plausible_records,
                                     state_after)
from txraft.errors import StorageCorrupted
from txraft.runtime.storage import FileLogStorage

#: Opens a storage (the recovery of a crashed directory: cutting its tail, fsyncing,
#: writing its manifest) and is killed while it does.
OPENER = (
    "import sys; sys.path.insert(0, sys.argv[1]);"
    "from txraft.runtime.storage import FileLogStorage;"
    "print('imported', flush=True);"
    "FileLogStorage(sys.argv[2], segment_bytes=int(sys.argv[3]))"
)


class CrashTests(SynchronousTestCase):
    """Kill a real writer process with SIGKILL and check what survives."""

    def kill_while_opening(self, directory, segment_bytes, delay, context):
        """Kill a process ``delay`` seconds into opening ``directory``."""
        process = subprocess.Popen(
            [sys.executable, "-c", OPENER, REPO_ROOT, directory, str(segment_bytes)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )
        self.addCleanup(lambda: process.poll() is None and process.kill())
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline() if ready else b""
        if line != b"imported\n":
            process.kill()
            self.fail("%s: opener did not start: %r %s"
                      % (context, line, process.communicate()[1].decode()))
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        if process.returncode not in (0, -signal.SIGKILL):
            self.fail("%s: opening the crashed directory failed: %s" % (context, err.decode()))

    def start_writer(self, directory, seed, segment_bytes, write_bytes):
        extra = [str(write_bytes)] if write_bytes else []
        process = subprocess.Popen(
            [sys.executable, WRITER, directory, str(seed), str(segment_bytes)] + extra,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # Unbuffered: reading "ready" must not swallow acknowledgements after it.
            bufsize=0,
        )

        def cleanup():
            if process.poll() is None:
                process.kill()
            process.communicate()

        self.addCleanup(cleanup)
        return process

    def wait_ready(self, process, context):
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline() if ready else b""
        if line != b"ready\n":
            process.kill()
            _, err = process.communicate()
            self.fail("%s: writer did not start: %r %s" % (context, line, err.decode()))

    def test_sigkill_loses_nothing_acknowledged(self):
        """After kill -9 at a random moment the reopened log is exactly what the writer
        had acknowledged, plus possibly a prefix of the records of the one save in
        flight: nothing acknowledged is lost and nothing is invented.  In half of the
        trials the recovery itself (cutting the tail, recording the manifest) is killed
        too, first."""
        rng = random.Random(SEED)
        deadline = time.monotonic() + 15
        for trial in range(20):
            seed = rng.randrange(2**32)
            segment_bytes = rng.choice([4096, 64 * 1024, 1024 * 1024])
            write_bytes = rng.choice([None, 512, 4096])
            context = "TXRAFT_STORAGE_SEED=%d trial %d writer seed %d write_bytes %s" % (
                SEED,
                trial,
                seed,
                write_bytes,
            )
            directory = self.mktemp()
            process = self.start_writer(directory, seed, segment_bytes, write_bytes)
            self.wait_ready(process, context)
            time.sleep(rng.uniform(0.0, 0.1))
            process.send_signal(signal.SIGKILL)
            out, err = process.communicate()
            self.assertEqual(process.returncode, -signal.SIGKILL, context + err.decode())
            acknowledged = [int(line) for line in out.decode().split("\n")[:-1]]
            done = acknowledged[-1] if acknowledged else 0
            self.assertEqual(acknowledged, list(range(1, done + 1)), context)

            generated = storage_writer.operations(seed)
            operations = [next(generated) for _ in range(done + 1)]
            in_flight = operations[done]
            if rng.random() < 0.5:
                self.kill_while_opening(directory, segment_bytes, rng.uniform(0.0, 0.03),
                                        context)
            try:
                s = FileLogStorage(directory, segment_bytes=segment_bytes)
            except StorageCorrupted as e:
                self.fail("%s: after %d acknowledged operations: %s" % (context, done, e))
            try:
                state = s.load()
            finally:
                s.close()
            candidates = [
                state_after(operations[:done] + [partial(in_flight, n)])
                for n in plausible_records(in_flight, state)
            ]
            if state not in candidates:
                self.fail(
                    "%s: after %d acknowledged operations the log is %s, expected one of\n%s"
                    % (context, done, describe(state), "\n".join(map(describe, candidates)))
                )
            again = FileLogStorage(directory, segment_bytes=segment_bytes)
            try:
                self.assertEqual(again.load(), state, context)
            finally:
                again.close()
            if time.monotonic() > deadline:
                break

"""The transport incarnation chosen at each start of ``twistd raftnode``."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txraft.plugins import raftnode


class NextIncarnationTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp(), "incarnation")
        os.makedirs(os.path.dirname(self.path))
        self.now = [1_000_000_000_000_000]
        self.patch(raftnode.time, "time_ns", lambda: self.now[0])

    def test_boot_time_in_microseconds(self):
        """With no earlier start, the incarnation is the clock in microseconds, and it
        is stored for the next start."""
        self.assertEqual(raftnode.next_incarnation(self.path), 1_000_000_000_000)
        with open(self.path, "rb") as f:
            self.assertEqual(int(f.read()), 1_000_000_000_000)

    def test_grows_when_the_clock_was_set_back(self):
        """Peers refuse a sender's lower incarnation (replay protection), so a clock
        stepped backwards across a restart must not lower it."""
        first = raftnode.next_incarnation(self.path)
        self.now[0] -= 3600 * 10**9
        second = raftnode.next_incarnation(self.path)
        third = raftnode.next_incarnation(self.path)
        self.assertEqual([second, third], [first + 1, first + 2])

    def test_damaged_file_falls_back_to_the_clock(self):
        """An unreadable record does not stop the node; the clock decides."""
        with open(self.path, "wb") as f:
            f.write(b"garbage")
        self.assertEqual(raftnode.next_incarnation(self.path), 1_000_000_000_000)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

"""``txraft-cluster`` (txraft.tools.clustercmd): the console over a fake cluster, then the real
command end to end with real ``twistd raftnode`` processes on 127.0.0.1.

The end-to-end tests start the command as a subprocess in a fresh directory, drive it
through a pipe on its stdin as a person would through a terminal, and afterwards look
for any process whose command line names that directory: none may be left.  Every
wait is bounded; cleanup kills the command and anything it started, whatever happened.
"""

from __future__ import annotations

import io
import os
import signal
import time
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools import clustercmd
from txraft.tools.clustercmd import Console, Row, exit_text, render_table, shutdown
from txraft.tools.localcluster import HTTPResult

# -- a fake cluster for the console -------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int, stubborn: bool = False):
        self.pid = pid
        self.returncode: Optional[int] = None
        self.stubborn = stubborn  # ignores SIGTERM
        self.signals: List[int] = []

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        assert self.returncode is not None, "would block forever"
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def terminate(self) -> None:
        self.signals.append(signal.SIGTERM)
        if not self.stubborn:
            self.returncode = -signal.SIGTERM

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.returncode = -signal.SIGKILL


class FakeNode:
    def __init__(self, node_id: str, port: int):
        self.node_id = node_id
        self.url = "http://127.0.0.1:%d" % port
        self.log_path = "/nonexistent/%s/node.log" % node_id
        self.process: Optional[FakeProcess] = None
        self.paused = False
        self.answer: Optional[Dict[str, Any]] = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self, timeout: float = 1.0) -> Optional[Dict[str, Any]]:
        if not self.alive() or self.paused:
            return None
        return self.answer


class FakeCluster:
    def __init__(self, size: int):
        self.nodes = {"n%d" % i: FakeNode("n%d" % i, 5000 + i) for i in range(1, size + 1)}
        self.calls: List[str] = []
        self.next_pid = 100
        self.change_answer = HTTPResult(200, {}, b'{"config_index": 7}')

    def start(self, node_id: str) -> FakeNode:
        self.calls.append("start " + node_id)
        self.next_pid += 1
        self.nodes[node_id].process = FakeProcess(self.next_pid)
        return self.nodes[node_id]

    def kill(self, node_id: str) -> None:
        self.calls.append("kill " + node_id)
        self.nodes[node_id].process.returncode = -9
        self.nodes[node_id].paused = False

    def stop(self, node_id: str) -> None:
        self.calls.append("stop " + node_id)
        self.nodes[node_id].process.returncode = -15

    def pause(self, node_id: str) -> None:
        self.calls.append("pause " + node_id)
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        self.calls.append("resume " + node_id)
        self.nodes[node_id].paused = False

    def remove_member(self, node_id: str):
        self.calls.append("remove " + node_id)
        return self.change_answer

    def add_member(self, node_id: str):
        self.calls.append("add " + node_id)
        return self.change_answer

    def new_node(self):
        node_id = "n%d" % (len(self.nodes) + 1)
        self.calls.append("new " + node_id)
        self.nodes[node_id] = FakeNode(node_id, 100 + len(self.nodes) + 1)
        self.nodes[node_id].join_urls = ["http://n1.test"]
        return self.nodes[node_id]

    def transfer_leader(self, target=None):
        self.calls.append("transfer %s" % (target,))
        return self.transfer_answer

    def elect(self, leader: str, term: int, commit: int = 1) -> None:
        for node_id, node in self.nodes.items():
            node.answer = {
                "role": "leader" if node_id == leader else "follower", "term": term,
                "leader_id": leader, "commit_index": commit, "applied_index": commit,
            }


class ConsoleTestMixin:
    def make_console(self, size: int = 3):
        self.cluster = FakeCluster(size)
        self.out = io.StringIO()
        self.now = [1000.0]
        self.console = Console(self.cluster, self.out, clock=lambda: self.now[0],
                               timestamp=lambda: "12:00:00")
        self.console.start_all()
        return self.console

    def output(self) -> str:
        text = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return text


class ConsoleTests(ConsoleTestMixin, SynchronousTestCase):
    def test_start_prints_url_and_pid_of_every_node(self):
        """Starting prints one line per node with its URL, pid and log."""
        self.make_console()
        lines = self.output().splitlines()
        self.assertEqual(
            lines[0], "  n1  http://127.0.0.1:5001  pid 101  log /nonexistent/n1/node.log"
        )
        self.assertEqual(len(lines), 3)

    def test_table_printed_only_when_something_changes(self):
        """The table is printed on the first poll and again only when a row changes."""
        console = self.make_console()
        self.output()
        self.cluster.elect("n2", 3)
        console.refresh()
        first = self.output()
        self.assertIn("[12:00:00] leader n2, term 3", first)
        self.assertIn("n2  102  leader    3     n2      1       1", first)
        console.refresh()
        self.assertEqual(self.output(), "")
        self.cluster.elect("n2", 3, commit=2)
        console.refresh()
        self.assertIn("leader n2, term 3", self.output())
        console.refresh(force=True)
        self.assertIn("leader n2, term 3", self.output())

    def test_process_states_in_the_role_column(self):
        """A node that cannot answer shows why: starting, silent (after the grace
        period), paused, killed, stopped or not started."""
        console = self.make_console(4)
        self.cluster.elect("n1", 1)
        self.cluster.nodes["n4"].answer = None
        console.execute("pause n2")
        console.execute("kill n3")
        rows = {row.node_id: row for row in console.poll()}
        self.assertEqual(rows["n2"].role, "paused")
        self.assertEqual(rows["n3"].role, "killed")
        self.assertEqual(rows["n3"].pid, "-")
        self.assertEqual(rows["n4"].role, "starting")
        self.now[0] += clustercmd.STARTING_GRACE_SECONDS
        self.assertEqual({r.node_id: r.role for r in console.poll()}["n4"], "silent")
        console.execute("stop n4")
        self.assertEqual({r.node_id: r.role for r in console.poll()}["n4"], "stopped")

    def test_a_node_dying_on_its_own_is_reported_once(self):
        """A node that exits without being asked is shown as exited with its status,
        and reported once with the end of its log."""
        console = self.make_console()
        self.output()
        self.cluster.nodes["n2"].process.returncode = 70
        console.refresh()
        text = self.output()
        self.assertIn(
            "n2 exited with status 70 on its own; the end of /nonexistent/n2/node.log", text
        )
        self.assertIn("(no log)", text)
        self.assertIn("exited 70", text)
        console.refresh(force=True)
        self.assertNotIn("on its own", self.output())

    def test_node_ids_and_leader_alias(self):
        """n2, 2, node2 and N2 name the same node; 'leader' names the current leader."""
        console = self.make_console()
        self.cluster.elect("n3", 2)
        console.refresh()
        for word in ("n2", "2", "node2", "N2"):
            self.assertEqual(console.resolve(word), "n2")
        self.assertEqual(console.resolve("leader"), "n3")
        self.assertRaises(ValueError, console.resolve, "n9")
        self.assertRaises(ValueError, console.resolve, "bob")

    def test_kill_leader(self):
        """`kill leader` kills whichever node leads, and says which and its pid."""
        console = self.make_console()
        self.cluster.elect("n3", 2)
        console.refresh()
        self.output()
        console.execute("kill leader")
        self.assertEqual(self.cluster.calls[-1], "kill n3")
        self.assertIn("killed n3 (pid 103)", self.output())

    def test_remove_and_add_members(self):
        """`remove` and `add` change the configuration through the nodes' HTTP API; a
        refusal is answered with its message and code, and `add` needs a running node."""
        console = self.make_console()
        self.output()
        console.execute("remove 3")
        self.assertEqual(self.cluster.calls[-1], "remove n3")
        self.assertIn("removed n3: configuration at index 7", self.output())
        console.execute("add n3")
        self.assertIn("added n3: configuration at index 7", self.output())
        self.cluster.change_answer = HTTPResult(
            409, {}, b'{"error": {"code": "change_in_progress", "message": "wait"}}')
        console.execute("remove n2")
        self.assertIn("remove: wait (change_in_progress)", self.output())
        self.cluster.kill("n1")
        console.execute("add n1")
        self.assertIn("add: n1 is not running", self.output())

    def test_join_starts_a_brand_new_node(self):
        console = self.make_console()
        self.output()
        console.execute("join")
        self.assertEqual(self.cluster.calls[-2:], ["new n4", "start n4"])
        self.assertIn("n4 joins through http://n1.test", self.output())

    def test_transfer_the_leadership(self):
        """`transfer [<id>]` asks for a hand-over and prints who leads; a refusal is its
        message and code."""
        console = self.make_console()
        self.output()
        self.cluster.transfer_answer = HTTPResult(
            200, {}, b'{"leader": "n2", "term": 4, "previous_leader": "n1"}')
        console.execute("transfer")
        self.assertEqual(self.cluster.calls[-1], "transfer None")
        self.assertIn("n2 leads term 4 (was n1)", self.output())
        console.execute("transfer 2")
        self.assertEqual(self.cluster.calls[-1], "transfer n2")
        self.cluster.transfer_answer = HTTPResult(
            409, {}, b'{"error": {"code": "not_voter", "message": "n3 is a learner"}}')
        console.execute("transfer n3")
        self.assertIn("transfer: n3 is a learner (not_voter)", self.output())
        console.execute("transfer n1 n2")
        self.assertIn("usage: transfer [<id>]", self.output())

    def test_restart_kills_then_starts_with_a_new_pid(self):
        """`restart` is kill -9 then start; the new pid is printed like at startup."""
        console = self.make_console()
        self.output()
        console.execute("restart 1")
        self.assertEqual(self.cluster.calls[-2:], ["kill n1", "start n1"])
        text = self.output()
        self.assertIn("killed n1 (pid 101)", text)
        self.assertIn("  n1  http://127.0.0.1:5001  pid 104  log", text)

    def test_pause_resume_start_stop(self):
        """Each command reaches the cluster and is acknowledged; commands that make no
        sense in the node's state are refused."""
        console = self.make_console()
        self.output()
        console.execute("pause n1")
        console.execute("resume n1")
        console.execute("stop n2")
        console.execute("start n2")
        self.assertEqual(self.cluster.calls[-4:], ["pause n1", "resume n1", "stop n2", "start n2"])
        text = self.output()
        for expected in ("paused n1", "resumed n1", "stopped n2",
                         "  n2  http://127.0.0.1:5002  pid 104"):
            self.assertIn(expected, text)
        calls = len(self.cluster.calls)
        console.execute("resume n1")
        console.execute("start n1")
        console.execute("kill n3")
        console.execute("kill n3")
        self.assertEqual(len(self.cluster.calls), calls + 1)
        text = self.output()
        self.assertIn("resume: n1 is not paused", text)
        self.assertIn("start: n1 is already running", text)
        self.assertIn("kill: n3 is not running", text)

    def test_mistakes_are_answered_not_raised(self):
        """Unknown commands, missing or extra arguments and unknown ids get an answer."""
        console = self.make_console()
        self.output()
        console.execute("dance")
        console.execute("kill")
        console.execute("kill n1 n2")
        console.execute("kill n7")
        console.execute("kill leader")
        console.execute("   ")
        text = self.output()
        self.assertIn("unknown command 'dance'", text)
        self.assertEqual(text.count("usage: kill <id>"), 2)
        self.assertIn("no node 'n7'", text)
        self.assertIn("no leader known", text)
        self.assertEqual(self.cluster.calls, ["start n1", "start n2", "start n3"])

    def test_help_status_quit(self):
        """help lists every command, status prints every node and the table, quit asks
        the loop to stop."""
        console = self.make_console()
        self.output()
        console.execute("help")
        text = self.output()
        for command in clustercmd.COMMANDS:
            self.assertIn(command, text)
        console.execute("status")
        text = self.output()
        self.assertIn("  n3  http://127.0.0.1:5003  pid 103", text)
        self.assertIn("id  pid", text)
        self.assertFalse(console.quit_requested)
        console.execute("quit")
        self.assertTrue(console.quit_requested)


class RenderingTests(SynchronousTestCase):
    def test_columns_are_aligned(self):
        """Columns line up under their names."""
        lines = render_table([Row("n1", "12", "leader", "3", "n1", "10", "10"),
                              Row("n10", "-", "killed", "-", "-", "-", "-")])
        self.assertEqual(lines, [
            "  id   pid  role    term  leader  commit  applied",
            "  n1   12   leader  3     n1      10      10",
            "  n10  -    killed  -     -       -       -",
        ])

    def test_exit_text(self):
        """Negative return codes are signals (twistd's clean exit after SIGTERM)."""
        self.assertEqual(exit_text(-15), "exited by SIGTERM")
        self.assertEqual(exit_text(-15, short=True), "exited SIGTERM")
        self.assertEqual(exit_text(70), "exited with status 70")
        self.assertEqual(exit_text(70, short=True), "exited 70")


class ShutdownTests(SynchronousTestCase):
    def make(self):
        cluster = FakeCluster(3)
        for node_id in cluster.nodes:
            cluster.start(node_id)
        return cluster

    def test_terminates_all_then_kills_the_stubborn(self):
        """Every live node gets SIGTERM; one still running after the grace period gets
        SIGKILL; a paused one is continued first so that it can stop."""
        cluster = self.make()
        cluster.nodes["n2"].process.stubborn = True
        cluster.nodes["n3"].paused = True
        lines: List[str] = []
        shutdown(cluster, lines.append, grace_seconds=0.0, hurry=lambda: False)
        self.assertEqual(cluster.nodes["n1"].process.signals, [signal.SIGTERM])
        self.assertEqual(cluster.nodes["n2"].process.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(cluster.nodes["n3"].process.signals, [signal.SIGCONT, signal.SIGTERM])
        self.assertIn("n2 did not stop in time: SIGKILL", lines)
        self.assertIn("stopped n1 (pid 101, exited by SIGTERM)", lines)
        self.assertTrue(all(not node.alive() for node in cluster.nodes.values()))

    def test_hurry_kills_at_once(self):
        """A second signal during the grace period kills what is left without waiting."""
        cluster = self.make()
        for node in cluster.nodes.values():
            node.process.stubborn = True
        started = time.monotonic()
        shutdown(cluster, lambda line: None, grace_seconds=60.0, hurry=lambda: True)
        self.assertLess(time.monotonic() - started, 30.0)
        self.assertTrue(all(not node.alive() for node in cluster.nodes.values()))

    def test_dead_nodes_are_left_alone(self):
        """Nodes already killed are not signalled again."""
        cluster = self.make()
        cluster.kill("n1")
        shutdown(cluster, lambda line: None, grace_seconds=0.0, hurry=lambda: False)
        self.assertEqual(cluster.nodes["n1"].process.signals, [])


class RunLoopTests(ConsoleTestMixin, SynchronousTestCase):
    class Signals:
        """A SignalFlag that installs nothing: the loop only reads these two fields."""

        def __init__(self):
            self.received: List[str] = []
            self.wake_read, self.wake_write = os.pipe()

        def drain(self):
            pass

        def close(self):
            os.close(self.wake_read)
            os.close(self.wake_write)

    def pipe_with(self, data: bytes, close: bool = True) -> int:
        read, write = os.pipe()
        os.write(write, data)
        if close:
            os.close(write)
        else:
            self.addCleanup(os.close, write)
        self.addCleanup(os.close, read)
        return read

    def signals(self):
        signals = self.Signals()
        self.addCleanup(signals.close)
        return signals

    def test_commands_from_a_pipe_until_quit(self):
        """Lines on a non-tty stdin are commands; `quit` ends the loop."""
        console = self.make_console()
        stdin = self.pipe_with(b"pause n1\nresume n1\nquit\nkill n2\n")
        reason = clustercmd.run(console, stdin, self.signals(), refresh_seconds=60.0)
        self.assertEqual(reason, "quit")
        self.assertEqual(self.cluster.calls[-2:], ["pause n1", "resume n1"])

    def test_end_of_input_does_not_stop_the_cluster(self):
        """After stdin ends (a last line without newline still counts) the loop keeps
        polling until a signal arrives."""
        console = self.make_console()
        signals = self.signals()
        polls = []

        def refresh(force=False):
            polls.append(force)
            if len(polls) == 3:
                signals.received.append("SIGTERM")

        console.refresh = refresh
        stdin = self.pipe_with(b"kill n3")
        reason = clustercmd.run(console, stdin, signals, refresh_seconds=0.01)
        self.assertEqual(reason, "SIGTERM")
        self.assertEqual(self.cluster.calls[-1], "kill n3")
        self.assertEqual(len(polls), 3)

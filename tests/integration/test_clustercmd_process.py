"""``txraft-cluster`` end to end: the real command with real ``twistd raftnode`` processes.

The tests start the command as a subprocess in a fresh directory, drive it through a pipe
on its stdin as a person would through a terminal, and afterwards look for any process
whose command line names that directory: none may be left.  Every wait is bounded;
cleanup kills the command and anything it started, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.localcluster import REPO_ROOT, free_port, http


# -- the real command ---------------------------------------------------------------------

#: Everything one end-to-end test may take, start to finish (the brief is < 40 s).
E2E_BUDGET_SECONDS = 38.0

NODE_LINE = re.compile(r"^  (n\d+)  (http://127\.0\.0\.1:\d+)  pid (\d+)  log ")


def processes_naming(path: str) -> Dict[int, str]:
    """Live processes whose command line contains ``path`` (like `ps` | grep)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open("/proc/%s/stat" % entry) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if path in cmdline and state != "Z" and int(entry) != os.getpid():
            found[int(entry)] = cmdline
    return found


def parent_of(pid: int) -> Optional[int]:
    """The parent pid of a live (not zombie) process, None if there is none.

    From /proc/<pid>/stat, which unlike /proc/<pid>/cmdline does not read as empty
    while the process is in the middle of exec.
    """
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


class CommandProcess:
    """``python -m txraft.tools.clustercmd`` in a subprocess, its output collected by a thread."""

    def __init__(self, test: SynchronousTestCase, args: List[str], cwd: str):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("TXRAFT_SECRET", None)
        self.deadline = time.monotonic() + E2E_BUDGET_SECONDS
        self.lines: List[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "txraft.tools.clustercmd"] + args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, text=True, bufsize=1,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_for(self, pattern: str, start: int = 0, count: int = 1) -> List["re.Match[str]"]:
        """The first ``count`` lines from ``start`` on matching ``pattern``, or fail."""
        regex = re.compile(pattern)
        with self.changed:
            while True:
                matches = [m for m in (regex.search(line) for line in self.lines[start:]) if m]
                if len(matches) >= count:
                    return matches[:count]
                if self.remaining() <= 0 or (self.process.poll() is not None
                                             and not self.reader.is_alive()):
                    raise AssertionError("no %d line(s) matching %r; output:\n%s"
                                         % (count, pattern, self.transcript()))
                self.changed.wait(min(0.2, self.remaining()))

    def send(self, line: str) -> int:
        """Type a command; return where its answer will start in ``lines``."""
        with self.changed:
            mark = len(self.lines)
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return mark

    def transcript(self) -> str:
        return "\n".join(self.lines[-80:])

    def pids(self) -> List[int]:
        with self.changed:
            return [int(m.group(3)) for m in map(NODE_LINE.match, self.lines) if m]

    def cleanup(self, marker: str) -> None:
        """Kill the command and anything it started (found by our unique directory)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for pid in processes_naming(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.reader.join(5)


class EndToEndTests(SynchronousTestCase):
    def start_command(self, *args: str) -> CommandProcess:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        data_dir = os.path.join(self.root, "cluster-data")
        command = CommandProcess(
            self, ["--data-dir", data_dir, "--app", "kv", "--refresh-seconds", "0.3"] + list(args),
            cwd=self.root,
        )
        self.addCleanup(command.cleanup, data_dir)
        self.data_dir = data_dir
        return command

    def wait_for_leader(self, command: CommandProcess, urls: Dict[str, str]) -> str:
        last: Dict[str, Any] = {}
        while command.remaining() > 0:
            last = {}
            for node_id, url in urls.items():
                result = http("GET", url + "/raft/status", timeout=1)
                last[node_id] = result.json() if result.status == 200 else None
            live = [s for s in last.values() if s is not None]
            leaders = {s["id"] for s in live if s["role"] == "leader"}
            if len(leaders) == 1 and len(live) == len(urls) and all(
                s["leader_id"] in leaders for s in live
            ):
                return leaders.pop()
            time.sleep(0.1)
        self.fail("no leader among %r: %r\n%s" % (sorted(urls), last, command.transcript()))

    def put(self, command: CommandProcess, url: str, key: str, value: bytes):
        """PUT until it is acknowledged (an election may be under way) or time is up."""
        result = None
        while command.remaining() > 0:
            result = http("PUT", "%s/kv/%s" % (url, key), value, timeout=3)
            if result.status == 204:
                return result
            time.sleep(0.1)
        self.fail("PUT %s via %s never acknowledged: %r\n%s"
                  % (key, url, result, command.transcript()))

    def get(self, command: CommandProcess, url: str, key: str) -> bytes:
        """A linearizable GET, retried while an election makes it answer 503."""
        result = None
        while command.remaining() > 0:
            result = http("GET", "%s/kv/%s" % (url, key), timeout=3)
            if result.status == 200:
                return result.body
            time.sleep(0.1)
        self.fail("GET %s via %s never answered: %r\n%s"
                  % (key, url, result, command.transcript()))

    def assert_nothing_left(self, command: CommandProcess) -> None:
        for pid in command.pids():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue  # gone
            self.assertNotIn(self.data_dir.encode(), cmdline, "node pid %d left behind" % pid)
        self.assertEqual(processes_naming(self.data_dir), {})

    def test_start_write_kill_write_quit(self):
        """Three kv nodes: the URLs are printed, a leader is elected and shown, a write
        is acknowledged; `kill <leader>` through stdin takes it down, a new leader takes
        over, the old write is still there and a new one is acknowledged; `quit` stops
        every node and leaves no process behind."""
        command = self.start_command("--nodes", "3", "--base-port", "0")
        started = command.wait_for(NODE_LINE.pattern, count=3)
        urls = {m.group(1): m.group(2) for m in started}
        self.assertEqual(sorted(urls), ["n1", "n2", "n3"])
        # The pids it printed are its own, live children.
        for m in started:
            self.assertEqual(parent_of(int(m.group(3))), command.process.pid)

        leader = self.wait_for_leader(command, urls)
        # The table shows a leader (not necessarily this one: on a loaded machine
        # leadership may already have moved on).
        command.wait_for(r"^\[\d\d:\d\d:\d\d\] leader n\d, term \d+$")
        follower = next(n for n in sorted(urls) if n != leader)
        self.put(command, urls[follower], "before", b"1")  # forwarded to the leader

        mark = command.send("kill %s" % leader)
        command.wait_for(r"^killed %s \(pid \d+\)$" % leader, start=mark)
        command.wait_for(r"^  %s\s+-\s+killed" % leader, start=mark)
        survivors = {n: u for n, u in urls.items() if n != leader}
        new_leader = self.wait_for_leader(command, survivors)
        self.assertNotEqual(new_leader, leader)
        self.put(command, survivors[follower], "after", b"2")
        for url in survivors.values():
            self.assertEqual(self.get(command, url, "before"), b"1")
            self.assertEqual(self.get(command, url, "after"), b"2")

        mark = command.send("quit")
        command.wait_for(r"^all nodes stopped$", start=mark)
        self.assertEqual(command.process.wait(max(1.0, command.remaining())), 0)
        self.assertEqual(len(command.wait_for(r"^stopped n\d \(pid \d+, ", start=mark, count=2)), 2)
        self.assert_nothing_left(command)

    def test_ctrl_c_stops_every_node(self):
        """SIGINT (Ctrl-C) stops every node cleanly and the command exits 0."""
        command = self.start_command("--nodes", "2", "--base-port", "0")
        started = command.wait_for(NODE_LINE.pattern, count=2)
        urls = {m.group(1): m.group(2) for m in started}
        self.wait_for_leader(command, urls)
        command.process.send_signal(signal.SIGINT)
        self.assertEqual(command.process.wait(max(1.0, command.remaining())), 0)
        command.wait_for(r"^stopping every node \(SIGINT\)$")
        command.wait_for(r"^stopped n\d \(pid \d+, exited by SIGTERM\)$", count=2)
        self.assert_nothing_left(command)

    def test_busy_port_is_refused_before_anything_starts(self):
        """A --base-port whose range is taken is refused in one line, exit status 2."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        self.addCleanup(sock.close)
        port = sock.getsockname()[1]
        command = self.start_command("--nodes", "1", "--base-port", str(port))
        self.assertEqual(command.process.wait(max(1.0, command.remaining())), 2)
        command.wait_for(r"^txraft-cluster: ports in use on 127\.0\.0\.1: %d/UDP" % port)
        self.assertEqual(command.pids(), [])

    def test_unknown_application_is_refused(self):
        """An --app that cannot be loaded is refused in one line, exit status 2."""
        command = self.start_command("--nodes", "1", "--base-port", str(free_port()),
                                     "--app", "no.such.module:application")
        # start_command put --app kv first; the last --app wins.
        self.assertEqual(command.process.wait(max(1.0, command.remaining())), 2)
        command.wait_for(r"^txraft-cluster: cannot load application 'no\.such\.module:application'")
        self.assertEqual(command.pids(), [])

"""``txraft-cluster``: run N real ``twistd raftnode`` processes on 127.0.0.1 and watch them.

For people meeting the cluster for the first time and for watching a failover by hand:
it starts the nodes through ``txraft.tools.localcluster.LocalCluster`` (consecutive ports, one
data directory each, a generated secret), prints their URLs, prints a status table
whenever something changes, and takes commands on standard input (``kill n2``,
``pause leader``, ``quit``...).  Ctrl-C, SIGTERM, SIGHUP and ``quit`` all stop every node
(SIGTERM, then SIGKILL after a grace period) before the command exits.

Deliberately plain and single-threaded, like ``LocalCluster``: one loop polls
``/raft/status`` of each node, then waits on stdin and on a signal wake-up pipe with
``select``.  Signal handlers only set a flag, so a signal can never interrupt the command
between starting a process and recording it, which would leave that process behind.
Standard input may be a terminal or a pipe (the tests drive it through a pipe); its end
does not stop the cluster, so ``txraft-cluster < /dev/null`` runs until it is signalled.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import attrs

from txraft.tools.localcluster import LocalCluster

#: A node that has not answered this long after it was started is "silent", not "starting".
STARTING_GRACE_SECONDS = 10.0

HELP = """\
Commands (<id> is n1, 2, node3... or 'leader' for the current leader):
  kill <id>      SIGKILL: a crash; the node loses nothing it acknowledged
  stop <id>      SIGTERM: a clean shutdown
  start <id>     start a node that was killed or stopped
  restart <id>   kill -9 and start again: recovery from its data directory
  pause <id>     SIGSTOP: the process freezes (like a long GC pause or a partition)
  resume <id>    SIGCONT
  remove <id>    remove it from the cluster's configuration (it stops counting)
  add <id>       add a removed member back as a learner (it must be running; the
                 leader promotes it once it has caught up)
  transfer [<id>] hand the leadership to <id> (default: the most caught-up voter);
                 returns once it leads
  join           start a brand-new node that joins the cluster (--join): a learner,
                 promoted once caught up
  status         print the table and every node's URL, pid and log now
  help           this text
  quit           stop every node and exit (so do Ctrl-C and end of a SIGTERM)"""

COMMANDS = ("kill", "stop", "start", "restart", "pause", "resume", "remove", "add",
            "transfer", "join", "status", "help", "quit")


@attrs.frozen
class Row:
    """One line of the status table: what a person watching a failover needs to see."""

    node_id: str
    pid: str
    role: str  # the Raft role, or the process state when the node cannot answer
    term: str
    leader: str
    commit: str
    applied: str


COLUMNS = (
    ("id", "node_id"),
    ("pid", "pid"),
    ("role", "role"),
    ("term", "term"),
    ("leader", "leader"),
    ("commit", "commit"),
    ("applied", "applied"),
)


def render_table(rows: Sequence[Row]) -> List[str]:
    """Left-aligned columns, two spaces apart, headed by the column names."""
    cells = [[title for title, _ in COLUMNS]]
    cells += [[getattr(row, attribute) for _, attribute in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return [
        "  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in cells
    ]


def summarize_leader(statuses: Dict[str, Optional[Dict[str, Any]]]) -> Optional[Tuple[str, int]]:
    """The leader of the highest term among the answering nodes, with that term."""
    leaders = [
        (status["term"], node_id)
        for node_id, status in statuses.items()
        if status is not None and status.get("role") == "leader"
    ]
    if not leaders:
        return None
    term, node_id = max(leaders)
    return node_id, term


class Console:
    """The commands and the status table, over a ``LocalCluster`` and an output stream.

    Knows nothing of stdin, signals or sleeping: ``run`` feeds it lines and ticks, and
    the tests drive it directly with a fake cluster.
    """

    def __init__(
        self,
        cluster: Any,
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
        timestamp: Callable[[], str] = lambda: time.strftime("%H:%M:%S"),
        status_timeout: float = 0.5,
    ):
        self.cluster = cluster
        self.out = out
        self.clock = clock
        self.timestamp = timestamp
        self.status_timeout = status_timeout
        # Why a node is down when we took it down, so that a crash we did not ask for
        # is reported (with its log) rather than shown as an ordinary "killed".
        self.down_reason: Dict[str, str] = {}
        self.started_at: Dict[str, float] = {}
        self.reported_exit: Dict[str, int] = {}
        self.last_rows: Optional[Tuple[Row, ...]] = None
        self.statuses: Dict[str, Optional[Dict[str, Any]]] = {}
        self.quit_requested = False

    # -- output -------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def describe(self, node_id: str) -> str:
        node = self.cluster.nodes[node_id]
        pid = node.process.pid if node.alive() else "-"
        return "  %s  %s  pid %s  log %s" % (node_id, node.url, pid, node.log_path)

    # -- starting -----------------------------------------------------------------------

    def start_all(self) -> None:
        for node_id in self.cluster.nodes:
            self._start(node_id)

    def _start(self, node_id: str) -> None:
        self.cluster.start(node_id)
        self.down_reason.pop(node_id, None)
        self.reported_exit.pop(node_id, None)
        self.started_at[node_id] = self.clock()
        self.say(self.describe(node_id))

    # -- the table ----------------------------------------------------------------------

    def poll(self) -> Tuple[Row, ...]:
        """Ask every node for its status; report any node that died on its own."""
        rows = []
        statuses = {}
        for node_id, node in self.cluster.nodes.items():
            status = node.status(timeout=self.status_timeout)
            statuses[node_id] = status
            rows.append(self._row(node_id, node, status))
        self.statuses = statuses
        return tuple(rows)

    def _row(self, node_id: str, node: Any, status: Optional[Dict[str, Any]]) -> Row:
        alive = node.alive()
        pid = str(node.process.pid) if alive else "-"
        if status is not None:
            return Row(
                node_id, pid, str(status["role"]), str(status["term"]),
                str(status["leader_id"] or "-"), str(status["commit_index"]),
                str(status["applied_index"]),
            )
        if alive:
            if node.paused:
                role = "paused"
            elif self.clock() - self.started_at.get(node_id, 0.0) < STARTING_GRACE_SECONDS:
                role = "starting"
            else:
                role = "silent"
        elif node_id in self.down_reason:
            role = self.down_reason[node_id]
        elif node.process is None:
            role = "not started"
        else:
            code = node.process.poll()
            role = exit_text(code, short=True)
            self._report_exit(node_id, node, code)
        return Row(node_id, pid, role, "-", "-", "-", "-")

    def _report_exit(self, node_id: str, node: Any, code: int) -> None:
        if self.reported_exit.get(node_id) == code:
            return
        self.reported_exit[node_id] = code
        self.say("%s %s on its own; the end of %s:" % (node_id, exit_text(code), node.log_path))
        try:
            with open(node.log_path, "rb") as f:
                tail = f.read().decode("utf-8", "replace").splitlines()[-8:]
        except OSError:
            tail = ["(no log)"]
        for line in tail:
            self.say("    " + line)

    def refresh(self, force: bool = False) -> None:
        """Poll, and print the table if anything in it changed (or when asked)."""
        rows = self.poll()
        if rows == self.last_rows and not force:
            return
        self.last_rows = rows
        leader = summarize_leader(self.statuses)
        headline = "leader %s, term %d" % leader if leader else "no leader"
        self.say("[%s] %s" % (self.timestamp(), headline))
        for line in render_table(rows):
            self.say(line)

    # -- commands -----------------------------------------------------------------------

    def resolve(self, word: str) -> str:
        """``n2``, ``2``, ``node2`` or ``leader`` to a node id; ValueError otherwise."""
        word = word.strip().lower()
        if word == "leader":
            leader = summarize_leader(self.statuses)
            if leader is None:
                raise ValueError("no leader known right now; try 'status'")
            return leader[0]
        digits = word[4:] if word.startswith("node") else word[1:] if word.startswith("n") else word
        candidate = "n%s" % digits if digits.isdigit() else word
        if candidate not in self.cluster.nodes:
            raise ValueError("no node %r: the nodes are %s" % (word, ", ".join(self.cluster.nodes)))
        return candidate

    def execute(self, line: str) -> None:
        """Run one command line; mistakes are answered, never raised."""
        words = line.split()
        if not words:
            return
        command, args = words[0].lower(), words[1:]
        if command in ("quit", "exit"):
            self.quit_requested = True
            return
        if command in ("help", "?"):
            self.say(HELP)
            return
        if command == "status":
            for node_id in self.cluster.nodes:
                self.say(self.describe(node_id))
            self.refresh(force=True)
            return
        if command not in COMMANDS:
            self.say("unknown command %r; type 'help'" % (command,))
            return
        if command == "join" and not args:
            try:
                node = self.cluster.new_node()
                self.say("%s joins through %s" % (node.node_id, ",".join(node.join_urls)))
                self._start(node.node_id)
            except (ValueError, RuntimeError, OSError) as e:
                self.say("join: %s" % (e,))
            self.refresh()
            return
        if command == "transfer" and len(args) <= 1:
            try:
                self.do_transfer(self.resolve(args[0]) if args else None)
            except (ValueError, RuntimeError, OSError) as e:
                self.say("%s: %s" % (command, e))
                return
            self.refresh()
            return
        if len(args) != 1:
            self.say("usage: %s %s" % (command, "[<id>]" if command == "transfer" else "<id>"))
            return
        try:
            node_id = self.resolve(args[0])
            getattr(self, "do_" + command)(node_id)
        except (ValueError, RuntimeError, OSError) as e:
            self.say("%s: %s" % (command, e))
            return
        self.refresh()

    def _pid(self, node_id: str) -> str:
        process = self.cluster.nodes[node_id].process
        return str(process.pid) if process is not None else "-"

    def _require_alive(self, node_id: str) -> None:
        if not self.cluster.nodes[node_id].alive():
            raise ValueError("%s is not running" % (node_id,))

    def do_kill(self, node_id: str) -> None:
        self._require_alive(node_id)
        pid = self._pid(node_id)
        self.cluster.kill(node_id)
        self.down_reason[node_id] = "killed"
        self.say("killed %s (pid %s)" % (node_id, pid))

    def do_stop(self, node_id: str) -> None:
        self._require_alive(node_id)
        pid = self._pid(node_id)
        self.cluster.stop(node_id)
        self.down_reason[node_id] = "stopped"
        self.say("stopped %s (pid %s)" % (node_id, pid))

    def do_start(self, node_id: str) -> None:
        if self.cluster.nodes[node_id].alive():
            raise ValueError("%s is already running" % (node_id,))
        self._start(node_id)

    def do_restart(self, node_id: str) -> None:
        if self.cluster.nodes[node_id].alive():
            pid = self._pid(node_id)
            self.cluster.kill(node_id)
            self.say("killed %s (pid %s)" % (node_id, pid))
        self._start(node_id)

    def do_pause(self, node_id: str) -> None:
        self._require_alive(node_id)
        self.cluster.pause(node_id)
        self.say("paused %s (pid %s)" % (node_id, self._pid(node_id)))

    def _changed(self, verb: str, node_id: str, result: Any) -> None:
        if result.status == 200:
            self.say("%s %s: configuration at index %d"
                     % (verb, node_id, result.json()["config_index"]))
            return
        raise ValueError(self._why(result))

    def do_transfer(self, node_id: Optional[str]) -> None:
        result = self.cluster.transfer_leader(node_id)
        if result.status != 200:
            raise ValueError(self._why(result))
        doc = result.json()
        self.say("%s leads term %d (was %s)" % (doc["leader"], doc["term"],
                                                doc["previous_leader"]))

    @staticmethod
    def _why(result: Any) -> str:
        try:
            error = result.json()["error"]
            why = "%s (%s)" % (error["message"], error["code"])
        except (ValueError, KeyError, TypeError):
            why = result.error or "HTTP %d" % (result.status,)
        return why

    def do_remove(self, node_id: str) -> None:
        self._changed("removed", node_id, self.cluster.remove_member(node_id))

    def do_add(self, node_id: str) -> None:
        self._require_alive(node_id)
        self._changed("added", node_id, self.cluster.add_member(node_id))

    def do_resume(self, node_id: str) -> None:
        node = self.cluster.nodes[node_id]
        if not node.alive() or not node.paused:
            raise ValueError("%s is not paused" % (node_id,))
        self.cluster.resume(node_id)
        self.say("resumed %s (pid %s)" % (node_id, self._pid(node_id)))


# -- the process: signals, stdin, shutdown -----------------------------------------------


class SignalFlag:
    """Records the signals that ask us to stop; wakes ``select`` through a pipe."""

    SIGNALS = tuple(
        s for s in (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP"))
        if s is not None
    )

    def __init__(self) -> None:
        self.received: List[str] = []
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self._previous_handlers: Dict[int, Any] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        self._previous_wakeup = signal.set_wakeup_fd(self.wake_write)
        for signum in self.SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)

    def drain(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def uninstall(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup)
        os.close(self.wake_read)
        os.close(self.wake_write)


def run(
    console: Console, stdin_fd: Optional[int], signals: SignalFlag, refresh_seconds: float
) -> str:
    """Poll and take commands until ``quit`` or a signal; return why we stopped."""
    pending = b""
    next_refresh = 0.0
    while True:
        if signals.received:
            return signals.received[0]
        if console.quit_requested:
            return "quit"
        now = time.monotonic()
        if now >= next_refresh:
            console.refresh()
            next_refresh = time.monotonic() + refresh_seconds
            continue  # a signal or a quit may have come in during the poll
        watched = [signals.wake_read] + ([stdin_fd] if stdin_fd is not None else [])
        readable, _, _ = select.select(watched, [], [], max(0.0, next_refresh - now))
        if signals.wake_read in readable:
            signals.drain()
        if stdin_fd is not None and stdin_fd in readable:
            try:
                data = os.read(stdin_fd, 4096)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                data = b""
            if not data:
                # End of input is not a request to stop: keep running until signalled.
                if pending.strip():
                    console.execute(pending.decode("utf-8", "replace"))
                pending = b""
                stdin_fd = None
                console.say("(end of input: the cluster keeps running; Ctrl-C stops it)")
                continue
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                console.execute(line.decode("utf-8", "replace"))
                if console.quit_requested:
                    break


def exit_text(code: Optional[int], short: bool = False) -> str:
    """``exited by SIGTERM`` for a negative Popen return code, ``exited with status N``
    otherwise (``exited SIGTERM`` / ``exited N`` when ``short``, for the table).

    twistd re-raises the signal that stopped it once it has shut down cleanly, so
    "by SIGTERM" after a stop is the normal, clean outcome.
    """
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % (-code,)
        return ("exited %s" if short else "exited by %s") % (name,)
    return ("exited %s" if short else "exited with status %s") % (code,)


def shutdown(
    cluster: Any, out: Callable[[str], None], grace_seconds: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM every live node at once, SIGKILL what is left after the grace period (or
    at once if ``hurry()`` turns true, e.g. a second Ctrl-C), and reap every process."""
    running = [node for node in cluster.nodes.values() if node.alive()]
    for node in running:
        if node.paused:
            node.process.send_signal(signal.SIGCONT)
            node.paused = False
        node.process.terminate()
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not hurry():
        if all(node.process.poll() is not None for node in running):
            break
        time.sleep(0.05)
    for node in running:
        if node.process.poll() is None:
            out("%s did not stop in time: SIGKILL" % (node.node_id,))
            node.process.kill()
        node.process.wait()
        out("stopped %s (pid %d, %s)"
            % (node.node_id, node.process.pid, exit_text(node.process.returncode)))
    for node in cluster.nodes.values():
        if node.process is not None:
            node.process.poll()  # reap anything killed earlier and not yet waited for


def check_ports_free(ports: Sequence[int], host: str = "127.0.0.1") -> List[str]:
    """Which of ``ports`` are taken, for UDP or TCP, on ``host``."""
    busy = []
    for port in ports:
        for kind, label in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
            sock = socket.socket(socket.AF_INET, kind)
            try:
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
            except OSError as e:
                busy.append("%d/%s (%s)" % (port, label, e.strerror))
            finally:
                sock.close()
    return busy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="txraft-cluster",
        description="Run a txraft cluster of real twistd raftnode processes on 127.0.0.1, "
        "show its status as it changes, and kill, pause or restart nodes by hand.",
        epilog="Arguments after -- are passed to every 'twistd raftnode', e.g. "
        "'txraft-cluster -- --proposal-timeout-ms 2000'. Type 'help' once it runs.",
    )
    parser.add_argument("--nodes", type=int, default=5, help="how many nodes [default: 5]")
    parser.add_argument(
        "--base-port", type=int, default=5001,
        help="node i listens on base-port + i - 1 (UDP and HTTP); 0 picks free ports "
        "[default: 5001]",
    )
    parser.add_argument("--app", default="shop",
                        help="shop, kv or module:attribute [default: shop]")
    parser.add_argument(
        "--data-dir", default="./cluster-data",
        help="one subdirectory per node, kept between runs [default: ./cluster-data]",
    )
    parser.add_argument("--election-timeout-ms", type=int, default=150,
                        help="passed to every node [default: 150]")
    parser.add_argument("--heartbeat-ms", type=int, default=50,
                        help="passed to every node [default: 50]")
    parser.add_argument("--refresh-seconds", type=float, default=0.5,
                        help="how often to poll the nodes' status [default: 0.5]")
    parser.add_argument("--grace-seconds", type=float, default=10.0,
                        help="how long a node may take to stop before SIGKILL [default: 10]")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    node_args: List[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, node_args = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.base_port and not 0 < args.base_port <= 65536 - args.nodes:
        parser.error("--base-port must leave room for %d ports below 65536" % args.nodes)
    if args.refresh_seconds <= 0:
        parser.error("--refresh-seconds must be positive")

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    # Refuse now, in one line, what every node would otherwise refuse in its own log.
    from txraft.errors import ConfigError
    from txraft.plugins.raftnode import load_application

    try:
        load_application(args.app)
    except ConfigError as e:
        say("txraft-cluster: %s" % (e,))
        return 2
    if args.base_port:
        busy = check_ports_free(range(args.base_port, args.base_port + args.nodes))
        if busy:
            say("txraft-cluster: ports in use on 127.0.0.1: %s; pick another --base-port "
                "(or 0 for free ports)" % ", ".join(busy))
            return 2

    cluster = LocalCluster(
        args.nodes,
        args.data_dir,
        app=args.app,
        base_port=args.base_port or None,
        election_timeout_ms=args.election_timeout_ms,
        heartbeat_ms=args.heartbeat_ms,
        extra_args=node_args,
    )
    console = Console(cluster, sys.stdout)
    signals = SignalFlag()
    signals.install()
    reason = "error"
    try:
        say("txraft-cluster: %d node(s) of app %r, data in %s"
            % (args.nodes, args.app, cluster.root))
        say("cluster secret in %s" % (cluster.secret_file,))
        console.start_all()
        say("Type 'help' for commands (kill, pause, restart... <id>); Ctrl-C stops every node.")
        try:
            stdin_fd: Optional[int] = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            stdin_fd = None
        reason = run(console, stdin_fd, signals, args.refresh_seconds)
    finally:
        # From here on a further signal means "faster", never "leave them running".
        say("stopping every node (%s)" % (reason,))
        first = len(signals.received)
        shutdown(cluster, say, args.grace_seconds, hurry=lambda: len(signals.received) > first)
        signals.uninstall()
    say("all nodes stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

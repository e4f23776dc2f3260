"""Run a cluster of real ``twistd raftnode`` processes on 127.0.0.1.

Used by the real-process tests, the chaos harness, the benchmarks and the
``txraft-cluster`` command.  Deliberately plain and blocking (subprocess + urllib): it
manages processes from the outside, the way an operator would, and never shares a
reactor with the nodes it watches.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: The directory that holds the ``txraft`` package (a checkout, or site-packages).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(host: str = "127.0.0.1", avoid: Sequence[int] = ()) -> int:
    """A port number currently free for both UDP and TCP on ``host``."""
    for _ in range(200):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
            except OSError:
                continue
            finally:
                udp.close()
        finally:
            tcp.close()
        if port not in avoid:
            return port
    raise RuntimeError("no free port found")


class HTTPResult:
    """Status, headers and body of one HTTP exchange (or ``status`` 0 when it failed)."""

    def __init__(self, status: int, headers: Dict[str, str], body: bytes, error: str = ""):
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return "<HTTPResult %d %r %s>" % (self.status, self.body[:200], self.error)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# No proxy from the environment: these are requests to our own nodes, often on private
# addresses a proxy cannot reach.
_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    body: Optional[bytes] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 5.0,
) -> HTTPResult:
    """One blocking HTTP request; network errors come back as status 0, never raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout) as response:
            return HTTPResult(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return HTTPResult(e.code, dict(e.headers), e.read())
    except (OSError, urllib.error.URLError) as e:
        return HTTPResult(0, {}, b"", error=str(e))


class LocalNode:
    """One ``twistd raftnode`` process and where it keeps its files."""

    def __init__(self, node_id: str, port: int, http_port: int, data_dir: str):
        self.node_id = node_id
        self.port = port
        self.http_port = http_port
        self.data_dir = data_dir
        self.process: Optional[subprocess.Popen] = None
        self.paused = False
        self.extra_args: List[str] = []
        #: Started with ``--join`` these members' URLs (a node added to a running
        #: cluster), not with ``--members``.
        self.join_urls: Optional[List[str]] = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.http_port

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "node.log")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def uuid(self) -> Optional[str]:
        """The node uuid of its data directory (its ``identity`` file), or None."""
        try:
            with open(os.path.join(self.data_dir, "identity"), "rb") as f:
                return json.loads(f.read().decode("utf-8"))["uuid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def status(self, timeout: float = 1.0) -> Optional[Dict[str, Any]]:
        if not self.alive() or self.paused:
            return None
        result = http("GET", self.url + "/raft/status", timeout=timeout)
        if result.status != 200:
            return None
        return result.json()


class LocalCluster:
    """N nodes on 127.0.0.1 with their own data directories and a shared secret."""

    def __init__(
        self,
        size: int,
        root: str,
        app: str = "kv",
        base_port: Optional[int] = None,
        secret: Optional[str] = None,
        election_timeout_ms: int = 150,
        heartbeat_ms: int = 50,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.app = app
        self.python = python
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.extra_args = list(extra_args)
        self.secret = secret if secret is not None else secrets.token_hex(32)
        self.secret_file = os.path.join(self.root, "cluster.secret")
        with open(self.secret_file, "w") as f:
            f.write(self.secret + "\n")
        os.chmod(self.secret_file, 0o600)
        self.nodes: Dict[str, LocalNode] = {}
        used: List[int] = []
        for i in range(1, size + 1):
            if base_port is not None:
                port = base_port + i - 1
            else:
                port = free_port(avoid=used)
            used.append(port)
            node_id = "n%d" % i
            self.nodes[node_id] = LocalNode(
                node_id, port, port, os.path.join(self.root, node_id)
            )

    @property
    def members(self) -> str:
        """The founding members (``--members``): not the nodes that joined later."""
        return ",".join(
            "%s=127.0.0.1:%d:%d" % (n.node_id, n.port, n.http_port)
            for n in self.nodes.values() if n.join_urls is None
        )

    def new_node(self, node_id: Optional[str] = None) -> LocalNode:
        """A node that will join the running cluster (``--join`` the others' URLs)
        when started: a new id, a free port, a data directory of its own."""
        if node_id is None:
            node_id = "n%d" % (len(self.nodes) + 1)
        if node_id in self.nodes:
            raise ValueError("%s exists already" % (node_id,))
        port = free_port(avoid=[n.port for n in self.nodes.values()])
        node = LocalNode(node_id, port, port, os.path.join(self.root, node_id))
        node.join_urls = [n.url for n in self.nodes.values()]
        self.nodes[node_id] = node
        return node

    def command(self, node: LocalNode, secret_file: Optional[str] = None) -> List[str]:
        return [
            self.python, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "raftnode",
            "--app", self.app,
            "--id", node.node_id,
            "--port", str(node.port),
        ] + (["--members", self.members] if node.join_urls is None
             else ["--join", ",".join(node.join_urls)]) + [
            "--data-dir", node.data_dir,
            "--secret-file", secret_file or self.secret_file,
            "--election-timeout-ms", str(self.election_timeout_ms),
            "--heartbeat-ms", str(self.heartbeat_ms),
        ] + self.extra_args + node.extra_args

    def start(self, node_id: str, secret_file: Optional[str] = None) -> LocalNode:
        node = self.nodes[node_id]
        if node.alive():
            raise RuntimeError("%s is already running" % node_id)
        os.makedirs(node.data_dir, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("TXRAFT_SECRET", None)
        log = open(node.log_path, "ab")
        try:
            node.process = subprocess.Popen(
                self.command(node, secret_file),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=node.data_dir, env=env, start_new_session=True,
            )
        finally:
            log.close()
        node.paused = False
        return node

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)

    def kill(self, node_id: str) -> None:
        """SIGKILL: the node gets no chance to flush anything."""
        node = self.nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            if node.paused:
                node.process.send_signal(signal.SIGCONT)
            node.process.kill()
            node.process.wait(10)
        node.paused = False

    def stop(self, node_id: str, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        node = self.nodes[node_id]
        if node.process is None or node.process.poll() is not None:
            return
        if node.paused:
            node.process.send_signal(signal.SIGCONT)
            node.paused = False
        node.process.terminate()
        try:
            node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(10)

    def pause(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive() and not node.paused:
            node.process.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive() and node.paused:
            node.process.send_signal(signal.SIGCONT)
            node.paused = False

    def restart(self, node_id: str) -> LocalNode:
        self.kill(node_id)
        return self.start(node_id)

    def stop_all(self) -> None:
        for node_id in self.nodes:
            try:
                self.stop(node_id, timeout=5.0)
            except Exception:
                self.kill(node_id)

    def change_member(self, method: str, path: str, body: Any = None) -> HTTPResult:
        """A membership change (``txraft.http.membership``) sent, with the cluster
        secret, to the first running node (a follower forwards it to the leader)."""
        headers = {"Authorization": "Bearer " + self.secret, "Content-Type": "application/json"}
        data = json.dumps(body).encode("utf-8") if body is not None else None
        for node in self.nodes.values():
            if node.alive() and not node.paused:
                return http(method, node.url + path, data, headers, timeout=10.0)
        raise RuntimeError("no node is running")

    def remove_member(self, node_id: str) -> HTTPResult:
        return self.change_member("DELETE", "/raft/members/" + node_id)

    def add_member(self, node_id: str) -> HTTPResult:
        """Add ``node_id`` (which must run, with its data directory) back as a learner,
        bound to its data directory's uuid when it has one."""
        node = self.nodes[node_id]
        body = {"id": node_id, "address": "127.0.0.1:%d" % node.port, "http_url": node.url}
        uuid = node.uuid()
        if uuid is not None:
            body["uuid"] = uuid
        return self.change_member("POST", "/raft/members", body)

    def transfer_leader(self, target: Optional[str] = None) -> HTTPResult:
        """``POST /raft/leader``: hand the leadership to ``target`` (default: the leader's
        pick); answers once the new leader leads, or with a JSON error."""
        return self.change_member("POST", "/raft/leader", {"id": target} if target else {})

    def statuses(self) -> Dict[str, Optional[Dict[str, Any]]]:
        return {node_id: node.status() for node_id, node in self.nodes.items()}

    def wait_for_leader(
        self, timeout: float = 10.0, among: Optional[Sequence[str]] = None
    ) -> str:
        """Wait until the running nodes agree on one leader; return its id.

        Every running, unpaused node (or every node in ``among``) must answer and name
        the same leader in the same term: a node whose process is still importing is
        waited for, not skipped, so a test can use every node as soon as this returns.
        """
        deadline = time.monotonic() + timeout
        last: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            ids = list(among) if among is not None else [
                i for i, n in self.nodes.items() if n.alive() and not n.paused
            ]
            last = {i: self.nodes[i].status() for i in ids}
            live = {i: s for i, s in last.items() if s is not None}
            leaders = {i for i, s in live.items() if s["role"] == "leader"}
            if len(leaders) == 1 and live and len(live) == len(ids):
                leader = leaders.pop()
                term = live[leader]["term"]
                if all(s["leader_id"] == leader and s["term"] == term for s in live.values()):
                    return leader
            time.sleep(0.05)
        raise TimeoutError("no agreed leader within %.1fs: %r" % (timeout, summarize(last)))

    def wait_for_applied(self, index: int, node_ids: Sequence[str], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = {i: self.nodes[i].status() for i in node_ids}
            if all(s is not None and s["applied_index"] >= index for s in statuses.values()):
                return
            time.sleep(0.05)
        raise TimeoutError(
            "nodes %r did not apply index %d within %.1fs: %r"
            % (list(node_ids), index, timeout, summarize(statuses))
        )

    def url(self, node_id: str) -> str:
        return self.nodes[node_id].url

    def logs(self, lines: int = 30) -> str:
        out = []
        for node in self.nodes.values():
            try:
                with open(node.log_path, "rb") as f:
                    tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append("--- %s ---\n%s" % (node.node_id, "\n".join(tail)))
        return "\n".join(out)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()


def summarize(statuses: Dict[str, Any]) -> Dict[str, Tuple]:
    return {
        i: (s["role"], s["term"], s["leader_id"], s["commit_index"]) if s else None
        for i, s in statuses.items()
    }

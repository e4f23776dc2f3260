"""Kernel-made network faults for chaos runs: one Linux network namespace per node.

``python -m txraft.tools.chaos --net netns`` (root only) lays out one run like this::

    root namespace:  bridge <prefix>-br, address 10.A.B.1/24   <- the harness, its clients
                       |-- veth <prefix>-h1 ==== eth0 in namespace <prefix>-n1, 10.A.B.11/24
                       |-- veth <prefix>-h2 ==== eth0 in namespace <prefix>-n2, 10.A.B.12/24
                       ...

``<prefix>`` is ``txc`` and the harness's pid in hex: unique among live processes, short
enough for interface names (15 characters), and it tells a stale-cleanup pass whose
resources are whose (``python -m txraft.tools.chaos cleanup-netns``).  ``A.B`` comes from the pid too, moved on if the /24 is in use.

Partitions are made by the kernel: cutting the link *from* ``a`` *to* ``b`` is one route,
``ip -n <namespace of a> route add blackhole <address of b>/32``.  The kernel drops what
``a`` sends to ``b`` (the sender's ``sendto`` fails with EINVAL, which the transport counts
as a send error, like a host with no route); both directions make a symmetric cut.  Only
node addresses are ever blackholed, never the bridge's, so the harness's clients, its
monitor and the nemesis reach every node whatever the partition: clients stand where a
load balancer would, next to every node.  A node killed during a partition comes back into
the same namespace with the same routes, so the cut stays two-sided (in the transport mode
a restarted node has forgotten its fault settings).

This kernel has no ``tc`` qdiscs (no netem), no iptables and no nft, so a *lossy* link
cannot be made here: it stays on the transport's fault layer, set through each node's
admin endpoint.  That endpoint only answers requests from loopback, so nodes listen on
0.0.0.0 inside their namespace (which holds only ``lo`` and their ``eth0``), and the
harness reaches a namespace's loopback from a short-lived thread that joins it with
``setns(2)`` (a network namespace is per thread).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import attrs

from txraft.tools.localcluster import HTTPResult, LocalCluster, LocalNode, http

PREFIX = "txc"
#: Every node listens on this port (UDP and HTTP) inside its own namespace.
NODE_PORT = 7001
_NAME = re.compile(r"^%s([0-9a-f]+)-" % PREFIX)
_CLONE_NEWNET = 0x40000000

#: A directed cut: what the first node sends to the second is dropped.
Cut = Tuple[str, str]
#: A route in a namespace: (namespace, "address/32").
Route = Tuple[str, str]
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class NetnsError(Exception):
    """A namespace command failed; the message says which and why."""


def run_command(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """Run one ``ip`` command; raise ``NetnsError`` with its stderr when it fails."""
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError("%s: %s" % (" ".join(argv), e)) from None
    if done.returncode != 0:
        raise NetnsError("%s: %s" % (" ".join(argv), (done.stderr or done.stdout).strip()))
    return done


# -- the layout -------------------------------------------------------------------------


@attrs.frozen
class Layout:
    """Names and addresses of one run's namespaces, veths and bridge (no side effects)."""

    prefix: str
    node_ids: Tuple[str, ...]
    subnet: Tuple[int, int]  # the A.B of 10.A.B.0/24

    @classmethod
    def for_pid(cls, pid: int, node_ids: Iterable[str], taken: Iterable[str] = ()) -> "Layout":
        """The layout of the run in process ``pid``, on a /24 not in ``taken`` (CIDRs)."""
        taken = {t.split("/")[0].rsplit(".", 1)[0] for t in taken}
        a, b = 100 + (pid >> 8) % 100, pid % 256
        for _ in range(100 * 256):
            if "10.%d.%d" % (a, b) not in taken:
                break
            b = (b + 1) % 256
            if b == 0:
                a = 100 + (a - 99) % 100
        return cls("%s%x" % (PREFIX, pid), tuple(node_ids), (a, b))

    def index(self, node_id: str) -> int:
        return self.node_ids.index(node_id) + 1

    def namespace(self, node_id: str) -> str:
        return "%s-%s" % (self.prefix, node_id)

    def address(self, node_id: str) -> str:
        return "10.%d.%d.%d" % (self.subnet + (10 + self.index(node_id),))

    @property
    def bridge(self) -> str:
        return self.prefix + "-br"

    @property
    def bridge_address(self) -> str:
        return "10.%d.%d.1" % self.subnet

    def host_veth(self, node_id: str) -> str:
        return "%s-h%d" % (self.prefix, self.index(node_id))

    def node_veth(self, node_id: str) -> str:
        """The namespace's end, before it is moved in and renamed ``eth0``."""
        return "%s-i%d" % (self.prefix, self.index(node_id))

    def setup_steps(self) -> List[Tuple[List[str], Optional[List[str]]]]:
        """``(command, undo)`` pairs, in order; ``undo`` removes what the command created
        (None: nothing of its own to remove)."""
        bridge, steps = self.bridge, []
        steps.append((["ip", "link", "add", bridge, "type", "bridge"],
                      ["ip", "link", "del", bridge]))
        steps.append((["ip", "addr", "add", self.bridge_address + "/24", "dev", bridge], None))
        steps.append((["ip", "link", "set", bridge, "up"], None))
        for node_id in self.node_ids:
            ns, host, inner = self.namespace(node_id), self.host_veth(node_id), \
                self.node_veth(node_id)
            steps.append((["ip", "netns", "add", ns], ["ip", "netns", "del", ns]))
            # Deleting either end deletes the pair; the namespace's deletion does it too, but
            # asynchronously, so the host end is removed explicitly (an error if gone).
            steps.append((["ip", "link", "add", host, "type", "veth", "peer", "name", inner],
                          ["ip", "link", "del", host]))
            steps.append((["ip", "link", "set", inner, "netns", ns], None))
            steps.append((["ip", "link", "set", host, "master", bridge, "up"], None))
            steps.append((["ip", "-n", ns, "link", "set", "lo", "up"], None))
            steps.append((["ip", "-n", ns, "link", "set", inner, "name", "eth0"], None))
            steps.append((["ip", "-n", ns, "addr", "add", self.address(node_id) + "/24",
                           "dev", "eth0"], None))
            steps.append((["ip", "-n", ns, "link", "set", "eth0", "up"], None))
        return steps

    def routes(self, cuts: Iterable[Cut]) -> Set[Route]:
        """The blackhole routes that make ``cuts``: one in the sender's namespace, for the
        receiver's address."""
        return {(self.namespace(a), self.address(b) + "/32") for a, b in cuts if a != b}

    def route_command(self, verb: str, route: Route) -> List[str]:
        namespace, destination = route
        return ["ip", "-n", namespace, "route", verb, "blackhole", destination]

    def exec_prefix(self, node_id: str) -> List[str]:
        return ["ip", "netns", "exec", self.namespace(node_id)]


# -- the resources of one run -----------------------------------------------------------


class Network:
    """Creates a ``Layout``, keeps the routes wanted, and removes all of it again.

    Every resource created is recorded (``created``) as soon as its command succeeded, so
    ``teardown`` removes exactly what exists after a success, a failure half-way through
    ``setup``, an exception or Ctrl-C; it is idempotent.
    """

    def __init__(self, layout: Layout, runner: Runner = run_command):
        self.layout = layout
        self.runner = runner
        self.created: List[List[str]] = []  # undo commands, in creation order
        self.routes: Set[Route] = set()
        self._lock = threading.Lock()

    def setup(self) -> None:
        for command, undo in self.layout.setup_steps():
            self.runner(command)
            if undo is not None:
                self.created.append(undo)

    def set_cuts(self, cuts: Iterable[Cut]) -> Tuple[List[Route], List[Route]]:
        """Make the blackhole routes exactly those of ``cuts``; return (added, removed)."""
        wanted = self.layout.routes(cuts)
        with self._lock:
            removed = sorted(self.routes - wanted)
            added = sorted(wanted - self.routes)
            for route in removed:
                self.runner(self.layout.route_command("del", route))
                self.routes.discard(route)
            for route in added:
                self.runner(self.layout.route_command("add", route))
                self.routes.add(route)
        return added, removed

    def heal(self) -> List[Route]:
        return self.set_cuts(())[1]

    def teardown(self) -> List[str]:
        """Remove everything created, newest first, then anything else still named with
        this run's prefix (say, made just before a Ctrl-C); return the errors (never
        raises)."""
        errors = []
        with self._lock:
            self.routes.clear()  # they go with their namespaces
            while self.created:
                undo = self.created.pop()
                try:
                    self.runner(undo)
                except NetnsError as e:
                    # A host veth end already gone with its namespace is not an error.
                    if not (undo[:3] == ["ip", "link", "del"] and "Cannot find" in str(e)):
                        errors.append(str(e))
            try:
                namespaces, links = list_resources(self.runner)
                mine = lambda names: [n for n in names if n.startswith(self.layout.prefix + "-")]
                remove(mine(namespaces), mine(links), self.runner)
                namespaces, links = list_resources(self.runner)
                left = mine(namespaces) + mine(links)
                if left:
                    errors.append("still there after teardown: %s" % ", ".join(left))
            except NetnsError as e:
                errors.append(str(e))
        return errors


# -- can this machine do it? ------------------------------------------------------------


def unavailable(runner: Runner = run_command, geteuid: Callable[[], int] = os.geteuid,
                which: Callable[[str], Optional[str]] = shutil.which,
                pid: Optional[int] = None) -> Optional[str]:
    """Why ``--net netns`` cannot run here, in one line; None when it can."""
    if geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN); run as root or use --net transport"
    if which("ip") is None:
        return "the ip command (iproute2) is not installed; use --net transport"
    probe = "%s%x-probe" % (PREFIX, os.getpid() if pid is None else pid)
    try:
        runner(["ip", "netns", "add", probe])
    except NetnsError as e:
        return "`ip netns add` failed (%s); use --net transport" % (str(e).split(": ", 1)[-1],)
    try:
        runner(["ip", "netns", "del", probe])
    except NetnsError:
        pass
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_names(names: Iterable[str], alive: Callable[[int], bool] = pid_alive) -> List[str]:
    """The names among ``names`` made by a chaos run whose process is gone."""
    out = []
    for name in names:
        match = _NAME.match(name)
        if match and not alive(int(match.group(1), 16)):
            out.append(name)
    return out


def _listed_names(output: str) -> List[str]:
    """First word of each line of ``ip netns list``; interface names of ``ip -o link``."""
    names = []
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        name = words[1] if words[0].endswith(":") and len(words) > 1 else words[0]
        names.append(name.rstrip(":").split("@")[0])
    return names


def list_resources(runner: Runner = run_command) -> Tuple[List[str], List[str]]:
    """(namespace names, interface names) in the root namespace."""
    return (_listed_names(runner(["ip", "netns", "list"]).stdout),
            _listed_names(runner(["ip", "-o", "link", "show"]).stdout))


def remove(namespaces: Iterable[str], links: Iterable[str], runner: Runner = run_command,
           kill: Callable[[int, int], None] = os.kill) -> List[str]:
    """Delete these namespaces (SIGKILL to what still runs inside first, or the namespace
    would live on nameless) and interfaces; return what was removed."""
    removed = []
    for ns in namespaces:
        try:
            for pid in runner(["ip", "netns", "pids", ns]).stdout.split():
                try:
                    kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            runner(["ip", "netns", "del", ns])
            removed.append("netns " + ns)
        except NetnsError:
            pass
    for link in links:
        try:
            runner(["ip", "link", "del", link])
            removed.append("link " + link)
        except NetnsError:
            pass  # a veth end that went with its peer
    return removed


def cleanup_stale(runner: Runner = run_command, alive: Callable[[int], bool] = pid_alive,
                  kill: Callable[[int, int], None] = os.kill) -> List[str]:
    """Remove the namespaces, veths and bridges of runs that died without cleaning up
    (their pid is gone), killing what still runs inside; return what was removed."""
    namespaces, links = list_resources(runner)
    return remove(stale_names(namespaces, alive), stale_names(links, alive), runner, kill)


def used_subnets(runner: Runner = run_command) -> List[str]:
    """The IPv4 networks with an address in the root namespace (``ip -o -4 addr``)."""
    out = runner(["ip", "-o", "-4", "addr", "show"]).stdout
    return [w for line in out.splitlines() for w in line.split()[3:4]]


# -- reaching a namespace's loopback ----------------------------------------------------


def in_namespace(namespace: str, function: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Call ``function`` in a thread that has joined ``namespace`` (sockets it opens live
    there), and return its result; the calling thread stays where it is."""
    box: Dict[str, Any] = {}

    def target():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(os.path.join("/var/run/netns", namespace), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, "setns(%s): %s" % (namespace, os.strerror(errno)))
            finally:
                os.close(fd)
            box["result"] = function()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=target, name="netns-" + namespace, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise TimeoutError("no answer from namespace %s within %.1f s" % (namespace, timeout))
    return box["result"]


# -- a cluster in namespaces ------------------------------------------------------------


class NetnsNode(LocalNode):
    """A node reached at its namespace's address."""

    def __init__(self, node_id: str, port: int, http_port: int, data_dir: str, host: str,
                 namespace: str):
        super().__init__(node_id, port, http_port, data_dir)
        self.host = host
        self.namespace = namespace

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.http_port)

    @property
    def loopback_url(self) -> str:
        """The node's URL from inside its namespace (for the loopback-only admin endpoint)."""
        return "http://127.0.0.1:%d" % self.http_port


class NetnsCluster(LocalCluster):
    """A ``LocalCluster`` whose node ``i`` runs in namespace ``layout.namespace(i)``:
    ``--members`` name the namespace addresses, and each node listens on 0.0.0.0 inside
    its namespace (its ``eth0`` and its loopback)."""

    def __init__(self, layout: Layout, root: str, **kwargs: Any):
        super().__init__(len(layout.node_ids), root, base_port=NODE_PORT, **kwargs)
        self.layout = layout
        if sorted(self.nodes) != sorted(layout.node_ids):
            raise ValueError("layout names %r, cluster %r" % (layout.node_ids, sorted(self.nodes)))
        self.nodes = {
            node_id: NetnsNode(node_id, NODE_PORT, NODE_PORT, node.data_dir,
                               layout.address(node_id), layout.namespace(node_id))
            for node_id, node in self.nodes.items()
        }

    @property
    def members(self) -> str:
        return ",".join("%s=%s:%d:%d" % (n.node_id, n.host, n.port, n.http_port)
                        for n in self.nodes.values())

    def command(self, node: LocalNode, secret_file: Optional[str] = None) -> List[str]:
        return (self.layout.exec_prefix(node.node_id) + super().command(node, secret_file)
                + ["--bind", "0.0.0.0"])


# -- the nemesis's network backend ------------------------------------------------------


class NetnsFaults:
    """Network faults for ``Nemesis`` in netns mode: cuts are blackhole routes; loss goes
    through the transport's fault layer (no netem here)."""

    name = "netns"

    def __init__(self, network: Network, cluster: NetnsCluster, token: str,
                 log: Callable[..., None], request: Callable[..., HTTPResult] = http,
                 in_namespace: Callable[..., Any] = in_namespace):
        self.network = network
        self.cluster = cluster
        self.token = token
        self.log = log
        self.request = request
        self.in_namespace = in_namespace
        self._lossy: Set[str] = set()

    def cut(self, cuts: Iterable[Cut]) -> None:
        added, removed = self.network.set_cuts(cuts)
        self.log("blackhole", added=[list(r) for r in added], removed=[list(r) for r in removed])

    def lossy(self, node_ids: Iterable[str], rate: float) -> None:
        for node_id in node_ids:
            if self._admin(node_id, "PUT", {"loss_rate": rate}):
                self._lossy.add(node_id)

    def heal(self) -> None:
        removed = self.network.heal()
        if removed:
            self.log("blackhole", added=[], removed=[list(r) for r in removed])
        for node_id in sorted(self._lossy):
            self._admin(node_id, "DELETE")
        self._lossy.clear()

    def _admin(self, node_id: str, method: str, spec: Optional[Dict[str, Any]] = None) -> bool:
        node = self.cluster.nodes[node_id]
        if not node.alive() or node.paused:
            return False
        body = None if spec is None else json.dumps(spec).encode()
        headers = {"Authorization": "Bearer " + self.token}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            result = self.in_namespace(node.namespace, lambda: self.request(
                method, node.loopback_url + "/admin/faults", body, headers, timeout=3.0))
        except Exception as e:
            result = HTTPResult(0, {}, b"", error=repr(e))
        if result.status != 200:
            self.log("admin_error", node=node_id, status=result.status, error=result.error)
            return False
        return True

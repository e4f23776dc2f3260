"""What every txraft benchmark shares: machine facts, results files, wrk, etcd clusters.

The benchmark scripts in ``bench/`` install nothing: :func:`require` says what is missing
and how to get it.  Results go to ``bench/results/<name>-<timestamp>.json`` (and
``<name>-latest.json``, which ``bench/plots.py`` and the docs read), plots to ``docs/img``.

They run from any directory: every path is relative to this file, and txraft is the one of
the checkout this file lives in (first on ``sys.path``, and so on the nodes' PYTHONPATH
too, which ``LocalCluster`` derives from the txraft it was imported from), whatever else
is installed or on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
IMG_DIR = os.path.join(REPO_ROOT, "docs", "img")
WRK_SCRIPT = os.path.join(BENCH_DIR, "wrk.lua")

# First, even when REPO_ROOT is already further down the path (an editable install of this
# checkout, with another txraft on PYTHONPATH or installed ahead of it).
while REPO_ROOT in sys.path:
    sys.path.remove(REPO_ROOT)
sys.path.insert(0, REPO_ROOT)

import txraft  # noqa: E402
from txraft.tools.localcluster import LocalCluster, free_port, http  # noqa: E402

if os.path.dirname(os.path.dirname(os.path.realpath(txraft.__file__))) != os.path.realpath(
        REPO_ROOT):
    sys.exit("bench: txraft was imported from %s, not from this checkout (%s)"
             % (os.path.dirname(txraft.__file__), REPO_ROOT))


def shown(path: str) -> str:
    """``path`` as printed: relative to the repository root when run from there (as the
    docs show it), else absolute, so that it is right whatever the current directory."""
    path = os.path.abspath(path)
    if os.path.abspath(os.getcwd()) == REPO_ROOT and path.startswith(REPO_ROOT + os.sep):
        return os.path.relpath(path, REPO_ROOT)
    return path

#: How to get each tool a benchmark may need (Debian and PyPI names).
HOW_TO_GET = {
    "wrk": "apt-get install wrk",
    "etcd": "apt-get install etcd-server   (etcd 3.4; etcd-client adds etcdctl)",
    "pysyncobj": "pip install pysyncobj",
    "py-spy": "pip install py-spy",
    "matplotlib": "pip install matplotlib   (optional: plots)",
}

#: Whether each system makes an acknowledged write durable with fsync before answering.
FSYNC = {
    "txraft": "yes: the Raft log (one fsync per batch, before any acknowledgement); the "
              "SQLite state machine (WAL, synchronous=NORMAL, one transaction per applied "
              "batch) is re-applied from the log after a crash",
    "etcd": "yes: the WAL is fdatasync'ed before entries are acknowledged (default; "
            "--unsafe-no-fsync not used)",
    "pysyncobj": "no: the default in-memory journal; PySyncObj never calls fsync",
}


# ---------------------------------------------------------------- tools and machine


def which(tool: str) -> Optional[str]:
    return shutil.which(tool) or (
        shutil.which(tool, path=os.path.dirname(sys.executable)) if tool == "py-spy" else None
    )


def have_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def require(tool: str, needed: bool = True) -> Optional[str]:
    """The tool's path; else print how to get it and exit (``needed``) or return None."""
    path = have_module(tool) and tool if tool in ("pysyncobj", "matplotlib") else which(tool)
    if path:
        return path
    message = "%s is not installed: %s" % (tool, HOW_TO_GET.get(tool, "install it"))
    if needed:
        sys.exit("missing: " + message)
    print("skipping: " + message, file=sys.stderr)
    return None


def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so the clusters a benchmark started are stopped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def node_python(reactor: str, python: str) -> str:
    """The interpreter to give LocalCluster so its nodes run on ``reactor``.

    ``default`` is twistd's own (epoll); ``asyncio`` and ``uvloop`` go through
    ``bench/python-reactor.sh``.
    """
    if reactor == "default":
        return python
    if reactor == "uvloop" and not have_module("uvloop"):
        sys.exit("missing: uvloop is not installed: pip install uvloop   (optional)")
    os.environ["TXRAFT_BENCH_PYTHON"] = python
    os.environ["TXRAFT_BENCH_REACTOR"] = reactor
    return os.path.join(BENCH_DIR, "python-reactor.sh")


def loadavg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> Dict[str, Any]:
    """What a reader needs to compare numbers: CPU, memory, kernel, versions, load."""
    lscpu = _run(["lscpu"])
    cpu = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition(":") for line in lscpu.splitlines())
        if v
    )
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    import twisted

    info: Dict[str, Any] = {
        "cpu_model": cpu.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "twisted": twisted.__version__,
        "loadavg": loadavg(),
        "fsync_probe": fsync_probe(),
        "txraft_commit": _run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]).strip(),
        "txraft_dirty": bool(_run(["git", "-C", REPO_ROOT, "status", "--porcelain",
                                   "--untracked-files=no", "txraft", "shop"]).strip()),
    }
    if which("etcd"):
        m = re.search(r"etcd Version: (\S+)", _run(["etcd", "--version"]))
        info["etcd"] = m.group(1) if m else "?"
    if which("wrk"):
        m = re.search(r"wrk (\S+)", _run(["wrk", "-v"]) or "")
        info["wrk"] = m.group(1) if m else "?"
    try:
        from importlib.metadata import version

        info["pysyncobj"] = version("pysyncobj")
    except Exception:
        pass
    return info


def describe(info: Dict[str, Any]) -> str:
    return ("machine: %s, %s CPUs, %s GiB, kernel %s, %s, Twisted %s; load %s; "
            "fdatasync of a small append p50 %s ms, p90 %s ms" % (
                info["cpu_model"], info["cpus"], info["memory_gib"], info["kernel"],
                info["python"], info["twisted"], info["loadavg"],
                info["fsync_probe"]["p50_ms"], info["fsync_probe"]["p90_ms"]))


def fsync_probe(directory: Optional[str] = None, count: int = 200) -> Dict[str, float]:
    """Latency of appending 100 bytes and fdatasync'ing, in the benchmarks' data directory.

    On this kind of virtual machine it depends on what else runs: an idle vCPU halts and
    is woken late when the write completes, so the same disk answers in ~0.2 ms while the
    CPUs are busy and in ~4 ms while they are idle.  Recorded with every result.
    """
    fd, path = tempfile.mkstemp(prefix="fsync-probe-", dir=directory)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 100)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"p50_ms": round(percentile(times, 50) * 1000, 3),
            "p90_ms": round(percentile(times, 90) * 1000, 3),
            "p99_ms": round(percentile(times, 99) * 1000, 3)}


def wait_until_quiet(max_load: float, wait_seconds: float) -> List[float]:
    """Wait (up to ``wait_seconds``) for the 1-minute load average to drop below ``max_load``.

    Returns the load average at the start of the measurement; a noisy machine is reported,
    not hidden.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        load = loadavg()
        if load[0] <= max_load or time.monotonic() >= deadline:
            break
        print("load average %.2f > %.2f: waiting for a quieter machine..." % (load[0], max_load),
              file=sys.stderr)
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())) or 0.1)
    if load[0] > max_load:
        print("warning: measuring with load average %.2f (other work on the machine); "
              "numbers are noisy" % load[0], file=sys.stderr)
    return load


# ------------------------------------------------------------------------ numbers


def percentile(sorted_values: Sequence[float], p: float) -> Optional[float]:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-len(sorted_values) * p // 100)))  # ceil
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: Iterable[float]) -> Dict[str, Any]:
    """p50/p90/p99/p99.9/max and a CDF (milliseconds) of latencies given in seconds."""
    values = sorted(seconds)
    out: Dict[str, Any] = {"count": len(values)}
    if not values:
        return out
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        out[name + "_ms"] = round(percentile(values, p) * 1000, 3)
    out["max_ms"] = round(values[-1] * 1000, 3)
    out["mean_ms"] = round(sum(values) / len(values) * 1000, 3)
    out["cdf_ms"] = [[p, round(percentile(values, p) * 1000, 3)] for p in CDF_POINTS]
    return out


CDF_POINTS = [1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9,
              99.95, 99.99]


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b in (None, 0):
        return None
    return round(a / b, 3)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if digits == 0:
            return "%d" % round(value)
        return "%.*f" % (digits, value)
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def save_results(name: str, doc: Dict[str, Any]) -> str:
    """Write ``bench/results/<name>-<timestamp>.json`` and ``<name>-latest.json``."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = dict(doc, benchmark=name, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    path = os.path.join(RESULTS_DIR, "%s-%s.json" % (name, stamp))
    text = json.dumps(doc, indent=1, sort_keys=True)
    for target in (path, os.path.join(RESULTS_DIR, "%s-latest.json" % name)):
        with open(target, "w") as f:
            f.write(text + "\n")
    print("results: %s" % shown(path))
    return path


def load_results(name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(RESULTS_DIR, "%s-latest.json" % name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------ processes


def memory_mib(pid: int) -> Optional[Dict[str, float]]:
    """Resident memory of a process: RSS, PSS (shared pages divided among their users)
    and USS (pages only this process uses), from /proc/<pid>/smaps_rollup."""
    fields: Dict[str, int] = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        return None
    return {
        "rss": round(fields.get("Rss", 0) / 1024, 1),
        "pss": round(fields.get("Pss", 0) / 1024, 1),
        "uss": round((fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024, 1),
    }


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of a process (threads included), from /proc."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


class CPUMeter:
    """CPU used by a set of processes over an interval, as % of one core."""

    def __init__(self, pids: Dict[str, int]):
        self.pids = dict(pids)
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.t0 = time.monotonic()

    def stop(self) -> Dict[str, Optional[float]]:
        elapsed = time.monotonic() - self.t0
        out: Dict[str, Optional[float]] = {}
        for name, pid in self.pids.items():
            end, start = cpu_seconds(pid), self.start.get(name)
            out[name] = None if end is None or start is None else round(
                100 * (end - start) / elapsed, 1)
        return out


# ------------------------------------------------------------------------- profiles

#: Where a sample's time goes: the first rule matching a frame, from the leaf up, wins.
PROFILE_CATEGORIES = [
    ("Raft log fsync", ("txraft/runtime/storage.py", "_fsync")),
    ("Raft log encode + write", ("txraft/runtime/storage.py", "")),
    ("state machine apply (SQLite)", ("txraft/apps/kv.py", "")),
    ("state machine apply (SQLite)", ("shop/", "")),
    # Only real logging: twisted/python/log.py also holds callWithLogger, which wraps
    # every reactor event, and untilConcludes is also every TCP send.
    ("HTTP access log + logging", ("twisted/logger/", "")),
    ("HTTP access log + logging", ("twisted/web/http.py", "combinedLogFormatter")),
    ("HTTP access log + logging", ("twisted/web/http.py", "_escape")),
    ("HTTP access log + logging", ("twisted/web/http.py", "HTTPFactory.log")),
    ("UDP transport, codec, HMAC", ("txraft/runtime/transport.py", "")),
    ("UDP transport, codec, HMAC", ("txraft/runtime/codec.py", "")),
    ("UDP transport, codec, HMAC", ("twisted/internet/udp.py", "")),
    ("UDP transport, codec, HMAC", ("msgpack/", "")),
    ("UDP transport, codec, HMAC", ("hmac.py", "")),
    ("Raft core", ("txraft/core/", "")),
    ("driver (txraft/runtime/node.py, executor.py)", ("txraft/runtime/node.py", "")),
    ("driver (txraft/runtime/node.py, executor.py)", ("txraft/runtime/executor.py", "")),
    ("driver (txraft/runtime/node.py, executor.py)", ("txraft/runtime/transfer.py", "")),
    ("app + HTTP plumbing (txraft/http, txraft/apps)", ("txraft/http/", "")),
    ("app + HTTP plumbing (txraft/http, txraft/apps)", ("txraft/apps/", "")),
    ("HTTP server (twisted.web, Klein, werkzeug)", ("twisted/web/", "")),
    ("HTTP server (twisted.web, Klein, werkzeug)", ("klein/", "")),
    ("HTTP server (twisted.web, Klein, werkzeug)", ("werkzeug/", "")),
    ("HTTP server (twisted.web, Klein, werkzeug)", ("treq/", "")),
    ("reactor, TCP, Deferreds", ("twisted/", "")),
]


def _category(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        for name, (path, function) in PROFILE_CATEGORIES:
            if path in frame and function in frame:
                return name
    return "other"


def summarize_profile(path: str, top: int = 30) -> Dict[str, Any]:
    """Summarize py-spy's raw (collapsed) stacks of a twistd process's main thread.

    Samples whose leaf is the reactor's epoll wait are idle; everything else is busy (on
    a loaded machine that includes time spent runnable but waiting for a CPU).  Shares
    are of busy samples: by category, and by function (self and inclusive).
    """
    self_counts: Dict[str, int] = {}
    incl_counts: Dict[str, int] = {}
    categories: Dict[str, int] = {}
    total = idle = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = [fr.strip() for fr in stack.split(";")]
            if not frames[0].startswith("<module>"):
                continue  # not the main thread (e.g. idle thread-pool workers)
            n = int(count)
            total += n
            leaf = frames[-1]
            if "EPollReactor.doPoll" in leaf or "PollReactor.doPoll" in leaf:
                idle += n
                continue
            self_counts[leaf] = self_counts.get(leaf, 0) + n
            for fr in set(frames):
                incl_counts[fr] = incl_counts.get(fr, 0) + n
            cat = _category(frames)
            categories[cat] = categories.get(cat, 0) + n
    busy = total - idle
    pct = (lambda c: round(100.0 * c / busy, 1)) if busy else (lambda c: 0.0)
    ranked = lambda counts, k: [[fr, pct(c)] for fr, c in  # noqa: E731
                                sorted(counts.items(), key=lambda kv: -kv[1])[:k]]
    return {
        "samples": total,
        "idle_pct": round(100.0 * idle / total, 1) if total else 0.0,
        "categories": ranked(categories, 50),
        "self": ranked(self_counts, top),
        "inclusive": ranked(incl_counts, top * 3),
    }


# ------------------------------------------------------------------------------ wrk


def run_wrk(
    url: str,
    mode: str,
    connections: int,
    seconds: float,
    threads: int = 1,
    options: Sequence[str] = (),
    timeout_seconds: float = 10.0,
    on_start=None,
) -> Dict[str, Any]:
    """Run wrk with ``bench/wrk.lua`` and return its counts and latencies (milliseconds).

    ``on_start(pid)`` is called once wrk runs (used to attach a profiler).
    """
    threads = max(1, min(threads, connections))
    cmd = [
        which("wrk") or "wrk", "-t%d" % threads, "-c%d" % connections,
        "-d%ds" % max(1, round(seconds)), "--timeout", "%ds" % timeout_seconds,
        "-s", WRK_SCRIPT, url, "--", mode,
    ] + list(options)
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if on_start is not None:
        on_start(proc.pid)
    out, err = proc.communicate(timeout=seconds + timeout_seconds + 60)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    line = next((l for l in out.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError("wrk gave no result (exit %s): %s %s" % (proc.returncode, out, err))
    raw = json.loads(line[len("WRKJSON "):])
    lat = raw["latency_us"]
    pct = {p: us / 1000.0 for p, us in lat["percentiles"]}
    errors = sum(raw["errors"].values())
    return {
        "requests": raw["requests"],
        "duration_s": raw["duration_us"] / 1e6,
        "client_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "errors": raw["errors"],
        "error_count": errors,
        "p50_ms": pct.get(50), "p90_ms": pct.get(90), "p99_ms": pct.get(99),
        "p999_ms": pct.get(99.9), "max_ms": lat["max"] / 1000.0,
        "mean_ms": round(lat["mean"] / 1000.0, 3),
        "cdf_ms": [[p, us / 1000.0] for p, us in lat["percentiles"]],
        "wrk_cpu_pct": round(100 * wrk_cpu / elapsed, 1),
    }


# ----------------------------------------------------------------------------- etcd


class EtcdMember:
    def __init__(self, name: str, client_port: int, peer_port: int, data_dir: str):
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.client_port

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self, timeout: float = 1.0) -> Optional[Dict[str, Any]]:
        """``/v3/maintenance/status`` through the gateway (ints as Python ints)."""
        if not self.alive():
            return None
        result = http("POST", self.url + "/v3/maintenance/status", b"{}",
                      {"Content-Type": "application/json"}, timeout=timeout)
        if result.status != 200:
            return None
        doc = result.json()
        header = doc.get("header", {})
        return {
            "member_id": header.get("member_id"),
            "leader": doc.get("leader"),
            "term": int(doc.get("raftTerm", header.get("raft_term", 0))),
            "revision": int(header.get("revision", 0)),
            "raft_index": int(doc.get("raftIndex", 0)),
            "applied_index": int(doc.get("raftAppliedIndex", doc.get("raftIndex", 0))),
        }


class EtcdCluster:
    """N etcd members on 127.0.0.1, each with its own data directory; the WAL is fsynced."""

    def __init__(self, size: int, root: str, election_timeout_ms: int = 1000,
                 heartbeat_ms: int = 100):
        self.root = os.path.abspath(root)
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_ms = heartbeat_ms
        self.token = "bench-%d-%d" % (os.getpid(), int(time.time() * 1000))
        self.members: Dict[str, EtcdMember] = {}
        used: List[int] = []
        for i in range(1, size + 1):
            client = free_port(avoid=used)
            used.append(client)
            peer = free_port(avoid=used)
            used.append(peer)
            name = "e%d" % i
            self.members[name] = EtcdMember(name, client, peer, os.path.join(self.root, name))

    @property
    def initial_cluster(self) -> str:
        return ",".join("%s=http://127.0.0.1:%d" % (m.name, m.peer_port)
                        for m in self.members.values())

    def command(self, m: EtcdMember) -> List[str]:
        return [
            which("etcd") or "etcd", "--name", m.name, "--data-dir", m.data_dir,
            "--listen-client-urls", m.url, "--advertise-client-urls", m.url,
            "--listen-peer-urls", "http://127.0.0.1:%d" % m.peer_port,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % m.peer_port,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new", "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_timeout_ms),
            "--logger", "zap", "--log-level", "warn",
        ]

    def start(self, name: str) -> EtcdMember:
        m = self.members[name]
        os.makedirs(self.root, exist_ok=True)
        log = open(os.path.join(self.root, name + ".log"), "ab")
        try:
            m.process = subprocess.Popen(self.command(m), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        return m

    def start_all(self) -> None:
        for name in self.members:
            self.start(name)

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.alive():
            m.process.kill()
            m.process.wait(10)

    def stop_all(self) -> None:
        for m in self.members.values():
            if m.alive():
                m.process.send_signal(signal.SIGTERM)
        for m in self.members.values():
            if m.process is not None:
                try:
                    m.process.wait(10)
                except subprocess.TimeoutExpired:
                    m.process.kill()
                    m.process.wait(10)

    def url(self, name: str) -> str:
        return self.members[name].url

    def pids(self) -> Dict[str, int]:
        return {n: m.pid for n, m in self.members.items() if m.alive()}

    def statuses(self) -> Dict[str, Optional[Dict[str, Any]]]:
        return {n: m.status() for n, m in self.members.items()}

    def leader_of(self, statuses: Dict[str, Optional[Dict[str, Any]]]) -> Optional[str]:
        for name, s in statuses.items():
            if s is not None and s["leader"] and s["leader"] == s["member_id"]:
                return name
        return None

    def wait_for_leader(self, timeout: float = 20.0, among: Optional[Sequence[str]] = None) -> str:
        """Wait until the live members agree on one leader; return its name."""
        deadline = time.monotonic() + timeout
        statuses: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            names = list(among) if among is not None else [
                n for n, m in self.members.items() if m.alive()]
            statuses = {n: self.members[n].status() for n in names}
            live = {n: s for n, s in statuses.items() if s is not None}
            leader = self.leader_of(live)
            if leader is not None and len(live) == len(names) and all(
                    s["leader"] == live[leader]["member_id"] for s in live.values()):
                return leader
            time.sleep(0.05)
        raise TimeoutError("etcd: no agreed leader within %.0fs: %r" % (timeout, statuses))

    def __enter__(self) -> "EtcdCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()


def txraft_leader_status(cluster, leader: str) -> Dict[str, Any]:
    status = cluster.nodes[leader].status(timeout=5.0)
    if status is None:
        raise RuntimeError("the leader %s does not answer /raft/status" % leader)
    return status


def scratch_dir(prefix: str) -> str:
    """A fresh directory for cluster data (on the same disk as the system temp dir)."""
    return tempfile.mkdtemp(prefix=prefix)


# ------------------------------------------------------------- another checkout of txraft

#: What a node of another checkout runs as ``PYTHON -c CODE twistd-arguments...``: that
#: tree alone provides txraft and its twistd plugin (other checkouts on the path, such as
#: this one through an editable install, are dropped), then one ``TXRAFT-TREE`` line says
#: where txraft and the raftnode service module came from, then twistd runs.
_TREE_NODE_CODE = r'''
import json, os, sys
tree = %(tree)r
def _other_checkout(p):
    p = os.path.abspath(p or os.curdir)
    return (p != tree
            and os.path.isfile(os.path.join(p, "twisted", "plugins", "txraft_raftnode.py"))
            and not os.path.isfile(os.path.join(p, "twisted", "__init__.py")))
sys.path[:] = [tree] + [p for p in sys.path
                        if os.path.abspath(p or os.curdir) != tree and not _other_checkout(p)]
reactor = %(reactor)r
if reactor != "default":
    import asyncio
    if reactor == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from twisted.internet import asyncioreactor
    asyncioreactor.install(asyncio.new_event_loop())
import importlib.util
import twisted.plugins
import txraft
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
modules = sorted({p.module for p in getPlugins(IServiceMaker, twisted.plugins)
                  if p.tapname == "raftnode"})
print("TXRAFT-TREE " + json.dumps({
    "txraft": os.path.dirname(os.path.abspath(txraft.__file__)),
    "plugin_files": [os.path.join(d, "txraft_raftnode.py") for d in twisted.plugins.__path__
                     if os.path.isfile(os.path.join(d, "txraft_raftnode.py"))],
    "raftnode_modules": {m: importlib.util.find_spec(m).origin for m in modules},
}), flush=True)
from twisted.scripts.twistd import run
run()
'''


def tree_revision(tree: str) -> Dict[str, Any]:
    """The git commit of a checkout: short and full hash, and whether txraft/ or shop/
    differ from it (``short`` is the directory's name when it is not a git checkout)."""
    full = _run(["git", "-C", tree, "rev-parse", "HEAD"]).strip()
    if not full:
        return {"short": os.path.basename(os.path.normpath(tree)), "commit": None,
                "dirty": None}
    dirty = bool(_run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no",
                       "txraft", "shop", "twisted"]).strip())
    return {"short": _run(["git", "-C", tree, "rev-parse", "--short", "HEAD"]).strip(),
            "commit": full, "dirty": dirty}


def check_tree(tree: str) -> str:
    """``tree`` as an absolute path if it is a txraft checkout a node can run from."""
    tree = os.path.realpath(tree)
    for part in ("txraft/__init__.py", "twisted/plugins/txraft_raftnode.py"):
        if not os.path.isfile(os.path.join(tree, part)):
            sys.exit("--against %s: not a txraft checkout (no %s)" % (tree, part))
    return tree


class TreeCluster(LocalCluster):
    """A ``LocalCluster`` whose nodes run the txraft of another checkout ``tree``.

    Same processes, options and HTTP as this tree's nodes (the command line is this
    tree's ``LocalCluster.command``), but started with ``PYTHONPATH=tree``, in ``tree``,
    through :data:`_TREE_NODE_CODE`; nothing of ``tree`` is imported into this process,
    so ``tree`` may have any layout (e.g. the flat ``txraft.node`` one before 9dbb56e)
    as long as its ``twistd raftnode`` takes these options and serves ``/raft/status``.
    :meth:`check_nodes` reads back where each node's txraft came from.
    """

    def __init__(self, size: int, root: str, tree: str, reactor: str = "default",
                 **kwargs: Any):
        super().__init__(size, root, **kwargs)
        self.tree = tree
        self.code = _TREE_NODE_CODE % {"tree": tree, "reactor": reactor}

    def command(self, node: Any, secret_file: Optional[str] = None) -> List[str]:
        cmd = super().command(node, secret_file)
        if cmd[1:2] != ["-c"] or "raftnode" not in cmd:
            raise RuntimeError("LocalCluster.command is no longer 'PYTHON -c CODE ... "
                               "raftnode ...': TreeCluster needs updating (%r)" % cmd[:6])
        return [cmd[0], "-c", self.code] + cmd[3:]

    def start(self, node_id: str, secret_file: Optional[str] = None) -> Any:
        node = self.nodes[node_id]
        if node.alive():
            raise RuntimeError("%s is already running" % node_id)
        os.makedirs(node.data_dir, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = self.tree + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("TXRAFT_SECRET", None)
        log = open(node.log_path, "ab")
        try:
            node.process = subprocess.Popen(
                self.command(node, secret_file), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.tree, env=env, start_new_session=True)
        finally:
            log.close()
        node.paused = False
        return node

    def check_nodes(self) -> Dict[str, Any]:
        """What every node reported about its txraft; raises unless all of it is ``tree``'s."""
        reports = {}
        inside = lambda path: path is not None and os.path.realpath(path).startswith(  # noqa: E731
            self.tree + os.sep)
        for node_id, node in self.nodes.items():
            with open(node.log_path, encoding="utf-8", errors="replace") as f:
                lines = [l for l in f if l.startswith("TXRAFT-TREE ")]
            if not lines:
                raise RuntimeError("%s of %s did not report its txraft:\n%s"
                                   % (node_id, self.tree, self.logs(10)))
            report = json.loads(lines[-1][len("TXRAFT-TREE "):])
            if (os.path.realpath(report["txraft"]) != os.path.join(self.tree, "txraft")
                    or os.path.join(self.tree, "twisted", "plugins", "txraft_raftnode.py")
                    not in [os.path.realpath(p) for p in report["plugin_files"]]
                    or not report["raftnode_modules"]
                    or not all(inside(o) for o in report["raftnode_modules"].values())):
                raise RuntimeError("%s was to run the txraft of %s but runs %r"
                                   % (node_id, self.tree, report))
            reports[node_id] = report
        return reports

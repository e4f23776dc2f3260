"""One chaos run: real nodes, concurrent clients, the nemesis, then every check.

Sequence: start N ``twistd raftnode`` processes (``LocalCluster``, fault-injection
endpoint on, small snapshot threshold so restarted nodes get snapshots), set up the
workload, run the clients against all nodes while the nemesis injects faults for
``duration`` seconds, heal everything, then check:

* liveness: a leader within ``leader_deadline`` seconds of healing and every node caught up
  with the leader's commit index within ``catchup_deadline`` seconds;
* membership: after healing the configuration is the founding one (every founding node a
  voter, no learner; with membership actions in the mix the nemesis put them back), and
  once the clients stop every member of it has applied the leader's commit index;
* safety seen from outside while running (a monitor polls ``/raft/status``): at most one
  leader per term, commit and applied indexes never going back within one process;
* the history is linearizable (``txraft.tools.chaos.checker``), per key or per product;
* the workload's invariants (``Workload.verify``) and identical replicas.

A failed run saves its history, nemesis schedule, node logs, configuration and seed to a
folder and prints the command that replays it.

``net`` picks how network faults are made: ``transport`` (the default, no root) through
each node's fault-injection endpoint; ``netns`` (root) with one network namespace per node
and blackhole routes between them (``txraft.tools.chaos.netns``), loss staying on the transport.
"""

from __future__ import annotations

import atexit
import json
import os
import pkgutil
import random
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import attrs

from txraft.tools.chaos.checker import DEFAULT_MAX_STEPS, FAIL, OK, UNKNOWN, check_partitions
from txraft.tools.chaos.history import History
from txraft.tools.chaos.nemesis import (DEFAULT_WEIGHTS, FAULT_KINDS, MEMBERSHIP_KINDS,
                                        MEMBERSHIP_WEIGHTS, OUTCOMES, WEIGHTS, Nemesis)
from txraft.tools.chaos import netns
from txraft.tools.chaos.workload import Context
from txraft.tools.localcluster import LocalCluster


#: Workloads known by a short name; anything else is taken as ``module:attribute`` (a
#: workload class).  Names, not imports: the library never imports the shop.
WORKLOADS = {"kv": "txraft.tools.chaos.workload:KVWorkload", "shop": "shop.chaos:ShopWorkload"}


def load_workload(name: str) -> Any:
    """The workload class ``name`` stands for: a short name of ``WORKLOADS`` or
    ``module:attribute``.  Raises ``ValueError`` saying why when it cannot be loaded."""
    target = WORKLOADS.get(name, name)
    if ":" not in target:
        raise ValueError("unknown workload %r: use one of %s or module:attribute"
                         % (name, ", ".join(sorted(WORKLOADS))))
    try:
        return pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError("cannot load workload %r (%s): %s" % (name, target, e)) from None


@attrs.define
class Config:
    nodes: int = 5
    duration: float = 60.0
    seed: int = 7
    workload: str = "kv"
    clients: int = 10
    election_timeout_ms: int = 150
    heartbeat_ms: int = 50
    # Small, so that a node down for a second or two is brought back by a snapshot.
    snapshot_entries: int = 400
    snapshot_trailing_entries: int = 50
    nemesis: bool = True
    faults: Optional[str] = None  # comma-separated fault kinds; None: the default mix
    membership: bool = False  # add the membership actions (MEMBERSHIP_KINDS) to the mix
    leader_deadline: float = 2.0
    catchup_deadline: float = 10.0
    max_steps: int = DEFAULT_MAX_STEPS
    out: str = "chaos-failures"
    root: Optional[str] = None
    keep: bool = False
    save: bool = False  # save the run's folder even when it passed
    tick_ms: int = 10
    value_bytes: int = 0  # kv: pad values up to this many bytes
    net: str = "transport"  # or "netns": see txraft.tools.chaos.netns

    def command(self) -> str:
        parts = ["python -m txraft.tools.chaos", "--nodes %d" % self.nodes,
                 "--duration %g" % self.duration, "--seed %d" % self.seed,
                 "--workload %s" % self.workload, "--clients %d" % self.clients]
        defaults = Config()
        if self.election_timeout_ms != defaults.election_timeout_ms:
            parts.append("--election-timeout-ms %d" % self.election_timeout_ms)
        if self.heartbeat_ms != defaults.heartbeat_ms:
            parts.append("--heartbeat-ms %d" % self.heartbeat_ms)
        if self.snapshot_entries != defaults.snapshot_entries:
            parts.append("--snapshot-entries %d" % self.snapshot_entries)
        if self.tick_ms != defaults.tick_ms:
            parts.append("--tick-ms %d" % self.tick_ms)
        if self.value_bytes:
            parts.append("--value-bytes %d" % self.value_bytes)
        if not self.nemesis:
            parts.append("--no-nemesis")
        if self.faults:
            parts.append("--faults %s" % self.faults)
        if self.membership:
            parts.append("--membership")
        if self.net != defaults.net:
            parts.append("--net %s" % self.net)
        return " ".join(parts)

    def weights(self) -> Optional[Dict[str, int]]:
        """The nemesis's mix: ``faults`` (default: ``DEFAULT_WEIGHTS``), plus every
        membership action with ``membership``; None for the default mix alone."""
        if not self.faults and not self.membership:
            return None
        if self.faults:
            kinds = [k.strip() for k in self.faults.split(",") if k.strip()]
            unknown = set(kinds) - set(FAULT_KINDS)
            if unknown:
                raise ValueError("unknown fault kinds: %s (known: %s)"
                                 % (", ".join(sorted(unknown)), ", ".join(FAULT_KINDS)))
            weights = {k: WEIGHTS[k] for k in kinds}
        else:
            weights = dict(DEFAULT_WEIGHTS)
        if self.membership:
            weights.update(MEMBERSHIP_WEIGHTS)
        return weights

    def membership_actions(self) -> List[str]:
        """The membership actions in this run's mix."""
        return [k for k in MEMBERSHIP_KINDS if k in (self.weights() or DEFAULT_WEIGHTS)]


@attrs.define
class Report:
    config: Config
    operations: Dict[str, Dict[str, int]] = attrs.field(factory=dict)
    faults: Dict[str, int] = attrs.field(factory=dict)
    #: ``{action: {outcome: count}}`` for the membership actions in the mix.
    membership: Dict[str, Dict[str, int]] = attrs.field(factory=dict)
    #: The configuration once healed, as the leader has it (membership runs only).
    final_configuration: Optional[str] = None
    leader_changes: int = 0
    max_term: int = 0
    unknown: int = 0
    partitions: int = 0
    no_verdict: List[str] = attrs.field(factory=list)
    violations: List[str] = attrs.field(factory=list)
    anomalies: List[str] = attrs.field(factory=list)
    leader_after_heal: Optional[float] = None
    caught_up_after_heal: Optional[float] = None
    checker_seconds: float = 0.0
    wall_seconds: float = 0.0
    #: 1, 5 and 15-minute load averages when the run ended: timing-sensitive results
    #: (elections, catch-up) mean little on an overloaded machine.
    load_average: Optional[Tuple[float, float, float]] = None
    saved_to: Optional[str] = None

    @property
    def passed(self) -> bool:
        return not self.violations and not self.no_verdict

    def table(self) -> str:
        total = sum(sum(v.values()) for v in self.operations.values())
        rows = [("run", self.config.command()), ("wall time", "%.1f s" % self.wall_seconds)]
        if self.load_average is not None:
            rows.append(("machine load", "%.2f %.2f %.2f at the end (1, 5, 15 min; %d cores)"
                         % (self.load_average + (os.cpu_count() or 1,))))
        rows.append(("operations", "%d" % total))
        for f, counts in sorted(self.operations.items()):
            rows.append(("  " + f, "ok %d, failed %d, unknown %d"
                         % (counts.get(OK, 0), counts.get(FAIL, 0), counts.get(UNKNOWN, 0))))
        rows.append(("network faults", NETWORK_FAULTS[self.config.net]))
        rows.append(("faults", "%d" % sum(self.faults.values())))
        for kind in FAULT_KINDS:
            if kind in MEMBERSHIP_KINDS:
                if kind not in self.membership:
                    continue
                counts = self.membership[kind]
                rows.append(("  " + kind, "%d (%s)" % (self.faults.get(kind, 0), ", ".join(
                    "%s %d" % (o, counts.get(o, 0)) for o in OUTCOMES
                    if counts.get(o, 0) or o in ("done", "failed")))))
            else:
                rows.append(("  " + kind, "%d" % self.faults.get(kind, 0)))
        if self.final_configuration is not None:
            rows.append(("members after heal", self.final_configuration))
        rows += [
            ("leader changes", "%d (highest term %d)" % (self.leader_changes, self.max_term)),
            ("unknown outcomes", "%d" % self.unknown),
            ("leader after heal", _seconds(self.leader_after_heal)),
            ("caught up after heal", _seconds(self.caught_up_after_heal)),
            ("partitions checked", "%d (%.1f s)" % (self.partitions, self.checker_seconds)),
            ("no verdict", "%d" % len(self.no_verdict)),
            ("anomalies (500s etc.)", "%d" % len(self.anomalies)),
            ("violations", "%d" % len(self.violations)),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = ["%-*s  %s" % (width, k, v) for k, v in rows]
        for title, items in (("violations", self.violations), ("no verdict", self.no_verdict),
                             ("anomalies", self.anomalies)):
            if items:
                lines.append("")
                lines.append("%s:" % title)
                for item in items[:20]:
                    lines.append("  - " + item.replace("\n", "\n    "))
                if len(items) > 20:
                    lines.append("  ... and %d more" % (len(items) - 20))
        if self.saved_to:
            lines.append("")
            lines.append("saved to %s; replay with:\n  %s" % (self.saved_to, self.config.command()))
        return "\n".join(lines)


NETWORK_FAULTS = {
    "transport": "transport fault layer (admin endpoint)",
    "netns": "kernel: a namespace per node, blackhole routes (lossy: transport layer)",
}


def _seconds(value: Optional[float]) -> str:
    return "never" if value is None else "%.2f s" % value


class Monitor:
    """Polls every node's status while the run lasts: leaders per term, index regressions."""

    def __init__(self, cluster: LocalCluster, interval: float = 0.2):
        self.cluster = cluster
        self.interval = interval
        self.stop = threading.Event()
        self.leaders: Dict[int, set] = {}
        self.violations: List[str] = []
        self._last: Dict[Any, Dict[str, int]] = {}
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        for node_id, node in list(self.cluster.nodes.items()):
            process = node.process
            status = node.status(timeout=0.5)
            if status is None or process is None or node.process is not process:
                continue  # (a restart in between would blame the old process)
            term = status["term"]
            if status["role"] == "leader":
                leaders = self.leaders.setdefault(term, set())
                leaders.add(node_id)
                if len(leaders) > 1:
                    message = "two leaders in term %d: %s" % (term, sorted(leaders))
                    if message not in self.violations:
                        self.violations.append(message)
            key = (node_id, process.pid)
            last = self._last.setdefault(key, {})
            for field in ("commit_index", "applied_index", "term"):
                value = status.get(field)
                if value is None:
                    continue
                if value < last.get(field, 0):
                    self.violations.append("%s (pid %d): %s went back from %d to %d"
                                           % (node_id, process.pid, field, last[field], value))
                last[field] = value

    @property
    def leader_changes(self) -> int:
        return max(0, sum(len(v) for v in self.leaders.values()) - 1)

    @property
    def max_term(self) -> int:
        return max(self.leaders, default=0)


class ChaosRun(Context):
    """Runs one configuration; ``execute()`` returns the ``Report``."""

    def __init__(self, config: Config, log=print, workload: Any = None):
        self.config = config
        self.say = log
        self.history = History()
        self.stopping = threading.Event()
        self.aborting = threading.Event()
        self.anomalies: List[str] = []
        if workload is None:
            workload = load_workload(config.workload)()
            if config.value_bytes and hasattr(workload, "value_bytes"):
                workload.value_bytes = config.value_bytes
        self.workload = workload
        self.cluster: Optional[LocalCluster] = None
        self.node_ids: List[str] = []
        self.nemesis: Optional[Nemesis] = None
        self._leader_cache = (0.0, None)

    # -- Context ----------------------------------------------------------------------------

    def url(self, node_id: str) -> str:
        return self.cluster.url(node_id)

    def targets(self) -> List[str]:
        """Members in the configuration, caught up: a node the nemesis took out (removed,
        or being replaced) gets no client requests until the leader promoted it again."""
        nemesis = self.nemesis
        if nemesis is None:
            return self.node_ids
        return nemesis.serving() or self.node_ids

    def leader(self) -> Optional[str]:
        at, leader = self._leader_cache
        if time.monotonic() - at < 0.5:
            return leader
        leader = None
        best = -1
        for node_id, node in self.cluster.nodes.items():
            status = node.status(timeout=0.5)
            if status and status["role"] == "leader" and status["term"] > best:
                leader, best = node_id, status["term"]
        self._leader_cache = (time.monotonic(), leader)
        return leader

    # -- the run ----------------------------------------------------------------------------

    def execute(self) -> Report:
        config = self.config
        started = time.monotonic()
        report = Report(config)
        root = config.root or tempfile.mkdtemp(prefix="txraft-chaos-")
        os.makedirs(root, exist_ok=True)
        # From the OS, not the seed: the seed is printed and saved to replay a run, and
        # anyone holding it must not hold the fault endpoint's token too.
        token = secrets.token_hex(16)
        token_file = os.path.join(root, "admin.token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(token_file, 0o600)
        options = dict(
            app=self.workload.app,
            election_timeout_ms=config.election_timeout_ms, heartbeat_ms=config.heartbeat_ms,
            extra_args=["--admin-token-file", token_file, "--tick-ms", str(config.tick_ms),
                        "--snapshot-entries", str(config.snapshot_entries),
                        "--snapshot-trailing-entries", str(config.snapshot_trailing_entries)],
        )
        network = None
        if config.net == "netns":
            layout = netns.Layout.for_pid(os.getpid(),
                                          ["n%d" % i for i in range(1, config.nodes + 1)],
                                          netns.used_subnets())
            network = netns.Network(layout)
            cluster = self.cluster = netns.NetnsCluster(layout, os.path.join(root, "cluster"),
                                                        **options)
        elif config.net == "transport":
            cluster = self.cluster = LocalCluster(config.nodes, os.path.join(root, "cluster"),
                                                  **options)
        else:
            raise ValueError("unknown --net %r (transport or netns)" % (config.net,))
        self.node_ids = sorted(cluster.nodes)
        monitor = Monitor(cluster)
        nemesis = None
        try:
            if network is not None:
                atexit.register(network.teardown)  # the last resort; idempotent
                stale = netns.cleanup_stale()
                if stale:
                    self.say("removed what dead runs left: %s" % ", ".join(stale))
                network.setup()
                self.say("network namespaces %s-* on 10.%d.%d.0/24"
                         % ((network.layout.prefix,) + network.layout.subnet))
            cluster.start_all()
            cluster.wait_for_leader(60)
            monitor.start()
            processes = ["c%d" % i for i in range(config.clients)]
            self.workload.setup(self, processes)
            self.say("cluster of %d up, %s workload set up; running %gs with seed %d"
                     % (config.nodes, config.workload, config.duration, config.seed))
            threads = []
            for i, process in enumerate(processes):
                rng = random.Random("%d/%s" % (config.seed, process))
                t = threading.Thread(target=self._client, args=(process, rng),
                                     name="client-" + process, daemon=True)
                threads.append(t)
                t.start()
            if config.nemesis:
                backend = None
                if network is not None:
                    backend = lambda log: netns.NetnsFaults(network, cluster, token, log)
                nemesis = self.nemesis = Nemesis(cluster, config.seed, token,
                                                 config.election_timeout_ms / 1000.0,
                                                 weights=config.weights(), network=backend,
                                                 say=self.say)
                nemesis.start()
            time.sleep(config.duration)
            if nemesis is not None:
                nemesis.finish()
                report.faults = nemesis.summary()
                report.membership = nemesis.membership_summary()
            healed = time.monotonic()
            self._liveness(report, healed)
            # Stop new operations; let pending ones settle with their retries.
            self.stopping.set()
            for t in threads:
                t.join(max(0.0, healed + 30 - time.monotonic()))
            self.aborting.set()
            for t in threads:
                t.join(10)
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                report.violations.append("clients never finished: %s" % ", ".join(stuck))
            self._settle(report)
            rng = random.Random(config.seed)
            report.violations.extend(self.workload.final(self, rng))
            monitor.finish()
            report.violations.extend(monitor.violations)
            report.leader_changes = monitor.leader_changes
            report.max_term = monitor.max_term
            records = self.history.records()
            # The workload's invariants on the state ``final`` read (the shop's: stock
            # never negative, sold + left = stocked, every acknowledged order there once).
            report.violations.extend(self.workload.verify(self, records))
            if hasattr(self.workload, "replay_keys"):
                report.violations.extend(self.workload.replay_keys(self, records, rng))
            self._check(report, records)
        except Exception as e:
            report.violations.append("harness error: %r" % (e,))
            import traceback
            self.say(traceback.format_exc())
        finally:
            self.stopping.set()
            self.aborting.set()
            monitor.finish()
            if nemesis is not None:
                nemesis.halt()
            report.anomalies = list(self.anomalies)
            if nemesis is not None:
                report.violations.extend(nemesis.errors)
                report.anomalies.extend(nemesis.anomalies)
            report.operations = self.history.counts()
            report.unknown = sum(c.get(UNKNOWN, 0) for c in report.operations.values())
            cluster.stop_all()
            if network is not None:
                for error in network.teardown():
                    report.anomalies.append("network teardown: %s" % error)
                atexit.unregister(network.teardown)
            report.wall_seconds = time.monotonic() - started
            if hasattr(os, "getloadavg"):
                report.load_average = tuple(round(x, 2) for x in os.getloadavg())
            if not report.passed or config.save:
                report.saved_to = self._save(report, nemesis)
            if not config.keep and config.root is None:
                shutil.rmtree(root, ignore_errors=True)
        return report

    def _client(self, process: str, rng: random.Random) -> None:
        try:
            self.workload.client(self, process, rng)
        except Exception as e:  # a workload bug: report it, never hang the run
            import traceback
            self.anomalies.append("client %s crashed: %r\n%s" % (process, e, traceback.format_exc()))

    def _statuses(self) -> Dict[str, Any]:
        return {i: n.status(timeout=1.0) for i, n in self.cluster.nodes.items()}

    def _agreed_leader(self, statuses) -> Optional[Dict[str, Any]]:
        """A leader that a majority of its configuration's voters (itself included)
        follow in its term."""
        for node_id, s in statuses.items():
            if s and s["role"] == "leader":
                voters = s.get("voters") or list(self.cluster.nodes)
                followers = sum(1 for v in voters if statuses.get(v)
                                and statuses[v]["term"] == s["term"]
                                and statuses[v]["leader_id"] == node_id)
                if followers >= len(voters) // 2 + 1:
                    return s
        return None

    @staticmethod
    def _final_members(leader: Dict[str, Any]) -> List[str]:
        """Every member of the configuration the leader has in force."""
        return sorted(set(leader.get("voters") or ()) | set(leader.get("learners") or ()))

    def _configuration_problem(self, leader: Dict[str, Any]) -> Optional[str]:
        """Why the leader's configuration is not the founding one, every node a voter
        (what every run must end with: membership runs too, since the nemesis puts every
        member back while healing)."""
        voters = sorted(leader.get("voters") or ())
        learners = sorted(leader.get("learners") or ())
        if voters == self.node_ids and not learners:
            return None
        missing = sorted(set(self.node_ids) - set(voters) - set(learners))
        return ("the configuration is not the founding one with every node a voter: "
                "voters %s, learners %s, missing %s (config index %s, leader %s, term %s)"
                % (voters, learners, missing, leader.get("config_index"), leader.get("id"),
                   leader.get("term")))

    def _membership_run(self) -> bool:
        return bool(self.config.nemesis and self.config.membership_actions())

    def _liveness(self, report: Report, healed: float) -> None:
        config = self.config
        leader = None
        while time.monotonic() - healed < max(config.leader_deadline, 2.0) + 20:
            leader = self._agreed_leader(self._statuses())
            if leader is not None:
                report.leader_after_heal = time.monotonic() - healed
                break
            time.sleep(0.05)
        if leader is None or report.leader_after_heal > config.leader_deadline:
            report.violations.append("liveness: no leader within %.1f s of healing (took %s)"
                                     % (config.leader_deadline,
                                        _seconds(report.leader_after_heal)))
        if leader is None:
            return
        if self._membership_run():
            report.final_configuration = "%s voters, %s learners (config index %d)" % (
                ",".join(leader.get("voters") or ()) or "no",
                ",".join(leader.get("learners") or ()) or "no", leader.get("config_index", 0))
        problem = self._configuration_problem(leader)
        if problem:
            report.violations.append("membership after heal: " + problem)
        members = self._final_members(leader) or sorted(self.cluster.nodes)
        target = leader["commit_index"]
        while time.monotonic() - healed < config.catchup_deadline + 20:
            statuses = self._statuses()
            if all(statuses.get(i) is not None and statuses[i]["applied_index"] >= target
                   for i in members):
                report.caught_up_after_heal = time.monotonic() - healed
                break
            time.sleep(0.1)
        if report.caught_up_after_heal is None or \
                report.caught_up_after_heal > config.catchup_deadline:
            report.violations.append(
                "liveness: not every member of the final configuration (%s) applied index %d "
                "within %.1f s of healing (took %s): %r"
                % (",".join(members), target, config.catchup_deadline,
                   _seconds(report.caught_up_after_heal),
                   {i: s and (s["role"], s["term"], s["applied_index"])
                    for i, s in self._statuses().items()}))

    def _settle(self, report: Report) -> None:
        """With the clients stopped, wait until every member of the final configuration
        applied everything committed (applied == commit == the leader's commit), and that
        configuration is the founding one."""
        deadline = time.monotonic() + 30
        leader = None
        while time.monotonic() < deadline:
            statuses = self._statuses()
            leader = self._agreed_leader(statuses)
            if leader is not None and all(
                    statuses.get(i) is not None
                    and statuses[i]["applied_index"] >= leader["commit_index"]
                    and statuses[i]["commit_index"] == leader["commit_index"]
                    for i in self._final_members(leader) or statuses):
                problem = self._configuration_problem(leader)
                if problem:
                    report.violations.append("membership once settled: " + problem)
                return
            time.sleep(0.1)
        report.violations.append("the nodes did not settle within 30 s after the clients "
                                 "stopped (final configuration %s): %r" % (
                                     leader and self._final_members(leader),
                                     {i: s and (s["role"], s["term"], s["commit_index"],
                                                s["applied_index"])
                                      for i, s in self._statuses().items()},))

    def settle(self) -> List[str]:
        """Wait until every node applied everything committed; the problems, if not."""
        report = Report(self.config)
        self._settle(report)
        return report.violations

    def _check(self, report: Report, records) -> None:
        started = time.monotonic()
        partitions = self.workload.project(records)
        results = check_partitions(partitions, self.workload.model_for,
                                   max_steps=self.config.max_steps)
        report.checker_seconds = time.monotonic() - started
        report.partitions = len(results)
        for key, result in results.items():
            if result.linearizable is False:
                report.violations.append("%s: %s" % (key, result.message))
            elif result.linearizable is None:
                report.no_verdict.append("%s: %s (%d ops)" % (key, result.message, result.ops))

    def _save(self, report: Report, nemesis: Optional[Nemesis]) -> str:
        config = self.config
        folder = os.path.join(os.path.abspath(config.out), "%s-seed%d-%s" % (
            config.workload, config.seed, time.strftime("%Y%m%d-%H%M%S")))
        os.makedirs(folder, exist_ok=True)
        self.history.save(os.path.join(folder, "history.jsonl"))
        if nemesis is not None:
            nemesis.save(os.path.join(folder, "nemesis.jsonl"))
        if self.cluster is not None:
            for node in self.cluster.nodes.values():
                if os.path.exists(node.log_path):
                    shutil.copy(node.log_path, os.path.join(folder, "%s.log" % node.node_id))
        with open(os.path.join(folder, "run.json"), "w") as f:
            json.dump({"config": attrs.asdict(config), "seed": config.seed,
                       "replay": config.command(),
                       "products": getattr(self.workload, "products", None)}, f, indent=2,
                      sort_keys=True)
        with open(os.path.join(folder, "report.txt"), "w") as f:
            f.write(report.table() + "\n")
        with open(os.path.join(folder, "replay.sh"), "w") as f:
            f.write("#!/bin/sh\n%s\n" % config.command())
        return folder


def recheck(folder: str, max_steps: int = DEFAULT_MAX_STEPS) -> List[str]:
    """Run the checker again on a saved history (``python -m txraft.tools.chaos check DIR``)."""
    with open(os.path.join(folder, "run.json")) as f:
        run = json.load(f)
    workload = load_workload(run["config"]["workload"])()
    if run.get("products"):
        workload.products = dict(run["products"])
    history = History.load(os.path.join(folder, "history.jsonl"))
    results = check_partitions(workload.project(history.records()), workload.model_for,
                               max_steps=max_steps)
    out = []
    for key, result in results.items():
        if result.linearizable is not True:
            out.append("%s: %s" % (key, result.message))
    return out

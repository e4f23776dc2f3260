"""The nemesis: a seeded schedule of faults injected into a ``LocalCluster``.

One fault at a time, each followed by its healing and a quiet spell:

* ``kill``: SIGKILL of one node (the leader more often than not; on five nodes sometimes
  two), restarted from its data directory after a while;
* ``pause``: SIGSTOP of one node (often the leader) for one to ten election timeouts, then
  SIGCONT;
* ``partition``: a random minority cut off from the majority, both ways;
* ``isolate_leader``: the leader alone on one side;
* ``one_way``: one node stops hearing from (or reaching) some others while the other
  direction works;
* ``lossy``: some nodes lose a fraction of the datagrams they send;
* ``kill_all``: SIGKILL of every node at once, all restarted a moment later (nothing
  acknowledged may be lost: durability);
* ``crash_in_partition``: a partition, during which one node is killed and restarted
  (with the transport backend it comes back without its own fault settings, so the cut
  becomes one-sided; in a network namespace its routes stay and the cut stays whole).

Membership actions, through the cluster's HTTP API with its secret
(``txraft.tools.chaos.membership``); not in the default mix (``MEMBERSHIP_KINDS``: named
in ``--faults``, or all of them added by ``--membership``):

* ``remove_add``: remove a member (the leader about half the time), keep it out for one
  to four seconds, its process running or stopped, while watching that it does not
  disturb the others (a removed server that starts an election is a violation); then,
  as ``docs/operations.md`` says, stop it, empty its data directory (a removed server's
  log must not come back as a new member's), start it, add it back as a learner and
  wait until the leader promotes it;
* ``wipe_replace``: ``kill -9`` of a follower, its data directory emptied, then the
  documented replacement: removed from the configuration while down, started empty,
  added back as a learner, caught up (snapshot or log) and promoted by the leader;
* in a third of these two, the leader is paused (SIGSTOP, two to eight election
  timeouts) just after the removal was sent: the change meets no answer, 503s or a new
  leader, is retried, and must still happen once;
* ``transfer``: ``POST /raft/leader`` with ``{}`` or ``{"id": <a follower>}``; a 200
  answer must name a new leader (the asked one, if any) that the cluster then agrees
  on in the answer's term, else it is an anomaly.  Nodes without the route (404
  ``not_found``, 405) make it "unsupported": logged and said once, counted apart, and
  later transfers send nothing.

While a member is out, clients do not send to it (``serving``); it serves again once
promoted.  A remove_add or wipe_replace that cannot finish (each step has a deadline)
is an error of the run, and the nemesis puts the configuration back (``restore``)
before going on; ``heal_all`` does that too, so that a run ends with every founding
member a voter.  A transfer that is refused is counted, not an error.

Network faults go through a backend: by default ``TransportFaults``, each node's
``/admin/faults`` endpoint (``txraft.http.admin``), so nothing here needs root; with ``--net
netns``, ``txraft.tools.chaos.netns.NetnsFaults``, where the kernel makes the cuts (blackhole
routes between network namespaces) and only loss stays on the transport.  Cuts are
directed pairs ``(a, b)``: what ``a`` sends to ``b`` is lost.  The choice of fault, its
shape and its timing come from the
seed; which node is "the leader" is found at run time, so a replay with the same seed
reproduces the schedule's kinds and timing, not every target.  Everything done is logged
in ``events`` with the harness's monotonic clock.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from txraft.tools.chaos.membership import MembershipClient, Outcome, wipe
from txraft.tools.localcluster import LocalCluster, http

MEMBERSHIP_KINDS = ("remove_add", "wipe_replace", "transfer")
FAULT_KINDS = ("kill", "pause", "partition", "isolate_leader", "one_way", "lossy",
               "kill_all", "crash_in_partition") + MEMBERSHIP_KINDS
#: The default mix: every fault but the membership actions.
DEFAULT_WEIGHTS = {"kill": 3, "pause": 3, "partition": 2, "isolate_leader": 2,
                   "one_way": 2, "lossy": 2, "kill_all": 1, "crash_in_partition": 1}
#: What ``--membership`` adds to the mix (a remove_add or wipe_replace lasts several
#: times longer than a kill: a learner is promoted after two seconds caught up).
MEMBERSHIP_WEIGHTS = {"remove_add": 2, "wipe_replace": 2, "transfer": 2}
WEIGHTS = dict(DEFAULT_WEIGHTS, **MEMBERSHIP_WEIGHTS)
#: How each membership action ended, as the report counts them.
#: "unconfirmed": done transfers (counted in "done" too) whose new leader lost the
#: leadership before a majority could be seen following it.
OUTCOMES = ("done", "failed", "skipped", "unsupported", "unconfirmed")


class Halted(Exception):
    """The harness gave up (``Nemesis.halt``): a membership action stops where it is."""


class TransportFaults:
    """Network faults in each node's UDP transport, set through its admin endpoint."""

    name = "transport"

    def __init__(self, cluster: LocalCluster, token: str, log: Callable[..., None],
                 request: Callable[..., Any] = http):
        self.cluster = cluster
        self.token = token
        self.log = log
        self.request = request

    def cut(self, cuts: Iterable[Tuple[str, str]]) -> None:
        """Drop what ``a`` sends to ``b`` for each ``(a, b)``, at both ends (``drop_to``
        at the sender, ``drop_from`` at the receiver)."""
        drop_to: Dict[str, Set[str]] = {}
        drop_from: Dict[str, Set[str]] = {}
        for a, b in cuts:
            drop_to.setdefault(a, set()).add(b)
            drop_from.setdefault(b, set()).add(a)
        for node_id in sorted(set(drop_to) | set(drop_from)):
            spec = {}
            if node_id in drop_to:
                spec["drop_to"] = sorted(drop_to[node_id])
            if node_id in drop_from:
                spec["drop_from"] = sorted(drop_from[node_id])
            self._set(node_id, spec)

    def lossy(self, node_ids: Iterable[str], rate: float) -> None:
        for node_id in node_ids:
            self._set(node_id, {"loss_rate": rate})

    def _set(self, node_id: str, spec: Dict[str, Any]) -> bool:
        node = self.cluster.nodes[node_id]
        if not node.alive() or node.paused:
            return False
        result = self.request("PUT", node.url + "/admin/faults", json.dumps(spec).encode(),
                              {"Authorization": "Bearer " + self.token,
                               "Content-Type": "application/json"}, timeout=3.0)
        if result.status != 200:
            self.log("admin_error", node=node_id, status=result.status, error=result.error)
            return False
        return True

    def heal(self) -> None:
        for node_id, node in self.cluster.nodes.items():
            if node.alive() and not node.paused:
                result = self.request("DELETE", node.url + "/admin/faults",
                                      headers={"Authorization": "Bearer " + self.token},
                                      timeout=3.0)
                if result.status != 200:
                    self.log("admin_error", node=node_id, status=result.status,
                             error=result.error)


def partition_cuts(minority: Iterable[str], majority: Iterable[str]) -> Set[Tuple[str, str]]:
    """Both directions between every node of one side and every node of the other."""
    minority, majority = list(minority), list(majority)
    return {(a, b) for a in minority for b in majority} | \
        {(b, a) for a in minority for b in majority}


def one_way_cuts(source: str, targets: Iterable[str], deaf: bool) -> Set[Tuple[str, str]]:
    """``source`` cannot hear ``targets`` (``deaf``), or cannot reach them."""
    return {(t, source) if deaf else (source, t) for t in targets}


class Nemesis:
    """Runs the fault schedule in its own thread until ``stop`` is set, then heals.

    ``network(log)`` makes the backend for cuts and loss, given the nemesis's ``log``
    (default: ``TransportFaults``).  Membership actions use ``membership(log, serving,
    pause)`` (default: a ``MembershipClient`` with the cluster's secret), ``pause`` for
    their polls (real time by default: they must finish even once stopped),
    ``membership_seconds`` as each step's deadline, and pause the leader during a
    removal with ``failover_chance``.  ``say`` prints one line for the
    operator (an unsupported transfer).  ``wait(seconds)`` is how the schedule sleeps:
    True when stopped meanwhile (default: on the ``stop`` event, in real time).
    """

    def __init__(self, cluster: LocalCluster, seed: int, admin_token: str,
                 election_timeout_seconds: float, clock: Callable[[], float] = time.monotonic,
                 weights: Optional[Dict[str, int]] = None, quiet_seconds=(0.5, 2.0),
                 fault_seconds=(1.0, 5.0),
                 network: Optional[Callable[[Callable[..., None]], Any]] = None,
                 membership: Optional[Callable[..., Any]] = None,
                 pause: Callable[[float], Any] = time.sleep, membership_seconds: float = 30.0,
                 say: Callable[[str], Any] = lambda line: None,
                 wait: Optional[Callable[[float], bool]] = None, failover_chance: float = 1 / 3):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.token = admin_token
        self.election_timeout = election_timeout_seconds
        self.clock = clock
        self.t0 = clock()
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.quiet_seconds = quiet_seconds
        self.fault_seconds = fault_seconds
        self.stop = threading.Event()
        self.halted = threading.Event()
        self._wait = wait or self.stop.wait
        self.events: List[Dict[str, Any]] = []
        self.counts: collections.Counter = collections.Counter()
        self.errors: List[str] = []
        #: Contract breaches seen by the membership actions (reported, like 500s).
        self.anomalies: List[str] = []
        self.outcomes: Dict[str, collections.Counter] = {
            kind: collections.Counter() for kind in MEMBERSHIP_KINDS}
        self.leader_changes_while_out = 0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if network is None:
            network = lambda log: TransportFaults(cluster, admin_token, log)
        self.network = network(self.log)
        self.founders = sorted(cluster.nodes)
        #: Nodes out of the configuration, or in it but not promoted again yet.
        self.out: frozenset = frozenset()
        #: Nodes whose data directory was emptied while they were still members.
        self.wiped: Set[str] = set()
        self.membership_enabled = any(kind in MEMBERSHIP_KINDS for kind in self.weights)
        self.membership_seconds = membership_seconds
        self.pause = pause
        self.say = say
        self.transfer_unsupported = False
        self.failover_chance = failover_chance
        if membership is None:
            membership = lambda log, serving, pause: MembershipClient(
                cluster, cluster.secret, log, serving, clock=clock, pause=pause,
                deadline_seconds=membership_seconds)
        self.members = membership(self.log, self._running, self._poll_pause)

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        if self.membership_enabled and not self.members.remember():
            self.errors.append("membership: could not read the configuration to start with")
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 150.0) -> None:
        """Stop injecting, wait for the current fault to end (a membership action's steps
        have deadlines: well within ``timeout``), then heal everything."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.errors.append("the nemesis's current fault did not end within %.0f s"
                                   % timeout)
                self.log("error", error="fault still running at finish")
                return
        self.heal_all()

    def halt(self, timeout: float = 10.0) -> None:
        """Stop injecting and wait for the schedule's thread, without healing (the harness
        is giving up: after this nothing restarts a node behind its back)."""
        self.stop.set()
        self.halted.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        kinds = sorted(self.weights)
        weights = [self.weights[k] for k in kinds]
        try:
            while not self._sleep(self.rng.uniform(*self.quiet_seconds)):
                kind = self.rng.choices(kinds, weights)[0]
                getattr(self, "_" + kind)()
        except Halted:
            self.log("halted")
        except Exception as e:  # a harness bug must not leave faults in place silently
            self.errors.append("nemesis crashed: %r" % (e,))
            self.log("error", error=repr(e))

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self._wait(seconds)

    def log(self, action: str, **fields: Any) -> None:
        event = {"t": round(self.clock() - self.t0, 4), "action": action}
        event.update(fields)
        with self._lock:
            self.events.append(event)

    # -- targets --------------------------------------------------------------------------

    def leader(self) -> Optional[str]:
        """The node that most recently claims to lead (highest term), if any."""
        best = None
        for node_id, node in self.cluster.nodes.items():
            status = node.status(timeout=0.5)
            if status and status.get("role") == "leader":
                if best is None or status["term"] > best[1]:
                    best = (node_id, status["term"])
        return best[0] if best else None

    def _pick(self, prefer_leader: float) -> str:
        ids = sorted(self.cluster.nodes)
        choice = self.rng.choice(ids)
        if self.rng.random() < prefer_leader:
            return self.leader() or choice
        return choice

    def _duration(self) -> float:
        return self.rng.uniform(*self.fault_seconds)

    # -- faults ---------------------------------------------------------------------------

    def _kill(self) -> None:
        ids = sorted(self.cluster.nodes)
        count = 1
        if len(ids) >= 5 and self.rng.random() < 0.3:
            count = (len(ids) - 1) // 2
        first = self._pick(0.6)
        others = [i for i in ids if i != first]
        self.rng.shuffle(others)
        victims = [first] + others[: count - 1]
        down = self.rng.uniform(0.3, 3.0)
        for node_id in victims:
            self.cluster.kill(node_id)
        self.counts["kill"] += 1
        self.log("kill", nodes=victims, down_seconds=round(down, 3))
        self._sleep(down)
        for node_id in victims:
            self._restart(node_id)

    def _restart(self, node_id: str) -> None:
        node = self.cluster.nodes[node_id]
        if not node.alive():
            self.cluster.start(node_id)
            self.log("restart", nodes=[node_id])

    def _pause(self) -> None:
        victim = self._pick(0.6)
        timeouts = self.rng.randint(1, 10)
        self.cluster.pause(victim)
        self.counts["pause"] += 1
        self.log("pause", nodes=[victim], election_timeouts=timeouts)
        self._sleep(timeouts * self.election_timeout)
        self.cluster.resume(victim)
        self.log("resume", nodes=[victim])

    def _partition(self, minority: Optional[List[str]] = None, kind: str = "partition") -> None:
        ids = sorted(self.cluster.nodes)
        if minority is None:
            shuffled = list(ids)
            self.rng.shuffle(shuffled)
            size = self.rng.randint(1, max(1, (len(ids) - 1) // 2))
            minority = sorted(shuffled[:size])
        majority = [i for i in ids if i not in minority]
        duration = self._duration()
        self.network.cut(partition_cuts(minority, majority))
        self.counts[kind] += 1
        self.log(kind, minority=minority, majority=majority, seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _isolate_leader(self) -> None:
        leader = self.leader()
        if leader is None:
            leader = self.rng.choice(sorted(self.cluster.nodes))
        self._partition([leader], kind="isolate_leader")

    def _one_way(self) -> None:
        ids = sorted(self.cluster.nodes)
        source = self._pick(0.5)
        others = [i for i in ids if i != source]
        targets = sorted(self.rng.sample(others, self.rng.randint(1, len(others))))
        deaf = self.rng.random() < 0.5  # source cannot hear targets; else cannot reach them
        duration = self._duration()
        self.network.cut(one_way_cuts(source, targets, deaf))
        self.counts["one_way"] += 1
        self.log("one_way", node=source, others=targets,
                 direction="cannot_hear" if deaf else "cannot_reach", seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _lossy(self) -> None:
        ids = sorted(self.cluster.nodes)
        nodes = sorted(self.rng.sample(ids, self.rng.randint(1, len(ids))))
        rate = round(self.rng.uniform(0.1, 0.5), 3)
        duration = self._duration()
        self.network.lossy(nodes, rate)
        self.counts["lossy"] += 1
        self.log("lossy", nodes=nodes, loss_rate=rate, seconds=round(duration, 3))
        self._sleep(duration)
        self.heal_network()

    def _kill_all(self) -> None:
        ids = sorted(self.cluster.nodes)
        down = self.rng.uniform(0.2, 2.0)
        for node_id in ids:
            self.cluster.kill(node_id)
        self.counts["kill_all"] += 1
        self.log("kill_all", nodes=ids, down_seconds=round(down, 3))
        self._sleep(down)
        for node_id in ids:
            self._restart(node_id)

    def _crash_in_partition(self) -> None:
        ids = sorted(self.cluster.nodes)
        shuffled = list(ids)
        self.rng.shuffle(shuffled)
        minority = sorted(shuffled[: self.rng.randint(1, max(1, (len(ids) - 1) // 2))])
        majority = [i for i in ids if i not in minority]
        victim = self.rng.choice(ids)
        before, down, after = (self.rng.uniform(0.3, 2.0), self.rng.uniform(0.2, 1.5),
                               self.rng.uniform(0.5, 2.0))
        self.network.cut(partition_cuts(minority, majority))
        self.counts["crash_in_partition"] += 1
        self.log("crash_in_partition", minority=minority, majority=majority, victim=victim,
                 seconds=round(before + down + after, 3))
        self._sleep(before)
        self.cluster.kill(victim)
        self.log("kill", nodes=[victim])
        self._sleep(down)
        self._restart(victim)
        self._sleep(after)
        self.heal_network()

    # -- membership actions -----------------------------------------------------------

    def serving(self) -> List[str]:
        """The nodes clients should talk to: all but those out of the configuration or
        not promoted again yet."""
        out = self.out
        return [i for i in sorted(self.cluster.nodes) if i not in out]

    def _running(self) -> List[str]:
        """Serving nodes whose process runs (where membership requests go)."""
        return [i for i in self.serving()
                if self.cluster.nodes[i].alive() and not self.cluster.nodes[i].paused]

    def _poll_pause(self, seconds: float) -> None:
        if self.halted.is_set():
            raise Halted()
        self.pause(seconds)

    def _agreed_leader(self, deadline_seconds: float,
                       accept: Callable[[str, int], bool] = lambda leader, term: True
                       ) -> Optional[Tuple[str, int, List[str]]]:
        """A leader that a majority of its voters follow in its term, among the serving
        nodes: ``(id, term, voters)``, or None after ``deadline_seconds``."""
        deadline = self.clock() + deadline_seconds
        while True:
            statuses = {i: self.cluster.nodes[i].status(timeout=0.5) for i in self._running()}
            for node_id, s in sorted(statuses.items()):
                if not s or s["role"] != "leader" or not accept(node_id, s["term"]):
                    continue
                voters = list(s.get("voters") or statuses)
                following = sum(1 for v in voters if statuses.get(v) and statuses[v]["term"]
                                == s["term"] and statuses[v]["leader_id"] == node_id)
                if following >= len(voters) // 2 + 1:
                    return node_id, s["term"], voters
            if self.clock() > deadline:
                return None
            self._poll_pause(0.05)

    def _take_out(self, node_id: str) -> None:
        self.out = self.out | {node_id}

    def _bring_back(self, node_id: str) -> None:
        self.out = self.out - {node_id}

    def _start_empty(self, node_id: str) -> None:
        """Stop ``node_id`` if it runs, empty its data directory, start it."""
        if self.halted.is_set():
            raise Halted()
        node = self.cluster.nodes[node_id]
        if node.alive():
            self.cluster.kill(node_id)
            self.log("kill", nodes=[node_id])
        removed = wipe(node.data_dir)
        self.log("wipe", node=node_id, removed=removed)
        self.cluster.start(node_id)
        self.log("start_empty", node=node_id)

    def _done(self, kind: str, node_id: Optional[str], started: float, **fields: Any) -> None:
        self.outcomes[kind]["done"] += 1
        self.log(kind + "_done", node=node_id, seconds=round(self.clock() - started, 3), **fields)

    def _failed(self, kind: str, node_id: Optional[str], step: str, started: float,
                outcome: Optional[Outcome] = None, detail: str = "") -> None:
        """A membership action that could not finish: an error of the run; the
        configuration is put back before the schedule goes on."""
        self.outcomes[kind]["failed"] += 1
        if outcome is not None:
            detail = detail or "HTTP %d %s after %d request(s), %.1f s: %s" % (
                outcome.status, outcome.code, outcome.attempts, outcome.seconds, outcome.detail)
        self.log(kind + "_failed", node=node_id, step=step, detail=detail,
                 seconds=round(self.clock() - started, 3))
        self.errors.append("membership: %s of %s failed at %s: %s" % (kind, node_id, step, detail))
        self.restore()

    def _skipped(self, kind: str, reason: str) -> None:
        self.outcomes[kind]["skipped"] += 1
        self.log(kind + "_skipped", reason=reason)

    def _rejoin(self, kind: str, node_id: str, started: float) -> bool:
        """Add ``node_id`` (running on an empty directory) as a learner and wait for the
        leader to promote it; back among the serving nodes then."""
        added = self.members.add(node_id)
        if not added.ok:
            self._failed(kind, node_id, "add", started, added)
            return False
        promoted = self.members.wait_voter(node_id)
        if not promoted.ok:
            self._failed(kind, node_id, "promotion", started, promoted)
            return False
        status = self.cluster.nodes[node_id].status(timeout=1.0) or {}
        installed = status.get("counters", {}).get("snapshots_installed", 0)
        self.log("promoted", node=node_id, seconds_after_add=round(promoted.seconds, 3),
                 config_index=promoted.body["config_index"],
                 caught_up_by="snapshot" if installed else "log")
        self._bring_back(node_id)
        return True

    def _remove_add(self) -> None:
        want_leader = self.rng.random() < 0.5
        keep_running = self.rng.random() < 0.5
        out_seconds = self.rng.uniform(1.0, 4.0)
        pick = self.rng.random()
        failover = self._failover_plan()
        self.counts["remove_add"] += 1
        started = self.clock()
        agreed = self._agreed_leader(10.0)
        if agreed is None:
            self._skipped("remove_add", "no agreed leader within 10 s")
            return
        leader, term, voters = agreed
        followers = [v for v in sorted(voters) if v != leader]
        victim = leader if want_leader or not followers else followers[int(pick * len(followers))]
        self.log("remove_add", node=victim, was_leader=victim == leader, leader=leader, term=term,
                 keep_running=keep_running, out_seconds=round(out_seconds, 3))
        self._take_out(victim)
        removed = self._during_failover(failover, lambda: self.members.remove(victim))
        if not removed.ok:
            self._failed("remove_add", victim, "remove", started, removed)
            return
        agreed = self._agreed_leader(self.membership_seconds)
        if agreed is None:
            self._failed("remove_add", victim, "election without it", started,
                         detail="no agreed leader among the others within %.0f s"
                         % self.membership_seconds)
            return
        leader_after, term_after, _ = agreed
        self.log("leader_without", node=victim, leader=leader_after, term=term_after,
                 seconds=round(self.clock() - started, 3))
        if not keep_running:
            self.cluster.stop(victim)
            self.log("stop", nodes=[victim])
        self._watch_out(victim, out_seconds, leader_after, term_after)
        self._start_empty(victim)
        if self._rejoin("remove_add", victim, started):
            self._done("remove_add", victim, started)

    def _failover_plan(self) -> Optional[Tuple[float, int]]:
        """Whether this action's removal meets a leader pause (a third of the time):
        ``(delay before the pause, its length in election timeouts)``; drawn whatever
        the answer, so that the schedule does not depend on it."""
        meets = self.rng.random() < self.failover_chance
        delay, timeouts = self.rng.uniform(0.0, 0.05), self.rng.randint(2, 8)
        return (delay, timeouts) if meets else None

    def _during_failover(self, plan: Optional[Tuple[float, int]],
                         change: Callable[[], Outcome]) -> Outcome:
        """``change()``, with the leader paused (SIGSTOP) ``plan[0]`` seconds after it
        was sent, for ``plan[1]`` election timeouts: the change then meets no answer,
        503s or a new leader, and must still happen exactly once (the client retries,
        reading the configuration after an unknown outcome).  The pause is over before
        this returns."""
        leader = self.leader() if plan is not None else None  # also a leader being removed
        if leader is None:
            return change()
        delay, timeouts = plan

        def pause_leader():
            self.pause(delay)
            self.cluster.pause(leader)
            self.log("pause", nodes=[leader], election_timeouts=timeouts,
                     during="membership change")
            self.pause(timeouts * self.election_timeout)
            self.cluster.resume(leader)
            self.log("resume", nodes=[leader])

        thread = threading.Thread(target=pause_leader, name="nemesis-failover", daemon=True)
        thread.start()
        try:
            return change()
        finally:
            thread.join()

    def _watch_out(self, victim: str, seconds: float, leader: str, term: int) -> None:
        """For ``seconds``, poll every node: a removed server must not disturb the others
        (dissertation 4.2.3).  Its going to a term above the one the others were in once
        it was out means it ran an election: a violation.  A leader change among the
        others without that is logged (a loaded machine can miss a heartbeat)."""
        end = self.clock() + seconds
        victim_term = None  # None while it is never seen running
        seen = (leader, term)
        while True:
            status = self.cluster.nodes[victim].status(timeout=0.5)
            if status is not None:
                victim_term = max(victim_term or 0, status["term"])
            for node_id in self._running():
                s = self.cluster.nodes[node_id].status(timeout=0.5)
                if s and s["role"] == "leader" and (node_id, s["term"]) != seen \
                        and s["term"] >= seen[1]:
                    self.leader_changes_while_out += 1
                    self.log("leader_changed_while_out", node=victim, leader=node_id,
                             term=s["term"], was=list(seen), removed_term=victim_term)
                    seen = (node_id, s["term"])
            if self._sleep(0.2) or self.clock() >= end:
                break
        if victim_term is not None and victim_term > term:
            self.errors.append("membership: %s, removed, went to term %d while the others were "
                               "in term %d: a removed server ran an election" % (
                                   victim, victim_term, term))
        self.log("out", node=victim, removed_term=victim_term, leader=seen[0], term=seen[1])

    def _wipe_replace(self) -> None:
        down_seconds = self.rng.uniform(0.2, 2.0)
        pick = self.rng.random()
        failover = self._failover_plan()
        self.counts["wipe_replace"] += 1
        started = self.clock()
        agreed = self._agreed_leader(10.0)
        if agreed is None:
            self._skipped("wipe_replace", "no agreed leader within 10 s")
            return
        leader, term, voters = agreed
        followers = [v for v in sorted(voters) if v != leader]
        if not followers:
            self._skipped("wipe_replace", "no follower")
            return
        victim = followers[int(pick * len(followers))]
        self.log("wipe_replace", node=victim, leader=leader, term=term,
                 down_seconds=round(down_seconds, 3))
        self._take_out(victim)
        self.cluster.kill(victim)
        self.log("kill", nodes=[victim])
        self.wiped.add(victim)
        removed = wipe(self.cluster.nodes[victim].data_dir)
        self.log("wipe", node=victim, removed=removed)
        self._sleep(down_seconds)
        # docs/operations.md: remove it before it runs again, since a wiped voter could
        # vote a second time in a term it voted in before.
        outcome = self._during_failover(failover, lambda: self.members.remove(victim))
        if not outcome.ok:
            self._failed("wipe_replace", victim, "remove", started, outcome)
            return
        self.wiped.discard(victim)
        self.cluster.start(victim)
        self.log("start_empty", node=victim)
        if self._rejoin("wipe_replace", victim, started):
            self._done("wipe_replace", victim, started)

    def _transfer(self) -> None:
        anyone = self.rng.random() < 0.5
        pick = self.rng.random()
        self.counts["transfer"] += 1
        if self.transfer_unsupported:
            self.outcomes["transfer"]["unsupported"] += 1
            self.log("transfer_skipped", reason="POST /raft/leader is not supported")
            return
        started = self.clock()
        agreed = self._agreed_leader(10.0)
        if agreed is None:
            self._skipped("transfer", "no agreed leader within 10 s")
            return
        leader, term, voters = agreed
        others = [v for v in sorted(voters) if v != leader]
        target = None if anyone or not others else others[int(pick * len(others))]
        self.log("transfer", leader=leader, term=term, target=target)
        outcome = self.members.transfer(target)
        if outcome.code == "unsupported":
            self.transfer_unsupported = True
            self.outcomes["transfer"]["unsupported"] += 1
            self.log("transfer_unsupported", status=outcome.status, detail=outcome.detail)
            self.say("transfer: POST /raft/leader answered %d (%s): these nodes have no "
                     "leadership transfer; transfers are counted as unsupported from now on"
                     % (outcome.status, outcome.detail[:80]))
            return
        if not outcome.ok:
            self.outcomes["transfer"]["failed"] += 1
            self.log("transfer_failed", target=target, status=outcome.status, code=outcome.code,
                     attempts=outcome.attempts, seconds=round(outcome.seconds, 3),
                     detail=outcome.detail[:300])
            return
        answer = outcome.body if isinstance(outcome.body, dict) else {}
        named, named_term = answer.get("leader"), answer.get("term")
        # After an attempt whose outcome was unknown (a 504), the retry is a transfer
        # of its own from whoever leads by then: the answer names that leader.
        was = answer.get("previous_leader") or leader
        problem = None
        if not isinstance(named, str) or not isinstance(named_term, int):
            problem = "answered 200 without a leader and a term: %r" % (outcome.body,)
        elif target is not None and named != target:
            problem = "asked for %s, answered 200 naming %s" % (target, named)
        elif named == was and named != target:
            # (named == was == target: the request reached the target after it had
            # become the leader, which answers that it already leads.)
            problem = "answered 200 naming the leader it was asked to hand over from"
        else:
            agreed = self._agreed_leader(5.0, lambda node_id, t: t >= named_term)
            if agreed is not None and agreed[1] == named_term and agreed[0] != named:
                problem = ("answered 200 naming %s in term %d, but a majority followed %s "
                           "in that term" % (named, named_term, agreed[0]))
            elif agreed is None or agreed[:2] != (named, named_term):
                # Leadership moved on (or nobody led a majority) before it could be seen:
                # not a contradiction, and not a confirmation either.
                self.outcomes["transfer"]["unconfirmed"] += 1
                self.log("transfer_unconfirmed", target=target, leader=named, term=named_term,
                         agreed=agreed and list(agreed[:2]))
        if problem is not None:
            self.outcomes["transfer"]["failed"] += 1
            self.anomalies.append("transfer from %s: %s" % (leader, problem))
            self.log("transfer_failed", target=target, detail=problem)
            return
        self._done("transfer", target, started, leader=named, term=named_term, was=leader,
                   attempts=outcome.attempts)

    def restore(self) -> List[str]:
        """Put every founding member back as a voter (after a failed action, and when
        healing); the problems that remain.

        A member whose disk was wiped is removed first if it still is one (a wiped voter
        must not count again), then, like any node out of the configuration, started on
        an empty directory and added back; a learner is waited for, then promoted."""
        if not self.membership_enabled:
            return []
        started = self.clock()
        deadline = started + self.membership_seconds
        doc = None
        while doc is None:
            doc = self.members.members()
            if doc is None:
                if self.clock() > deadline:
                    return ["could not read the configuration within %.0f s"
                            % self.membership_seconds]
                self._poll_pause(0.2)
        roles = self.members.roles(doc)
        problems = []
        for node_id in self.founders:
            role = roles.get(node_id)
            if role == "voter" and node_id not in self.wiped:
                if not self.cluster.nodes[node_id].alive():
                    self.cluster.start(node_id)
                    self.log("restart", nodes=[node_id])
                self._bring_back(node_id)
                continue
            self.log("repair", node=node_id, role=role, wiped=node_id in self.wiped)
            if role == "voter":
                self.cluster.kill(node_id)
                removed = self.members.remove(node_id)
                if not removed.ok:
                    problems.append("%s: wiped, still a voter, and its removal failed: HTTP "
                                    "%d %s" % (node_id, removed.status, removed.code))
                    continue
                role = None
            if role is None:
                # Out of the configuration: its log must not come back (operations.md).
                self._start_empty(node_id)
                added = self.members.add(node_id)
                if not added.ok:
                    problems.append("%s: add: HTTP %d %s" % (node_id, added.status, added.code))
                    continue
            self.wiped.discard(node_id)
            promoted = self.members.wait_voter(node_id, 15.0)
            if not promoted.ok:
                forced = self.members.promote(node_id)
                promoted = self.members.wait_voter(node_id, 5.0) if forced.ok else promoted
            if promoted.ok:
                self._bring_back(node_id)
            else:
                problems.append("%s: not a voter again: %s" % (node_id, promoted.detail))
        self.log("restored", problems=problems, seconds=round(self.clock() - started, 3))
        return problems

    # -- healing --------------------------------------------------------------------------

    def heal_network(self) -> None:
        self.network.heal()
        self.log("heal_network")

    def heal_all(self, boot_timeout: float = 30.0) -> None:
        """Resume every paused node, restart every dead one and wait until it serves
        HTTP again (a process's boot time is not the cluster's recovery time), clear
        every network fault, then put the configuration back (``restore``)."""
        for node_id, node in sorted(self.cluster.nodes.items()):
            if node.paused:
                self.cluster.resume(node_id)
                self.log("resume", nodes=[node_id])
        # A wiped member is not started on its empty directory while it may still be a
        # voter: ``restore`` replaces it.
        restarted = [node_id for node_id in sorted(self.cluster.nodes)
                     if not self.cluster.nodes[node_id].alive() and node_id not in self.wiped]
        for node_id in restarted:
            self._restart(node_id)
        # Nodes the schedule itself restarted a moment ago may still be booting, too.
        deadline = time.monotonic() + boot_timeout
        waiting = [i for i in sorted(self.cluster.nodes) if self.cluster.nodes[i].alive()]
        while waiting and time.monotonic() < deadline:
            waiting = [i for i in waiting if http(
                "GET", self.cluster.nodes[i].url + "/health", timeout=1.0).status != 200]
            if waiting:
                time.sleep(0.05)
        self.log("booted", restarted=restarted, not_serving=waiting)
        self.heal_network()
        for problem in self.restore():
            self.errors.append("membership after healing: " + problem)
        self.log("healed")

    def summary(self) -> Dict[str, int]:
        return {kind: self.counts.get(kind, 0) for kind in FAULT_KINDS}

    def membership_summary(self) -> Dict[str, Dict[str, int]]:
        """``{kind: {outcome: count}}`` for the membership actions in the mix."""
        return {kind: {o: self.outcomes[kind].get(o, 0) for o in OUTCOMES}
                for kind in MEMBERSHIP_KINDS if kind in self.weights}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            for event in list(self.events):
                f.write(json.dumps(event, sort_keys=True) + "\n")

"""Randomized simulation: many seeds, a different mix of faults each, invariants after
every event, liveness after healing.

Each seed is one ``txraft.testing.sim_faults.run_seed``: a 3-node (even seeds) or 5-node
(odd seeds) cluster with 10 ms ticks, a 15-tick election timeout (150-300 ms) and
5-tick heartbeats, run for 60 simulated seconds under the seed's mix of loss,
duplication, long delays, clock skew, symmetric/one-way/bridged partitions, crashes
(also inside a Ready: after the early sends, mid-write, between its steps), pauses and log compaction; then every
fault is healed and the cluster must elect a stable leader and resolve every pending
operation within bounds, and then stay quiet.

Environment:

- ``TXRAFT_SEED=N`` replays seed N alone (a failure prints this command).
- ``TXRAFT_SIM_SEEDS=N`` runs N seeds (default 200) -- raise it for long soaks;
  ``TXRAFT_SIM_SEED_START=K`` starts at seed K.
- ``TXRAFT_SIM_PROCESSES=P`` spreads seeds over P worker processes (default: up to 2).
- ``TXRAFT_SIM_REPORT=1`` prints the coverage table.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from txraft.testing.sim import CRASH_POINTS
from txraft.testing.sim_faults import run_seed

REPLAY = "TXRAFT_SEED=%(seed)d python -m twisted.trial tests.unit.test_sim_random"
TRACE_TAIL = 60


def _settings() -> Dict[str, Any]:
    env = os.environ
    if env.get("TXRAFT_SEED"):
        seeds = [int(env["TXRAFT_SEED"])]
    else:
        start = int(env.get("TXRAFT_SIM_SEED_START", "0"))
        seeds = list(range(start, start + int(env.get("TXRAFT_SIM_SEEDS", "200"))))
    processes = int(env.get("TXRAFT_SIM_PROCESSES", str(min(2, os.cpu_count() or 1))))
    return {"seeds": seeds, "processes": max(1, min(processes, len(seeds)))}


def _run_one(seed: int, replaying: bool = False) -> Dict[str, Any]:
    """One seed, summarized (picklable, for worker processes).  A replay records the
    event trace and shows its last events with the failure."""
    try:
        r = run_seed(seed, replay=REPLAY, record_trace=replaying)
    except Exception as e:
        if isinstance(e, AssertionError):
            error = "%s: %s" % (type(e).__name__, e)
        else:  # the core refused (e.g. SafetyViolation) or the harness broke
            error = "%s\n    replay: %s" % (traceback.format_exc(), REPLAY % {"seed": seed})
        sim = getattr(e, "simulation", None)
        if replaying and sim is not None:
            error += "\n    config: %r\n    last events:\n%s" % (
                sim.config, "\n".join("      %r" % (ev,) for ev in sim.trace[-TRACE_TAIL:]))
        return {"seed": seed, "error": error}
    return {
        "seed": seed,
        "error": None,
        "nodes": r.nodes,
        "stats": r.stats,
        "network": r.network,
        "leaders": r.leaders,
        "truncations": r.truncations,
        "leader_ms": r.leader_ms,
        "quiet_ms": r.quiet_ms,
        "events": r.events,
        "idle_messages": r.idle_messages,
    }


_cache: Dict[str, Any] = {}


def run_all() -> Dict[str, Any]:
    """Run the configured seeds once per test run (both tests below share them)."""
    if "run" in _cache:
        return _cache["run"]
    settings = _settings()
    seeds = settings["seeds"]
    started = time.monotonic()
    if settings["processes"] > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(settings["processes"]) as pool:
            results = list(pool.imap_unordered(_run_one, seeds, chunksize=2))
    else:
        results = [_run_one(seed, replaying=len(seeds) == 1) for seed in seeds]
    results.sort(key=lambda r: r["seed"])
    _cache["run"] = {
        "results": results,
        "seconds": time.monotonic() - started,
        "processes": settings["processes"],
    }
    return _cache["run"]


# What a seed counts as having reached; the coverage test asks for a share of seeds.
COVERAGE = {
    "leader change": lambda r: r["leaders"] >= 2,
    "stale response after a newer one": lambda r: (
        r["stats"].get("stale_responses", 0) + r["stats"].get("stale_rejections", 0) > 0),
    "stale AppendEntries (nothing new)": lambda r: r["stats"].get("stale_appends", 0) > 0,
    "log truncated on conflict": lambda r: r["truncations"] > 0,
    "read served": lambda r: r["stats"].get("reads_served", 0) > 0,
    "read failed (leadership lost)": lambda r: r["stats"].get("reads_failed", 0) > 0,
    "write outcome unknown": lambda r: r["stats"].get("writes_unknown", 0) > 0,
    "CheckQuorum step-down": lambda r: r["stats"].get("check_quorum_stepdowns", 0) > 0,
    "read sent to a deposed leader": lambda r: r["stats"].get("deposed_leader_reads", 0) > 0,
    "snapshot installed": lambda r: r["stats"].get("snapshots_installed", 0) > 0,
    "snapshot sent in several chunks": lambda r: r["stats"].get("snapshot_chunks_sent", 0)
    > r["stats"].get("snapshots_sent", 0) > 0,
    "crash inside a Ready": lambda r: sum(
        r["stats"].get("crashes_at_" + k, 0) for k in CRASH_POINTS) > 0,
    "crash after early sends, before the fsync": lambda r: r["stats"].get(
        "crashes_at_before_persist", 0) > 0,
    "torn write": lambda r: r["stats"].get("crashes_at_torn", 0) > 0,
    "duplicate delivered": lambda r: r["network"].get("duplicated", 0) > 0,
    "membership change committed": lambda r: r["stats"].get("config_changes_committed", 0) > 0,
    "learner promoted": lambda r: r["stats"].get("promotions_committed", 0) > 0,
    "member removed": lambda r: r["stats"].get("removals_committed", 0) > 0,
    "removed leader stepped down": lambda r: r["stats"].get("removed_leader_stepdowns", 0) > 0,
    "change refused (one at a time)": lambda r: r["stats"].get(
        "member_refused_change_in_progress", 0) > 0,
    "change refused (no-op not committed)": lambda r: r["stats"].get(
        "member_refused_leader_not_ready", 0) > 0,
    "leadership transferred": lambda r: r["stats"].get("transfers_completed", 0) > 0,
    "transfer refused (one at a time)": lambda r: r["stats"].get(
        "transfer_refused_transfer_in_progress", 0) > 0,
}

# Minimum share of seeds reaching each path; the share observed over seeds 0-199 when
# these were set is in the comment.  A drop below means the faults stopped reaching a
# path (e.g. the generator or the core changed), which needs a look, not a new number.
MINIMUM_SHARE = {
    "leader change": 0.9,                        # 99.0%
    "stale response after a newer one": 0.8,     # 100%
    "stale AppendEntries (nothing new)": 0.6,    # 83.0%
    "log truncated on conflict": 0.6,            # 87.5%
    "read served": 1.0,                          # 100%
    "read failed (leadership lost)": 0.7,        # 90.0%
    "write outcome unknown": 0.6,                # 86.5%
    "CheckQuorum step-down": 0.5,                # 79.0%
    "read sent to a deposed leader": 0.2,        # 39.5%
    "snapshot installed": 0.3,                   # 51.5%
    "snapshot sent in several chunks": 0.3,      # 51.5%
    "crash inside a Ready": 0.15,                # 23.5%
    "crash after early sends, before the fsync": 0.1,  # 19.5%
    "torn write": 0.1,                           # 18.0%
    "duplicate delivered": 0.45,                 # 65.5%
    "membership change committed": 0.25,         # 38.0%
    "learner promoted": 0.25,                    # 37.0%
    "member removed": 0.2,                       # 32.5%
    "removed leader stepped down": 0.2,          # 33.5%
    "change refused (one at a time)": 0.2,       # 32.5%
    "change refused (no-op not committed)": 0.04,  # 8.5%
    "leadership transferred": 0.25,              # 45.0%
    "transfer refused (one at a time)": 0.1,     # 22.5%
}


def coverage_table(results: List[Dict[str, Any]]) -> Dict[str, float]:
    ok = [r for r in results if r["error"] is None]
    if not ok:
        return {}
    return {name: sum(1 for r in ok if test(r)) / float(len(ok)) for name, test in COVERAGE.items()}


class RandomizedSimulationTests(SynchronousTestCase):
    def test_random_seeds_hold_every_invariant(self):
        """Paper Figure 3 and dissertation section 6.4, under faults: over every seed
        (default 200; TXRAFT_SIM_SEEDS for more), after every event, Election Safety,
        Leader Append-Only, Log Matching, Leader Completeness, State Machine Safety and
        linearizable reads hold, and once faults heal a stable leader appears and every
        pending operation resolves.  A failure lists each seed with its replay command."""
        run = run_all()
        failures = [r for r in run["results"] if r["error"] is not None]
        if failures:
            self.fail(
                "%d of %d seeds failed:\n\n%s"
                % (len(failures), len(run["results"]),
                   "\n\n".join("seed %d: %s" % (r["seed"], r["error"]) for r in failures))
            )
        if os.environ.get("TXRAFT_SIM_REPORT"):
            results = run["results"]
            sys.stdout.write(
                "\n%d seeds in %.1f s (%d processes), %d events checked, heal->leader max "
                "%d ms, heal->quiet max %d ms\n"
                % (len(results), run["seconds"], run["processes"],
                   sum(r["events"] for r in results), max(r["leader_ms"] for r in results),
                   max(r["quiet_ms"] for r in results))
            )
            for name, share in coverage_table(results).items():
                sys.stdout.write("  %-36s %5.1f%%\n" % (name, 100 * share))

    def test_faults_reach_the_tricky_paths(self):
        """The randomized faults are only worth something if they reach the paths where
        Raft implementations break: leader changes (section 5.2), stale and duplicated
        messages and responses over UDP (section 5.3), truncation of conflicting
        suffixes (Figure 7), reads served and failed (dissertation section 6.4), a
        leader stepping down without a quorum (section 6.2), snapshots (section 7),
        crashes in the middle of executing a Ready, and membership changes
        (dissertation chapter 4): learners promoted, members and leaders removed,
        changes refused while another is in progress or before the leader's no-op."""
        if os.environ.get("TXRAFT_SEED"):
            raise self.skipTest("coverage is measured over many seeds, not a replay")
        results = run_all()["results"]
        table = coverage_table(results)
        if len(results) < 50 or not table:
            raise self.skipTest("too few seeds for coverage figures")
        short = {
            name: (round(table[name], 3), minimum)
            for name, minimum in MINIMUM_SHARE.items()
            if table[name] < minimum
        }
        self.assertEqual(short, {}, "share of seeds reaching each path (got, wanted)")


class DeterminismTests(SynchronousTestCase):
    def test_same_seed_gives_the_identical_trace(self):
        """Determinism: every random choice comes from the seed, so running a seed twice
        gives the same event trace, event for event, and the same counters."""
        for seed in (4, 13):
            first = run_seed(seed, record_trace=True)
            second = run_seed(seed, record_trace=True)
            self.assertGreater(len(first.trace), 1000)
            self.assertEqual(first.trace, second.trace)
            self.assertEqual(first.stats, second.stats)
            self.assertEqual(first.network, second.network)

    def test_different_seeds_give_different_traces(self):
        """The seed really drives the run (a trace that ignored it would prove nothing)."""
        a = run_seed(4, duration_ms=5000, record_trace=True)
        b = run_seed(6, duration_ms=5000, record_trace=True)
        self.assertNotEqual(a.trace, b.trace)

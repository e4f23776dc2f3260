"""Deterministic testing tools for txraft, usable for your own state machines too.

- ``sim.Simulation``: N ``RaftCore``s on a simulated clock with one seeded random source,
  a lossy/duplicating/reordering network with partitions (``sim_network``), crashes that
  keep only what was persisted, closed-loop clients, and the ``SafetyChecker``
  (``sim_invariants``) run after every event.
- ``sim_faults.run_seed``: one randomized 60-second scenario per seed, then liveness.
- ``sim_cluster.Cluster``: a hand-driven cluster for scenario tests.
"""

from txraft.testing.sim import (
    IStateMachineAdapter,
    KVStateMachine,
    KVWorkload,
    MemoryStorage,
    Operation,
    SimConfig,
    Simulation,
)
from txraft.testing.sim_cluster import Cluster
from txraft.testing.sim_invariants import InvariantViolation, LivenessViolation, SafetyChecker
from txraft.testing.sim_network import SimNetwork

__all__ = [
    "Cluster",
    "IStateMachineAdapter",
    "InvariantViolation",
    "KVStateMachine",
    "KVWorkload",
    "LivenessViolation",
    "MemoryStorage",
    "Operation",
    "SafetyChecker",
    "SimConfig",
    "SimNetwork",
    "Simulation",
]

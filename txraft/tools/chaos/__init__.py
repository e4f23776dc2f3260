"""Chaos testing of real txraft clusters: workloads, a nemesis and a linearizability checker.

``checker`` decides whether a recorded history of concurrent operations is linearizable
(pure, no I/O); ``history`` records what clients did; ``nemesis`` injects faults into a
``txraft.tools.localcluster.LocalCluster`` (cuts and loss through a backend: the transport's
fault layer, or ``netns``, a network namespace per node where the kernel makes the cuts);
``workload`` holds what workloads share and drives the key-value store (the shop's is
``shop.chaos``, loaded by name: the library never imports the shop);
``harness`` ties them together and ``python -m txraft.tools.chaos`` runs it.
"""

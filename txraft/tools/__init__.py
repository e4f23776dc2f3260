"""Operator and test tools: real local clusters, the ``txraft-cluster`` console and the
chaos harness."""

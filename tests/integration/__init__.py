"""Tests with real processes: ``twistd raftnode`` clusters on 127.0.0.1, the chaos
harness, a storage writer killed with SIGKILL, the ``txraft-cluster`` command, live
fuzzing.  Each wait is bounded and each process is killed in its cleanup."""

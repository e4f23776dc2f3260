"""``python -m txraft.tools.chaos``: run a chaos round and print its summary table.

    python -m txraft.tools.chaos --nodes 5 --duration 60 --seed 7 --workload kv
    python -m txraft.tools.chaos --workload shop --duration 1800 --seed 3      # a long soak
    python -m txraft.tools.chaos --workload shop --nodes 5 --membership       # + membership
    python -m txraft.tools.chaos check chaos-failures/shop-seed3-...           # re-check offline
    python -m txraft.tools.chaos --net netns --nodes 5 --duration 120   # kernel partitions (root)
    python -m txraft.tools.chaos cleanup-netns      # remove namespaces left by a killed run

Exit status 0 when every check passed, 1 otherwise (the run's folder is printed); 2 when
``--net netns`` cannot run on this machine (one line says why).
"""

from __future__ import annotations

import argparse
import signal
import sys

from txraft.tools.chaos import netns
from txraft.tools.chaos.harness import WORKLOADS, ChaosRun, Config, load_workload, recheck
from txraft.tools.chaos.nemesis import DEFAULT_WEIGHTS, FAULT_KINDS, MEMBERSHIP_KINDS


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds through the cleanup."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None, unavailable=netns.unavailable) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cleanup-netns"]:
        argparse.ArgumentParser(prog="python -m txraft.tools.chaos cleanup-netns",
                                description="Remove the network namespaces, veths and "
                                "bridges of chaos runs whose process is gone.").parse_args(argv[1:])
        reason = unavailable()
        if reason:
            print("cleanup-netns: " + reason, file=sys.stderr)
            return 2
        removed = netns.cleanup_stale()
        print("\n".join(removed) if removed else "nothing left by dead runs")
        return 0
    if argv[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="python -m txraft.tools.chaos check")
        parser.add_argument("folder")
        parser.add_argument("--max-steps", type=int, default=Config().max_steps)
        args = parser.parse_args(argv[1:])
        problems = recheck(args.folder, args.max_steps)
        for problem in problems:
            print(problem)
        print("linearizable" if not problems else "%d partition(s) failed" % len(problems))
        return 1 if problems else 0

    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m txraft.tools.chaos",
                                     description="Chaos testing of a real txraft cluster.")
    parser.add_argument("--nodes", type=int, default=defaults.nodes)
    parser.add_argument("--duration", type=float, default=defaults.duration,
                        help="seconds of faults and load")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workload", default=defaults.workload,
                        help="%s, or module:attribute naming a workload class"
                        % ", ".join(sorted(WORKLOADS)))
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--election-timeout-ms", type=int, default=defaults.election_timeout_ms)
    parser.add_argument("--heartbeat-ms", type=int, default=defaults.heartbeat_ms)
    parser.add_argument("--tick-ms", type=int, default=defaults.tick_ms)
    parser.add_argument("--snapshot-entries", type=int, default=defaults.snapshot_entries)
    parser.add_argument("--value-bytes", type=int, default=0,
                        help="kv: pad values to up to this many bytes (fragmented entries)")
    parser.add_argument("--no-nemesis", dest="nemesis", action="store_false",
                        help="load only, no faults (a baseline)")
    parser.add_argument("--faults", default=None,
                        help="comma-separated fault kinds to use (default: %s); the "
                        "membership actions (%s) are used only when named here or with "
                        "--membership" % (", ".join(k for k in FAULT_KINDS if k in DEFAULT_WEIGHTS),
                                          ", ".join(MEMBERSHIP_KINDS)))
    parser.add_argument("--membership", action="store_true",
                        help="add every membership action to the mix (remove and re-add a "
                        "member, wipe and replace a follower, transfer leadership; see "
                        "docs/chaos.md)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="checker search budget per partition")
    parser.add_argument("--net", choices=("transport", "netns"), default=defaults.net,
                        help="how network faults are made: transport (fault layer in each "
                        "node's UDP transport, no root) or netns (root: a network namespace "
                        "per node, partitions by blackhole routes; lossy links stay on the "
                        "transport layer)")
    parser.add_argument("--out", default=defaults.out, help="where failed runs are saved")
    parser.add_argument("--root", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--save", action="store_true",
                        help="save history, schedule and logs even when the run passes")
    args = parser.parse_args(argv)
    try:
        load_workload(args.workload)
    except ValueError as e:
        parser.error(str(e))
    config = Config(nodes=args.nodes, duration=args.duration, seed=args.seed,
                    workload=args.workload, clients=args.clients,
                    election_timeout_ms=args.election_timeout_ms, heartbeat_ms=args.heartbeat_ms,
                    snapshot_entries=args.snapshot_entries, nemesis=args.nemesis, faults=args.faults,
                    membership=args.membership,
                    max_steps=args.max_steps, out=args.out, root=args.root, keep=args.keep,
                    save=args.save, tick_ms=args.tick_ms, value_bytes=args.value_bytes,
                    net=args.net)
    try:
        config.weights()
    except ValueError as e:
        parser.error(str(e))
    if config.net == "netns":
        reason = unavailable()
        if reason:
            print("--net netns: " + reason, file=sys.stderr)
            return 2
        signal.signal(signal.SIGTERM, _terminate)
    try:
        report = ChaosRun(config).execute()
    except (KeyboardInterrupt, Terminated) as e:
        print("%s; nodes stopped%s" % ("terminated" if isinstance(e, Terminated) else "interrupted",
                                       " and namespaces removed" if config.net == "netns" else ""),
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    print(report.table())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())

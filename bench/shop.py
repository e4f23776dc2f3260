"""Orders per second on a 3-node shop cluster with 1, 16 and 64 concurrent customers.

Real ``twistd raftnode --app shop`` processes on 127.0.0.1.  The script creates products
(with enough stock for the whole run) and one customer per connection through the HTTP
API, then ``wrk`` (``bench/wrk.lua``, mode ``shop-order``) has each keep-alive connection
place orders of one unit of one product (``POST /orders``), with an ``Idempotency-Key``
on every order unless ``--no-idempotency``.  Orders/s are counted by the cluster (the
leader's applied index before and after: one entry per order), latency by wrk.  At the
end the stock is checked: units stocked = units left + units ordered.

Usage::

    python bench/shop.py             # 1, 16, 64 customers; 10 s each after 2 s warm-up
    python bench/shop.py --quick     # smoke run

Needs ``wrk`` (``apt-get install wrk``); installs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import uuid
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import CPUMeter, fmt, http, print_table, require, run_wrk  # noqa: E402
from txraft.tools.localcluster import LocalCluster  # noqa: E402

STOCK = 10**9


def post(cluster: LocalCluster, path: str, doc: Dict[str, Any]) -> Dict[str, Any]:
    """Create a resource; retried safely (same Idempotency-Key) if the leader moves."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
    for _ in range(10):
        url = cluster.url(cluster.wait_for_leader(timeout=30)) + path
        r = http("POST", url, json.dumps(doc).encode(), headers, timeout=10)
        if r.status == 201:
            return r.json()
        time.sleep(0.2)
    raise RuntimeError("POST %s -> %r" % (path, r))


def measure(cluster: LocalCluster, customers: List[str], products: List[str], c: int,
            args: argparse.Namespace) -> Dict[str, Any]:
    leader = cluster.wait_for_leader(timeout=30)
    node = leader if args.target == "leader" else next(n for n in cluster.nodes if n != leader)
    target = cluster.url(node)
    options = ["customers=" + ",".join(customers[:c]), "products=" + ",".join(products)]
    if not args.no_idempotency:
        options.append("idem=1")
    if args.warmup > 0:
        run_wrk(target, "shop-order", c, args.warmup, args.wrk_threads,
                options + ["run=" + uuid.uuid4().hex[:12]])
    before = cluster.nodes[leader].status()
    meter = CPUMeter({"node:" + n: x.process.pid for n, x in cluster.nodes.items()})
    load = common.loadavg()
    t0 = time.monotonic()
    r = run_wrk(target, "shop-order", c, args.seconds, args.wrk_threads,
                options + ["run=" + uuid.uuid4().hex[:12]])
    elapsed = time.monotonic() - t0
    after = cluster.nodes[leader].status()
    cpu = meter.stop()
    row = dict(r)
    row.update({
        "connections": c, "target": args.target, "nodes": 3,
        "idempotency_key": not args.no_idempotency,
        "committed": after["applied_index"] - before["applied_index"] if after else None,
        "leader_changed": after is None or after["term"] != before["term"]
        or after["role"] != "leader",
        "cpu_pct": cpu, "leader_cpu_pct": cpu.get("node:" + leader),
        "loadavg_before": load, "loadavg_after": common.loadavg(),
    })
    row["orders_per_s"] = round((row["committed"] or 0) / elapsed, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1,16,64", help="concurrent customers")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--products", type=int, default=16)
    parser.add_argument("--no-idempotency", action="store_true",
                        help="orders without an Idempotency-Key")
    parser.add_argument("--target", choices=("leader", "follower"), default="leader")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--txraft-args", default="")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--wait-quiet", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s rows")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    common.exit_cleanly_on_sigterm()
    if args.quick:
        args.seconds, args.warmup = 2.0, 1.0
    app = "shop"
    name = args.name or ("shop" + ("-quick" if args.quick else ""))
    require("wrk")
    conns = [int(c) for c in args.connections.split(",")]
    load_at_start = common.wait_until_quiet(args.max_load, args.wait_quiet)
    machine = common.machine()
    print(common.describe(machine))
    root = common.scratch_dir("txraft-bench-shop-")
    rows: List[Dict[str, Any]] = []
    check: Dict[str, Any] = {}
    started = time.time()
    cluster = LocalCluster(3, root, app=app, python=args.python,
                           extra_args=args.txraft_args.split())
    try:
        cluster.start_all()
        cluster.wait_for_leader(timeout=60)
        products = [post(cluster, "/products", {"name": "bench product %d" % i,
                                             "price_cents": 100 + i, "stock": STOCK,
                                             "category": "bench"})["id"]
                    for i in range(args.products)]
        customers = [post(cluster, "/customers", {"name": "customer %d" % i,
                                               "email": "c%d@bench.example" % i})["id"]
                     for i in range(max(conns))]
        for c in conns:
            for attempt in range(3):
                row = measure(cluster, customers, products, c, args)
                row["attempt"] = attempt + 1
                if not row["leader_changed"]:
                    break
                print("  (the leader changed during the run; measuring again)",
                      file=sys.stderr, flush=True)
            rows.append(row)
            print("  %2d customers: %7s orders/s  p50 %7s ms  p99 %7s ms  p99.9 %7s ms  "
                  "errors %d  leader cpu %s%%  load %s%s" % (
                      c, fmt(row["orders_per_s"], 0), fmt(row["p50_ms"], 2),
                      fmt(row["p99_ms"], 1), fmt(row["p999_ms"], 1), row["error_count"],
                      fmt(row["leader_cpu_pct"], 0), row["loadavg_after"][0],
                      "  LEADER CHANGED" if row["leader_changed"] else ""), flush=True)
        # Conservation: every unit ordered came out of stock, on the leader's state.
        leader = cluster.wait_for_leader(timeout=30)
        url = cluster.url(leader)
        left = sum(http("GET", "%s/products/%s" % (url, p)).json()["stock"] for p in products)
        orders = http("GET", url + "/orders?limit=1").json()["total"]
        check = {"units_stocked": STOCK * len(products), "units_left": left,
                 "orders": orders, "conserved": STOCK * len(products) == left + orders}
        print("stock check: %s" % check)
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print_table(["customers", "orders/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "leader cpu %"],
                [[r["connections"], fmt(r["orders_per_s"], 0), fmt(r["p50_ms"], 2),
                  fmt(r["p99_ms"], 1), fmt(r["p999_ms"], 1), r["error_count"],
                  fmt(r["leader_cpu_pct"], 0)] for r in rows],
                title="shop orders, 3 nodes (one entry per order; %s)" % (
                    "with Idempotency-Key" if not args.no_idempotency else "no Idempotency-Key"))
    common.save_results(name, {
        "machine": machine, "loadavg_at_start": load_at_start, "loadavg_at_end": common.loadavg(),
        "elapsed_s": round(time.time() - started), "config": vars(args), "rows": rows,
        "stock_check": check, "txraft_app": app, "fsync": {"txraft": common.FSYNC["txraft"]},
        "command": shlex.join(["python"] + sys.argv),
    })


if __name__ == "__main__":
    main()

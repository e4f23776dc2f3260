"""Markdown tables of the latest results (``bench/results/*-latest.json``) for the docs.

Usage: ``python bench/report.py [--results-suffix -quick] > /tmp/tables.md``; the tables
in docs/benchmarks.md are pasted from it, so they say exactly what the JSON says.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import fmt, ratio  # noqa: E402


def table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def run_header(doc) -> str:
    m = doc.get("machine", {})
    fp = m.get("fsync_probe", {})
    return ("*%s: `%s`; started at load average %s (ended at %s); fdatasync probe p50 %s ms, "
            "p90 %s ms; %s s.*" % (
                doc.get("finished", "?")[:16].replace("T", " "), doc.get("command", "?"),
                (doc.get("loadavg_at_start") or ["?"])[0], (doc.get("loadavg_at_end") or ["?"])[0],
                fp.get("p50_ms", "?"), fp.get("p90_ms", "?"), doc.get("elapsed_s", "?")))


def http_tables(doc) -> str:
    index = {(r["system"], r["nodes"], r["workload"], r["connections"]): r for r in doc["rows"]}
    parts = [run_header(doc)]
    for workload, title in (("write", "Writes to the leader (committed writes/s)"),
                            ("write-follower", "Writes sent to a follower (committed writes/s)"),
                            ("read", "Linearizable reads (reads/s)"),
                            ("read-stale", "Stale / serializable reads (reads/s)")):
        keys = sorted({(n, c) for (s, n, w, c) in index if w == workload})
        if not keys:
            continue
        rows = []
        for n, c in keys:
            t, e = index.get(("txraft", n, workload, c)), index.get(("etcd", n, workload, c))

            def cols(x):
                if x is None:
                    return ["-"] * 4
                flag = " (leader moved)" if x.get("leader_changed") else ""
                return ["%s%s" % (fmt(x["ops_per_s"], 0), flag),
                        "%s / %s / %s" % (fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 1),
                                          fmt(x["p999_ms"], 1)),
                        str(x["error_count"]), fmt(x.get("leader_cpu_us_per_op"), 0)]

            rows.append([n, c] + cols(t) + cols(e) + [
                fmt(ratio(t and t["ops_per_s"], e and e["ops_per_s"]), 2),
                fmt(ratio(t and t["p50_ms"], e and e["p50_ms"]), 1)])
        parts.append("**%s**\n\n" % title + table(
            ["nodes", "conns", "txraft /s", "txraft p50 / p99 / p99.9 ms", "errors",
             "txraft leader CPU µs/op", "etcd /s", "etcd p50 / p99 / p99.9 ms", "errors",
             "etcd leader CPU µs/op", "ratio /s", "ratio p50"], rows))
    # txraft+<patches> rows: results of the --variants runs, before bench/patched.py went.
    variants = sorted({s for (s, n, w, c) in index if s.startswith("txraft+")})
    if variants:
        rows = []
        for (s, n, w, c) in sorted(index, key=lambda k: (k[2], k[1], k[3], k[0])):
            if not s.startswith("txraft+"):
                continue
            x, base, e = index[(s, n, w, c)], index.get(("txraft", n, w, c)), index.get(
                ("etcd", n, w, c))
            rows.append([w, n, c, s[len("txraft+"):].replace("+", ", "),
                         "%s%s" % (fmt(x["ops_per_s"], 0),
                                   " (leader moved)" if x.get("leader_changed") else ""),
                         "%s / %s" % (fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 1)),
                         fmt(x.get("leader_cpu_us_per_op"), 0),
                         fmt(ratio(x["ops_per_s"], base and base["ops_per_s"]), 2),
                         fmt(ratio(x["p50_ms"], base and base["p50_ms"]), 2),
                         fmt(ratio(x["ops_per_s"], e and e["ops_per_s"]), 2)])
        parts.append("**txraft with proposed patches, interleaved with the rows above**\n\n"
                     + table(["workload", "nodes", "conns", "patches", "/s", "p50 / p99 ms",
                              "leader CPU µs/op", "/s vs txraft", "p50 vs txraft",
                              "/s vs etcd"], rows))
    trees = [a["name"] for a in doc.get("against", [])]
    if trees:
        rows = []
        for r in doc.get("after_before", []):
            n, w, c, a = r["nodes"], r["workload"], r["connections"], r["against"]
            x, b = index.get(("txraft", n, w, c)), index.get((a, n, w, c))
            q = r["after_over_before"]
            rows.append([w, n, c, a, "%s%s" % (fmt(b["ops_per_s"], 0),
                                                " (leader moved)" if b.get("leader_changed")
                                                else ""),
                         "%s / %s" % (fmt(b["p50_ms"], 2), fmt(b["p99_ms"], 1)),
                         fmt(b.get("leader_cpu_us_per_op"), 0),
                         fmt(x and x["ops_per_s"], 0),
                         "%s / %s" % (fmt(x and x["p50_ms"], 2), fmt(x and x["p99_ms"], 1)),
                         fmt(x and x.get("leader_cpu_us_per_op"), 0),
                         fmt(q["ops_per_s"], 2), fmt(q["p50_ms"], 2),
                         ", ".join(fmt(v, 2) for v in r.get("per_repeat_ops_per_s", []))])
        parts.append("**This tree (txraft, %s) after, other checkouts (`--against`) before, "
                     "interleaved**\n\n" % doc.get("machine", {}).get("txraft_commit", "?")
                     + table(["workload", "nodes", "conns", "before", "before /s",
                              "before p50 / p99 ms", "before leader CPU µs/op", "after /s",
                              "after p50 / p99 ms", "after leader CPU µs/op",
                              "after/before /s", "after/before p50", "/s per repeat"], rows))
    mem = doc.get("idle_rss_mib", {})
    rows = []
    for size, systems in sorted(mem.items()):
        for system in ["txraft"] + trees + ["etcd"]:
            nodes = systems.get(system) or {}
            vals = [v for v in nodes.values() if v]
            if vals:
                rows.append([size, system, fmt(max(v["rss"] for v in vals)),
                             fmt(max(v["pss"] for v in vals)), fmt(max(v["uss"] for v in vals))])
    if rows:
        parts.append("**Idle memory per node, MiB (largest node)**\n\n" + table(
            ["nodes", "system", "RSS", "PSS", "USS"], rows))
    return "\n\n".join(parts)


def library_tables(doc) -> str:
    index = {(r["system"], r["inflight"]): r for r in doc["rows"]}
    rows = []
    for k in sorted({r["inflight"] for r in doc["rows"]}):
        t, p = index.get(("txraft", k)), index.get(("pysyncobj", k))

        def cols(x):
            if x is None:
                return ["-"] * 2
            return [fmt(x["writes_per_s"], 0), "%s / %s / %s" % (
                fmt(x.get("p50_ms"), 2), fmt(x.get("p99_ms"), 1), fmt(x.get("p999_ms"), 1))]

        rows.append([k] + cols(t) + [fmt(t and t.get("entries_per_fsync"), 1)] + cols(p) + [
            fmt(ratio(t and t["writes_per_s"], p and p["writes_per_s"]), 2),
            fmt(ratio(t and t.get("p99_ms"), p and p.get("p99_ms")), 2)])
    return run_header(doc) + "\n\n" + table(
        ["K in flight", "txraft writes/s", "txraft p50 / p99 / p99.9 ms", "entries per fsync",
         "PySyncObj writes/s", "PySyncObj p50 / p99 / p99.9 ms", "ratio /s", "ratio p99"], rows)


def failover_tables(doc) -> str:
    rows = [[s["system"], s["trials"], fmt(s.get("median_ms")), fmt(s.get("p90_ms")),
             fmt(s.get("p99_ms")), fmt(s.get("max_ms")), s.get("over_600ms", "-"),
             s["no_write_within_timeout"], s.get("trials_needing_more_than_one_term", "-")]
            for s in doc.get("summaries", [])]
    return run_header(doc) + "\n\n" + table(
        ["system", "trials", "median ms", "p90 ms", "p99 ms", "max ms", "> 600 ms",
         "no write in 10 s", "needed > 1 term"], rows)


def shop_tables(doc) -> str:
    rows = [[r["connections"], fmt(r["orders_per_s"], 0), fmt(r["p50_ms"], 2),
             fmt(r["p99_ms"], 1), fmt(r["p999_ms"], 1), r["error_count"],
             fmt(r.get("leader_cpu_pct"), 0)] for r in doc["rows"]]
    check = doc.get("stock_check", {})
    return run_header(doc) + "\n\n" + table(
        ["customers", "orders/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "leader CPU %"],
        rows) + "\n\nStock check: %s units stocked = %s left + %s ordered: %s." % (
        check.get("units_stocked"), check.get("units_left"), check.get("orders"),
        "conserved" if check.get("conserved") else "NOT conserved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-suffix", default="")
    parser.add_argument("names", nargs="*", help="result names, e.g. cluster_http-parallel")
    args = parser.parse_args()
    names = args.names or ["cluster_http", "library", "failover", "shop"]
    for name in names:
        doc = common.load_results(name + args.results_suffix)
        if doc is None:
            print("<!-- no %s results -->\n" % name)
            continue
        renderers = {"cluster_http": http_tables, "library": library_tables,
                     "failover": failover_tables, "shop": shop_tables}
        # A run's --name may be anything: the command that produced it names the script.
        script = re.search(r"bench/(\w+)\.py", doc.get("command", ""))
        kinds = [doc.get("benchmark", name).split("-")[0], name.split("-")[0],
                 script.group(1) if script else ""]
        render = next(renderers[k] for k in kinds if k in renderers)
        print("<!-- %s -->\n%s\n" % (name + args.results_suffix, render(doc)))


if __name__ == "__main__":
    main()

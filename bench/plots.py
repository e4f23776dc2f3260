"""PNG plots of the latest benchmark results (``bench/results/*-latest.json``) in docs/img.

* ``http-throughput.png``: committed writes/s against connections, txraft and etcd, per
  cluster size (``bench/cluster_http.py``);
* ``http-latency-cdf.png``: write latency CDFs, 3 nodes, 1 and 64 connections;
* ``failover-histogram.png``: downtime after kill -9 of the leader (``bench/failover.py``);
* ``library-throughput.png``: in-process proposals/s against K in flight, txraft and
  PySyncObj (``bench/library.py``).

Usage: ``python bench/plots.py [--results-suffix -quick]``.  Needs matplotlib
(``pip install matplotlib``, an optional benchmark dependency); installs nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

COLORS = {"txraft": "#1f77b4", "etcd": "#d62728", "pysyncobj": "#2ca02c"}
SIZE_STYLES = {1: ":", 3: "-", 5: "--"}


def _stamp(doc) -> str:
    m = doc.get("machine", {})
    loads = [(doc.get("loadavg_at_start") or [0])[0]]
    for r in doc.get("all_runs") or doc.get("rows") or []:
        loads.append((r.get("loadavg_after") or [0])[0])
    for runs in (doc.get("trials") or {}).values():
        loads += [t.get("loadavg", 0) for t in runs]
    return "%s, %s CPUs, %s; %s; 1-minute load average %.1f-%.1f (other work on the machine)" % (
        m.get("cpu_model", "?"), m.get("cpus", "?"), m.get("python", "?"),
        doc.get("finished", "")[:16], min(loads), max(loads))


def http_plots(plt, doc, out_dir, later=None):
    """``later``: a later run (e.g. cluster_http-after) whose write rows are overlaid."""
    rows = [r for r in doc["rows"] if r["workload"] == "write"]
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if later is not None:
        commit = later.get("machine", {}).get("txraft_commit") or "later"
        for system, color in (("txraft", "#2ca02c"), ("etcd", "#ff9896")):
            for size in sorted({r["nodes"] for r in later["rows"]}):
                pts = sorted((r["connections"], r["ops_per_s"]) for r in later["rows"]
                             if r["system"] == system and r["nodes"] == size
                             and r["workload"] == "write")
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="s",
                            linestyle=SIZE_STYLES.get(size, "-"), color=color,
                            label="%s, %d nodes, re-run on %s" % (system, size, commit))
    for system in ("txraft", "etcd"):
        for size in sorted({r["nodes"] for r in rows}):
            pts = sorted((r["connections"], r["ops_per_s"]) for r in rows
                         if r["system"] == system and r["nodes"] == size)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        linestyle=SIZE_STYLES.get(size, "-"), color=COLORS[system],
                        label="%s, %d node%s" % (system, size, "s" if size > 1 else ""))
    ax.set_xscale("log", base=2)
    conns = sorted({r["connections"] for r in rows})
    ax.set_xticks(conns)
    ax.set_xticklabels([str(c) for c in conns])
    ax.set_xlabel("concurrent keep-alive connections (wrk)")
    ax.set_ylabel("committed writes/s (counted by the cluster)")
    ax.set_title("KV writes over HTTP, 64-byte values, fsync on", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, _stamp(doc), fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    a = os.path.join(out_dir, "http-throughput.png")
    fig.savefig(a, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in ("txraft", "etcd"):
        for conns, style in ((1, "--"), (64, "-")):
            r = next((r for r in rows if r["system"] == system and r["nodes"] == 3
                      and r["connections"] == conns), None)
            if r and r.get("cdf_ms"):
                ax.plot([ms for p, ms in r["cdf_ms"]], [p for p, ms in r["cdf_ms"]],
                        linestyle=style, color=COLORS[system], marker=".",
                        label="%s, %d connection%s" % (system, conns, "s" if conns > 1 else ""))
    ax.set_xscale("log")
    ax.set_xlabel("write latency, ms (wrk)")
    ax.set_ylabel("percentile")
    ax.set_title("Write latency CDF, 3 nodes", fontsize=11)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, _stamp(doc), fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    b = os.path.join(out_dir, "http-latency-cdf.png")
    fig.savefig(b, dpi=110)
    plt.close(fig)
    return [a, b]


def failover_plot(plt, doc, out_dir, extra=()):
    """``extra``: (label, summary) of other runs to overlay, e.g. a later commit's."""
    summaries = [s for s in doc.get("summaries", []) if s.get("downtimes_ms")]
    extra_colors = ["#9467bd", "#2ca02c", "#ff7f0e", "#8c564b"]
    summaries += [dict(s, system=label, color=extra_colors[i % len(extra_colors)])
                  for i, (label, s) in enumerate(extra) if s.get("downtimes_ms")]
    if not summaries:
        return []
    top = max(max(s["downtimes_ms"]) for s in summaries)
    bins = [b * 25 for b in range(int(top // 25) + 2)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        ax.hist(s["downtimes_ms"], bins=bins, alpha=0.55,
                color=s.get("color") or COLORS.get(s["system"], "#9467bd"),
                label="%s: median %.0f ms, p99 %.0f, max %.0f (%d trials)" % (
                    s["system"], s["median_ms"], s["p99_ms"], s["max_ms"], s["trials"]))
    cfg = doc.get("config", {})
    ax.set_xlabel("time from kill -9 of the leader to the next committed write, ms")
    ax.set_ylabel("trials")
    ax.set_title("Failover, %s nodes, election timeout %s-%s ms" % (
        cfg.get("nodes", 5), cfg.get("election_ms", 150), 2 * cfg.get("election_ms", 150)),
        fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.text(0.01, 0.01, _stamp(doc), fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = os.path.join(out_dir, "failover-histogram.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def library_plot(plt, doc, out_dir):
    rows = doc.get("rows", [])
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system in ("txraft", "pysyncobj"):
        pts = sorted((r["inflight"], r["writes_per_s"]) for r in rows if r["system"] == system)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=COLORS[system],
                    label=system + (" (fsync)" if system == "txraft" else " (no fsync)"))
    ax.set_xscale("log", base=2)
    ks = sorted({r["inflight"] for r in rows})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("proposals in flight (in-process, on the leader)")
    ax.set_ylabel("committed writes/s")
    ax.set_title("Library-level proposals, 3 nodes", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, _stamp(doc), fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = os.path.join(out_dir, "library-throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _newer(other, doc) -> bool:
    """Whether results ``other`` exist and finished after ``doc`` (ISO timestamps)."""
    return other is not None and other.get("finished", "") > doc.get("finished", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-suffix", default="",
                        help="read <name><suffix>-latest.json, e.g. -quick")
    parser.add_argument("--out", default=common.IMG_DIR)
    parser.add_argument("--failover-overlays", default="after",
                        help="overlay txraft's summary from failover-<name> results, "
                             "';'-separated ('after': a later commit's run, named "
                             "failover-after) [after]")
    args = parser.parse_args()
    if not common.have_module("matplotlib"):
        sys.exit("missing: matplotlib is not installed: " + common.HOW_TO_GET["matplotlib"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    written = []
    for name, fn in (("cluster_http", http_plots), ("failover", failover_plot),
                     ("library", library_plot)):
        doc = common.load_results(name + args.results_suffix)
        if doc is None:
            print("no %s%s results yet: run bench/%s.py" % (name, args.results_suffix, name))
            continue
        if name == "cluster_http":
            later = common.load_results("cluster_http-after" + args.results_suffix)
            written += fn(plt, doc, args.out, later if _newer(later, doc) else None)
            continue
        if name == "failover":
            # Overlay txraft from other runs (bench/failover.py --name failover-<name>).
            extra = []
            for overlay in args.failover_overlays.split(";"):
                other = common.load_results("failover-" + overlay
                                            + args.results_suffix) if overlay else None
                if not _newer(other, doc):
                    continue  # an overlay older than the run it is drawn on misleads
                for s in other.get("summaries", []):
                    if s["system"] == "txraft":
                        label = ("txraft, %s" % other["machine"].get("txraft_commit", "later")
                                 if overlay == "after" else "txraft (failover-%s)" % overlay)
                        extra.append((label, s))
            written += fn(plt, doc, args.out, extra)
        else:
            written += fn(plt, doc, args.out)
    for path in written:
        print("wrote %s" % common.shown(path))


if __name__ == "__main__":
    main()

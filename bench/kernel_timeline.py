#!/usr/bin/env python3
"""Where a CUDA graph's time goes, from a bench/cupti_trace.cpp CSV.

    python3 bench/kernel_timeline.py trace.csv [--min-launches 4] [--timeline 40]

For every captured graph launched at least --min-launches times (a decode step shape of
cuda-bench), over its launches but the first: the step's span (first kernel start to last
kernel end), and per kernel (name and grid) its count a step, its mean duration, and its
"exposed" time: walking the step's kernels in order of their ends, the time by which each one
moved the step's finishing edge forward. Exposed times add up to the span; a kernel that ends
while another stream is still busy, or under the next kernel's programmatic dependent launch,
has little of it. --timeline N prints the first N kernels of one launch with start and end
offsets (us) and stream. With a trace taken with FH1_TRACE_API=1, the host's side between two
launches of a graph is printed too: the median gap from one launch's last kernel end to the
next one's first kernel start, and one gap's API calls and copies.
"""
import argparse
import csv
import statistics
from collections import defaultdict


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.setdefault("kind", "kernel")
        for k in ("start", "end", "stream", "graph", "correlation", "gx", "gy", "gz", "bx", "regs"):
            r[k] = int(r[k])
    return rows


def short(name, width=48):
    base = name.split("<")[0].split("::")[-1]
    return base[:width]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--min-launches", type=int, default=4)
    ap.add_argument("--timeline", type=int, default=0)
    a = ap.parse_args()
    rows = load(a.csv)
    graphs = defaultdict(lambda: defaultdict(list))  # graph id -> correlation -> kernels
    others = sorted((r for r in rows if r["kind"] != "kernel"), key=lambda r: r["start"])
    loose = sorted((r for r in rows if r["kind"] == "kernel" and not r["graph"]), key=lambda r: r["start"])
    for r in rows:
        if r["graph"] and r["kind"] == "kernel":
            graphs[r["graph"]][r["correlation"]].append(r)
    for gid, launches in sorted(graphs.items()):
        steps = [sorted(ks, key=lambda r: r["start"]) for _, ks in sorted(launches.items())]
        if len(steps) < a.min_launches:
            continue
        steps = steps[1:]  # the first launch uploads the graph
        spans, per_key = [], defaultdict(lambda: {"n": 0, "dur": 0.0, "exp": 0.0})
        for ks in steps:
            t0 = ks[0]["start"]
            spans.append((max(k["end"] for k in ks) - t0) / 1e3)
            edge = t0
            for k in sorted(ks, key=lambda r: r["end"]):
                key = (short(k["name"]), f'{k["gx"]}x{k["gy"]}x{k["gz"]}/{k["bx"]}')
                e = per_key[key]
                e["n"] += 1
                e["dur"] += (k["end"] - k["start"]) / 1e3
                e["exp"] += max(0, k["end"] - edge) / 1e3
                edge = max(edge, k["end"])
        ns = len(steps)
        print(f"graph {gid}: {ns} launches timed, {len(steps[0])} kernels a step, "
              f"span {statistics.median(spans):.1f} us (median; min {min(spans):.1f})")
        print(f'  {"kernel":48s} {"grid/block":>18s} {"a step":>6s} {"mean us":>8s} {"exposed us":>10s} {"%":>5s}')
        total = sum(e["exp"] for e in per_key.values()) / ns
        for key, e in sorted(per_key.items(), key=lambda kv: -kv[1]["exp"]):
            print(f'  {key[0]:48s} {key[1]:>18s} {e["n"] / ns:6.1f} {e["dur"] / e["n"]:8.2f} '
                  f'{e["exp"] / ns:10.1f} {100 * e["exp"] / ns / total:5.1f}')
        gaps = []
        for x, y in zip(steps, steps[1:]):
            gaps.append((max(k["end"] for k in x), min(k["start"] for k in y)))
        print(f"  between launches: {statistics.median([(b - e) / 1e3 for e, b in gaps]):.1f} us (median) "
              f"from the last kernel's end to the next launch's first kernel")
        between = [r for r in loose if any(e <= r["start"] and r["end"] <= b for e, b in gaps)]
        if between:  # kernels launched outside the graph between two of its launches (sampling)
            per = defaultdict(list)
            for r in between:
                per[short(r["name"])].append((r["end"] - r["start"]) / 1e3)
            for name, ds in sorted(per.items()):
                print(f"  between launches, outside the graph: {name} x{len(ds) / max(1, len(gaps)):.1f} a gap, "
                      f"{statistics.median(ds):.2f} us (median)")
        if others or between:
            e, b = gaps[len(gaps) // 2]
            print("  one gap, host calls, copies and kernels (us from the last kernel's end):")
            for r in sorted(others + between, key=lambda r: r["start"]):
                if r["end"] >= e - 20000 and r["start"] <= b:
                    if r["kind"] == "api":
                        what = r["name"]
                    elif r["kind"] == "kernel":
                        what = "kernel " + short(r["name"])
                    else:
                        what = f'memcpy {r["gx"]} B kind {r["gy"]}'
                    print(f'    {(r["start"] - e) / 1e3:9.2f} {(r["end"] - e) / 1e3:9.2f}  {what}')
        if a.timeline:
            ks = steps[len(steps) // 2]
            t0 = ks[0]["start"]
            print(f"  one launch, first {a.timeline} kernels (us from the step's first start):")
            for k in ks[: a.timeline]:
                print(f'    {(k["start"] - t0) / 1e3:9.2f} {(k["end"] - t0) / 1e3:9.2f} {(k["end"] - k["start"]) / 1e3:7.2f}'
                      f'  s{k["stream"]:<3d} {short(k["name"]):40s} {k["gx"]}x{k["gy"]}x{k["gz"]}')


if __name__ == "__main__":
    main()

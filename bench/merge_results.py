#!/usr/bin/env python3
"""Merge several `falcon-h1 bench --json` runs of one model into one JSON (prefill and decode rows
concatenated, machine/model/bandwidth/gemm from the first run that has them).

usage: python3 bench/merge_results.py OUT.json RUN.json [RUN.json ...]
Used when a shared machine is quiet only in short windows: each run then measures a few figures.
"""
import json
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    merged: dict = {"prefill": [], "decode": []}
    for path in sys.argv[2:]:
        with open(path) as f:
            r = json.load(f)
        for key, value in r.items():
            if key in ("prefill", "decode"):
                merged[key].extend(value)
            elif key == "peak_rss_bytes":
                merged[key] = max(merged.get(key, 0), value)
            elif key not in merged:
                merged[key] = value
    rate = merged.get("gemm_rate_gflops")
    for p in merged["prefill"]:
        if rate and "pct_of_gemm_rate" not in p:
            p["pct_of_gemm_rate"] = 100.0 * p["gflops"] / rate
    merged["prefill"].sort(key=lambda p: p["tokens"])
    merged["decode"].sort(key=lambda d: d["depth"])
    with open(sys.argv[1], "w") as f:
        json.dump(merged, f, indent=2)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Plot tokens/s vs context length from `falcon-h1 bench --json` outputs.

usage: python3 bench/plot_bench.py OUT.png RESULT.json [RESULT.json ...]
Each JSON is one bench run (one model/shape); prefill tokens/s is plotted against the prompt
length and decode tokens/s against the context depth, with the decode floor (bandwidth bound).
"""
import json
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, files = sys.argv[1], sys.argv[2:]
    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    machine = ""
    prompt_ticks: set = set()
    for path in files:
        with open(path) as f:
            r = json.load(f)
        label = r["model"]["source"].replace("shape ", "").replace(" (random bf16 weights)", " bf16")
        m = r["machine"]
        machine = f'{m["cpu"]}, {m["threads"]} threads, {m["simd_target"]}'
        if r.get("prefill"):
            xs = [p["tokens"] for p in r["prefill"]]
            prompt_ticks.update(xs)
            ax_p.plot(xs, [p["tokens_per_s"] for p in r["prefill"]], "o-", label=label)
        if r.get("decode"):
            xs = [d["depth"] for d in r["decode"]]
            line = ax_d.plot(xs, [d["tokens_per_s"] for d in r["decode"]], "o-", label=label)[0]
            if "floor_tokens_per_s" in r["decode"][0]:
                ax_d.plot(xs, [d["floor_tokens_per_s"] for d in r["decode"]], "--", color=line.get_color(),
                          label=label + " floor (bandwidth)")
    ax_p.set_xscale("log", base=2)
    ax_p.set(xlabel="prompt length (tokens)", ylabel="tokens/s", title="prefill")
    ax_p.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax_p.set_xticks(sorted(prompt_ticks), [str(t) for t in sorted(prompt_ticks)])
    ax_d.set(xlabel="context depth (tokens)", ylabel="tokens/s", title="decode (one sequence)")
    ax_d.set_ylim(bottom=0)
    ax_p.set_ylim(bottom=0)
    for ax in (ax_p, ax_d):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"falcon-h1 on {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    for path in files:
        print_tables(path)


def print_tables(path: str) -> None:
    """Markdown tables of one run, as pasted into docs/performance.md."""
    with open(path) as f:
        r = json.load(f)
    print(f"\n{r['model']['source']} ({path})\n")
    if r.get("prefill"):
        print("| prompt tokens | tokens/s | seconds | GFLOP/s | % of GEMM rate |")
        print("|---:|---:|---:|---:|---:|")
        for p in r["prefill"]:
            pct = f"{p['pct_of_gemm_rate']:.0f}%" if "pct_of_gemm_rate" in p else "-"
            print(f"| {p['tokens']} | {p['tokens_per_s']:.1f} | {p['seconds']:.2f} | {p['gflops']:.0f} | {pct} |")
    if r.get("decode"):
        print("\n| context depth | tokens/s | ms/token (median) | floor tokens/s | % of floor |")
        print("|---:|---:|---:|---:|---:|")
        for d in r["decode"]:
            fl = f"{d['floor_tokens_per_s']:.1f}" if "floor_tokens_per_s" in d else "-"
            pct = f"{d['pct_of_floor']:.0f}%" if "pct_of_floor" in d else "-"
            print(f"| {d['depth']} | {d['tokens_per_s']:.2f} | {d['ms_per_token_median']:.1f} | {fl} | {pct} |")


if __name__ == "__main__":
    main()

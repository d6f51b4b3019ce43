#!/usr/bin/env python3
"""Plot the CUDA benchmark: `cuda-bench --json` lines (one or more files, any models).

usage: python3 bench/plot_cuda_bench.py OUT.png RESULTS.jsonl [RESULTS.jsonl ...]
Left: prefill tokens/s against the prompt length, per model, with the % of the measured GEMM
rate as labels. Right: decode ms per step against the context, per model and batch, with the
HBM-bandwidth floor of batch 1 dashed. Later lines of the same (model, kind, tokens/context,
batch) replace earlier ones.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["0.5b", "1.5b-deep", "7b", "34b"]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, files = sys.argv[1], sys.argv[2:]
    prefill, decode, device = {}, {}, ""
    for path in files:
        with open(path) as f:
            for line in f:
                j = json.loads(line)
                device = j.get("device", device)
                if j.get("kind") == "prefill":
                    prefill[(j["model"], j["tokens"])] = j
                elif j.get("kind") == "decode":
                    decode[(j["model"], j["batch"], j["context"])] = j
    models = sorted({m for m, _ in prefill} | {m for m, _, _ in decode},
                    key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {1: "o-", 8: "s:", 64: "^-."}
    for i, m in enumerate(models):
        color = colors[i % len(colors)]
        pts = sorted((t, j) for (mm, t), j in prefill.items() if mm == m)
        if pts:
            xs = [t for t, _ in pts]
            ax_p.plot(xs, [j["tokens_per_s"] for _, j in pts], "o-", color=color, label=m)
            for t, j in pts:
                ax_p.annotate(f'{j["pct_of_gemm_rate"]:.1f}%', (t, j["tokens_per_s"]), fontsize=7,
                              textcoords="offset points", xytext=(0, 5), ha="center", color=color)
        for b in sorted({bb for mm, bb, _ in decode if mm == m}):
            pts = sorted((c, j) for (mm, bb, c), j in decode.items() if mm == m and bb == b)
            xs = [c for c, _ in pts]
            ax_d.plot(xs, [j["ms_per_step"] for _, j in pts], styles.get(b, "x--"), color=color,
                      label=f"{m} batch {b}")
            if b == 1:
                ax_d.plot(xs, [j["hbm_floor_ms"] for _, j in pts], "--", color=color, alpha=0.5, linewidth=1,
                          label=f"{m} floor, batch 1")
    ax_p.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="prefill tokens/s",
             title="prefill (labels: % of the bf16 GEMM rate)")
    ax_d.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="ms per decode step",
             title="decode: batch 1 (o), 8 (s), 64 (^); dashed: the HBM floor at batch 1")
    for ax in (ax_p, ax_d):
        ax.grid(True, which="both", alpha=0.3)
    ax_p.legend(fontsize=8)
    ax_d.legend(fontsize=6, ncol=2)
    fig.suptitle(f"falcon-h1 CUDA backend, random bf16 weights at release shapes, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()

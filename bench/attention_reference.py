#!/usr/bin/env python3
"""A bar for the prefill attention: torch's scaled_dot_product_attention (its flash, cuDNN and
memory-efficient backends, bf16, causal, batch 1) at the release shapes' head counts, on the GPU
this runs on. Compare the TFLOP/s with the attention kernel's in a cuda-bench trace of the same
call (bench/trace_summary.py: the kernel's ms over the prompt's 4 T^2/2 hd H L FLOPs).

  python3 bench/attention_reference.py [--tokens 8192,16384] [--models 0.5b,1.5b-deep,7b] [--json out.jsonl]
  (--device cpu: a smoke test of the script itself; torch's math backend runs there too)
TFLOP/s = 4 * T^2/2 * hd * H / time, the best of 10 calls after 3 warm-ups; K and V have as many
heads as Q (the FLOPs and the bytes read per query head are those of the GQA shapes).
"""
import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"0.5b": (8, 64), "1.5b-deep": (6, 128), "7b": (12, 128)}  # query heads, head size
BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def best_seconds(fn, sync, reps=10):
    for _ in range(3):
        fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        a = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - a)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="8192,16384")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    out = open(a.json, "a") if a.json else None
    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    device = torch.cuda.get_device_name() if cuda else a.device
    backends = BACKENDS if cuda else BACKENDS + [SDPBackend.MATH]
    print(f"device: {device}, torch {torch.__version__}")
    for model in a.models.split(","):
        H, hd = SHAPES[model]
        for T in (int(t) for t in a.tokens.split(",")):
            q, k, v = (torch.randn(1, H, T, hd, device=a.device, dtype=torch.bfloat16) for _ in range(3))
            flops = 4.0 * T * T / 2 * hd * H
            for be in backends:
                try:
                    with sdpa_kernel(be):
                        s = best_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                                         sync)
                except RuntimeError as e:  # a backend that does not take this shape or GPU
                    print(f"{model:10s} T={T:6d} {be.name:20s} not run: {str(e).splitlines()[0][:90]}")
                    continue
                print(f"{model:10s} T={T:6d} {be.name:20s} {s * 1e3:8.3f} ms {flops / s / 1e12:7.1f} TFLOP/s", flush=True)
                if out:
                    out.write(json.dumps({"model": model, "tokens": T, "backend": be.name, "ms": s * 1e3,
                                          "TFLOPs": flops / s / 1e12, "device": device}) + "\n")
            del q, k, v


if __name__ == "__main__":
    main()

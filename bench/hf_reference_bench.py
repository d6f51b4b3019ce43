#!/usr/bin/env python3
"""transformers' FalconH1ForCausalLM (bf16, on the GPU, random weights) at the same release shapes
as cuda-bench, for the ratio. Its Mamba path here is the plain-torch one (no mamba_ssm kernels).

  python3 bench/hf_reference_bench.py --models 0.5b,1.5b-deep,7b --prefill 1024,4096 --decode-ctx 1024 \
      --decode-batch 1,8 --json out.jsonl
Prefill: one forward of T tokens (use_cache=False). Decode: generate() of 1 + N tokens minus
generate() of 1 token, over N, for B sequences of C tokens at once (tokens/s counts all B).
Sizes that run out of memory are reported as OOM.
"""
import argparse, json, time

import torch
from transformers import FalconH1Config, FalconH1ForCausalLM

SHAPES = {  # same as bench/cuda_bench.cpp (1.5b-deep and 7b: intermediate_size, vocab guessed)
    "0.5b": dict(num_hidden_layers=36, hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                 mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, intermediate_size=2048, vocab_size=32784,
                 tie_word_embeddings=True),
    "1.5b-deep": dict(num_hidden_layers=66, hidden_size=1280, num_attention_heads=6, num_key_value_heads=2,
                      head_dim=128, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=256, intermediate_size=3072,
                      vocab_size=65537, tie_word_embeddings=False),
    "7b": dict(num_hidden_layers=44, hidden_size=3072, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
               mamba_n_heads=24, mamba_d_head=128, mamba_d_state=256, intermediate_size=12288, vocab_size=130049,
               tie_word_embeddings=False),
}


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="0.5b,1.5b-deep,7b")
    ap.add_argument("--prefill", default="1024,4096")
    ap.add_argument("--decode-ctx", default="1024")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--decode-batch", default="1")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    out = open(a.json, "w") if a.json else None
    dev = torch.cuda.get_device_name(0)
    print(f"device: {dev}, torch {torch.__version__}")
    for name in a.models.split(","):
        s = SHAPES[name]
        cfg = FalconH1Config(**s, mamba_d_ssm=s["mamba_n_heads"] * s["mamba_d_head"], mamba_n_groups=1,
                             mamba_chunk_size=128, mamba_d_conv=4, rope_theta=1e11, max_position_embeddings=1 << 18,
                             mamba_rms_norm=False)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.device("cuda"):
            model = FalconH1ForCausalLM(cfg).to(torch.bfloat16).eval()
        print(f"== {name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params, init {time.perf_counter() - t0:.1f} s")
        V = s["vocab_size"]

        def rec(**kw):
            kw.update(model=name, device=dev, impl="transformers")
            print(json.dumps(kw))
            if out:
                out.write(json.dumps(kw) + "\n")
                out.flush()

        with torch.no_grad():
            ids = torch.randint(0, V, (1, 64), device="cuda")
            model(ids, use_cache=False)  # warm-up
            for T in [int(x) for x in a.prefill.split(",") if x]:
                ids = torch.randint(0, V, (1, T), device="cuda")
                try:
                    ts = [sync_time(lambda: model(ids, use_cache=False, logits_to_keep=1)) for _ in range(2)]
                    rec(kind="prefill", tokens=T, tokens_per_s=T / min(ts), ms=min(ts) * 1e3,
                        max_mem_GB=torch.cuda.max_memory_allocated() / 1e9)
                except torch.OutOfMemoryError:
                    rec(kind="prefill", tokens=T, error="OOM")
                torch.cuda.empty_cache()
            for C in [int(x) for x in a.decode_ctx.split(",") if x]:
                for B in [int(x) for x in a.decode_batch.split(",") if x]:
                    ids = torch.randint(0, V, (B, C), device="cuda")
                    try:
                        g = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
                        t1 = sync_time(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **g))
                        n = a.decode_steps
                        tn = sync_time(lambda: model.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1, **g))
                        step = (tn - t1) / n
                        rec(kind="decode", batch=B, context=C, tokens_per_s=B / step, ms_per_step=step * 1e3)
                    except torch.OutOfMemoryError:
                        rec(kind="decode", batch=B, context=C, error="OOM")
                    except Exception as e:  # noqa: BLE001 - report and go on
                        rec(kind="decode", batch=B, context=C, error=repr(e)[:300])
                    torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a random-weight Falcon-H1 checkpoint of the 0.5B release shape in Hugging Face format.

For benchmarks only (bench/llamacpp_compare.sh): both engines can then load the same file, ours
directly, llama.cpp after convert_hf_to_gguf.py. The weights are random (deterministic for a
seed), rounded to bf16, scaled so that activations stay in a sane range; the text it produces is
noise. Speed does not depend on the values.

Shape: ../shared/design/falcon-h1-model.md and src/model/benchmark_model.cpp ("0.5B"): 36 layers,
hidden 1024, 8 attention heads (2 KV, head_dim 64), 24 Mamba heads x 64 (d_ssm 1536), d_state 128,
1 group, conv 4, MLP 2048, vocab 32784, untied lm_head, RoPE base 1e11, the published muP
multipliers. The tokenizer files are copied from --tokenizer-from (the tiny model's 4096-token
BPE); config.json keeps vocab_size 32784 (ids >= 4096 are never produced by that tokenizer;
convert_hf_to_gguf.py pads the GGUF vocabulary with [PADn] entries up to vocab_size).

Needs only numpy: the safetensors file is written by hand (8-byte header length, JSON header,
raw little-endian bf16 data).

    python3 bench/make_random_checkpoint.py --out /tmp/falcon-h1-0.5b-random \
        --tokenizer-from models/falcon-h1-tiny
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

SHAPE = dict(
    num_hidden_layers=36, hidden_size=1024, num_attention_heads=8, num_key_value_heads=2,
    head_dim=64, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1,
    mamba_d_conv=4, intermediate_size=2048, vocab_size=32784,
)


def make_config(s):
    d_ssm = s["mamba_n_heads"] * s["mamba_d_head"]
    return {
        "architectures": ["FalconH1ForCausalLM"],
        "model_type": "falcon_h1",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_in_multiplier": 1.0,
        "attention_out_multiplier": 0.9375,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "embedding_multiplier": 5.656854249492381,
        "head_dim": s["head_dim"],
        "hidden_act": "silu",
        "hidden_size": s["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": s["intermediate_size"],
        "key_multiplier": 0.39062499999999994,
        "lm_head_multiplier": 0.0390625,
        "mamba_chunk_size": 128,
        "mamba_conv_bias": True,
        "mamba_d_conv": s["mamba_d_conv"],
        "mamba_d_head": s["mamba_d_head"],
        "mamba_d_ssm": d_ssm,
        "mamba_d_state": s["mamba_d_state"],
        "mamba_expand": d_ssm / s["hidden_size"],
        "mamba_n_groups": s["mamba_n_groups"],
        "mamba_n_heads": s["mamba_n_heads"],
        "mamba_norm_before_gate": False,
        "mamba_proj_bias": False,
        "mamba_rms_norm": False,
        "max_position_embeddings": 16384,
        "mlp_bias": False,
        "mlp_multipliers": [0.8838834764831844, 0.5859375],
        "num_attention_heads": s["num_attention_heads"],
        "num_hidden_layers": s["num_hidden_layers"],
        "num_key_value_heads": s["num_key_value_heads"],
        "num_logits_to_keep": 1,
        "projectors_bias": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000000000.0,
        "rope_scaling": None,
        "ssm_in_multiplier": 1.25,
        "ssm_multipliers": [0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
        "ssm_out_multiplier": 0.23570226039551587,
        "tie_word_embeddings": False,
        "time_step_limit": [0.0, float("inf")],
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": s["vocab_size"],
    }


def to_bf16(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))
    return (u >> 16).astype(np.uint16)


def tensors(s, rng):
    h = s["hidden_size"]
    d_ssm = s["mamba_n_heads"] * s["mamba_d_head"]
    gs = s["mamba_n_groups"] * s["mamba_d_state"]
    nh = s["mamba_n_heads"]
    conv_dim = d_ssm + 2 * gs
    in_proj = 2 * d_ssm + 2 * gs + nh
    q = s["num_attention_heads"] * s["head_dim"]
    kv = s["num_key_value_heads"] * s["head_dim"]
    ff = s["intermediate_size"]
    v = s["vocab_size"]

    def lin(out, inp):
        # uniform with std 1/sqrt(inp): unit-scale outputs for unit-scale inputs
        a = np.float32(np.sqrt(3.0 / inp))
        return rng.uniform(-a, a, size=(out, inp)).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    yield "model.embed_tokens.weight", rng.uniform(-1, 1, size=(v, h)).astype(np.float32)
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", ones(h)
        yield p + "pre_ff_layernorm.weight", ones(h)
        yield p + "self_attn.q_proj.weight", lin(q, h)
        yield p + "self_attn.k_proj.weight", lin(kv, h)
        yield p + "self_attn.v_proj.weight", lin(kv, h)
        yield p + "self_attn.o_proj.weight", lin(h, q)
        yield p + "feed_forward.gate_proj.weight", lin(ff, h)
        yield p + "feed_forward.up_proj.weight", lin(ff, h)
        yield p + "feed_forward.down_proj.weight", lin(h, ff)
        yield p + "mamba.in_proj.weight", lin(in_proj, h)
        yield p + "mamba.out_proj.weight", lin(h, d_ssm)
        yield p + "mamba.conv1d.weight", rng.uniform(-0.5, 0.5, size=(conv_dim, 1, s["mamba_d_conv"])).astype(np.float32)
        yield p + "mamba.conv1d.bias", rng.uniform(-0.1, 0.1, size=conv_dim).astype(np.float32)
        yield p + "mamba.A_log", np.log(rng.uniform(1, 16, size=nh)).astype(np.float32)
        yield p + "mamba.D", ones(nh)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=nh))
        yield p + "mamba.dt_bias", (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    yield "model.final_layernorm.weight", ones(h)
    yield "lm_head.weight", lin(v, h)


def write_safetensors(path, items):
    header, blobs, off = {}, [], 0
    for name, arr in items:
        b = to_bf16(arr).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--tokenizer-from", required=True, help="directory with tokenizer.json etc. to copy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=SHAPE["vocab_size"],
                    help="vocab_size of config.json and the embedding/lm_head rows (default 32784, the 0.5B release's)")
    args = ap.parse_args()

    s = dict(SHAPE, vocab_size=args.vocab)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    nbytes = write_safetensors(os.path.join(args.out, "model.safetensors"), tensors(s, rng))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(make_config(s), f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, f, indent=2)
        f.write("\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = os.path.join(args.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(args.out, name))
    print(f"wrote {args.out}: {nbytes / 2 / 1e6:.1f} M parameters, {nbytes / 1e6:.1f} MB bf16", file=sys.stderr)


if __name__ == "__main__":
    main()

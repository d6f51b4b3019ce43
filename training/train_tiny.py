#!/usr/bin/env python3
"""Train the tiny Falcon-H1 (issue 7) with transformers' FalconH1ForCausalLM.

Reads the packed uint16 token streams of pack.py (training/data/{train,heldout}.bin)
and the tokenizer directory of train_tokenizer.py, trains for a fixed wall-clock
budget (the number of optimizer steps is sized from the measured speed of the
first steps so that the cosine schedule ends on time), and writes a Hugging Face
model directory (bf16 safetensors) plus metrics/plots.

Model: every layer runs attention and Mamba-2 in parallel (Falcon-H1), with the muP
multipliers and RoPE base of the published Falcon-H1-0.5B config, scaled down.

Usage (GPU):  python3 training/train_tiny.py --out OUTDIR [--time-budget 240]
Smoke test:   python3 training/train_tiny.py --device cpu --time-budget 20 --batch 2 --out /tmp/x
"""
import argparse
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def _einsum_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None,
                       dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, **kwargs):
    """Chunked SSD scan (torch), the same computation as transformers' reference `mamba2_chunk_scan`
    but written with einsums: older transformers releases (e.g. 5.17, on the GPU machine) form the
    contractions as broadcast products of shape (b, c, l, s, h, n), several GB per layer, which made
    training memory-bound (2 steps/s). Newer releases (5.23) use einsums as here."""
    bsz, T, H, P = hidden_states.shape
    G = B.shape[2]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
    x = hidden_states.float()
    B = B.float().repeat_interleave(H // G, dim=2, output_size=H)
    C = C.float().repeat_interleave(H // G, dim=2, output_size=H)
    pad = (chunk_size - T % chunk_size) % chunk_size
    D_res = None
    if D is not None:
        D_res = D[..., None] * F.pad(x, (0, 0, 0, 0, 0, pad))
    x = x * dt[..., None].float()
    A = A.to(x.dtype) * dt.float()

    def chunks(t):
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(t.shape[0], -1, chunk_size, *t.shape[2:])

    x, A, B, C = chunks(x), chunks(A), chunks(B), chunks(C)
    A = A.permute(0, 3, 1, 2)                      # b h c l
    A_cumsum = torch.cumsum(A, dim=-1)

    def segsum(t):
        n = t.size(-1)
        t = t[..., None].expand(*t.size(), n)
        m = torch.tril(torch.ones(n, n, device=t.device, dtype=torch.bool), diagonal=-1)
        t = torch.cumsum(t.masked_fill(~m, 0), dim=-2)
        m = torch.tril(torch.ones(n, n, device=t.device, dtype=torch.bool), diagonal=0)
        return t.masked_fill(~m, -torch.inf)

    Lm = torch.exp(segsum(A))                       # b h c l s
    Gm = torch.einsum("bclhn,bcshn->bclsh", C, B)
    M = Gm * Lm.permute(0, 2, 3, 4, 1)
    Y_diag = torch.einsum("bclsh,bcshp->bclhp", M, x)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    B_decay = B * decay_states.permute(0, -2, -1, 1)[..., None]
    states = torch.einsum("bclhn,bclhp->bchpn", B_decay, x)
    prev = (initial_states[:, None].to(dtype=states.dtype, device=states.device)
            if initial_states is not None else torch.zeros_like(states[:, :1]))
    states = torch.cat([prev, states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0)))).transpose(1, 3)
    new_states = torch.einsum("bzch,bzhpn->bchpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn->bclhp", C, states) * torch.exp(A_cumsum).permute(0, 2, 3, 1)[..., None]
    out = (Y_diag + Y_off).reshape(bsz, -1, H, P)
    if D_res is not None:
        out = out + D_res
    if pad > 0:
        out = out[:, :T].contiguous()
    if return_final_states:
        return out, final_state
    return out


def maybe_patch_chunk_scan():
    import inspect
    from transformers.models.falcon_h1 import modeling_falcon_h1 as m
    fn = getattr(m, "mamba2_chunk_scan", None)
    if fn is None:
        return False
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = ""
    if "einsum" in src:
        return False
    m.mamba2_chunk_scan = _einsum_chunk_scan
    return True


def model_config(vocab_size, args):
    from transformers import FalconH1Config
    cfg = FalconH1Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e11},
        attention_bias=False,
        mlp_bias=False,
        projectors_bias=False,
        mamba_d_ssm=8 * 64,
        mamba_n_heads=8,
        mamba_d_head=64,
        mamba_n_groups=1,
        mamba_d_state=64,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=128,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        mamba_rms_norm=False,
        mamba_norm_before_gate=False,
        # muP multipliers of the Falcon-H1-0.5B release
        embedding_multiplier=5.656854249492381,
        lm_head_multiplier=0.0390625,
        key_multiplier=0.39062499999999994,
        attention_in_multiplier=1.0,
        attention_out_multiplier=0.9375,
        ssm_in_multiplier=1.25,
        ssm_out_multiplier=0.23570226039551587,
        mlp_multipliers=[0.8838834764831844, 0.5859375],
        ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        use_cache=True,
    )
    assert cfg.rope_parameters["rope_theta"] == 1e11, cfg.rope_parameters
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "data", "tokenizer"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--time-budget", type=float, default=240.0, help="seconds of training (eval excluded)")
    ap.add_argument("--steps", type=int, default=0, help="fixed number of optimizer steps (overrides --time-budget)")
    ap.add_argument("--final-eval-windows", type=int, default=0, help="held-out windows of the final eval (0: all)")
    ap.add_argument("--measure-steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transformers import FalconH1ForCausalLM, GenerationConfig
    import transformers
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; "
          f"einsum chunk-scan patch applied: {maybe_patch_chunk_scan()}", flush=True)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    meta = json.load(open(os.path.join(args.data, "pack_meta.json")))
    train = np.fromfile(os.path.join(args.data, "train.bin"), dtype=np.uint16)
    held = np.fromfile(os.path.join(args.data, "heldout.bin"), dtype=np.uint16)
    L = args.seq_len
    n_held = (held.size - 1) // L
    held_windows = torch.from_numpy(np.stack([held[i * L:i * L + L + 1] for i in range(n_held)]).astype(np.int64))
    print(f"train tokens {train.size}, heldout tokens {held.size} ({n_held} windows of {L}+1)", flush=True)

    cfg = model_config(meta["vocab_size"], args)
    model = FalconH1ForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params / 1e6:.2f} M)", flush=True)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=(dev.type == "cuda"))
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    gen = np.random.default_rng(args.seed)
    n_train_windows = (train.size - 1) // L

    def batch():
        starts = gen.integers(0, train.size - L - 1, size=args.batch)
        x = np.stack([train[s:s + L + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(x).to(dev, non_blocking=True)

    def loss_of(w):
        with autocast:
            logits = model(input_ids=w[:, :-1]).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate(nwin):
        model.eval()
        tot, cnt = 0.0, 0
        idx = list(range(min(nwin, n_held))) if nwin else list(range(n_held))
        for i in range(0, len(idx), 16):
            w = held_windows[idx[i:i + 16]].to(dev)
            l = loss_of(w)
            tot += l.item() * w.size(0)
            cnt += w.size(0)
        model.train()
        return tot / cnt

    total_steps = args.steps or None  # else decided after measuring
    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        T = total_steps or 10 ** 9
        p = min(1.0, (step - args.warmup) / max(1, T - args.warmup))
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    log = {"train": [], "heldout": [], "args": vars(args), "parameters": n_params}
    model.train()
    step = 0
    train_time = 0.0
    t_measure0 = None
    ema = None
    while True:
        if total_steps is not None and step >= total_steps:
            break
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        w = batch()
        loss = loss_of(w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()  # syncs
        dt = time.time() - t0
        train_time += dt
        step += 1
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if step == 3:
            t_measure0 = (train_time, step)
        if not args.steps and step == 3 + args.measure_steps:
            sps = (step - t_measure0[1]) / (train_time - t_measure0[0])
            # leave ~8% of the budget for the periodic evaluations' share of time slack
            total_steps = max(step + 1, int(step + (args.time_budget - train_time) * sps * 0.97))
            print(f"measured {sps:.2f} steps/s ({sps * args.batch * L / 1e3:.1f} k tok/s) -> total_steps {total_steps}"
                  f" = {total_steps * args.batch * L / 1e6:.1f} M tokens = {total_steps * args.batch * L / train.size:.2f} epochs",
                  flush=True)
            log["steps_per_s"] = sps
        if step % 10 == 0 or step == 1:
            log["train"].append({"step": step, "loss": lv, "lr": lr_at(step - 1), "grad_norm": float(gn),
                                 "time": train_time, "tokens": step * args.batch * L})
        if step % args.eval_every == 0 or step == 1:
            hl = evaluate(args.eval_windows)
            log["heldout"].append({"step": step, "loss": hl, "time": train_time, "tokens": step * args.batch * L})
            print(f"step {step:5d} t {train_time:6.1f}s lr {lr_at(step - 1):.2e} loss {lv:.4f} (ema {ema:.4f}) "
                  f"gnorm {float(gn):.2f} heldout {hl:.4f}", flush=True)
        if total_steps is None and train_time > args.time_budget:
            break

    final_held = evaluate(args.final_eval_windows)
    log["final"] = {"steps": step, "train_time_s": train_time, "tokens_seen": step * args.batch * L,
                    "train_loss_ema": ema, "heldout_loss_bf16_autocast": final_held,
                    "heldout_ppl_bf16_autocast": math.exp(final_held), "heldout_tokens": n_held * L}
    print("final", json.dumps(log["final"]), flush=True)
    log["heldout"].append({"step": step, "loss": final_held, "time": train_time, "tokens": step * args.batch * L,
                           "full": True})

    # save HF directory: bf16 weights
    out_model = os.path.join(args.out, "model")
    os.makedirs(out_model, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2, 4], pad_token_id=0,
                                               do_sample=False, max_new_tokens=256)
    model.save_pretrained(out_model, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(args.tokenizer, f), out_model)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(log, f, indent=1)

    # plot
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([r["tokens"] / 1e6 for r in log["train"]], [r["loss"] for r in log["train"]], label="train (batch)", lw=0.8)
        ax.plot([r["tokens"] / 1e6 for r in log["heldout"]], [r["loss"] for r in log["heldout"]], "o-", label="held-out", ms=3)
        ax.set_xlabel("training tokens (M)")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_ylim(top=min(9, max(r["loss"] for r in log["train"]) + 0.2))
        ax.set_title(f"falcon-h1-tiny ({n_params / 1e6:.1f} M params): final held-out ppl {math.exp(final_held):.2f}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "loss_curve.png"), dpi=110)
    except Exception as e:  # noqa: BLE001
        print("no plot:", e)

    # quick greedy samples (also redone on CPU after download)
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(out_model)
        model.eval()
        samples = {}
        for p in ["def fibonacci(n):", "import os\n", "class Stack:\n    \"\"\""]:
            ids = tok(p, return_tensors="pt").input_ids.to(dev)
            with torch.no_grad():
                o = model.generate(ids, max_new_tokens=64, do_sample=False)
            samples[p] = tok.decode(o[0, ids.shape[1]:])
            print("=" * 20, repr(p), "\n" + p + samples[p], flush=True)
        json.dump(samples, open(os.path.join(args.out, "samples_device.json"), "w"), indent=1)
    except Exception as e:  # noqa: BLE001
        print("no samples:", e)


if __name__ == "__main__":
    main()

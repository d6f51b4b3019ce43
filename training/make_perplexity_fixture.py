#!/usr/bin/env python3
"""Write the perplexity fixture of the tiny Falcon-H1 (issue 7) with transformers on CPU.

Sample: the first lines (whole lines, at most --max-tokens tokens including BOS) of one
held-out file of training/data/docs_heldout.jsonl, written byte-exact (UTF-8, '\\n'
line ends, ending with '\\n') to tests/fixtures/perplexity/heldout_sample.txt.

Method (the C++ `falcon-h1 perplexity -m DIR FILE` must reproduce it):
  * ids = HF tokenizer(whole file content, add_special_tokens=True): the post-processor
    prepends <|begin_of_text|> (id 1); no EOS is appended;
  * one window holding all ids (the sample is at most 1024 tokens), no stride;
  * model: FalconH1ForCausalLM loaded from the bf16 safetensors with dtype=torch.float32,
    eval mode, no cache;
  * NLL_i = -log softmax(logits[i])[ids[i+1]] for i = 0 .. n-2 (n-1 predicted tokens,
    the BOS is never predicted), mean over all of them, perplexity = exp(mean NLL).

Outputs: heldout_sample.txt, ids.json, expected.json (with the per-token NLLs).
Usage: python3 training/make_perplexity_fixture.py [--model models/falcon-h1-tiny]
"""
import argparse
import hashlib
import json
import math
import os

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "models", "falcon-h1-tiny"))
    ap.add_argument("--heldout", default=os.path.join(HERE, "data", "docs_heldout.jsonl"))
    ap.add_argument("--path", default="distutils/version.py", help="held-out file to sample")
    ap.add_argument("--max-tokens", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "perplexity"))
    args = ap.parse_args()

    from transformers import AutoTokenizer, FalconH1ForCausalLM
    import transformers

    tok = AutoTokenizer.from_pretrained(args.model)
    doc = next(d for d in map(json.loads, open(args.heldout, encoding="utf-8")) if d["path"] == args.path)
    lines = doc["text"].split("\n")
    text = ""
    for k in range(1, len(lines) + 1):
        cand = "\n".join(lines[:k]).rstrip("\n") + "\n"
        if len(tok(cand)["input_ids"]) > args.max_tokens:
            break
        text = cand
    os.makedirs(args.out, exist_ok=True)
    sample_path = os.path.join(args.out, "heldout_sample.txt")
    with open(sample_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    raw = open(sample_path, "rb").read()
    text = raw.decode("utf-8")

    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    json.dump({"add_special_tokens": True, "bos_prepended": True, "ids": ids},
              open(os.path.join(args.out, "ids.json"), "w"))

    model = FalconH1ForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    tgt = torch.tensor(ids[1:])
    nll32 = F.cross_entropy(logits[:-1], tgt, reduction="none")
    nll64 = F.cross_entropy(logits[:-1].double(), tgt, reduction="none")
    mean32 = nll32.mean().item()
    mean64 = nll64.mean().item()
    weights_sha = hashlib.sha256(open(os.path.join(args.model, "model.safetensors"), "rb").read()).hexdigest()
    expected = {
        "model": "models/falcon-h1-tiny",
        "model_safetensors_sha256": weights_sha,
        "sample": "heldout_sample.txt",
        "sample_source": f"CPython 3.11.7 Lib/{args.path} (PSF-2.0), held-out split, first lines "
                         "(boilerplate comment lines removed by training/make_dataset.py)",
        "sample_sha256": hashlib.sha256(raw).hexdigest(),
        "sample_bytes": len(raw),
        "method": {
            "tokenization": "HF tokenizer on the whole file content, add_special_tokens=True: "
                            "<|begin_of_text|> (id 1) prepended, no EOS appended",
            "window": "single window of all tokens (n_tokens <= 1024), no stride",
            "predicted_positions": "n_tokens - 1 (every token after the BOS)",
            "nll": "-log_softmax(logits[i])[ids[i+1]], logits of the float32 model",
            "perplexity": "exp(mean nll)",
            "dtype": "weights stored bf16, loaded with dtype=torch.float32; computation float32 on CPU",
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}",
        },
        "n_tokens": len(ids),
        "n_predicted": len(ids) - 1,
        "mean_nll": mean32,
        "perplexity": math.exp(mean32),
        "mean_nll_float64_logsoftmax": mean64,
        "perplexity_float64_logsoftmax": math.exp(mean64),
        "tolerance_relative": 1e-3,
        "token_nll": [round(v, 6) for v in nll32.tolist()],
    }
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(json.dumps({k: v for k, v in expected.items() if k != "token_nll"}, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tokenize and pack the corpus for training (issue 7).

Each document becomes  <|begin_of_text|> text <|end_of_text|>  (the tokenizer's
post-processor adds the BOS; the EOS is appended here) and all documents of a split
are concatenated in file order into one flat stream of token ids, stored as
little-endian uint16 (the vocabulary has 4096 entries):

  training/data/train.bin, training/data/heldout.bin, training/data/pack_meta.json

The trainer cuts the stream into windows of seq_len+1 tokens; documents may span
window boundaries (no padding, no attention reset), as in usual LM pre-training.

Usage: python3 training/pack.py [--tokenizer training/data/tokenizer] [--data training/data]
"""
import argparse
import hashlib
import json
import os

import numpy as np
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "data", "tokenizer"))
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    eos = tok.token_to_id("<|end_of_text|>")
    assert tok.get_vocab_size() <= 65536
    meta = {"dtype": "uint16", "eos_id": eos, "bos_id": tok.token_to_id("<|begin_of_text|>"),
            "vocab_size": tok.get_vocab_size(), "format": "<|begin_of_text|> doc <|end_of_text|>, concatenated"}
    for split in ("train", "heldout"):
        texts = [json.loads(l)["text"] for l in open(os.path.join(args.data, f"docs_{split}.jsonl"), encoding="utf-8")]
        encs = tok.encode_batch(texts, add_special_tokens=True)
        ids = []
        for e in encs:
            ids.extend(e.ids)
            ids.append(eos)
        arr = np.asarray(ids, dtype=np.uint16)
        path = os.path.join(args.data, f"{split}.bin")
        arr.tofile(path)
        meta[split] = {"documents": len(texts), "tokens": int(arr.size), "chars": sum(map(len, texts)),
                       "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        print(split, meta[split])
    json.dump(meta, open(os.path.join(args.data, "pack_meta.json"), "w"), indent=1)


if __name__ == "__main__":
    main()

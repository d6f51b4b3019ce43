#!/usr/bin/env python3
"""Build the deduplicated text corpus for the tiny Falcon-H1 (issue 7).

Offline only: the corpus is the CPython standard library's Python sources
(PSF License 2.0) as shipped with an installed Python. Every file is read as
UTF-8 (files that are not valid UTF-8 are skipped), filtered, deduplicated and
assigned to the train or held-out split by file.

Steps (all deterministic, no randomness):
  1. collect   *.py under each source root (site-packages excluded);
  2. filter    too small / too large / data-like files (long lines, little text);
  3. exact dedup on the SHA-256 of the whitespace-normalised text;
  4. near-dup  MinHash (64 permutations, 5-line shingles, LSH 16 bands x 4 rows),
               a candidate pair is confirmed by exact Jaccard >= 0.7 and the file
               that sorts later is dropped;
  5. lines     comment lines ('#...', >= 20 chars) present in >= 20 files are
               boilerplate (licence banners etc.) and removed everywhere;
  6. split     held out when int(sha1(relative path)[:8], 16) % 50 == 0 (about 2%).

Outputs (training/data/ is git-ignored; manifest.json is small and committed):
  training/data/docs_train.jsonl, training/data/docs_heldout.jsonl
      one JSON object per line: {"id", "source", "path", "license", "sha256", "text"}
  training/manifest.json
      sources, licences, filter settings, per-file split and the dropped files.

Usage:
  python3 training/make_dataset.py [--root DIR ...] [--out training/data]
"""
import argparse
import collections
import hashlib
import json
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT_ROOTS = [
    "/root/.pyenv/versions/3.11.7/lib/python3.11",
    "/usr/lib/python3.11",
]

SOURCE_INFO = {
    "cpython-stdlib": {
        "description": "CPython 3.11 standard library sources (*.py, tests included)",
        "license": "PSF-2.0",
        "license_file": "LICENSE.txt in the stdlib directory (Python Software Foundation License Version 2)",
    },
}

MIN_BYTES = 200
MAX_BYTES = 800_000
MAX_LINE = 1000
MAX_MEAN_LINE = 100
MIN_TEXT_FRACTION = 0.6
NEAR_DUP_JACCARD = 0.7
SHINGLE = 5
NUM_PERM = 64
BANDS = 16
BOILERPLATE_MIN_FILES = 20
HELDOUT_MOD = 50

SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__", "lib-dynload",
              "config-3.11-x86_64-linux-gnu"}
SKIP_NAME_RE = re.compile(r"^_sysconfigdata_")


def collect(root):
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_PARTS)
        for fn in sorted(filenames):
            if fn.endswith(".py") and not SKIP_NAME_RE.match(fn):
                full = os.path.join(dirpath, fn)
                if os.path.islink(full):
                    continue
                files.append((os.path.relpath(full, root), full))
    return files


def normalise(text):
    # Unix newlines, no trailing whitespace, no trailing blank lines, tabs kept.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [l.rstrip() for l in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) + "\n"


def filter_reason(raw_len, text):
    if raw_len < MIN_BYTES:
        return "too_small"
    if raw_len > MAX_BYTES:
        return "too_large"
    lines = text.split("\n")
    if max(len(l) for l in lines) > MAX_LINE:
        return "long_line"
    if len(text) / max(1, len(lines)) > MAX_MEAN_LINE:
        return "long_mean_line"
    good = sum(1 for c in text if c.isalnum() or c.isspace())
    if good / len(text) < MIN_TEXT_FRACTION:
        return "not_text"
    if "\x00" in text:
        return "nul"
    return None


def shingles(text):
    lines = [" ".join(l.split()) for l in text.split("\n")]
    lines = [l for l in lines if l]
    out = set()
    if len(lines) < SHINGLE:
        out.add(hashlib.blake2b("\n".join(lines).encode(), digest_size=8).digest())
    for i in range(len(lines) - SHINGLE + 1):
        out.add(hashlib.blake2b("\n".join(lines[i:i + SHINGLE]).encode(), digest_size=8).digest())
    return out


_PRIME = (1 << 61) - 1
_rng = np.random.RandomState(1234)
_A = _rng.randint(1, 1 << 31, size=NUM_PERM).astype(np.uint64)
_B = _rng.randint(0, 1 << 31, size=NUM_PERM).astype(np.uint64)


def minhash(sh):
    v = np.array([int.from_bytes(s, "little") & 0x7FFFFFFF for s in sh], dtype=np.uint64)
    # (a*v + b) mod 2^32-ish, vectorised; uint64 arithmetic wraps, which is fine for hashing
    h = (v[None, :] * _A[:, None] + _B[:, None]) & np.uint64(0xFFFFFFFF)
    return h.min(axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", action="append", help="stdlib directory (repeatable); default: first existing of %s" % DEFAULT_ROOTS)
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    ap.add_argument("--manifest", default=os.path.join(HERE, "manifest.json"))
    args = ap.parse_args()

    roots = args.root or [next(r for r in DEFAULT_ROOTS if os.path.isdir(r))]
    os.makedirs(args.out, exist_ok=True)

    docs = []          # dicts
    dropped = collections.defaultdict(list)
    for root in roots:
        for rel, full in collect(root):
            raw = open(full, "rb").read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                dropped["not_utf8"].append(rel)
                continue
            if text.startswith("\ufeff"):
                text = text[1:]
            text = normalise(text)
            why = filter_reason(len(raw), text)
            if why:
                dropped[why].append(rel)
                continue
            docs.append({"source": "cpython-stdlib", "root": root, "path": rel,
                         "license": SOURCE_INFO["cpython-stdlib"]["license"], "text": text})
    print(f"collected {len(docs)} files after filters; dropped: "
          + ", ".join(f"{k}={len(v)}" for k, v in sorted(dropped.items())), file=sys.stderr)

    # exact dedup
    seen = {}
    kept = []
    for d in sorted(docs, key=lambda d: d["path"]):
        key = hashlib.sha256(" ".join(d["text"].split()).encode()).hexdigest()
        if key in seen:
            dropped["exact_dup"].append(f'{d["path"]} == {seen[key]}')
            continue
        seen[key] = d["path"]
        kept.append(d)
    docs = kept

    # near dedup (MinHash LSH + exact Jaccard confirmation)
    sh = [shingles(d["text"]) for d in docs]
    sigs = np.stack([minhash(s) for s in sh])
    rows = NUM_PERM // BANDS
    buckets = collections.defaultdict(list)
    for i in range(len(docs)):
        for b in range(BANDS):
            buckets[(b, sigs[i, b * rows:(b + 1) * rows].tobytes())].append(i)
    removed = set()
    for i in range(len(docs)):
        if i in removed:
            continue
        cands = set()
        for b in range(BANDS):
            cands.update(buckets[(b, sigs[i, b * rows:(b + 1) * rows].tobytes())])
        for j in sorted(cands):
            if j <= i or j in removed:
                continue
            inter = len(sh[i] & sh[j])
            jac = inter / max(1, len(sh[i] | sh[j]))
            if jac >= NEAR_DUP_JACCARD:
                removed.add(j)
                dropped["near_dup"].append(f'{docs[j]["path"]} ~ {docs[i]["path"]} (J={jac:.2f})')
    docs = [d for k, d in enumerate(docs) if k not in removed]

    # boilerplate comment lines
    line_files = collections.Counter()
    for d in docs:
        for l in set(d["text"].split("\n")):
            s = l.strip()
            if s.startswith("#") and len(s) >= 20:
                line_files[s] += 1
    boiler = {l for l, c in line_files.items() if c >= BOILERPLATE_MIN_FILES}
    n_removed_lines = 0
    for d in docs:
        lines = d["text"].split("\n")
        new = [l for l in lines if l.strip() not in boiler]
        n_removed_lines += len(lines) - len(new)
        d["text"] = normalise("\n".join(new))

    # split and write
    out = {"train": [], "heldout": []}
    for d in docs:
        d["sha256"] = hashlib.sha256(d["text"].encode()).hexdigest()
        split = "heldout" if int(hashlib.sha1(d["path"].encode()).hexdigest()[:8], 16) % HELDOUT_MOD == 0 else "train"
        out[split].append(d)
    for split, ds in out.items():
        with open(os.path.join(args.out, f"docs_{split}.jsonl"), "w", encoding="utf-8") as f:
            for k, d in enumerate(ds):
                f.write(json.dumps({"id": k, "source": d["source"], "path": d["path"], "license": d["license"],
                                    "sha256": d["sha256"], "text": d["text"]}, ensure_ascii=False) + "\n")

    stats = {s: {"files": len(ds), "chars": sum(len(d["text"]) for d in ds)} for s, ds in out.items()}
    manifest = {
        "sources": SOURCE_INFO,
        "roots": roots,
        "python_version": sys.version.split()[0],
        "settings": {"min_bytes": MIN_BYTES, "max_bytes": MAX_BYTES, "max_line": MAX_LINE,
                     "max_mean_line": MAX_MEAN_LINE, "min_text_fraction": MIN_TEXT_FRACTION,
                     "near_dup_jaccard": NEAR_DUP_JACCARD, "shingle_lines": SHINGLE,
                     "minhash_perm": NUM_PERM, "lsh_bands": BANDS,
                     "boilerplate_min_files": BOILERPLATE_MIN_FILES,
                     "heldout_rule": f"int(sha1(path)[:8],16) % {HELDOUT_MOD} == 0"},
        "stats": stats,
        "boilerplate_lines_removed": n_removed_lines,
        "boilerplate_lines": sorted(boiler),
        "dropped": {k: sorted(v) for k, v in sorted(dropped.items())},
        "files": {s: [[d["path"], d["sha256"]] for d in ds] for s, ds in out.items()},
    }
    with open(args.manifest, "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps({"stats": stats, "dropped": {k: len(v) for k, v in dropped.items()},
                      "boilerplate_lines_removed": n_removed_lines}, indent=1))


if __name__ == "__main__":
    main()

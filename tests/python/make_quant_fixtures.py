"""Reference bytes for the block formats, made by the `gguf` package (llama.cpp's gguf-py), so a
test can check that our Q8_0 / Q4_0 / Q4_K rows are GGUF's exactly:
  - input.f32:      ROWS x COLS random float32 values (some rows scaled, one with zeros)
  - q8_0.bin, q4_0.bin: gguf.quants.quantize() of input (ggml's reference quantizers)
  - q4_k_blocks.bin: random Q4_K blocks (gguf-py has no Q4_K quantizer), d and dmin finite
  - q4_k_dequant.f32: gguf.quants.dequantize() of those blocks
Usage: python3 tests/python/make_quant_fixtures.py tests/fixtures/quant   (pip install gguf numpy)
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROWS, COLS = 6, 512


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    x[1] *= 1e-3
    x[2] *= 40.0
    x[3, :64] = 0.0  # all-zero blocks: scale 0
    x[4, ::7] = 0.0
    x.tofile(out / "input.f32")
    for name, t in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
        q = quants.quantize(x, t)
        q.tofile(out / f"{name}.bin")
    # Random Q4_K blocks: every byte random but the two fp16 scales (small and finite).
    nblocks = ROWS * COLS // 256
    blocks = rng.integers(0, 256, size=(nblocks, 144), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, size=(nblocks, 2)).astype(np.float16)
    blocks[:, 0:4] = scales.view(np.uint8).reshape(nblocks, 4)
    blocks = blocks.reshape(ROWS, COLS // 256 * 144)
    blocks.tofile(out / "q4_k_blocks.bin")
    quants.dequantize(blocks, T.Q4_K).astype(np.float32).tofile(out / "q4_k_dequant.f32")
    (out / "meta.json").write_text(json.dumps({"rows": ROWS, "cols": COLS, "gguf": version("gguf"),
                                               "numpy": np.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/quant"))

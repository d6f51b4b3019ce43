#!/usr/bin/env bash
# On a GPU machine: build with -DFALCON_H1_CUDA=ON (or use a carried build), run the CUDA tests,
# the CUDA benchmark and transformers' reference benchmark; results go to $OUT (default ./gpu-out).
#   scripts/gpu_check.sh                  build in build-cuda, then test and bench
#   GPU_CHECK_PREBUILT=1 scripts/gpu_check.sh   use build-cuda as it is (built elsewhere)
# Knobs: BENCH_MODELS, BENCH_ARGS (e.g. "--matmul bf16"), BENCH_PREFILL, BENCH_DECODE_CTX, BENCH_BATCHES,
#   BENCH_CHUNK, BENCH2_ARGS (a second cuda-bench run with other options, e.g. "--matmul bf16 --decode-ctx 0"),
#   HF_MODELS, HF_PREFILL, HF_DECODE_CTX, HF_DECODE_BATCH, ATTN_REF_TOKENS, SKIP_HF=1 (also skips torch's
#   attention), SKIP_TESTS=1, ATTN_SHAPES (e.g. "12 16 17 18": the prefill attention alone under each
#   FH1_CUDA_FLASH_WGMMA block shape, interleaved, at ATTN_TOKENS, default 8192,32768).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
BUILD=${BUILD:-build-cuda}
export LD_LIBRARY_PATH="$PWD/$BUILD/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/device.txt"
if [ "${GPU_CHECK_PREBUILT:-0}" != 1 ]; then
  start=$(date +%s)
  cmake -S . -B "$BUILD" -DFALCON_H1_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j"$(nproc)" --target test_cuda cuda-bench >>"$OUT/build.log" 2>&1 ||
    { echo "BUILD FAILED"; tail -30 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi

# The tests find the fixtures through the source path compiled in (FIXTURES_SRC, /work/main by
# default): when this checkout lives elsewhere, link that path to it.
src=${FIXTURES_SRC:-/work/main}
if [ ! -d "$src/tests/fixtures" ]; then mkdir -p "$(dirname "$src")" && ln -sfn "$PWD" "$src"; fi

test_rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== CUDA tests"
  timeout "${TEST_TIMEOUT:-240}" "$BUILD/tests/cuda/test_cuda" --gtest_color=no 2>&1 | tee "$OUT/test_cuda.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED) |cuda logits|Failure|Expected|Which is|rel\(|error" | head -80
  test_rc=${PIPESTATUS[0]}
  echo "test_cuda exit code: $test_rc"
fi

echo "== cuda-bench"
timeout "${BENCH_TIMEOUT:-300}" "$BUILD/cuda-bench" --models "${BENCH_MODELS:-0.5b,1.5b-deep,7b}" \
  --prefill "${BENCH_PREFILL:-1024,4096,16384,32768,65536}" --decode-ctx "${BENCH_DECODE_CTX:-1024,16384,131072}" \
  --batches "${BENCH_BATCHES:-1,8,64}" --prefill-chunk "${BENCH_CHUNK:-32768}" \
  --json "$OUT/cuda_bench.jsonl" --dir /dev/shm ${BENCH_ARGS:-} 2>&1 | tee "$OUT/cuda_bench.txt"
bench_rc=${PIPESTATUS[0]}
if [ -n "${BENCH2_ARGS:-}" ]; then
  echo "== cuda-bench (second run: ${BENCH2_ARGS})"
  timeout "${BENCH2_TIMEOUT:-200}" "$BUILD/cuda-bench" --models "${BENCH_MODELS:-0.5b,1.5b-deep,7b}" \
    --json "$OUT/cuda_bench2.jsonl" --dir /dev/shm ${BENCH2_ARGS} 2>&1 | tee "$OUT/cuda_bench2.txt"
fi

if [ -n "${ATTN_SHAPES:-}" ]; then
  echo "== the prefill attention alone by block shape (${ATTN_SHAPES})"
  shapes=()
  for v in $ATTN_SHAPES; do shapes+=("FH1_CUDA_FLASH_WGMMA=$v"); done
  BUILD=$BUILD AB_REPS=2 timeout "${ATTN_TIMEOUT:-300}" scripts/gpu_ab.sh "${shapes[@]}" -- \
    --models "${BENCH_MODELS:-0.5b,1.5b-deep,7b}" --prefill 0 --decode-ctx 0 --attn-tokens "${ATTN_TOKENS:-8192,32768}" \
    --dir /dev/shm 2>&1 | tee "$OUT/attention_shapes.txt" | sed -n '/^== best/,$p'
fi

if [ "${SKIP_HF:-0}" != 1 ]; then
  echo "== transformers reference"
  PYTHONUNBUFFERED=1 timeout "${HF_TIMEOUT:-200}" python3 bench/hf_reference_bench.py --models "${HF_MODELS:-0.5b,1.5b-deep,7b}" \
    --prefill "${HF_PREFILL:-1024,4096}" --decode-ctx "${HF_DECODE_CTX:-1024}" --decode-batch "${HF_DECODE_BATCH:-1,8}" \
    --json "$OUT/hf_bench.jsonl" 2>&1 |
    grep -v Warning | tee "$OUT/hf_bench.txt"
  echo "== torch attention (a bar for the prefill attention kernel)"
  PYTHONUNBUFFERED=1 timeout "${HF_TIMEOUT:-200}" python3 bench/attention_reference.py --tokens "${ATTN_REF_TOKENS:-8192,16384}" \
    --json "$OUT/attention_reference.jsonl" 2>&1 | grep -v Warning | tee "$OUT/attention_reference.txt"
fi
# cuda-bench's status 3: a prompt gave non-finite logits, so its times are not of real arithmetic.
if [ "$bench_rc" = 3 ]; then
  echo "== cuda-bench: a prompt gave non-finite logits (NOT FINITE in cuda_bench.txt)"
  [ "$test_rc" = 0 ] && test_rc=3
fi
exit "$test_rc"

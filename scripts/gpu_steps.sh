#!/usr/bin/env bash
# On a GPU machine: a list of steps in one call over a build made elsewhere (device time is short:
# one call, no build there). Results go to $OUT (default ./gpu-out).
#   PACK=build-cuda/pack.tar.xz scripts/gpu_steps.sh tests "bench:--models 7b --prefill 8192 --decode-ctx 0" \
#       trace:1.5b-deep:8192 ncu:attn_flash_wgmma:1.5b-deep:8192 "sh:scripts/gpu_ab.sh '' X=1 -- --models 0.5b"
# Steps:
#   tests               test_cuda (TEST_FILTER: a gtest filter; its log in $OUT/test_cuda.log)
#   bench:ARGS          cuda-bench ARGS (JSON lines in $OUT/bench-N.jsonl)
#   trace:MODEL:T       one prompt of T tokens under the CUPTI tracer, summed per kernel
#                       (bench/trace_summary.py; the raw trace in $OUT, xz-compressed)
#   ncu:KERNEL:MODEL:T  Nsight Compute on one launch of the kernels matching KERNEL in that prompt
#   sh:COMMAND          any command, run by bash from the repository's root
# PACK: a tar.xz holding build-cuda/{cuda-bench,tests/cuda/test_cuda,libcupti-trace.so,lib/} (lib/
# with the libraries the machine lacks, e.g. libhwy.so.1 and libcupti.so.13); without it,
# build-cuda is used as it is. Make one here with
#   mkdir -p build-cuda/lib && cp -L /usr/lib/x86_64-linux-gnu/libhwy.so.1 \
#     /usr/local/cuda/lib64/libcupti.so.13 build-cuda/lib/ && tar -cJf build-cuda/pack.tar.xz \
#     build-cuda/cuda-bench build-cuda/tests/cuda/test_cuda build-cuda/libcupti-trace.so build-cuda/lib
# and name the pack in the device call's carry.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
[[ -n "${PACK:-}" ]] && tar -xJf "$PACK"
export LD_LIBRARY_PATH="$PWD/build-cuda/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# The tests find the fixtures through the source path compiled in (/work/main by default).
src=${FIXTURES_SRC:-/work/main}
if [[ ! -d "$src/tests/fixtures" ]]; then mkdir -p "$(dirname "$src")" && ln -sfn "$PWD" "$src"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv |
  tee "$OUT/device.txt"
status=0
nb=0
for step in "$@"; do
  echo "=== $step ($(date +%T))"
  case $step in
    tests)
      timeout "${TEST_TIMEOUT:-300}" build-cuda/tests/cuda/test_cuda --gtest_color=no \
        ${TEST_FILTER:+--gtest_filter=$TEST_FILTER} >"$OUT/test_cuda.log" 2>&1
      rc=$?
      echo "test_cuda exit code: $rc"
      [[ $rc != 0 ]] && status=$rc
      grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|Expected|Which is" "$OUT/test_cuda.log" | head -40 ;;
    bench:*)
      nb=$((nb + 1))
      # shellcheck disable=SC2086  # ARGS are words
      build-cuda/cuda-bench ${step#bench:} --dir /dev/shm --json "$OUT/bench-$nb.jsonl" 2>&1 | tee -a "$OUT/bench.txt"
      echo "cuda-bench exit code: ${PIPESTATUS[0]}" ;;
    trace:*)
      IFS=: read -r _ model tokens <<<"$step"
      CUDA_INJECTION64_PATH=$PWD/build-cuda/libcupti-trace.so FH1_TRACE_OUT=/dev/shm/fh1-trace.csv \
        build-cuda/cuda-bench --models "$model" --prefill "$tokens" --decode-ctx 0 --batches 1 --dir /dev/shm 2>&1 |
        grep -E "^prefill|^device"
      python3 bench/trace_summary.py /dev/shm/fh1-trace.csv | tee "$OUT/trace-$model-$tokens.txt"
      xz -c /dev/shm/fh1-trace.csv >"$OUT/trace-$model-$tokens.csv.xz"
      rm -f /dev/shm/fh1-trace.csv ;;
    ncu:*)
      IFS=: read -r _ kernel model tokens <<<"$step"
      ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
      if [[ -z "$ncu" ]]; then echo "no ncu on this machine"; continue; fi
      log="$OUT/ncu-$kernel-$model-$tokens.txt"
      timeout "${NCU_TIMEOUT:-300}" "$ncu" --kernel-name "regex:$kernel" --launch-skip 20 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
        build-cuda/cuda-bench --models "$model" --prefill "$tokens" --decode-ctx 0 --batches 1 --dir /dev/shm >"$log" 2>&1
      echo "ncu exit code: $?"
      grep -v "^==PROF==" "$log" | tail -120 ;;
    sh:*)
      bash -c "${step#sh:}" 2>&1 | tee -a "$OUT/sh.txt" ;;
    *)
      echo "unknown step '$step' (tests, bench:ARGS, trace:MODEL:T, ncu:KERNEL:MODEL:T, sh:COMMAND)"
      status=2 ;;
  esac
done
exit "$status"

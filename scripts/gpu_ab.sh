#!/usr/bin/env bash
# On a GPU machine: one cuda-bench command under several environments (an A/B of tuning knobs)
# in one call, interleaved A B A B ... so that the variants share the machine and its drift
# (machines differ by up to ~7 % between calls). Prints every run's rows, then per row the best
# time of each variant and its ratio to the first.
#   scripts/gpu_ab.sh "FH1_CUDA_GEMV_U=8" "FH1_CUDA_GEMV_U=4" -- --models 7b --prefill 0 --decode-ctx 1024 --batches 1
#   AB_REPS=3 scripts/gpu_ab.sh "" "FH1_CUDA_FUSE=0" -- --models 0.5b --prefill 0   ("": the defaults)
#   scripts/gpu_ab.sh FH1_CUDA_FLASH_WGMMA=12 FH1_CUDA_FLASH_WGMMA=16 -- --models 1.5b-deep --prefill 0 \
#       --decode-ctx 0 --attn-tokens 8192,32768          (the prefill attention alone: "attn" rows)
# BUILD (default build-cuda) holds cuda-bench. A variant's word BENCH=path runs that binary instead
# (a build before a change against the build after it: "BENCH=build-cuda/cuda-bench.base" "").
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-cuda}
export LD_LIBRARY_PATH="$PWD/$BUILD/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
variants=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  variants+=("$1")
  shift
done
[[ $# -gt 0 ]] && shift
if [[ ${#variants[@]} -lt 2 || $# -eq 0 ]]; then
  echo "usage: $0 ENV_A ENV_B [...] -- CUDA_BENCH_ARGS..." >&2
  exit 2
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for rep in $(seq "${AB_REPS:-2}"); do
  for i in "${!variants[@]}"; do
    v=${variants[$i]}
    bench="$BUILD/cuda-bench"
    for w in $v; do [[ $w == BENCH=* ]] && bench=${w#BENCH=}; done
    # shellcheck disable=SC2086  # a variant is a list of NAME=VALUE words
    env $v "$bench" "$@" 2>&1 | awk '/^== /{m=$2} /^(prefill|decode|attn) +[0-9]/{print m, $0}' | sed "s|^|$i\t|" | tee -a "$out"
    # The GPU's state after each run (clocks, temperature, power, throttle reasons): a variant
    # slower on one machine and not another may be the machine's (docs/cuda.md, "Two column
    # blocks a block").
    if command -v nvidia-smi >/dev/null; then
      echo "# $i clocks: $(nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active \
        --format=csv,noheader 2>/dev/null | head -1)"
    fi
  done
done
echo "== best of ${AB_REPS:-2} per variant (ms; ratio to variant 0)"
python3 - "$out" "${variants[@]}" <<'EOF'
import sys
path, names = sys.argv[1], sys.argv[2:]
best = {}
for line in open(path):
    i, row = line.rstrip("\n").split("\t", 1)
    f = row.split()
    if len(f) < 6 or "skipped" in row:
        continue
    key = " ".join(f[:4])  # model, kind, batch, tokens
    ms = float(f[5])
    best.setdefault(key, {})
    best[key][int(i)] = min(ms, best[key].get(int(i), float("inf")))
for key, per in best.items():
    base = per.get(0)
    cells = []
    for i, name in enumerate(names):
        if i in per:
            ratio = f" ({per[i] / base:.3f})" if base else ""
            cells.append(f"[{name or 'defaults'}] {per[i]:.3f}{ratio}")
    print(f"{key:28s} " + "  ".join(cells))
EOF

#!/usr/bin/env bash
# Reproduces docs/performance.md: bench runs of the 0.5B and 1.5B shapes (random bf16 weights)
# as JSON in bench/results/, and the plot docs/performance.png.
#   bash bench/run_benchmarks.sh [path/to/falcon-h1] [threads]
# Run it on an otherwise idle machine: other processes on the cores change every figure. The
# figures in docs/performance.md were taken with the spinning thread pool now in src/util.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build-perf/falcon-h1}
THREADS=${2:-2}
mkdir -p bench/results
"$BIN" bench --shape 0.5B -t "$THREADS" -p 128,512,1024,4096 -d 0,1024,4096,16384 --json > bench/results/0.5B.json
"$BIN" bench --shape 1.5B -t "$THREADS" -p 512,2048 -d 0,4096,16384 --no-gemm --json > bench/results/1.5B.json
python3 bench/plot_bench.py docs/performance.png bench/results/0.5B.json bench/results/1.5B.json

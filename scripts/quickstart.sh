#!/usr/bin/env bash
# The main job in one command: install dependencies, build, and generate with the small model
# shipped in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
MODEL=${MODEL:-tests/fixtures/models/norm_off_g1_tied}
echo
echo "== falcon-h1 info -m $MODEL"
./build/falcon-h1 info -m "$MODEL"
echo
echo "== falcon-h1 generate -m $MODEL --ids 1,2,3,4,5 -n 24"
./build/falcon-h1 generate -m "$MODEL" --ids 1,2,3,4,5 -n 24 --ignore-eos

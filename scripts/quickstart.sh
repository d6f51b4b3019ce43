#!/usr/bin/env bash
# The main job in one command: install dependencies, build, and generate with the small model
# shipped in the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
MODEL=${MODEL:-models/falcon-h1-tiny}
PROMPT=${PROMPT:-'def read_file(path):'}
echo
echo "== falcon-h1 info -m $MODEL"
./build/falcon-h1 info -m "$MODEL"
echo
echo "== falcon-h1 generate -m $MODEL -p '$PROMPT' -n 80"
./build/falcon-h1 generate -m "$MODEL" -p "$PROMPT" -n 80

#!/usr/bin/env bash
# Configures and builds falcon-h1 into build/ (Release). Extra arguments go to CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ -f build/CMakeCache.txt ]]; then generator=(); fi  # keep the generator it was made with
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${generator[@]}" "$@" >/dev/null
cmake --build build -j "$(nproc)"

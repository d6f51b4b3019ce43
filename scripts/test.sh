#!/usr/bin/env bash
# Every test in one command: install dependencies, build (Release), run all tests, then build
# again with AddressSanitizer + UBSan and run them there too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
jobs=$(nproc)

echo "== Release build and tests"
# Where nvcc is installed the CUDA backend is compiled too (its tests report SKIPPED without a GPU).
cuda=()
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=$PATH:/usr/local/cuda/bin
  cuda=(-DFALCON_H1_CUDA=ON)
fi
bash scripts/build.sh "${cuda[@]}"
ctest --test-dir build --output-on-failure -j "$jobs"

if [[ "${FH1_SKIP_ASAN:-0}" != "1" ]]; then
  echo "== AddressSanitizer + UBSan build and tests"
  gen=()
  command -v ninja >/dev/null && [[ ! -f build-asan/CMakeCache.txt ]] && gen=(-G Ninja)
  # -O1 and line tables (-g1: file and line in the sanitizers' reports) build in half the time of
  # RelWithDebInfo's -O2 -g (the sanitized build was 14 of CI's 25 minutes).
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DFALCON_H1_SANITIZE=ON "${gen[@]}" >/dev/null
  cmake --build build-asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs"
fi

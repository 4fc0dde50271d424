#!/usr/bin/env bash
# The test command: set-up, configure, build, run every test suite. Exits non-zero on any failure.
#   scripts/test.sh              # CUDA build narrowed to one instantiation when nvcc is present
#   FLASHKV_PRESET=release scripts/test.sh   # all instantiations
# GPU tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
preset=${FLASHKV_PRESET:-ci}
jobs=${FLASHKV_JOBS:-$(nproc)}

cmake --preset "$preset"
cmake --build --preset "$preset" -j "$jobs"
ctest --preset "$preset" -j "$jobs" --timeout 900

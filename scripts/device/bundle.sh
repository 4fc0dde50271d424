#!/usr/bin/env bash
# Bundles the binaries scripts/device/integration.sh and dataplane.sh run, with their shared libraries, from a
# CUDA build directory into a git-ignored folder carried to the GPU machine:
#   scripts/device/bundle.sh build-gpu .bundle
set -euo pipefail
build=${1:?build directory}
out=${2:-.bundle}
# The workplace's bundler lives in ../shared/tools beside the main checkout.
bundler=${BUNDLE_LIBS:-$(git rev-parse --show-toplevel)/../shared/tools/bundle-libs.sh}
[[ -x $bundler ]] || bundler=/work/shared/tools/bundle-libs.sh
rm -rf "$out"
"$bundler" "$out" \
  "$build/server/flashkv-server" "$build/client/flashkv-loadgen" "$build/client/flashkv" \
  "$build/benchmarks/server/transport_benchmark" "$build/tests/kvcache/kvcache_step_gpu_test" \
  "$build/tests/integration/integration_gpu_tests" "$build/tests/integration/cuda_region_peer"

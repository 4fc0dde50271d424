#!/bin/bash
# One device session: build (timed), GPU tests, compute-sanitizer on a small subset, SASS summary,
# benchmarks. Logs and tables go to $OUT. Knobs (environment):
#   ARCHS (90a) DTYPES (fp16;bf16;fp32) DIMS (32;...;256) STEPS ("build test sanitize sass bench")
#   BENCH_ARGS (extra side_by_side.py arguments) CPPBENCH_ARGS GTEST_FILTER (*)
# Steps: build test ctest sanitize sass bench cppbench
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
ARCHS=${ARCHS:-90a}
DTYPES=${DTYPES:-fp16;bf16;fp32}
DIMS=${DIMS:-32;64;96;128;192;256}
STEPS=${STEPS:-build test sanitize sass bench}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has build; then
  [ -f device_setup.sh ] && source device_setup.sh
  cmake -S . -B build -G Ninja -DFLASHKV_WITH_SERVICE=OFF -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
    -DFLASHKV_CUDA_DTYPES="$DTYPES" -DFLASHKV_CUDA_HEAD_DIMS="$DIMS" > "$OUT/cmake.txt" || exit 1
  start=$SECONDS
  ninja -C build -j16 > "$OUT/build.txt" 2>&1 || { grep -E "error" -A5 "$OUT/build.txt" | head -60; exit 1; }
  echo "BUILD ($ARCHS; $DTYPES; $DIMS) on $(nproc) cores: $((SECONDS - start)) s"
  grep -E "spill" "$OUT/build.txt" | sed 's/.*function .\(_Z[^ ]*\). /\1 /' | sort | uniq | head -40
fi
T=build/tests/kernels/cuda/cuda_attention_test
if has test; then
  $T --gtest_filter="${GTEST_FILTER:-*}" 2>&1 | grep -E "FAILED|Failure|error|PASSED|SKIPPED \]|tests ran|^\[  FAILED" | head -80
  build/tests/kernels/cuda/cuda_split_heuristic_test | tail -1
fi
if has ctest; then  # every `gpu`-labelled test of the project (the shared kernel sweeps included)
  start=$SECONDS
  ctest --test-dir build -L gpu -j8 --timeout 300 > "$OUT/ctest_gpu.txt" 2>&1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$OUT/ctest_gpu.txt" | head -30
  echo "ctest -L gpu: $((SECONDS - start)) s"
fi
if has sanitize; then
  F='AllInstantiations/CudaAttentionTest.FixedMatchesReference/fp16_d128:AllInstantiations/CudaAttentionTest.PagedMixedPrefillAndDecode/bf16_d64:AllInstantiations/CudaAttentionTest.SplitKvDecodeGroup16/fp16_d128:AllInstantiations/CudaAttentionTest.VarlenWithEmptySequences/fp32_d96'
  timeout 240 compute-sanitizer --tool memcheck --leak-check full $T --gtest_filter="$F" 2>&1 | grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" | head -20
  timeout 240 compute-sanitizer --tool racecheck $T --gtest_filter='AllInstantiations/CudaAttentionTest.FixedMatchesReference/fp16_d128:AllInstantiations/CudaAttentionTest.PagedMixedPrefillAndDecode/fp16_d128' 2>&1 | grep -E "RACECHECK SUMMARY|hazard|PASSED|FAILED" | head -20
fi
if has sass; then
  for o in build/kernels/CMakeFiles/flashkv_kernels.dir/cuda/generated/attention_fp16_hd128_*.cu.o; do
    cuobjdump -sass "$o" > "$OUT/$(basename "$o" .cu.o).sass" 2>/dev/null
    echo "$(basename "$o"): $(grep -c HMMA "$OUT/$(basename "$o" .cu.o).sass") HMMA, $(grep -c LDSM "$OUT/$(basename "$o" .cu.o).sass") LDSM, $(grep -c LDGSTS "$OUT/$(basename "$o" .cu.o).sass") LDGSTS, $(grep -cE "STL|LDL" "$OUT/$(basename "$o" .cu.o).sass") local"
  done
fi
if has bench; then
  PYTHONUNBUFFERED=1 python3 benchmarks/kernels/side_by_side.py --lib build/kernels/cuda/libflashkv_capi.so \
    --out "$OUT/side_by_side.md" $BENCH_ARGS 2>&1 | grep -v "^#.*failed" | tail -120
fi
if has cppbench; then
  build/benchmarks/cuda_attention_benchmark $CPPBENCH_ARGS > "$OUT/cpp_benchmark.md" 2>&1; tail -60 "$OUT/cpp_benchmark.md"
fi

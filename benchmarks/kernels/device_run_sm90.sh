#!/bin/bash
# One device call for the sm90 (Hopper) kernels, within ~330 s on an H100: build only what the
# sm90 path and its fallbacks need, prove the path correct, check its SASS, then time it against
# SDPA. Everything is logged under $OUT (at most 8 files come back):
#   log.txt           this script's output (the summary lines of every step)
#   build.txt         cmake + ninja output (ptxas warnings included)
#   sm90_test.txt     cuda_sm90_test (every compiled sm90 class, path checked, float64 reference)
#   cuda_test.txt     cuda_attention_test (the CUDA sweeps; fixed cases now run on sm90)
#   ctest_gpu.txt     every `gpu`-labelled ctest (the shared kernel sweeps of tests/kernels)
#   sanitizer.txt     compute-sanitizer racecheck + memcheck on sm90 cases
#   sass.txt          per-kernel HGMMA / UTMALDG / UTMASTG / USETMAXREG / local-memory counts
#   side_by_side.md   fixed-length grid subset vs SDPA FLASH and CUDNN (same process, same card)
#
# Run from the repository root of the checkout the device receives (main has this script and
# the sm90 sources, so no carried copy is needed): one device call with timeout_s <= 330,
#   OUT=$OUT bash benchmarks/kernels/device_run_sm90.sh
# The build turns FLASHKV_ENABLE_SM90 on itself; nothing else needs to be set.
# Steps run in this order (the most needed first, so a cut-off run still returns them); knobs
# (environment): STEPS ("build test sass bench ctest sanitize"), DIMS (64;128;256),
# DTYPES (fp16;bf16), SEQLENS (1024 4096 8192), JOBS (16).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
STEPS=${STEPS:-build test sass bench ctest sanitize}
DIMS=${DIMS:-64;128;256}
DTYPES=${DTYPES:-fp16;bf16}
SEQLENS=${SEQLENS:-1024 4096 8192}
JOBS=${JOBS:-16}
B=build/sm90
has() { [[ " $STEPS " == *" $1 "* ]]; }
stamp() { echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv

if has build; then
  stamp build
  [ -f device_setup.sh ] && source device_setup.sh
  cmake -S . -B $B -G Ninja -DFLASHKV_WITH_SERVICE=OFF -DFLASHKV_BUILD_BENCHMARKS=OFF \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DFLASHKV_ENABLE_SM90=ON \
    -DFLASHKV_CUDA_DTYPES="$DTYPES" -DFLASHKV_CUDA_HEAD_DIMS="$DIMS" \
    -DFLASHKV_DTYPES="$DTYPES" -DFLASHKV_HEAD_DIMS="$DIMS" > "$OUT/build.txt" 2>&1 || exit 1
  start=$SECONDS
  ninja -C $B -j"$JOBS" >> "$OUT/build.txt" 2>&1 || { grep -E "error" -A5 "$OUT/build.txt" | head -60; exit 1; }
  echo "BUILD (90a; $DTYPES; $DIMS; sm90 on) on $(nproc) cores: $((SECONDS - start)) s"
  grep -E "C75[0-9]{2}|sm90.*spill" "$OUT/build.txt" | sort | uniq | head -20
fi

T=$B/tests/kernels/cuda
if has test; then
  stamp test
  timeout 100 $T/cuda_sm90_test > "$OUT/sm90_test.txt" 2>&1
  echo "cuda_sm90_test rc=$?"
  grep -E "^\[  (PASSED|FAILED|  SKIPPED) |Failure|took sm80|took simt" "$OUT/sm90_test.txt" | head -40
  timeout 80 $T/cuda_attention_test > "$OUT/cuda_test.txt" 2>&1
  echo "cuda_attention_test rc=$?"
  grep -E "^\[  (PASSED|FAILED) |Failure" "$OUT/cuda_test.txt" | head -30
  $T/cuda_kernel_path_test | tail -1
fi

if has sass; then
  stamp sass
  bash benchmarks/kernels/sm90_sass_summary.sh $B > "$OUT/sass.txt"
  sed 's/_ZN7flashkv4cuda4sm9015AttentionKernelINS1_6Traits//' "$OUT/sass.txt"
fi

if has bench; then
  stamp bench
  PYTHONUNBUFFERED=1 timeout 100 python3 benchmarks/kernels/side_by_side.py \
    --lib $B/kernels/cuda/libflashkv_capi.so --out "$OUT/side_by_side.md" --sections fixed \
    --dtypes ${DTYPES//;/ } --head-dims ${DIMS//;/ } --seqlens $SEQLENS --reps 30 2>&1 |
    grep -v "^#.*failed" | tail -60
fi

if has ctest; then  # every `gpu`-labelled test (the shared kernel sweeps run on the sm90 path too)
  stamp ctest
  # (the two suites of the test step are not run again)
  timeout 90 ctest --test-dir $B -L gpu -E "CudaSm90Test|CudaAttentionTest|CudaLargeTest" -j8 \
    --timeout 80 > "$OUT/ctest_gpu.txt" 2>&1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$OUT/ctest_gpu.txt" | head -30
fi

if has sanitize; then
  stamp sanitize
  F='Sm90Instantiations/CudaSm90Test.FixedMoreTilesThanSms/fp16_d128:Sm90Instantiations/CudaSm90Test.VarlenMixedLengths/bf16_d64:Sm90Instantiations/CudaSm90Test.NegativeAndZeroScale/fp16_d256'
  { timeout 70 compute-sanitizer --tool racecheck --racecheck-report all $T/cuda_sm90_test --gtest_filter="$F"
    timeout 40 compute-sanitizer --tool memcheck $T/cuda_sm90_test \
      --gtest_filter='Sm90Instantiations/CudaSm90Test.VarlenMixedLengths/fp16_d128:Sm90Instantiations/CudaSm90Test.FixedPartialTiles/bf16_d256'
  } > "$OUT/sanitizer.txt" 2>&1
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|Invalid|PASSED|FAILED" "$OUT/sanitizer.txt" | head -20
fi

stamp done

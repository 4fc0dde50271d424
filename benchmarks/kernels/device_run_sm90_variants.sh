#!/bin/bash
# One device call that A/Bs the sm90 kernel variants (kernels/cuda/sm90/tile_shape.h, Sm90Variant;
# predictions in kernels/cuda/NOTES.md) against the default kernel and SDPA in one process: build
# for 90a, prove every variant correct, racecheck one small case per variant, then the
# side-by-side table with every contestant of a row timed in turns. About 4 minutes on an H100
# (16 cores). Everything is logged under $OUT:
#   log.txt            this script's output (summaries; the compact table last)
#   build.txt          cmake + ninja output (ptxas spill / C75xx warnings included)
#   test.txt           ctest of cuda_sm90_test and cuda_sm90_paged_test, every case under each
#                      variant of TEST_VARIANTS (the paged suite has baseline, auto, lazy_rescale,
#                      three_consumers, paged_keys80, paged_k3 and paged_keys80_lanes: the
#                      others change contiguous launches alone; it always runs under baseline too)
#   sanitizer.txt      compute-sanitizer racecheck, one small case per variant, and the paged
#                      suite's small cases (D 128 and D 64) under baseline and each of VARIANTS
#                      that the paged suite has
#   side_by_side.md    fixed-length rows: one line per variant, SDPA FLASH and cuDNN timed in the
#                      same turns
#   clocks.txt         nvidia-smi samples (SM clock, power, temperature) every 200 ms of the bench
#
# Run from the repository root (main's checkout carries everything; nothing to carry):
#   OUT=$OUT bash benchmarks/kernels/device_run_sm90_variants.sh          (device call timeout_s 330)
# Knobs (environment): STEPS ("build test sanitize bench"), DIMS (64;128;256), DTYPES (fp16;bf16),
# BENCH_DIMS (64 128 256: fp16 at each), BF16_DIMS (128: bf16's; empty for none),
# SEQLENS (1024 4096 8192),
# VARIANTS (baseline dynamic_schedule; any of baseline dynamic_schedule auto lazy_rescale
# three_consumers keys160 keys176 stream_k paged_keys80 paged_k3 paged_keys80_lanes paged_keys64),
# TEST_VARIANTS (VARIANTS and auto, the default kernel), JOBS (16), DEADLINE (300: seconds after
# which no step starts; each step's timeout ends by then), EXTRA_TARGETS (more ninja targets, e.g.
# cuda_attention_benchmark for device_run_sm90_paged.sh's bench on this build: B=build/sm90v).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
STEPS=${STEPS:-build test sanitize bench}
DIMS=${DIMS:-64;128;256}
DTYPES=${DTYPES:-fp16;bf16}
BENCH_DIMS=${BENCH_DIMS:-64 128 256}
BF16_DIMS=${BF16_DIMS-128}
SEQLENS=${SEQLENS:-1024 4096 8192}
VARIANTS=${VARIANTS:-baseline dynamic_schedule}
TEST_VARIANTS=${TEST_VARIANTS:-$VARIANTS auto}
JOBS=${JOBS:-16}
DEADLINE=${DEADLINE:-300}
B=${B:-build/sm90v}
has() { [[ " $STEPS " == *" $1 "* ]] && ((SECONDS < DEADLINE - 10)); }
limit() { local left=$((DEADLINE - SECONDS)); echo $(($1 < left ? $1 : left)); }  # seconds
stamp() { echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv

if has build; then
  stamp build
  [ -f device_setup.sh ] && source device_setup.sh
  cmake -S . -B $B -G Ninja -DFLASHKV_WITH_SERVICE=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DFLASHKV_ENABLE_SM90=ON -DFLASHKV_ENABLE_SM90_PAGED=ON \
    -DFLASHKV_CUDA_DTYPES="$DTYPES" -DFLASHKV_CUDA_HEAD_DIMS="$DIMS" \
    -DFLASHKV_DTYPES="$DTYPES" -DFLASHKV_HEAD_DIMS="$DIMS" > "$OUT/build.txt" 2>&1 ||
    { tail -30 "$OUT/build.txt"; exit 1; }
  start=$SECONDS
  # shellcheck disable=SC2086
  ninja -C $B -j"$JOBS" cuda_sm90_test cuda_sm90_paged_test flashkv_capi ${EXTRA_TARGETS:-} \
    >> "$OUT/build.txt" 2>&1 ||
    { grep -E "error" -A5 "$OUT/build.txt" | head -60; exit 1; }
  echo "BUILD (90a; $DTYPES; $DIMS; sm90 + paged + capi) on $(nproc) cores: $((SECONDS - start)) s"
  grep -E "C75[0-9]{2}|spill" "$OUT/build.txt" | grep -v "sm807RunTile" | sort | uniq | head -20
fi

T=$B/tests/kernels/cuda
if has test; then  # every case is its own ctest: they run side by side
  stamp test
  tv=$(echo $TEST_VARIANTS | tr ' ' '|')
  timeout "$(limit 120)" ctest --test-dir $B \
    -R "(CudaSm90Test\..*_($tv)|CudaSm90PagedTest\..*_(baseline|$tv))( |\$)" \
    -j12 --timeout 60 --output-on-failure > "$OUT/test.txt" 2>&1
  echo "sm90 tests rc=$?"
  grep -E "tests passed|tests failed|\*\*\*(Failed|Timeout|Exception)|took sm80|took simt|Failure" \
    "$OUT/test.txt" | head -40
fi

if has sanitize; then
  stamp sanitize
  F='Sm90Instantiations/CudaSm90Test.NegativeAndZeroScale'
  P='Sm90Paged/CudaSm90PagedTest.SmallTailCase'
  paged=baseline  # and the variants of VARIANTS that change paged kernels
  for v in auto lazy_rescale three_consumers paged_keys80 paged_k3 paged_keys80_lanes paged_keys64; do
    [[ " $VARIANTS " == *" $v "* ]] && paged="$paged $v"
  done
  {
    for v in $VARIANTS; do
      timeout "$(limit 60)" compute-sanitizer --tool racecheck --racecheck-report all \
        $T/cuda_sm90_test --gtest_filter="$F/fp16_d128_$v:$F/bf16_d64_$v"
    done
    for v in $paged; do
      timeout "$(limit 60)" compute-sanitizer --tool racecheck --racecheck-report all \
        $T/cuda_sm90_paged_test --gtest_filter="$P/fp16_d128_$v:$P/bf16_d64_$v$(
          [[ $v == paged_* ]] && echo ":$P/fp16_d256_$v")"  # paged_*: head dim 256 alone
    done
  } > "$OUT/sanitizer.txt" 2>&1
  grep -E "RACECHECK SUMMARY|hazard|PASSED|FAILED" "$OUT/sanitizer.txt" | head -20
fi

if has bench; then
  stamp bench
  QUERY=timestamp,clocks.sm,power.draw,temperature.gpu
  nvidia-smi --query-gpu=$QUERY --format=csv -lms 200 > "$OUT/clocks.txt" 2>&1 &
  smi=$!
  run_table() {  # dtype, head dims...
    local dt=$1; shift
    PYTHONUNBUFFERED=1 timeout "$(limit 150)" python3 benchmarks/kernels/side_by_side.py \
      --lib $B/kernels/cuda/libflashkv_capi.so --out "$OUT/side_by_side.md" --sections fixed \
      --dtypes "$dt" --head-dims "$@" --seqlens $SEQLENS --reps 30 --sm90-variants $VARIANTS 2>&1 |
      grep -v "^#.*failed" | grep "^|" | grep -v "dtype\|---"
  }
  # shellcheck disable=SC2086
  run_table fp16 $BENCH_DIMS
  # shellcheck disable=SC2086
  [[ -n $BF16_DIMS ]] && ((SECONDS < DEADLINE - 20)) && run_table bf16 $BF16_DIMS
  kill "$smi" 2> /dev/null
  echo "bench done (${SECONDS}s)"
  awk -F', ' 'NR > 1 && $2 + 0 > 0 { print $2 + 0, $3 + 0, $4 + 0 }' "$OUT/clocks.txt" | sort -n |
    awk '{ c[NR] = $1; p += $2; if ($3 > t) t = $3 } END { if (NR) printf "SM clock over %d " \
      "samples: min %d, median %d, max %d MHz; mean power %.0f W; max %d C\n", NR, c[1],
      c[int((NR + 1) / 2)], c[NR], p / NR, t }'
fi
stamp done

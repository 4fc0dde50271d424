#!/bin/bash
# One device call for the sm90 paged prefill path (FLASHKV_ENABLE_SM90_PAGED): build the paged
# kernels with narrowed instantiations, prove them correct, check their SASS, time paged prefill
# against contiguous K/V. About 2-3 minutes on an H100 (16 cores; the first run took 113 s); stays
# under 8 with the default knobs. Everything is logged under $OUT (8 files at most return):
#   log.txt            this script's output (the summary lines of every step; the tables last)
#   build.txt          cmake + ninja output (ptxas spill / C75xx warnings included)
#   paged_test.txt     ctest of cuda_sm90_paged_test (float64 reference, path checked) and the
#                      kernel-path tests
#   regress_test.txt   ctest of the suites the change touches: cuda_sm90_test, cuda_attention_test
#                      (sm80 paged, the moved RunPaged), the shared paged sweeps (Cuda*)
#   sanitizer.txt      compute-sanitizer racecheck + memcheck on a small paged case (two tiles)
#                      under each of BENCH_VARIANTS: racecheck in the first of DTYPES, memcheck
#                      in the last, at each head dim of DIMS
#   sass.txt           per-kernel HGMMA / UTMALDG / UTMASTG / USETMAXREG / local-memory counts
#   paged_prefill.md   cuda_attention_benchmark: paged (pages 16/64/128/256; pages holding whole
#                      tiles with both box shapes) vs contiguous, the calls of a row group timed
#                      in turns, TFLOPS
#   clocks.txt         nvidia-smi samples (SM clock, power, temperature) every 200 ms of the bench
#
# Run from the repository root (main's checkout carries everything; nothing to carry):
#   OUT=$OUT bash benchmarks/kernels/device_run_sm90_paged.sh          (device call timeout_s 480)
# Knobs (environment): STEPS ("build test sass sanitize bench regress"), DIMS (64;128;256),
# DTYPES (fp16;bf16), BENCH_DIMS (128 64 256), SEQLENS (4096,8192: the first run's misses; S=1024
# was within 1.04 everywhere), JOBS (16),
# DEADLINE (450: seconds after which no step starts; each step's timeout ends by then, so a hung
# kernel costs at most the rest of that budget), BENCH_VARIANTS (auto: the sm90 variants the
# bench runs under, one table each, paged and contiguous calls alike; any of baseline
# dynamic_schedule auto lazy_rescale three_consumers keys160 keys176 stream_k paged_keys80
# paged_k3 paged_keys80_lanes paged_keys64). The test step runs every variant the paged suite has (paged_k3
# and paged_keys80_lanes included).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
STEPS=${STEPS:-build test sass sanitize bench regress}
DIMS=${DIMS:-64;128;256}
DTYPES=${DTYPES:-fp16;bf16}
BENCH_DIMS=${BENCH_DIMS:-128 64 256}
SEQLENS=${SEQLENS:-4096,8192}
JOBS=${JOBS:-16}
DEADLINE=${DEADLINE:-450}
BENCH_VARIANTS=${BENCH_VARIANTS:-auto}
variant_number() {  # sm90/tile_shape.h's Sm90Variant
  local names=(baseline dynamic_schedule auto lazy_rescale three_consumers keys160 keys176 stream_k
    paged_keys80 paged_k3 paged_keys80_lanes paged_keys64)
  for i in "${!names[@]}"; do [[ ${names[$i]} == "$1" ]] && echo "$i" && return; done
  echo "unknown sm90 variant $1" >&2; exit 2
}
B=${B:-build/sm90p}  # a build of device_run_sm90_variants.sh serves too (STEPS="bench")
has() { [[ " $STEPS " == *" $1 "* ]] && ((SECONDS < DEADLINE - 10)); }
limit() { local left=$((DEADLINE - SECONDS)); echo $(($1 < left ? $1 : left)); }  # seconds
stamp() { echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv

TARGETS="cuda_sm90_paged_test cuda_sm90_test cuda_attention_test cuda_kernel_path_test
  kernels_attention_paged_test cuda_attention_benchmark"
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
  ninja -C $B -j"$JOBS" $TARGETS >> "$OUT/build.txt" 2>&1 ||
    { grep -E "error" -A5 "$OUT/build.txt" | head -60; exit 1; }
  echo "BUILD (90a; $DTYPES; $DIMS; sm90 + sm90 paged) on $(nproc) cores: $((SECONDS - start)) s"
  grep -E "C75[0-9]{2}|spill" "$OUT/build.txt" | grep -v "sm807RunTile" | sort | uniq | head -20
fi

T=$B/tests/kernels/cuda
if has test; then  # every case is its own ctest: they run side by side
  stamp test
  timeout "$(limit 120)" ctest --test-dir $B -R "CudaSm90PagedTest|KernelPathTest" -j12 \
    --timeout 60 --output-on-failure > "$OUT/paged_test.txt" 2>&1
  echo "paged tests rc=$?"
  grep -E "tests passed|tests failed|\*\*\*(Failed|Timeout|Exception)|took sm80|took simt|Failure" \
    "$OUT/paged_test.txt" | head -40
fi

if has sass; then
  stamp sass
  bash benchmarks/kernels/sm90_sass_summary.sh $B > "$OUT/sass.txt"
  grep -E "paged|tu kernel" "$OUT/sass.txt" |
    sed 's/_ZN7flashkv4cuda4sm9015AttentionKernelINS1_6TraitsI//'
fi

if has sanitize; then
  stamp sanitize
  # The cases are named <dtype>_d<head dim>_<variant> (cuda_test_runs.h's Sm90CaseName).
  F='Sm90Paged/CudaSm90PagedTest.SmallTailCase'
  dts=(${DTYPES//;/ })
  race= mem=
  for d in ${DIMS//;/ }; do
    for v in $BENCH_VARIANTS; do
      race="$race:$F/${dts[0]}_d${d}_$v"
      mem="$mem:$F/${dts[-1]}_d${d}_$v"
    done
  done
  { timeout "$(limit 120)" compute-sanitizer --tool racecheck --racecheck-report all \
      $T/cuda_sm90_paged_test --gtest_filter="${race#:}"
    timeout "$(limit 60)" compute-sanitizer --tool memcheck $T/cuda_sm90_paged_test \
      --gtest_filter="${mem#:}"
  } > "$OUT/sanitizer.txt" 2>&1
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY|hazard|Invalid|PASSED|FAILED|SKIPPED|Running [0-9]+" \
    "$OUT/sanitizer.txt" | head -20
fi

if has bench; then
  stamp bench
  # The clocks while the tables run: a ratio of two calls timed apart moves with them.
  QUERY=timestamp,clocks.sm,power.draw,temperature.gpu
  nvidia-smi --query-gpu=clocks_event_reasons.active --format=csv > /dev/null 2>&1 &&
    QUERY=$QUERY,clocks_event_reasons.active
  nvidia-smi --query-gpu=$QUERY --format=csv -lms 200 > "$OUT/clocks.txt" 2>&1 &
  smi=$!
  for variant in $BENCH_VARIANTS; do
    for d in $BENCH_DIMS; do
      for dt in ${DTYPES//;/ }; do
        [[ $d != 128 && $dt != fp16 ]] && continue  # bf16 at the target head dim only
        ((SECONDS < DEADLINE - 20)) || break 3
        echo "## variant $variant"
        timeout "$(limit 90)" $B/benchmarks/cuda_attention_benchmark --no-fixed --no-decode \
          --dtype "$dt" --head-dim "$d" --seqlen "$SEQLENS" --reps 30 \
          --sm90-variant "$(variant_number "$variant")" 2>&1 | grep -v "^Device-to"
        ((PIPESTATUS[0] == 124)) && { echo "benchmark timed out: $d $dt" >&2; break 3; }
      done
    done
  done > "$OUT/paged_prefill.md"
  kill "$smi" 2> /dev/null
  echo "bench done (${SECONDS}s)"
  awk -F', ' 'NR > 1 && $2 + 0 > 0 { print $2 + 0, $3 + 0, $4 + 0 }' "$OUT/clocks.txt" | sort -n |
    awk '{ c[NR] = $1; p += $2; if ($3 > t) t = $3 } END { if (NR) printf "SM clock over %d " \
      "samples: min %d, median %d, max %d MHz; mean power %.0f W; max %d C\n", NR, c[1],
      c[int((NR + 1) / 2)], c[NR], p / NR, t }'
fi

if has regress; then  # what the change touches on the landed paths
  stamp regress
  timeout "$(limit 120)" ctest --test-dir $B \
    -R "CudaSm90Test|CudaAttentionTest|CudaLargeTest|Cuda/Paged" -j12 --timeout 100 \
    > "$OUT/regress_test.txt" 2>&1
  echo "regression tests rc=$?"
  grep -E "tests passed|tests failed|\*\*\*(Failed|Timeout|Exception)" "$OUT/regress_test.txt" |
    head -20
fi

stamp done
# The tables, compact (full rows in paged_prefill.md): D S causal page box kernel TFLOPS,
# contiguous TFLOPS, paged / contiguous time (target <= 1.10 at pages >= 64).
echo "variant dtype D S causal page box kernel TF contiguous_TF paged/contiguous"
awk -F'|' '/^## variant/ { variant = $0; sub(/^## variant /, "", variant) }
  /^## Paged prefill/ { dt = $0; sub(/^[^(]*\(/, "", dt); sub(/,.*/, "", dt) }
  /^\| [0-9]/ { gsub(/ /, ""); print variant, dt, $2, $3, $4, $5, $6, $7, $9, $12, $13 }' \
  "$OUT/paged_prefill.md" 2>/dev/null

#!/usr/bin/env bash
# Runs the fuzz targets (tests/fuzz) for a bounded time each, built by the asan preset (clang,
# ASan + UBSan, libFuzzer), and prints executions, speed, coverage and findings per target.
#   scripts/fuzz.sh                      # 60 s per target (what CI runs)
#   scripts/fuzz.sh 3600 kvcache_ops     # one target for an hour
# New inputs go to build/asan/fuzz/<target>/corpus (the checked-in seeds in tests/fuzz/<target>
# are read, never written); a crash leaves its input in build/asan/fuzz/<target>/ and makes the
# script exit 1. Targets run two at a time (FLASHKV_FUZZ_PARALLEL) on this 2-core budget.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  for source in tests/fuzz/*_fuzz.cc; do
    name=$(basename "$source" _fuzz.cc)
    targets+=("$name")
  done
fi
parallel=${FLASHKV_FUZZ_PARALLEL:-2}
jobs=${FLASHKV_JOBS:-$(nproc)}

scripts/setup.sh >/dev/null
cmake --preset asan >/dev/null
cmake --build --preset asan --target fuzz_targets -j "$jobs"
out=build/asan/fuzz

run_one() {
  local name=$1 dir=$out/$1
  mkdir -p "$dir/corpus"
  # -timeout: one input running 10 s is a finding (a hang); -rss_limit_mb: so is 2 GiB.
  build/asan/tests/fuzz/fuzz_"$name" -max_total_time="$seconds" -print_final_stats=1 \
    -timeout=10 -rss_limit_mb=2048 -max_len=4096 -artifact_prefix="$dir/" \
    "$dir/corpus" "tests/fuzz/$name" >"$dir/log" 2>&1
}

declare -A status
pids=()
names=()
for name in "${targets[@]}"; do
  if [[ ! -f tests/fuzz/${name}_fuzz.cc ]]; then
    echo "fuzz: no target '$name' (tests/fuzz/${name}_fuzz.cc)" >&2
    exit 2
  fi
  run_one "$name" &
  pids+=($!)
  names+=("$name")
  if ((${#pids[@]} >= parallel)); then
    wait "${pids[0]}" && status[${names[0]}]=0 || status[${names[0]}]=$?
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" && status[${names[$i]}]=0 || status[${names[$i]}]=$?
done

stat() { grep -m1 "^stat::$2:" "$out/$1/log" | awk '{print $2}'; }
printf '%-20s %8s %12s %10s %8s %8s %s\n' target seconds executions "exec/s" cov corpus result
failed=0
for name in "${targets[@]}"; do
  cov=$(grep -o 'cov: [0-9]*' "$out/$name/log" | tail -1 | awk '{print $2}')
  corpus=$(find "$out/$name/corpus" "tests/fuzz/$name" -type f | wc -l)
  result=ok
  if [[ ${status[$name]} != 0 ]]; then
    result="FAILED (exit ${status[$name]}; $out/$name/log, inputs $out/$name/crash-*|timeout-*|oom-*)"
    failed=1
  fi
  printf '%-20s %8s %12s %10s %8s %8s %s\n' "$name" "$seconds" "$(stat "$name" number_of_executed_units)" \
    "$(stat "$name" average_exec_per_sec)" "${cov:-?}" "$corpus" "$result"
done
exit $failed

#!/usr/bin/env bash
# One device call that checks and measures the data plane on a GPU: per-layer decode steps with
# tensors in the Step messages (bytes) vs in a shared-memory region (shm), batch 1, 32 and 256,
# over a Unix socket and loopback TCP, against flashkv-server on CUDA (benchmarks/server/
# dataplane_step_benchmark.py; the same table as on the development machine), with the per-entry
# Step format and the batched one (shm-batch: one StepBatch per layer). On the CUDA backend
# the shm regions are CUDA IPC device memory: the server's kernels read q/k/v and write the
# outputs in the runner's own buffers, with no host round trip. Binaries come from the Debian
# build, bundled with their libraries:
#
#   here:   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHKV_WITH_CUDA=ON \
#             -DCMAKE_CUDA_ARCHITECTURES=90a -DFLASHKV_HEAD_DIMS="64;128" \
#             -DFLASHKV_DTYPES="fp16;bf16" && cmake --build build-gpu -j2
#           scripts/device/bundle.sh build-gpu .bundle
#   device: OUT=$OUT bash scripts/device/dataplane.sh            (carry: .bundle)
#
# Self-checking: first the GPU tests of CUDA regions (integration_gpu_tests: Step and Attention
# against the float64 reference, refusals); then every cell of the table recomputes a fraction
# (VERIFY, default 0.2) of its steps on the CPU with poisoned outputs, and the CUDA table's shm
# cells must have used CUDA regions. Any test failure, mismatch, unexpected error or host region
# where a CUDA one was expected makes the script exit 1 (after the tables). HOST_SHM=1 (default)
# adds shm cells with host (memfd) regions on the CUDA backend, for comparison; INLINE=1 (default)
# shm-batch cells with --inline-launch-tokens=512 (Unix socket); CPU=1 also runs
# the CPU backend on the same host (16 cores: a quieter machine than the 2-core development one).
# PLANES (default bytes,shm,shm-batch,shm-pass) and TRANSPORTS (unix,tcp) narrow the main table;
# LAYERS (16) sets the model's layer count (a decode pass's layer-0 work is spread over them;
# 32 outlasts 4 s cells at batch 256 with its prefill).
# SERVER_CPUS (default 2 on hosts of 4 or more cores; empty: anywhere) keeps the CUDA server's
# threads on those CPUs (flashkv-server --cpus; docs/operations.md, "CPU placement").
# Files back: dataplane.txt, dataplane*.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/dataplane.txt") 2>&1
bundle=${BUNDLE:-.bundle}
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$PWD/$bundle/bin"
duration=${DURATION:-8}
verify=${VERIFY:-0.2}
server_cpus=${SERVER_CPUS-$( (($(nproc) >= 4)) && echo 2)}
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }
stamp() { echo; echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nproc
uptime

stamp "GPU tests: CUDA regions"
if [[ -x $bin/integration_gpu_tests ]]; then
  timeout 300 "$bin/integration_gpu_tests" --gtest_brief=1 2>&1 | tail -25
  rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || fail "integration_gpu_tests rc=$rc"
else
  fail "$bin/integration_gpu_tests missing (rebuild the bundle with scripts/device/bundle.sh)"
fi

# The loadgen runs by itself when python3 is missing: one JSON report per line; its exit status
# says whether the run was clean (3: mismatches, 4: unexpected errors).
run_without_python() {
  local backend=$1 out=$2 dir listen target memory
  dir=$(mktemp -d)
  for transport in unix tcp; do
    listen=$([[ $transport == unix ]] && echo "unix:$dir/flashkv.sock" || echo 127.0.0.1:0)
    local log="$dir/server.log"
    "$bin/flashkv-server" --backend="$backend" --plaintext --listen="$listen" \
      --metrics-address=off --layers=4 --q-heads=32 --kv-heads=8 --head-dim=128 --dtype=fp16 \
      --kv-cache-bytes=8GiB --log-level=info >"$log" 2>&1 &
    local server=$!
    target=""
    for _ in $(seq 600); do
      target=$(grep -m1 -oE 'serving on [^ ]+' "$log" | sed 's/serving on //' || true)
      if [[ -n $target ]] || ! kill -0 $server 2>/dev/null; then break; fi
      sleep 0.1
    done
    [[ $transport == unix ]] && target=$listen
    for batch in 1 32 256; do
      for plane in bytes shm shm-batch shm-pass; do
        echo "-- $transport $plane batch $batch"
        local report
        report=$(timeout 120 "$bin/flashkv-loadgen" --target="$target" --runners=1 \
          --max-batch=$batch --prompt-len=16 --output-len=128 \
          --max-pass-tokens=$((batch * 16 > 256 ? batch * 16 : 256)) --prefill-chunk=16 \
          --verify="$verify" --no-token-ids --duration="$duration" --progress=none \
          --data-plane="${plane%%-*}" \
          --step-format="$([[ $plane == *-* ]] && echo "${plane#*-}" || echo entries)" \
          --region-memory=auto --json)
        rc=$?
        echo "$report" | tr -d '\n' >>"$out"
        echo >>"$out"
        [[ $rc == 0 ]] || fail "$backend $transport $plane batch $batch: loadgen rc=$rc"
        memory=$(echo "$report" | grep -oE '"region_memory": *"[a-z]*"' | grep -oE '"[a-z]*"$')
        echo "   region memory ${memory:-?}, server overhead p50 (ms):" \
          "$(echo "$report" | tr -d '\n ' | grep -oE '"decodeStepserveroverhead":\{[^}]*' |
            grep -oE '"p50_ms":[0-9.e+-]*')"
        if [[ $backend == cuda && $plane == shm* && $memory != '"cuda"' ]]; then
          fail "$backend $transport shm batch $batch: regions in ${memory:-?} memory, not cuda"
        fi
      done
    done
    kill -TERM $server; wait $server
  done
  rm -rf "$dir"
}

for backend in cuda $([[ ${CPU:-0} == 1 ]] && echo cpu); do
  stamp "data plane, $backend backend"
  if command -v python3 >/dev/null; then
    extra=()
    [[ $backend == cuda ]] && extra=(--server-arg=--kv-cache-bytes=8GiB)
    [[ $backend == cuda && -n $server_cpus ]] && extra+=(--server-arg=--cpus="$server_cpus")
    [[ $backend == cpu ]] && extra=(--cpu-threads=8 --kv-cache=8GiB)
    expect=$([[ $backend == cuda ]] && echo cuda || echo host)
    timeout 900 python3 benchmarks/server/dataplane_step_benchmark.py --backend="$backend" \
      --server="$bin/flashkv-server" --loadgen="$bin/flashkv-loadgen" \
      --transport-benchmark="$bin/transport_benchmark" --duration="$duration" "${extra[@]}" \
      --planes="${PLANES:-bytes,shm,shm-batch,shm-pass}" --transports="${TRANSPORTS:-unix,tcp}" \
      --layers="${LAYERS:-16}" \
      --verify="$verify" --expect-region-memory="$expect" \
      --json-out="$OUT/dataplane-$backend.json"
    rc=$?
    echo "benchmark rc=$rc"
    [[ $rc == 0 ]] || fail "$backend benchmark rc=$rc"
    if [[ $backend == cuda && ${HOST_SHM:-1} == 1 ]]; then
      stamp "data plane, cuda backend, host (memfd) regions for comparison"
      timeout 600 python3 benchmarks/server/dataplane_step_benchmark.py --backend=cuda \
        --server="$bin/flashkv-server" --loadgen="$bin/flashkv-loadgen" --planes=shm,shm-batch \
        --duration="$duration" "${extra[@]}" --verify="$verify" --region-memory=host \
        --expect-region-memory=host --json-out="$OUT/dataplane-cuda-hostshm.json"
      rc=$?
      echo "benchmark rc=$rc"
      [[ $rc == 0 ]] || fail "cuda host-region benchmark rc=$rc"
    fi
    if [[ $backend == cuda && ${INLINE:-1} == 1 ]]; then
      # A step of up to 512 tokens launched on the thread that received it when the device is
      # idle (no scheduler wake-up; the default is 16): the fixed per-step cost left at batch 256.
      stamp "data plane, cuda backend, shm-batch and shm-pass with --inline-launch-tokens=512 (Unix socket)"
      timeout 300 python3 benchmarks/server/dataplane_step_benchmark.py --backend=cuda \
        --server="$bin/flashkv-server" --loadgen="$bin/flashkv-loadgen" --planes=shm-batch,shm-pass \
        --transports=unix --duration="$duration" "${extra[@]}" \
        --server-arg=--inline-launch-tokens=512 --verify="$verify" \
        --expect-region-memory=cuda --json-out="$OUT/dataplane-cuda-inline.json"
      rc=$?
      echo "benchmark rc=$rc"
      [[ $rc == 0 ]] || fail "cuda inline-launch benchmark rc=$rc"
    fi
  else
    echo "no python3: raw loadgen reports in dataplane-$backend.json (one per line)"
    run_without_python "$backend" "$OUT/dataplane-$backend.json"
  fi
done
stamp "done"
if ((failures > 0)); then
  echo "dataplane.sh: $failures failure(s)"
  exit 1
fi
echo "dataplane.sh: clean"

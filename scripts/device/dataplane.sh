#!/usr/bin/env bash
# One device call that measures the data plane on a GPU: per-layer decode steps with tensors in
# the Step messages (bytes) vs in a shared-memory region (shm), batch 1, 32 and 256, over a Unix
# socket and loopback TCP, against flashkv-server on CUDA (benchmarks/server/
# dataplane_step_benchmark.py; the same table as on the development machine). Binaries come from
# the Debian build, bundled with their libraries:
#
#   here:   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHKV_WITH_CUDA=ON \
#             -DCMAKE_CUDA_ARCHITECTURES=90a -DFLASHKV_CUDA_HEAD_DIMS=128 \
#             -DFLASHKV_CUDA_DTYPES="fp16;bf16" && cmake --build build-gpu -j2
#           scripts/device/bundle.sh build-gpu .bundle
#   device: OUT=$OUT bash scripts/device/dataplane.sh            (carry: .bundle)
#
# CPU=1 also runs the CPU backend on the same host (16 cores: a quieter machine than the 2-core
# development one). The regions are host memory (sealed memfds) on either backend: the server
# does not yet read CUDA IPC regions in Step. Files back: dataplane.txt, dataplane*.json.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/dataplane.txt") 2>&1
bundle=${BUNDLE:-.bundle}
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$PWD/$bundle/bin"
duration=${DURATION:-8}
stamp() { echo; echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nproc
uptime

# The loadgen runs by itself when python3 is missing: one JSON report per line.
run_without_python() {
  local backend=$1 out=$2 dir listen target
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
      for plane in bytes shm; do
        echo "-- $transport $plane batch $batch"
        timeout 120 "$bin/flashkv-loadgen" --target="$target" --runners=1 --max-batch=$batch \
          --prompt-len=16 --output-len=128 --max-pass-tokens=$((batch * 16 > 256 ? batch * 16 : 256)) \
          --prefill-chunk=16 --verify=none --no-token-ids --duration="$duration" --progress=none \
          --data-plane=$plane --json | tr -d '\n' >>"$out"
        echo >>"$out"
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
    [[ $backend == cpu ]] && extra=(--cpu-threads=8 --kv-cache=8GiB)
    timeout 900 python3 benchmarks/server/dataplane_step_benchmark.py --backend="$backend" \
      --server="$bin/flashkv-server" --loadgen="$bin/flashkv-loadgen" \
      --transport-benchmark="$bin/transport_benchmark" --duration="$duration" "${extra[@]}" \
      --json-out="$OUT/dataplane-$backend.json"
    echo "benchmark rc=$?"
  else
    echo "no python3: raw loadgen reports in dataplane-$backend.json (one per line)"
    run_without_python "$backend" "$OUT/dataplane-$backend.json"
  fi
done
stamp done

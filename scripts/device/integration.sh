#!/usr/bin/env bash
# One device call that runs the service end to end on a GPU, from binaries built on the Debian
# machine (the GPU machine has no gRPC libraries) and bundled with their libraries:
#
#   here:   cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHKV_WITH_CUDA=ON \
#             -DCMAKE_CUDA_ARCHITECTURES=90a -DFLASHKV_CUDA_HEAD_DIMS=128 \
#             -DFLASHKV_CUDA_DTYPES="fp16;bf16" && cmake --build build-gpu -j2
#           scripts/device/bundle.sh build-gpu .bundle
#   device: OUT=$OUT bash scripts/device/integration.sh        (carry: .bundle)
#
# Steps: the kvcache GPU tests; flashkv-server on CUDA driven by flashkv-loadgen (a run with every
# output recomputed on the CPU, then a throughput run sampling 2%); the transport benchmark over
# TCP and a Unix socket. Then, when SM90=1, the sm90 kernel script (its logs are tarred into
# $OUT/sm90.tgz so the run stays under the 8 files that come back).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/integration.txt") 2>&1
bundle=${BUNDLE:-.bundle}
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$PWD/$bundle/bin"
stamp() { echo; echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

stamp "kvcache GPU tests"
timeout 90 "$bin/kvcache_step_gpu_test" --gtest_brief=1 2>&1 | tail -15

stamp "server on CUDA + verifying load test"
log=$(mktemp)
"$bin/flashkv-server" --backend=cuda --plaintext --layers=32 --q-heads=32 --kv-heads=8 --head-dim=128 \
  --dtype=fp16 --page-size=16 --kv-cache-fraction=0.6 --listen=127.0.0.1:0 \
  --metrics-address=127.0.0.1:0 --batch-window=200us --prefill-chunk=512 \
  --drain-deadline=20s --log-level=info >"$log" 2>&1 &
server=$!
serving=""
for _ in $(seq 600); do
  serving=$(grep -m1 'serving on' "$log" || true)
  if [[ -n $serving ]] || ! kill -0 $server 2>/dev/null; then break; fi
  sleep 0.1
done
head -c 3000 "$log"
if [[ -n $serving ]]; then
  target=$(sed -E 's/.*serving on ([^ ]+) .*/\1/' <<<"$serving")
  echo "-- verify=all (every output recomputed on the CPU)"
  timeout 60 "$bin/flashkv-loadgen" --target="$target" --runners=8 --max-batch=8 \
    --prompt-len=uniform:64:1024 --output-len=uniform:16:64 --prefix-pool=4 --duration=20 \
    --verify=all --progress=none --cpu-threads=12
  echo "loadgen rc=$?"
  echo "-- throughput (2% of steps recomputed)"
  timeout 60 "$bin/flashkv-loadgen" --target="$target" --runners=32 --max-batch=16 \
    --prompt-len=chat-prompt --output-len=chat-output --duration=25 --verify=0.02 \
    --progress=none --connections=4 --cpu-threads=8
  echo "loadgen rc=$?"
  "$bin/flashkv" --target="$target" stats
  kill -TERM $server
  wait $server
  echo "server exit=$?"
else
  echo "server did not start"; cat "$log"; kill -KILL $server 2>/dev/null
fi
tail -5 "$log"

stamp "transport benchmark (TCP, then Unix socket)"
timeout 60 "$bin/transport_benchmark" --quick
timeout 50 "$bin/transport_benchmark" --quick --unix

if [[ ${SM90:-0} == 1 ]]; then
  stamp "sm90 kernels"
  mkdir -p /tmp/sm90
  OUT=/tmp/sm90 timeout "${SM90_SECONDS:-330}" bash benchmarks/kernels/device_run_sm90.sh >/dev/null 2>&1
  echo "sm90 script rc=$?"
  cat /tmp/sm90/log.txt
  tar -C /tmp -czf "$OUT/sm90.tgz" sm90
fi
stamp done

#!/usr/bin/env bash
# One device call on a machine with several GPUs: the CUDA server placing sequences across 1 and
# then all GPUs, driven by the verifying load-test client, from binaries bundled on the Debian
# machine (see scripts/device/integration.sh for how to build and bundle them):
#
#   device: OUT=$OUT bash scripts/device/multi_gpu.sh        (carry: .bundle; kind nvidia-h100-x2)
#
# For each device set: a run with every output recomputed on the CPU, then a throughput run from
# LOADGENS concurrent load-test processes (one process alone cannot saturate the server: it
# generates and encodes every Q/K/V and decodes every output), sampling 1% of steps; `flashkv
# stats` taken mid-run shows the sequences and KV blocks each device holds. Reports (JSON) go to
# $OUT/multi_gpu.tgz, the log to $OUT/multi_gpu.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/multi_gpu.txt") 2>&1
bundle=${BUNDLE:-.bundle}
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$PWD/$bundle/bin"
loadgens=${LOADGENS:-3}
verify_seconds=${VERIFY_SECONDS:-15}
throughput_seconds=${THROUGHPUT_SECONDS:-25}
reports=$(mktemp -d)
stamp() { echo; echo "== $1 ($(date +%T), ${SECONDS}s)"; }
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)

start_server() {  # $1: device list; sets server, target
  local log=$reports/server-$1.log extra
  read -ra extra <<<"${SERVER_FLAGS:-}"
  : >"$log"
  "$bin/flashkv-server" --backend=cuda --plaintext --devices="$1" --layers=32 --q-heads=32 \
    --kv-heads=8 --head-dim=128 --dtype=fp16 --page-size=16 --kv-cache-fraction=0.6 \
    --listen=127.0.0.1:0 --metrics-address=127.0.0.1:0 --batch-window=200us \
    --prefill-chunk=512 --drain-deadline=20s --log-level=info "${extra[@]}" >"$log" 2>&1 &
  server=$!
  target=""
  for _ in $(seq 600); do
    local serving
    serving=$(grep -m1 'serving on' "$log" || true)
    if [[ -n $serving ]]; then target=$(sed -E 's/.*serving on ([^ ]+) .*/\1/' <<<"$serving"); break; fi
    kill -0 $server 2>/dev/null || break
    sleep 0.1
  done
  grep -E "device|pool|blocks" "$log" | head -8
  [[ -n $target ]] || { echo "server did not start"; cat "$log"; kill -KILL $server 2>/dev/null; }
}

for devices in 0 "$gpus"; do
  [[ $devices == 0 && $gpus == 0 ]] && continue   # one GPU only: nothing to compare
  tag=${devices//,/}
  stamp "devices=$devices"
  start_server "$devices"
  [[ -n $target ]] || continue
  echo "-- verify=all (every output recomputed on the CPU)"
  timeout $((verify_seconds + 40)) "$bin/flashkv-loadgen" --target="$target" --runners=16 \
    --max-batch=8 --prompt-len=uniform:64:1024 --output-len=uniform:16:64 --prefix-pool=4 \
    --duration="$verify_seconds" --verify=all --progress=none --cpu-threads=8 \
    --connections=2 --out="$reports/verify-$tag.json" | grep -E "verification|RESULT|throughput|errors"
  echo "-- throughput: $loadgens load-test processes, 1% of steps recomputed"
  pids=()
  for i in $(seq "$loadgens"); do
    timeout $((throughput_seconds + 40)) "$bin/flashkv-loadgen" --target="$target" --runners=32 \
      --max-batch=16 --prompt-len=chat-prompt --output-len=chat-output \
      --duration="$throughput_seconds" --verify=0.01 --progress=none --connections=4 \
      --cpu-threads=2 --seed=$((100 + i)) --run-id="lg$i-$tag" \
      --out="$reports/throughput-$tag-$i.json" >"$reports/throughput-$tag-$i.txt" 2>&1 &
    pids+=($!)
  done
  sleep $((throughput_seconds * 2 / 3))
  echo "-- stats mid-run"
  "$bin/flashkv" --target="$target" stats
  for p in "${pids[@]}"; do wait "$p"; done
  python3 - "$reports" "$tag" <<'EOF'
import glob, json, sys
d, tag = sys.argv[1], sys.argv[2]
tot = {"prefill": 0.0, "decode": 0.0, "steps": 0.0, "checked": 0, "mism": 0, "err": 0}
for f in sorted(glob.glob(f"{d}/throughput-{tag}-*.json")):
    r = json.load(open(f))
    t, v = r["throughput"], r["verification"]
    tot["prefill"] += t["prefill_tokens_per_s"]; tot["decode"] += t["decode_tokens_per_s"]
    tot["steps"] += t["steps_per_s"]; tot["checked"] += v["steps_checked"]
    tot["mism"] += v["mismatched_entries"]; e = r["errors"]["unexpected"]
    tot["err"] += sum(e.values()) if isinstance(e, dict) else e
print(f"devices tag {tag}: prefill {tot['prefill']:.0f} tok/s, decode {tot['decode']:.0f} tok/s, "
      f"{tot['steps']:.0f} layer steps/s, {tot['checked']} steps checked, {tot['mism']} mismatched, "
      f"{tot['err']} unexpected errors")
EOF
  grep -hE "RESULT" "$reports"/throughput-"$tag"-*.txt
  "$bin/flashkv" --target="$target" stats
  kill -TERM $server
  wait $server
  echo "server exit=$?"
done
tar -C "$reports" -czf "$OUT/multi_gpu.tgz" .
stamp finished

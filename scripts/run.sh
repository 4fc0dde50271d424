#!/usr/bin/env bash
# The main job: install what is missing, build (Release), start flashkv-server (CPU backend, or
# CUDA when a GPU is visible), drive it for a bounded time with the load-test client
# (flashkv-loadgen: simulated model runners, every output recomputed on the CPU), print its report
# and the server's figures, then stop the server with SIGTERM and check that it drained cleanly.
#
#   scripts/run.sh                       # 30 s of load
#   FLASHKV_RUN_SECONDS=120 scripts/run.sh
#   FLASHKV_JOBS=2 scripts/run.sh        # build parallelism (default: all cores)
#
# Exits non-zero when the build, the server, a verification or the drain fails.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FLASHKV_RUN_SECONDS:-30}
jobs=${FLASHKV_JOBS:-$(nproc)}
build=build/run

scripts/setup.sh

# A GPU is there when nvidia-smi lists one. A CUDA build (when nvcc is found) compiles only the
# instantiation this script serves (fp16, head dim 128), to keep the build short.
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  gpu=1
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHKV_BUILD_TESTS=OFF \
  -DFLASHKV_BUILD_BENCHMARKS=OFF -DFLASHKV_CUDA_HEAD_DIMS=128 -DFLASHKV_CUDA_DTYPES=fp16 >/dev/null
cmake --build "$build" -j "$jobs" --target flashkv-server flashkv_loadgen flashkv_cli

if ((gpu)); then
  model=(--backend=cuda --layers=32 --q-heads=32 --kv-heads=8 --head-dim=128 --dtype=fp16
         --page-size=16 --kv-cache-fraction=0.8)
  load=(--runners=16 --max-batch=16 --prompt-len=chat-prompt --output-len=chat-output)
else
  # Small enough for a few cores to keep up, large enough to batch and to chunk prefills.
  model=(--backend=cpu --layers=8 --q-heads=16 --kv-heads=4 --head-dim=128 --dtype=fp16
         --page-size=16 --kv-cache-bytes=1GiB)
  load=(--runners=4 --max-batch=4 --prompt-len=uniform:32:256 --output-len=uniform:8:32)
fi

# Ports 0: the kernel picks free ones; the server logs what it bound once it is SERVING.
log=$(mktemp -t flashkv-server.XXXXXX.log)
"$build/server/flashkv-server" "${model[@]}" --plaintext --listen=127.0.0.1:0 \
  --metrics-address=127.0.0.1:0 \
  --prefill-chunk=256 --batch-window=200us --sequence-ttl=5m --drain-deadline=30s \
  --log-level=info >"$log" 2>&1 &
server_pid=$!
stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid" 2>/dev/null || true; fi
}
trap stop_server EXIT

serving=""
for _ in $(seq 1200); do
  serving=$(grep -m1 'serving on' "$log" || true)
  if [[ -n $serving ]] || ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [[ -z $serving ]]; then
  echo "run: the server did not start; its log:" >&2
  cat "$log" >&2
  exit 1
fi
target=$(sed -E 's/.*serving on ([^ ]+) .*/\1/' <<<"$serving")
metrics=$(sed -E 's/.*metrics on ([^ ]+)$/\1/' <<<"$serving")
echo "run: ${serving#* [A-Z] }"
cli=("$build/client/flashkv" --target="$target")
"${cli[@]}" health >/dev/null
echo

status=0
report=$build/loadgen-report.json
"$build/client/flashkv-loadgen" --target="$target" "${load[@]}" --duration="$seconds" \
  --verify=all --progress=lines --progress-interval=10 --out="$report" || status=$?
echo "run: JSON report in $report (to plot it: benchmarks/loadgen_plot.py $report)"

echo
echo "run: server figures"
"${cli[@]}" info || status=1
"${cli[@]}" stats || status=1
# The Prometheus endpoint, read with bash's /dev/tcp (no curl needed).
exec 3<>"/dev/tcp/${metrics%:*}/${metrics##*:}"
printf 'GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n' "$metrics" >&3
samples=$(grep -c '^flashkv_' <&3 || true)
exec 3>&-
echo "run: http://$metrics/metrics serves $samples flashkv samples"

# Drain: SIGTERM, then the server must exit 0 by itself.
kill -TERM "$server_pid"
drain_status=0
wait "$server_pid" || drain_status=$?
trap - EXIT
echo "run: server stopped with exit status $drain_status ($(tail -n 1 "$log" | sed 's/^[^ ]* [A-Z] //'))"
rm -f "$log"
if ((drain_status != 0)); then status=1; fi
exit "$status"

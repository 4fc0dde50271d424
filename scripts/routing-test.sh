#!/usr/bin/env bash
# Routing past one machine, on loopback: N flashkv-server replicas (CPU backend) behind nginx
# running docker/nginx/flashkv.conf, the verifying load test through the proxy, then the checks of
# scripts/routing-check.py: zero mismatches, zero unexpected errors, every routing key on exactly
# one replica, no NOT_FOUND, sequences created on the replicas == sequences the client started,
# none left behind. Everything started here is stopped on exit; the replicas must drain cleanly.
#
#   scripts/routing-test.sh [--build DIR | --server F --cli F --loadgen F] [--replicas N]
#                           [--duration S] [--runners N] [--keep] [--without-hash]
#
# --without-hash is the self-check: the proxy's hash rule is replaced by least_conn and the run
# succeeds only if the checks catch the misrouting. nginx runs unprivileged (as nobody when
# started by root) from its own prefix in a temporary directory. Needs nginx (scripts/setup.sh).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build/release
server='' cli='' loadgen=''
replicas=3 duration=5 runners=12 keep=0 without_hash=0

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --build) build=$2 && shift ;;
    --server) server=$2 && shift ;;
    --cli) cli=$2 && shift ;;
    --loadgen) loadgen=$2 && shift ;;
    --replicas) replicas=$2 && shift ;;
    --duration) duration=$2 && shift ;;
    --runners) runners=$2 && shift ;;
    --keep) keep=1 ;;
    --without-hash) without_hash=1 ;;
    -h | --help) usage && exit 0 ;;
    *) echo "routing-test: unknown argument '$1'" >&2 && usage >&2 && exit 2 ;;
  esac
  shift
done
server=${server:-$build/server/flashkv-server}
cli=${cli:-$build/client/flashkv}
loadgen=${loadgen:-$build/client/flashkv-loadgen}
for binary in "$server" "$cli" "$loadgen"; do
  [[ -x $binary ]] ||
    { echo "routing-test: $binary is missing (build first, or --build DIR)" >&2 && exit 2; }
done
nginx=$(PATH=$PATH:/usr/sbin command -v nginx) ||
  { echo "routing-test: nginx is missing (scripts/setup.sh installs it)" >&2 && exit 2; }
((replicas >= 2)) || { echo "routing-test: --replicas must be at least 2" >&2 && exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/flashkv-routing.XXXXXX")
chmod 0755 "$work"  # nginx runs as nobody when this runs as root
pids=()
status=1
# Stops whatever is still running (SIGTERM, then SIGKILL after 10 s) and removes the work
# directory unless --keep or the test failed.
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    timeout 10 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  if ((keep || status != 0)); then
    echo "routing-test: logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

fail() {
  echo "routing-test: FAIL: $*" >&2
  for log in "$work"/*.log "$work"/nginx/logs/error.log; do
    [[ -s $log ]] && { echo "--- $log (tail)" >&2 && tail -n 15 "$log" >&2; }
  done
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- replicas: ports picked by the kernel, read back from the "serving on" line -----------------
addresses=() metrics=()
start_replica() {
  local i=$1 log=$work/replica-$1.log
  "$server" --backend=cpu --plaintext --listen=127.0.0.1:0 --metrics-address=127.0.0.1:0 \
    --layers=2 --q-heads=4 --kv-heads=2 --head-dim=64 --dtype=fp16 --page-size=16 \
    --kv-cache-bytes=64MiB --cpu-threads=1 --attention-threads=1 --drain-deadline=5s \
    >"$log" 2>&1 &
  pids+=($!)
  replica_pids[i]=$!
}
declare -a replica_pids
for ((i = 0; i < replicas; i++)); do start_replica "$i"; done
for ((i = 0; i < replicas; i++)); do
  line=''
  for ((t = 0; t < 600; t++)); do
    line=$(grep -m1 -o 'serving on [^ ]* .*metrics on [^ ]*' "$work/replica-$i.log" || true)
    [[ -n $line ]] && break
    kill -0 "${replica_pids[i]}" 2>/dev/null || fail "replica $i exited at start"
    sleep 0.1
  done
  [[ -n $line ]] || fail "replica $i did not start within 60 s"
  addresses[i]=$(sed -E 's/^serving on ([^ ]+) .*/\1/' <<<"$line")
  metrics[i]=$(sed -E 's/.*metrics on ([^ ]+)$/\1/' <<<"$line")
  "$cli" --target "${addresses[i]}" --timeout 5 health --wait 30 >/dev/null ||
    fail "replica $i (${addresses[i]}) is not SERVING"
done
echo "routing-test: ${replicas} replicas: ${addresses[*]}"

# --- nginx with docker/nginx/flashkv.conf, unprivileged, in its own prefix ------------------------
prefix=$work/nginx
mkdir -p "$prefix/logs" "$prefix/tmp"
cp "$repo/docker/nginx/flashkv.conf" "$prefix/"
if ((without_hash)); then
  # shellcheck disable=SC2016 # the nginx variable is meant literally
  sed -i 's/^\( *\)hash \$http_x_flashkv_sequence consistent;/\1least_conn;/' "$prefix/flashkv.conf"
  # shellcheck disable=SC2016
  ! grep -q 'hash \$http_x_flashkv_sequence' "$prefix/flashkv.conf" ||
    fail "--without-hash: could not remove the hash rule"
fi
for address in "${addresses[@]}"; do
  echo "server $address max_fails=1 fail_timeout=10s;"
done >"$prefix/flashkv-upstreams.inc"
cat >"$prefix/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    include flashkv.conf;
    access_log $prefix/logs/routing.log flashkv_routing;
}
EOF
as_nginx=()
if (($(id -u) == 0)); then
  chown -R nobody:nogroup "$prefix"
  as_nginx=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
fi
proxy=''
for attempt in 1 2 3; do
  port=$(free_port)
  echo "listen 127.0.0.1:$port http2;" >"$prefix/flashkv-listen.inc"
  if ((attempt == 1)); then
    "${as_nginx[@]}" "$nginx" -q -t -p "$prefix" -c "$prefix/nginx.conf" \
      -e "$prefix/logs/error.log" || fail "nginx -t rejected the configuration"
  fi
  "${as_nginx[@]}" "$nginx" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  if "$cli" --target "127.0.0.1:$port" --timeout 2 health --wait 10 >/dev/null 2>&1; then
    proxy=127.0.0.1:$port
    break
  fi
  kill -TERM "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  echo "routing-test: nginx did not serve on port $port (attempt $attempt)"
done
[[ -n $proxy ]] || fail "nginx did not start"
rule='hash on x-flashkv-sequence'
((without_hash)) && rule='hash rule removed'
echo "routing-test: nginx (pid $nginx_pid) on $proxy, $rule"

# --- the load test through the proxy ----------------------------------------------------------
for ((i = 0; i < replicas; i++)); do
  python3 "$repo/scripts/routing-check.py" scrape "http://${metrics[i]}/metrics" \
    "$work/metrics-$i-before.txt"
done
set +e
"$loadgen" --target "$proxy" --runners "$runners" --max-batch 2 --duration "$duration" \
  --prompt-len uniform:8:48 --output-len uniform:4:16 --verify all --run-id routing --seed 7 \
  --cpu-threads 1 --rpc-timeout 30 --progress none --out "$work/report.json" \
  >"$work/loadgen.log" 2>&1
loadgen_status=$?
set -e
echo "routing-test: load test exit status $loadgen_status"
[[ -s $work/report.json ]] || fail "the load test wrote no report"
for ((i = 0; i < replicas; i++)); do
  python3 "$repo/scripts/routing-check.py" scrape "http://${metrics[i]}/metrics" \
    "$work/metrics-$i-after.txt"
done

# --- stop: nginx at once, replicas with SIGTERM (each must drain and exit 0) -------------------
kill -QUIT "$nginx_pid"
wait "$nginx_pid" || true
for ((i = 0; i < replicas; i++)); do
  kill -TERM "${replica_pids[i]}"
  replica_status=0
  wait "${replica_pids[i]}" || replica_status=$?
  ((replica_status == 0)) || fail "replica $i exited with status $replica_status after SIGTERM"
done
pids=()

check=(python3 "$repo/scripts/routing-check.py" verify --report "$work/report.json"
  --access-log "$prefix/logs/routing.log")
for ((i = 0; i < replicas; i++)); do
  check+=(--replica "${addresses[i]}" "$work/metrics-$i-before.txt" "$work/metrics-$i-after.txt")
done
if ((without_hash)); then check+=(--expect-misrouting); fi
"${check[@]}" || fail "routing checks"
if ((!without_hash && loadgen_status != 0)); then
  fail "the load test exited with status $loadgen_status"
fi
status=0
echo "routing-test: PASS"

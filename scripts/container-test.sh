#!/usr/bin/env bash
# The container image, end to end, with podman/buildah (no Docker engine or registry needed):
# makes a Debian 12 base with debootstrap (once; kept in the storage directory), builds the CPU
# image from docker/Dockerfile, runs it, waits for its HEALTHCHECK (grpc.health.v1) to pass, runs
# the image's verifying load test against it, stops it with SIGTERM and checks the drain ended
# with exit status 0. Prints the time of each phase (docs/deployment.md records them).
#
#   scripts/container-test.sh [--storage DIR] [--jobs N] [--with-tests] [--duration S]
#                             [--rebuild-base] [--keep]
#
# --storage  image storage (podman --root/--runroot), default ~/.cache/flashkv/containers;
#            reruns reuse the base and the cached build layers
# --with-tests  build with RUN_TESTS=1 (the image's build stage runs ctest -L cpu); default 0
# --jobs     build parallelism (default 2: the machines this runs on are shared)
# Needs root (podman rootful) and, when missing, installs podman buildah runc debootstrap.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
storage=${XDG_CACHE_HOME:-$HOME/.cache}/flashkv/containers
jobs=2 run_tests=0 duration=5 rebuild_base=0 keep=0
base=localhost/flashkv-bookworm-minbase
image=localhost/flashkv:cpu

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case $1 in
    --storage) storage=$2 && shift ;;
    --jobs) jobs=$2 && shift ;;
    --with-tests) run_tests=1 ;;
    --duration) duration=$2 && shift ;;
    --rebuild-base) rebuild_base=1 ;;
    --keep) keep=1 ;;
    -h | --help) usage && exit 0 ;;
    *) echo "container-test: unknown argument '$1'" >&2 && usage >&2 && exit 2 ;;
  esac
  shift
done
if (($(id -u) != 0)); then
  echo "container-test: needs root (rootful podman, debootstrap)" >&2
  exit 2
fi

phase_start=$(date +%s)
timings=()
# Records the time since the previous phase under NAME.
phase_done() {
  local now
  now=$(date +%s)
  timings+=("$(printf '%-28s %5d s' "$1" $((now - phase_start)))")
  echo "container-test: $1 done in $((now - phase_start)) s"
  phase_start=$now
}

# --- tools and configuration (../shared/CONTAINERS.md) ------------------------------------------
missing=()
for tool in podman:podman buildah:buildah runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  echo "container-test: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/flashkv-container-test.XXXXXX")
name=flashkv-container-test-$$
# Without the ulimits, runc's setrlimit is refused here; crun fails on this cgroup layout.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf
mkdir -p "$storage/root" "$storage/runroot"
podman=(podman --root "$storage/root" --runroot "$storage/runroot")

status=1
cleanup() {
  "${podman[@]}" rm -f -t 0 "$name" >/dev/null 2>>"$work/podman.log" || true
  if ((keep || status != 0)); then
    echo "container-test: files kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

fail() {
  echo "container-test: FAIL: $*" >&2
  "${podman[@]}" logs --tail 20 "$name" 2>/dev/null | sed 's/^/  server: /' >&2 || true
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# --- base: Debian 12 minbase, set up like debian:bookworm-slim ------------------------------------
make_base() {
  local rootfs=$work/rootfs conf
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2 && fail "debootstrap"; }
  # The host's sources (bookworm-updates, bookworm-security, its mirror) and its apt network
  # settings (proxies, Acquire::*), so the image build fetches what this host can fetch.
  rm -f "$rootfs/etc/apt/sources.list"
  cp /etc/apt/sources.list.d/*.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
  [[ -s /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$rootfs/etc/apt/"
  for conf in /etc/apt/apt.conf.d/*; do
    grep -q '^Acquire::' "$conf" 2>/dev/null && cp "$conf" "$rootfs/etc/apt/apt.conf.d/"
  done
  # As in the official slim image: no services started by package scripts, no docs or man pages.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${podman[@]}" import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$base" >/dev/null
  rm -rf "$rootfs"
}
if ((rebuild_base)) || ! "${podman[@]}" image exists "$base"; then
  make_base
  phase_done "base (debootstrap)"
else
  phase_done "base (cached)"
fi

# --- image ------------------------------------------------------------------------------------
# docker format: the OCI format has no HEALTHCHECK, and podman would drop it.
"${podman[@]}" build --isolation chroot --format docker --layers -f "$repo/docker/Dockerfile" \
  --build-arg BASE_IMAGE="$base" --build-arg RUN_TESTS="$run_tests" \
  --build-arg BUILD_JOBS="$jobs" -t "$image" "$repo" >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2 && fail "image build (log: $work/build.log)"; }
grep -E '^(staged|runtime packages)' "$work/build.log" | sed 's/^/  /' || true
phase_done "image build (RUN_TESTS=$run_tests)"
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image")
echo "container-test: $image is $((size >> 20)) MiB"

# --- run, health ------------------------------------------------------------------------------
port=$(free_port)
# No health timer (podman drives those through systemd, absent here, and logs that it cannot to
# podman.log): the loop below runs the image's HEALTHCHECK command itself.
"${podman[@]}" run -d --name "$name" --health-interval=disable -p "127.0.0.1:$port:50051" "$image" \
  flashkv-server --backend=cpu --plaintext --listen=0.0.0.0:50051 \
  --metrics-address=0.0.0.0:9464 \
  --layers=4 --q-heads=8 --kv-heads=2 --head-dim=64 --dtype=fp16 --kv-cache-bytes=256MiB \
  --cpu-threads=2 --drain-deadline=10s >/dev/null 2>>"$work/podman.log" || fail "podman run"
healthy=0
for ((t = 0; t < 120; t++)); do
  if "${podman[@]}" healthcheck run "$name" >/dev/null 2>&1; then
    healthy=1
    break
  fi
  [[ $("${podman[@]}" inspect --format '{{.State.Running}}' "$name") == true ]] ||
    fail "the server exited at start"
  sleep 1
done
((healthy)) || fail "HEALTHCHECK did not pass within 120 s"
[[ $("${podman[@]}" exec "$name" id -u) == 10001 ]] || fail "the server does not run as uid 10001"
[[ $("${podman[@]}" exec "$name" cat /proc/1/comm) == tini ]] || fail "PID 1 is not tini"
phase_done "start until healthy"

# --- the load test, from the same image, through the published port --------------------------
loadgen_status=0
"${podman[@]}" run --rm --no-healthcheck --network host "$image" \
  flashkv-loadgen --target "127.0.0.1:$port" --duration "$duration" --runners 4 --max-batch 4 \
  --prompt-len uniform:16:128 --output-len uniform:8:32 --verify all --cpu-threads 1 \
  --progress none \
  >"$work/loadgen.txt" 2>&1 || loadgen_status=$?
sed 's/^/  /' "$work/loadgen.txt"
((loadgen_status == 0)) || fail "the load test is not clean (exit status $loadgen_status)"
phase_done "load test (${duration} s, verify all)"

# --- stop: SIGTERM, drain, exit 0 ----------------------------------------------------------------
"${podman[@]}" stop -t 30 "$name" >/dev/null 2>>"$work/podman.log"
exit_code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")
((exit_code == 0)) || fail "the server exited with status $exit_code after SIGTERM"
server_log=$("${podman[@]}" logs "$name" 2>&1)
grep -q 'received SIGTERM' <<<"$server_log" || fail "the server did not see SIGTERM"
grep -q 'stopped$' <<<"$server_log" || fail "the server did not finish its drain"
phase_done "SIGTERM until exit 0"

status=0
echo "container-test: PASS"
printf '  %s\n' "${timings[@]}"

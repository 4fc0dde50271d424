#!/usr/bin/env bash
# Installs, with apt-get, the Debian 12 packages flashkv builds and tests with — only those that
# are missing, so a second run does nothing. Needs root (or sudo) when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libspdlog-dev libgtest-dev libgmock-dev
  prometheus-cpp-dev libcli11-dev nlohmann-json3-dev
  nginx shellcheck python3-yaml openssl
  python3-grpcio python3-protobuf python3-numpy python3-pytest
  clang libclang-rt-14-dev llvm  # asan preset and fuzz targets: clang, libFuzzer, llvm-symbolizer
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# The image's build stage (docker/Dockerfile): configures and builds flashkv, runs the CPU tests,
# and stages what the runtime stage copies: PREFIX/bin/{flashkv-server,flashkv,flashkv-loadgen}
# and PREFIX/runtime-packages.txt (the packages providing their shared libraries).
#   docker/build-stage.sh SRC BUILD PREFIX
# Environment (the Dockerfile's build args): FLASHKV_WITH_CUDA (AUTO|ON|OFF),
# CMAKE_CUDA_ARCHITECTURES, RUN_TESTS (1|0), BUILD_JOBS, CMAKE_ARGS (extra, word-split).
set -euo pipefail

if (($# != 3)); then
  echo "usage: $0 SRC BUILD PREFIX" >&2
  exit 2
fi
src=$1 build=$2 prefix=$3
with_cuda=${FLASHKV_WITH_CUDA:-AUTO}
run_tests=${RUN_TESTS:-1}
jobs=${BUILD_JOBS:-2}
case $run_tests in
  0 | 1) ;;
  *) echo "RUN_TESTS must be 0 or 1, not '$run_tests'" >&2 && exit 2 ;;
esac

configure=(-S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DFLASHKV_WITH_SERVICE=ON -DFLASHKV_WITH_CUDA="$with_cuda" -DFLASHKV_BUILD_BENCHMARKS=OFF)
if [[ $with_cuda != OFF && -n ${CMAKE_CUDA_ARCHITECTURES:-} ]]; then
  configure+=(-DCMAKE_CUDA_ARCHITECTURES="$CMAKE_CUDA_ARCHITECTURES")
fi
if ((run_tests)); then
  configure+=(-DFLASHKV_BUILD_TESTS=ON)
else
  configure+=(-DFLASHKV_BUILD_TESTS=OFF)
fi
# CMAKE_ARGS is a build arg holding several arguments: split on whitespace on purpose.
read -r -a extra <<<"${CMAKE_ARGS:-}"
cmake "${configure[@]}" "${extra[@]}"

if ((run_tests)); then
  cmake --build "$build" -j "$jobs"
  ctest --test-dir "$build" -L cpu -j "$jobs" --output-on-failure --timeout 900
else
  cmake --build "$build" -j "$jobs" --target flashkv-server flashkv_cli flashkv_loadgen
fi

install -d "$prefix/bin"
for binary in server/flashkv-server client/flashkv client/flashkv-loadgen; do
  install -m 0755 "$build/$binary" "$prefix/bin/"
done
strip --strip-unneeded "$prefix"/bin/*
"$src/docker/runtime-packages.sh" "$prefix"/bin/* >"$prefix/runtime-packages.txt"
echo "staged in $prefix/bin: flashkv-server flashkv flashkv-loadgen"
echo "runtime packages: $(tr '\n' ' ' <"$prefix/runtime-packages.txt")"

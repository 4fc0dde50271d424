#!/usr/bin/env bash
# Prints, one per line and sorted, the Debian/Ubuntu packages that provide the shared libraries the
# given executables load (per ldd), so a runtime image installs those and nothing else.
#   docker/runtime-packages.sh BINARY...
# A library no package owns is an error, except the GPU driver's (libcuda, libnvidia-*), which the
# NVIDIA container runtime mounts at run time.
set -euo pipefail

if (($# == 0)); then
  echo "usage: $0 BINARY..." >&2
  exit 2
fi

# dpkg records a file under the path its package shipped it at; with merged /usr, ldd may report
# /lib/... for a file recorded as /usr/lib/... (or the reverse), and a soname symlink for a file
# recorded under its full version. Try each spelling.
owner() {
  local path=$1 real candidate out
  real=$(readlink -f "$path")
  for candidate in "$path" "$real" "/usr$path" "/usr$real" "${path#/usr}" "${real#/usr}"; do
    if out=$(dpkg-query -S "$candidate" 2>/dev/null); then
      echo "${out%%: *}"
      return 0
    fi
  done
  return 1
}

packages=()
status=0
for binary in "$@"; do
  while read -r line; do
    if [[ $line =~ ^([^[:space:]]+)\ =\>\ not\ found ]]; then
      case ${BASH_REMATCH[1]} in
        libcuda.so* | libnvidia-*) continue ;;
      esac
      echo "$binary: ${BASH_REMATCH[1]} not found" >&2
      status=1
    elif [[ $line =~ =\>\ (/[^[:space:]]+) ]] || [[ $line =~ ^(/[^[:space:]]+)\ \( ]]; then
      path=${BASH_REMATCH[1]}
      if ! package=$(owner "$path"); then
        echo "$binary: $path belongs to no package" >&2
        status=1
        continue
      fi
      packages+=("$package")
    fi
  done < <(ldd "$binary")
done
((status == 0)) || exit "$status"
printf '%s\n' "${packages[@]}" | sort -u

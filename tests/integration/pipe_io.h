#pragma once

// Whole reads and writes on a pipe, for the CUDA region tests and their peer process
// (cuda_region_peer.cc): false when the other end closed or failed.

#include <unistd.h>

#include <cstddef>

namespace flashkv::testing {

inline bool ReadAll(int fd, void* data, size_t bytes) {
  auto* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = read(fd, p, bytes);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

inline bool WriteAll(int fd, const void* data, size_t bytes) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = write(fd, p, bytes);
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace flashkv::testing

// The other process of the CUDA region tests (cuda_regions_test.cc): CUDA IPC cannot open a handle
// in the process that exported it, so the test's "model runner" memory lives here. It allocates
// `alloc_bytes` on CUDA device `device` (cudaMalloc), writes the 64-byte IPC handle to stdout, then
// serves byte requests from stdin until it closes:
//
//   'W' offset:u64 length:u64 <length bytes>  host -> device; answers 'k'
//   'R' offset:u64 length:u64                 device -> host; answers <length bytes>
//   'P' offset:u64 length:u64                 fills with 0xff (NaN in every float format); 'k'
//
// Every copy is synchronous, so that a request the test sends afterwards finds the writes done
// (the data plane's contract for client writes). Exits 1 with a message on stderr on any error.
//
//   cuda_region_peer DEVICE ALLOC_BYTES

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "flashkv/cuda_backend.h"
#include "pipe_io.h"

namespace {

using flashkv::testing::ReadAll;
using flashkv::testing::WriteAll;

[[noreturn]] void Fail(const std::string& what, const flashkv::KernelStatus& s) {
  std::fprintf(stderr, "cuda_region_peer: %s: %s\n", what.c_str(), s.message().c_str());
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  namespace cuda = flashkv::cuda;
  if (argc != 3) {
    std::fprintf(stderr, "usage: cuda_region_peer DEVICE ALLOC_BYTES\n");
    return 2;
  }
  const int device = std::atoi(argv[1]);
  const uint64_t alloc = std::strtoull(argv[2], nullptr, 10);
  if (auto s = cuda::SetDevice(device); !s.ok()) Fail("device", s);
  void* base = nullptr;
  if (auto s = cuda::Malloc(&base, alloc); !s.ok()) Fail("cudaMalloc", s);
  cuda::IpcMemHandle handle;
  if (auto s = cuda::IpcGetMemHandle(base, &handle); !s.ok()) Fail("IPC handle", s);
  if (!WriteAll(STDOUT_FILENO, handle.bytes, sizeof handle.bytes)) return 1;
  auto* memory = static_cast<uint8_t*>(base);
  std::vector<uint8_t> host;
  for (;;) {
    char op = 0;
    uint64_t header[2];
    // EOF: the test is done.
    if (!ReadAll(STDIN_FILENO, &op, 1) || !ReadAll(STDIN_FILENO, header, sizeof header)) break;
    const uint64_t offset = header[0], length = header[1];
    if (offset > alloc || length > alloc - offset) {
      std::fprintf(stderr, "cuda_region_peer: [%llu, +%llu) is outside the allocation\n",
                   static_cast<unsigned long long>(offset),
                   static_cast<unsigned long long>(length));
      return 1;
    }
    host.resize(length);
    flashkv::KernelStatus s = flashkv::KernelStatus::Ok();
    if (op == 'W') {
      if (!ReadAll(STDIN_FILENO, host.data(), length)) return 1;
      s = cuda::MemcpyHostToDevice(memory + offset, host.data(), length, nullptr);
    } else if (op == 'R') {
      s = cuda::MemcpyDeviceToHost(host.data(), memory + offset, length, nullptr);
    } else if (op == 'P') {
      s = cuda::Memset(memory + offset, 0xff, length, nullptr);
    } else {
      std::fprintf(stderr, "cuda_region_peer: unknown request '%c'\n", op);
      return 1;
    }
    if (s.ok()) s = cuda::StreamSynchronize(nullptr);
    if (!s.ok()) Fail(std::string("request ") + op, s);
    const bool answered =
        op == 'R' ? WriteAll(STDOUT_FILENO, host.data(), length) : WriteAll(STDOUT_FILENO, "k", 1);
    if (!answered) return 1;
  }
  (void)cuda::Free(base);
  return 0;
}

#pragma once

// Where the cache's memory comes from. The pools (device memory with CUDA, host memory on the CPU
// backend), the swap space and the batch staging buffers (pinned host memory with CUDA, so that
// copies are asynchronous DMA) are all allocated through this interface, once or rarely, never
// per step. Tests substitute their own implementation to count or fail allocations.

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"

namespace flashkv::kvcache {

enum class MemoryKind {
  kHost,        // pageable host memory (CPU backend)
  kPinnedHost,  // page-locked host memory (swap space and staging buffers with CUDA)
  kDevice,      // device memory of one GPU
};

const char* MemoryKindName(MemoryKind kind);

// Hands out large, long-lived buffers. Thread-safety: implementations must allow concurrent calls.
class MemoryAllocator {
 public:
  virtual ~MemoryAllocator() = default;

  virtual MemoryKind kind() const = 0;
  // At least 256-byte aligned. RESOURCE_EXHAUSTED when the memory is not there.
  [[nodiscard]] virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  // `ptr` came from Allocate(bytes) on this allocator.
  virtual void Deallocate(void* ptr, size_t bytes) = 0;
};

// Plain host memory (aligned operator new).
std::shared_ptr<MemoryAllocator> NewHostAllocator();
// Page-locked host memory through flashkv::cuda::MallocHost.
std::shared_ptr<MemoryAllocator> NewPinnedHostAllocator();
// Device memory of `device` through flashkv::cuda::Malloc (the device is made current first).
std::shared_ptr<MemoryAllocator> NewDeviceAllocator(int device);

}  // namespace flashkv::kvcache

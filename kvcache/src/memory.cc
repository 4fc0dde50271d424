// The three allocators behind MemoryAllocator: aligned host memory, and pinned host and device
// memory through the flashkv::cuda wrappers (which report kUnavailable in a build without CUDA).

#include "flashkv/kvcache/memory.h"

#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache {
namespace {

constexpr std::align_val_t kAlignment{256};

class HostAllocator final : public MemoryAllocator {
 public:
  MemoryKind kind() const override { return MemoryKind::kHost; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* ptr = ::operator new(bytes == 0 ? 1 : bytes, kAlignment, std::nothrow);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("host allocation of ", bytes, " bytes failed"));
    }
    return ptr;
  }
  void Deallocate(void* ptr, size_t) override { ::operator delete(ptr, kAlignment); }
};

class PinnedHostAllocator final : public MemoryAllocator {
 public:
  MemoryKind kind() const override { return MemoryKind::kPinnedHost; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* ptr = nullptr;
    const KernelStatus status = cuda::MallocHost(&ptr, bytes == 0 ? 1 : bytes);
    if (!status.ok()) {
      return absl::Status(ToAbslStatus(status).code(),
                          absl::StrCat("pinned host allocation of ", bytes, " bytes: ", status.message()));
    }
    return ptr;
  }
  void Deallocate(void* ptr, size_t) override { (void)cuda::FreeHost(ptr); }
};

class DeviceAllocator final : public MemoryAllocator {
 public:
  explicit DeviceAllocator(int device) : device_(device) {}
  MemoryKind kind() const override { return MemoryKind::kDevice; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* ptr = nullptr;
    KernelStatus status = cuda::SetDevice(device_);
    if (status.ok()) status = cuda::Malloc(&ptr, bytes == 0 ? 1 : bytes);
    if (!status.ok()) {
      return absl::Status(ToAbslStatus(status).code(),
                          absl::StrCat("device ", device_, " allocation of ", bytes,
                                       " bytes: ", status.message()));
    }
    return ptr;
  }
  void Deallocate(void* ptr, size_t) override {
    (void)cuda::SetDevice(device_);
    (void)cuda::Free(ptr);
  }

 private:
  int device_;
};

}  // namespace

const char* MemoryKindName(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kHost:
      return "host";
    case MemoryKind::kPinnedHost:
      return "pinned host";
    case MemoryKind::kDevice:
      return "device";
  }
  return "unknown";
}

std::shared_ptr<MemoryAllocator> NewHostAllocator() { return std::make_shared<HostAllocator>(); }
std::shared_ptr<MemoryAllocator> NewPinnedHostAllocator() {
  return std::make_shared<PinnedHostAllocator>();
}
std::shared_ptr<MemoryAllocator> NewDeviceAllocator(int device) {
  return std::make_shared<DeviceAllocator>(device);
}

}  // namespace flashkv::kvcache

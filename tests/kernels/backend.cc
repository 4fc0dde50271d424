#include "kernels/backend.h"

#include <cstring>
#include <new>
#include <utility>

#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::testbed {
namespace {

// Host buffers are 64-byte aligned, like any allocator a caller would use for vector loads.
constexpr std::align_val_t kHostAlignment{64};

// The status of a launch followed by a synchronisation, so asynchronous errors are seen too.
KernelStatus Synchronized(KernelStatus launch) {
  if (!launch.ok()) return launch;
  return cuda::StreamSynchronize(nullptr);
}

}  // namespace

const char* BackendName(Backend backend) { return backend == Backend::kCpu ? "Cpu" : "Cuda"; }

std::string BackendUnavailableReason(Backend backend) {
  if (backend == Backend::kCpu) return "";
  if (!cuda::IsBuilt()) return "flashkv was built without CUDA";
  if (cuda::DeviceCount() == 0) return "no CUDA device";
  return "";
}

std::string UnavailableReason(Backend backend, DType dtype, int head_dim) {
  std::string reason = BackendUnavailableReason(backend);
  if (!reason.empty()) return reason;
  const bool compiled = backend == Backend::kCpu ? cpu::IsCompiled(dtype, head_dim)
                                                 : cuda::IsCompiled(dtype, head_dim);
  if (!compiled) {
    return std::string(BackendName(backend)) + " backend: " + DTypeName(dtype) + " head_dim " +
           std::to_string(head_dim) + " is not compiled in (FLASHKV_*DTYPES / *HEAD_DIMS)";
  }
  return "";
}

BackendBuffer::BackendBuffer(BackendBuffer&& other) noexcept
    : backend_(other.backend_),
      data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

BackendBuffer& BackendBuffer::operator=(BackendBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    backend_ = other.backend_;
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

BackendBuffer::~BackendBuffer() { Release(); }

void BackendBuffer::Release() {
  if (data_ == nullptr) return;
  if (backend_ == Backend::kCpu) {
    ::operator delete(data_, kHostAlignment);
  } else {
    // A failed free leaks device memory in a test process that is about to end; nothing to do.
    (void)cuda::Free(data_);
  }
  data_ = nullptr;
  bytes_ = 0;
}

KernelStatus BackendBuffer::Upload(const void* host, size_t bytes) {
  Release();
  if (bytes == 0) return KernelStatus::Ok();
  if (backend_ == Backend::kCpu) {
    data_ = ::operator new(bytes, kHostAlignment);
    bytes_ = bytes;
    std::memcpy(data_, host, bytes);
    return KernelStatus::Ok();
  }
  FLASHKV_RETURN_IF_ERROR(cuda::Malloc(&data_, bytes));
  bytes_ = bytes;
  FLASHKV_RETURN_IF_ERROR(cuda::MemcpyHostToDevice(data_, host, bytes, nullptr));
  return cuda::StreamSynchronize(nullptr);
}

KernelStatus BackendBuffer::Download(void* host, size_t bytes) const {
  if (bytes > bytes_) {
    return InvalidArgument("download of " + std::to_string(bytes) + " bytes from a buffer of " +
                           std::to_string(bytes_));
  }
  if (bytes == 0) return KernelStatus::Ok();
  if (backend_ == Backend::kCpu) {
    std::memcpy(host, data_, bytes);
    return KernelStatus::Ok();
  }
  FLASHKV_RETURN_IF_ERROR(cuda::MemcpyDeviceToHost(host, data_, bytes, nullptr));
  return cuda::StreamSynchronize(nullptr);
}

KernelStatus RunFixed(Backend backend, const FixedAttentionArgs& args) {
  if (backend == Backend::kCpu) return cpu::Attention(args);
  return Synchronized(cuda::Attention(args, nullptr));
}

KernelStatus RunVarlen(Backend backend, const VarlenAttentionArgs& args) {
  if (backend == Backend::kCpu) return cpu::AttentionVarlen(args);
  return Synchronized(cuda::AttentionVarlen(args, nullptr));
}

KernelStatus RunPaged(Backend backend, const PagedAttentionArgs& args) {
  if (backend == Backend::kCpu) return cpu::AttentionPaged(args);
  return Synchronized(cuda::AttentionPaged(args, nullptr));
}

KernelStatus PlanPaged(Backend backend, const PagedAttentionArgs& args, PagedAttentionPlan* plan) {
  if (backend == Backend::kCpu) return cpu::PlanAttentionPaged(args, plan);
  return cuda::PlanAttentionPaged(args, plan);
}

KernelStatus RunPlannedPaged(Backend backend, const PagedAttentionPlan& plan,
                             const PagedLayerTensors& tensors) {
  if (backend == Backend::kCpu) return cpu::RunAttentionPaged(plan, tensors);
  return Synchronized(cuda::RunAttentionPaged(plan, tensors, nullptr));
}

KernelStatus RunAppendKv(Backend backend, const KvAppendArgs& args) {
  if (backend == Backend::kCpu) return cpu::AppendKv(args);
  return Synchronized(cuda::AppendKv(args, nullptr));
}

}  // namespace flashkv::testbed

#include "flashkv/server/attention_backend.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "flashkv/base/mutex.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

class CpuAttentionBackend final : public AttentionBackend {
 public:
  std::string name() const override { return "cpu"; }
  int cuda_device() const override { return -1; }
  bool IsCompiled(DType dtype, int head_dim) const override {
    return cpu::IsCompiled(dtype, head_dim);
  }
  absl::Status RunFixed(const FixedAttentionArgs& args, const OnDevice& on_device) override {
    if (on_device.any()) return DeviceRefused();
    return FromKernelStatus(cpu::Attention(args));
  }
  absl::Status RunVarlen(const VarlenAttentionArgs& args, const OnDevice& on_device) override {
    if (on_device.any()) return DeviceRefused();
    return FromKernelStatus(cpu::AttentionVarlen(args));
  }

 private:
  // The request checks refuse CUDA regions on the CPU backend first; this is the last guard.
  static absl::Status DeviceRefused() {
    return absl::FailedPreconditionError(
        "the CPU attention backend reads host memory only, not CUDA device memory");
  }
};

// Regions of one scratch allocation, 256-byte aligned like cudaMalloc's own results.
class ScratchLayout {
 public:
  size_t Add(size_t bytes) {
    const size_t offset = size_;
    size_ += (bytes + 255) / 256 * 256;
    return offset;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

// One device: one stream and a grow-only scratch area, both used under `mu_` so that calls
// serialise (the device runs one kernel of ours at a time anyway).
class CudaAttentionBackend final : public AttentionBackend {
 public:
  explicit CudaAttentionBackend(int device, cuda::Stream stream)
      : device_(device), stream_(stream) {}
  ~CudaAttentionBackend() override {
    (void)cuda::SetDevice(device_);
    if (scratch_ != nullptr) (void)cuda::Free(scratch_);
    (void)cuda::StreamDestroy(stream_);
  }

  std::string name() const override { return "cuda:" + std::to_string(device_); }
  bool IsCompiled(DType dtype, int head_dim) const override {
    return cuda::IsCompiled(dtype, head_dim);
  }

  int cuda_device() const override { return device_; }

  absl::Status RunFixed(const FixedAttentionArgs& host, const OnDevice& on_device) override {
    const size_t elem = DTypeSize(host.dtype);
    const size_t q_bytes =
        size_t(host.batch) * host.seqlen_q * host.num_heads_q * host.head_dim * elem;
    const size_t kv_bytes =
        size_t(host.batch) * host.seqlen_kv * host.num_heads_kv * host.head_dim * elem;
    const size_t lse_bytes =
        host.lse ? size_t(host.batch) * host.num_heads_q * host.seqlen_q * sizeof(float) : 0;
    ScratchLayout layout;
    const TensorSlots slots = AddTensors(on_device, q_bytes, kv_bytes, lse_bytes, &layout);

    MutexLock lock(&mu_);
    if (auto s = Prepare(layout.size()); !s.ok()) return s;
    FixedAttentionArgs dev = host;
    PlaceTensors(host, on_device, slots, &dev);
    if (auto s = Upload(
            {{host.q, dev.q, q_bytes}, {host.k, dev.k, kv_bytes}, {host.v, dev.v, kv_bytes}});
        !s.ok()) {
      return s;
    }
    if (auto s = FromKernelStatus(cuda::Attention(dev, stream_)); !s.ok()) return s;
    return Download({{dev.out, host.out, q_bytes}, {dev.lse, host.lse, lse_bytes}});
  }

  absl::Status RunVarlen(const VarlenAttentionArgs& host, const OnDevice& on_device) override {
    const size_t elem = DTypeSize(host.dtype);
    const size_t q_bytes = size_t(host.total_q) * host.num_heads_q * host.head_dim * elem;
    const size_t kv_bytes = size_t(host.total_kv) * host.num_heads_kv * host.head_dim * elem;
    const size_t lse_bytes = host.lse ? size_t(host.num_heads_q) * host.total_q * sizeof(float) : 0;
    const size_t cu_bytes = size_t(host.num_seqs + 1) * sizeof(int32_t);
    ScratchLayout layout;
    const TensorSlots slots = AddTensors(on_device, q_bytes, kv_bytes, lse_bytes, &layout);
    const size_t cu_q = layout.Add(cu_bytes), cu_kv = layout.Add(cu_bytes);

    MutexLock lock(&mu_);
    if (auto s = Prepare(layout.size()); !s.ok()) return s;
    VarlenAttentionArgs dev = host;
    PlaceTensors(host, on_device, slots, &dev);
    dev.cu_seqlens_q = static_cast<const int32_t*>(At(cu_q));
    dev.cu_seqlens_kv = static_cast<const int32_t*>(At(cu_kv));
    // The kernels validate indices through the host copies before launching.
    dev.host_cu_seqlens_q = host.cu_seqlens_q;
    dev.host_cu_seqlens_kv = host.cu_seqlens_kv;
    if (auto s = Upload({{host.q, dev.q, q_bytes},
                         {host.k, dev.k, kv_bytes},
                         {host.v, dev.v, kv_bytes},
                         {host.cu_seqlens_q, dev.cu_seqlens_q, cu_bytes},
                         {host.cu_seqlens_kv, dev.cu_seqlens_kv, cu_bytes}});
        !s.ok()) {
      return s;
    }
    if (auto s = FromKernelStatus(cuda::AttentionVarlen(dev, stream_)); !s.ok()) return s;
    return Download({{dev.out, host.out, q_bytes}, {dev.lse, host.lse, lse_bytes}});
  }

 private:
  struct Copy {
    const void* src;
    const void* dst;
    size_t bytes;
  };

  void* At(size_t offset) const { return static_cast<uint8_t*>(scratch_) + offset; }

  // Scratch offsets of a call's q, k, v, out and lse.
  struct TensorSlots {
    size_t q, k, v, out, lse;
  };

  // Scratch only for the tensors not already on the device (in CUDA regions).
  static TensorSlots AddTensors(const OnDevice& on_device, size_t q_bytes, size_t kv_bytes,
                                size_t lse_bytes, ScratchLayout* layout) {
    TensorSlots slots;
    slots.q = layout->Add(on_device.q ? 0 : q_bytes);
    slots.k = layout->Add(on_device.k ? 0 : kv_bytes);
    slots.v = layout->Add(on_device.v ? 0 : kv_bytes);
    slots.out = layout->Add(on_device.out ? 0 : q_bytes);
    slots.lse = layout->Add(on_device.lse ? 0 : lse_bytes);
    return slots;
  }

  // Points `dev`'s tensors at their scratch slots, except those already on the device (CUDA
  // regions), which are used where they are: no copy either way (Upload and Download skip them).
  template <typename Args>
  void PlaceTensors(const Args& host, const OnDevice& on_device, const TensorSlots& slots,
                    Args* dev) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    dev->q = on_device.q ? host.q : At(slots.q);
    dev->k = on_device.k ? host.k : At(slots.k);
    dev->v = on_device.v ? host.v : At(slots.v);
    dev->out = on_device.out ? host.out : At(slots.out);
    dev->lse = !host.lse || on_device.lse ? host.lse : static_cast<float*>(At(slots.lse));
  }

  absl::Status Prepare(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (auto s = FromKernelStatus(cuda::SetDevice(device_)); !s.ok()) return s;
    if (bytes <= capacity_) return absl::OkStatus();
    if (scratch_ != nullptr) {
      if (auto s = FromKernelStatus(cuda::Free(scratch_)); !s.ok()) return s;
      scratch_ = nullptr;
      capacity_ = 0;
    }
    if (auto s = FromKernelStatus(cuda::Malloc(&scratch_, bytes)); !s.ok()) {
      return absl::ResourceExhaustedError(
          "device scratch of " + std::to_string(bytes) +
          " bytes for a stateless attention call: " + std::string(s.message()));
    }
    capacity_ = bytes;
    return absl::OkStatus();
  }

  // Copies skip tensors used in place (source and destination the same device memory).
  absl::Status Upload(std::initializer_list<Copy> copies) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const Copy& c : copies) {
      if (c.bytes == 0 || c.src == c.dst) continue;
      if (auto s = FromKernelStatus(
              cuda::MemcpyHostToDevice(const_cast<void*>(c.dst), c.src, c.bytes, stream_));
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  // Ends with a synchronisation whether anything was copied or not: when a call returns, its
  // outputs are in place (in CUDA regions too) and its inputs no longer read.
  absl::Status Download(std::initializer_list<Copy> copies) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const Copy& c : copies) {
      if (c.bytes == 0 || c.src == c.dst) continue;
      if (auto s = FromKernelStatus(
              cuda::MemcpyDeviceToHost(const_cast<void*>(c.dst), c.src, c.bytes, stream_));
          !s.ok()) {
        return s;
      }
    }
    return FromKernelStatus(cuda::StreamSynchronize(stream_));
  }

  const int device_;
  const cuda::Stream stream_;
  Mutex mu_;
  void* scratch_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::unique_ptr<AttentionBackend> NewCpuAttentionBackend() {
  return std::make_unique<CpuAttentionBackend>();
}

absl::StatusOr<std::unique_ptr<AttentionBackend>> NewCudaAttentionBackend(int device) {
  if (auto s = FromKernelStatus(cuda::CheckDevice(device)); !s.ok()) return s;
  if (auto s = FromKernelStatus(cuda::SetDevice(device)); !s.ok()) return s;
  cuda::Stream stream = nullptr;
  if (auto s = FromKernelStatus(cuda::StreamCreate(&stream)); !s.ok()) return s;
  return std::unique_ptr<AttentionBackend>(new CudaAttentionBackend(device, stream));
}

}  // namespace flashkv::server

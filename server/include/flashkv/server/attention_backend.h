#pragma once

// Where the stateless Attention and AttentionVarlen RPCs compute: the CPU kernels, or one CUDA
// device (host inputs copied to device scratch memory, outputs copied back). Arguments point to
// host memory, except the tensors `on_device` names: device memory of the backend's own device
// (CUDA IPC regions of the data plane), which the CUDA kernels read and write in place. Run*
// return once the outputs are in place and the inputs are no longer read (the CUDA backend
// synchronises its stream).
//
// Thread-safety: Run* may be called concurrently; the CUDA backend serialises calls on its device
// (one stream, one scratch area), the CPU kernels share their own worker pool.

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/attention.h"

namespace flashkv::server {

// Which of a call's tensors are device memory (of the backend's device); the rest are host memory.
struct OnDevice {
  bool q = false, k = false, v = false, out = false, lse = false;
  bool any() const { return q || k || v || out || lse; }
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;

  // "cpu" or "cuda:<ordinal>".
  virtual std::string name() const = 0;
  // The CUDA ordinal it computes on; kCpuCompute (-1) for the CPU backend.
  virtual int cuda_device() const = 0;
  virtual bool IsCompiled(DType dtype, int head_dim) const = 0;
  // FAILED_PRECONDITION when `on_device` names a tensor and the backend is the CPU's.
  virtual absl::Status RunFixed(const FixedAttentionArgs& args, const OnDevice& on_device) = 0;
  virtual absl::Status RunVarlen(const VarlenAttentionArgs& args, const OnDevice& on_device) = 0;
};

std::unique_ptr<AttentionBackend> NewCpuAttentionBackend();
// FAILED_PRECONDITION/UNAVAILABLE when the device is missing, too old, or CUDA is not built.
absl::StatusOr<std::unique_ptr<AttentionBackend>> NewCudaAttentionBackend(int device);

}  // namespace flashkv::server

#pragma once

// Where the stateless Attention and AttentionVarlen RPCs compute: the CPU kernels, or one CUDA
// device (inputs copied to device scratch memory, outputs copied back). Arguments always point to
// host memory; Run* return once the outputs are in place.
//
// Thread-safety: Run* may be called concurrently; the CUDA backend serialises calls on its device
// (one stream, one scratch area), the CPU kernels share their own worker pool.

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/attention.h"

namespace flashkv::server {

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;

  // "cpu" or "cuda:<ordinal>".
  virtual std::string name() const = 0;
  virtual bool IsCompiled(DType dtype, int head_dim) const = 0;
  virtual absl::Status RunFixed(const FixedAttentionArgs& host_args) = 0;
  virtual absl::Status RunVarlen(const VarlenAttentionArgs& host_args) = 0;
};

std::unique_ptr<AttentionBackend> NewCpuAttentionBackend();
// FAILED_PRECONDITION/UNAVAILABLE when the device is missing, too old, or CUDA is not built.
absl::StatusOr<std::unique_ptr<AttentionBackend>> NewCudaAttentionBackend(int device);

}  // namespace flashkv::server

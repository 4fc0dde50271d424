#pragma once

// The plain SIMT kernel behind the same arguments as the public calls, for GPU tests that compare
// the tensor-core path against it at sizes where a float64 CPU reference is too slow (32k
// contexts, batch-256 decode). Not part of the public API.

#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::cuda::testing {

KernelStatus AttentionSimtReference(const FixedAttentionArgs& args, Stream stream);
KernelStatus AttentionPagedSimtReference(const PagedAttentionArgs& args, Stream stream);

}  // namespace flashkv::cuda::testing

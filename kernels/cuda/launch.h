#pragma once

// The per-instantiation launch entry points, declared for the dispatch site (attention.cc) and
// defined in the generated translation units (one per dtype x head dim x K/V layout, see
// CMakeLists.txt), which include attention_launch.cuh.

#include <cstdint>

#include "attention_params.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/dtype.h"
#include "flashkv/kernel_status.h"

namespace flashkv::cuda {

// Host-side facts the launch heuristics use (the kernels read only AttentionParams).
struct LaunchInfo {
  const int32_t* host_cu_seqlens_q = nullptr;  // varlen and paged: [num_seqs + 1]
  const int32_t* host_cu_seqlens_kv = nullptr;
  // Every pointer and non-unit stride of q, k, v and out allows 16-byte vector access. When false,
  // 16-bit inputs take the SIMT kernel (cp.async cannot load them).
  bool aligned16 = true;
  // Test hook: force the SIMT kernel (the plain reference) for any dtype.
  bool force_simt = false;
  // Paged: blocks in each K/V pool (the extent of the sm90 kernel's pool tensor maps).
  int num_blocks = 0;
};

template <DType kDType, int kHeadDim, bool kPaged>
KernelStatus LaunchAttention(const AttentionParams& params, const LaunchInfo& info, Stream stream);

}  // namespace flashkv::cuda

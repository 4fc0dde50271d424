#pragma once

// The sm90 launch entry points, declared for the dispatch site (attention.cc) and defined in the
// generated sm90 translation units (one per dtype x head dim x K/V layout, compiled for compute_90a
// only; see kernels/cuda/CMakeLists.txt), which include sm90/launch.cuh.

#include "attention_params.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/dtype.h"
#include "flashkv/kernel_status.h"
#include "launch.h"

namespace flashkv::cuda {

// Fixed-length or varlen (params.cu_seqlens_q != nullptr), causal or not; kPaged: varlen queries
// over K/V page pools (FLASHKV_ENABLE_SM90_PAGED). The caller has chosen the sm90 path
// (kernel_path.h): 16-byte aligned, strides the TMA can describe, pages a multiple of the box.
template <DType kDType, int kHeadDim, bool kPaged>
KernelStatus LaunchAttentionSm90(const AttentionParams& params, const LaunchInfo& info,
                                 Stream stream);

}  // namespace flashkv::cuda

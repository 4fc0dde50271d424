#pragma once

// Launch logic of the attention kernels for one (dtype, head dim, K/V layout): picks the kernel
// (sm80 tensor cores, or SIMT for fp32 and unaligned 16-bit tensors), the GQA packing, the grid
// and the split-KV count, and runs the combine kernel after a split launch.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "attention_params.h"
#include "cuda_status.h"
#include "device_state.h"
#include "element.cuh"
#include "launch.h"
#include "simt/attention_kernel.cuh"
#include "sm80/attention_kernel.cuh"
#include "split_heuristic.h"
#include "split_kv_combine.cuh"

namespace flashkv::cuda {
namespace launch_detail {

// Grids hold at most 65535 sequences in z: longer batches launch in chunks.
constexpr int kMaxGridZ = 65535;

template <class Kernel>
KernelStatus LaunchChunked(Kernel kernel, AttentionParams p, dim3 grid, int threads, int smem,
                           cudaStream_t stream) {
  for (int first = 0; first < p.num_seqs; first += kMaxGridZ) {
    p.seq_offset = first;
    grid.z = static_cast<unsigned>(std::min(kMaxGridZ, p.num_seqs - first));
    kernel<<<grid, threads, smem, stream>>>(p);
    FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
  return KernelStatus::Ok();
}

template <typename Element, int kHeadDim, bool kPaged, bool kCausal>
KernelStatus LaunchSimt(AttentionParams p, const DeviceProps& props, cudaStream_t stream) {
  p.pack = 1;
  p.num_splits = 1;
  const auto kernel = simt::AttentionKernel<Element, kHeadDim, kCausal, kPaged>;
  const int smem = simt::SmemBytes<kHeadDim>();
  int ctas_per_sm = 0;
  FLASHKV_RETURN_IF_ERROR(PrepareKernel(reinterpret_cast<const void*>(kernel), simt::kThreads, smem,
                                        props, &ctas_per_sm));
  const dim3 grid((p.max_seqlen_q + simt::kBlockM - 1) / simt::kBlockM, p.num_heads_q, 1);
  if (grid.y > 65535) return InvalidArgument("num_heads_q exceeds 65535 (CUDA grid limit)");
  return LaunchChunked(kernel, p, grid, simt::kThreads, smem, stream);
}

// Query tiles that hold work (the split heuristic counts CTAs that do something).
template <int kBlockM>
int64_t CountQueryTiles(const AttentionParams& p, const LaunchInfo& info) {
  if (info.host_cu_seqlens_q == nullptr) {
    return static_cast<int64_t>(p.num_seqs) *
           ((static_cast<int64_t>(p.seqlen_q) * p.pack + kBlockM - 1) / kBlockM);
  }
  int64_t tiles = 0;
  for (int b = 0; b < p.num_seqs; ++b) {
    const int64_t rows =
        static_cast<int64_t>(info.host_cu_seqlens_q[b + 1] - info.host_cu_seqlens_q[b]) * p.pack;
    tiles += (rows + kBlockM - 1) / kBlockM;
  }
  return tiles;
}

template <typename Element, int kHeadDim, class Kernel>
KernelStatus LaunchSplitAndCombine(Kernel split, const AttentionParams& p, dim3 grid,
                                   cudaStream_t stream) {
  using Tr = sm80::Traits<Element, kHeadDim>;
  FLASHKV_RETURN_IF_ERROR(LaunchChunked(split, p, grid, Tr::kThreads, Tr::kSmemBytes, stream));
  const int64_t rows = p.total_q * p.num_heads_q;
  SplitKvCombineKernel<Element, kHeadDim><<<static_cast<unsigned>((rows + 3) / 4), 128, 0, stream>>>(p);
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return KernelStatus::Ok();
}

template <typename Element, int kHeadDim, bool kPaged, bool kCausal>
KernelStatus LaunchSm80(AttentionParams p, const LaunchInfo& info, const DeviceProps& props,
                        cudaStream_t stream) {
  using Tr = sm80::Traits<Element, kHeadDim>;
  // GQA packing: always the whole group. A tile then covers kBlockM / group tokens of `group`
  // heads that share one K/V head, so each K/V tile is read once per KV head instead of once per
  // query head; for long queries the work per K/V byte is the same either way, and for decodes
  // (group rows per token) it is what makes the narrow path possible.
  p.pack = p.group;
  if (static_cast<int64_t>(p.max_seqlen_q) * p.pack > std::numeric_limits<int>::max() / 2) {
    return InvalidArgument("max_seqlen_q (" + std::to_string(p.max_seqlen_q) + ") x GQA group (" +
                           std::to_string(p.group) + ") exceeds the kernel's row index range");
  }
  const int64_t head_groups = p.num_heads_q / p.pack;
  const int m_blocks = static_cast<int>(
      (static_cast<int64_t>(p.max_seqlen_q) * p.pack + Tr::kBlockM - 1) / Tr::kBlockM);

  const auto plain = sm80::AttentionKernel<Tr, kCausal, kPaged, false>;
  int ctas_per_sm = 0;
  FLASHKV_RETURN_IF_ERROR(PrepareKernel(reinterpret_cast<const void*>(plain), Tr::kThreads,
                                        Tr::kSmemBytes, props, &ctas_per_sm));
  SplitProblem problem;
  problem.ctas = CountQueryTiles<Tr::kBlockM>(p, info) * head_groups;
  problem.slots = props.multiprocessors * ctas_per_sm;
  problem.key_tiles = (p.max_seqlen_kv + Tr::kBlockN - 1) / Tr::kBlockN;
  p.num_splits = ChooseNumSplits(problem);
  if (head_groups * p.num_splits > 65535) {
    return InvalidArgument("num_heads_kv exceeds 65535 (CUDA grid limit)");
  }
  const dim3 grid(m_blocks, static_cast<unsigned>(head_groups * p.num_splits), 1);
  if (p.num_splits == 1) return LaunchChunked(plain, p, grid, Tr::kThreads, Tr::kSmemBytes, stream);

  const auto split = sm80::AttentionKernel<Tr, kCausal, kPaged, true>;
  FLASHKV_RETURN_IF_ERROR(PrepareKernel(reinterpret_cast<const void*>(split), Tr::kThreads,
                                        Tr::kSmemBytes, props, &ctas_per_sm));
  const int64_t rows = p.total_q * p.num_heads_q;
  const size_t lse_bytes = static_cast<size_t>(p.num_splits) * rows * sizeof(float);
  const size_t o_bytes = lse_bytes * kHeadDim;
  void* workspace = nullptr;
  FLASHKV_RETURN_IF_ERROR(WorkspaceAllocate(o_bytes + lse_bytes, stream, &workspace));
  p.o_partial = static_cast<float*>(workspace);
  p.lse_partial = reinterpret_cast<float*>(static_cast<char*>(workspace) + o_bytes);
  const KernelStatus status = LaunchSplitAndCombine<Element, kHeadDim>(split, p, grid, stream);
  // Freed in stream order even after a failed launch, so the pool gets the memory back.
  const KernelStatus freed = WorkspaceFree(workspace, stream);
  return status.ok() ? freed : status;
}

template <typename Element, int kHeadDim, bool kPaged, bool kCausal>
KernelStatus Launch(const AttentionParams& p, const LaunchInfo& info, cudaStream_t stream) {
  DeviceProps props;
  FLASHKV_RETURN_IF_ERROR(CurrentDevice(&props));
  if (p.num_seqs == 0 || p.max_seqlen_q == 0) return KernelStatus::Ok();
  if constexpr (std::is_same_v<Element, float>) {
    return LaunchSimt<Element, kHeadDim, kPaged, kCausal>(p, props, stream);
  } else {
    if (!info.aligned16 || info.force_simt) {
      return LaunchSimt<Element, kHeadDim, kPaged, kCausal>(p, props, stream);
    }
    return LaunchSm80<Element, kHeadDim, kPaged, kCausal>(p, info, props, stream);
  }
}

}  // namespace launch_detail

template <DType kDType, int kHeadDim, bool kPaged>
KernelStatus LaunchAttention(const AttentionParams& params, const LaunchInfo& info, Stream stream) {
  using Element = typename DeviceElement<kDType>::Type;
  if (params.causal) {
    return launch_detail::Launch<Element, kHeadDim, kPaged, true>(params, info, stream);
  }
  return launch_detail::Launch<Element, kHeadDim, kPaged, false>(params, info, stream);
}

}  // namespace flashkv::cuda

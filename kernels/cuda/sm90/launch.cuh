#pragma once

// Launch of the sm90 kernel for one (dtype, head dim, K/V layout): schedule and tensor maps
// (host_setup.h), the shared-memory opt-in, and a persistent grid of one CTA per SM (or fewer, when
// there are fewer tiles).

#include <algorithm>

#include "cuda_status.h"
#include "device_state.h"
#include "element.cuh"
#include "sm90/attention_kernel.cuh"
#include "sm90/entry_points.h"
#include "sm90/host_setup.h"
#include "sm90/traits.cuh"

namespace flashkv::cuda {
namespace sm90 {

// The persistent grid of a kernel over a schedule: one CTA per resident slot, or fewer when
// there are fewer tiles (also opts the kernel into its shared memory).
template <class Tr, bool kCausal, bool kVarlen, bool kDynamic = false, bool kLazyRescale = false,
          bool kStreamK = false>
KernelStatus PersistentGrid(const Schedule& schedule, const DeviceProps& props, int* grid) {
  const auto kernel = AttentionKernel<Tr, kCausal, kVarlen, kDynamic, kLazyRescale, kStreamK>;
  int ctas_per_sm = 0;
  FLASHKV_RETURN_IF_ERROR(PrepareKernel(reinterpret_cast<const void*>(kernel), Tr::kThreads,
                                        Tr::kSmemBytes, props, &ctas_per_sm));
  *grid = std::min(schedule.num_tiles, props.multiprocessors * ctas_per_sm);
  return KernelStatus::Ok();
}

template <class Tr, bool kCausal, bool kVarlen, bool kDynamic = false, bool kLazyRescale = false,
          bool kStreamK = false>
KernelStatus Run(const Sm90Params& params, const DeviceProps& props, cudaStream_t stream) {
  int grid = 0;
  FLASHKV_RETURN_IF_ERROR((PersistentGrid<Tr, kCausal, kVarlen, kDynamic, kLazyRescale, kStreamK>(
      params.schedule, props, &grid)));
  AttentionKernel<Tr, kCausal, kVarlen, kDynamic, kLazyRescale, kStreamK>
      <<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return KernelStatus::Ok();
}

// Runs `run(workspace)` with `bytes` of the stream-ordered workspace (so concurrent streams and
// graph replays each get their own), bytes [zero_from, bytes) zeroed on the stream first, and
// frees it on the stream after. `what` names the zeroed part in a memset error.
template <class RunFn>
KernelStatus WithZeroedWorkspace(size_t bytes, size_t zero_from, cudaStream_t stream,
                                 const char* what, RunFn run) {
  void* workspace = nullptr;
  FLASHKV_RETURN_IF_ERROR(WorkspaceAllocate(bytes, stream, &workspace));
  char* base = static_cast<char*>(workspace);
  const cudaError_t zeroed = cudaMemsetAsync(base + zero_from, 0, bytes - zero_from, stream);
  const KernelStatus status = zeroed == cudaSuccess ? run(base) : FromCudaError(zeroed, what);
  const KernelStatus freed = WorkspaceFree(workspace, stream);
  return status.ok() ? freed : status;
}

// Causal launches on the dynamic schedule (UseDynamicSchedule): the tile counter comes from the
// workspace, zeroed before the kernel.
template <class Tr, bool kVarlen, bool kLazyRescale = false>
KernelStatus RunDynamic(Sm90Params& params, const DeviceProps& props, cudaStream_t stream) {
  return WithZeroedWorkspace(
      sizeof(int), 0, stream, "cudaMemsetAsync(tile counter)", [&](char* workspace) {
        params.tile_counter = reinterpret_cast<int*>(workspace);
        return Run<Tr, /*kCausal=*/true, kVarlen, /*kDynamic=*/true, kLazyRescale>(params, props,
                                                                                   stream);
      });
}

// Fixed-length launches without a causal mask under Sm90Variant::kStreamK: the stream-K tail
// (PlanStreamK) where the tiles are not a whole number of rounds of the grid, with its partials
// and arrival counters in the stream-ordered workspace (counters zeroed on the stream first);
// else the static schedule. The tail needs O's own buffer: a CTA that leaves a shared tile to the
// other side skips the epilogue, which is where Q's space is released when O is staged there.
template <class Tr>
KernelStatus RunStreamK(Sm90Params& sp, const DeviceProps& props, cudaStream_t stream) {
  static_assert(!Tr::kPaged && Tr::kSeparateO, "the stream-K tail: contiguous, O's own buffer");
  constexpr auto kRun = Run<Tr, false, false, false, false, /*kStreamK=*/true>;
  int grid = 0;  // the grid kRun launches: the plan divides the tail among exactly these CTAs
  FLASHKV_RETURN_IF_ERROR(
      (PersistentGrid<Tr, false, false, false, false, true>(sp.schedule, props, &grid)));
  const int key_tiles = (sp.p.seqlen_kv + Tr::kBlockN - 1) / Tr::kBlockN;
  if (!PlanStreamK(&sp.schedule, grid, key_tiles)) return Run<Tr, false, false>(sp, props, stream);
  // One slot per CTA boundary (grid + 1), two sides, one partial per consumer warpgroup.
  const size_t slots = static_cast<size_t>(grid + 1) * Tr::kConsumerWarpgroups;
  const size_t partial_bytes = slots * 2 * (Tr::kORegs + 4) * 128 * sizeof(float);
  const size_t arrival_bytes = slots * sizeof(int);
  return WithZeroedWorkspace(partial_bytes + arrival_bytes, partial_bytes, stream,
                             "cudaMemsetAsync(stream-K arrivals)", [&](char* workspace) {
                               sp.sk_partials = reinterpret_cast<float*>(workspace);
                               sp.sk_arrivals = reinterpret_cast<int*>(workspace + partial_bytes);
                               return kRun(sp, props, stream);
                             });
}

// The kernel of a launch by its layout, mask and schedule. The dynamic kernels with the lazy
// rescale exist at kLazyRescaleHeadDim only, where kAuto takes both (elsewhere only
// Sm90Variant::kLazyRescale takes the lazy rescale, on the static schedule, so that its A/B
// against kBaseline isolates the rescale). Paged launches take the dynamic schedule as contiguous
// ones do: without it, paged causal prefill fell 7-14% behind contiguous at head dims 64 and 256
// (H100, S 4096-8192), the counter's gain on the contiguous side.
template <class Tr, bool kLazyRescale>
KernelStatus RunVariant(Sm90Params& sp, const DeviceProps& props, cudaStream_t stream) {
  constexpr bool kHasDynamic = !kLazyRescale || Tr::kHeadDim == kLazyRescaleHeadDim;
  if constexpr (Tr::kPaged) {  // queries are always packed (varlen)
    if constexpr (kHasDynamic) {
      if (UseDynamicSchedule(sp.p.causal, sp.schedule.num_tiles, props.multiprocessors)) {
        return RunDynamic<Tr, true, kLazyRescale>(sp, props, stream);
      }
    }
    return sp.p.causal ? Run<Tr, true, true, false, kLazyRescale>(sp, props, stream)
                       : Run<Tr, false, true, false, kLazyRescale>(sp, props, stream);
  } else {
    const bool varlen = sp.p.cu_seqlens_q != nullptr;
    if constexpr (kHasDynamic) {
      if (UseDynamicSchedule(sp.p.causal, sp.schedule.num_tiles, props.multiprocessors)) {
        return varlen ? RunDynamic<Tr, true, kLazyRescale>(sp, props, stream)
                      : RunDynamic<Tr, false, kLazyRescale>(sp, props, stream);
      }
    }
    if (sp.p.causal) {
      return varlen ? Run<Tr, true, true, false, kLazyRescale>(sp, props, stream)
                    : Run<Tr, true, false, false, kLazyRescale>(sp, props, stream);
    }
    return varlen ? Run<Tr, false, true, false, kLazyRescale>(sp, props, stream)
                  : Run<Tr, false, false, false, kLazyRescale>(sp, props, stream);
  }
}

// RunVariant with the O rescale the active variant takes at this head dim (UseLazyRescale).
template <class Tr>
KernelStatus RunRescaleVariant(Sm90Params& sp, const DeviceProps& props, cudaStream_t stream) {
  return UseLazyRescale(Tr::kHeadDim) ? RunVariant<Tr, true>(sp, props, stream)
                                      : RunVariant<Tr, false>(sp, props, stream);
}

// Contiguous launches without a causal mask (ChooseTileKind takes the wide key tiles for those
// alone), so that the wide tiles' kernels are instantiated without the causal ones.
template <class Tr>
KernelStatus RunWithoutMask(Sm90Params& sp, const DeviceProps& props, cudaStream_t stream) {
  static_assert(!Tr::kPaged, "the wide key tiles are contiguous-only");
  if (sp.p.causal) return InvalidArgument("sm90: a causal launch reached a wide-key kernel");
  return sp.p.cu_seqlens_q != nullptr ? Run<Tr, false, true>(sp, props, stream)
                                      : Run<Tr, false, false>(sp, props, stream);
}

}  // namespace sm90

template <DType kDType, int kHeadDim, bool kPaged>
KernelStatus LaunchAttentionSm90(const AttentionParams& params, const LaunchInfo& info,
                                 Stream stream) {
  using Element = typename DeviceElement<kDType>::Type;
  using Tr = sm90::Traits<Element, kHeadDim, kPaged>;
  DeviceProps props;
  FLASHKV_RETURN_IF_ERROR(CurrentDevice(&props));
  // Built per call (about 5 KB with the varlen order table): launches may come from several
  // threads at once, and the kernel copies it at launch.
  sm90::Sm90Params sp;
  sp.p = params;
  sp.p.pack = 1;  // one query head per tile (GQA only maps heads to K/V heads)
  sp.p.num_splits = 1;
  // Read once: the schedule, the TMA boxes and the kernel must agree on the tile shape.
  const bool varlen = sp.p.cu_seqlens_q != nullptr;
  const sm90::TileKind kind = sm90::ChooseTileKind(
      kHeadDim, kPaged, varlen, sp.p.causal, varlen ? sp.p.max_seqlen_q : sp.p.seqlen_q,
      varlen ? sp.p.max_seqlen_kv : sp.p.seqlen_kv, kPaged ? sp.p.page_size : 0);
  FLASHKV_RETURN_IF_ERROR(
      sm90::BuildSchedule(sp.p, info, kHeadDim, sizeof(Element), props, &sp.schedule, kind));
  if (sp.schedule.num_tiles == 0) return KernelStatus::Ok();
  FLASHKV_RETURN_IF_ERROR(sm90::EncodeTensorMaps(sp.p, info, kDType, &sp, kind));
  const bool stream_k =
      !kPaged && !sp.p.causal && !varlen && sm90::UseStreamK(kind, sp.p.seqlen_kv);
  if constexpr (sm90::HasThreeConsumerShape(kHeadDim, kPaged)) {
    if (kind == sm90::TileKind::kThreeConsumers) {
      using Three = sm90::Traits<Element, kHeadDim, kPaged, sm90::TileKind::kThreeConsumers>;
      if constexpr (!kPaged) {
        if (stream_k) return sm90::RunStreamK<Three>(sp, props, stream);
      }
      return sm90::RunVariant<Three, false>(sp, props, stream);
    }
  }
  if constexpr (sm90::HasWideKeyShape(kHeadDim, kPaged)) {
    if (kind == sm90::TileKind::kKeys160) {
      using Keys160 = sm90::Traits<Element, kHeadDim, kPaged, sm90::TileKind::kKeys160>;
      return stream_k ? sm90::RunStreamK<Keys160>(sp, props, stream)
                      : sm90::RunWithoutMask<Keys160>(sp, props, stream);
    }
    if (kind == sm90::TileKind::kKeys176) {
      using Keys176 = sm90::Traits<Element, kHeadDim, kPaged, sm90::TileKind::kKeys176>;
      return sm90::RunWithoutMask<Keys176>(sp, props, stream);
    }
  }
  if constexpr (sm90::HasPagedKeys80Shape(kHeadDim, kPaged)) {
    if (kind == sm90::TileKind::kPagedKeys80) {
      using Keys80 = sm90::Traits<Element, kHeadDim, kPaged, sm90::TileKind::kPagedKeys80>;
      return sm90::RunRescaleVariant<Keys80>(sp, props, stream);
    }
  }
  if constexpr (sm90::HasPagedKStages3Shape(kHeadDim, kPaged)) {
    if (kind == sm90::TileKind::kPagedKStages3) {
      using KStages3 = sm90::Traits<Element, kHeadDim, kPaged, sm90::TileKind::kPagedKStages3>;
      return sm90::RunRescaleVariant<KStages3>(sp, props, stream);
    }
  }
  if constexpr (!kPaged && Tr::kSeparateO) {
    if (stream_k) return sm90::RunStreamK<Tr>(sp, props, stream);
  }
  return sm90::RunRescaleVariant<Tr>(sp, props, stream);
}

}  // namespace flashkv::cuda

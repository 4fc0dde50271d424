#pragma once

// The sm90 (Hopper, sm_90a) flash-attention forward kernel for fp16/bf16, fixed-length and
// varlen, float32 accumulation. Persistent: each CTA walks tiles blockIdx.x, +gridDim.x, ... of
// the schedule (sm90/params.h); a tile is 128 query rows of one (sequence, head).
//
// Warp specialisation (384 threads, one CTA per SM; 512 with three consumers):
//   warpgroup 0: producer. setmaxnreg lowers it to 24 registers (32 with three consumers); one
//     thread issues every TMA load (sm90/producer.cuh), the other warps leave.
//   warpgroups 1, 2 (and 3 under Sm90Variant::kThreeConsumers): consumers. setmaxnreg raises
//     them to 240 registers (160 with three); each owns 64 rows of the tile
//     (sm90/consumer_mainloop.cuh, sm90/epilogue.cuh).
// Policies (template flags): kCausal (bottom-right mask, key tiles past the diagonal skipped),
// kVarlen (3-d tensor maps over packed rows, the longest-first sequence order, plain stores for
// the rows of a tile that end inside a sequence), Traits::kPaged (varlen queries, K/V from
// page pools: sm90/producer.cuh), and the variants' kDynamic (tile_scheduler.cuh) and
// kLazyRescale (consumer_mainloop.cuh). GQA maps query head h to K/V head h / group.

#include <cstdint>

#include "sm90/consumer_mainloop.cuh"
#include "sm90/epilogue.cuh"
#include "sm90/params.h"
#include "sm90/producer.cuh"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"
#include "sm90/tile_scheduler.cuh"
#include "sm90/traits.cuh"

namespace flashkv::cuda::sm90 {

template <class Tr, bool kCausal, bool kVarlen, bool kDynamic, bool kLazyRescale, bool kStreamK>
__device__ __forceinline__ void Consume(const Sm90Params& params, const Smem<Tr>& smem, int wg) {
  const AttentionParams& p = params.p;
  const int tid = static_cast<int>(threadIdx.x) % 128;
  const int lane = tid % 32;
  const int row_in_group = 16 * (tid / 32) + lane / 4;  // this thread's first row of the 64
  constexpr int kLastGroup = Tr::kConsumerWarpgroups - 1;
  // Warpgroup 0 takes the first turn: the last group, which precedes it in the turn order, hands
  // it over before its first wait.
  if (wg == kLastGroup) NamedBarrierArrive(kTurnBarrier + 0, kTurnThreads);

  ConsumerMainloop<Tr, kLazyRescale> ml;
  KvPipelineState<Tr> pipe;
  WorkItem item;
  for (int local_tile = 0;; ++local_tile) {
    if constexpr (kDynamic) {
      item.tile = ReceiveTile(smem, local_tile, lane);
      if (item.tile >= params.schedule.num_tiles) break;
    } else if (!StaticWorkItem<kStreamK>(params.schedule, local_tile, &item)) {
      break;
    }
    WorkTile w =
        DecodeTile<kVarlen, kCausal, Tr::kBlockM, Tr::kBlockN>(p, params.schedule, item.tile);
    ApplyKeyRange(&w, item);
    ml.Init();
    MbarrierWait(smem.QFull(), static_cast<uint32_t>(local_tile) & 1u);
    if (p.negate_q) NegateQ(smem, wg, tid);
    // Sequence lengths come from memory in varlen launches: broadcast what steers the wgmma
    // loop so that ptxas sees it warp-uniform.
    const int key_tiles = WarpUniform(w.key_tiles);
    const int first_key_tile = WarpUniform(w.key_begin);
    if (key_tiles > first_key_tile) {
      const int first_token = w.row0 + wg * Tr::kRowsPerConsumer;
      const int token = first_token + row_in_group;
      RunKeyTiles(ml, smem, pipe, first_key_tile, key_tiles, wg, KeyLimit<kCausal>(w.seq, token),
                  KeyLimit<kCausal>(w.seq, token + 8),
                  WarpUniform(KeyLimit<kCausal>(w.seq, first_token)),
                  Tr::kPaged ? WarpUniform(w.seq.kv_len) : 0, p.scale_log2, tid);
    }
    if constexpr (Tr::kSeparateO) {
      // A tile without keys read no Q: release it here (RunKeyTiles does after the last S).
      if (key_tiles <= first_key_tile) ReleaseStage(smem.QFree(), lane);
    }
    if constexpr (kStreamK) {
      // A tile shared with another CTA is stored by the second of the two to finish.
      if (w.shared_slot >= 0 && !MergeSharedTile(ml, params, smem, w, wg, tid)) continue;
    }
    StoreTile<Tr, kVarlen>(ml, params, smem, w, wg, tid);
  }
  // Take the last group's last hand-over, so that no arrival is left pending on the barrier.
  if (wg == 0) NamedBarrierSync(kTurnBarrier + 0, kTurnThreads);
  if (tid == 0) TmaStoreWaitAll();  // this group's O stores reach global memory before exit
}

// kDynamic: tiles from the global counter (Sm90Variant::kDynamicSchedule), else static.
// kLazyRescale: the conditional O rescale (Sm90Variant::kLazyRescale). kStreamK: the static
// schedule with a stream-K tail (Sm90Variant::kStreamK; sm90/tile_scheduler.cuh).
template <class Tr, bool kCausal, bool kVarlen, bool kDynamic = false, bool kLazyRescale = false,
          bool kStreamK = false>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    AttentionKernel(const __grid_constant__ Sm90Params params) {
  extern __shared__ __align__(1024) char smem_raw[];
  const Smem<Tr> smem = Smem<Tr>::Locate(smem_raw);
  if (threadIdx.x == 0) smem.InitBarriers();
  __syncthreads();

  const int warpgroup = WarpUniform(static_cast<int>(threadIdx.x) / 128);
  if (warpgroup == 0) {
    SetMaxRegistersDecrease<Tr::kProducerRegisters>();
    if (threadIdx.x == 0) Produce<Tr, kCausal, kVarlen, kDynamic, kStreamK>(params, smem);
  } else {
    SetMaxRegistersIncrease<Tr::kConsumerRegisters>();
    Consume<Tr, kCausal, kVarlen, kDynamic, kLazyRescale, kStreamK>(params, smem, warpgroup - 1);
  }
}

}  // namespace flashkv::cuda::sm90

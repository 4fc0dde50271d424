#pragma once

// The producer of the sm90 kernel: one thread of the producer warpgroup walks the CTA's tiles
// and issues every TMA load. Per tile: K of the first key tile, then Q (once the previous tile's
// O has left Q's space), then V, then K and V of each further key tile, each into the next free
// stage of the ring. Key tiles go from the last to the first, as the consumers expect (masked
// tail and causal-diagonal tiles first). K precedes Q so that the next tile's first K load
// overlaps the current tile's epilogue.

#include <cstdint>

#include "sm90/params.h"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"
#include "sm90/tile_scheduler.cuh"

namespace flashkv::cuda::sm90 {

template <class Tr, bool kVarlen>
struct TmaIssuer {
  const Sm90Params& params;
  const Smem<Tr>& smem;

  // Chunk c of a (rows x 64) box at row `row` of head `head` of sequence `w`: fixed layout maps
  // are [batch, head, row, dim] (4-d), varlen maps [head, packed row, dim] (3-d).
  __device__ __forceinline__ void Load(const CUtensorMap& map, uint32_t dst, uint32_t bar,
                                       const WorkTile& w, int64_t seq_row0, int row, int head,
                                       int c) const {
    if constexpr (kVarlen) {
      TmaLoad3d(dst, &map, bar, 64 * c, static_cast<int>(seq_row0 + row), head);
    } else {
      TmaLoad4d(dst, &map, bar, 64 * c, row, head, w.batch);
    }
  }

  __device__ __forceinline__ void LoadQ(const WorkTile& w, int local_tile) const {
    // Q's space holds the previous tile's O until both consumers have stored it.
    if (local_tile > 0) MbarrierWait(smem.QFree(), static_cast<uint32_t>(local_tile - 1) & 1u);
    MbarrierArriveExpectTx(smem.QFull(), Tr::kQBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c) {
      Load(params.q_map, smem.Q() + c * Tr::kQChunkBytes, smem.QFull(), w, w.seq.token_begin,
           w.row0, w.head, c);
    }
  }

  __device__ __forceinline__ void LoadKv(const CUtensorMap& map, uint32_t tile, uint32_t bar,
                                         const WorkTile& w, int n) const {
    MbarrierArriveExpectTx(bar, Tr::kKvBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c) {
      Load(map, tile + c * Tr::kKvChunkBytes, bar, w, w.seq.kv_begin, n * Tr::kBlockN, w.head_kv,
           c);
    }
  }
};

template <class Tr, bool kCausal, bool kVarlen>
__device__ __forceinline__ void Produce(const Sm90Params& params, const Smem<Tr>& smem) {
  PrefetchTensorMap(&params.q_map);
  PrefetchTensorMap(&params.k_map);
  PrefetchTensorMap(&params.v_map);
  const TmaIssuer<Tr, kVarlen> tma{params, smem};
  PipelineState<Tr::kStages> pipe;
  int local_tile = 0;
  for (int tile = blockIdx.x; tile < params.schedule.num_tiles; tile += gridDim.x, ++local_tile) {
    const WorkTile w =
        DecodeTile<kVarlen, kCausal, Tr::kBlockM, Tr::kBlockN>(params.p, params.schedule, tile);
    for (int i = 0; i < w.key_tiles; ++i, ++pipe.it) {
      const int n = w.key_tiles - 1 - i;
      const int stage = pipe.Stage();
      const uint32_t released = pipe.Phase() ^ 1u;
      MbarrierWait(smem.KEmpty(stage), released);
      tma.LoadKv(params.k_map, smem.K(stage), smem.KFull(stage), w, n);
      if (i == 0) tma.LoadQ(w, local_tile);
      MbarrierWait(smem.VEmpty(stage), released);
      tma.LoadKv(params.v_map, smem.V(stage), smem.VFull(stage), w, n);
    }
    // A tile whose rows see no key still has its Q loaded: the consumers then run the same
    // epilogue (O = 0, LSE = -inf) and the Q barrier phases stay in step.
    if (w.key_tiles == 0) tma.LoadQ(w, local_tile);
  }
}

}  // namespace flashkv::cuda::sm90

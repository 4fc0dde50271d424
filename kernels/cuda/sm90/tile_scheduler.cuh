#pragma once

// Device side of the persistent schedule (sm90/params.h): tile number -> (sequence, head, m-block)
// and the key tiles that tile visits. The producer and both consumer warpgroups evaluate the same
// function on the same tile numbers, so their pipelines stay in step.
//
// Which tile numbers a CTA takes: static, tiles c, c + G, c + 2G, ... (every role computes them
// alone); dynamic (Sm90Variant::kDynamicSchedule), tile c first, then whatever the global counter
// hands out: the producer claims the next tile once it has issued the current one's first K and
// Q loads (the atomic's latency overlaps them; the consumers are then a tile behind, so the claim
// is as late as it can be without the next tile waiting for it) and publishes each tile number to
// the consumers through a two-slot ring in shared memory (sm90/smem.cuh), the number past the
// last tile included, which ends every role's loop.

#include <cstdint>

#include "attention_params.h"
#include "sequence.cuh"
#include "sm90/params.h"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"

namespace flashkv::cuda::sm90 {

struct WorkTile {
  SequenceView seq;
  int batch = 0;      // sequence index
  int head = 0;       // query head
  int head_kv = 0;
  int m_block = 0;
  int row0 = 0;       // first query token of the tile within the sequence
  int key_tiles = 0;  // key tiles [0, key_tiles) hold keys some row of the tile sees
};

template <bool kVarlen>
__device__ __forceinline__ void DecodeTileIndex(const Schedule& s, int num_heads_q, int tile,
                                                bool causal, int* batch, int* head, int* m_block) {
  if constexpr (kVarlen) {
    const int unit = tile / num_heads_q;
    *head = tile - unit * num_heads_q;
    // Last k with unit_start[k] <= unit (unit_start is increasing over non-empty sequences).
    int lo = 0, hi = s.count - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (s.unit_start[mid] <= unit) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int m_idx = unit - s.unit_start[lo];
    const int m_blocks = s.unit_start[lo + 1] - s.unit_start[lo];
    *batch = s.order[lo];
    *m_block = causal ? m_blocks - 1 - m_idx : m_idx;
  } else {
    const int per_section = s.section_heads * s.m_blocks;
    const int section = tile / per_section;
    const int r = tile - section * per_section;
    const int total_heads = s.num_tiles / s.m_blocks;  // batch x heads
    const int heads_here = min(s.section_heads, total_heads - section * s.section_heads);
    const int m_idx = r / heads_here;
    const int bh = section * s.section_heads + (r - m_idx * heads_here);
    *batch = bh / num_heads_q;
    *head = bh - *batch * num_heads_q;
    *m_block = causal ? s.m_blocks - 1 - m_idx : m_idx;
  }
}

template <bool kVarlen, bool kCausal, int kBlockM, int kBlockN>
__device__ __forceinline__ WorkTile DecodeTile(const AttentionParams& p, const Schedule& s,
                                               int tile) {
  WorkTile w;
  DecodeTileIndex<kVarlen>(s, p.num_heads_q, tile, kCausal, &w.batch, &w.head, &w.m_block);
  w.seq = LoadSequence(p, w.batch);
  w.head_kv = w.head / p.group;
  w.row0 = w.m_block * kBlockM;
  // The tile's last valid row sees the most keys (bottom-right causal alignment).
  const int last_token = min(w.seq.q_len, w.row0 + kBlockM) - 1;
  const int limit = KeyLimit<kCausal>(w.seq, last_token);
  w.key_tiles = limit > 0 ? (limit + kBlockN - 1) / kBlockN : 0;
  return w;
}

// Dynamic schedule, producer thread: the CTA's local_tile-th tile number into its ring slot, once
// every consumer warp has read the slot's previous number.
template <class Tr>
__device__ __forceinline__ void PublishTile(const Smem<Tr>& smem, int local_tile, int tile) {
  const int r = local_tile % kTileRingSlots;
  const uint32_t use = static_cast<uint32_t>(local_tile / kTileRingSlots);
  MbarrierWait(smem.TileEmpty(r), (use & 1u) ^ 1u);
  *smem.TileSlot(r) = tile;
  MbarrierArrive(smem.TileFull(r));  // release: the store above is seen by the waiters
}

// Dynamic schedule, producer thread, after issuing the first loads of its local_tile-th tile:
// claims the CTA's next tile and publishes it. The slot it reuses held tile local_tile - 1, which
// both consumers read before freeing Q for this tile (LoadQ waited for that), so the wait does
// not block.
template <class Tr>
__device__ __forceinline__ void ClaimNextTile(const Sm90Params& params, const Smem<Tr>& smem,
                                              int local_tile) {
  PublishTile(smem, local_tile + 1,
              static_cast<int>(gridDim.x) + atomicAdd(params.tile_counter, 1));
}

// Dynamic schedule, every consumer thread: the CTA's local_tile-th tile number.
template <class Tr>
__device__ __forceinline__ int ReceiveTile(const Smem<Tr>& smem, int local_tile, int lane) {
  const int r = local_tile % kTileRingSlots;
  const uint32_t use = static_cast<uint32_t>(local_tile / kTileRingSlots);
  MbarrierWait(smem.TileFull(r), use & 1u);
  const int tile = *smem.TileSlot(r);
  __syncwarp();  // the whole warp has read the slot before its release
  if (lane == 0) MbarrierArrive(smem.TileEmpty(r));
  return WarpUniform(tile);
}

}  // namespace flashkv::cuda::sm90

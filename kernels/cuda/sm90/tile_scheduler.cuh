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
// last tile included, which ends every role's loop. (With several K/V issuers, Traits::kKvIssuers
// > 1, a consumer thread claims and publishes instead, and every issuer reads the ring:
// FollowTile.)
//
// Stream-K tail (Sm90Variant::kStreamK; fixed length, no causal mask, so every tile has the same
// sk_key_tiles key tiles): a static schedule whose tiles are not a whole number of rounds of the
// grid G leaves the last round's SMs idle but for num_tiles % G of them (S 4096, D 128 on an
// H100: 2048 tiles = 15.5 rounds of 132, run as 16). The last full round and the remainder
// (G + num_tiles % G tiles) are instead divided by key tiles: CTA c takes units [c U / G,
// (c + 1) U / G) of their U = tiles x sk_key_tiles, as work items of whole tiles or key ranges
// of one tile. A CTA's share is at least one tile's keys, so a tile holds at most one CTA
// boundary: at most two items, side 1 (from the boundary to its end: the first item of the CTA
// whose share starts there) and side 0 (the last item of the CTA before it), each computing a
// partial O that the later of the two to finish merges (sm90/epilogue.cuh, MergeSharedTile).

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
  // This work item computes key tiles [key_begin, key_tiles): 0 but for a stream-K item.
  int key_begin = 0;
  // Stream-K items that share their tile with another CTA: the boundary's index (the slot of the
  // partials and of the arrival counter) and which side of it this item computes; else -1.
  int shared_slot = -1;
  int side = 0;
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

// One work item of a CTA: a tile number and, under the stream-K tail, a key range of it and
// the shared-tile slot and side (WorkTile's fields of the same names).
struct WorkItem {
  int tile = 0;
  int key_begin = 0;
  int key_end = -1;  // -1: the tile's whole key range
  int shared_slot = -1;
  int side = 0;
};

// Static schedule: the CTA's local-th work item. False past the CTA's last item. Every role
// evaluates it on the same local numbers.
template <bool kStreamK>
__device__ __forceinline__ bool StaticWorkItem(const Schedule& s, int local, WorkItem* item) {
  const int cta = static_cast<int>(blockIdx.x);
  const int grid = static_cast<int>(gridDim.x);
  *item = WorkItem{};
  if (!kStreamK || local < s.dp_tiles / grid) {
    item->tile = cta + local * grid;
    return item->tile < s.num_tiles;
  }
  const int64_t kt = s.sk_key_tiles;
  const int64_t units = (s.num_tiles - s.dp_tiles) * kt;
  const int64_t first = cta * units / grid;
  const int64_t last = (cta + 1) * units / grid;  // exclusive
  const int64_t t = first / kt + (local - s.dp_tiles / grid);
  const int64_t begin = max(first, t * kt);
  if (begin >= last) return false;
  const int64_t end = min(last, (t + 1) * kt);
  item->tile = s.dp_tiles + static_cast<int>(t);
  item->key_begin = static_cast<int>(begin - t * kt);
  item->key_end = static_cast<int>(end - t * kt);
  if (item->key_begin > 0) {  // the first item of this CTA's share: the boundary at its start
    item->shared_slot = cta;
    item->side = 1;
  } else if (item->key_end < kt) {  // the last item of this CTA's share: the boundary at its end
    item->shared_slot = cta + 1;
    item->side = 0;
  }
  return true;
}

// The work item's tile with its key range applied.
__device__ __forceinline__ void ApplyKeyRange(WorkTile* w, const WorkItem& item) {
  if (item.key_end >= 0) {
    w->key_begin = item.key_begin;
    w->key_tiles = item.key_end;
  }
  w->shared_slot = item.shared_slot;
  w->side = item.side;
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

// Dynamic schedule, each K/V issuer where there are several (Traits::kKvIssuers > 1): the CTA's
// local_tile-th tile number, read from the ring as a consumer warp does, by one thread
// (tile_empty counts one arrival per issuer).
template <class Tr>
__device__ __forceinline__ int FollowTile(const Smem<Tr>& smem, int local_tile) {
  const int r = local_tile % kTileRingSlots;
  const uint32_t use = static_cast<uint32_t>(local_tile / kTileRingSlots);
  MbarrierWait(smem.TileFull(r), use & 1u);
  const int tile = static_cast<int>(LoadShared32(smem.TileSlotAddress(r)));
  MbarrierArrive(smem.TileEmpty(r));  // release: the read above precedes the slot's next store
  return tile;
}

}  // namespace flashkv::cuda::sm90

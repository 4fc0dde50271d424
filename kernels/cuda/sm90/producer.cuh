#pragma once

// The producer of the sm90 kernel: one thread of the producer warpgroup walks the CTA's tiles
// and issues every TMA load. Per tile: K of the first key tile, then Q (once the previous tile's
// O has left Q's space), then V, then K and V of each further key tile, each into the next free
// stage of its ring. Key tiles go from the last to the first, as the consumers expect (masked
// tail and causal-diagonal tiles first). K precedes Q so that the next tile's first K load
// overlaps the current tile's epilogue. Where K's ring is deeper than V's (Traits::kKLeadsV), K
// runs one key tile ahead of V instead (LoadKeyTilesKAhead).
//
// Paged K/V (Traits::kPaged): a key tile is block_n / box boxes of `box` keys (params.kv_box_rows:
// the whole tile where pages hold whole tiles, else kPagedBoxRows; host_setup.h), each inside one
// page, loaded from the pool's 4-d map at (slot, K/V head, block). The block ids of the next key
// tile are read from the block table while the current tile's loads wait for their stage, so the
// table's latency stays off the issue path except at a tile's first key tile. Boxes past the
// sequence's last key are not loaded (their table entries may be unset): the transaction count
// covers the loaded boxes only, the consumers mask those keys and zero their V rows
// (sm90/consumer_mainloop.cuh). A box that starts before the last key is loaded whole: it stays
// inside its page (page_size is a multiple of the box), and the slots past the key are masked.
// TileKind::kPagedKeys80's tiles (80 keys over pages of 64k) are split at their page boundary
// instead, each part into 64/32/16-key boxes from their own maps (SplitKeyTile).
//
// TileKind::kPagedKeys80Lanes: the same split tiles, their loads issued by four threads, one per
// 64-column chunk (ProduceByChunk).

#include <cstdint>
#include <type_traits>

#include "attention_params.h"
#include "sm90/params.h"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"
#include "sm90/tile_scheduler.cuh"

namespace flashkv::cuda::sm90 {

// The boxes of one paged key tile: how many hold keys of the sequence, and where each comes from.
template <class Tr>
struct PagedKeyTile {
  int boxes = 0;
  int block[Tr::kKvBoxes];  // pool block (page) of box j (boxes <= kKvBoxes: the 64-key boxes)
  int slot[Tr::kKvBoxes];   // its first key's slot in that page

  __device__ __forceinline__ static PagedKeyTile Lookup(const AttentionParams& p, const WorkTile& w,
                                                        int n, int box_rows) {
    PagedKeyTile t;
    const int key0 = n * Tr::kBlockN;
    t.boxes = min(Tr::kBlockN / box_rows, (w.seq.kv_len - key0 + box_rows - 1) / box_rows);
#pragma unroll
    for (int j = 0; j < Tr::kKvBoxes; ++j) {
      const int key = key0 + j * box_rows;
      const int page = key / p.page_size;
      t.block[j] = 0;
      if (j < t.boxes) t.block[j] = __ldg(w.seq.block_table + page);
      t.slot[j] = key - page * p.page_size;
    }
    return t;
  }
};

// A key tile of TileKind::kPagedKeys80: keys [key0, key0 + block_n) lie in one page (slot0 on)
// or in two, block0's slots [slot0, page_size) then block1's from slot 0. The second block is
// read only when that part holds keys of the sequence (its table entry may be unset otherwise).
template <class Tr>
struct SplitKeyTile {
  int block0 = 0;
  int block1 = 0;
  int slot0 = 0;

  __device__ __forceinline__ static SplitKeyTile Lookup(const AttentionParams& p, const WorkTile& w,
                                                        int n) {
    SplitKeyTile t;
    const int key0 = n * Tr::kBlockN;
    const int page = key0 / p.page_size;
    t.slot0 = key0 - page * p.page_size;
    t.block0 = __ldg(w.seq.block_table + page);
    const int first_part = p.page_size - t.slot0;
    if (first_part < Tr::kBlockN && key0 + first_part < w.seq.kv_len) {
      t.block1 = __ldg(w.seq.block_table + page + 1);
    }
    return t;
  }
};

// Calls box(row, part, slot, block) for each box of a split key tile: the part in block0
// (`first_part` keys from slot0), then the part in block1 (the rest, from slot 0), each as its
// PagedPartRows boxes, largest first. `row` is the box's first row in the tile.
template <class Tr, class Box>
__device__ __forceinline__ void ForEachSplitBox(const SplitKeyTile<Tr>& kt, int first_part,
                                                Box&& box) {
  int row = 0;
#pragma unroll
  for (int part = 0; part < 2; ++part) {
    const int rows = part == 0 ? first_part : Tr::kBlockN - first_part;
    const int block = part == 0 ? kt.block0 : kt.block1;
    int slot = part == 0 ? kt.slot0 : 0;
#pragma unroll
    for (int i = 0; i < kPagedParts; ++i) {
      const int box_rows = kLargestPagedPart >> i;  // PagedPartRows(i), in device code
      if (rows & box_rows) {
        box(row, i, slot, block);
        row += box_rows;
        slot += box_rows;
      }
    }
  }
}

// Contiguous K/V: nothing to look up.
struct NoKeyTile {};

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

  __device__ __forceinline__ void LoadKv(const CUtensorMap& map, const CUtensorMap*, uint32_t tile,
                                         uint32_t bar, const WorkTile& w, int n, NoKeyTile) const {
    MbarrierArriveExpectTx(bar, Tr::kKvBytes);
#pragma unroll
    for (int c = 0; c < Tr::kChunks; ++c) {
      Load(map, tile + c * Tr::kKvChunkBytes, bar, w, w.seq.kv_begin, n * Tr::kBlockN, w.head_kv,
           c);
    }
  }

  // Pool maps are [block, K/V head, slot, dim] (4-d); box j fills rows [j * box, (j + 1) * box)
  // of every chunk.
  __device__ __forceinline__ void LoadKv(const CUtensorMap& map, const CUtensorMap*, uint32_t tile,
                                         uint32_t bar, const WorkTile& w, int,
                                         const PagedKeyTile<Tr>& kt) const {
    const uint32_t box_bytes = static_cast<uint32_t>(params.kv_box_rows) * Tr::kChunkRowBytes;
    MbarrierArriveExpectTx(bar, kt.boxes * Tr::kChunks * box_bytes);
#pragma unroll
    for (int j = 0; j < Tr::kKvBoxes; ++j) {
      if (j < kt.boxes) {
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          TmaLoad4d(tile + c * Tr::kKvChunkBytes + j * box_bytes, &map, bar, 64 * c, kt.slot[j],
                    w.head_kv, kt.block[j]);
        }
      }
    }
  }

  // Split tiles (TileKind::kPagedKeys80): one block_n box from `map` when the tile lies in one
  // page, else the boxes of its two parts from `parts` (the PagedPartRows maps). As above, a box
  // starting past the sequence's last key is not loaded, and one starting before it is loaded
  // whole (it lies inside its page).
  __device__ __forceinline__ void LoadKv(const CUtensorMap& map, const CUtensorMap* parts,
                                         uint32_t tile, uint32_t bar, const WorkTile& w, int n,
                                         const SplitKeyTile<Tr>& kt) const {
    const int first_part = min(Tr::kBlockN, params.p.page_size - kt.slot0);
    if (first_part == Tr::kBlockN) {
      MbarrierArriveExpectTx(bar, Tr::kKvBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c) {
        TmaLoad4d(tile + c * Tr::kKvChunkBytes, &map, bar, 64 * c, kt.slot0, w.head_kv, kt.block0);
      }
      return;
    }
    const int keys = w.seq.kv_len - n * Tr::kBlockN;  // rows holding keys of the sequence
    int rows = 0;
    ForEachSplitBox(kt, first_part, [&](int row, int part, int, int) {
      if (row < keys) rows += (kLargestPagedPart >> part);
    });
    MbarrierArriveExpectTx(bar, static_cast<uint32_t>(rows) * Tr::kChunks * Tr::kChunkRowBytes);
    ForEachSplitBox(kt, first_part, [&](int row, int part, int slot, int block) {
      if (row < keys) {
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          TmaLoad4d(tile + c * Tr::kKvChunkBytes + row * Tr::kChunkRowBytes, &parts[part], bar,
                    64 * c, slot, w.head_kv, block);
        }
      }
    });
  }

  // Chunk c of a split tile (TileKind::kPagedKeys80Lanes, one issuing thread per chunk): the
  // boxes of LoadKv's split overload for chunk c alone, after an arrive on `bar` with chunk c's
  // bytes. The full barriers of this kind expect one arrival per issuer (sm90/smem.cuh), so a
  // phase completes once every issuer has arrived and every byte announced has landed. Each
  // issuer announces its bytes before issuing their loads, so the tx-count never runs below
  // zero; and the other issuers' loads landing before an issuer's arrive cannot complete the
  // phase early, as that arrival is still pending. An issuer issues use u of a stage only after
  // the consumers released use u - 1 (its empty barrier), which they do only after use u - 1's
  // full phase completed, so no byte of use u is counted in use u - 1's phase.
  __device__ __forceinline__ void LoadSplitChunk(const CUtensorMap& map, const CUtensorMap* parts,
                                                 uint32_t tile, uint32_t bar, const WorkTile& w,
                                                 int n, const SplitKeyTile<Tr>& kt, int c) const {
    const int first_part = min(Tr::kBlockN, params.p.page_size - kt.slot0);
    const uint32_t chunk = tile + c * Tr::kKvChunkBytes;
    if (first_part == Tr::kBlockN) {
      MbarrierArriveExpectTx(bar, Tr::kKvChunkBytes);
      TmaLoad4d(chunk, &map, bar, 64 * c, kt.slot0, w.head_kv, kt.block0);
      return;
    }
    const int keys = w.seq.kv_len - n * Tr::kBlockN;  // rows holding keys of the sequence
    int rows = 0;
    ForEachSplitBox(kt, first_part, [&](int row, int part, int, int) {
      if (row < keys) rows += (kLargestPagedPart >> part);
    });
    MbarrierArriveExpectTx(bar, static_cast<uint32_t>(rows) * Tr::kChunkRowBytes);
    ForEachSplitBox(kt, first_part, [&](int row, int part, int slot, int block) {
      if (row < keys) {
        TmaLoad4d(chunk + row * Tr::kChunkRowBytes, &parts[part], bar, 64 * c, slot, w.head_kv,
                  block);
      }
    });
  }

  // Chunk c of the tile's Q (one issuing thread per chunk, QFull expecting one arrival each).
  __device__ __forceinline__ void LoadQChunk(const WorkTile& w, int local_tile, int c) const {
    if (local_tile > 0) MbarrierWait(smem.QFree(), static_cast<uint32_t>(local_tile - 1) & 1u);
    MbarrierArriveExpectTx(smem.QFull(), Tr::kQChunkBytes);
    Load(params.q_map, smem.Q() + c * Tr::kQChunkBytes, smem.QFull(), w, w.seq.token_begin,
         w.row0, w.head, c);
  }
};

template <class Tr>
using KeyTileOf = std::conditional_t<Tr::kPagedSplit, SplitKeyTile<Tr>,
                                     std::conditional_t<Tr::kPaged, PagedKeyTile<Tr>, NoKeyTile>>;

template <class Tr>
__device__ __forceinline__ KeyTileOf<Tr> LookupKeyTile(const Sm90Params& params, const WorkTile& w,
                                                       int n) {
  if constexpr (Tr::kPagedSplit) {
    return SplitKeyTile<Tr>::Lookup(params.p, w, n);
  } else if constexpr (Tr::kPaged) {
    return PagedKeyTile<Tr>::Lookup(params.p, w, n, params.kv_box_rows);
  } else {
    return NoKeyTile{};
  }
}

// The loads of one work tile's key tiles [key_begin, key_tiles), last first, in the order K(n),
// Q (i == 0), V(n) per key tile; `pipe` counts both rings (equal depths: one position).
// kByChunk (ProduceByChunk): chunk `chunk` of each tile alone, and no claim (a consumer's).
template <class Tr, bool kVarlen, bool kDynamic, bool kByChunk = false>
__device__ __forceinline__ void LoadKeyTilesInOrder(const Sm90Params& params, const Smem<Tr>& smem,
                                                    const TmaIssuer<Tr, kVarlen>& tma,
                                                    const WorkTile& w, int local_tile,
                                                    KvPipelineState<Tr>& pipe, int chunk = 0) {
  static_assert(Tr::kKStages == Tr::kVStages, "one position serves both rings");
  const int count = w.key_tiles - w.key_begin;
  KeyTileOf<Tr> next{};
  if (count > 0) next = LookupKeyTile<Tr>(params, w, w.key_tiles - 1);
  for (int i = 0; i < count; ++i, ++pipe.it) {
    const int n = w.key_tiles - 1 - i;
    const KeyTileOf<Tr> kt = next;
    // (Paged: the table reads for key tile n - 1 are in flight during the waits below.)
    if (n > w.key_begin) next = LookupKeyTile<Tr>(params, w, n - 1);
    const int stage = pipe.K().Stage();
    const uint32_t released = pipe.K().Phase() ^ 1u;
    MbarrierWait(smem.KEmpty(stage), released);
    if constexpr (kByChunk) {
      tma.LoadSplitChunk(params.k_map, params.k_part_maps, smem.K(stage), smem.KFull(stage), w, n,
                         kt, chunk);
      if (i == 0) tma.LoadQChunk(w, local_tile, chunk);
    } else {
      tma.LoadKv(params.k_map, params.k_part_maps, smem.K(stage), smem.KFull(stage), w, n, kt);
      if (i == 0) {
        tma.LoadQ(w, local_tile);
        if constexpr (kDynamic) ClaimNextTile(params, smem, local_tile);
      }
    }
    MbarrierWait(smem.VEmpty(stage), released);
    if constexpr (kByChunk) {
      tma.LoadSplitChunk(params.v_map, params.v_part_maps, smem.V(stage), smem.VFull(stage), w, n,
                         kt, chunk);
    } else {
      tma.LoadKv(params.v_map, params.v_part_maps, smem.V(stage), smem.VFull(stage), w, n, kt);
    }
  }
}

// Traits::kKLeadsV (K's ring one deeper than V's): K one key tile ahead of V, in the order
// K(n0), Q, K(n1), V(n0), K(n2), V(n1), ..., K(n_last), V(n_last-1), V(n_last) (n0 the tile's
// first key tile, the last in key order). The consumers take K(n + 1) (S) before they are done
// with V(n) (P V, issued beside that S), so a K load waiting behind V's ring in K(n), V(n) order
// is a K load the consumers' next S waits for; ahead of V, K's wait is for its own (deeper) ring
// only, and each V load has a whole key tile's compute to land. Q stays after the tile's first K,
// as in order, so that K overlaps the previous tile's epilogue (Q's space holds its O until
// then), and the dynamic schedule's claim of the next tile stays right after Q. A work tile's
// rings start and end whole: its last V is issued before the next tile's first K, so the tile
// boundary is the in-order producer's (no look-ahead across work tiles, whose next tile the
// dynamic schedule has not read back yet). `k_pipe` and `v_pipe` count each ring's loads; both
// reach the consumers' count of key tiles (one K and one V per key tile), K's up to one ahead.
template <class Tr, bool kVarlen, bool kDynamic>
__device__ __forceinline__ void LoadKeyTilesKAhead(const Sm90Params& params, const Smem<Tr>& smem,
                                                   const TmaIssuer<Tr, kVarlen>& tma,
                                                   const WorkTile& w, int local_tile,
                                                   PipelineState<Tr::kKStages>& k_pipe,
                                                   PipelineState<Tr::kVStages>& v_pipe) {
  const int count = w.key_tiles - w.key_begin;
  if (count <= 0) return;  // Produce loads the tile's Q alone
  KeyTileOf<Tr> k_tile = LookupKeyTile<Tr>(params, w, w.key_tiles - 1);  // K's next tile (n)
  KeyTileOf<Tr> v_tile{};  // V's next tile (n + 1: one step behind)
  // Step i: K(n) for i < count, then Q (i == 0) or V(n + 1) (i >= 1). count + 1 steps.
  for (int i = 0; i <= count; ++i) {
    const int n = w.key_tiles - 1 - i;
    if (i < count) {
      const int stage = k_pipe.Stage();
      MbarrierWait(smem.KEmpty(stage), k_pipe.Phase() ^ 1u);
      tma.LoadKv(params.k_map, params.k_part_maps, smem.K(stage), smem.KFull(stage), w, n,
                 k_tile);
      ++k_pipe.it;
    }
    if (i == 0) {
      tma.LoadQ(w, local_tile);
      if constexpr (kDynamic) ClaimNextTile(params, smem, local_tile);
    } else {
      const int stage = v_pipe.Stage();
      MbarrierWait(smem.VEmpty(stage), v_pipe.Phase() ^ 1u);
      tma.LoadKv(params.v_map, params.v_part_maps, smem.V(stage), smem.VFull(stage), w, n + 1,
                 v_tile);
      ++v_pipe.it;
    }
    v_tile = k_tile;
    // (Paged: the table reads for key tile n - 1 are in flight during the next step's K wait.)
    if (n > w.key_begin) k_tile = LookupKeyTile<Tr>(params, w, n - 1);
  }
}

// The tensor maps an issuer reads, into the cache ahead of its first load.
template <class Tr>
__device__ __forceinline__ void PrefetchMaps(const Sm90Params& params) {
  PrefetchTensorMap(&params.q_map);
  PrefetchTensorMap(&params.k_map);
  PrefetchTensorMap(&params.v_map);
  if constexpr (Tr::kPagedSplit) {
#pragma unroll
    for (int i = 0; i < kPagedParts; ++i) {
      PrefetchTensorMap(&params.k_part_maps[i]);
      PrefetchTensorMap(&params.v_part_maps[i]);
    }
  }
}

template <class Tr, bool kCausal, bool kVarlen, bool kDynamic, bool kStreamK>
__device__ __forceinline__ void Produce(const Sm90Params& params, const Smem<Tr>& smem) {
  PrefetchMaps<Tr>(params);
  const TmaIssuer<Tr, kVarlen> tma{params, smem};
  // Ring positions: one for both rings in order, one per ring with K ahead (unused otherwise).
  KvPipelineState<Tr> pipe;
  PipelineState<Tr::kKStages> k_pipe;
  PipelineState<Tr::kVStages> v_pipe;
  WorkItem item;
  item.tile = blockIdx.x;
  if constexpr (kDynamic) {
    PublishTile(smem, 0, item.tile);
  } else if (!StaticWorkItem<kStreamK>(params.schedule, 0, &item)) {
    return;
  }
  for (int local_tile = 0; item.tile < params.schedule.num_tiles; ++local_tile) {
    WorkTile w = DecodeTile<kVarlen, kCausal, Tr::kBlockM, Tr::kBlockN>(params.p, params.schedule,
                                                                        item.tile);
    ApplyKeyRange(&w, item);
    if constexpr (Tr::kKLeadsV) {
      LoadKeyTilesKAhead<Tr, kVarlen, kDynamic>(params, smem, tma, w, local_tile, k_pipe, v_pipe);
    } else {
      LoadKeyTilesInOrder<Tr, kVarlen, kDynamic>(params, smem, tma, w, local_tile, pipe);
    }
    const int count = w.key_tiles - w.key_begin;
    // A tile whose rows see no key still has its Q loaded: the consumers then run the same
    // epilogue (O = 0, LSE = -inf) and the Q barrier phases stay in step.
    if (count <= 0) {
      tma.LoadQ(w, local_tile);
      if constexpr (kDynamic) ClaimNextTile(params, smem, local_tile);
    }
    // Dynamic: read back from the ring (no register holds it across the loads: at the
    // producer's 24 registers that spilled).
    if constexpr (kDynamic) {
      item.tile = *smem.TileSlot((local_tile + 1) % kTileRingSlots);
    } else if (!StaticWorkItem<kStreamK>(params.schedule, local_tile + 1, &item)) {
      break;
    }
  }
}

// TileKind::kPagedKeys80Lanes: thread 32 c of the producer warpgroup (one in each of its warps,
// c < Traits::kKvIssuers, one per 64-column chunk) issues chunk c of every Q, K and V tile.
// Hypothesis (kernels/cuda/NOTES.md): the split 80-key tiles are bound by the one producer
// thread's issue rate (up to 3 boxes x 4 chunks = 12 TMA instructions per K tile and as many per
// V tile, with the address arithmetic, empty-barrier waits and table reads between them); four
// threads in four warps (on the SM's four sub-partitions, each its own instruction stream) issue
// at most 3 each and do their waits and table reads in parallel. Not four lanes of one warp: the
// TMA instruction takes its operands from uniform registers, so the lanes' loads would go out
// one after another from the one warp. Every issuer walks the same work tiles and key tiles in
// the same order (LoadKeyTilesInOrder), waits on the same empty barriers, reads the block
// table itself and arrives on the full barriers with its own chunk's bytes
// (TmaIssuer::LoadSplitChunk). The dynamic schedule's claims are a consumer thread's
// (sm90/attention_kernel.cuh's Consume); every issuer reads the tile numbers back through
// the tile ring as the consumer warps do (FollowTile; tile_empty counts their arrivals), so no
// slot is rewritten before each has read it. One body for every issuer: at the producer's 24
// registers, a body for chunk 0 (with the loads' whole byte count, Q and the claims) beside one
// for the others spilled (68-140 bytes), as did the claims in the one body.
template <class Tr, bool kCausal, bool kVarlen, bool kDynamic, bool kStreamK>
__device__ __forceinline__ void ProduceByChunk(const Sm90Params& params, const Smem<Tr>& smem,
                                               int chunk) {
  static_assert(Tr::kPagedSplit && !Tr::kKLeadsV && Tr::kKvIssuers == Tr::kChunks,
                "one issuer per chunk of a split tile, K and V in order");
  PrefetchMaps<Tr>(params);
  const TmaIssuer<Tr, kVarlen> tma{params, smem};
  KvPipelineState<Tr> pipe;
  WorkItem item;
  if constexpr (!kDynamic) {
    if (!StaticWorkItem<kStreamK>(params.schedule, 0, &item)) return;
  }
  for (int local_tile = 0;; ++local_tile) {
    if constexpr (kDynamic) item.tile = FollowTile(smem, local_tile);
    if (item.tile >= params.schedule.num_tiles) break;
    WorkTile w = DecodeTile<kVarlen, kCausal, Tr::kBlockM, Tr::kBlockN>(params.p, params.schedule,
                                                                        item.tile);
    ApplyKeyRange(&w, item);
    LoadKeyTilesInOrder<Tr, kVarlen, kDynamic, true>(params, smem, tma, w, local_tile, pipe,
                                                     chunk);
    // As in Produce: a tile without keys still has its Q loaded.
    if (w.key_tiles - w.key_begin <= 0) tma.LoadQChunk(w, local_tile, chunk);
    if constexpr (!kDynamic) {
      if (!StaticWorkItem<kStreamK>(params.schedule, local_tile + 1, &item)) break;
    }
  }
}

}  // namespace flashkv::cuda::sm90

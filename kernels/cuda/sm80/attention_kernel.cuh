#pragma once

// The sm80 tensor-core flash-attention forward kernel (fp16/bf16, float32 accumulation), for
// fixed-length, varlen and paged launches. One CTA computes one M tile of (token, head) rows of one
// sequence against a range of its key tiles:
//
//   grid.x = M tile (heaviest first under causal), grid.y = head group x split, grid.z = sequence.
//
// Policies (template flags, resolved with if constexpr): kCausal (bottom-right mask, skipped key
// tiles), kPaged (keys found through the block table, page indices staged in shared memory),
// kSplit (the CTA covers 1/num_splits of the keys and writes float32 partials for
// split_kv_combine). GQA packing is a runtime factor (params.pack) because it changes only the
// row-to-(token, head) map at the tile edges.
//
// Pipeline (per CTA): Q and the first kStages-1 K/V tiles are requested with cp.async; each
// iteration waits for tile i, passes one barrier, requests tile i+kStages-1 into the stage tile
// i-1 used, and computes tile i. Tiles go from the last key tile down, so the masked ones (the
// sequence tail and the causal diagonal) come first and the rest run unmasked.

#include <cstdint>

#include "attention_params.h"
#include "sequence.cuh"
#include "sm80/kv_loader.cuh"
#include "sm80/ptx.cuh"
#include "sm80/traits.cuh"
#include "sm80/warp_mainloop.cuh"

namespace flashkv::cuda::sm80 {

// The two ways a CTA spreads its warps: wide (warps split the rows; prefill) and narrow (16 rows,
// warps split the keys of each tile; decode and short packed chunks).
template <class Tr, bool kWide>
struct PathShape {
  static constexpr int kRows = kWide ? Tr::kBlockM : kNarrowRows;
  static constexpr int kMmaM = kWide ? Tr::kWideMmaM : 1;
  static constexpr int kCols = kWide ? Tr::kBlockN : Tr::kNarrowCols;
  static constexpr bool kQInRegisters = kWide ? Tr::kWideQInRegisters : Tr::kNarrowQInRegisters;
  using Mainloop = WarpMainloop<Tr, kMmaM, kCols, kQInRegisters>;
};

// What one CTA computes, resolved once from the grid position and the sequence.
struct CtaTile {
  SequenceView seq;
  int row0 = 0;        // first packed row of the tile (row = token * pack + head offset)
  int rows = 0;        // valid rows in the tile
  int head_base = 0;   // query head of packed row offset 0
  int head_kv = 0;
  int split = 0;
  int tile_begin = 0;  // key tiles [tile_begin, tile_end) of this CTA
  int tile_end = 0;
  int min_key_limit = 0;  // smallest key limit among the tile's rows: tiles below it need no mask
};

template <class Tr>
struct TileIo {
  using Element = typename Tr::Element;
  const AttentionParams& p;
  const CtaTile& tile;

  __device__ __forceinline__ int Token(int row) const { return (tile.row0 + row) / p.pack; }
  __device__ __forceinline__ int Head(int row, int token) const {
    return tile.head_base + (tile.row0 + row) - token * p.pack;
  }

  // cp.async of the tile's Q rows (zero-filled past the valid rows).
  template <int kRows>
  __device__ __forceinline__ void LoadQ(uint32_t q_smem, int tid) const {
    constexpr int kTotal = kRows * Tr::kChunks;
    const Element* q = static_cast<const Element*>(p.q);
#pragma unroll
    for (int i = 0; i < (kTotal + Tr::kThreads - 1) / Tr::kThreads; ++i) {
      const int idx = tid + i * Tr::kThreads;
      if (kTotal % Tr::kThreads == 0 || idx < kTotal) {
        const int r = idx / Tr::kChunks;
        const int c = idx % Tr::kChunks;
        const bool valid = r < tile.rows;
        const int token = Token(r);
        const Element* src = q + tile.seq.q_offset + token * p.q_row_stride +
                             Head(r, token) * p.q_head_stride + c * 8;
        CpAsync16(q_smem + Tr::QTile::Offset(r, c), valid ? src : q, valid);
      }
    }
  }

  // Flips the sign of the Q chunks this thread loaded (a negative softmax scale). The caller has
  // waited for its own cp.async groups; a barrier must follow before other warps read.
  template <int kRows>
  __device__ __forceinline__ void NegateQ(char* q_smem_ptr, int tid) const {
    constexpr int kTotal = kRows * Tr::kChunks;
#pragma unroll
    for (int i = 0; i < (kTotal + Tr::kThreads - 1) / Tr::kThreads; ++i) {
      const int idx = tid + i * Tr::kThreads;
      if (kTotal % Tr::kThreads == 0 || idx < kTotal) {
        uint4* chunk = reinterpret_cast<uint4*>(
            q_smem_ptr + Tr::QTile::Offset(idx / Tr::kChunks, idx % Tr::kChunks));
        uint4 v = *chunk;
        v.x ^= 0x80008000u;
        v.y ^= 0x80008000u;
        v.z ^= 0x80008000u;
        v.w ^= 0x80008000u;
        *chunk = v;
      }
    }
  }

  // LSE of one row: into the split workspace, or the caller's [.., Hq, Sq] array when given.
  template <bool kSplit>
  __device__ __forceinline__ void StoreLse(int row, float value) const {
    if (row >= tile.rows) return;
    const int token = Token(row);
    const int head = Head(row, token);
    if constexpr (kSplit) {
      p.lse_partial[(tile.split * p.total_q + tile.seq.token_begin + token) * p.num_heads_q + head] =
          value;
    } else if (p.lse != nullptr) {
      p.lse[tile.seq.lse_offset + head * p.lse_head_stride + token] = value;
    }
  }

  // Split-KV partial output: float32 [split, token, head, dim].
  __device__ __forceinline__ float* PartialRow(int row) const {
    const int token = Token(row);
    const int head = Head(row, token);
    return p.o_partial +
           (((tile.split * p.total_q) + tile.seq.token_begin + token) * p.num_heads_q + head) *
               static_cast<int64_t>(Tr::kHeadDim);
  }

  __device__ __forceinline__ Element* OutRow(int row) const {
    const int token = Token(row);
    return static_cast<Element*>(p.out) + tile.seq.out_offset + token * p.out_row_stride +
           Head(row, token) * p.out_head_stride;
  }
};

// Writes the wide path's normalized output: through shared memory (the Q tile's space) so that
// global stores are whole 16-byte chunks of a row, or, for a split, float32 partials straight from
// the accumulators (a quad covers 32 contiguous bytes).
template <class Tr, class Path, bool kSplit>
__device__ __forceinline__ void WideEpilogue(typename Path::Mainloop& warp, const TileIo<Tr>& io,
                                             char* q_smem, int row0, int tid, int lane) {
  using Element = typename Tr::Element;
  const int g = lane / 4;
  const int t = lane % 4;
  warp.ReduceRowSums();
#pragma unroll
  for (int mi = 0; mi < Path::kMmaM; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const RowState& row = warp.rows[mi][h];
      warp.ScaleOutput(mi, h, row.sum > 0.f ? 1.f / row.sum : 0.f);
      if (t == 0) io.template StoreLse<kSplit>(row0 + 16 * mi + 8 * h + g, row.Lse());
    }
  }
  if constexpr (kSplit) {
#pragma unroll
    for (int mi = 0; mi < Path::kMmaM; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + 16 * mi + 8 * h + g;
        if (r < io.tile.rows) {
          float* dst = io.PartialRow(r);
#pragma unroll
          for (int d = 0; d < Path::Mainloop::kDTiles; ++d) {
            *reinterpret_cast<float2*>(dst + 8 * d + 2 * t) =
                make_float2(warp.o[mi][d][2 * h], warp.o[mi][d][2 * h + 1]);
          }
        }
      }
    }
  } else {
    __syncthreads();  // every warp is done reading Q from shared memory
#pragma unroll
    for (int mi = 0; mi < Path::kMmaM; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + 16 * mi + 8 * h + g;
#pragma unroll
        for (int d = 0; d < Path::Mainloop::kDTiles; ++d) {
          *reinterpret_cast<uint32_t*>(q_smem + Tr::QTile::Offset(r, d) + 4 * t) =
              PackPair<Element>(warp.o[mi][d][2 * h], warp.o[mi][d][2 * h + 1]);
        }
      }
    }
    __syncthreads();
    constexpr int kTotal = Path::kRows * Tr::kChunks;
    static_assert(kTotal % Tr::kThreads == 0, "output chunks must divide among the threads");
#pragma unroll
    for (int i = 0; i < kTotal / Tr::kThreads; ++i) {
      const int idx = tid + i * Tr::kThreads;
      const int r = idx / Tr::kChunks;
      const int c = idx % Tr::kChunks;
      if (r < io.tile.rows) {
        *reinterpret_cast<uint4*>(io.OutRow(r) + c * 8) =
            *reinterpret_cast<const uint4*>(q_smem + Tr::QTile::Offset(r, c));
      }
    }
  }
}

// The narrow path's warps each hold a softmax state and an output for the same 16 rows over their
// own keys: merge them through shared memory laid over the (drained) K/V stages.
template <class Tr, class Path, bool kSplit>
__device__ __forceinline__ void NarrowEpilogue(typename Path::Mainloop& warp, const TileIo<Tr>& io,
                                               char* kv_smem, int warp_id, int tid, int lane) {
  using Element = typename Tr::Element;
  constexpr int kWarps = Tr::kNarrowWarps;
  constexpr int kRowFloats = Tr::kMergeRowFloats;
  float* merge_o = reinterpret_cast<float*>(kv_smem);             // [warp, 16, kRowFloats]
  float* merge_max = merge_o + kWarps * 16 * kRowFloats;          // [warp, 16]
  float* merge_sum = merge_max + kWarps * 16;                     // [warp, 16]
  const int g = lane / 4;
  const int t = lane % 4;
  const bool active = warp_id < kWarps;

  __syncthreads();  // every warp is done with the K/V stages
  if (active) {
    warp.ReduceRowSums();
    if (t == 0) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        merge_max[warp_id * 16 + g + 8 * h] = warp.rows[0][h].max;
        merge_sum[warp_id * 16 + g + 8 * h] = warp.rows[0][h].sum;
      }
    }
  }
  __syncthreads();
  if (active) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = g + 8 * h;
      RowState merged;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) merged.Merge(RowState{merge_max[w * 16 + r], merge_sum[w * 16 + r]});
      const float reference = merged.max == -INFINITY ? 0.f : merged.max;
      const float factor =
          merged.sum > 0.f ? Exp2Approx(warp.rows[0][h].max - reference) / merged.sum : 0.f;
      warp.ScaleOutput(0, h, factor);
      float* dst = merge_o + (warp_id * 16 + r) * kRowFloats;
#pragma unroll
      for (int d = 0; d < Path::Mainloop::kDTiles; ++d) {
        *reinterpret_cast<float2*>(dst + 8 * d + 2 * t) =
            make_float2(warp.o[0][d][2 * h], warp.o[0][d][2 * h + 1]);
      }
      if (warp_id == 0 && t == 0) io.template StoreLse<kSplit>(r, merged.Lse());
    }
  }
  __syncthreads();
  constexpr int kTotal = kNarrowRows * Tr::kChunks;
  for (int idx = tid; idx < kTotal; idx += Tr::kThreads) {
    const int r = idx / Tr::kChunks;
    const int c = idx % Tr::kChunks;
    if (r >= io.tile.rows) continue;
    float acc[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* src = merge_o + (w * 16 + r) * kRowFloats + c * 8;
      const float4 lo = *reinterpret_cast<const float4*>(src);
      const float4 hi = *reinterpret_cast<const float4*>(src + 4);
      acc[0] += lo.x, acc[1] += lo.y, acc[2] += lo.z, acc[3] += lo.w;
      acc[4] += hi.x, acc[5] += hi.y, acc[6] += hi.z, acc[7] += hi.w;
    }
    if constexpr (kSplit) {
      float* dst = io.PartialRow(r) + c * 8;
      *reinterpret_cast<float4*>(dst) = make_float4(acc[0], acc[1], acc[2], acc[3]);
      *reinterpret_cast<float4*>(dst + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    } else {
      uint4 packed;
      packed.x = PackPair<Element>(acc[0], acc[1]);
      packed.y = PackPair<Element>(acc[2], acc[3]);
      packed.z = PackPair<Element>(acc[4], acc[5]);
      packed.w = PackPair<Element>(acc[6], acc[7]);
      *reinterpret_cast<uint4*>(io.OutRow(r) + c * 8) = packed;
    }
  }
}

template <class Tr, bool kCausal, bool kPaged, bool kSplit, bool kWide>
// Not inlined: each path gets its own register allocation (inlining both into the kernel made
// ptxas spill the wide path's accumulators); the call happens once per CTA.
__device__ __noinline__ void RunTile(const AttentionParams& p, CtaTile& tile, char* smem) {
  using Path = PathShape<Tr, kWide>;
  constexpr int kStages = Tr::kStages;
  const int tid = threadIdx.x;
  const int warp_id = tid / 32;
  const int lane = tid % 32;

  // Key range: the last row sees the most keys; the first row bounds the unmasked tiles.
  const int first_token = tile.row0 / p.pack;
  const int last_token = (tile.row0 + tile.rows - 1) / p.pack;
  tile.min_key_limit = KeyLimit<kCausal>(tile.seq, first_token);
  const int max_key_limit = KeyLimit<kCausal>(tile.seq, last_token);
  const int num_tiles = max_key_limit > 0 ? (max_key_limit + Tr::kBlockN - 1) / Tr::kBlockN : 0;
  if constexpr (kSplit) {
    const int per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
    tile.tile_begin = min(num_tiles, tile.split * per_split);
    tile.tile_end = min(num_tiles, tile.tile_begin + per_split);
  } else {
    tile.tile_begin = 0;
    tile.tile_end = num_tiles;
  }
  const int count = tile.tile_end - tile.tile_begin;
  const int tile_end = tile.tile_end;
  auto tile_of = [tile_end](int i) { return tile_end - 1 - i; };  // iteration i -> key tile

  TileIo<Tr> io{p, tile};
  char* q_smem_ptr = smem;
  char* kv_smem_ptr = smem + Tr::kSmemQ;
  int64_t* paged_rows = reinterpret_cast<int64_t*>(smem + Tr::kSmemQ + Tr::kSmemKv);
  const uint32_t q_smem = SmemAddress(q_smem_ptr);
  const uint32_t kv_smem = SmemAddress(kv_smem_ptr);
  auto k_stage = [&](int i) { return kv_smem + (i % kStages) * Tr::kSmemStage; };
  auto rows_slot = [&](int i) { return paged_rows + (i % kStages) * Tr::kBlockN; };

  KvLoader<Tr, kPaged> kv;
  kv.Init(p, tile.seq, tile.head_kv, tid);

  // Prologue: Q, then key tiles 0 .. kStages-2 (paged: page offsets of tiles 0 .. kStages-1).
  io.template LoadQ<Path::kRows>(q_smem, tid);
  CpAsyncCommit();
  if constexpr (kPaged) {
#pragma unroll
    for (int i = 0; i < kStages; ++i) {
      if (i < count) kv.StorePagedRow(p, tile_of(i), kv.FetchBlock(p, tile_of(i)), rows_slot(i));
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < count) kv.Load(p, tile_of(i), k_stage(i), k_stage(i) + Tr::KvTile::kBytes, rows_slot(i));
    CpAsyncCommit();
  }

  // This warp's rows and keys within the tile.
  const int warp_row0 = kWide ? warp_id * Tr::kWideRows : 0;
  const int warp_col0 = kWide ? 0 : warp_id * Tr::kNarrowCols;
  const bool warp_active = kWide || warp_id < Tr::kNarrowWarps;
  typename Path::Mainloop warp;
  warp.Init();
  warp.PrepareAddresses(warp_row0, warp_col0, lane);
  // Exclusive key limit of row r of this warp (only evaluated on masked tiles).
  auto key_limit = [&](int r) {
    return KeyLimit<kCausal>(tile.seq, (tile.row0 + warp_row0 + r) / p.pack);
  };

  CpAsyncWait<kStages - 1>();  // Q has landed (the oldest group)
  if (p.negate_q) io.template NegateQ<Path::kRows>(q_smem_ptr, tid);
  __syncthreads();
  if (warp_active) warp.LoadQToRegisters(q_smem);

  const int min_key_limit = tile.min_key_limit;
  for (int i = 0; i < count; ++i) {
    const int n = tile_of(i);
    CpAsyncWait<kStages - 2>();  // tile i has landed
    __syncthreads();             // ... for every thread; and every warp is done with tile i-1
    int next_block = 0;
    if constexpr (kPaged) {
      if (i + kStages < count) next_block = kv.FetchBlock(p, tile_of(i + kStages));
    }
    if (i + kStages - 1 < count) {
      const int j = i + kStages - 1;
      kv.Load(p, tile_of(j), k_stage(j), k_stage(j) + Tr::KvTile::kBytes, rows_slot(j));
    }
    CpAsyncCommit();
    if (warp_active) {
      const bool masked = (n + 1) * Tr::kBlockN > min_key_limit;
      warp.Step(q_smem, k_stage(i), k_stage(i) + Tr::KvTile::kBytes, warp_col0, n * Tr::kBlockN,
                masked, key_limit, p.scale_log2, lane);
    }
    if constexpr (kPaged) {
      // Slot of tile i+kStages is tile i's, read when tile i was requested (before this barrier).
      if (i + kStages < count) kv.StorePagedRow(p, tile_of(i + kStages), next_block, rows_slot(i));
    }
  }
  CpAsyncWait<0>();

  if constexpr (kWide) {
    WideEpilogue<Tr, Path, kSplit>(warp, io, q_smem_ptr, warp_row0, tid, lane);
  } else {
    NarrowEpilogue<Tr, Path, kSplit>(warp, io, kv_smem_ptr, warp_id, tid, lane);
  }
}

template <class Tr, bool kCausal, bool kPaged, bool kSplit>
__global__ void __launch_bounds__(Tr::kThreads)
    AttentionKernel(const __grid_constant__ AttentionParams p) {
  extern __shared__ __align__(128) char smem[];
  CtaTile tile;
  const int b = p.seq_offset + static_cast<int>(blockIdx.z);
  tile.seq = LoadSequence(p, b);
  const int m_block = kCausal ? static_cast<int>(gridDim.x - 1 - blockIdx.x)
                              : static_cast<int>(blockIdx.x);
  const int head_group = kSplit ? static_cast<int>(blockIdx.y) / p.num_splits
                                : static_cast<int>(blockIdx.y);
  tile.split = kSplit ? static_cast<int>(blockIdx.y) % p.num_splits : 0;
  const int q_rows = tile.seq.q_len * p.pack;
  tile.row0 = m_block * Tr::kBlockM;
  if (tile.row0 >= q_rows) return;
  tile.head_base = head_group * p.pack;
  tile.head_kv = tile.head_base / p.group;
  if (q_rows <= kNarrowRows) {
    tile.rows = q_rows;
    RunTile<Tr, kCausal, kPaged, kSplit, /*kWide=*/false>(p, tile, smem);
  } else {
    tile.rows = min(Tr::kBlockM, q_rows - tile.row0);
    RunTile<Tr, kCausal, kPaged, kSplit, /*kWide=*/true>(p, tile, smem);
  }
}

}  // namespace flashkv::cuda::sm80

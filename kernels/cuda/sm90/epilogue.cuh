#pragma once

// End of one consumer warpgroup's tile: normalise O, write LSE, stage O (16-bit, swizzled like Q)
// in the warpgroup's rows of the O buffer (its own, or Q's space: Traits::kSeparateO), and store
// it: one TMA store per 64-column chunk, or, for varlen rows that end inside the warpgroup's 64
// (the next sequence's rows follow in memory), 16-byte stores of the valid rows.
// With a separate O buffer the TMA stores are left in flight; the next tile's epilogue waits for
// them to have read the buffer before overwriting it. Sharing Q's space, the stores are waited
// for here and Q's space is then released to the producer (q_free).

#include <cstdint>

#include "attention_params.h"
#include "sm90/consumer_mainloop.cuh"
#include "sm90/params.h"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"
#include "sm90/tile_scheduler.cuh"

namespace flashkv::cuda::sm90 {

// Flips the sign of the warpgroup's Q rows (a negative softmax scale: the softmax then works on
// raw maxima as for a positive one). Generic stores that wgmma reads next: fence, then barrier.
template <class Tr>
__device__ __forceinline__ void NegateQ(const Smem<Tr>& smem, int wg, int tid) {
  char* rows = smem.base_ptr + Tr::kQOffset + wg * Tr::kRowsPerConsumer * Tr::kChunkRowBytes;
  constexpr int kUnits = Tr::kRowsPerConsumer * Tr::kChunkRowBytes / 16;  // per chunk
  static_assert(kUnits % 128 == 0, "units divide among the warpgroup");
#pragma unroll
  for (int c = 0; c < Tr::kChunks; ++c) {
#pragma unroll
    for (int i = 0; i < kUnits / 128; ++i) {
      uint4* unit = reinterpret_cast<uint4*>(rows + c * Tr::kQChunkBytes + 16 * (tid + 128 * i));
      uint4 v = *unit;
      v.x ^= 0x80008000u;
      v.y ^= 0x80008000u;
      v.z ^= 0x80008000u;
      v.w ^= 0x80008000u;
      *unit = v;
    }
  }
  FenceProxyAsyncShared();
  NamedBarrierSync(kWarpgroupBarrier + wg, 128);
}

template <class Tr, bool kVarlen, bool kLazyRescale>
__device__ __forceinline__ void StoreTile(ConsumerMainloop<Tr, kLazyRescale>& ml,
                                          const Sm90Params& params,
                                          const Smem<Tr>& smem, const WorkTile& w, int wg,
                                          int tid) {
  using Element = typename Tr::Element;
  const AttentionParams& p = params.p;
  const int lane = tid % 32;
  const int t = lane % 4;
  const int row = 16 * (tid / 32) + lane / 4;        // this thread's first row in the group's 64
  const int first_token = w.row0 + wg * Tr::kRowsPerConsumer;

  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    RowState& r = ml.rows[h];
    r.sum = QuadSum(r.sum);
    inv[h] = r.sum > 0.f ? 1.f / r.sum : 0.f;
    const int token = first_token + row + 8 * h;
    if (t == 0 && p.lse != nullptr && token < w.seq.q_len) {
      p.lse[w.seq.lse_offset + w.head * p.lse_head_stride + token] = r.Lse();
    }
  }

  const uint32_t rows_addr =
      smem.O() + wg * Tr::kRowsPerConsumer * Tr::kChunkRowBytes;  // group's row 0, chunk 0
  char* rows_ptr = smem.base_ptr + (rows_addr - smem.base);
  if constexpr (Tr::kSeparateO) {
    // The previous tile's O stores (issued by this thread) must have read the buffer.
    if (tid == 0) TmaStoreWaitRead();
    NamedBarrierSync(kWarpgroupBarrier + wg, 128);
  }
  // Row r's 16-byte unit u sits at unit u ^ (r % 8) (sm90/traits.cuh). Rows start on 128-byte
  // boundaries and units are 16 bytes, so with A = row start | ((r % 8) << 4) | 4t the pair of
  // unit u is at A ^ (u << 4), plus the chunk's offset: one XOR with an immediate per store,
  // instead of 64 swizzled addresses held beside O (which spilled at head dim 256).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row + 8 * h;
    const uint32_t a = (rows_addr + r * Tr::kChunkRowBytes) | ((r % 8) << 4) | (4 * t);
#pragma unroll
    for (int j = 0; j < Tr::kHeadDim / 8; ++j) {
      const uint32_t pair = PackPair<Element>(ml.o[4 * j + 2 * h] * inv[h],
                                              ml.o[4 * j + 2 * h + 1] * inv[h]);
      StoreShared32((a ^ ((j % 8) << 4)) + (j / 8) * Tr::kQChunkBytes, pair);
    }
  }
  FenceProxyAsyncShared();
  NamedBarrierSync(kWarpgroupBarrier + wg, 128);

  const bool whole_rows = !kVarlen || first_token + Tr::kRowsPerConsumer <= w.seq.q_len;
  if (whole_rows) {
    // Fixed layout: rows past seqlen_q lie outside the tensor map's row extent and are dropped.
    if (tid == 0) {
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c) {
        const uint32_t src = rows_addr + c * Tr::kQChunkBytes;
        if constexpr (kVarlen) {
          TmaStore3d(&params.o_map, src, 64 * c, static_cast<int>(w.seq.token_begin + first_token),
                     w.head);
        } else {
          TmaStore4d(&params.o_map, src, 64 * c, first_token, w.head, w.batch);
        }
      }
      TmaStoreCommit();
      if constexpr (!Tr::kSeparateO) {
        TmaStoreWaitRead();
        MbarrierArrive(smem.QFree());
      }
    }
    __syncwarp();
    return;
  }
  constexpr int kUnitsPerRow = Tr::kHeadDim / 8;
  Element* out = static_cast<Element*>(p.out) + w.seq.out_offset + w.head * p.out_head_stride;
  for (int idx = tid; idx < Tr::kRowsPerConsumer * kUnitsPerRow; idx += 128) {
    const int r = idx / kUnitsPerRow;
    const int u = idx - r * kUnitsPerRow;
    const int token = first_token + r;
    if (token < w.seq.q_len) {
      *reinterpret_cast<uint4*>(out + token * p.out_row_stride + 8 * u) =
          *reinterpret_cast<const uint4*>(rows_ptr +
                                          Tr::template UnitOffset<Tr::kQChunkBytes>(r, u));
    }
  }
  if constexpr (!Tr::kSeparateO) {
    NamedBarrierSync(kWarpgroupBarrier + wg, 128);  // every thread's reads of Q's space are done
    if (tid == 0) MbarrierArrive(smem.QFree());
    __syncwarp();
  }
  // (A separate O buffer is next written after the barrier that opens the next epilogue.)
}

// Stream-K: a tile whose keys two CTAs share (w.shared_slot >= 0; sm90/tile_scheduler.cuh). Each
// of its two work items writes this warpgroup's partial (O accumulators and row states, straight
// from the registers: the other item's thread of the same warpgroup and rank holds the same rows
// and columns) to its side's slot, then counts itself in; the second to arrive reads the other
// side's partial, merges it into its registers and returns true (it stores the tile); the first
// returns false. Nobody waits for the other side: it may not be running yet (the grid shares
// the GPU with other kernels), and whichever finishes second has both partials.
// Memory order: every thread's partial stores, __threadfence, the warpgroup barrier, then one
// atomic arrival (release); the second arrival's reads go through L2 (__ldcg) after it.
template <class Tr, bool kLazyRescale>
__device__ __forceinline__ bool MergeSharedTile(ConsumerMainloop<Tr, kLazyRescale>& ml,
                                                const Sm90Params& params, const Smem<Tr>& smem,
                                                const WorkTile& w, int wg, int tid) {
  constexpr int kFloats = Tr::kORegs + 4;  // per thread: O, then max and sum of both rows
  auto slot = [&](int side) {
    const int64_t index =
        (int64_t{w.shared_slot} * 2 + side) * Tr::kConsumerWarpgroups + wg;
    return params.sk_partials + index * kFloats * 128 + tid;
  };
  float* mine = slot(w.side);
#pragma unroll
  for (int i = 0; i < Tr::kORegs; ++i) mine[i * 128] = ml.o[i];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mine[(Tr::kORegs + 2 * h) * 128] = ml.rows[h].max;
    mine[(Tr::kORegs + 2 * h + 1) * 128] = ml.rows[h].sum;
  }
  __threadfence();
  NamedBarrierSync(kWarpgroupBarrier + wg, 128);
  if (tid == 0) {
    *smem.ArrivalSlot(wg) =
        atomicAdd(params.sk_arrivals + w.shared_slot * Tr::kConsumerWarpgroups + wg, 1);
  }
  NamedBarrierSync(kWarpgroupBarrier + wg, 128);
  if (*smem.ArrivalSlot(wg) == 0) return false;
  __threadfence();
  const float* other = slot(1 - w.side);
  float mine_scale[2], other_scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    RowState& row = ml.rows[h];
    const RowState theirs{__ldcg(other + (Tr::kORegs + 2 * h) * 128),
                          __ldcg(other + (Tr::kORegs + 2 * h + 1) * 128)};
    const float my_max = row.max;
    row.Merge(theirs);
    // Each half of O by the factor Merge applied to its sum (the same reference rule).
    const float reference = row.max == -INFINITY ? 0.f : row.max;
    mine_scale[h] = Exp2Approx(my_max - reference);
    other_scale[h] = Exp2Approx(theirs.max - reference);
  }
#pragma unroll
  for (int i = 0; i < Tr::kORegs; ++i) {
    const int h = (i % 4) / 2;  // accumulator pairs alternate rows g and g + 8
    ml.o[i] = ml.o[i] * mine_scale[h] + __ldcg(other + i * 128) * other_scale[h];
  }
  return true;
}

}  // namespace flashkv::cuda::sm90

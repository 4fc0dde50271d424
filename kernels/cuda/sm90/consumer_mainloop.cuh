#pragma once

// One consumer warpgroup's share of a tile: 64 query rows against the tile's key tiles, with
// S = Q K^T and O += P V on wgmma and the online softmax in registers.
//
// Schedule of one key tile (FlashAttention-3's intra-warpgroup overlap and ping-pong):
//   wait K[i] landed
//   [my turn]  issue S = Q K[i]^T; issue O += P[i-1] V[i-1]   [hand the turn to the other group]
//   wait S (the P V product keeps running), release K[i]
//   mask + softmax of S -> P[i] (float, in S's registers) while P[i-1] V[i-1] and the other
//     group's two GEMMs run on the tensor cores
//   wait P V, release V[i-1]; rescale O; round P[i] to 16 bits (P[i-1]'s registers are free now)
// Under Sm90Variant::kLazyRescale a warp skips the rescale of O when none of its rows' softmax
// references moved (LazyRowUpdate).
// Within the group, S of tile i is issued together with the P V of tile i-1, so that product
// runs under tile i's softmax (FlashAttention-3, Algorithm 2). The turn (one named barrier per
// group) makes the groups issue their GEMMs in rotation (0, 1[, 2], 0, ...), so one group's
// softmax also overlaps the other groups' GEMMs. Every GEMM batch takes one turn, so every group
// takes the same number of turns per tile (key_tiles + 1) and the hand-over never deadlocks; a
// group hands over to the next in the rotation only, so a barrier holds at most one pending
// hand-over.
//
// Q: with O in its own buffer (Traits::kSeparateO), each warp releases Q as soon as its last
// S = Q K^T of the tile (key tile key_begin) is complete, so the producer loads the next tile's Q under
// this tile's last softmax, last P V and epilogue rather than after them (at S = 1024, D = 128 a
// tile is ~18 us on an H100 and a Q load ~1 us of latency the consumers waited out).
//
// Paged K/V: the first key tile of a tile (the last in key order) may end past the sequence's
// last key; its K rows there are masked, and its V rows there are zeroed by consumer 0 before
// either group's P V reads them (ZeroVRowsPast).

#include <cstdint>

#include "sm80/ptx.cuh"
#include "sm80/warp_mainloop.cuh"
#include "sm90/ptx.cuh"
#include "sm90/smem.cuh"
#include "sm90/traits.cuh"
#include "sm90/wgmma.cuh"

namespace flashkv::cuda::sm90 {

using sm80::Exp2Approx;
using sm80::PackPair;
using sm80::QuadMax;
using sm80::QuadSum;
using sm80::RowState;

// The warp's lane 0 releases a stage once the whole warp's wgmma reads of it are done.
__device__ __forceinline__ void ReleaseStage(uint32_t bar, int lane) {
  if (lane == 0) MbarrierArrive(bar);
  __syncwarp();
}

// Sm90Variant::kLazyRescale's update of one row by a key tile's maximum raw score
// (FlashAttention-4's conditional rescale). The row's reference (row.max) moves, to the tile's
// maximum, only when that exceeds it by more than kLazyRescaleLog2; `correction` is then
// 2^(old - new), applied here to the sum and by the caller to O, else 1. Returns whether it moved; `reference` is what this tile's
// exponents are taken against.
// Exact: the reference m is always a maximum the row has seen, and every tile's maximum is at most
// m + kLazyRescaleLog2, so m <= M <= m + 8 for the row's true maximum M: probabilities 2^(x - m)
// stay <= 2^8 and are never smaller than the baseline's 2^(x - M). O and the sum carry the same
// factor 2^-m, which O / sum cancels, and LSE = m + log2(sum) = log2(sum over keys of 2^x) for
// any m. A row with no key yet has m = -inf: its first tile with a key moves it (-inf + 8 is
// -inf; the correction 2^-inf = 0 falls on an O and a sum that are still 0), a tile whose keys
// are all masked does not (exponents against 0: 2^-inf = 0), and a row that never sees a key
// ends with sum 0 (O = 0, LSE = -inf), as in RowState::Update.
__device__ __forceinline__ bool LazyRowUpdate(RowState& row, float tile_max_raw, float scale_log2,
                                              float* reference, float* correction) {
  const float tile_max = tile_max_raw == -INFINITY ? -INFINITY : tile_max_raw * scale_log2;
  const bool moved = tile_max > row.max + kLazyRescaleLog2;
  *correction = 1.f;
  if (moved) {
    *correction = Exp2Approx(row.max - tile_max);
    row.sum *= *correction;
    row.max = tile_max;
  }
  *reference = row.max == -INFINITY ? 0.f : row.max;
  return moved;
}

// kLazyRescale: Sm90Variant::kLazyRescale (LazyRowUpdate; RescaleO only where a row moved).
template <class Tr, bool kLazyRescale = false>
struct ConsumerMainloop {
  using Element = typename Tr::Element;

  float o[Tr::kORegs];           // (64, head_dim) accumulator of the warpgroup
  float s[Tr::kSRegs];           // (64, block_n) scores, then probabilities
  uint32_t p[Tr::kPVSteps][4];   // (64, block_n) probabilities as 16-bit A fragments
  RowState rows[2];              // this thread's rows: g and g + 8 of its warp's 16

  // Pins the registers of the operands around wgmma issue and wait points (CUTLASS's
  // warpgroup_fence_operand): without it the compiler may place copies of them between the
  // wgmma.fence and the wgmma, and ptxas then injects its own fence (or serialises the wgmmas).
  __device__ __forceinline__ void PinS() {
#pragma unroll
    for (int i = 0; i < Tr::kSRegs; ++i) PinRegister(s[i]);
  }
  __device__ __forceinline__ void PinO() {
#pragma unroll
    for (int i = 0; i < Tr::kORegs; ++i) PinRegister(o[i]);
  }
  __device__ __forceinline__ void PinP() {
#pragma unroll
    for (int kk = 0; kk < Tr::kPVSteps; ++kk) {
#pragma unroll
      for (int e = 0; e < 4; ++e) PinRegister(p[kk][e]);
    }
  }

  __device__ __forceinline__ void Init() {
#pragma unroll
    for (int i = 0; i < Tr::kORegs; ++i) o[i] = 0.f;
    rows[0] = RowState{};
    rows[1] = RowState{};
  }

  // q_rows: shared address of the warpgroup's first Q row in chunk 0. The base descriptors go
  // through an opaque move each time, so the compiler derives the per-step descriptors here
  // instead of hoisting all of them out of the key loop (16 x 64-bit registers at head dim 256,
  // which made the consumers spill).
  __device__ __forceinline__ void IssueQK(uint32_t q_rows, uint32_t k_tile) {
    uint64_t q_desc = Tr::KMajorDescriptor(q_rows);
    uint64_t k_desc = Tr::KMajorDescriptor(k_tile);
    asm volatile("" : "+l"(q_desc), "+l"(k_desc));
#pragma unroll
    for (int kk = 0; kk < Tr::kQKSteps; ++kk) {
      WgmmaSS<Element, Tr::kBlockN>(s, q_desc + Tr::template KStep<Tr::kQChunkBytes>(kk),
                                    k_desc + Tr::template KStep<Tr::kKvChunkBytes>(kk),
                                    kk == 0 ? 0 : 1);
    }
  }

  __device__ __forceinline__ void IssuePV(uint32_t v_tile) {
    uint64_t v_desc = Tr::VDescriptor(v_tile);
    asm volatile("" : "+l"(v_desc));
#pragma unroll
    for (int kk = 0; kk < Tr::kPVSteps; ++kk) {
      WgmmaRS<Element, Tr::kHeadDim>(o, p[kk], v_desc + Tr::VStep(kk), 1);
    }
  }

  // Removes keys at or past each row's limit (only tail and causal-diagonal tiles are `masked`),
  // then folds the tile into the running softmax: P = 2^(S * scale_log2 - reference).
  // `key0` is the tile's first key relative to the limits; t = lane % 4. Returns whether O must
  // be rescaled by `correction`: always, except under kLazyRescale, where the warp votes and
  // skips it when none of its 16 rows moved. The row decisions are already the same across the
  // four threads of a row (QuadMax); the warp is the granularity at which the skip is a uniform
  // branch: per thread, the warp would still issue every multiply when any lane needed them and
  // would pay for divergence; per warpgroup, it would need a barrier and would skip less often.
  __device__ __forceinline__ bool Softmax(bool masked, int key0, int limit0, int limit1,
                                          float scale_log2, int t, float (&correction)[2]) {
    if (masked) {
#pragma unroll
      for (int j = 0; j < Tr::kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + 8 * j + 2 * t + (e & 1);
          if (key >= (e < 2 ? limit0 : limit1)) s[4 * j + e] = -INFINITY;
        }
      }
    }
    bool moved = false;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < Tr::kBlockN / 8; ++j) {
        tile_max = fmaxf(tile_max, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
      }
      float reference;
      if constexpr (kLazyRescale) {
        moved |= LazyRowUpdate(rows[h], QuadMax(tile_max), scale_log2, &reference, &correction[h]);
      } else {
        correction[h] = rows[h].Update(QuadMax(tile_max), scale_log2, &reference);
      }
      float partial = 0.f;
#pragma unroll
      for (int j = 0; j < Tr::kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          s[4 * j + e] = Exp2Approx(fmaf(s[4 * j + e], scale_log2, -reference));
          partial += s[4 * j + e];
        }
      }
      rows[h].sum += partial;
    }
    if constexpr (kLazyRescale) {
      return __any_sync(0xffffffffu, moved);
    } else {
      return true;
    }
  }

  __device__ __forceinline__ void RescaleO(const float (&correction)[2]) {
#pragma unroll
    for (int j = 0; j < Tr::kHeadDim / 8; ++j) {
      o[4 * j + 0] *= correction[0];
      o[4 * j + 1] *= correction[0];
      o[4 * j + 2] *= correction[1];
      o[4 * j + 3] *= correction[1];
    }
  }

  // Two adjacent 8-key accumulator blocks are one k-step of the A fragment (see sm90/wgmma.cuh).
  __device__ __forceinline__ void ConvertP() {
#pragma unroll
    for (int kk = 0; kk < Tr::kPVSteps; ++kk) {
      p[kk][0] = PackPair<Element>(s[8 * kk + 0], s[8 * kk + 1]);
      p[kk][1] = PackPair<Element>(s[8 * kk + 2], s[8 * kk + 3]);
      p[kk][2] = PackPair<Element>(s[8 * kk + 4], s[8 * kk + 5]);
      p[kk][3] = PackPair<Element>(s[8 * kk + 6], s[8 * kk + 7]);
    }
  }
};

// Paged K/V: V rows [keys, block_n) of a stage hold no key of the sequence (page slots past its
// end, or boxes the producer did not load): any bits, NaN included. P is 0 there, but 0 x NaN
// is NaN, so they are zeroed. Consumer 0 does it after its first S = Q K^T of the tile and
// before its turn for the first P V; every other consumer's first P V comes in its next turn,
// which the rotation opens only after consumer 0's hand-over (after these stores and their proxy
// fence): directly for consumer 1, through consumer 1's for consumer 2. Generic stores that
// wgmma reads: fence.proxy.async in every writing thread, then the warpgroup barrier.
template <class Tr>
__device__ __forceinline__ void ZeroVRowsPast(const Smem<Tr>& smem, int stage, int keys, int wg,
                                              int tid) {
  char* v = smem.base_ptr + (smem.V(stage) - smem.base) + keys * Tr::kChunkRowBytes;
  const int units = (Tr::kBlockN - keys) * (Tr::kChunkRowBytes / 16);  // per chunk
#pragma unroll
  for (int c = 0; c < Tr::kChunks; ++c) {
    for (int i = tid; i < units; i += 128) {
      *reinterpret_cast<uint4*>(v + c * Tr::kKvChunkBytes + 16 * i) = make_uint4(0, 0, 0, 0);
    }
  }
  FenceProxyAsyncShared();
  NamedBarrierSync(kWarpgroupBarrier + wg, 128);
}

// Runs the key tiles [key_begin, key_end) of one tile, last first, for consumer warpgroup `wg`
// (a tile's whole range is [0, key_tiles); a stream-K item's may be part of it).
// `pipe` is the CTA-wide position in the K and V rings (the producer's counts, which reach the
// same values: one K and one V per key tile); row limits are
// exclusive key ends of this thread's two rows; `unmasked_below` is the smallest limit of the
// warpgroup's rows (tiles entirely below it need no mask); `kv_len` the sequence's keys (paged:
// V rows past it are zeroed); tid = thread in the warpgroup.
template <class Tr, bool kLazyRescale>
__device__ __forceinline__ void RunKeyTiles(ConsumerMainloop<Tr, kLazyRescale>& ml,
                                            const Smem<Tr>& smem,
                                            KvPipelineState<Tr>& pipe, int key_begin,
                                            int key_end, int wg,
                                            int limit0, int limit1, int unmasked_below, int kv_len,
                                            float scale_log2, int tid) {
  const int lane = tid % 32;
  const int my_turn = kTurnBarrier + wg;
  const int next_turn = kTurnBarrier + (wg + 1) % Tr::kConsumerWarpgroups;
  const int t = lane % 4;
  const uint32_t q_rows = smem.Q() + wg * Tr::kRowsPerConsumer * Tr::kChunkRowBytes;
  auto masked = [&](int n) { return (n + 1) * Tr::kBlockN > unmasked_below; };
  float correction[2];

  // First key tile: S only.
  int n = key_end - 1;
  int k_stage = pipe.K().Stage();
  MbarrierWait(smem.KFull(k_stage), pipe.K().Phase());
  NamedBarrierSync(my_turn, kTurnThreads);
  ml.PinS();
  WgmmaFence();
  ml.IssueQK(q_rows, smem.K(k_stage));
  WgmmaCommit();
  NamedBarrierArrive(next_turn, kTurnThreads);
  WgmmaWait<0>();
  ml.PinS();
  ReleaseStage(smem.KEmpty(k_stage), lane);
  if (Tr::kSeparateO && n == key_begin) ReleaseStage(smem.QFree(), lane);
  ml.Softmax(masked(n), n * Tr::kBlockN, limit0, limit1, scale_log2, t, correction);
  ml.ConvertP();
  if constexpr (Tr::kPaged) {
    const int keys = kv_len - n * Tr::kBlockN;  // keys of the sequence in this tile
    if (wg == 0 && keys < Tr::kBlockN) {
      MbarrierWait(smem.VFull(pipe.V().Stage()), pipe.V().Phase());
      ZeroVRowsPast(smem, pipe.V().Stage(), keys, wg, tid);
    }
  }
  // V's stage and phase of the previous key tile (its P V is issued with the next tile's S).
  int prev_stage = pipe.V().Stage();
  uint32_t prev_phase = pipe.V().Phase();
  ++pipe.it;

  for (int i = 1; i < key_end - key_begin; ++i, ++pipe.it) {
    n = key_end - 1 - i;
    k_stage = pipe.K().Stage();
    MbarrierWait(smem.KFull(k_stage), pipe.K().Phase());
    NamedBarrierSync(my_turn, kTurnThreads);
    ml.PinS();
    ml.PinO();
    ml.PinP();
    WgmmaFence();
    ml.IssueQK(q_rows, smem.K(k_stage));
    WgmmaCommit();
    MbarrierWait(smem.VFull(prev_stage), prev_phase);
    WgmmaFence();  // the wait's loop ends the previous fence's region for ptxas
    ml.IssuePV(smem.V(prev_stage));
    WgmmaCommit();
    NamedBarrierArrive(next_turn, kTurnThreads);
    WgmmaWait<1>();  // S of this tile
    ml.PinS();
    ReleaseStage(smem.KEmpty(k_stage), lane);
    if (Tr::kSeparateO && n == key_begin) ReleaseStage(smem.QFree(), lane);
    const bool rescale =
        ml.Softmax(masked(n), n * Tr::kBlockN, limit0, limit1, scale_log2, t, correction);
    WgmmaWait<0>();  // P V of the previous tile
    ml.PinO();
    ml.PinP();
    ReleaseStage(smem.VEmpty(prev_stage), lane);
    if (rescale) ml.RescaleO(correction);
    ml.ConvertP();
    prev_stage = pipe.V().Stage();
    prev_phase = pipe.V().Phase();
  }

  // Last P V.
  MbarrierWait(smem.VFull(prev_stage), prev_phase);
  NamedBarrierSync(my_turn, kTurnThreads);
  ml.PinO();
  ml.PinP();
  WgmmaFence();
  ml.IssuePV(smem.V(prev_stage));
  WgmmaCommit();
  NamedBarrierArrive(next_turn, kTurnThreads);
  WgmmaWait<0>();
  ml.PinO();
  ReleaseStage(smem.VEmpty(prev_stage), lane);
}

}  // namespace flashkv::cuda::sm90

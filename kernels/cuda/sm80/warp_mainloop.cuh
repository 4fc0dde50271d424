#pragma once

// One warp's share of a flash-attention tile on sm80 tensor cores: S = Q K^T for its rows and
// keys, online softmax in the log2 domain, O += P V. Used by both paths of the kernel (wide:
// the warp owns 16 * kMmaM rows and all keys; narrow: 16 rows and a slice of the keys).
//
// Fragment layouts (PTX ISA, mma.m16n8k16): with g = lane / 4 and t = lane % 4, an accumulator
// tile holds rows g (elements 0, 1) and g + 8 (elements 2, 3) at columns 2t and 2t + 1. Two
// adjacent 8-column accumulator tiles, rounded to 16 bits, are exactly the A fragment of the next
// MMA, so P never leaves registers.

#include <cfloat>
#include <cstdint>

#include "sm80/ptx.cuh"
#include "sm80/traits.cuh"

namespace flashkv::cuda::sm80 {

// Per-thread online-softmax state of one row: running maximum of the scaled scores (log2 domain)
// and this thread's partial sum of exponentials (the quad's four partials are added at the end).
struct RowState {
  float max = -INFINITY;
  float sum = 0.f;

  // Folds in the maximum raw score of a new tile; returns the factor that rescales what was
  // accumulated so far, and sets `reference` to the value exponents are taken against.
  __device__ __forceinline__ float Update(float tile_max_raw, float scale_log2, float* reference) {
    const float tile_max = tile_max_raw == -INFINITY ? -INFINITY : tile_max_raw * scale_log2;
    const float new_max = fmaxf(max, tile_max);
    // A row that has seen only masked keys keeps max = -inf; exponents are then taken against 0
    // so that -inf - reference stays -inf (probability 0) instead of NaN.
    *reference = new_max == -INFINITY ? 0.f : new_max;
    const float correction = Exp2Approx(max - *reference);
    max = new_max;
    sum *= correction;
    return correction;
  }

  // Merges another partial state of the same row (a narrow-path warp, or a split) into this one.
  __device__ __forceinline__ void Merge(const RowState& other) {
    const float new_max = fmaxf(max, other.max);
    const float reference = new_max == -INFINITY ? 0.f : new_max;
    sum = sum * Exp2Approx(max - reference) + other.sum * Exp2Approx(other.max - reference);
    max = new_max;
  }

  // Natural-log LSE of the scaled scores; -inf for a row that saw no key.
  __device__ __forceinline__ float Lse() const {
    return sum > 0.f ? (max + __log2f(sum)) * 0.6931471805599453f : -INFINITY;
  }
};

__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <class Tr, int kMmaM, int kCols, bool kQInRegisters>
struct WarpMainloop {
  using Element = typename Tr::Element;
  static constexpr int kHeadDim = Tr::kHeadDim;
  static constexpr int kKSteps = kHeadDim / 16;  // MMA steps over the head dim (S = Q K^T)
  static constexpr int kDTiles = kHeadDim / 8;   // 8-column accumulator tiles of O
  static constexpr int kNTiles = kCols / 8;      // 8-column accumulator tiles of S
  static_assert(kCols % 16 == 0, "the P V product steps over keys 16 at a time");

  float o[kMmaM][kDTiles][4];                                  // (16*kMmaM, kHeadDim) per warp
  RowState rows[kMmaM][2];                                     // rows g and g + 8 of each tile
  uint32_t q_frag[kQInRegisters ? kMmaM : 1][kQInRegisters ? kKSteps : 1][4];

  __device__ __forceinline__ void Init() {
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
      for (int d = 0; d < kDTiles; ++d) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mi][d][e] = 0.f;
      }
      rows[mi][0] = RowState{};
      rows[mi][1] = RowState{};
    }
  }

  // ldmatrix offsets of this lane (see SmemTile::PrepareLdsm). Q x4 (A fragment): lanes 0-15
  // address rows 0-15 of a 16-row tile, lanes 16-31 the same rows' upper 8 dims of the step.
  // K x4 (B fragments of two 8-key tiles, non-transposed since K is [key, dim]): lanes 0-15
  // address keys 0-7, lanes 16-31 keys 8-15, (lane / 8) % 2 the upper 8 dims. V x4 (transposed,
  // V is [key, dim] = row-major B): keys 0-15 of the step by lane % 16, two 8-dim tiles by lane / 16.
  typename Tr::QTile::LdsmOffsets q_offsets;
  typename Tr::KvTile::LdsmOffsets k_offsets;
  typename Tr::KvTile::LdsmOffsets v_offsets;

  __device__ __forceinline__ void PrepareAddresses(int row0, int col0, int lane) {
    q_offsets = Tr::QTile::PrepareLdsm(row0 + lane % 16, lane / 16);
    k_offsets = Tr::KvTile::PrepareLdsm(col0 + (lane / 16) * 8 + lane % 8, (lane / 8) % 2);
    v_offsets = Tr::KvTile::PrepareLdsm(col0 + lane % 16, lane / 16);
  }

  // A fragment of Q rows [row0 + 16 mi, +16) for head-dim step kk, from shared memory.
  __device__ __forceinline__ void LoadQFragment(uint32_t (&a)[4], uint32_t q_smem, int mi,
                                                int kk) const {
    Ldmatrix4(a, q_smem + Tr::QTile::Ldsm(q_offsets, 16 * mi, kk));
  }

  __device__ __forceinline__ void LoadQToRegisters(uint32_t q_smem) {
    if constexpr (kQInRegisters) {
#pragma unroll
      for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) LoadQFragment(q_frag[mi][kk], q_smem, mi, kk);
      }
    }
  }

  // One K/V tile: keys [col0, col0 + kCols) of the tile in shared memory, whose first key is
  // key `tile_key0` of the sequence. When `masked` (tail and causal-diagonal tiles only), keys at
  // or past key_limit(row) are removed, row being this warp's row (0 .. 16*kMmaM-1).
  template <class KeyLimitFn>
  __device__ __forceinline__ void Step(uint32_t q_smem, uint32_t k_smem, uint32_t v_smem,
                                       int col0, int tile_key0, bool masked,
                                       const KeyLimitFn& key_limit, float scale_log2, int lane) {
    float s[kMmaM][kNTiles][4];  // (16*kMmaM, kCols) scores
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mi][j][e] = 0.f;
      }
    }

    // S = Q K^T.
    // The fragments of head-dim step kk + 1 are requested before the MMAs of step kk, so the
    // ldmatrix latency hides behind tensor-core work (registers: two steps of A and B fragments).
    uint32_t a[2][kMmaM][4];
    uint32_t b[2][kNTiles / 2][4];
    auto load_step = [&](int kk, int buf) {
#pragma unroll
      for (int mi = 0; mi < kMmaM; ++mi) {
        if constexpr (kQInRegisters) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[buf][mi][e] = q_frag[mi][kk][e];
        } else {
          LoadQFragment(a[buf][mi], q_smem, mi, kk);
        }
      }
#pragma unroll
      for (int nj = 0; nj < kNTiles / 2; ++nj) {
        Ldmatrix4(b[buf][nj], k_smem + Tr::KvTile::Ldsm(k_offsets, 16 * nj, kk));
      }
    };
    load_step(0, 0);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      if (kk + 1 < kKSteps) load_step(kk + 1, (kk + 1) % 2);
#pragma unroll
      for (int nj = 0; nj < kNTiles / 2; ++nj) {
#pragma unroll
        for (int mi = 0; mi < kMmaM; ++mi) {
          Mma16816<Element>(s[mi][2 * nj], a[kk % 2][mi], b[kk % 2][nj][0], b[kk % 2][nj][1]);
          Mma16816<Element>(s[mi][2 * nj + 1], a[kk % 2][mi], b[kk % 2][nj][2], b[kk % 2][nj][3]);
        }
      }
    }

    if (masked) {
      const int t = lane % 4;
#pragma unroll
      for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int limit = key_limit(16 * mi + 8 * h + lane / 4);
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
            for (int e = 2 * h; e < 2 * h + 2; ++e) {
              const int key = tile_key0 + col0 + 8 * j + 2 * t + (e & 1);
              if (key >= limit) s[mi][j][e] = -INFINITY;
            }
          }
        }
      }
    }

    // Online softmax: rescale what was accumulated, then P = 2^(S * scale_log2 - reference).
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          tile_max = fmaxf(tile_max, fmaxf(s[mi][j][2 * h], s[mi][j][2 * h + 1]));
        }
        float reference;
        const float correction = rows[mi][h].Update(QuadMax(tile_max), scale_log2, &reference);
        // Once the running maxima settle, most tiles change no row's maximum: skip the 2 x head_dim
        // multiplies then (a warp-uniform test, so no divergence). This also freed the registers
        // whose lack made ptxas spill the wide path's accumulators.
        if (__any_sync(0xffffffffu, correction != 1.f)) {
#pragma unroll
          for (int d = 0; d < kDTiles; ++d) {
            o[mi][d][2 * h] *= correction;
            o[mi][d][2 * h + 1] *= correction;
          }
        }
        float partial = 0.f;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
          for (int e = 2 * h; e < 2 * h + 2; ++e) {
            s[mi][j][e] = Exp2Approx(fmaf(s[mi][j][e], scale_log2, -reference));
            partial += s[mi][j][e];
          }
        }
        rows[mi][h].sum += partial;
      }
    }

    // O += P V. P is packed to 16-bit pairs first (all of it, before any MMA), so that the float
    // scores die here instead of staying live across the P V MMAs (32 registers: no spills).
    uint32_t pa[kMmaM][kCols / 16][4];
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi) {
#pragma unroll
      for (int kk = 0; kk < kCols / 16; ++kk) {
        pa[mi][kk][0] = PackPair<Element>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        pa[mi][kk][1] = PackPair<Element>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        pa[mi][kk][2] = PackPair<Element>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        pa[mi][kk][3] = PackPair<Element>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kCols / 16; ++kk) {
#pragma unroll
      for (int dj = 0; dj < kDTiles / 2; ++dj) {
        uint32_t b[4];
        Ldmatrix4Trans(b, v_smem + Tr::KvTile::Ldsm(v_offsets, 16 * kk, dj));
#pragma unroll
        for (int mi = 0; mi < kMmaM; ++mi) {
          Mma16816<Element>(o[mi][2 * dj], pa[mi][kk], b[0], b[1]);
          Mma16816<Element>(o[mi][2 * dj + 1], pa[mi][kk], b[2], b[3]);
        }
      }
    }
  }

  // Adds the quad's partial sums, so that every lane of a quad holds its rows' full sums.
  __device__ __forceinline__ void ReduceRowSums() {
#pragma unroll
    for (int mi = 0; mi < kMmaM; ++mi) {
      rows[mi][0].sum = QuadSum(rows[mi][0].sum);
      rows[mi][1].sum = QuadSum(rows[mi][1].sum);
    }
  }

  __device__ __forceinline__ void ScaleOutput(int mi, int h, float factor) {
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      o[mi][d][2 * h] *= factor;
      o[mi][d][2 * h + 1] *= factor;
    }
  }
};

}  // namespace flashkv::cuda::sm80

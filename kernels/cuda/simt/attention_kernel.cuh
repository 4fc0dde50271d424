#pragma once

// The SIMT attention kernel: float32 arithmetic on CUDA cores, scalar loads, any alignment.
// It is the fp32 path (accurate to float32: scores, softmax and P V all in float32 FMA, exp2f
// without fast-math), the fallback for 16-bit tensors whose pointers or strides are not 16-byte
// aligned (cp.async needs that), and the plain reference the tensor-core kernel is tested against
// on sizes where a float64 CPU reference would be too slow.
//
// CTA: 4 warps, 16 query rows of one head (4 per warp), key tiles of 32 in shared memory.
// Scores: lane j computes row r's score against key j (K rows padded by one float, so the 32
// lanes read 32 banks). P V: lane owns head-dim columns lane + 32 i, broadcasting p_j with a
// shuffle.

#include <cstdint>

#include "attention_params.h"
#include "element.cuh"
#include "sequence.cuh"

namespace flashkv::cuda::simt {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kBlockM = kWarps * kRowsPerWarp;
constexpr int kBlockN = 32;
constexpr int kThreads = kWarps * 32;

template <int kHeadDim>
constexpr int SmemBytes() {
  return 4 * (kBlockM * kHeadDim + kBlockN * (kHeadDim + 1) + kBlockN * kHeadDim);
}

template <typename Element, int kHeadDim, bool kCausal, bool kPaged>
__global__ void __launch_bounds__(kThreads)
    AttentionKernel(const __grid_constant__ AttentionParams p) {
  static_assert(kHeadDim % 32 == 0, "lanes own head-dim columns lane + 32 i");
  constexpr int kCols = kHeadDim / 32;
  extern __shared__ float smem_simt[];
  float* q_s = smem_simt;                              // (kBlockM, kHeadDim)
  float* k_s = q_s + kBlockM * kHeadDim;               // (kBlockN, kHeadDim + 1)
  float* v_s = k_s + kBlockN * (kHeadDim + 1);         // (kBlockN, kHeadDim)

  const int b = p.seq_offset + static_cast<int>(blockIdx.z);
  const int head = static_cast<int>(blockIdx.y);
  const int head_kv = head / p.group;
  const SequenceView seq = LoadSequence(p, b);
  const int m0 = static_cast<int>(blockIdx.x) * kBlockM;
  if (m0 >= seq.q_len) return;
  const int rows = min(kBlockM, seq.q_len - m0);
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const Element* q = static_cast<const Element*>(p.q);
  const float q_sign = p.negate_q ? -1.f : 1.f;
  for (int i = tid; i < kBlockM * kHeadDim; i += kThreads) {
    const int r = i / kHeadDim;
    const int d = i % kHeadDim;
    q_s[i] = r < rows ? q_sign * ToFloat(q[seq.q_offset + (m0 + r) * p.q_row_stride +
                                            head * p.q_head_stride + d])
                      : 0.f;
  }

  const int max_limit = KeyLimit<kCausal>(seq, m0 + rows - 1);
  const int num_tiles = max_limit > 0 ? (max_limit + kBlockN - 1) / kBlockN : 0;

  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kCols];
  int limit[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
    limit[r] = KeyLimit<kCausal>(seq, m0 + warp * kRowsPerWarp + r);
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.f;
  }

  const Element* k = static_cast<const Element*>(p.k);
  const Element* v = static_cast<const Element*>(p.v);
  for (int n = 0; n < num_tiles; ++n) {
    __syncthreads();  // the previous tile is consumed (and Q is stored, on the first pass)
    for (int i = tid; i < kBlockN * kHeadDim; i += kThreads) {
      const int r = i / kHeadDim;
      const int d = i % kHeadDim;
      const int key = n * kBlockN + r;
      float kv_k = 0.f, kv_v = 0.f;
      if (key < seq.kv_len) {
        int64_t k_row, v_row;
        if constexpr (kPaged) {
          k_row = v_row = PagedRowOffset(p, seq, key);
        } else {
          k_row = seq.k_offset + key * p.k_row_stride;
          v_row = seq.v_offset + key * p.v_row_stride;
        }
        kv_k = ToFloat(k[k_row + head_kv * p.k_head_stride + d]);
        kv_v = ToFloat(v[v_row + head_kv * p.v_head_stride + d]);
      }
      k_s[r * (kHeadDim + 1) + d] = kv_k;
      v_s[r * kHeadDim + d] = kv_v;
    }
    __syncthreads();

    const int key = n * kBlockN + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float* q_row = q_s + (warp * kRowsPerWarp + r) * kHeadDim;
      float score = 0.f;
#pragma unroll 8
      for (int d = 0; d < kHeadDim; ++d) score = fmaf(q_row[d], k_s[lane * (kHeadDim + 1) + d], score);
      score = key < limit[r] ? score * p.scale_log2 : -INFINITY;
      float tile_max = score;
#pragma unroll
      for (int off = 16; off > 0; off /= 2) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      }
      const float new_max = fmaxf(row_max[r], tile_max);
      const float reference = new_max == -INFINITY ? 0.f : new_max;
      const float correction = exp2f(row_max[r] - reference);
      row_max[r] = new_max;
      const float prob = exp2f(score - reference);
      row_sum[r] = row_sum[r] * correction + prob;  // per-lane partial, reduced at the end
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] *= correction;
      for (int j = 0; j < kBlockN; ++j) {
        const float pj = __shfl_sync(0xffffffffu, prob, j);
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[r][c] = fmaf(pj, v_s[j * kHeadDim + lane + 32 * c], acc[r][c]);
      }
    }
  }

  Element* out = static_cast<Element*>(p.out);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    float sum = row_sum[r];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const int row = warp * kRowsPerWarp + r;
    if (row >= rows) continue;
    const int token = m0 + row;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      out[seq.out_offset + token * p.out_row_stride + head * p.out_head_stride + lane + 32 * c] =
          FromFloat<Element>(acc[r][c] * inv);
    }
    if (lane == 0 && p.lse != nullptr) {
      p.lse[seq.lse_offset + head * p.lse_head_stride + token] =
          sum > 0.f ? (row_max[r] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
    }
  }
}

}  // namespace flashkv::cuda::simt

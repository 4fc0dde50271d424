#pragma once

// Merges the float32 partial results of a split-KV launch: for each (token, head) row,
// O = sum_s w_s O_s with w_s = exp(lse_s - lse) / ..., lse = log sum_s exp(lse_s).
// One warp per row; lanes own 4 consecutive head-dim columns (float4 reads of the partials).

#include <cstdint>

#include "attention_params.h"
#include "element.cuh"

namespace flashkv::cuda {

template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(128) SplitKvCombineKernel(const __grid_constant__ AttentionParams p) {
  constexpr int kPerLane = kHeadDim / 32;  // 1..8 consecutive floats
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;  // token * Hq + head
  const int64_t rows = p.total_q * p.num_heads_q;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t token = row / p.num_heads_q;
  const int head = static_cast<int>(row % p.num_heads_q);

  // Natural-log LSEs of the splits; empty splits hold -inf.
  float lse_max = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) {
    lse_max = fmaxf(lse_max, p.lse_partial[s * rows + row]);
  }
  const float reference = lse_max == -INFINITY ? 0.f : lse_max;
  float weight_sum = 0.f;
  float acc[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) acc[e] = 0.f;
  for (int s = 0; s < p.num_splits; ++s) {
    const float w = expf(p.lse_partial[s * rows + row] - reference);
    weight_sum += w;
    const float* src = p.o_partial + (s * rows + row) * kHeadDim + lane * kPerLane;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[e] = fmaf(w, src[e], acc[e]);
  }
  const float inv = weight_sum > 0.f ? 1.f / weight_sum : 0.f;

  // Where the row lives in the caller's tensors: fixed layout splits tokens by seqlen_q.
  int64_t batch = 0, t = token;
  if (p.cu_seqlens_q == nullptr) {
    batch = token / p.seqlen_q;
    t = token % p.seqlen_q;
  }
  Element* out = static_cast<Element*>(p.out) + batch * p.out_batch_stride + t * p.out_row_stride +
                 head * p.out_head_stride + lane * kPerLane;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) out[e] = FromFloat<Element>(acc[e] * inv);
  if (lane == 0 && p.lse != nullptr) {
    p.lse[batch * p.lse_batch_stride + head * p.lse_head_stride + t] =
        weight_sum > 0.f ? reference + logf(weight_sum) : -INFINITY;
  }
}

}  // namespace flashkv::cuda

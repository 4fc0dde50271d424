#pragma once

// Blocked online-softmax attention (the FlashAttention algorithm) on the CPU, float32 accumulation.
// Include only from the generated instantiation units (see attention_kernel.h).
//
// One task owns up to max_rows query rows: several query positions × the query heads of one KV
// head (GQA packing), so every K/V tile converted to float32 serves all heads of its group. Per
// key tile of block_n keys:
//   S = Q · Kᵀ                        (rows, block_n), log2 domain: Q is pre-scaled by scale·log2 e
//   m' = max(m, rowmax S);  P = 2^(S - m');  l = l · 2^(m - m') + rowsum P
//   O = diag(2^(m - m')) · O + P · V
// and at the end O / l and LSE = (m + log2 l) · ln 2. Under causal masking the key range stops at
// the last key the task's last query sees, and only tiles crossing the diagonal are masked.

#include <cmath>
#include <cstdint>

#include "cpu/attention_kernel.h"
#include "cpu/attention_problem.h"
#include "cpu/micro_gemm.h"
#include "cpu/simd.h"
#include "cpu/tile_config.h"

namespace flashkv::cpu {

template <class IsaTag, class T, int kHeadDim>
struct AttentionTraits {
  using Element = T;
  static constexpr int kD = kHeadDim;
  static constexpr TileShape kShape = ChooseTileShape(IsaTag::kIsa, kHeadDim);
  static constexpr WorkspaceLayout kLayout = MakeWorkspaceLayout(kShape, kHeadDim);
  static constexpr int kLanes = kShape.vector_floats;
  static constexpr int kMicroRows = kShape.micro_rows;
  static constexpr int kMicroCols = kShape.micro_cols;
  static constexpr int kBlockN = kShape.block_n;
  static constexpr int kMaxRows = kShape.max_rows;

  static_assert(kLanes == Simd<IsaTag>::kLanes, "tile shape and SIMD width disagree");
  static_assert(kHeadDim % kMicroCols == 0, "output columns must split into micro tiles");
  static_assert(kBlockN % kMicroCols == 0, "score columns must split into micro tiles");
  static_assert(kMicroCols % kLanes == 0, "micro tiles are whole vectors wide");
  static_assert(kMaxRows >= 1 && kMicroRows >= 1, "empty tiles");
};

template <class IsaTag, class T, int kHeadDim, bool kPaged>
class AttentionTile {
  using Traits = AttentionTraits<IsaTag, T, kHeadDim>;
  using V = Simd<IsaTag>;
  using F = typename V::F;
  using Gemm = MicroGemm<IsaTag, Traits::kMicroCols>;
  static constexpr int kD = kHeadDim;
  static constexpr int kN = Traits::kBlockN;
  static constexpr int kLanes = Traits::kLanes;
  static constexpr float kNegInf = -__builtin_inff();

 public:
  static void Run(const AttentionProblem& p, const TileTask& task, float* workspace) {
    // Preconditions (established by Validate* and the planner): 1 <= rows <= kMaxRows, the task's
    // heads belong to one KV head, every key index below kv_len is addressable.
    const SequenceView& seq = p.seqs[task.seq];
    const int heads = task.num_heads;
    const int rows = heads * (task.q_end - task.q_begin);
    const int64_t diagonal = int64_t{seq.kv_len} - seq.q_len;  // query i sees keys <= i + diagonal

    float* __restrict q = workspace + Traits::kLayout.q;                  // (rows, D)
    float* __restrict o = workspace + Traits::kLayout.o;                  // (rows, D)
    float* __restrict s = workspace + Traits::kLayout.s;                  // (rows, kN)
    float* __restrict kt = workspace + Traits::kLayout.kt;                // (D, kN)
    float* __restrict vt = workspace + Traits::kLayout.v;                 // (kN, D)
    float* __restrict row_max = workspace + Traits::kLayout.row_max;      // (rows)
    float* __restrict row_sum = workspace + Traits::kLayout.row_sum;      // (rows)
    float* __restrict row_scale = workspace + Traits::kLayout.row_scale;  // (rows)

    LoadQueries(p, seq, task, q);
    for (int r = 0; r < rows; ++r) {
      row_max[r] = kNegInf;
      row_sum[r] = 0;
    }
    for (int64_t i = 0; i < int64_t{rows} * kD; ++i) o[i] = 0;

    int64_t kv_end = seq.kv_len;
    if (p.causal) kv_end = Clamp(task.q_end - 1 + diagonal + 1, 0, seq.kv_len);
    for (int64_t j0 = 0; j0 < kv_end; j0 += kN) {
      const int n = static_cast<int>(kv_end - j0 < kN ? kv_end - j0 : kN);
      const int cols = (n + Traits::kMicroCols - 1) / Traits::kMicroCols * Traits::kMicroCols;
      LoadKeyValueTile(p, seq, task.kv_head, j0, n, cols, kt, vt);
      Gemm::template Gemm<Traits::kMicroRows, false>(rows, cols, kD, q, kD, kt, kN, s, kN, nullptr);
      // Keys a row may not see: past the tile's valid columns, or (causal) past the diagonal.
      const bool diagonal_tile = p.causal && j0 + n - 1 > task.q_begin + diagonal;
      for (int r = 0; r < rows; ++r) {
        int64_t visible = n;  // columns [0, visible) of this row are real and unmasked
        if (diagonal_tile) {
          const int64_t position = task.q_begin + r / heads;
          visible = Clamp(position + diagonal - j0 + 1, 0, n);
        }
        OnlineSoftmaxRow(s + int64_t{r} * kN, static_cast<int>(visible), cols, &row_max[r],
                         &row_sum[r], &row_scale[r]);
      }
      Gemm::template Gemm<Traits::kMicroRows, true>(rows, kD, n, s, kN, vt, kD, o, kD, row_scale);
    }
    StoreOutputs(p, seq, task, o, row_max, row_sum);
  }

 private:
  static int64_t Clamp(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

  // (rows, D) float32 queries, row r = (position q_begin + r / heads, head head_begin + r % heads),
  // pre-scaled by scale · log2(e).
  static void LoadQueries(const AttentionProblem& p, const SequenceView& seq, const TileTask& task,
                          float* __restrict q) {
    const T* base = static_cast<const T*>(p.q) + seq.q_offset;
    const F scale = V::Broadcast(p.scale_log2);
    int r = 0;
    for (int pos = task.q_begin; pos < task.q_end; ++pos) {
      for (int h = task.head_begin; h < task.head_begin + task.num_heads; ++h, ++r) {
        const T* src = base + pos * p.q_row_stride + h * p.q_head_stride;
        float* dst = q + int64_t{r} * kD;
#pragma GCC unroll 4
        for (int d = 0; d < kD; d += kLanes) V::Store(dst + d, V::Load(src + d) * scale);
      }
    }
  }

  // Element offset of key `t` of the sequence for KV head `kv_head` (K and V alike when paged).
  static int64_t KeyOffset(const AttentionProblem& p, const SequenceView& seq, int kv_head,
                           int64_t t, int64_t row_stride, int64_t head_stride, int64_t base) {
    if constexpr (kPaged) {
      const int64_t block = seq.block_table[t / p.page_size];
      return block * p.kv_block_stride + (t % p.page_size) * row_stride + kv_head * head_stride;
    } else {
      return base + t * row_stride + kv_head * head_stride;
    }
  }

  // Keys [j0, j0 + n) into kt (D, kN) transposed, zero in columns [n, cols); values into vt (kN, D).
  static void LoadKeyValueTile(const AttentionProblem& p, const SequenceView& seq, int kv_head,
                               int64_t j0, int n, int cols, float* __restrict kt,
                               float* __restrict vt) {
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    alignas(64) float row[kD];
    for (int c = 0; c < n; ++c) {
      const int64_t t = j0 + c;
      const T* k_src = k + KeyOffset(p, seq, kv_head, t, p.k_row_stride, p.k_head_stride,
                                     seq.k_offset);
      const T* v_src = v + KeyOffset(p, seq, kv_head, t, p.v_row_stride, p.v_head_stride,
                                     seq.v_offset);
#pragma GCC unroll 4
      for (int d = 0; d < kD; d += kLanes) V::Store(row + d, V::Load(k_src + d));
      for (int d = 0; d < kD; ++d) kt[d * kN + c] = row[d];
      float* v_dst = vt + int64_t{c} * kD;
#pragma GCC unroll 4
      for (int d = 0; d < kD; d += kLanes) V::Store(v_dst + d, V::Load(v_src + d));
    }
    for (int d = 0; d < kD; ++d) {
      for (int c = n; c < cols; ++c) kt[d * kN + c] = 0;
    }
  }

  // One row of the online softmax over a tile's scores (cols of them, a multiple of kLanes; only
  // the first `visible` count). Leaves P = 2^(S - m') in place (0 where masked), updates the
  // running max and sum, and writes the factor that rescales the row's earlier output.
  static void OnlineSoftmaxRow(float* __restrict srow, int visible, int cols, float* max_io,
                               float* sum_io, float* scale_out) {
    for (int c = visible; c < cols; ++c) srow[c] = kNegInf;
    F vmax = V::Broadcast(kNegInf);
    for (int c = 0; c < cols; c += kLanes) vmax = V::Max(vmax, V::Load(srow + c));
    const float old_max = *max_io;
    const float tile_max = V::ReduceMax(vmax);
    const float new_max = tile_max > old_max ? tile_max : old_max;
    // A row that has seen no key yet keeps max -inf; subtract 0 then so 2^(-inf) gives 0, not NaN.
    const float shift = new_max == kNegInf ? 0.0f : new_max;
    const F vshift = V::Broadcast(shift);
    F vsum = F{};
    for (int c = 0; c < cols; c += kLanes) {
      const F prob = V::Exp2(V::Load(srow + c) - vshift);
      V::Store(srow + c, prob);
      vsum += prob;
    }
    const float scale = V::Exp2(V::Broadcast(old_max - shift))[0];
    *scale_out = scale;
    *sum_io = *sum_io * scale + V::ReduceSum(vsum);
    *max_io = new_max;
  }

  // out = O / l converted to T; lse = (m + log2 l) · ln 2. A row that saw no key (l = 0) gets
  // zeros and -inf.
  static void StoreOutputs(const AttentionProblem& p, const SequenceView& seq, const TileTask& task,
                           const float* __restrict o, const float* __restrict row_max,
                           const float* __restrict row_sum) {
    T* out = static_cast<T*>(p.out) + seq.out_offset;
    int r = 0;
    for (int pos = task.q_begin; pos < task.q_end; ++pos) {
      for (int h = task.head_begin; h < task.head_begin + task.num_heads; ++h, ++r) {
        const float sum = row_sum[r];
        const F inv = V::Broadcast(sum > 0 ? 1.0f / sum : 0.0f);
        T* dst = out + pos * p.out_row_stride + h * p.out_head_stride;
        const float* src = o + int64_t{r} * kD;
#pragma GCC unroll 4
        for (int d = 0; d < kD; d += kLanes) V::Store(dst + d, V::Load(src + d) * inv);
        if (p.lse != nullptr) {
          constexpr float kLn2 = 0.693147180559945309f;
          p.lse[seq.lse_offset + h * p.lse_head_stride + pos] =
              sum > 0 ? (row_max[r] + log2f(sum)) * kLn2 : kNegInf;
        }
      }
    }
  }
};

template <class IsaTag, class T, int kHeadDim>
void AttentionKernel<IsaTag, T, kHeadDim>::RunTask(const AttentionProblem& problem,
                                                   const TileTask& task, float* workspace) {
  if (problem.paged) {
    AttentionTile<IsaTag, T, kHeadDim, true>::Run(problem, task, workspace);
  } else {
    AttentionTile<IsaTag, T, kHeadDim, false>::Run(problem, task, workspace);
  }
}

}  // namespace flashkv::cpu

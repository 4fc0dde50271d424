#pragma once

// Blocked online-softmax attention (the FlashAttention algorithm) on the CPU, float32 accumulation.
// Include only from the generated instantiation units (see attention_kernel.h).
//
// One task owns up to max_rows query rows: several query positions × the query heads of one KV
// head (GQA packing), so every K/V tile converted to float32 serves all heads of its group. Scores
// are kept transposed, keys × rows, so that the queries are transposed once per task (not the keys
// once per tile) and the softmax runs across rows in whole vectors. Per tile of block_n keys:
//   Sᵀ = K · Qᵀ                       (n, rows), log2 domain: Q is pre-scaled by scale · log2 e
//   m' = max(m, colmax Sᵀ);  Pᵀ = 2^(Sᵀ - m');  l = l · 2^(m - m') + colsum Pᵀ
//   O = diag(2^(m - m')) · O + P · V
// and at the end O / l and LSE = (m + log2 l) · ln 2. Under causal masking the key range stops at
// the last key the task's last query sees, and only tiles crossing the diagonal are masked.

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/attention_kernel.h"
#include "cpu/attention_problem.h"
#include "cpu/micro_gemm.h"
#include "cpu/simd.h"
#include "cpu/tile_config.h"

namespace flashkv::cpu {

template <class IsaTag, class T, int kHeadDim>
struct AttentionTraits {
  static constexpr TileShape kShape = ChooseTileShape(IsaTag::kIsa, kHeadDim);
  static constexpr WorkspaceLayout kLayout = MakeWorkspaceLayout(kShape, kHeadDim);
  static constexpr int kLanes = kShape.vector_floats;
  static constexpr int kBlockN = kShape.block_n;
  static constexpr int kMaxRows = kShape.max_rows;
  static constexpr int kDotRows = kShape.dot_rows;
  using ScoreGemm = MicroGemm<IsaTag, kShape.score.cols>;  // Sᵀ (keys, padded rows)
  using PvGemm = MicroGemm<IsaTag, kShape.pv.cols>;        // O (rows, D)

  static_assert(kLanes == Simd<IsaTag>::kLanes, "tile shape and SIMD width disagree");
  static_assert(kHeadDim % kShape.pv.cols == 0, "output columns must split into micro tiles");
  static_assert(kHeadDim % kLanes == 0, "query and key rows are whole vectors");
  static_assert(kMaxRows % kShape.score.cols == 0, "padded rows must fit the workspace");
  static_assert(kShape.score.cols % kLanes == 0 && kShape.pv.cols % kLanes == 0,
                "micro tiles are whole vectors wide");
  static_assert(kDotRows <= kMaxRows && kShape.score.rows >= 1 && kShape.pv.rows >= 1 &&
                    kBlockN >= 1,
                "degenerate tiles");
};

template <class IsaTag, class T, int kHeadDim, bool kPaged>
class AttentionTile {
  using Traits = AttentionTraits<IsaTag, T, kHeadDim>;
  using V = Simd<IsaTag>;
  using F = typename V::F;
  static constexpr int kD = kHeadDim;
  static constexpr int kN = Traits::kBlockN;
  static constexpr int kLanes = Traits::kLanes;
  static constexpr float kNegInf = -__builtin_inff();

 public:
  static void Run(const AttentionProblem& p, const TileTask& task, float* workspace) {
    // Preconditions (established by Validate* and the planner): 1 <= rows <= kMaxRows, the task's
    // heads belong to one KV head, every key index below kv_len is addressable.
    const SequenceView& seq = p.seqs[task.seq];
    const int rows = task.num_heads * (task.q_end - task.q_begin);
    const bool dot_scores = rows < Traits::kDotRows;
    const int padded = RoundUp(rows, dot_scores ? kLanes : Traits::kShape.score.cols);
    const int64_t diagonal = int64_t{seq.kv_len} - seq.q_len;  // query i sees keys <= i + diagonal

    float* __restrict q = workspace + Traits::kLayout.q;  // (D, padded) or (rows, D)
    float* __restrict o = workspace + Traits::kLayout.o;  // (rows, D)
    float* __restrict st = workspace + Traits::kLayout.st;  // (kN, padded)
    float* __restrict row_max = workspace + Traits::kLayout.row_max;      // (padded)
    float* __restrict row_sum = workspace + Traits::kLayout.row_sum;      // (padded)
    float* __restrict row_scale = workspace + Traits::kLayout.row_scale;  // (padded)
    float* __restrict row_limit = workspace + Traits::kLayout.row_limit;  // (padded)

    LoadQueries(p, seq, task, dot_scores, padded, q);
    for (int r = 0; r < padded; ++r) {
      row_max[r] = kNegInf;
      row_sum[r] = 0;
    }
    for (int64_t i = 0; i < int64_t{rows} * kD; ++i) o[i] = 0;

    int64_t kv_end = task.kv_end;
    if (p.causal) kv_end = Clamp(task.q_end - 1 + diagonal + 1, 0, kv_end);
    for (int64_t t = task.kv_begin; t < kv_end && t < task.kv_begin + kN; ++t) {
      PrefetchKv(p, seq, task.kv_head, t);
    }
    for (int64_t j0 = task.kv_begin; j0 < kv_end; j0 += kN) {
      const int n = static_cast<int>(kv_end - j0 < kN ? kv_end - j0 : kN);
      const KvTile kv = LoadKvTile(p, seq, task.kv_head, j0, n, kv_end, workspace);
      if (dot_scores) {
        DotScores(q, rows, padded, kv.k, kv.k_stride, n, st);
      } else {
        Traits::ScoreGemm::template Gemm<Traits::kShape.score.rows, false>(
            n, padded, kD, kv.k, kv.k_stride, 1, q, padded, st, padded, nullptr);
      }
      // Rows whose last visible key falls inside this tile need a mask (causal only).
      const bool masked = p.causal && j0 + n - 1 > task.q_begin + diagonal;
      if (masked) {
        for (int r = 0; r < padded; ++r) {
          row_limit[r] = static_cast<float>(task.q_begin + r / task.num_heads + diagonal - j0);
        }
      }
      OnlineSoftmax(st, n, padded, masked ? row_limit : nullptr, row_max, row_sum, row_scale);
      // P (rows, n) is Sᵀ read with row stride 1 and key stride `padded`.
      Traits::PvGemm::template Gemm<Traits::kShape.pv.rows, true>(
          rows, kD, n, st, 1, padded, kv.v, kv.v_stride, o, kD, row_scale);
    }
    if (task.partial >= 0) {
      StorePartial(p, task.partial, rows, o, row_max, row_sum);
    } else {
      StoreOutputs(p, seq, task, o, row_max, row_sum);
    }
  }

  // Split-KV: each chunk left (O_s, m_s, l_s) per row; with m = max m_s and w_s = 2^(m_s - m),
  // the whole range has l = Σ w_s · l_s and O = Σ w_s · O_s (then divided by l as usual).
  static void Merge(const AttentionProblem& p, const SplitMerge& merge, float* workspace) {
    const TileTask& task = merge.task;
    const SequenceView& seq = p.seqs[task.seq];
    const int rows = task.num_heads * (task.q_end - task.q_begin);
    float* __restrict o = workspace + Traits::kLayout.o;              // (rows, D)
    float* __restrict row_max = workspace + Traits::kLayout.row_max;  // (rows)
    float* __restrict row_sum = workspace + Traits::kLayout.row_sum;  // (rows)
    for (int r = 0; r < rows; ++r) {
      float max = kNegInf;
      for (int s = 0; s < merge.num_partials; ++s) {
        const float* slot = p.partials + (merge.first_partial + s) * p.partial_stride;
        max = slot[kPartialMax + r] > max ? slot[kPartialMax + r] : max;
      }
      const float shift = max == kNegInf ? 0.0f : max;
      float sum = 0;
      F acc[kD / kLanes] = {};
      for (int s = 0; s < merge.num_partials; ++s) {
        const float* slot = p.partials + (merge.first_partial + s) * p.partial_stride;
        const float weight = V::Exp2(V::Broadcast(slot[kPartialMax + r] - shift))[0];
        sum += weight * slot[kPartialSum + r];
        const float* o_s = slot + int64_t{r} * kD;
        for (int v = 0; v < kD / kLanes; ++v) acc[v] += V::Load(o_s + v * kLanes) * weight;
      }
      for (int v = 0; v < kD / kLanes; ++v) V::Store(o + int64_t{r} * kD + v * kLanes, acc[v]);
      row_max[r] = max;
      row_sum[r] = sum;
    }
    StoreOutputs(p, seq, task, o, row_max, row_sum);
  }

 private:
  // Offsets of the running max and sum inside a partial slot (see AttentionProblem::partials).
  static constexpr int64_t kPartialMax = int64_t{Traits::kMaxRows} * kD;
  static constexpr int64_t kPartialSum = kPartialMax + Traits::kMaxRows;
  // float32 K and V tiles. (They are copied even from float32 tensors: read in place, rows of one
  // head a multiple of 4 KiB apart all land in the same L1 sets, and decode runs slower.)
  struct KvTile {
    const float* k;  // (n, D) with row stride k_stride
    int64_t k_stride;
    const float* v;  // (n, D) with row stride v_stride
    int64_t v_stride;
  };

  static int64_t Clamp(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }
  static int RoundUp(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

  // Queries as float32 pre-scaled by scale · log2(e); row r = (position q_begin + r / heads, head
  // head_begin + r % heads). Transposed (D, padded), zero in the padding columns, for the score
  // GEMM; row-major (rows, D) for dot-product scores.
  static void LoadQueries(const AttentionProblem& p, const SequenceView& seq, const TileTask& task,
                          bool row_major, int padded, float* __restrict q) {
    const T* base = static_cast<const T*>(p.q) + seq.q_offset;
    const F scale = V::Broadcast(p.scale_log2);
    alignas(64) float row[kD];
    int r = 0;
    for (int pos = task.q_begin; pos < task.q_end; ++pos) {
      for (int h = task.head_begin; h < task.head_begin + task.num_heads; ++h, ++r) {
        const T* src = base + pos * p.q_row_stride + h * p.q_head_stride;
        float* dst = row_major ? q + int64_t{r} * kD : row;
#pragma GCC unroll 4
        for (int d = 0; d < kD; d += kLanes) V::Store(dst + d, V::Load(src + d) * scale);
        if (!row_major) {
          for (int d = 0; d < kD; ++d) q[d * padded + r] = row[d];
        }
      }
    }
    if (!row_major) {
      for (int d = 0; d < kD; ++d) {
        for (int c = r; c < padded; ++c) q[d * padded + c] = 0;
      }
    }
  }

  // Element offset of key `t` of the sequence for KV head `kv_head`.
  static int64_t KeyOffset(const AttentionProblem& p, const SequenceView& seq, int kv_head,
                           int64_t t, int64_t row_stride, int64_t head_stride, int64_t base) {
    if constexpr (kPaged) {
      const int64_t block = seq.block_table[t / p.page_size];
      return block * p.kv_block_stride + (t % p.page_size) * row_stride + kv_head * head_stride;
    } else {
      return base + t * row_stride + kv_head * head_stride;
    }
  }

  // Asks for key and value `t` in cache. Rows of one head are a whole row stride apart (often a
  // 4 KiB page or more), which hardware stream prefetchers do not follow.
  static FLASHKV_CPU_INLINE void PrefetchKv(const AttentionProblem& p, const SequenceView& seq,
                                            int kv_head, int64_t t) {
    constexpr int kRowBytes = kD * static_cast<int>(sizeof(T));
    const T* k_row = static_cast<const T*>(p.k) +
                     KeyOffset(p, seq, kv_head, t, p.k_row_stride, p.k_head_stride, seq.k_offset);
    const T* v_row = static_cast<const T*>(p.v) +
                     KeyOffset(p, seq, kv_head, t, p.v_row_stride, p.v_head_stride, seq.v_offset);
    for (int b = 0; b < kRowBytes; b += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(k_row) + b);
      __builtin_prefetch(reinterpret_cast<const char*>(v_row) + b);
    }
  }

  // Keys and values [j0, j0 + n) converted to float32 rows (n, D) in the workspace. Row c of the
  // next tile (below kv_end) is prefetched along with row c of this one, so that prefetches stay
  // spread out and arrive a tile ahead.
  static KvTile LoadKvTile(const AttentionProblem& p, const SequenceView& seq, int kv_head,
                           int64_t j0, int n, int64_t kv_end, float* workspace) {
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    float* __restrict k_tile = workspace + Traits::kLayout.k;  // (n, D)
    float* __restrict v_tile = workspace + Traits::kLayout.v;  // (n, D)
    for (int c = 0; c < n; ++c) {
      const int64_t t = j0 + c;
      if (t + kN < kv_end) PrefetchKv(p, seq, kv_head, t + kN);
      const T* k_src =
          k + KeyOffset(p, seq, kv_head, t, p.k_row_stride, p.k_head_stride, seq.k_offset);
      const T* v_src =
          v + KeyOffset(p, seq, kv_head, t, p.v_row_stride, p.v_head_stride, seq.v_offset);
      float* k_dst = k_tile + int64_t{c} * kD;
      float* v_dst = v_tile + int64_t{c} * kD;
#pragma GCC unroll 4
      for (int d = 0; d < kD; d += kLanes) {
        V::Store(k_dst + d, V::Load(k_src + d));
        V::Store(v_dst + d, V::Load(v_src + d));
      }
    }
    return KvTile{k_tile, kD, v_tile, kD};
  }

  // Sᵀ (n, padded): st[c·padded + r] = q_r · k_c, for tasks too small for the score GEMM. Padding
  // columns get 0 so the softmax sees finite values there.
  static void DotScores(const float* __restrict q, int rows, int padded, const float* __restrict k,
                        int64_t k_stride, int n, float* __restrict st) {
    for (int c = 0; c < n; ++c) {
      const float* kc = k + c * k_stride;
      float* out = st + int64_t{c} * padded;
      for (int r = 0; r < rows; ++r) {
        const float* qr = q + int64_t{r} * kD;
        F acc = F{};
#pragma GCC unroll 8
        for (int d = 0; d < kD; d += kLanes) acc += V::Load(qr + d) * V::Load(kc + d);
        out[r] = V::ReduceSum(acc);
      }
      for (int r = rows; r < padded; ++r) out[r] = 0;
    }
  }

  // The online-softmax step over one tile, vectorised across rows. Sᵀ (n, padded) becomes Pᵀ in
  // place (0 where masked); the running max and sum advance; row_scale gets the factor that
  // rescales each row's earlier output. With `limit`, key c of the tile is hidden from row r when
  // c > limit[r].
  static void OnlineSoftmax(float* __restrict st, int n, int padded, const float* __restrict limit,
                            float* __restrict row_max, float* __restrict row_sum,
                            float* __restrict row_scale) {
    const F neg_inf = V::Broadcast(kNegInf);
    for (int r = 0; r < padded; r += kLanes) {
      float* col = st + r;
      F tile_max = neg_inf;
      if (limit != nullptr) {
        const F lim = V::Load(limit + r);
        for (int c = 0; c < n; ++c) {
          const F s = V::Load(col + int64_t{c} * padded);
          const F masked = V::Broadcast(static_cast<float>(c)) > lim ? neg_inf : s;
          V::Store(col + int64_t{c} * padded, masked);
          tile_max = V::Max(tile_max, masked);
        }
      } else {
        for (int c = 0; c < n; ++c) tile_max = V::Max(tile_max, V::Load(col + int64_t{c} * padded));
      }
      const F old_max = V::Load(row_max + r);
      const F new_max = V::Max(old_max, tile_max);
      // A row that has seen no key yet keeps max -inf; subtract 0 then, so 2^(-inf) gives 0.
      const F shift = new_max == neg_inf ? F{} : new_max;
      F sum = F{};
      for (int c = 0; c < n; ++c) {
        const F prob = V::Exp2(V::Load(col + int64_t{c} * padded) - shift);
        V::Store(col + int64_t{c} * padded, prob);
        sum += prob;
      }
      const F scale = V::Exp2(old_max - shift);
      V::Store(row_scale + r, scale);
      V::Store(row_sum + r, V::Load(row_sum + r) * scale + sum);
      V::Store(row_max + r, new_max);
    }
  }

  // A split task's unnormalised state, for Merge.
  static void StorePartial(const AttentionProblem& p, int partial, int rows,
                           const float* __restrict o, const float* __restrict row_max,
                           const float* __restrict row_sum) {
    float* __restrict slot = p.partials + partial * p.partial_stride;
    for (int64_t i = 0; i < int64_t{rows} * kD; ++i) slot[i] = o[i];
    for (int r = 0; r < rows; ++r) {
      slot[kPartialMax + r] = row_max[r];
      slot[kPartialSum + r] = row_sum[r];
    }
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
void AttentionKernel<IsaTag, T, kHeadDim>::MergeSplits(const AttentionProblem& problem,
                                                       const SplitMerge& merge, float* workspace) {
  // The merge never reads K/V, so the contiguous-K/V instantiation serves paged calls too.
  AttentionTile<IsaTag, T, kHeadDim, false>::Merge(problem, merge, workspace);
}

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

#pragma once

// Per-CTA view of one sequence of a launch, shared by the tensor-core and SIMT kernels: where its
// queries, outputs, keys and LSE rows start, and which keys each query row may see.

#include <cstdint>

#include "attention_params.h"

namespace flashkv::cuda {

struct SequenceView {
  int q_len = 0;
  int kv_len = 0;
  int64_t q_offset = 0;    // elements from params.q to token 0, head 0
  int64_t out_offset = 0;  // elements from params.out to token 0, head 0
  int64_t k_offset = 0;    // contiguous K/V only: elements to key 0, head 0
  int64_t v_offset = 0;
  int64_t lse_offset = 0;  // floats from params.lse to (head 0, token 0)
  int64_t token_begin = 0; // launch-wide index of token 0 (rows of the split-KV workspace)
  int64_t kv_begin = 0;    // varlen: row of key 0 in the packed K/V tensors (TMA coordinates)
  const int32_t* block_table = nullptr;  // paged only: this sequence's row of the table
};

__device__ __forceinline__ SequenceView LoadSequence(const AttentionParams& p, int b) {
  SequenceView s;
  if (p.cu_seqlens_q != nullptr) {
    const int q0 = p.cu_seqlens_q[b];
    const int kv0 = p.cu_seqlens_kv[b];
    s.q_len = p.cu_seqlens_q[b + 1] - q0;
    s.kv_len = p.cu_seqlens_kv[b + 1] - kv0;
    s.q_offset = q0 * p.q_row_stride;
    s.out_offset = q0 * p.out_row_stride;
    s.k_offset = kv0 * p.k_row_stride;
    s.v_offset = kv0 * p.v_row_stride;
    s.lse_offset = q0;
    s.token_begin = q0;
    s.kv_begin = kv0;
  } else {
    s.q_len = p.seqlen_q;
    s.kv_len = p.seqlen_kv;
    s.q_offset = b * p.q_batch_stride;
    s.out_offset = b * p.out_batch_stride;
    s.k_offset = b * p.k_batch_stride;
    s.v_offset = b * p.v_batch_stride;
    s.lse_offset = b * p.lse_batch_stride;
    s.token_begin = static_cast<int64_t>(b) * p.seqlen_q;
  }
  if (p.block_table != nullptr) {
    s.block_table = p.block_table + static_cast<int64_t>(b) * p.block_table_stride;
  }
  return s;
}

// Exclusive end of the keys query token `token` sees: causal masks align bottom-right, so token i
// of Sq sees keys j <= i + Skv - Sq. Negative when the token sees nothing.
template <bool kCausal>
__device__ __forceinline__ int KeyLimit(const SequenceView& s, int token) {
  if constexpr (kCausal) {
    const int limit = token + s.kv_len - s.q_len + 1;
    return limit < s.kv_len ? limit : s.kv_len;
  } else {
    return s.kv_len;
  }
}

// Element offset of key row t of a paged sequence (block and slot; add head and column).
__device__ __forceinline__ int64_t PagedRowOffset(const AttentionParams& p, const SequenceView& s,
                                                  int t) {
  const int page = t / p.page_size;
  const int slot = t - page * p.page_size;
  return static_cast<int64_t>(s.block_table[page]) * p.k_batch_stride +
         static_cast<int64_t>(slot) * p.k_row_stride;
}

}  // namespace flashkv::cuda

#pragma once

// The plain parameter struct every CUDA attention kernel reads (fixed-length, varlen and paged),
// built on the host from the public args (params_builder.h) and passed by value as a
// __grid_constant__ kernel argument. No CUDA headers: host code builds it without nvcc.
//
// Offsets are int64 and counted in elements; the head dimension is contiguous everywhere.

#include <cstdint>

namespace flashkv::cuda {

struct AttentionParams {
  // q [.., Sq, Hq, D]; out like q; k/v [.., Skv, Hkv, D] or paged pools [blocks, Hkv, page, D].
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // optional

  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  int64_t k_batch_stride = 0, k_row_stride = 0, k_head_stride = 0;  // paged: block, slot, head
  int64_t v_batch_stride = 0, v_row_stride = 0, v_head_stride = 0;
  int64_t out_batch_stride = 0, out_row_stride = 0, out_head_stride = 0;
  // lse[b * lse_batch_stride + h * lse_head_stride + row]; row counts from the sequence's first
  // token in fixed layout ([B,Hq,Sq]) and from the packed tensor's first row in varlen ([Hq,Tq]).
  int64_t lse_batch_stride = 0, lse_head_stride = 0;

  int num_seqs = 0;
  int seq_offset = 0;  // first sequence of this launch (grids hold at most 65535 sequences)
  int num_heads_q = 0;
  int num_heads_kv = 0;
  int group = 1;       // num_heads_q / num_heads_kv
  int head_dim = 0;
  // Fixed-length sizes (cu_seqlens_q == nullptr); upper bounds otherwise.
  int seqlen_q = 0;
  int seqlen_kv = 0;
  int max_seqlen_q = 0;
  int max_seqlen_kv = 0;
  int64_t total_q = 0;  // query tokens in the launch: B*Sq (fixed) or rows of packed q

  // Varlen and paged: [num_seqs + 1] device arrays; nullptr selects the fixed layout.
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_kv = nullptr;

  // Paged KV: token t of sequence b is slot t % page_size of block
  // block_table[b * block_table_stride + t / page_size].
  const int32_t* block_table = nullptr;
  int block_table_stride = 0;
  int page_size = 1;

  // Selects the kernel's kCausal policy on the host (kernels read the template flag).
  bool causal = false;

  // |softmax_scale| * log2(e), clamped to >= FLT_MIN so that a zero scale still maps masked (-inf)
  // scores to probability 0 (a uniform softmax over the visible keys, as the definition gives).
  float scale_log2 = 0.f;
  // A negative softmax scale is folded into q: kernels negate q once per tile, so their inner
  // loops can take row maxima of raw scores.
  bool negate_q = false;

  // GQA packing: rows of the M tile are (token, head-in-group) pairs, token-major, `pack` heads
  // per token. pack == group packs the whole group (each K/V tile is read once per KV head);
  // pack == 1 gives one query head per CTA.
  int pack = 1;

  // Split-KV (flash-decoding): num_splits CTAs share one query tile's keys and write partial
  // results that split_kv_combine merges. o_partial [splits, total_q, Hq, D] and
  // lse_partial [splits, total_q, Hq], float32.
  int num_splits = 1;
  float* o_partial = nullptr;
  float* lse_partial = nullptr;
};

}  // namespace flashkv::cuda

#include "params_builder.h"

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace flashkv::cuda {
namespace {

void SetCommon(AttentionParams& p, int heads_q, int heads_kv, int head_dim,
               const AttentionOptions& options) {
  p.num_heads_q = heads_q;
  p.num_heads_kv = heads_kv;
  p.group = heads_q / heads_kv;
  p.head_dim = head_dim;
  p.causal = options.causal;
  const float scale = ResolveSoftmaxScale(options, head_dim);
  p.negate_q = scale < 0.f;
  // Clamped to FLT_MIN: a zero scale would turn masked scores (-inf) into NaN (-inf * 0); at
  // FLT_MIN every finite score still maps to 2^0 = 1, the uniform softmax a zero scale means.
  p.scale_log2 = std::fmax(std::fabs(scale) * 1.4426950408889634f, FLT_MIN);
}

}  // namespace

AttentionParams BuildParams(const FixedAttentionArgs& a) {
  AttentionParams p;
  SetCommon(p, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options);
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.out = a.out;
  p.lse = a.lse;
  p.q_batch_stride = a.q_strides.batch, p.q_row_stride = a.q_strides.row;
  p.q_head_stride = a.q_strides.head;
  p.k_batch_stride = a.k_strides.batch, p.k_row_stride = a.k_strides.row;
  p.k_head_stride = a.k_strides.head;
  p.v_batch_stride = a.v_strides.batch, p.v_row_stride = a.v_strides.row;
  p.v_head_stride = a.v_strides.head;
  p.out_batch_stride = a.out_strides.batch, p.out_row_stride = a.out_strides.row;
  p.out_head_stride = a.out_strides.head;
  // LSE [B, Hq, Sq].
  p.lse_batch_stride = static_cast<int64_t>(a.num_heads_q) * a.seqlen_q;
  p.lse_head_stride = a.seqlen_q;
  p.num_seqs = a.batch;
  p.seqlen_q = p.max_seqlen_q = a.seqlen_q;
  p.seqlen_kv = p.max_seqlen_kv = a.seqlen_kv;
  p.total_q = static_cast<int64_t>(a.batch) * a.seqlen_q;
  return p;
}

AttentionParams BuildParams(const VarlenAttentionArgs& a) {
  AttentionParams p;
  SetCommon(p, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options);
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.out = a.out;
  p.lse = a.lse;
  p.q_row_stride = a.q_strides.row, p.q_head_stride = a.q_strides.head;
  p.k_row_stride = a.k_strides.row, p.k_head_stride = a.k_strides.head;
  p.v_row_stride = a.v_strides.row, p.v_head_stride = a.v_strides.head;
  p.out_row_stride = a.out_strides.row, p.out_head_stride = a.out_strides.head;
  p.lse_head_stride = a.total_q;  // LSE [Hq, total_q]
  p.num_seqs = a.num_seqs;
  p.max_seqlen_q = a.max_seqlen_q;
  p.max_seqlen_kv = a.max_seqlen_kv;
  p.total_q = a.total_q;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.cu_seqlens_kv = a.cu_seqlens_kv;
  return p;
}

AttentionParams BuildParams(const PagedAttentionArgs& a) {
  AttentionParams p;
  SetCommon(p, a.num_heads_q, a.num_heads_kv, a.head_dim, a.options);
  p.q = a.q;
  p.k = a.k_cache;
  p.v = a.v_cache;
  p.out = a.out;
  p.lse = a.lse;
  p.q_row_stride = a.q_strides.row, p.q_head_stride = a.q_strides.head;
  p.k_batch_stride = p.v_batch_stride = a.cache_strides.batch;
  p.k_row_stride = p.v_row_stride = a.cache_strides.row;
  p.k_head_stride = p.v_head_stride = a.cache_strides.head;
  p.out_row_stride = a.out_strides.row, p.out_head_stride = a.out_strides.head;
  p.lse_head_stride = a.total_q;
  p.num_seqs = a.num_seqs;
  p.max_seqlen_q = a.max_seqlen_q;
  p.max_seqlen_kv = a.max_seqlen_kv;
  p.total_q = a.total_q;
  p.cu_seqlens_q = a.cu_seqlens_q;
  p.cu_seqlens_kv = a.cu_seqlens_kv;
  p.block_table = a.block_table;
  p.block_table_stride = a.block_table_stride;
  p.page_size = a.page_size;
  return p;
}

bool IsAligned16(const AttentionParams& p, int element_size) {
  auto ptr_ok = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  auto stride_ok = [&](int64_t stride) { return (stride * element_size) % 16 == 0; };
  bool ok = ptr_ok(p.q) && ptr_ok(p.k) && ptr_ok(p.v) && ptr_ok(p.out);
  ok = ok && stride_ok(p.q_row_stride) && stride_ok(p.q_head_stride) && stride_ok(p.q_batch_stride);
  ok = ok && stride_ok(p.k_row_stride) && stride_ok(p.k_head_stride) && stride_ok(p.k_batch_stride);
  ok = ok && stride_ok(p.v_row_stride) && stride_ok(p.v_head_stride) && stride_ok(p.v_batch_stride);
  ok = ok && stride_ok(p.out_row_stride) && stride_ok(p.out_head_stride) &&
       stride_ok(p.out_batch_stride);
  return ok;
}

}  // namespace flashkv::cuda

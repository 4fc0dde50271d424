// libflashkv_capi.so: the C ABI of flashkv/capi.h over flashkv/cuda_backend.h.

#include "flashkv/capi.h"

#include <cmath>
#include <cstring>

#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "sm90/host_setup.h"

namespace {

using flashkv::KernelStatus;

flashkv::Strides ToStrides(const int64_t* s) {
  if (s == nullptr) return flashkv::Strides{};
  return flashkv::Strides{s[0], s[1], s[2]};
}

flashkv::AttentionOptions ToOptions(int causal, float softmax_scale) {
  flashkv::AttentionOptions options;
  options.causal = causal != 0;
  if (!std::isnan(softmax_scale)) options.softmax_scale = softmax_scale;
  return options;
}

flashkv::cuda::Stream ToStream(void* stream) { return static_cast<flashkv::cuda::Stream>(stream); }

int Report(const KernelStatus& status, char* error, size_t error_size) {
  if (error != nullptr && error_size > 0) {
    const std::string& message = status.message();
    const size_t n = std::min(message.size(), error_size - 1);
    std::memcpy(error, message.data(), n);
    error[n] = '\0';
  }
  return static_cast<int>(status.code());
}

}  // namespace

extern "C" {

int flashkv_cuda_is_built(void) { return flashkv::cuda::IsBuilt() ? 1 : 0; }

int flashkv_cuda_is_compiled(int dtype, int head_dim) {
  return flashkv::cuda::IsCompiled(static_cast<flashkv::DType>(dtype), head_dim) ? 1 : 0;
}

int flashkv_cuda_attention(int dtype, int batch, int seqlen_q, int seqlen_kv, int num_heads_q,
                           int num_heads_kv, int head_dim, const void* q, const int64_t* q_strides,
                           const void* k, const int64_t* k_strides, const void* v,
                           const int64_t* v_strides, void* out, const int64_t* out_strides,
                           float* lse, int causal, float softmax_scale, void* stream, char* error,
                           size_t error_size) {
  flashkv::FixedAttentionArgs a;
  a.dtype = static_cast<flashkv::DType>(dtype);
  a.batch = batch;
  a.seqlen_q = seqlen_q;
  a.seqlen_kv = seqlen_kv;
  a.num_heads_q = num_heads_q;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  a.q = q, a.q_strides = ToStrides(q_strides);
  a.k = k, a.k_strides = ToStrides(k_strides);
  a.v = v, a.v_strides = ToStrides(v_strides);
  a.out = out, a.out_strides = ToStrides(out_strides);
  a.lse = lse;
  a.options = ToOptions(causal, softmax_scale);
  return Report(flashkv::cuda::Attention(a, ToStream(stream)), error, error_size);
}

int flashkv_cuda_attention_varlen(int dtype, int num_seqs, int num_heads_q, int num_heads_kv,
                                  int head_dim, int64_t total_q, int64_t total_kv,
                                  int max_seqlen_q, int max_seqlen_kv, const void* q,
                                  const int64_t* q_strides, const void* k,
                                  const int64_t* k_strides, const void* v,
                                  const int64_t* v_strides, void* out, const int64_t* out_strides,
                                  float* lse, const int32_t* cu_seqlens_q,
                                  const int32_t* cu_seqlens_kv, const int32_t* host_cu_seqlens_q,
                                  const int32_t* host_cu_seqlens_kv, int causal,
                                  float softmax_scale, void* stream, char* error,
                                  size_t error_size) {
  flashkv::VarlenAttentionArgs a;
  a.dtype = static_cast<flashkv::DType>(dtype);
  a.num_seqs = num_seqs;
  a.num_heads_q = num_heads_q;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  a.total_q = total_q;
  a.total_kv = total_kv;
  a.max_seqlen_q = max_seqlen_q;
  a.max_seqlen_kv = max_seqlen_kv;
  a.q = q, a.q_strides = ToStrides(q_strides);
  a.k = k, a.k_strides = ToStrides(k_strides);
  a.v = v, a.v_strides = ToStrides(v_strides);
  a.out = out, a.out_strides = ToStrides(out_strides);
  a.lse = lse;
  a.cu_seqlens_q = cu_seqlens_q;
  a.cu_seqlens_kv = cu_seqlens_kv;
  a.host_cu_seqlens_q = host_cu_seqlens_q;
  a.host_cu_seqlens_kv = host_cu_seqlens_kv;
  a.options = ToOptions(causal, softmax_scale);
  return Report(flashkv::cuda::AttentionVarlen(a, ToStream(stream)), error, error_size);
}

int flashkv_cuda_attention_paged(int dtype, int num_seqs, int num_heads_q, int num_heads_kv,
                                 int head_dim, int64_t total_q, int max_seqlen_q,
                                 int max_seqlen_kv, const void* q, const int64_t* q_strides,
                                 void* out, const int64_t* out_strides, float* lse,
                                 const void* k_cache, const void* v_cache,
                                 const int64_t* cache_strides, int num_blocks, int page_size,
                                 const int32_t* block_table, int block_table_stride,
                                 const int32_t* cu_seqlens_q, const int32_t* cu_seqlens_kv,
                                 const int32_t* host_block_table, const int32_t* host_cu_seqlens_q,
                                 const int32_t* host_cu_seqlens_kv, int causal,
                                 float softmax_scale, void* stream, char* error,
                                 size_t error_size) {
  flashkv::PagedAttentionArgs a;
  a.dtype = static_cast<flashkv::DType>(dtype);
  a.num_seqs = num_seqs;
  a.num_heads_q = num_heads_q;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  a.total_q = total_q;
  a.max_seqlen_q = max_seqlen_q;
  a.max_seqlen_kv = max_seqlen_kv;
  a.q = q, a.q_strides = ToStrides(q_strides);
  a.out = out, a.out_strides = ToStrides(out_strides);
  a.lse = lse;
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.cache_strides = ToStrides(cache_strides);
  a.num_blocks = num_blocks;
  a.page_size = page_size;
  a.block_table = block_table;
  a.block_table_stride = block_table_stride;
  a.cu_seqlens_q = cu_seqlens_q;
  a.cu_seqlens_kv = cu_seqlens_kv;
  a.host_block_table = host_block_table;
  a.host_cu_seqlens_q = host_cu_seqlens_q;
  a.host_cu_seqlens_kv = host_cu_seqlens_kv;
  a.options = ToOptions(causal, softmax_scale);
  return Report(flashkv::cuda::AttentionPaged(a, ToStream(stream)), error, error_size);
}

int flashkv_cuda_append_kv(int dtype, int64_t num_tokens, int num_heads_kv, int head_dim,
                           const void* k, const int64_t* k_strides, const void* v,
                           const int64_t* v_strides, void* k_cache, void* v_cache,
                           const int64_t* cache_strides, int num_blocks, int page_size,
                           const int64_t* slot_mapping, const int64_t* host_slot_mapping,
                           void* stream, char* error, size_t error_size) {
  flashkv::KvAppendArgs a;
  a.dtype = static_cast<flashkv::DType>(dtype);
  a.num_tokens = num_tokens;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  a.k = k, a.k_strides = ToStrides(k_strides);
  a.v = v, a.v_strides = ToStrides(v_strides);
  a.k_cache = k_cache;
  a.v_cache = v_cache;
  a.cache_strides = ToStrides(cache_strides);
  a.num_blocks = num_blocks;
  a.page_size = page_size;
  a.slot_mapping = slot_mapping;
  a.host_slot_mapping = host_slot_mapping;
  return Report(flashkv::cuda::AppendKv(a, ToStream(stream)), error, error_size);
}

int flashkv_cuda_testing_set_sm90_variant(int variant) {
  namespace sm90 = flashkv::cuda::sm90;
  if (variant < 0 || variant >= sm90::kNumSm90Variants) {
    return static_cast<int>(flashkv::KernelStatusCode::kInvalidArgument);
  }
  sm90::testing::SetVariant(static_cast<sm90::Sm90Variant>(variant));
  return 0;
}

}  // extern "C"

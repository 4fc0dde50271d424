#pragma once

/* C ABI of the CUDA attention kernels (libflashkv_capi.so), for callers without C++ such as
 * Python's ctypes on torch tensors' data_ptr(). Every function mirrors one call of
 * flashkv/cuda_backend.h: dtype is 1 = fp16, 2 = bf16, 3 = fp32; strides are {batch, row, head}
 * in elements; softmax_scale NaN selects 1/sqrt(head_dim); stream is a cudaStream_t (NULL = legacy
 * default stream). Device pointers for tensors and the device index arrays; host_* pointers are
 * host copies of the same index arrays (validation and launch heuristics read them).
 *
 * Returns 0 on success, else the KernelStatusCode (3 invalid argument, 8 resource exhausted,
 * 9 failed precondition, 12 unimplemented, 13 internal, 14 unavailable) with the message copied
 * into `error` (NUL-terminated, truncated to error_size bytes) when error != NULL. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int flashkv_cuda_is_built(void);
int flashkv_cuda_is_compiled(int dtype, int head_dim);

int flashkv_cuda_attention(int dtype, int batch, int seqlen_q, int seqlen_kv, int num_heads_q,
                           int num_heads_kv, int head_dim, const void* q, const int64_t* q_strides,
                           const void* k, const int64_t* k_strides, const void* v,
                           const int64_t* v_strides, void* out, const int64_t* out_strides,
                           float* lse, int causal, float softmax_scale, void* stream, char* error,
                           size_t error_size);

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
                                  size_t error_size);

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
                                 size_t error_size);

int flashkv_cuda_append_kv(int dtype, int64_t num_tokens, int num_heads_kv, int head_dim,
                           const void* k, const int64_t* k_strides, const void* v,
                           const int64_t* v_strides, void* k_cache, void* v_cache,
                           const int64_t* cache_strides, int num_blocks, int page_size,
                           const int64_t* slot_mapping, const int64_t* host_slot_mapping,
                           void* stream, char* error, size_t error_size);

/* Benchmarks and tests only: the variant of the sm90 kernel that later launches in this process
 * take (kernels/cuda/sm90/tile_shape.h's Sm90Variant: 0 = baseline, 1 = the dynamic tile
 * schedule for causal launches, 2 = auto, the default, 3 = the lazy O rescale; predictions in
 * kernels/cuda/NOTES.md). Process-wide; returns 0, or 3 for an unknown variant. */
int flashkv_cuda_testing_set_sm90_variant(int variant);

#ifdef __cplusplus
}  // extern "C"
#endif

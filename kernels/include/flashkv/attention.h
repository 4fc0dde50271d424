#pragma once

// The attention API shared by the CPU and CUDA implementations (flashkv/cpu_backend.h,
// flashkv/cuda_backend.h). Framework-free: plain structs of pointers, sizes and element strides.
//
// Conventions
// - Tensors hold `dtype` elements; the head dimension is always contiguous (stride 1). Every other
//   stride is given explicitly, in elements, as 64-bit values.
// - GQA/MQA: query head h reads KV head h / (num_heads_q / num_heads_kv).
// - Causal masks are aligned bottom-right: in a sequence with Sq queries and Skv keys, query i sees
//   keys j <= i + Skv - Sq. A one-token decode sees its whole context. A query row that sees no key
//   (Skv == 0, or Sq > Skv under causal) yields O = 0 and LSE = -inf.
// - LSE is the natural-log log-sum-exp of the scaled scores of each query row, float32.
// - Memory: pointers live where the backend computes (host memory for CPU, device memory for
//   CUDA). Varlen and paged calls also take host copies of their index arrays (`host_*`), so that
//   every index is validated before any work starts and launch heuristics see the real lengths.
//   The CPU backend uses the primary pointers when the host copies are null.

#include <cstdint>
#include <optional>

#include "flashkv/dtype.h"
#include "flashkv/kernel_status.h"

namespace flashkv {

// Head dims with an implementation (which ones are compiled is a build option: see IsCompiled()).
inline constexpr int kSupportedHeadDims[] = {32, 64, 96, 128, 192, 256};

// Element strides of a tensor laid out as [batch, row, head, dim] with dim contiguous. For
// packed (varlen) tensors `batch` is unused. For a paged cache pool [num_blocks, Hkv, page_size,
// D], `batch` is the block stride and `row` the stride between slots of one page.
struct Strides {
  int64_t batch = 0;
  int64_t row = 0;
  int64_t head = 0;
};

// Strides of a dense [batch, rows, heads, dim] tensor.
constexpr Strides DenseStrides(int64_t rows, int64_t heads, int64_t dim) {
  return Strides{rows * heads * dim, heads * dim, dim};
}
// Strides of a dense cache pool [num_blocks, heads, page_size, dim].
constexpr Strides DensePoolStrides(int64_t heads, int64_t page_size, int64_t dim) {
  return Strides{heads * page_size * dim, dim, page_size * dim};
}

struct AttentionOptions {
  bool causal = false;
  // Multiplies q·k before the softmax. Default 1/sqrt(head_dim).
  std::optional<float> softmax_scale;
};

float ResolveSoftmaxScale(const AttentionOptions& options, int head_dim);

// Fixed-length batch: Q [B,Sq,Hq,D], K and V [B,Skv,Hkv,D] -> O [B,Sq,Hq,D].
struct FixedAttentionArgs {
  DType dtype = DType::kFloat16;
  int batch = 0;
  int seqlen_q = 0;
  int seqlen_kv = 0;
  int num_heads_q = 0;
  int num_heads_kv = 0;
  int head_dim = 0;

  const void* q = nullptr;
  Strides q_strides;
  const void* k = nullptr;
  Strides k_strides;
  const void* v = nullptr;
  Strides v_strides;
  void* out = nullptr;
  Strides out_strides;
  // Optional [B, Hq, Sq] float32, contiguous.
  float* lse = nullptr;

  AttentionOptions options;
};

// Variable-length batch packed along the token axis: Q [Tq,Hq,D], K and V [Tkv,Hkv,D] ->
// O [Tq,Hq,D]. Sequence b owns query rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) and key rows
// [cu_seqlens_kv[b], cu_seqlens_kv[b+1]). Zero-length sequences are allowed.
struct VarlenAttentionArgs {
  DType dtype = DType::kFloat16;
  int num_seqs = 0;
  int num_heads_q = 0;
  int num_heads_kv = 0;
  int head_dim = 0;
  int64_t total_q = 0;   // rows of q and out
  int64_t total_kv = 0;  // rows of k and v
  int max_seqlen_q = 0;  // upper bounds on any sequence's length (checked)
  int max_seqlen_kv = 0;

  const void* q = nullptr;
  Strides q_strides;  // batch unused
  const void* k = nullptr;
  Strides k_strides;
  const void* v = nullptr;
  Strides v_strides;
  void* out = nullptr;
  Strides out_strides;
  // Optional [Hq, total_q] float32, contiguous.
  float* lse = nullptr;

  const int32_t* cu_seqlens_q = nullptr;   // [num_seqs + 1], backend memory
  const int32_t* cu_seqlens_kv = nullptr;  // [num_seqs + 1], backend memory
  const int32_t* host_cu_seqlens_q = nullptr;
  const int32_t* host_cu_seqlens_kv = nullptr;

  AttentionOptions options;
};

// Packed queries over a paged KV cache: Q [Tq,Hq,D]; K and V pools [num_blocks,Hkv,page_size,D].
// Sequence b has q_len = cu_seqlens_q[b+1] - cu_seqlens_q[b] new queries and a context of
// kv_len = cu_seqlens_kv[b+1] - cu_seqlens_kv[b] tokens (new tokens included, already written to
// the cache). Token t of sequence b lives in block block_table[b * block_table_stride +
// t / page_size], slot t % page_size. Prefill chunks (q_len > 1) and decodes (q_len = 1) mix
// freely.
struct PagedAttentionArgs {
  DType dtype = DType::kFloat16;
  int num_seqs = 0;
  int num_heads_q = 0;
  int num_heads_kv = 0;
  int head_dim = 0;
  int64_t total_q = 0;
  int max_seqlen_q = 0;
  int max_seqlen_kv = 0;

  const void* q = nullptr;
  Strides q_strides;  // batch unused
  void* out = nullptr;
  Strides out_strides;
  float* lse = nullptr;  // optional [Hq, total_q]

  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  Strides cache_strides;  // shared by both pools: {block, slot, head}
  int num_blocks = 0;
  int page_size = 0;

  const int32_t* block_table = nullptr;  // [num_seqs, block_table_stride], backend memory
  int block_table_stride = 0;            // max blocks per sequence
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_kv = nullptr;
  const int32_t* host_block_table = nullptr;
  const int32_t* host_cu_seqlens_q = nullptr;
  const int32_t* host_cu_seqlens_kv = nullptr;

  AttentionOptions options;
};

// Writes new K/V rows [num_tokens, Hkv, D] into cache pools. Row i goes to slot
// slot_mapping[i] = block * page_size + offset; a negative slot skips the row (padding).
struct KvAppendArgs {
  DType dtype = DType::kFloat16;
  int64_t num_tokens = 0;
  int num_heads_kv = 0;
  int head_dim = 0;

  const void* k = nullptr;
  Strides k_strides;  // batch unused
  const void* v = nullptr;
  Strides v_strides;

  void* k_cache = nullptr;
  void* v_cache = nullptr;
  Strides cache_strides;
  int num_blocks = 0;
  int page_size = 0;

  const int64_t* slot_mapping = nullptr;  // [num_tokens], backend memory
  const int64_t* host_slot_mapping = nullptr;
};

// Argument checks shared by both backends. Each error names the argument and the limit, e.g.
// "num_heads_q (12) must be a multiple of num_heads_kv (5)". Index arrays are read through their
// host copies (or the primary pointers when `primary_is_host`).
KernelStatus ValidateFixed(const FixedAttentionArgs& args);
KernelStatus ValidateVarlen(const VarlenAttentionArgs& args, bool primary_is_host);
KernelStatus ValidatePaged(const PagedAttentionArgs& args, bool primary_is_host);
KernelStatus ValidateKvAppend(const KvAppendArgs& args, bool primary_is_host);

// The tensors of a paged launch that change from one layer of a model to the next, the batch and
// its metadata staying the same (a decode pass: docs/api.md#decode-passes).
struct PagedLayerTensors {
  const void* q = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  // The layer's pools' geometry: the planned strides, and at least the planned blocks (the plan
  // checked every block id against those).
  Strides cache_strides;
  int num_blocks = 0;
};

PagedLayerTensors LayerTensorsOf(const PagedAttentionArgs& args);

// A paged launch validated once and run for several layers. Everything ValidatePaged checks
// (above all the block table, one read per block of the batch) holds for every layer whose
// launch differs only in PagedLayerTensors: the same shapes, strides, pool geometry and metadata.
// A run then checks only the new pointers, so a pass over L layers walks its block table once
// instead of L times, and a caller can do the checking before it starts timing the kernels.
// The metadata the planned args point to (block_table, cu_seqlens_*, their host copies) must stay
// unchanged and alive while the plan is run. Made by a backend's PlanAttentionPaged; run by the
// same backend's RunAttentionPaged (a plan names the backend it was checked for).
class PagedAttentionPlan {
 public:
  enum class Backend { kNone, kCpu, kCuda };

  // ValidatePaged(args, primary_is_host = (backend == kCpu)); on success the plan holds args.
  static KernelStatus Make(const PagedAttentionArgs& args, Backend backend,
                           PagedAttentionPlan* plan);

  Backend backend() const { return backend_; }
  // The planned args with `tensors` in place of their pointers; kInvalidArgument naming the
  // tensor when one the launch reads or writes is null, when the pools' geometry is not the
  // planned one, or when the plan is not for `backend`.
  KernelStatus ForLayer(const PagedLayerTensors& tensors, Backend backend,
                        PagedAttentionArgs* args) const;

 private:
  PagedAttentionArgs args_;
  Backend backend_ = Backend::kNone;
  bool has_kv_ = false;  // some sequence has context: the pools are read
};

// Helpers for building the args of dense, contiguous tensors (tests, benchmarks, RPC handlers).
FixedAttentionArgs MakeDenseFixedArgs(DType dtype, int batch, int seqlen_q, int seqlen_kv,
                                      int num_heads_q, int num_heads_kv, int head_dim,
                                      const void* q, const void* k, const void* v, void* out,
                                      float* lse, AttentionOptions options);

}  // namespace flashkv

// Argument validation shared by the CPU and CUDA backends. Every message names the argument, the
// offending value and the limit, because it travels unchanged to the client as a gRPC status.

#include <cmath>
#include <string>

#include "flashkv/attention.h"

namespace flashkv {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

// "{batch B, row R, head H}", as every message about a tensor's strides spells them.
std::string StridesStr(const Strides& s) {
  return "{batch " + Str(s.batch) + ", row " + Str(s.row) + ", head " + Str(s.head) + "}";
}

bool IsSupportedHeadDim(int head_dim) {
  for (int d : kSupportedHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

KernelStatus CheckDType(DType dtype) {
  if (dtype == DType::kFloat16 || dtype == DType::kBFloat16 || dtype == DType::kFloat32) {
    return KernelStatus::Ok();
  }
  return InvalidArgument("dtype (" + Str(static_cast<int>(dtype)) + ") must be fp16, bf16 or fp32");
}

KernelStatus CheckHeadDim(int head_dim) {
  if (!IsSupportedHeadDim(head_dim)) {
    return InvalidArgument("head_dim (" + Str(head_dim) +
                           ") must be one of 32, 64, 96, 128, 192, 256");
  }
  return KernelStatus::Ok();
}

KernelStatus CheckAtLeastOne(const char* name, int value) {
  if (value < 1) return InvalidArgument(std::string(name) + " (" + Str(value) + ") must be >= 1");
  return KernelStatus::Ok();
}

KernelStatus CheckHeads(int num_heads_q, int num_heads_kv, int head_dim) {
  FLASHKV_RETURN_IF_ERROR(CheckHeadDim(head_dim));
  FLASHKV_RETURN_IF_ERROR(CheckAtLeastOne("num_heads_q", num_heads_q));
  FLASHKV_RETURN_IF_ERROR(CheckAtLeastOne("num_heads_kv", num_heads_kv));
  if (num_heads_q % num_heads_kv != 0) {
    return InvalidArgument("num_heads_q (" + Str(num_heads_q) +
                           ") must be a multiple of num_heads_kv (" + Str(num_heads_kv) + ")");
  }
  return KernelStatus::Ok();
}

KernelStatus CheckOptions(const AttentionOptions& options) {
  if (options.softmax_scale.has_value() && !std::isfinite(*options.softmax_scale)) {
    return InvalidArgument("softmax_scale must be finite");
  }
  return KernelStatus::Ok();
}

KernelStatus CheckNonNegative(const char* name, int64_t value) {
  if (value < 0) return InvalidArgument(std::string(name) + " (" + Str(value) + ") must be >= 0");
  return KernelStatus::Ok();
}

// A tensor with elements must have a pointer; its strides must be non-negative, and an output's
// strides positive (a zero stride would make two outputs alias).
KernelStatus CheckTensor(const char* name, const void* data, bool has_elements, const Strides& s,
                         bool is_output, bool check_batch) {
  if (!has_elements) return KernelStatus::Ok();
  if (data == nullptr) return InvalidArgument(std::string(name) + " is null");
  const int64_t floor = is_output ? 1 : 0;
  const char* what = is_output ? "> 0" : ">= 0";
  if ((check_batch && s.batch < floor) || s.row < floor || s.head < floor) {
    return InvalidArgument(std::string(name) + " strides " + StridesStr(s) + " must be " + what);
  }
  return KernelStatus::Ok();
}

const int32_t* HostView(const int32_t* primary, const int32_t* host, bool primary_is_host) {
  return host != nullptr ? host : (primary_is_host ? primary : nullptr);
}

// cu_seqlens must start at 0, never decrease, stay within `total` rows (when total >= 0) and give
// no sequence more than `max_len` rows.
KernelStatus CheckCuSeqlens(const char* name, const int32_t* primary, const int32_t* host,
                            bool primary_is_host, int num_seqs, int64_t total, const char* max_name,
                            int max_len) {
  if (primary == nullptr) return InvalidArgument(std::string(name) + " is null");
  const int32_t* cu = HostView(primary, host, primary_is_host);
  if (cu == nullptr) {
    return InvalidArgument(std::string("host_") + name +
                           " is null: this backend needs a host copy to validate the offsets");
  }
  if (cu[0] != 0) {
    return InvalidArgument(std::string(name) + "[0] (" + Str(cu[0]) + ") must be 0");
  }
  for (int b = 0; b < num_seqs; ++b) {
    const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    if (len < 0) {
      return InvalidArgument(std::string(name) + "[" + Str(b + 1) + "] (" + Str(cu[b + 1]) +
                             ") is less than " + name + "[" + Str(b) + "] (" + Str(cu[b]) +
                             "): offsets must not decrease");
    }
    if (len > max_len) {
      return InvalidArgument(std::string("sequence ") + Str(b) + " has " + Str(len) + " rows in " +
                             name + ", more than " + max_name + " (" + Str(max_len) + ")");
    }
  }
  if (total >= 0 && cu[num_seqs] > total) {
    return InvalidArgument(std::string(name) + "[" + Str(num_seqs) + "] (" + Str(cu[num_seqs]) +
                           ") is past the end of the tensor (" + Str(total) + " rows)");
  }
  return KernelStatus::Ok();
}

}  // namespace

float ResolveSoftmaxScale(const AttentionOptions& options, int head_dim) {
  if (options.softmax_scale.has_value()) return *options.softmax_scale;
  return 1.0f / std::sqrt(static_cast<float>(head_dim));
}

KernelStatus ValidateFixed(const FixedAttentionArgs& a) {
  FLASHKV_RETURN_IF_ERROR(CheckDType(a.dtype));
  FLASHKV_RETURN_IF_ERROR(CheckHeads(a.num_heads_q, a.num_heads_kv, a.head_dim));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("batch", a.batch));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("seqlen_q", a.seqlen_q));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("seqlen_kv", a.seqlen_kv));
  FLASHKV_RETURN_IF_ERROR(CheckOptions(a.options));
  const bool has_q = a.batch > 0 && a.seqlen_q > 0;
  const bool has_kv = has_q && a.seqlen_kv > 0;  // K/V are not read when no query exists
  FLASHKV_RETURN_IF_ERROR(CheckTensor("q", a.q, has_q, a.q_strides, false, true));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("k", a.k, has_kv, a.k_strides, false, true));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("v", a.v, has_kv, a.v_strides, false, true));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("out", a.out, has_q, a.out_strides, true, true));
  return KernelStatus::Ok();
}

KernelStatus ValidateVarlen(const VarlenAttentionArgs& a, bool primary_is_host) {
  FLASHKV_RETURN_IF_ERROR(CheckDType(a.dtype));
  FLASHKV_RETURN_IF_ERROR(CheckHeads(a.num_heads_q, a.num_heads_kv, a.head_dim));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("num_seqs", a.num_seqs));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("total_q", a.total_q));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("total_kv", a.total_kv));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("max_seqlen_q", a.max_seqlen_q));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("max_seqlen_kv", a.max_seqlen_kv));
  FLASHKV_RETURN_IF_ERROR(CheckOptions(a.options));
  FLASHKV_RETURN_IF_ERROR(CheckCuSeqlens("cu_seqlens_q", a.cu_seqlens_q, a.host_cu_seqlens_q,
                                         primary_is_host, a.num_seqs, a.total_q, "max_seqlen_q",
                                         a.max_seqlen_q));
  FLASHKV_RETURN_IF_ERROR(CheckCuSeqlens("cu_seqlens_kv", a.cu_seqlens_kv, a.host_cu_seqlens_kv,
                                         primary_is_host, a.num_seqs, a.total_kv, "max_seqlen_kv",
                                         a.max_seqlen_kv));
  const bool has_q = a.total_q > 0;
  const bool has_kv = a.total_kv > 0;
  FLASHKV_RETURN_IF_ERROR(CheckTensor("q", a.q, has_q, a.q_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("k", a.k, has_kv, a.k_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("v", a.v, has_kv, a.v_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("out", a.out, has_q, a.out_strides, true, false));
  return KernelStatus::Ok();
}

KernelStatus ValidatePaged(const PagedAttentionArgs& a, bool primary_is_host) {
  FLASHKV_RETURN_IF_ERROR(CheckDType(a.dtype));
  FLASHKV_RETURN_IF_ERROR(CheckHeads(a.num_heads_q, a.num_heads_kv, a.head_dim));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("num_seqs", a.num_seqs));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("total_q", a.total_q));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("max_seqlen_q", a.max_seqlen_q));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("max_seqlen_kv", a.max_seqlen_kv));
  FLASHKV_RETURN_IF_ERROR(CheckOptions(a.options));
  FLASHKV_RETURN_IF_ERROR(CheckAtLeastOne("page_size", a.page_size));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("num_blocks", a.num_blocks));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("block_table_stride", a.block_table_stride));
  FLASHKV_RETURN_IF_ERROR(CheckCuSeqlens("cu_seqlens_q", a.cu_seqlens_q, a.host_cu_seqlens_q,
                                         primary_is_host, a.num_seqs, a.total_q, "max_seqlen_q",
                                         a.max_seqlen_q));
  // cu_seqlens_kv counts context tokens in the cache, not rows of a packed tensor: no upper end.
  FLASHKV_RETURN_IF_ERROR(CheckCuSeqlens("cu_seqlens_kv", a.cu_seqlens_kv, a.host_cu_seqlens_kv,
                                         primary_is_host, a.num_seqs, -1, "max_seqlen_kv",
                                         a.max_seqlen_kv));
  const int32_t* cu_kv = HostView(a.cu_seqlens_kv, a.host_cu_seqlens_kv, primary_is_host);
  const bool has_q = a.total_q > 0;
  const bool has_kv = cu_kv[a.num_seqs] > 0;
  FLASHKV_RETURN_IF_ERROR(CheckTensor("q", a.q, has_q, a.q_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("out", a.out, has_q, a.out_strides, true, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("k_cache", a.k_cache, has_kv, a.cache_strides, false, true));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("v_cache", a.v_cache, has_kv, a.cache_strides, false, true));
  if (!has_kv) return KernelStatus::Ok();
  if (a.block_table == nullptr) return InvalidArgument("block_table is null");
  const int32_t* table = HostView(a.block_table, a.host_block_table, primary_is_host);
  if (table == nullptr) {
    return InvalidArgument(
        "host_block_table is null: this backend needs a host copy to validate block ids");
  }
  for (int b = 0; b < a.num_seqs; ++b) {
    const int64_t kv_len = static_cast<int64_t>(cu_kv[b + 1]) - cu_kv[b];
    const int64_t blocks_needed = (kv_len + a.page_size - 1) / a.page_size;
    if (blocks_needed > a.block_table_stride) {
      return InvalidArgument("sequence " + Str(b) + " has " + Str(kv_len) + " context tokens, " +
                             Str(blocks_needed) + " blocks of " + Str(a.page_size) +
                             ", but block_table_stride is " + Str(a.block_table_stride));
    }
    const int32_t* row = table + static_cast<int64_t>(b) * a.block_table_stride;
    for (int64_t i = 0; i < blocks_needed; ++i) {
      if (row[i] < 0 || row[i] >= a.num_blocks) {
        return InvalidArgument("block_table[" + Str(b) + "][" + Str(i) + "] (" + Str(row[i]) +
                               ") is out of range [0, " + Str(a.num_blocks) + ")");
      }
    }
  }
  return KernelStatus::Ok();
}

KernelStatus ValidateKvAppend(const KvAppendArgs& a, bool primary_is_host) {
  FLASHKV_RETURN_IF_ERROR(CheckDType(a.dtype));
  FLASHKV_RETURN_IF_ERROR(CheckHeadDim(a.head_dim));
  FLASHKV_RETURN_IF_ERROR(CheckAtLeastOne("num_heads_kv", a.num_heads_kv));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("num_tokens", a.num_tokens));
  FLASHKV_RETURN_IF_ERROR(CheckAtLeastOne("page_size", a.page_size));
  FLASHKV_RETURN_IF_ERROR(CheckNonNegative("num_blocks", a.num_blocks));
  if (a.num_tokens == 0) return KernelStatus::Ok();
  FLASHKV_RETURN_IF_ERROR(CheckTensor("k", a.k, true, a.k_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("v", a.v, true, a.v_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("k_cache", a.k_cache, true, a.cache_strides, true, true));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("v_cache", a.v_cache, true, a.cache_strides, true, true));
  if (a.slot_mapping == nullptr) return InvalidArgument("slot_mapping is null");
  const int64_t* slots = a.host_slot_mapping != nullptr
                             ? a.host_slot_mapping
                             : (primary_is_host ? a.slot_mapping : nullptr);
  if (slots == nullptr) {
    return InvalidArgument(
        "host_slot_mapping is null: this backend needs a host copy to validate slots");
  }
  const int64_t num_slots = static_cast<int64_t>(a.num_blocks) * a.page_size;
  for (int64_t i = 0; i < a.num_tokens; ++i) {
    if (slots[i] >= num_slots) {
      return InvalidArgument("slot_mapping[" + Str(i) + "] (" + Str(slots[i]) +
                             ") is out of range [0, " + Str(num_slots) + ")");
    }
  }
  return KernelStatus::Ok();
}

PagedLayerTensors LayerTensorsOf(const PagedAttentionArgs& a) {
  return PagedLayerTensors{a.q, a.out, a.lse, a.k_cache, a.v_cache, a.cache_strides, a.num_blocks};
}

KernelStatus PagedAttentionPlan::Make(const PagedAttentionArgs& args, Backend backend,
                                      PagedAttentionPlan* plan) {
  if (backend == Backend::kNone) return InvalidArgument("a paged plan needs a backend");
  const bool primary_is_host = backend == Backend::kCpu;
  FLASHKV_RETURN_IF_ERROR(ValidatePaged(args, primary_is_host));
  plan->args_ = args;
  plan->has_kv_ =
      HostView(args.cu_seqlens_kv, args.host_cu_seqlens_kv, primary_is_host)[args.num_seqs] > 0;
  plan->backend_ = backend;
  return KernelStatus::Ok();
}

KernelStatus PagedAttentionPlan::ForLayer(const PagedLayerTensors& t, Backend backend,
                                          PagedAttentionArgs* args) const {
  if (backend_ != backend) {
    return InvalidArgument(backend_ == Backend::kNone
                               ? "the paged plan was not made (PlanAttentionPaged)"
                               : "the paged plan was made for the other backend");
  }
  // The checks of ValidatePaged that read these pointers; the rest holds from Make.
  const bool has_q = args_.total_q > 0;
  FLASHKV_RETURN_IF_ERROR(CheckTensor("q", t.q, has_q, args_.q_strides, false, false));
  FLASHKV_RETURN_IF_ERROR(CheckTensor("out", t.out, has_q, args_.out_strides, true, false));
  FLASHKV_RETURN_IF_ERROR(
      CheckTensor("k_cache", t.k_cache, has_kv_, args_.cache_strides, false, true));
  FLASHKV_RETURN_IF_ERROR(
      CheckTensor("v_cache", t.v_cache, has_kv_, args_.cache_strides, false, true));
  const Strides& s = t.cache_strides;
  const Strides& planned = args_.cache_strides;
  if (s.batch != planned.batch || s.row != planned.row || s.head != planned.head) {
    return InvalidArgument("cache_strides " + StridesStr(s) + " differ from the planned " +
                           StridesStr(planned));
  }
  if (t.num_blocks < args_.num_blocks) {
    return InvalidArgument("num_blocks (" + Str(t.num_blocks) + ") is less than the planned " +
                           Str(args_.num_blocks) + ": the plan checked block ids against those");
  }
  *args = args_;
  args->num_blocks = t.num_blocks;
  args->q = t.q;
  args->out = t.out;
  args->lse = t.lse;
  args->k_cache = t.k_cache;
  args->v_cache = t.v_cache;
  return KernelStatus::Ok();
}

FixedAttentionArgs MakeDenseFixedArgs(DType dtype, int batch, int seqlen_q, int seqlen_kv,
                                      int num_heads_q, int num_heads_kv, int head_dim,
                                      const void* q, const void* k, const void* v, void* out,
                                      float* lse, AttentionOptions options) {
  FixedAttentionArgs a;
  a.dtype = dtype;
  a.batch = batch;
  a.seqlen_q = seqlen_q;
  a.seqlen_kv = seqlen_kv;
  a.num_heads_q = num_heads_q;
  a.num_heads_kv = num_heads_kv;
  a.head_dim = head_dim;
  a.q = q;
  a.q_strides = DenseStrides(seqlen_q, num_heads_q, head_dim);
  a.k = k;
  a.k_strides = DenseStrides(seqlen_kv, num_heads_kv, head_dim);
  a.v = v;
  a.v_strides = DenseStrides(seqlen_kv, num_heads_kv, head_dim);
  a.out = out;
  a.out_strides = DenseStrides(seqlen_q, num_heads_q, head_dim);
  a.lse = lse;
  a.options = options;
  return a;
}

}  // namespace flashkv

#include "verify.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flashkv/attention.h"
#include "flashkv/client/status.h"
#include "flashkv/cpu_backend.h"

namespace flashkv::tools {

Tolerance DefaultTolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:  // unit roundoff 2^-11 ~ 4.9e-4
      return {4e-3, 4e-3};
    case DType::kBFloat16:  // unit roundoff 2^-8 ~ 3.9e-3
      return {3e-2, 3e-2};
    case DType::kFloat32:  // accumulation order only
      return {1e-4, 1e-4};
  }
  return {0, 0};
}

Comparison Compare(const TensorView& got, const TensorView& want, Tolerance tolerance) {
  Comparison result;
  const int64_t n = std::min(got.num_elements(), want.num_elements());
  result.elements = n;
  constexpr int64_t kChunk = 4096;
  std::vector<float> g(kChunk), w(kChunk);
  const int gs = DTypeSize(got.dtype()), ws = DTypeSize(want.dtype());
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t count = std::min(kChunk, n - begin);
    ConvertToFloat(got.dtype(), got.data() + begin * gs, g.data(), count);
    ConvertToFloat(want.dtype(), want.data() + begin * ws, w.data(), count);
    for (int64_t i = 0; i < count; ++i) {
      const double diff = std::fabs(double(g[i]) - double(w[i]));
      const bool bad =
          !std::isfinite(g[i]) || !(diff <= tolerance.atol + tolerance.rtol * std::fabs(w[i]));
      if (std::isfinite(diff)) result.max_abs_error = std::max(result.max_abs_error, diff);
      if (!bad) continue;
      if (!result.first_index.has_value()) {
        result.first_index = begin + i;
        result.first_got = g[i];
        result.first_want = w[i];
      }
      ++result.mismatches;
    }
  }
  if (got.num_elements() != want.num_elements()) {
    result.mismatches += std::abs(got.num_elements() - want.num_elements());
  }
  return result;
}

absl::StatusOr<HostTensor> CpuAttention(const TensorView& q, const TensorView& k,
                                        const TensorView& v, bool causal,
                                        std::optional<float> softmax_scale, HostTensor* lse) {
  for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (t->shape().size() != 4) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".shape ", ShapeString(t->shape()),
                                                     " must be [batch, seqlen, heads, head_dim]"));
    }
  }
  const auto& qs = q.shape();
  const auto& ks = k.shape();
  if (k.dtype() != q.dtype() || v.dtype() != q.dtype()) {
    return absl::InvalidArgumentError("q, k and v must have one dtype");
  }
  if (k.shape() != v.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat("k.shape ", ShapeString(ks), " != v.shape ", ShapeString(v.shape())));
  }
  if (ks[0] != qs[0] || ks[3] != qs[3]) {
    return absl::InvalidArgumentError(absl::StrCat("k.shape ", ShapeString(ks),
                                                   " must match q.shape ", ShapeString(qs),
                                                   " in batch and head_dim"));
  }
  HostTensor out = HostTensor::Zeros(q.dtype(), Shape(qs.begin(), qs.end()));
  if (lse != nullptr) *lse = HostTensor::Zeros(DType::kFloat32, {qs[0], qs[2], qs[1]});
  AttentionOptions options;
  options.causal = causal;
  options.softmax_scale = softmax_scale;
  FixedAttentionArgs args = MakeDenseFixedArgs(
      q.dtype(), static_cast<int>(qs[0]), static_cast<int>(qs[1]), static_cast<int>(ks[1]),
      static_cast<int>(qs[2]), static_cast<int>(ks[2]), static_cast<int>(qs[3]), q.data(), k.data(),
      v.data(), out.mutable_data(),
      lse != nullptr ? reinterpret_cast<float*>(lse->mutable_data()) : nullptr, options);
  if (absl::Status s = FromKernel(cpu::Attention(args)); !s.ok()) return s;
  return out;
}

absl::Status CpuAttentionRows(DType dtype, int64_t sq, int64_t skv, int num_heads_q,
                              int num_heads_kv, int head_dim, const void* q, const void* k,
                              const void* v, void* out) {
  AttentionOptions options;
  options.causal = true;
  FixedAttentionArgs args =
      MakeDenseFixedArgs(dtype, 1, static_cast<int>(sq), static_cast<int>(skv), num_heads_q,
                         num_heads_kv, head_dim, q, k, v, out, nullptr, options);
  return FromKernel(cpu::Attention(args));
}

}  // namespace flashkv::tools

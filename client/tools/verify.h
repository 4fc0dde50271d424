#pragma once

// Checking a server's attention output against a local recomputation: the CPU implementation
// (flashkv::cpu) run on the very bytes that were sent, compared with per-dtype tolerances. Shared
// by `flashkv attention` and `flashkv-loadgen`.

#include <cstdint>
#include <optional>

#include "absl/status/statusor.h"
#include "flashkv/client/tensor.h"

namespace flashkv::tools {

// |got - want| <= atol + rtol * |want| per element. Any non-finite `got` is a mismatch.
struct Tolerance {
  double atol = 0;
  double rtol = 0;
};

// Bounds for a server that may round differently from the CPU implementation (another
// accumulation order; P rounded to the input dtype before the PV product, as flash kernels do):
// a few units of the dtype's rounding error on outputs of magnitude <= max |v| = 1.
Tolerance DefaultTolerance(DType dtype);

struct Comparison {
  int64_t elements = 0;
  int64_t mismatches = 0;
  double max_abs_error = 0;
  // The first mismatching element (flat index), with both values.
  std::optional<int64_t> first_index;
  float first_got = 0;
  float first_want = 0;

  bool ok() const { return mismatches == 0; }
};

// Element-wise comparison of two tensors of the same number of elements (any dtypes).
Comparison Compare(const TensorView& got, const TensorView& want, Tolerance tolerance);

// Dense attention on the CPU: q [B,Sq,Hq,D], k, v [B,Skv,Hkv,D] -> out [B,Sq,Hq,D] in q's dtype;
// causal masks bottom-right. `lse` (optional) receives [B,Hq,Sq] float32. Kernel errors come back
// with their code and message.
absl::StatusOr<HostTensor> CpuAttention(const TensorView& q, const TensorView& k,
                                        const TensorView& v, bool causal,
                                        std::optional<float> softmax_scale,
                                        HostTensor* lse = nullptr);

// The same for raw rows of one sequence: q [sq,Hq,D] against k, v [skv,Hkv,D], causal, written to
// `out` [sq,Hq,D] (dtype bytes). For the load generator's hot path: no allocation of its own.
absl::Status CpuAttentionRows(DType dtype, int64_t sq, int64_t skv, int num_heads_q,
                              int num_heads_kv, int head_dim, const void* q, const void* k,
                              const void* v, void* out);

}  // namespace flashkv::tools

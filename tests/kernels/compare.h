#pragma once

// Comparison of a kernel's output against a reference: every element of O and LSE, per-dtype
// tolerances, the naive-same-dtype bound for fp16/bf16, and bit-exact checks that nothing outside
// the output was written and nothing inside was left as poison. Failures name the worst element
// with its coordinates.

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/host_tensor.h"
#include "kernels/reference_attention.h"

namespace flashkv::testbed {

struct Tolerance {
  // Per element of O: |got - want| <= atol + rtol * |want|.
  double atol = 0;
  double rtol = 0;
  // Per element of LSE, the same form.
  double lse_atol = 0;
  double lse_rtol = 0;
  // fp16/bf16 only (use_naive_bound): max |got - want| over O must not exceed
  // naive_factor * max |naive - want| + naive_slack, where `naive` is the kNaiveStorage reference.
  bool use_naive_bound = false;
  double naive_factor = 0;
  double naive_slack = 0;
};

// The tolerances of the attention tests, per dtype, for unit-normal inputs attended with
// `softmax_scale` over `head_dim` (the reasoning is in compare.cc).
Tolerance DefaultTolerance(DType dtype, double softmax_scale, int head_dim);
// Tolerance between two kernels' outputs, each within `DefaultTolerance` of the float64 truth.
Tolerance CrossBackendTolerance(DType dtype, double softmax_scale, int head_dim);

// Labels query rows in messages. For packed (varlen/paged) outputs, `cu_seqlens_q` names the
// sequence and position of a row as well.
struct RowLabels {
  const std::vector<int32_t>* cu_seqlens_q = nullptr;
  std::string Label(int64_t outer, int64_t row) const;
};

// Checks `out` (shape [outer, rows, heads, dim] in its own layout) and, when `lse` is non-null,
// the LSE ([outer, heads, rows], contiguous) against `want`. With `naive` and
// tolerance.use_naive_bound, also bounds the max error by the naive reference's. Elements of
// out's allocation outside the logical tensor must still be poison; rows that see no key must be
// exactly 0 with LSE exactly -inf.
::testing::AssertionResult CheckAttentionOutput(
    const HostTensor& out, const std::vector<float>* lse, const ReferenceOutput& want,
    const ReferenceOutput* naive, const Tolerance& tolerance, const RowLabels& labels = {});

// The output of a kernel as a ReferenceOutput, to use one backend as the oracle of another.
ReferenceOutput AsReference(const HostTensor& out, const std::vector<float>& lse);

// Bit-exact equality of two outputs' logical elements (layouts may differ) and of two LSE
// vectors. Reports the first difference.
::testing::AssertionResult BitwiseEqual(const HostTensor& a, const HostTensor& b,
                                        const RowLabels& labels = {});
::testing::AssertionResult BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b);

// Checks that every element of `tensor`'s allocation outside `written` (a mask over capacity())
// still holds poison. Used for cache pools after AppendKv and for output padding.
::testing::AssertionResult UntouchedIsPoison(const HostTensor& tensor,
                                             const std::vector<bool>& written);

// Whether `text` contains `part`; the failure message quotes both (for error-message checks).
::testing::AssertionResult HasSubstring(const std::string& text, const std::string& part);

}  // namespace flashkv::testbed

#include "kernels/compare.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iomanip>
#include <limits>
#include <sstream>

namespace flashkv::testbed {
namespace {

// Tracks the element furthest out of tolerance (by error / tolerance) and how many are out.
struct Worst {
  int64_t failures = 0;
  double ratio = -1;
  std::string where;
  double got = 0;
  double want = 0;
  double tol = 0;
  bool got_poison = false;
  double max_abs_error = 0;  // over elements with a finite reference

  // Records one element. Returns whether it is within tolerance.
  bool Add(double got_value, double want_value, double tol_value, bool poison,
           const std::function<std::string()>& where_fn) {
    // Equal values (infinities included) have no error; -inf - -inf would be NaN.
    const double err = got_value == want_value ? 0.0 : std::fabs(got_value - want_value);
    if (std::isfinite(want_value) && std::isfinite(err))
      max_abs_error = std::max(max_abs_error, err);
    const bool ok = err <= tol_value;  // false for NaN
    const double r =
        ok ? err / std::max(tol_value, 1e-300) : std::numeric_limits<double>::infinity();
    if (!ok) ++failures;
    if (r > ratio) {
      ratio = r;
      where = where_fn();
      got = got_value;
      want = want_value;
      tol = tol_value;
      got_poison = poison;
    }
    return ok;
  }

  std::string Describe(const char* name, int64_t total) const {
    std::ostringstream s;
    s << std::setprecision(9) << name << ": " << failures << " of " << total
      << " elements out of tolerance; worst at " << where << ": got ";
    if (got_poison) {
      s << "POISON (never written)";
    } else {
      s << got;
    }
    s << ", want " << want << ", |err| " << std::fabs(got - want) << " > tol " << tol;
    return s.str();
  }
};

std::string Coordinates(const RowLabels& labels, int64_t o, int64_t r, int h, int d) {
  std::ostringstream s;
  s << "[" << labels.Label(o, r) << ", head " << h;
  if (d >= 0) s << ", d " << d;
  s << "]";
  return s.str();
}

::testing::AssertionResult CheckLse(const std::vector<float>& lse, const ReferenceOutput& want,
                                    const Tolerance& tol, const RowLabels& labels) {
  if (lse.size() != want.lse.size()) {
    return ::testing::AssertionFailure()
           << "lse has " << lse.size() << " elements, want " << want.lse.size();
  }
  Worst worst;
  for (int64_t o = 0; o < want.outer; ++o) {
    for (int h = 0; h < want.heads; ++h) {
      for (int64_t r = 0; r < want.rows; ++r) {
        const int64_t i = want.LseIndex(o, r, h);
        const double w = want.lse[i];
        const double g = lse[i];
        // A row that sees no key has LSE exactly -inf (tolerance 0).
        const bool empty = std::isinf(w) && w < 0;
        const double t = empty ? 0 : tol.lse_atol + tol.lse_rtol * std::fabs(w);
        worst.Add(g, w, t, IsPoison(lse[i]), [&] { return Coordinates(labels, o, r, h, -1); });
      }
    }
  }
  if (worst.failures == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << worst.Describe("lse", static_cast<int64_t>(lse.size()));
}

}  // namespace

// Tolerances. Inputs are standard normal, so outputs (convex combinations of V rows) are O(1).
// - fp32 is computed to fp32 accuracy: 5e-6 absolute plus 5e-6 relative, i.e. within 1e-5 of
//   float64 at the unit scale of the data, at the default scale 1/sqrt(D). Scores are only as
//   exact as float32 makes them, relative to their size, and the output moves by
//   p_j * ds_j * (v_j - o) when score j moves by ds_j: with larger scores (a larger softmax scale)
//   the output of ANY float32 implementation is off by proportionally more. So the fp32 tolerance
//   grows with the scores' standard deviation for unit-normal inputs, scale * sqrt(D), once that
//   exceeds 1. (Measured: a plain float32 loop is 1e-6 off at the default scale and 4e-5 off at
//   scale 1.0 with D = 256, the kernels alike.)
// - fp16 output is rounded to 11 bits (half an ulp is 4.9e-4 relative) and a flash kernel rounds
//   P to fp16 before P·V: 1e-3 absolute plus 1e-3 relative. bf16 has 8 bits (3.9e-3): 8e-3 each.
//   On top, the max error may not exceed twice the naive same-dtype implementation's plus half an
//   ulp at 1.0 (the bound FlashAttention's own tests use for fp16/bf16); the naive error already
//   grows with the score scale.
// - LSE is float32 in every dtype and comes from scores accumulated in float32 from exactly
//   representable products, so it is near fp32 accuracy; 1e-3 for fp16/bf16 leaves room for
//   different summation orders and fast exp, and still catches any wrong mask, scale or index.
Tolerance DefaultTolerance(DType dtype, double softmax_scale, int head_dim) {
  Tolerance t;
  switch (dtype) {
    case DType::kFloat32: {
      const double score_scale = std::max(1.0, std::fabs(softmax_scale) * std::sqrt(head_dim));
      t.atol = t.rtol = 5e-6 * score_scale;
      t.lse_atol = t.lse_rtol = 5e-6 * score_scale;
      return t;
    }
    case DType::kFloat16:
      t.atol = t.rtol = 1e-3;
      t.naive_slack = std::ldexp(1.0, -11);
      break;
    case DType::kBFloat16:
      t.atol = t.rtol = 8e-3;
      t.naive_slack = std::ldexp(1.0, -8);
      break;
  }
  t.lse_atol = t.lse_rtol = 1e-3;
  t.use_naive_bound = true;
  t.naive_factor = 2.0;
  return t;
}

Tolerance CrossBackendTolerance(DType dtype, double softmax_scale, int head_dim) {
  Tolerance t = DefaultTolerance(dtype, softmax_scale, head_dim);
  t.atol *= 2;
  t.rtol *= 2;
  t.lse_atol *= 2;
  t.lse_rtol *= 2;
  t.use_naive_bound = false;
  return t;
}

std::string RowLabels::Label(int64_t outer, int64_t row) const {
  std::ostringstream s;
  if (cu_seqlens_q != nullptr && cu_seqlens_q->size() >= 2) {
    const auto& cu = *cu_seqlens_q;
    // The last sequence whose first row is <= row (zero-length sequences share offsets).
    const int64_t b = std::upper_bound(cu.begin(), cu.end() - 1, row) - cu.begin() - 1;
    s << "token " << row << " (seq " << b << ", query " << row - cu[b] << ")";
  } else {
    s << "batch " << outer << ", query " << row;
  }
  return s.str();
}

::testing::AssertionResult CheckAttentionOutput(const HostTensor& out,
                                                const std::vector<float>* lse,
                                                const ReferenceOutput& want,
                                                const ReferenceOutput* naive, const Tolerance& tol,
                                                const RowLabels& labels) {
  const Shape4& s = out.shape();
  if (s.outer != want.outer || s.rows != want.rows || s.heads != want.heads || s.dim != want.dim) {
    return ::testing::AssertionFailure()
           << "output shape [" << s.outer << ", " << s.rows << ", " << s.heads << ", " << s.dim
           << "] differs from the reference's [" << want.outer << ", " << want.rows << ", "
           << want.heads << ", " << want.dim << "]";
  }
  Worst worst;
  std::vector<bool> logical(static_cast<size_t>(out.capacity()), false);
  for (int64_t o = 0; o < s.outer; ++o) {
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int h = 0; h < s.heads; ++h) {
        // A row that sees no key must be exactly zero: tolerance 0.
        const bool empty = std::isinf(want.lse[want.LseIndex(o, r, h)]);
        for (int d = 0; d < s.dim; ++d) {
          const int64_t at = out.Offset(o, r, h, d);
          logical[at] = true;
          const double w = want.out[want.OutIndex(o, r, h, d)];
          const double t = empty ? 0 : tol.atol + tol.rtol * std::fabs(w);
          worst.Add(out.GetAt(at), w, t, out.IsPoisonAt(at),
                    [&] { return Coordinates(labels, o, r, h, d); });
        }
      }
    }
  }
  std::ostringstream failures;
  if (worst.failures > 0) failures << worst.Describe("out", s.Elements()) << "\n";
  if (::testing::AssertionResult padding = UntouchedIsPoison(out, logical); !padding) {
    failures << "out: " << padding.message() << "\n";
  }
  if (lse != nullptr) {
    if (::testing::AssertionResult l = CheckLse(*lse, want, tol, labels); !l) {
      failures << l.message() << "\n";
    }
  }
  if (naive != nullptr && tol.use_naive_bound && worst.failures == 0) {
    double naive_error = 0;
    for (size_t i = 0; i < want.out.size(); ++i) {
      naive_error = std::max(naive_error, std::fabs(naive->out[i] - want.out[i]));
    }
    const double bound = tol.naive_factor * naive_error + tol.naive_slack;
    if (!(worst.max_abs_error <= bound)) {
      failures << std::setprecision(6) << "out: max |err| " << worst.max_abs_error << " (at "
               << worst.where << ") exceeds " << tol.naive_factor
               << " x the naive same-dtype implementation's " << naive_error << " + "
               << tol.naive_slack << " = " << bound << "\n";
    }
  }
  const std::string message = failures.str();
  if (message.empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << message;
}

ReferenceOutput AsReference(const HostTensor& out, const std::vector<float>& lse) {
  ReferenceOutput r;
  const Shape4& s = out.shape();
  r.outer = s.outer;
  r.rows = s.rows;
  r.heads = static_cast<int>(s.heads);
  r.dim = static_cast<int>(s.dim);
  r.out.resize(static_cast<size_t>(s.Elements()));
  for (int64_t o = 0; o < s.outer; ++o) {
    for (int64_t row = 0; row < s.rows; ++row) {
      for (int h = 0; h < r.heads; ++h) {
        for (int d = 0; d < r.dim; ++d) r.out[r.OutIndex(o, row, h, d)] = out.Get(o, row, h, d);
      }
    }
  }
  r.lse.assign(lse.begin(), lse.end());
  return r;
}

::testing::AssertionResult BitwiseEqual(const HostTensor& a, const HostTensor& b,
                                        const RowLabels& labels) {
  const Shape4& s = a.shape();
  const Shape4& t = b.shape();
  if (a.dtype() != b.dtype() || s.outer != t.outer || s.rows != t.rows || s.heads != t.heads ||
      s.dim != t.dim) {
    return ::testing::AssertionFailure() << "tensors differ in dtype or shape";
  }
  int64_t differences = 0;
  std::string first;
  for (int64_t o = 0; o < s.outer; ++o) {
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int h = 0; h < s.heads; ++h) {
        for (int d = 0; d < s.dim; ++d) {
          const uint32_t x = a.BitsAt(a.Offset(o, r, h, d));
          const uint32_t y = b.BitsAt(b.Offset(o, r, h, d));
          if (x == y) continue;
          if (differences++ == 0) {
            std::ostringstream m;
            m << std::setprecision(9) << Coordinates(labels, o, r, h, d) << ": "
              << a.Get(o, r, h, d) << " (bits 0x" << std::hex << x << ") vs " << std::dec
              << b.Get(o, r, h, d) << " (bits 0x" << std::hex << y << ")";
            first = m.str();
          }
        }
      }
    }
  }
  if (differences == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << differences << " of " << s.Elements() << " elements differ; first at " << first;
}

::testing::AssertionResult BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << std::setprecision(9) << "element " << i << " differs: " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult UntouchedIsPoison(const HostTensor& tensor,
                                             const std::vector<bool>& written) {
  int64_t overwritten = 0;
  int64_t first = -1;
  for (int64_t i = 0; i < tensor.capacity(); ++i) {
    if (written[i] || tensor.IsPoisonAt(i)) continue;
    if (overwritten++ == 0) first = i;
  }
  if (overwritten == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << overwritten << " element(s) outside the written region were overwritten; first at "
         << "allocation offset " << first << " (value " << tensor.GetAt(first) << ")";
}

::testing::AssertionResult HasSubstring(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << text << "\" does not contain \"" << part << "\"";
}

}  // namespace flashkv::testbed

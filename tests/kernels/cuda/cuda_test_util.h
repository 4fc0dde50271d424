#pragma once

// Helpers of the CUDA-only tests: random problems of variable-length sequences, their float64
// reference, and device tensors laid out fixed, packed (varlen) or paged. Inputs are drawn fresh
// (never zeros) and rounded to the dtype before the reference sees them; outputs are poisoned
// (all bits set: NaN in every dtype) before each run so an unwritten element fails.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"

namespace flashkv::cuda::test {

// Device buffer owned by the test.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) EXPECT_TRUE(Malloc(&ptr_, bytes).ok());
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)Free(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  void Upload(const std::vector<T>& host) {
    ASSERT_LE(host.size() * sizeof(T), bytes_);
    ASSERT_TRUE(MemcpyHostToDevice(ptr_, host.data(), host.size() * sizeof(T), nullptr).ok());
    ASSERT_TRUE(StreamSynchronize(nullptr).ok());
  }
  template <typename T>
  std::vector<T> Download(size_t count) const {
    std::vector<T> host(count);
    EXPECT_TRUE(MemcpyDeviceToHost(host.data(), ptr_, count * sizeof(T), nullptr).ok());
    EXPECT_TRUE(StreamSynchronize(nullptr).ok());
    return host;
  }
  void Poison() { ASSERT_TRUE(Memset(ptr_, 0xff, bytes_, nullptr).ok()); }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

inline bool HaveDevice() { return DeviceCount() > 0 && CheckDevice(0).ok(); }

// Bytes of `values` in `dtype`, and the values as the dtype rounds them.
inline std::vector<uint8_t> Encode(DType dtype, std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kFloat32) {
      std::memcpy(&bytes[4 * i], &values[i], 4);
    } else if (dtype == DType::kFloat16) {
      const Float16 h = ToFloat16(values[i]);
      values[i] = ToFloat(h);
      std::memcpy(&bytes[2 * i], &h.bits, 2);
    } else {
      const BFloat16 h = ToBFloat16(values[i]);
      values[i] = ToFloat(h);
      std::memcpy(&bytes[2 * i], &h.bits, 2);
    }
  }
  return bytes;
}

inline std::vector<float> Decode(DType dtype, const std::vector<uint8_t>& bytes) {
  std::vector<float> values(bytes.size() / DTypeSize(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kFloat32) {
      std::memcpy(&values[i], &bytes[4 * i], 4);
    } else if (dtype == DType::kFloat16) {
      Float16 h;
      std::memcpy(&h.bits, &bytes[2 * i], 2);
      values[i] = ToFloat(h);
    } else {
      BFloat16 h;
      std::memcpy(&h.bits, &bytes[2 * i], 2);
      values[i] = ToFloat(h);
    }
  }
  return values;
}

// A batch of sequences with packed Q [Tq, Hq, D] and per-sequence K/V packed [Tkv, Hkv, D].
struct Problem {
  DType dtype = DType::kFloat16;
  int heads_q = 4, heads_kv = 4, head_dim = 128;
  std::vector<int> q_lens, kv_lens;
  bool causal = false;
  float scale = 0.f;  // 0 = default
  bool default_scale = true;
  std::vector<float> q, k, v;  // rounded to dtype
  std::vector<int32_t> cu_q, cu_kv;

  int64_t total_q() const { return cu_q.back(); }
  int64_t total_kv() const { return cu_kv.back(); }
  AttentionOptions options() const {
    AttentionOptions o;
    o.causal = causal;
    if (!default_scale) o.softmax_scale = scale;
    return o;
  }
  float EffectiveScale() const {
    return default_scale ? 1.f / std::sqrt(static_cast<float>(head_dim)) : scale;
  }
};

inline Problem MakeProblem(DType dtype, int heads_q, int heads_kv, int head_dim,
                           std::vector<int> q_lens, std::vector<int> kv_lens, bool causal,
                           uint32_t seed) {
  Problem p;
  p.dtype = dtype;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.head_dim = head_dim;
  p.q_lens = std::move(q_lens);
  p.kv_lens = std::move(kv_lens);
  p.causal = causal;
  p.cu_q = {0};
  p.cu_kv = {0};
  for (size_t b = 0; b < p.q_lens.size(); ++b) {
    p.cu_q.push_back(p.cu_q.back() + p.q_lens[b]);
    p.cu_kv.push_back(p.cu_kv.back() + p.kv_lens[b]);
  }
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (float& e : x) e = normal(rng);
  };
  fill(p.q, p.total_q() * heads_q * head_dim);
  fill(p.k, p.total_kv() * heads_kv * head_dim);
  fill(p.v, p.total_kv() * heads_kv * head_dim);
  (void)Encode(dtype, p.q);
  (void)Encode(dtype, p.k);
  (void)Encode(dtype, p.v);
  return p;
}

// float64 reference: out [Tq, Hq, D] and lse [Hq, Tq].
inline void Reference(const Problem& p, std::vector<double>* out, std::vector<double>* lse) {
  const int d = p.head_dim, group = p.heads_q / p.heads_kv;
  out->assign(p.total_q() * p.heads_q * d, 0.0);
  lse->assign(p.total_q() * p.heads_q, -INFINITY);
  const double scale = p.EffectiveScale();
  for (size_t b = 0; b < p.q_lens.size(); ++b) {
    const int sq = p.q_lens[b], skv = p.kv_lens[b];
    for (int h = 0; h < p.heads_q; ++h) {
      const int hk = h / group;
      for (int i = 0; i < sq; ++i) {
        const int limit = p.causal ? std::min(skv, i + skv - sq + 1) : skv;
        if (limit <= 0) continue;
        const int64_t qi = (p.cu_q[b] + i) * p.heads_q + h;
        std::vector<double> s(limit);
        double mx = -INFINITY;
        for (int j = 0; j < limit; ++j) {
          const int64_t kj = (p.cu_kv[b] + j) * p.heads_kv + hk;
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += double(p.q[qi * d + e]) * double(p.k[kj * d + e]);
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < limit; ++j) sum += std::exp(s[j] - mx);
        for (int j = 0; j < limit; ++j) {
          const double w = std::exp(s[j] - mx) / sum;
          const int64_t vj = (p.cu_kv[b] + j) * p.heads_kv + hk;
          for (int e = 0; e < d; ++e) (*out)[qi * d + e] += w * p.v[vj * d + e];
        }
        (*lse)[static_cast<int64_t>(h) * p.total_q() + p.cu_q[b] + i] = mx + std::log(sum);
      }
    }
  }
}

struct Tolerance {
  double atol, rtol, lse_atol;
};
inline Tolerance ToleranceFor(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return {2e-5, 1e-5, 2e-5};
    case DType::kFloat16:
      return {4e-3, 4e-3, 2e-3};
    default:
      return {2.5e-2, 2.5e-2, 1e-2};
  }
}

// Every element written, within tolerance, and for fp32 the norm-wise relative error <= 1e-5.
inline void ExpectClose(DType dtype, const std::vector<float>& got, const std::vector<double>& want,
                        const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const Tolerance tol = ToleranceFor(dtype);
  double err2 = 0, ref2 = 0;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(double(got[i]) - want[i]);
    err2 += diff * diff;
    ref2 += want[i] * want[i];
    if (!(diff <= tol.atol + tol.rtol * std::fabs(want[i]))) {
      if (bad++ < 5) {
        ADD_FAILURE() << what << ": element " << i << " = " << got[i] << ", want " << want[i];
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " elements out of tolerance";
  if (dtype == DType::kFloat32 && ref2 > 0) {
    EXPECT_LE(std::sqrt(err2 / ref2), 1e-5) << what << ": relative error (norm)";
  }
}

inline void ExpectLseClose(DType dtype, const std::vector<float>& got,
                           const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::isinf(want[i]) ? (std::isinf(got[i]) && got[i] < 0)
                                        : std::fabs(got[i] - want[i]) <=
                                              ToleranceFor(dtype).lse_atol * (1 + std::fabs(want[i]));
    if (!ok && bad++ < 5) ADD_FAILURE() << what << ": lse " << i << " = " << got[i] << ", want " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

}  // namespace flashkv::cuda::test

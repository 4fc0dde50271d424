#include "testing/reference.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace flashkv::testing {

void ReferenceAttention(const double* q, const double* k, const double* v, int sq, int skv, int hq,
                        int hkv, int d, bool causal, double scale, double* out, double* lse) {
  const int group = hq / hkv;
  std::vector<double> scores(static_cast<size_t>(skv));
  for (int h = 0; h < hq; ++h) {
    const int kh = h / group;
    for (int i = 0; i < sq; ++i) {
      const int last = causal ? std::min(skv - 1, i + skv - sq) : skv - 1;
      double* o = out + (static_cast<int64_t>(i) * hq + h) * d;
      double max_score = -std::numeric_limits<double>::infinity();
      for (int j = 0; j <= last; ++j) {
        double s = 0;
        for (int x = 0; x < d; ++x) {
          s += q[(static_cast<int64_t>(i) * hq + h) * d + x] *
               k[(static_cast<int64_t>(j) * hkv + kh) * d + x];
        }
        scores[j] = s * scale;
        max_score = std::max(max_score, scores[j]);
      }
      for (int x = 0; x < d; ++x) o[x] = 0;
      if (last < 0) {
        if (lse != nullptr)
          lse[static_cast<int64_t>(h) * sq + i] = -std::numeric_limits<double>::infinity();
        continue;
      }
      double sum = 0;
      for (int j = 0; j <= last; ++j) {
        const double p = std::exp(scores[j] - max_score);
        sum += p;
        for (int x = 0; x < d; ++x) o[x] += p * v[(static_cast<int64_t>(j) * hkv + kh) * d + x];
      }
      for (int x = 0; x < d; ++x) o[x] /= sum;
      if (lse != nullptr) lse[static_cast<int64_t>(h) * sq + i] = max_score + std::log(sum);
    }
  }
}

int64_t HostTensor::elements() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

void HostTensor::ToProto(flashkv::v1::Tensor* tensor) const {
  tensor->set_dtype(static_cast<flashkv::v1::DType>(static_cast<int>(dtype)));
  tensor->clear_shape();
  for (int64_t s : shape) tensor->add_shape(s);
  tensor->set_data(bytes);
}

namespace {

void Store(DType dtype, double value, char* dst) {
  switch (dtype) {
    case DType::kFloat16: {
      const Float16 h = ToFloat16(static_cast<float>(value));
      std::memcpy(dst, &h.bits, 2);
      return;
    }
    case DType::kBFloat16: {
      const BFloat16 b = ToBFloat16(static_cast<float>(value));
      std::memcpy(dst, &b.bits, 2);
      return;
    }
    case DType::kFloat32: {
      const float f = static_cast<float>(value);
      std::memcpy(dst, &f, 4);
      return;
    }
  }
}

double Load(DType dtype, const char* src) {
  switch (dtype) {
    case DType::kFloat16: {
      Float16 h;
      std::memcpy(&h.bits, src, 2);
      return ToFloat(h);
    }
    case DType::kBFloat16: {
      BFloat16 b;
      std::memcpy(&b.bits, src, 2);
      return ToFloat(b);
    }
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, src, 4);
      return f;
    }
  }
  return 0;
}

}  // namespace

HostTensor RandomTensor(DType dtype, std::vector<int64_t> shape, std::mt19937_64& rng) {
  HostTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  const int64_t n = t.elements();
  const int size = DTypeSize(dtype);
  t.bytes.resize(static_cast<size_t>(n * size));
  t.values.resize(static_cast<size_t>(n));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    Store(dtype, normal(rng), &t.bytes[static_cast<size_t>(i * size)]);
    t.values[static_cast<size_t>(i)] = Load(dtype, &t.bytes[static_cast<size_t>(i * size)]);
  }
  return t;
}

std::vector<double> DecodeValues(DType dtype, const std::string& bytes) {
  const size_t size = static_cast<size_t>(DTypeSize(dtype));
  std::vector<double> values(bytes.size() / size);
  for (size_t i = 0; i < values.size(); ++i) values[i] = Load(dtype, &bytes[i * size]);
  return values;
}

HostTensor FromProto(const flashkv::v1::Tensor& tensor) {
  HostTensor t;
  t.dtype = static_cast<DType>(static_cast<int>(tensor.dtype()));
  t.shape.assign(tensor.shape().begin(), tensor.shape().end());
  t.bytes = tensor.data();
  t.values = DecodeValues(t.dtype, t.bytes);
  return t;
}

double Tolerance(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return 4e-3;  // half an ulp at 2 is 1e-3; float32 accumulation adds far less
    case DType::kBFloat16:
      return 3e-2;  // half an ulp at 2 is 7.8e-3
    case DType::kFloat32:
      return 1e-4;
  }
  return 0;
}

std::string CompareValues(const std::vector<double>& got, const std::vector<double>& want,
                          double tolerance) {
  if (got.size() != want.size()) {
    return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  }
  size_t worst = 0;
  double worst_error = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_inf =
        std::isinf(got[i]) && std::isinf(want[i]) && (got[i] < 0) == (want[i] < 0);
    const double error = both_inf ? 0 : std::abs(got[i] - want[i]);
    if (!(error <= worst_error) || std::isnan(error)) {
      worst_error = std::isnan(error) ? std::numeric_limits<double>::infinity() : error;
      worst = i;
    }
  }
  if (worst_error <= tolerance) return "";
  return "element " + std::to_string(worst) + ": got " + std::to_string(got[worst]) + ", want " +
         std::to_string(want[worst]) + " (error " + std::to_string(worst_error) + " > " +
         std::to_string(tolerance) + ")";
}

}  // namespace flashkv::testing

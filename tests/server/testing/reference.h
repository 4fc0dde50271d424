#pragma once

// A float64 attention reference for the server tests, and dtype-aware random tensors whose
// float64 values are exactly what the server sees after rounding to the wire dtype.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "flashkv/dtype.h"
#include "flashkv/v1/tensor.pb.h"

namespace flashkv::testing {

// One sequence: q [sq, hq, d], k and v [skv, hkv, d] -> out [sq, hq, d], lse [hq, sq].
// Causal masks are bottom-right aligned; a row that sees no key gets out 0 and lse -inf.
void ReferenceAttention(const double* q, const double* k, const double* v, int sq, int skv, int hq,
                        int hkv, int d, bool causal, double scale, double* out, double* lse);

// A dense tensor on the host: its wire bytes and the float64 values they encode.
struct HostTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::string bytes;
  std::vector<double> values;

  int64_t elements() const;
  void ToProto(flashkv::v1::Tensor* tensor) const;
};

// Normal(0, 1) values rounded to `dtype` (never all zeros).
HostTensor RandomTensor(DType dtype, std::vector<int64_t> shape, std::mt19937_64& rng);
// Decodes wire bytes of `dtype` to float64.
std::vector<double> DecodeValues(DType dtype, const std::string& bytes);
HostTensor FromProto(const flashkv::v1::Tensor& tensor);

// Largest |got - want| allowed for outputs of `dtype`: the rounding of the output to the dtype
// plus float32 accumulation, for outputs of magnitude about 1 (convex combinations of v rows).
double Tolerance(DType dtype);

// "" when every element is within the tolerance, else a description of the worst one.
std::string CompareValues(const std::vector<double>& got, const std::vector<double>& want,
                          double tolerance);

}  // namespace flashkv::testing

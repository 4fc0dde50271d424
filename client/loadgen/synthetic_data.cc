#include "synthetic_data.h"

namespace flashkv::loadgen {
namespace {

template <typename T>
void Fill(uint64_t seed, int64_t count, T* out) {
  for (int64_t i = 0; i < count; i += 4) {
    uint64_t bits = SyntheticBits(seed, i / 4);
    for (int64_t j = i; j < i + 4 && j < count; ++j, bits >>= 16) {
      out[j] = FromFloat<T>(SyntheticValue(static_cast<uint32_t>(bits)));
    }
  }
}

}  // namespace

void FillValues(DType dtype, uint64_t seed, int64_t count, void* dst) {
  switch (dtype) {
    case DType::kFloat16:
      return Fill(seed, count, static_cast<Float16*>(dst));
    case DType::kBFloat16:
      return Fill(seed, count, static_cast<BFloat16*>(dst));
    case DType::kFloat32:
      return Fill(seed, count, static_cast<float*>(dst));
  }
}

}  // namespace flashkv::loadgen

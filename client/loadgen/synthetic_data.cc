#include "synthetic_data.h"

namespace flashkv::loadgen {
namespace {

template <typename T>
void Fill(uint64_t seed, int64_t count, T* out) {
  uint64_t state = seed;
  for (int64_t i = 0; i < count; i += 4) {
    state += 0x9e3779b97f4a7c15ull;
    uint64_t bits = SplitMix64(state);
    for (int64_t j = i; j < i + 4 && j < count; ++j, bits >>= 16) {
      // (u + 0.5) / 32768 - 1 for u in [0, 65535]: symmetric around zero, never zero.
      const float x = (static_cast<float>(bits & 0xffff) + 0.5f) * (1.0f / 32768.0f) - 1.0f;
      out[j] = FromFloat<T>(x);
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

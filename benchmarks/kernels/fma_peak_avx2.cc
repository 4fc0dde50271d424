// Compiled with -mavx2 -mfma (benchmarks/kernels/CMakeLists.txt); called only when the CPU has it.

#include <immintrin.h>

#include "fma_peak.h"

namespace flashkv::bench {

double FmaLoopAvx2(long iterations, float* sink) {
  // 12 chains: two FMA pipes × 4-cycle latency need 8 in flight; 12 leave slack and fit in the
  // 16 YMM registers with the two operands.
  constexpr int kChains = 12;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 mul = _mm256_set1_ps(0.999999f);
  const __m256 add = _mm256_set1_ps(1e-6f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
  }
  __m256 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm256_add_ps(total, acc[i]);
  *sink += _mm256_cvtss_f32(total);
  return 2.0 * 8 * kChains * static_cast<double>(iterations);
}

}  // namespace flashkv::bench

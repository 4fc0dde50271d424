// Compiled with -mavx512f -mfma (benchmarks/kernels/CMakeLists.txt); called only when the CPU has it.

#include <immintrin.h>

#include "fma_peak.h"

namespace flashkv::bench {

double FmaLoopAvx512(long iterations, float* sink) {
  // 24 chains: up to two 512-bit FMA pipes × 4-cycle latency need 8 in flight; 24 of the 32 ZMM
  // registers leave slack.
  constexpr int kChains = 24;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 mul = _mm512_set1_ps(0.999999f);
  const __m512 add = _mm512_set1_ps(1e-6f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
  }
  __m512 total = acc[0];
  for (int i = 1; i < kChains; ++i) total = _mm512_add_ps(total, acc[i]);
  *sink += _mm512_reduce_add_ps(total);
  return 2.0 * 16 * kChains * static_cast<double>(iterations);
}

}  // namespace flashkv::bench

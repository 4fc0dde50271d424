#pragma once

// The register-blocked float32 GEMM both matrix products of the attention tile run on:
//   scores  Sᵀ (keys, rows) = K (keys, D) · Qᵀ (D, rows)
//   output  O (rows, D)     = diag(scale) · O + P (rows, keys) · V (keys, D), P read from Sᵀ
// Both have the shape C = [diag(beta) ·] C + A · B with B row-major and A addressed through a row
// stride and a k stride (so P can be read out of Sᵀ in place). A (kRows, kCols) tile of C lives in
// registers across the whole k loop, fed by kRows broadcasts of A and kCols / lanes vector loads
// of B per step.

#include <cstdint>

#include "cpu/simd.h"

namespace flashkv::cpu {

template <class IsaTag, int kCols>
struct MicroGemm {
  using V = Simd<IsaTag>;
  using F = typename V::F;
  static constexpr int kVectors = kCols / V::kLanes;
  static_assert(kCols % V::kLanes == 0, "micro tile columns must be whole vectors");

  // C (kRows, kCols) = [diag(beta) ·] C + A (kRows, k) · B (k, kCols); A(r, kk) = a[r·lda + kk·ldk].
  template <int kRows, bool kScaleC>
  static void Tile(int k, const float* __restrict a, int64_t lda, int64_t ldk,
                   const float* __restrict b, int64_t ldb, float* __restrict c, int64_t ldc,
                   const float* __restrict beta) {
    F acc[kRows][kVectors];
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) acc[r][v] = F{};
    }
    for (int kk = 0; kk < k; ++kk) {
      F bv[kVectors];
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) bv[v] = V::Load(b + kk * ldb + v * V::kLanes);
#pragma GCC unroll 16
      for (int r = 0; r < kRows; ++r) {
        const F av = V::Broadcast(a[r * lda + kk * ldk]);
#pragma GCC unroll 8
        for (int v = 0; v < kVectors; ++v) acc[r][v] += av * bv[v];
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) {
      float* __restrict cr = c + r * ldc;
#pragma GCC unroll 8
      for (int v = 0; v < kVectors; ++v) {
        F out = acc[r][v];
        if constexpr (kScaleC) out += V::Load(cr + v * V::kLanes) * beta[r];
        V::Store(cr + v * V::kLanes, out);
      }
    }
  }

  // Tile() for a run-time row count 1..kMaxRows: the remainder rows of a block get their own
  // fully unrolled instantiation instead of padding.
  template <int kMaxRows, bool kScaleC>
  static FLASHKV_CPU_INLINE void TileRows(int rows, int k, const float* a, int64_t lda,
                                          int64_t ldk, const float* b, int64_t ldb, float* c,
                                          int64_t ldc, const float* beta) {
    if constexpr (kMaxRows > 1) {
      if (rows < kMaxRows) {
        TileRows<kMaxRows - 1, kScaleC>(rows, k, a, lda, ldk, b, ldb, c, ldc, beta);
        return;
      }
    }
    Tile<kMaxRows, kScaleC>(k, a, lda, ldk, b, ldb, c, ldc, beta);
  }

  // C (m, n) = [diag(beta) ·] C + A (m, k) · B (k, n) with n a multiple of kCols. Row blocks are
  // the outer loop so a block's A rows stay in L1 while the column panels of B stream by.
  template <int kRows, bool kScaleC>
  static void Gemm(int m, int n, int k, const float* a, int64_t lda, int64_t ldk, const float* b,
                   int64_t ldb, float* c, int64_t ldc, const float* beta) {
    for (int r0 = 0; r0 < m; r0 += kRows) {
      const int rows = m - r0 < kRows ? m - r0 : kRows;
      for (int c0 = 0; c0 < n; c0 += kCols) {
        TileRows<kRows, kScaleC>(rows, k, a + r0 * lda, lda, ldk, b + c0, ldb, c + r0 * ldc + c0,
                                 ldc, kScaleC ? beta + r0 : nullptr);
      }
    }
  }
};

}  // namespace flashkv::cpu

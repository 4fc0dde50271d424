#pragma once

// Portable SIMD vectors for the CPU kernels, written with GCC/Clang vector extensions: the same
// source becomes SSE2, AVX2, AVX-512 or NEON code depending on the flags of the translation unit
// (see isa.h). Why not plain loops for the vectoriser: GCC 12 does not keep a register-blocked
// accumulator tile in registers when it auto-vectorises a GEMM micro-kernel (it spills the tile to
// the stack), which costs most of the FMA throughput; explicit vector types keep it in registers.

#include <cstdint>
#include <cstring>

#include "cpu/isa.h"
#include "flashkv/dtype.h"

namespace flashkv::cpu {

// Vector types of kBytes bytes. (GCC drops vector_size on a typedef whose size depends on a static
// member of the enclosing template, so the size is a template parameter here.)
template <int kBytes>
struct VectorTypes {
  typedef float F __attribute__((vector_size(kBytes)));
  typedef int32_t I __attribute__((vector_size(kBytes)));
  typedef uint32_t U __attribute__((vector_size(kBytes)));
  typedef uint16_t H __attribute__((vector_size(kBytes / 2)));  // as many lanes as F
};

template <class IsaTag>
struct Simd {
  static constexpr int kLanes = VectorBytes(IsaTag::kIsa) / 4;

  using F = typename VectorTypes<VectorBytes(IsaTag::kIsa)>::F;
  using I = typename VectorTypes<VectorBytes(IsaTag::kIsa)>::I;
  using U = typename VectorTypes<VectorBytes(IsaTag::kIsa)>::U;
  using H = typename VectorTypes<VectorBytes(IsaTag::kIsa)>::H;

  static FLASHKV_CPU_INLINE F Broadcast(float x) { return F{} + x; }
  static FLASHKV_CPU_INLINE U BroadcastU(uint32_t x) { return U{} + x; }

  static FLASHKV_CPU_INLINE F Load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static FLASHKV_CPU_INLINE void Store(float* p, F v) { std::memcpy(p, &v, sizeof v); }

  // bfloat16 -> float32 is exact: the bf16 bits are the high half of the float32.
  static FLASHKV_CPU_INLINE F Load(const BFloat16* p) {
    H h;
    std::memcpy(&h, p, sizeof h);
    return reinterpret_cast<F>(__builtin_convertvector(h, U) << 16);
  }

  // float16 -> float32, exact, branch-free: the exponent and mantissa shifted into float position
  // and multiplied by 2^112 rebias normals and subnormals alike; Inf/NaN keep an all-ones exponent.
  static FLASHKV_CPU_INLINE F Load(const Float16* p) {
    H h;
    std::memcpy(&h, p, sizeof h);
    const U u = __builtin_convertvector(h, U);
    const U sign = (u & 0x8000u) << 16;
    const U shifted = (u & 0x7fffu) << 13;
    const U finite = reinterpret_cast<U>(reinterpret_cast<F>(shifted) * Broadcast(0x1p112f));
    const U special = shifted | 0x7f800000u;
    return reinterpret_cast<F>(((u & 0x7fffu) >= 0x7c00u ? special : finite) | sign);
  }

  // float32 -> bfloat16, round to nearest even, NaN kept quiet (as flashkv::ToBFloat16).
  static FLASHKV_CPU_INLINE void Store(BFloat16* p, F v) {
    const U b = reinterpret_cast<U>(v);
    const U rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    const U nan = (b >> 16) | 0x40u;
    const H h = __builtin_convertvector((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded, H);
    std::memcpy(p, &h, sizeof h);
  }

  // float32 -> float16, round to nearest even with overflow to Inf and gradual underflow (as
  // flashkv::ToFloat16). Below 2^-14, adding 0.5f leaves a float whose unit in the last place is
  // 2^-24, the float16 subnormal step, so the hardware rounds the magnitude to a subnormal count.
  static FLASHKV_CPU_INLINE void Store(Float16* p, F v) {
    const U b = reinterpret_cast<U>(v);
    const U sign = (b >> 16) & 0x8000u;
    const U a = b & 0x7fffffffu;
    const U normal = (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    const U subnormal =
        reinterpret_cast<U>(reinterpret_cast<F>(a) + Broadcast(0.5f)) - BroadcastU(0x3f000000u);
    U r = a < 0x38800000u ? subnormal : normal;
    r = a >= 0x477ff000u ? BroadcastU(0x7c00u) : r;
    r = a > 0x7f800000u ? BroadcastU(0x7e00u) : r;
    const H h = __builtin_convertvector(r | sign, H);
    std::memcpy(p, &h, sizeof h);
  }

  static FLASHKV_CPU_INLINE F Max(F a, F b) { return a > b ? a : b; }

  static FLASHKV_CPU_INLINE float ReduceMax(F v) {
    float m = v[0];
    for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  static FLASHKV_CPU_INLINE float ReduceSum(F v) {
    float s = 0;
    for (int i = 0; i < kLanes; ++i) s += v[i];
    return s;
  }

  // 2^x for x <= 0 (the only inputs online softmax produces), relative error < 2 ulp above 2^-126
  // and exactly 0 below, -inf included. 2^x = 2^n · 2^f with n = round(x) and f = x - n in
  // [-1/2, 1/2]; 2^f = e^(f ln 2) by its degree-7 Taylor series, whose truncation error
  // (ln2/2)^8 / 8! < 6e-9 sits below float rounding.
  static FLASHKV_CPU_INLINE F Exp2(F x) {
    // Adding 1.5 · 2^23 rounds to an integer held in the low mantissa bits (round to nearest).
    const F round_magic = Broadcast(12582912.0f);
    const F biased = x + round_magic;
    const F n = biased - round_magic;
    const F f = x - n;
    const I ni = reinterpret_cast<I>(biased) - reinterpret_cast<I>(round_magic);
    constexpr float kLn2 = 0.693147180559945309f;
    constexpr float c1 = kLn2;
    constexpr float c2 = c1 * kLn2 / 2;
    constexpr float c3 = c2 * kLn2 / 3;
    constexpr float c4 = c3 * kLn2 / 4;
    constexpr float c5 = c4 * kLn2 / 5;
    constexpr float c6 = c5 * kLn2 / 6;
    constexpr float c7 = c6 * kLn2 / 7;
    F p = Broadcast(c7);
    p = p * f + c6;
    p = p * f + c5;
    p = p * f + c4;
    p = p * f + c3;
    p = p * f + c2;
    p = p * f + c1;
    p = p * f + 1.0f;
    const F two_n = reinterpret_cast<F>((ni + 127) << 23);
    return x < Broadcast(-126.0f) ? F{} : p * two_n;
  }
};

}  // namespace flashkv::cpu

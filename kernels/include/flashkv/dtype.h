#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace flashkv {

// Element types of attention tensors. The values match flashkv.v1.DType on the wire.
enum class DType : int {
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat32 = 3,
};

constexpr int DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// "fp16", "bf16", "fp32": the spelling used by flags, CMake options and benchmark tables.
constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return "fp16";
    case DType::kBFloat16:
      return "bf16";
    case DType::kFloat32:
      return "fp32";
  }
  return "unknown";
}

// Accepts the short names above and the long ones ("float16", "bfloat16", "float32").
inline std::optional<DType> ParseDType(std::string_view name) {
  if (name == "fp16" || name == "float16" || name == "half") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "fp32" || name == "float32" || name == "float") return DType::kFloat32;
  return std::nullopt;
}

// Storage types for 16-bit floats on the host. They are plain bit containers (no arithmetic) so
// host code never depends on compiler support for _Float16 or on CUDA headers.
struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t BitsFromFloat(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float ToFloat(BFloat16 x) { return FloatFromBits(static_cast<uint32_t>(x.bits) << 16); }

// Round to nearest even, NaN kept quiet, as the hardware conversion does.
inline BFloat16 ToBFloat16(float f) {
  uint32_t bits = BitsFromFloat(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((bits >> 16) | 0x40)};
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return BFloat16{static_cast<uint16_t>(bits >> 16)};
}

inline float ToFloat(Float16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  const uint32_t mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return FloatFromBits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return FloatFromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Subnormal half: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

// Round to nearest even with overflow to infinity and gradual underflow, as __float2half_rn does.
inline Float16 ToFloat16(float f) {
  const uint32_t bits = BitsFromFloat(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return Float16{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (abs_bits >= 0x477ff000u) return Float16{static_cast<uint16_t>(sign | 0x7c00u)};  // ±inf
  if (abs_bits < 0x38800000u) {
    // Below the smallest normal half (2^-14): round |f| / 2^-24 to an integer count of subnormals.
    const float magnitude = FloatFromBits(abs_bits) * 16777216.0f;
    const float rounded = std::nearbyint(magnitude);  // the default mode rounds half to even
    return Float16{static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded))};
  }
  uint32_t value = abs_bits - (112u << 23);  // rebias the exponent
  value += 0xfffu + ((value >> 13) & 1u);
  return Float16{static_cast<uint16_t>(sign | (value >> 13))};
}

// Typed access for templates over the three storage types.
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<Float16> {
  static constexpr DType value = DType::kFloat16;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::kBFloat16;
};
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kFloat32;
};

inline float ToFloat(float x) { return x; }

template <typename T>
inline T FromFloat(float f);
template <>
inline float FromFloat<float>(float f) {
  return f;
}
template <>
inline Float16 FromFloat<Float16>(float f) {
  return ToFloat16(f);
}
template <>
inline BFloat16 FromFloat<BFloat16>(float f) {
  return ToBFloat16(f);
}

}  // namespace flashkv

#pragma once

// Device element types of the three dtypes and their float conversions.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "flashkv/dtype.h"

namespace flashkv::cuda {

template <DType kDType>
struct DeviceElement;
template <>
struct DeviceElement<DType::kFloat16> {
  using Type = __half;
};
template <>
struct DeviceElement<DType::kBFloat16> {
  using Type = __nv_bfloat16;
};
template <>
struct DeviceElement<DType::kFloat32> {
  using Type = float;
};

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Element>
__device__ __forceinline__ Element FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

}  // namespace flashkv::cuda

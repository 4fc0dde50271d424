#pragma once

// CUDA runtime errors as KernelStatus values, and the macro that checks every runtime call.

#include <cuda_runtime_api.h>

#include "flashkv/kernel_status.h"

namespace flashkv::cuda {

// Maps a runtime error to a status code (out of memory -> kResourceExhausted, no device or driver
// -> kUnavailable, anything else -> kInternal) with "what: cudaErrorName (description)".
KernelStatus FromCudaError(cudaError_t error, const char* what);

}  // namespace flashkv::cuda

#define FLASHKV_CUDA_RETURN_IF_ERROR(expr)                                      \
  do {                                                                          \
    const cudaError_t flashkv_cuda_error_ = (expr);                             \
    if (flashkv_cuda_error_ != cudaSuccess) {                                   \
      return ::flashkv::cuda::FromCudaError(flashkv_cuda_error_, #expr);        \
    }                                                                           \
  } while (0)

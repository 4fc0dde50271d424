#include "cuda_status.h"

#include <string>

namespace flashkv::cuda {

KernelStatus FromCudaError(cudaError_t error, const char* what) {
  std::string message = std::string(what) + ": " + cudaGetErrorName(error) + " (" +
                        cudaGetErrorString(error) + ")";
  switch (error) {
    case cudaSuccess:
      return KernelStatus::Ok();
    case cudaErrorMemoryAllocation:
      return ResourceExhausted(std::move(message));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
      return Unavailable(std::move(message));
    default:
      return Internal(std::move(message));
  }
}

}  // namespace flashkv::cuda

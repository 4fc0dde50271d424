#include "device_state.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "cuda_status.h"

namespace flashkv::cuda {
namespace {

struct State {
  std::mutex mu;
  std::map<int, DeviceProps> devices;                     // by device id
  std::map<std::pair<const void*, int>, int> kernels;     // (kernel, device) -> CTAs per SM
  std::map<int, cudaMemPool_t> pools;                     // by device id
};

State& GetState() {
  static State* state = new State();  // never destroyed: launches may run during static teardown
  return *state;
}

KernelStatus QueryDevice(int device, DeviceProps* props) {
  props->device = device;
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&props->major, cudaDevAttrComputeCapabilityMajor, device));
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&props->minor, cudaDevAttrComputeCapabilityMinor, device));
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&props->multiprocessors, cudaDevAttrMultiProcessorCount, device));
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(
      &props->max_smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&props->l2_bytes, cudaDevAttrL2CacheSize, device));
  return KernelStatus::Ok();
}

}  // namespace

KernelStatus CurrentDevice(DeviceProps* props) {
  int device = 0;
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  State& state = GetState();
  {
    std::lock_guard<std::mutex> lock(state.mu);
    auto it = state.devices.find(device);
    if (it != state.devices.end()) {
      *props = it->second;
    } else {
      FLASHKV_RETURN_IF_ERROR(QueryDevice(device, props));
      state.devices.emplace(device, *props);
    }
  }
  if (props->major < 8) {
    return FailedPrecondition("CUDA device " + std::to_string(device) + " is sm_" +
                              std::to_string(props->major * 10 + props->minor) +
                              "; flashkv's CUDA kernels need sm_80 or newer");
  }
  return KernelStatus::Ok();
}

KernelStatus PrepareKernel(const void* kernel, int threads, int smem_bytes, const DeviceProps& props,
                           int* ctas_per_sm) {
  State& state = GetState();
  std::lock_guard<std::mutex> lock(state.mu);
  const auto key = std::make_pair(kernel, props.device);
  auto it = state.kernels.find(key);
  if (it != state.kernels.end()) {
    *ctas_per_sm = it->second;
    return KernelStatus::Ok();
  }
  if (smem_bytes > props.max_smem_per_block_optin) {
    return ResourceExhausted("kernel needs " + std::to_string(smem_bytes) +
                             " bytes of shared memory per block; device " +
                             std::to_string(props.device) + " allows " +
                             std::to_string(props.max_smem_per_block_optin));
  }
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  int blocks = 0;
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem_bytes));
  if (blocks < 1) return Internal("kernel cannot be resident on an SM (registers or shared memory)");
  state.kernels.emplace(key, blocks);
  *ctas_per_sm = blocks;
  return KernelStatus::Ok();
}

KernelStatus WorkspaceAllocate(size_t bytes, cudaStream_t stream, void** ptr) {
  int device = 0;
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  cudaMemPool_t pool = nullptr;
  {
    State& state = GetState();
    std::lock_guard<std::mutex> lock(state.mu);
    auto it = state.pools.find(device);
    if (it != state.pools.end()) {
      pool = it->second;
    } else {
      cudaMemPoolProps props = {};
      props.allocType = cudaMemAllocationTypePinned;
      props.handleTypes = cudaMemHandleTypeNone;
      props.location.type = cudaMemLocationTypeDevice;
      props.location.id = device;
      FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemPoolCreate(&pool, &props));
      uint64_t threshold = UINT64_MAX;  // keep freed workspace for the next launch
      FLASHKV_CUDA_RETURN_IF_ERROR(
          cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
      state.pools.emplace(device, pool);
    }
  }
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMallocFromPoolAsync(ptr, bytes, pool, stream));
  return KernelStatus::Ok();
}

KernelStatus WorkspaceFree(void* ptr, cudaStream_t stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaFreeAsync(ptr, stream));
  return KernelStatus::Ok();
}

}  // namespace flashkv::cuda

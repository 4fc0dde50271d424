// Device, memory and stream wrappers of flashkv/cuda_backend.h: each runtime call checked and
// returned as a KernelStatus, so that no component above the kernels includes CUDA headers.

#include <cuda.h>  // driver types only: the driver is reached through the runtime
#include <cuda_runtime_api.h>

#include <cstring>
#include <string>

#include "cuda_status.h"
#include "device_state.h"
#include "flashkv/cuda_backend.h"

namespace flashkv::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or device: clear the error, report none
    return 0;
  }
  return count;
}

KernelStatus GetDeviceInfo(int device, DeviceInfo* info) {
  cudaDeviceProp prop;
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  info->name = prop.name;
  info->compute_capability_major = prop.major;
  info->compute_capability_minor = prop.minor;
  info->multiprocessor_count = prop.multiProcessorCount;
  info->total_memory_bytes = prop.totalGlobalMem;
  info->l2_cache_bytes = static_cast<size_t>(prop.l2CacheSize);
  info->shared_memory_per_block_optin = prop.sharedMemPerBlockOptin;
  return KernelStatus::Ok();
}

KernelStatus CheckDevice(int device) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return Unavailable("CUDA device " + std::to_string(device) + " does not exist (" +
                       std::to_string(count) + " visible)");
  }
  DeviceInfo info;
  FLASHKV_RETURN_IF_ERROR(GetDeviceInfo(device, &info));
  if (info.compute_capability_major < 8) {
    return FailedPrecondition("CUDA device " + std::to_string(device) + " (" + info.name +
                              ") is sm_" +
                              std::to_string(info.compute_capability_major * 10 +
                                             info.compute_capability_minor) +
                              "; flashkv's CUDA kernels need sm_80 or newer");
  }
  return KernelStatus::Ok();
}

KernelStatus SetDevice(int device) {
  FLASHKV_RETURN_IF_ERROR(CheckDevice(device));
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  return KernelStatus::Ok();
}

KernelStatus MemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(free_bytes, total_bytes));
  return KernelStatus::Ok();
}

KernelStatus Malloc(void** ptr, size_t bytes) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMalloc(ptr, bytes));
  return KernelStatus::Ok();
}
KernelStatus Free(void* ptr) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaFree(ptr));
  return KernelStatus::Ok();
}
KernelStatus MallocHost(void** ptr, size_t bytes) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMallocHost(ptr, bytes));
  return KernelStatus::Ok();
}
KernelStatus FreeHost(void* ptr) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaFreeHost(ptr));
  return KernelStatus::Ok();
}
KernelStatus MemcpyHostToDevice(void* dst, const void* src, size_t bytes, Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  return KernelStatus::Ok();
}
KernelStatus MemcpyDeviceToHost(void* dst, const void* src, size_t bytes, Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  return KernelStatus::Ok();
}
KernelStatus MemcpyDeviceToDevice(void* dst, const void* src, size_t bytes, Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
  return KernelStatus::Ok();
}
KernelStatus Memset(void* ptr, int value, size_t bytes, Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ptr, value, bytes, stream));
  return KernelStatus::Ok();
}
KernelStatus StreamCreate(Stream* stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking));
  return KernelStatus::Ok();
}
KernelStatus StreamDestroy(Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaStreamDestroy(stream));
  return KernelStatus::Ok();
}
KernelStatus StreamSynchronize(Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return KernelStatus::Ok();
}
KernelStatus EventCreate(Event* event) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaEventCreate(event));
  return KernelStatus::Ok();
}
KernelStatus EventDestroy(Event event) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaEventDestroy(event));
  return KernelStatus::Ok();
}
KernelStatus EventRecord(Event event, Stream stream) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaEventRecord(event, stream));
  return KernelStatus::Ok();
}
KernelStatus EventElapsedMs(Event start, Event end, float* ms) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(ms, start, end));
  return KernelStatus::Ok();
}


static_assert(sizeof(cudaIpcMemHandle_t) == kIpcHandleBytes, "IpcMemHandle must hold the handle");

KernelStatus IpcGetMemHandle(void* ptr, IpcMemHandle* handle) {
  cudaIpcMemHandle_t raw;
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaIpcGetMemHandle(&raw, ptr));
  std::memcpy(handle->bytes, &raw, sizeof raw);
  return KernelStatus::Ok();
}
KernelStatus IpcOpenMemHandle(const IpcMemHandle& handle, void** ptr) {
  cudaIpcMemHandle_t raw;
  std::memcpy(&raw, handle.bytes, sizeof raw);
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaIpcOpenMemHandle(ptr, raw, cudaIpcMemLazyEnablePeerAccess));
  return KernelStatus::Ok();
}
KernelStatus IpcCloseMemHandle(void* ptr) {
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaIpcCloseMemHandle(ptr));
  return KernelStatus::Ok();
}

namespace {

// cuMemGetAddressRange's ABI since CUDA 3.2 (64-bit device pointers and sizes).
using MemGetAddressRangeFn = CUresult(CUDAAPI*)(CUdeviceptr* base, size_t* size, CUdeviceptr ptr);

KernelStatus LoadMemGetAddressRange(MemGetAddressRangeFn* fn) {
  void* symbol = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
  FLASHKV_CUDA_RETURN_IF_ERROR(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &symbol,
                                                                3020, cudaEnableDefault, &found));
#else
  FLASHKV_CUDA_RETURN_IF_ERROR(
      cudaGetDriverEntryPoint("cuMemGetAddressRange", &symbol, cudaEnableDefault, &found));
#endif
  if (found != cudaDriverEntryPointSuccess || symbol == nullptr) {
    return Unavailable("the CUDA driver does not export cuMemGetAddressRange");
  }
  *fn = reinterpret_cast<MemGetAddressRangeFn>(symbol);
  return KernelStatus::Ok();
}

}  // namespace

KernelStatus MemGetAddressRange(const void* ptr, void** base, size_t* bytes) {
  // Looked up once; the driver's entry points do not move while the process lives.
  static MemGetAddressRangeFn fn = nullptr;
  static const KernelStatus loaded = LoadMemGetAddressRange(&fn);
  if (!loaded.ok()) return loaded;
  CUdeviceptr driver_base = 0;
  size_t size = 0;
  const CUresult result = fn(&driver_base, &size, reinterpret_cast<CUdeviceptr>(ptr));
  if (result != CUDA_SUCCESS) {
    return InvalidArgument("cuMemGetAddressRange failed (CUresult " + std::to_string(result) +
                           "): the pointer is not device memory of this process");
  }
  *base = reinterpret_cast<void*>(driver_base);
  *bytes = size;
  return KernelStatus::Ok();
}

}  // namespace flashkv::cuda

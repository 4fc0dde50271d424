#pragma once

// The CUDA implementation of the attention API (flashkv/attention.h), and the few runtime calls
// the rest of flashkv needs (memory, streams, device queries), so that no component above the
// kernels includes CUDA headers. Without a CUDA build every function returns kUnavailable
// ("flashkv was built without CUDA") and DeviceCount() is 0.
//
// Launch functions are asynchronous on `stream` (nullptr = the legacy default stream) and return
// argument errors and launch errors as values. Devices older than sm_80 are refused with
// kFailedPrecondition.

#include <cstddef>
#include <string>

#include "flashkv/attention.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*
struct CUevent_st;   // cudaEvent_t is CUevent_st*

namespace flashkv::cuda {

using Stream = CUstream_st*;
using Event = CUevent_st*;

KernelStatus Attention(const FixedAttentionArgs& args, Stream stream);
KernelStatus AttentionVarlen(const VarlenAttentionArgs& args, Stream stream);
KernelStatus AttentionPaged(const PagedAttentionArgs& args, Stream stream);
// AttentionPaged in two halves (flashkv/attention.h, PagedAttentionPlan): the checks, once, and
// launches for layers that differ only in their tensors. AttentionPaged is the two in a row.
KernelStatus PlanAttentionPaged(const PagedAttentionArgs& args, PagedAttentionPlan* plan);
KernelStatus RunAttentionPaged(const PagedAttentionPlan& plan, const PagedLayerTensors& tensors,
                               Stream stream);
KernelStatus AppendKv(const KvAppendArgs& args, Stream stream);

// Whether (dtype, head_dim) was compiled in (FLASHKV_CUDA_DTYPES / FLASHKV_CUDA_HEAD_DIMS).
bool IsCompiled(DType dtype, int head_dim);
bool IsBuilt();

struct DeviceInfo {
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int multiprocessor_count = 0;
  size_t total_memory_bytes = 0;
  size_t l2_cache_bytes = 0;
  size_t shared_memory_per_block_optin = 0;
};

// Number of visible CUDA devices; 0 without a CUDA build, driver or device.
int DeviceCount();
KernelStatus GetDeviceInfo(int device, DeviceInfo* info);
// Checks that `device` exists and is sm_80 or newer.
KernelStatus CheckDevice(int device);
KernelStatus SetDevice(int device);
KernelStatus MemGetInfo(size_t* free_bytes, size_t* total_bytes);

KernelStatus Malloc(void** ptr, size_t bytes);
KernelStatus Free(void* ptr);
KernelStatus MallocHost(void** ptr, size_t bytes);  // pinned
KernelStatus FreeHost(void* ptr);
KernelStatus MemcpyHostToDevice(void* dst, const void* src, size_t bytes, Stream stream);
KernelStatus MemcpyDeviceToHost(void* dst, const void* src, size_t bytes, Stream stream);
KernelStatus MemcpyDeviceToDevice(void* dst, const void* src, size_t bytes, Stream stream);
KernelStatus Memset(void* ptr, int value, size_t bytes, Stream stream);
KernelStatus StreamCreate(Stream* stream);
KernelStatus StreamDestroy(Stream stream);
KernelStatus StreamSynchronize(Stream stream);
// Timing events (the server times its kernels between two of them on the launch's stream).
KernelStatus EventCreate(Event* event);
KernelStatus EventDestroy(Event event);
KernelStatus EventRecord(Event event, Stream stream);
// Milliseconds between two recorded events that have completed.
KernelStatus EventElapsedMs(Event start, Event end, float* ms);

// CUDA IPC: a process exports device memory it allocated with Malloc as an opaque handle, and
// another process on the same host opens it as a device pointer (the shared-memory data plane:
// a model runner's buffers read and written by the server without copies through gRPC).
// The handle's bytes are opaque and travel as they are.
inline constexpr size_t kIpcHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t)
struct IpcMemHandle {
  unsigned char bytes[kIpcHandleBytes] = {};
};
// `ptr` must be the base of a Malloc allocation on the current device.
KernelStatus IpcGetMemHandle(void* ptr, IpcMemHandle* handle);
// Opens a handle exported by another process, on the current device (with peer access when the
// memory lives on another device). The pointer stays valid until IpcCloseMemHandle.
KernelStatus IpcOpenMemHandle(const IpcMemHandle& handle, void** ptr);
KernelStatus IpcCloseMemHandle(void* ptr);
// The allocation that holds `ptr` (device memory mapped into this process, IPC-opened memory
// included): its base address and size as the driver knows them (cuMemGetAddressRange, reached
// through the runtime's driver entry point, so flashkv does not link libcuda). The IPC runtime
// API cannot tell an importer how large the exported allocation is; this can.
KernelStatus MemGetAddressRange(const void* ptr, void** base, size_t* bytes);

}  // namespace flashkv::cuda

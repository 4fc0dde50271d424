// The CUDA half of the API in a build without CUDA: every call reports kUnavailable, so callers
// (server, tests, benchmarks) need no #ifdef and GPU tests skip on DeviceCount() == 0.

#include "flashkv/cuda_backend.h"

namespace flashkv::cuda {
namespace {

KernelStatus NotBuilt() {
  return Unavailable("flashkv was built without CUDA (FLASHKV_WITH_CUDA)");
}

}  // namespace

KernelStatus Attention(const FixedAttentionArgs&, Stream) { return NotBuilt(); }
KernelStatus AttentionVarlen(const VarlenAttentionArgs&, Stream) { return NotBuilt(); }
KernelStatus AttentionPaged(const PagedAttentionArgs&, Stream) { return NotBuilt(); }
KernelStatus PlanAttentionPaged(const PagedAttentionArgs&, PagedAttentionPlan*) {
  return NotBuilt();
}
KernelStatus RunAttentionPaged(const PagedAttentionPlan&, const PagedLayerTensors&, Stream) {
  return NotBuilt();
}
KernelStatus AppendKv(const KvAppendArgs&, Stream) { return NotBuilt(); }
bool IsCompiled(DType, int) { return false; }
bool IsBuilt() { return false; }
int DeviceCount() { return 0; }
KernelStatus GetDeviceInfo(int, DeviceInfo*) { return NotBuilt(); }
KernelStatus CheckDevice(int) { return NotBuilt(); }
KernelStatus SetDevice(int) { return NotBuilt(); }
KernelStatus MemGetInfo(size_t*, size_t*) { return NotBuilt(); }
KernelStatus Malloc(void**, size_t) { return NotBuilt(); }
KernelStatus Free(void*) { return NotBuilt(); }
KernelStatus MallocHost(void**, size_t) { return NotBuilt(); }
KernelStatus FreeHost(void*) { return NotBuilt(); }
KernelStatus MemcpyHostToDevice(void*, const void*, size_t, Stream) { return NotBuilt(); }
KernelStatus MemcpyDeviceToHost(void*, const void*, size_t, Stream) { return NotBuilt(); }
KernelStatus MemcpyDeviceToDevice(void*, const void*, size_t, Stream) { return NotBuilt(); }
KernelStatus Memset(void*, int, size_t, Stream) { return NotBuilt(); }
KernelStatus StreamCreate(Stream*) { return NotBuilt(); }
KernelStatus StreamDestroy(Stream) { return NotBuilt(); }
KernelStatus StreamSynchronize(Stream) { return NotBuilt(); }
KernelStatus EventCreate(Event*) { return NotBuilt(); }
KernelStatus EventDestroy(Event) { return NotBuilt(); }
KernelStatus EventRecord(Event, Stream) { return NotBuilt(); }
KernelStatus EventElapsedMs(Event, Event, float*) { return NotBuilt(); }
KernelStatus IpcGetMemHandle(void*, IpcMemHandle*) { return NotBuilt(); }
KernelStatus IpcOpenMemHandle(const IpcMemHandle&, void**) { return NotBuilt(); }
KernelStatus IpcCloseMemHandle(void*) { return NotBuilt(); }
KernelStatus MemGetAddressRange(const void*, void**, size_t*) { return NotBuilt(); }

}  // namespace flashkv::cuda

#pragma once

// Per-device state the launchers share: cached device properties (checked once per device, so a
// launch costs no property query), per-kernel preparation (the dynamic shared-memory opt-in and the
// resident CTAs per SM), and the split-KV workspace.
//
// Thread-safety: every function may be called from any thread; caches are guarded by a mutex and
// filled once per (device, kernel).
//
// Workspace: partial results of split-KV launches come from a stream-ordered memory pool owned by
// this library (one per device, created on first use, never trimmed below what it has held:
// its release threshold is unlimited). Allocation and release are enqueued on the launch stream
// (cudaMallocFromPoolAsync / cudaFreeAsync), so concurrent launches on different streams never
// share scratch, callers pass nothing, and CUDA graph capture records them as memory nodes.

#include <cuda_runtime_api.h>

#include <cstddef>

#include "flashkv/kernel_status.h"

namespace flashkv::cuda {

struct DeviceProps {
  int device = 0;
  int major = 0;
  int minor = 0;
  int multiprocessors = 0;
  int max_smem_per_block_optin = 0;
  int l2_bytes = 0;
};

// Properties of the current device; kFailedPrecondition when it is older than sm_80.
KernelStatus CurrentDevice(DeviceProps* props);

// Raises `kernel`'s dynamic shared-memory limit to `smem_bytes` on the current device (once) and
// reports how many CTAs of `threads` threads fit on one SM.
KernelStatus PrepareKernel(const void* kernel, int threads, int smem_bytes, const DeviceProps& props,
                           int* ctas_per_sm);

KernelStatus WorkspaceAllocate(size_t bytes, cudaStream_t stream, void** ptr);
KernelStatus WorkspaceFree(void* ptr, cudaStream_t stream);

}  // namespace flashkv::cuda

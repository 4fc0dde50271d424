#pragma once

// Which kernel computes an attention launch: the sm90 kernel (Hopper: wgmma, TMA, warp
// specialisation), the sm80 tensor-core kernel (every other 16-bit case, decode and split-KV
// included), or the SIMT kernel (fp32, and 16-bit tensors that are not 16-byte aligned). The one
// decision the dispatch site (attention.cc) follows; tests observe it through testing::PathOf.

#include <cstdint>

#include "attention_params.h"
#include "device_state.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/dtype.h"
#include "launch.h"

namespace flashkv::cuda {

enum class KernelPath { kSimt, kSm80, kSm90 };

const char* KernelPathName(KernelPath path);

// Whether (dtype, head_dim) has sm90 kernels in this build (FLASHKV_ENABLE_SM90 with 90a among
// the CUDA architectures, intersected with the instantiation lists); `paged`: the paged ones
// (FLASHKV_ENABLE_SM90_PAGED as well).
bool IsSm90Compiled(DType dtype, int head_dim, bool paged = false);

// Why this launch does not take the sm90 kernel, or nullptr when it does. Pure host arithmetic
// on the launch parameters and the device properties (no CUDA call).
const char* Sm90Rejection(DType dtype, int head_dim, bool paged, bool sm90_compiled,
                          const AttentionParams& p, const LaunchInfo& info,
                          const DeviceProps& props);

KernelPath ChooseKernelPath(DType dtype, int head_dim, bool paged, const AttentionParams& p,
                            const LaunchInfo& info, const DeviceProps& props);

namespace testing {

// The kernel the public call with these arguments runs on the current device (arguments are
// validated first, as by the call).
KernelStatus PathOf(const FixedAttentionArgs& args, KernelPath* path);
KernelStatus PathOf(const VarlenAttentionArgs& args, KernelPath* path);
KernelStatus PathOf(const PagedAttentionArgs& args, KernelPath* path);

}  // namespace testing
}  // namespace flashkv::cuda

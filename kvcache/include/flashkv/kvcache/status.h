#pragma once

// The kernels layer reports errors as flashkv::KernelStatus (it stays free of absl); its codes
// mirror the canonical ones, so the mapping is one to one and keeps the message.

#include "absl/status/status.h"
#include "flashkv/kernel_status.h"

namespace flashkv::kvcache {

absl::Status ToAbslStatus(const KernelStatus& status);

}  // namespace flashkv::kvcache

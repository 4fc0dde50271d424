#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache {

absl::Status ToAbslStatus(const KernelStatus& status) {
  if (status.ok()) return absl::OkStatus();
  // KernelStatusCode values are the canonical code numbers (kernel_status.h).
  return absl::Status(static_cast<absl::StatusCode>(status.code()), status.message());
}

}  // namespace flashkv::kvcache

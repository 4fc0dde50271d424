#pragma once

// The one place where errors become gRPC statuses. Inside the server, errors are absl::Status
// values; the kernels report flashkv::KernelStatus, whose codes mirror the canonical ones. Codes
// and messages travel unchanged: absl and gRPC share the canonical code numbering.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "flashkv/kernel_status.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::server {

// Kernel errors become absl::Status with the same code and message (kvcache owns that mapping).
inline absl::Status FromKernelStatus(const KernelStatus& status) {
  return kvcache::ToAbslStatus(status);
}

grpc::Status ToGrpcStatus(const absl::Status& status);
inline grpc::Status ToGrpcStatus(const KernelStatus& status) {
  return ToGrpcStatus(FromKernelStatus(status));
}

// The canonical name of a gRPC code ("RESOURCE_EXHAUSTED"), for metric labels and logs.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace flashkv::server

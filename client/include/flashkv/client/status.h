#pragma once

// The client's one mapping from gRPC statuses to absl::Status. gRPC and absl share canonical code
// numbers, so the server's code and message arrive unchanged.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "flashkv/kernel_status.h"
#include "grpcpp/support/status.h"

namespace flashkv {

// OK stays OK; any other status keeps its code and message. When `rpc` is not empty and the
// failure happened on the client side of the wire (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED with
// an empty message), the RPC name is added so the user sees which call never got an answer.
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view rpc = {});

// The reverse, for fakes and tests that serve absl statuses.
grpc::Status ToGrpcStatus(const absl::Status& status);

// A kernel library status (the local CPU reference, CUDA calls in the client's process) as an
// absl::Status with the same canonical code; a non-empty `what` prefixes the message ("what:
// message") with what was being done.
absl::Status FromKernel(const KernelStatus& status, absl::string_view what = {});

}  // namespace flashkv

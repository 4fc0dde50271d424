#pragma once

// The stateless Attention and AttentionVarlen RPCs without the gRPC plumbing: a request is
// decoded and checked (Prepare*), then computed on a backend into a response message (Run).
// Split this way so that the checks run on the gRPC thread (a bad request costs microseconds)
// and the compute on the service's executor.

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/attention.h"
#include "flashkv/server/attention_backend.h"
#include "flashkv/wire/message_bytes.h"

namespace flashkv::server {

// A checked request: its message (which holds the tensor bytes) and the kernel's view of it.
// Pointers in the args are filled at Run.
struct AttentionCall {
  wire::MessageBytes message;
  bool varlen = false;
  FixedAttentionArgs fixed;
  VarlenAttentionArgs varlen_args;
  wire::Span q, k, v;
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_kv;
  bool return_lse = false;
  std::vector<int64_t> out_shape;
  std::vector<int64_t> lse_shape;
};

// INVALID_ARGUMENT naming the field for anything malformed or inconsistent.
absl::StatusOr<AttentionCall> PrepareAttention(wire::MessageBytes message);
absl::StatusOr<AttentionCall> PrepareAttentionVarlen(wire::MessageBytes message);

// UNIMPLEMENTED when (dtype, head dim) is not compiled into the backend; kernel errors as they
// come. On success `response` holds the serialized AttentionResponse, whose tensors reference
// buffers it keeps alive.
absl::Status RunAttention(const AttentionCall& call, AttentionBackend* backend,
                          grpc::ByteBuffer* response);

}  // namespace flashkv::server

#pragma once

// The client's requests that carry tensors, encoded with the wire codec (flashkv/wire) instead of
// protobuf messages: tensor bytes are referenced where the caller keeps them, never copied into
// a message and serialised again, and tensors in a shared-memory region travel as descriptors.
//
// Lifetime: the returned buffer borrows the tensors' bytes. The caller keeps them valid and
// unchanged until the call's response has arrived (the server answers only after it has read
// the whole request, so gRPC no longer needs them then).

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>

#include "absl/types/span.h"
#include "flashkv/client/client.h"
#include "flashkv/client/step_input.h"
#include "flashkv/wire/messages.h"

namespace flashkv::client_internal {

wire::TensorData WireTensor(const TensorView& view);
grpc::ByteBuffer EncodeStep(uint32_t layer, uint64_t step_id, absl::Span<const StepInput> entries);
grpc::ByteBuffer EncodeStepBatch(uint32_t layer, uint64_t step_id, const StepBatchInput& batch);
grpc::ByteBuffer EncodeAttention(const AttentionInput& input, bool varlen);

}  // namespace flashkv::client_internal

#pragma once

// Decoders and encoders for the flashkv.v1 messages that carry tensors (proto/flashkv/v1/*.proto),
// written against the wire format so that tensor bytes are never copied into or out of protobuf
// strings: a decoded tensor is a Span of the received slices, and an encoded one references the
// caller's buffer. They follow protobuf's parsing rules (unknown fields skipped, repeated scalars
// packed or not, a repeated singular message merged, the last scalar winning), and the tests
// check them against protobuf's own serializer. Messages without tensors use the generated
// classes.
//
// Field values are decoded as they are on the wire; checking them against the server's model
// (dtype, shapes, sizes) is the caller's job.

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "flashkv/wire/message_builder.h"
#include "flashkv/wire/message_bytes.h"

namespace flashkv::wire {

// A tensor's shape: flashkv tensors have at most 4 dimensions, kept inline (a decoded Step entry
// has three tensors, and a heap allocation for each showed in profiles of large steps).
using Dims = absl::InlinedVector<int64_t, 4>;

// flashkv.v1.RegionSlice (shared-memory data plane): bytes of a registered region.
struct RegionSliceView {
  bool present = false;  // the field appeared on the wire
  uint64_t region_id = 0;
  uint64_t offset = 0;
};

// flashkv.v1.Tensor as received.
struct TensorView {
  bool present = false;  // the field appeared on the wire
  int32_t dtype = 0;     // flashkv.v1.DType value, unchecked
  Dims shape;
  Span data;
  RegionSliceView region;  // when present, the bytes lie there instead of in `data`
};

struct StepEntryView {
  std::string sequence_id;
  TensorView q;
  TensorView k;
  TensorView v;
  std::vector<int64_t> token_ids;
  RegionSliceView out;  // where to write the output, if not into the response
};

// flashkv.v1.StepBatch: a whole batch, one descriptor per tensor.
struct StepBatchView {
  bool present = false;  // the field appeared on the wire
  std::vector<std::string> sequence_ids;
  std::vector<int64_t> num_tokens;  // empty: one token per entry
  TensorView q;
  TensorView k;
  TensorView v;
  RegionSliceView out;
  std::vector<int64_t> token_ids;
  uint64_t pass_id = 0;  // a decode pass of the stream (docs/api.md#decode-passes); 0: none
};

struct StepRequestView {
  uint32_t layer = 0;
  uint64_t step_id = 0;
  std::vector<StepEntryView> entries;
  StepBatchView batch;
};

// StepResponse.kernel_ns and server_ns: where the step's time went on the server.
struct StepTiming {
  uint64_t kernel_ns = 0;
  uint64_t server_ns = 0;
  uint64_t queue_ns = 0;   // StepResponse.queue_ns: arrival to the first launch
  uint64_t launch_ns = 0;  // StepResponse.launch_ns: the launches, kernels included
};

struct StepResponseView {
  std::vector<TensorView> out;
  uint64_t step_id = 0;
  StepTiming timing;
  TensorView batch_out;  // a batched request's output
};

struct AttentionRequestView {
  TensorView q;
  TensorView k;
  TensorView v;
  bool causal = false;
  std::optional<float> softmax_scale;
  bool return_lse = false;
  RegionSliceView out;  // where to write out / lse, if not into the response
  RegionSliceView lse;
};

struct AttentionVarlenRequestView {
  TensorView q;
  TensorView k;
  TensorView v;
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_kv;
  bool causal = false;
  std::optional<float> softmax_scale;
  bool return_lse = false;
  RegionSliceView out;
  RegionSliceView lse;
};

struct AttentionResponseView {
  TensorView out;
  TensorView lse;
};

// Bounds on what decoding may allocate, checked while decoding (before the allocation), so that a
// message cannot make the decoder allocate much more than its own size: an empty repeated
// message is two bytes on the wire and a few hundred in a view, a packed varint one byte on the
// wire and eight in a vector. A server passes its request limits; the defaults bound only the
// tensor rank (no flashkv tensor has more than 4 dimensions).
struct DecodeLimits {
  size_t max_entries = SIZE_MAX;     // StepRequest.entries; StepBatch.sequence_ids, num_tokens
  size_t max_batch_rows = SIZE_MAX;  // StepBatch.token_ids
  size_t max_rank = 8;               // Tensor.shape values (repeated Tensor fields merge)
  size_t max_token_ids = SIZE_MAX;   // StepEntry.token_ids
  size_t max_id_bytes = SIZE_MAX;    // StepEntry.sequence_id
  size_t max_cu_seqlens = SIZE_MAX;  // each cu_seqlens list
};

// Errors are INVALID_ARGUMENT naming the message and the byte offset of the malformation, or the
// field and the limit it broke.
absl::Status DecodeStepRequest(const MessageBytes& message, StepRequestView* request,
                               const DecodeLimits& limits = {});
absl::Status DecodeStepResponse(const MessageBytes& message, StepResponseView* response);
absl::Status DecodeAttentionRequest(const MessageBytes& message, AttentionRequestView* request,
                                    const DecodeLimits& limits = {});
absl::Status DecodeAttentionVarlenRequest(const MessageBytes& message,
                                          AttentionVarlenRequestView* request,
                                          const DecodeLimits& limits = {});
absl::Status DecodeAttentionResponse(const MessageBytes& message, AttentionResponseView* response);

// A tensor to encode. `owner` keeps `data` alive until gRPC has sent it; without an owner the
// bytes are copied.
struct TensorData {
  int32_t dtype = 0;
  Dims shape;
  const void* data = nullptr;
  size_t size = 0;  // bytes
  std::shared_ptr<const void> owner;
  // Encoded as Tensor.region when present (then `size` is normally 0: the bytes are there).
  RegionSliceView region;
};

struct StepEntryData {
  std::string_view sequence_id;
  TensorData q;
  TensorData k;
  TensorData v;
  std::vector<int64_t> token_ids;
  RegionSliceView out;
};

// A StepBatch to encode (tensors as in TensorData: referenced, or region descriptors).
struct StepBatchData {
  std::vector<std::string_view> sequence_ids;
  std::vector<int64_t> num_tokens;  // empty: one token each
  TensorData q;
  TensorData k;
  TensorData v;
  RegionSliceView out;
  std::vector<int64_t> token_ids;
  uint64_t pass_id = 0;  // 0: not a pass step
};

// AttentionRequest (cu_seqlens ignored) or AttentionVarlenRequest, to encode.
struct AttentionRequestData {
  TensorData q;
  TensorData k;
  TensorData v;
  bool causal = false;
  std::optional<float> softmax_scale;
  bool return_lse = false;
  RegionSliceView out;
  RegionSliceView lse;
  std::vector<int32_t> cu_seqlens_q;  // varlen only
  std::vector<int32_t> cu_seqlens_kv;
};

// Appends `tensor` as field `field_number` of the message being built.
void AppendTensorField(uint32_t field_number, const TensorData& tensor, MessageBuilder* builder);
size_t TensorFieldSize(uint32_t field_number, const TensorData& tensor);

grpc::ByteBuffer EncodeStepRequest(uint32_t layer, uint64_t step_id,
                                   absl::Span<const StepEntryData> entries);
// A batched StepRequest (StepRequest.batch, no entries).
grpc::ByteBuffer EncodeStepBatchRequest(uint32_t layer, uint64_t step_id,
                                        const StepBatchData& batch);
// `batch_out` (a batched request's output) is written when not null.
grpc::ByteBuffer EncodeStepResponse(absl::Span<const TensorData> out, uint64_t step_id,
                                    const StepTiming& timing = {},
                                    const TensorData* batch_out = nullptr);
// Clients: the stateless attention requests, tensors referenced as their TensorData says.
grpc::ByteBuffer EncodeAttentionRequest(const AttentionRequestData& request);
grpc::ByteBuffer EncodeAttentionVarlenRequest(const AttentionRequestData& request);
// `lse` may be null (not requested).
grpc::ByteBuffer EncodeAttentionResponse(const TensorData& out, const TensorData* lse);

}  // namespace flashkv::wire

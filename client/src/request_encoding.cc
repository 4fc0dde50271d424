#include "request_encoding.h"

#include <memory>
#include <vector>

namespace flashkv::client_internal {
namespace {

wire::RegionSliceView WireSlice(const std::optional<RegionSlice>& slice) {
  wire::RegionSliceView view;
  if (slice.has_value()) {
    view.present = true;
    view.region_id = slice->region_id;
    view.offset = slice->offset;
  }
  return view;
}

}  // namespace

wire::TensorData WireTensor(const TensorView& view) {
  wire::TensorData tensor;
  tensor.dtype = static_cast<int32_t>(ToProtoDType(view.dtype()));
  tensor.shape.assign(view.shape().begin(), view.shape().end());
  if (view.region().has_value()) {
    tensor.region = WireSlice(view.region());
    return tensor;
  }
  tensor.data = view.data();
  tensor.size = view.num_bytes();
  // A non-null owner that owns nothing (shared_ptr's aliasing constructor over an empty one):
  // the builder then references the bytes instead of copying them, and their lifetime is the
  // caller's contract (see the header).
  tensor.owner = std::shared_ptr<const void>(std::shared_ptr<const void>(), view.data());
  return tensor;
}

grpc::ByteBuffer EncodeStep(uint32_t layer, uint64_t step_id,
                            absl::Span<const StepInput> entries) {
  std::vector<wire::StepEntryData> data(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const StepInput& input = entries[i];
    wire::StepEntryData& entry = data[i];
    entry.sequence_id = input.sequence_id;
    entry.q = WireTensor(input.q);
    entry.k = WireTensor(input.k);
    entry.v = WireTensor(input.v);
    entry.token_ids = input.token_ids;
    entry.out = WireSlice(input.out);
  }
  return wire::EncodeStepRequest(layer, step_id, data);
}

grpc::ByteBuffer EncodeStepBatch(uint32_t layer, uint64_t step_id, const StepBatchInput& batch) {
  wire::StepBatchData data;
  data.sequence_ids.assign(batch.sequence_ids.begin(), batch.sequence_ids.end());
  data.num_tokens = batch.num_tokens;
  data.q = WireTensor(batch.q);
  data.k = WireTensor(batch.k);
  data.v = WireTensor(batch.v);
  data.out = WireSlice(batch.out);
  data.token_ids = batch.token_ids;
  data.pass_id = batch.pass_id;
  return wire::EncodeStepBatchRequest(layer, step_id, data);
}

grpc::ByteBuffer EncodeAttention(const AttentionInput& input, bool varlen) {
  wire::AttentionRequestData request;
  request.q = WireTensor(input.q);
  request.k = WireTensor(input.k);
  request.v = WireTensor(input.v);
  request.causal = input.causal;
  request.softmax_scale = input.softmax_scale;
  request.return_lse = input.return_lse;
  request.out = WireSlice(input.out);
  request.lse = WireSlice(input.lse);
  if (!varlen) return wire::EncodeAttentionRequest(request);
  request.cu_seqlens_q = input.cu_seqlens_q;
  request.cu_seqlens_kv = input.cu_seqlens_kv;
  return wire::EncodeAttentionVarlenRequest(request);
}

}  // namespace flashkv::client_internal

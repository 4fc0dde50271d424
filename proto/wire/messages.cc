#include "flashkv/wire/messages.h"

#include <cstring>
#include <utility>

#include "flashkv/wire/field_reader.h"

namespace flashkv::wire {
namespace {

// Field numbers, from proto/flashkv/v1/*.proto.
namespace tensor {
constexpr uint32_t kDType = 1, kShape = 2, kData = 3, kRegion = 4;
}
namespace region_slice {
constexpr uint32_t kRegionId = 1, kOffset = 2;
}
namespace step_entry {
constexpr uint32_t kSequenceId = 1, kQ = 2, kK = 3, kV = 4, kTokenIds = 5, kOut = 6;
}
namespace step_batch {
constexpr uint32_t kSequenceIds = 1, kNumTokens = 2, kQ = 3, kK = 4, kV = 5, kOut = 6,
                   kTokenIds = 7, kPassId = 8;
}
namespace step_request {
constexpr uint32_t kLayer = 1, kEntries = 2, kStepId = 3, kBatch = 4;
}
namespace step_response {
constexpr uint32_t kOut = 1, kStepId = 2, kKernelNs = 3, kServerNs = 4, kBatchOut = 5, kQueueNs = 6,
                   kLaunchNs = 7;
}
namespace attention_request {
constexpr uint32_t kQ = 1, kK = 2, kV = 3, kCausal = 4, kSoftmaxScale = 5, kReturnLse = 6, kOut = 7,
                   kLse = 8;
}
namespace varlen_request {
constexpr uint32_t kQ = 1, kK = 2, kV = 3, kCuSeqlensQ = 4, kCuSeqlensKv = 5, kCausal = 6,
                   kSoftmaxScale = 7, kReturnLse = 8, kOut = 9, kLse = 10;
}
namespace attention_response {
constexpr uint32_t kOut = 1, kLse = 2;
}

bool IsVarint(const Field& f) { return f.type == WireType::kVarint; }
bool IsBytes(const Field& f) { return f.type == WireType::kLengthDelimited; }
bool IsFixed32(const Field& f) { return f.type == WireType::kFixed32; }

float FloatFromBits(uint64_t bits) {
  const uint32_t low = static_cast<uint32_t>(bits);
  float value;
  std::memcpy(&value, &low, sizeof value);
  return value;
}

absl::Status Malformed(const char* message, const absl::Status& status) {
  return absl::InvalidArgumentError(std::string("malformed ") + message + ": " +
                                    std::string(status.message()));
}

// Merges one occurrence of a RegionSlice field into `slice` (scalars overwrite).
absl::Status DecodeRegionSlice(const MessageBytes& message, Span span, RegionSliceView* slice) {
  slice->present = true;
  FieldReader reader(message, span);
  Field field;
  while (reader.Next(&field)) {
    if (field.number == region_slice::kRegionId && IsVarint(field)) {
      slice->region_id = field.value;
    } else if (field.number == region_slice::kOffset && IsVarint(field)) {
      slice->offset = field.value;
    }
  }
  if (!reader.status().ok()) return Malformed("RegionSlice", reader.status());
  return absl::OkStatus();
}

// Merges one occurrence of a Tensor field into `tensor`, as protobuf merges a repeated singular
// message: scalars and bytes overwrite, repeated fields append.
absl::Status DecodeTensor(const MessageBytes& message, Span span, const DecodeLimits& limits,
                          TensorView* tensor) {
  tensor->present = true;
  FieldReader reader(message, span);
  Field field;
  while (reader.Next(&field)) {
    if (field.number == tensor::kDType && IsVarint(field)) {
      tensor->dtype = static_cast<int32_t>(field.value);
    } else if (field.number == tensor::kShape) {
      if (auto s = AppendRepeatedVarint(message, field, &tensor->shape, limits.max_rank); !s.ok()) {
        return absl::InvalidArgumentError("Tensor.shape: " + std::string(s.message()));
      }
    } else if (field.number == tensor::kData && IsBytes(field)) {
      tensor->data = field.bytes;
    } else if (field.number == tensor::kRegion && IsBytes(field)) {
      if (auto s = DecodeRegionSlice(message, field.bytes, &tensor->region); !s.ok()) return s;
    }
  }
  if (!reader.status().ok()) return Malformed("Tensor", reader.status());
  return absl::OkStatus();
}

absl::Status AppendInt32s(const MessageBytes& message, const Field& field, const char* name,
                          size_t max_values, std::vector<int32_t>* out) {
  std::vector<int64_t> values;
  if (out->size() > max_values) return absl::InternalError("AppendInt32s: over the limit already");
  if (auto s = AppendRepeatedVarint(message, field, &values, max_values - out->size()); !s.ok()) {
    return absl::InvalidArgumentError(std::string(name) + ": " + std::string(s.message()));
  }
  // int32 fields truncate to 32 bits, as protobuf does (negative values are sign-extended).
  for (int64_t v : values) out->push_back(static_cast<int32_t>(v));
  return absl::OkStatus();
}

absl::Status DecodeStepEntry(const MessageBytes& message, Span span, const DecodeLimits& limits,
                             StepEntryView* entry) {
  FieldReader reader(message, span);
  Field field;
  while (reader.Next(&field)) {
    absl::Status status;
    switch (field.number) {
      case step_entry::kSequenceId:
        if (!IsBytes(field)) break;
        if (field.bytes.size > limits.max_id_bytes) {
          return absl::InvalidArgumentError("StepEntry.sequence_id has " +
                                            std::to_string(field.bytes.size) + " bytes; at most " +
                                            std::to_string(limits.max_id_bytes) + " are allowed");
        }
        entry->sequence_id = ReadString(message, field);
        break;
      case step_entry::kQ:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &entry->q);
        break;
      case step_entry::kK:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &entry->k);
        break;
      case step_entry::kV:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &entry->v);
        break;
      case step_entry::kTokenIds:
        status = AppendRepeatedVarint(message, field, &entry->token_ids, limits.max_token_ids);
        if (!status.ok()) {
          status =
              absl::InvalidArgumentError("StepEntry.token_ids: " + std::string(status.message()));
        }
        break;
      case step_entry::kOut:
        if (IsBytes(field)) status = DecodeRegionSlice(message, field.bytes, &entry->out);
        break;
      default:
        break;
    }
    if (!status.ok()) return status;
  }
  if (!reader.status().ok()) return Malformed("StepEntry", reader.status());
  return absl::OkStatus();
}

// Merges one occurrence of a StepBatch field (repeated fields append, as protobuf merges).
absl::Status DecodeStepBatch(const MessageBytes& message, Span span, const DecodeLimits& limits,
                             StepBatchView* batch) {
  batch->present = true;
  FieldReader reader(message, span);
  Field field;
  while (reader.Next(&field)) {
    absl::Status status;
    switch (field.number) {
      case step_batch::kSequenceIds:
        if (!IsBytes(field)) break;
        if (batch->sequence_ids.size() >= limits.max_entries) {
          return absl::InvalidArgumentError("StepBatch.sequence_ids: more than " +
                                            std::to_string(limits.max_entries) +
                                            " ids (the server's limit)");
        }
        if (field.bytes.size > limits.max_id_bytes) {
          return absl::InvalidArgumentError("StepBatch.sequence_ids[" +
                                            std::to_string(batch->sequence_ids.size()) + "] has " +
                                            std::to_string(field.bytes.size) + " bytes; at most " +
                                            std::to_string(limits.max_id_bytes) + " are allowed");
        }
        batch->sequence_ids.push_back(ReadString(message, field));
        break;
      case step_batch::kNumTokens: {
        const size_t before = batch->num_tokens.size();
        status = AppendRepeatedVarint(message, field, &batch->num_tokens, limits.max_entries);
        if (!status.ok()) {
          status =
              absl::InvalidArgumentError("StepBatch.num_tokens: " + std::string(status.message()));
        }
        // uint32 fields keep the low 32 bits, as protobuf parses them.
        for (size_t i = before; i < batch->num_tokens.size(); ++i) {
          batch->num_tokens[i] = static_cast<uint32_t>(batch->num_tokens[i]);
        }
        break;
      }
      case step_batch::kQ:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &batch->q);
        break;
      case step_batch::kK:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &batch->k);
        break;
      case step_batch::kV:
        if (IsBytes(field)) status = DecodeTensor(message, field.bytes, limits, &batch->v);
        break;
      case step_batch::kOut:
        if (IsBytes(field)) status = DecodeRegionSlice(message, field.bytes, &batch->out);
        break;
      case step_batch::kPassId:
        if (IsVarint(field)) batch->pass_id = field.value;
        break;
      case step_batch::kTokenIds:
        status = AppendRepeatedVarint(message, field, &batch->token_ids, limits.max_batch_rows);
        if (!status.ok()) {
          status =
              absl::InvalidArgumentError("StepBatch.token_ids: " + std::string(status.message()));
        }
        break;
      default:
        break;
    }
    if (!status.ok()) return status;
  }
  if (!reader.status().ok()) return Malformed("StepBatch", reader.status());
  return absl::OkStatus();
}

// The three tensors, the flags and the output slices (`out`, then lse at out + 1) shared by
// AttentionRequest and AttentionVarlenRequest.
template <typename View>
bool DecodeCommonAttentionField(const MessageBytes& message, const Field& field, uint32_t q,
                                uint32_t causal, uint32_t scale, uint32_t return_lse, uint32_t out,
                                const DecodeLimits& limits, View* view, absl::Status* status) {
  if (field.number == out || field.number == out + 1) {
    RegionSliceView* slice = field.number == out ? &view->out : &view->lse;
    if (IsBytes(field)) *status = DecodeRegionSlice(message, field.bytes, slice);
    return true;
  }
  if (field.number == q || field.number == q + 1 || field.number == q + 2) {
    TensorView* tensor = field.number == q ? &view->q : field.number == q + 1 ? &view->k : &view->v;
    if (IsBytes(field)) *status = DecodeTensor(message, field.bytes, limits, tensor);
    return true;
  }
  if (field.number == causal && IsVarint(field)) {
    view->causal = field.value != 0;
    return true;
  }
  if (field.number == scale && IsFixed32(field)) {
    view->softmax_scale = FloatFromBits(field.value);
    return true;
  }
  if (field.number == return_lse && IsVarint(field)) {
    view->return_lse = field.value != 0;
    return true;
  }
  return false;
}

}  // namespace

absl::Status DecodeStepRequest(const MessageBytes& message, StepRequestView* request,
                               const DecodeLimits& limits) {
  Field field;
  {
    // Entries are counted first (a pass over the top-level tags, skipping their payloads), so
    // that the views are built in place: growing the vector moved every view built so far,
    // several times over for a large step.
    size_t entries = 0;
    FieldReader counter(message, message.whole());
    while (counter.Next(&field) && entries < limits.max_entries) {
      if (field.number == step_request::kEntries && IsBytes(field)) ++entries;
    }
    request->entries.reserve(request->entries.size() + entries);
  }
  FieldReader reader(message, message.whole());
  while (reader.Next(&field)) {
    if (field.number == step_request::kLayer && IsVarint(field)) {
      request->layer = static_cast<uint32_t>(field.value);
    } else if (field.number == step_request::kStepId && IsVarint(field)) {
      request->step_id = field.value;
    } else if (field.number == step_request::kEntries && IsBytes(field)) {
      if (request->entries.size() >= limits.max_entries) {
        return absl::InvalidArgumentError("StepRequest.entries: more than " +
                                          std::to_string(limits.max_entries) +
                                          " entries (the server's limit)");
      }
      request->entries.emplace_back();
      if (auto s = DecodeStepEntry(message, field.bytes, limits, &request->entries.back());
          !s.ok()) {
        return s;
      }
    } else if (field.number == step_request::kBatch && IsBytes(field)) {
      if (auto s = DecodeStepBatch(message, field.bytes, limits, &request->batch); !s.ok()) {
        return s;
      }
    }
  }
  if (!reader.status().ok()) return Malformed("StepRequest", reader.status());
  return absl::OkStatus();
}

absl::Status DecodeStepResponse(const MessageBytes& message, StepResponseView* response) {
  FieldReader reader(message, message.whole());
  Field field;
  while (reader.Next(&field)) {
    if (field.number == step_response::kOut && IsBytes(field)) {
      response->out.emplace_back();
      if (auto s = DecodeTensor(message, field.bytes, DecodeLimits{}, &response->out.back());
          !s.ok()) {
        return s;
      }
    } else if (field.number == step_response::kStepId && IsVarint(field)) {
      response->step_id = field.value;
    } else if (field.number == step_response::kKernelNs && IsVarint(field)) {
      response->timing.kernel_ns = field.value;
    } else if (field.number == step_response::kServerNs && IsVarint(field)) {
      response->timing.server_ns = field.value;
    } else if (field.number == step_response::kQueueNs && IsVarint(field)) {
      response->timing.queue_ns = field.value;
    } else if (field.number == step_response::kLaunchNs && IsVarint(field)) {
      response->timing.launch_ns = field.value;
    } else if (field.number == step_response::kBatchOut && IsBytes(field)) {
      if (auto s = DecodeTensor(message, field.bytes, DecodeLimits{}, &response->batch_out);
          !s.ok()) {
        return s;
      }
    }
  }
  if (!reader.status().ok()) return Malformed("StepResponse", reader.status());
  return absl::OkStatus();
}

absl::Status DecodeAttentionRequest(const MessageBytes& message, AttentionRequestView* request,
                                    const DecodeLimits& limits) {
  namespace f = attention_request;
  FieldReader reader(message, message.whole());
  Field field;
  while (reader.Next(&field)) {
    absl::Status status;
    DecodeCommonAttentionField(message, field, f::kQ, f::kCausal, f::kSoftmaxScale, f::kReturnLse,
                               f::kOut, limits, request, &status);
    if (!status.ok()) return status;
  }
  if (!reader.status().ok()) return Malformed("AttentionRequest", reader.status());
  return absl::OkStatus();
}

absl::Status DecodeAttentionVarlenRequest(const MessageBytes& message,
                                          AttentionVarlenRequestView* request,
                                          const DecodeLimits& limits) {
  namespace f = varlen_request;
  FieldReader reader(message, message.whole());
  Field field;
  while (reader.Next(&field)) {
    absl::Status status;
    if (DecodeCommonAttentionField(message, field, f::kQ, f::kCausal, f::kSoftmaxScale,
                                   f::kReturnLse, f::kOut, limits, request, &status)) {
    } else if (field.number == f::kCuSeqlensQ) {
      status = AppendInt32s(message, field, "AttentionVarlenRequest.cu_seqlens_q",
                            limits.max_cu_seqlens, &request->cu_seqlens_q);
    } else if (field.number == f::kCuSeqlensKv) {
      status = AppendInt32s(message, field, "AttentionVarlenRequest.cu_seqlens_kv",
                            limits.max_cu_seqlens, &request->cu_seqlens_kv);
    }
    if (!status.ok()) return status;
  }
  if (!reader.status().ok()) return Malformed("AttentionVarlenRequest", reader.status());
  return absl::OkStatus();
}

absl::Status DecodeAttentionResponse(const MessageBytes& message, AttentionResponseView* response) {
  namespace f = attention_response;
  FieldReader reader(message, message.whole());
  Field field;
  while (reader.Next(&field)) {
    absl::Status status;
    if (field.number == f::kOut && IsBytes(field)) {
      status = DecodeTensor(message, field.bytes, DecodeLimits{}, &response->out);
    } else if (field.number == f::kLse && IsBytes(field)) {
      status = DecodeTensor(message, field.bytes, DecodeLimits{}, &response->lse);
    }
    if (!status.ok()) return status;
  }
  if (!reader.status().ok()) return Malformed("AttentionResponse", reader.status());
  return absl::OkStatus();
}

// ---- Encoding ------------------------------------------------------------------------------

namespace {

size_t PackedVarintsSize(absl::Span<const int64_t> values) {
  size_t size = 0;
  for (int64_t v : values) size += VarintSize(static_cast<uint64_t>(v));
  return size;
}

size_t RegionSlicePayloadSize(const RegionSliceView& slice) {
  size_t size = 0;
  if (slice.region_id != 0) size += TagSize(region_slice::kRegionId) + VarintSize(slice.region_id);
  if (slice.offset != 0) size += TagSize(region_slice::kOffset) + VarintSize(slice.offset);
  return size;
}

void AppendRegionSliceField(uint32_t field_number, const RegionSliceView& slice,
                            MessageBuilder* builder) {
  if (!slice.present) return;
  builder->LengthDelimitedHeader(field_number, RegionSlicePayloadSize(slice));
  if (slice.region_id != 0) builder->VarintField(region_slice::kRegionId, slice.region_id);
  if (slice.offset != 0) builder->VarintField(region_slice::kOffset, slice.offset);
}

// Proto3 leaves out fields holding their default, as protobuf's serializer does.
size_t TensorPayloadSize(const TensorData& tensor) {
  size_t size = 0;
  if (tensor.dtype != 0) {
    size += TagSize(tensor::kDType) +
            VarintSize(static_cast<uint64_t>(static_cast<int64_t>(tensor.dtype)));
  }
  if (!tensor.shape.empty()) {
    size += LengthDelimitedFieldSize(tensor::kShape, PackedVarintsSize(tensor.shape));
  }
  if (tensor.size > 0) size += LengthDelimitedFieldSize(tensor::kData, tensor.size);
  if (tensor.region.present) {
    size += LengthDelimitedFieldSize(tensor::kRegion, RegionSlicePayloadSize(tensor.region));
  }
  return size;
}

void AppendPackedVarints(uint32_t field_number, absl::Span<const int64_t> values,
                         MessageBuilder* builder) {
  if (values.empty()) return;
  builder->LengthDelimitedHeader(field_number, PackedVarintsSize(values));
  for (int64_t v : values) builder->Varint(static_cast<uint64_t>(v));
}

size_t StepEntryPayloadSize(const StepEntryData& entry) {
  size_t size = 0;
  if (!entry.sequence_id.empty()) {
    size += LengthDelimitedFieldSize(step_entry::kSequenceId, entry.sequence_id.size());
  }
  size += TensorFieldSize(step_entry::kQ, entry.q) + TensorFieldSize(step_entry::kK, entry.k) +
          TensorFieldSize(step_entry::kV, entry.v);
  if (!entry.token_ids.empty()) {
    size += LengthDelimitedFieldSize(step_entry::kTokenIds, PackedVarintsSize(entry.token_ids));
  }
  if (entry.out.present) {
    size += LengthDelimitedFieldSize(step_entry::kOut, RegionSlicePayloadSize(entry.out));
  }
  return size;
}

size_t StepBatchPayloadSize(const StepBatchData& batch) {
  size_t size = 0;
  for (std::string_view id : batch.sequence_ids) {
    size += LengthDelimitedFieldSize(step_batch::kSequenceIds, id.size());
  }
  if (!batch.num_tokens.empty()) {
    size += LengthDelimitedFieldSize(step_batch::kNumTokens, PackedVarintsSize(batch.num_tokens));
  }
  size += TensorFieldSize(step_batch::kQ, batch.q) + TensorFieldSize(step_batch::kK, batch.k) +
          TensorFieldSize(step_batch::kV, batch.v);
  if (batch.out.present) {
    size += LengthDelimitedFieldSize(step_batch::kOut, RegionSlicePayloadSize(batch.out));
  }
  if (!batch.token_ids.empty()) {
    size += LengthDelimitedFieldSize(step_batch::kTokenIds, PackedVarintsSize(batch.token_ids));
  }
  if (batch.pass_id != 0) size += TagSize(step_batch::kPassId) + VarintSize(batch.pass_id);
  return size;
}

}  // namespace

size_t TensorFieldSize(uint32_t field_number, const TensorData& tensor) {
  return LengthDelimitedFieldSize(field_number, TensorPayloadSize(tensor));
}

void AppendTensorField(uint32_t field_number, const TensorData& tensor, MessageBuilder* builder) {
  builder->LengthDelimitedHeader(field_number, TensorPayloadSize(tensor));
  if (tensor.dtype != 0) {
    builder->VarintField(tensor::kDType, static_cast<uint64_t>(static_cast<int64_t>(tensor.dtype)));
  }
  AppendPackedVarints(tensor::kShape, tensor.shape, builder);
  if (tensor.size > 0) {
    builder->LengthDelimitedHeader(tensor::kData, tensor.size);
    builder->Alias(tensor.data, tensor.size, tensor.owner);
  }
  AppendRegionSliceField(tensor::kRegion, tensor.region, builder);
}

grpc::ByteBuffer EncodeStepRequest(uint32_t layer, uint64_t step_id,
                                   absl::Span<const StepEntryData> entries) {
  MessageBuilder builder;
  if (layer != 0) builder.VarintField(step_request::kLayer, layer);
  for (const StepEntryData& entry : entries) {
    builder.LengthDelimitedHeader(step_request::kEntries, StepEntryPayloadSize(entry));
    if (!entry.sequence_id.empty()) {
      builder.LengthDelimitedHeader(step_entry::kSequenceId, entry.sequence_id.size());
      builder.Copy(entry.sequence_id.data(), entry.sequence_id.size());
    }
    AppendTensorField(step_entry::kQ, entry.q, &builder);
    AppendTensorField(step_entry::kK, entry.k, &builder);
    AppendTensorField(step_entry::kV, entry.v, &builder);
    AppendPackedVarints(step_entry::kTokenIds, entry.token_ids, &builder);
    AppendRegionSliceField(step_entry::kOut, entry.out, &builder);
  }
  if (step_id != 0) builder.VarintField(step_request::kStepId, step_id);
  return builder.Finish();
}

grpc::ByteBuffer EncodeStepBatchRequest(uint32_t layer, uint64_t step_id,
                                        const StepBatchData& batch) {
  MessageBuilder builder;
  if (layer != 0) builder.VarintField(step_request::kLayer, layer);
  if (step_id != 0) builder.VarintField(step_request::kStepId, step_id);
  builder.LengthDelimitedHeader(step_request::kBatch, StepBatchPayloadSize(batch));
  for (std::string_view id : batch.sequence_ids) {
    builder.LengthDelimitedHeader(step_batch::kSequenceIds, id.size());
    builder.Copy(id.data(), id.size());
  }
  AppendPackedVarints(step_batch::kNumTokens, batch.num_tokens, &builder);
  AppendTensorField(step_batch::kQ, batch.q, &builder);
  AppendTensorField(step_batch::kK, batch.k, &builder);
  AppendTensorField(step_batch::kV, batch.v, &builder);
  AppendRegionSliceField(step_batch::kOut, batch.out, &builder);
  AppendPackedVarints(step_batch::kTokenIds, batch.token_ids, &builder);
  if (batch.pass_id != 0) builder.VarintField(step_batch::kPassId, batch.pass_id);
  return builder.Finish();
}

namespace {

std::vector<int64_t> Widen(const std::vector<int32_t>& values) {
  // int32 fields travel as sign-extended 64-bit varints, as protobuf writes them.
  return std::vector<int64_t>(values.begin(), values.end());
}

// Fields in number order, as protobuf's serializer writes them: the three tensors, (varlen)
// cu_seqlens, the flags, the output slices.
grpc::ByteBuffer EncodeAttention(const AttentionRequestData& request, bool varlen) {
  namespace f = attention_request;
  namespace g = varlen_request;
  MessageBuilder builder;
  AppendTensorField(f::kQ, request.q, &builder);
  AppendTensorField(f::kK, request.k, &builder);
  AppendTensorField(f::kV, request.v, &builder);
  if (varlen) {
    AppendPackedVarints(g::kCuSeqlensQ, Widen(request.cu_seqlens_q), &builder);
    AppendPackedVarints(g::kCuSeqlensKv, Widen(request.cu_seqlens_kv), &builder);
  }
  if (request.causal) builder.VarintField(varlen ? g::kCausal : f::kCausal, 1);
  if (request.softmax_scale.has_value()) {  // proto3 `optional`: written whenever set
    uint32_t bits;
    std::memcpy(&bits, &*request.softmax_scale, sizeof bits);
    builder.Fixed32Field(varlen ? g::kSoftmaxScale : f::kSoftmaxScale, bits);
  }
  if (request.return_lse) builder.VarintField(varlen ? g::kReturnLse : f::kReturnLse, 1);
  AppendRegionSliceField(varlen ? g::kOut : f::kOut, request.out, &builder);
  AppendRegionSliceField(varlen ? g::kLse : f::kLse, request.lse, &builder);
  return builder.Finish();
}

}  // namespace

grpc::ByteBuffer EncodeAttentionRequest(const AttentionRequestData& request) {
  return EncodeAttention(request, false);
}

grpc::ByteBuffer EncodeAttentionVarlenRequest(const AttentionRequestData& request) {
  return EncodeAttention(request, true);
}

grpc::ByteBuffer EncodeStepResponse(absl::Span<const TensorData> out, uint64_t step_id,
                                    const StepTiming& timing, const TensorData* batch_out) {
  MessageBuilder builder;
  for (const TensorData& tensor : out) AppendTensorField(step_response::kOut, tensor, &builder);
  if (step_id != 0) builder.VarintField(step_response::kStepId, step_id);
  if (timing.kernel_ns != 0) builder.VarintField(step_response::kKernelNs, timing.kernel_ns);
  if (timing.server_ns != 0) builder.VarintField(step_response::kServerNs, timing.server_ns);
  if (batch_out != nullptr) AppendTensorField(step_response::kBatchOut, *batch_out, &builder);
  if (timing.queue_ns != 0) builder.VarintField(step_response::kQueueNs, timing.queue_ns);
  if (timing.launch_ns != 0) builder.VarintField(step_response::kLaunchNs, timing.launch_ns);
  return builder.Finish();
}

grpc::ByteBuffer EncodeAttentionResponse(const TensorData& out, const TensorData* lse) {
  MessageBuilder builder;
  AppendTensorField(attention_response::kOut, out, &builder);
  if (lse != nullptr) AppendTensorField(attention_response::kLse, *lse, &builder);
  return builder.Finish();
}

}  // namespace flashkv::wire

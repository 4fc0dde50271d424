// Fuzz target: the wire decoders of the tensor-carrying messages (proto/wire, flashkv/wire/
// messages.h): StepRequest, StepResponse, AttentionRequest, AttentionVarlenRequest,
// AttentionResponse. Input: byte 0 picks the message, byte 1 how many cuts split the rest into
// slices (as gRPC hands a message over), the next bytes where; the remainder is the message.
//
// Properties, for every input:
// - no crash, leak or undefined behaviour (ASan + UBSan);
// - slicing never matters: the message decoded from one slice and from the cut slices gives the
//   same fields, status and bytes (the decoders' in-slice fast paths against the byte-by-byte
//   ones);
// - whatever the decoder accepts, protobuf's own parser accepts too, with the same field values
//   (the decoders claim protobuf's rules) — except that protobuf refuses a sequence_id that is
//   not UTF-8 (any occurrence of it), which the server's checks refuse as well (CheckSequenceId);
// - what was accepted re-encodes (EncodeStepRequest / EncodeStepResponse /
//   EncodeAttentionResponse) to bytes that decode to the same fields.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "flashkv/wire/field_reader.h"
#include "google/protobuf/stubs/common.h"
#include "flashkv/v1/attention.pb.h"
#include "flashkv/v1/kvcache.pb.h"
#include "flashkv/wire/messages.h"
#include "fuzz_check.h"
#include "wire_fuzz_util.h"

namespace flashkv::fuzz {
namespace {

using wire::MessageBytes;

enum class Kind : uint8_t {
  kStepRequest,
  kStepResponse,
  kAttentionRequest,
  kAttentionVarlenRequest,
  kAttentionResponse,
  kCount,
};

// --- Comparisons with protobuf's parse -------------------------------------------------------

void ExpectSameRegion(const wire::RegionSliceView& view, bool has, const v1::RegionSlice& proto,
                      const char* what) {
  FUZZ_CHECK(view.present == has) << what << ".present";
  FUZZ_CHECK(view.region_id == proto.region_id()) << what << ".region_id";
  FUZZ_CHECK(view.offset == proto.offset()) << what << ".offset";
}

void ExpectSameTensor(const MessageBytes& message, const wire::TensorView& view, bool has,
                      const v1::Tensor& proto, const char* what) {
  FUZZ_CHECK(view.present == has) << what << ".present";
  FUZZ_CHECK(view.dtype == static_cast<int32_t>(proto.dtype())) << what << ".dtype";
  FUZZ_CHECK(view.shape == wire::Dims(proto.shape().begin(), proto.shape().end()))
      << what << ".shape";
  FUZZ_CHECK(SpanBytes(message, view.data) == proto.data()) << what << ".data";
  ExpectSameRegion(view.region, proto.has_region(), proto.region(), what);
}

// Whether any StepEntry.sequence_id or StepBatch.sequence_ids value on the wire is not UTF-8 —
// every occurrence, not only the last one the view keeps: protobuf checks each string as it
// parses it. (Both are field 1 of a length-delimited StepRequest field: entries 2, batch 4.)
bool AnySequenceIdNotUtf8(const MessageBytes& message) {
  wire::FieldReader request(message, message.whole());
  wire::Field entry;
  while (request.Next(&entry)) {
    if ((entry.number != 2 && entry.number != 4) ||
        entry.type != wire::WireType::kLengthDelimited) {
      continue;
    }
    wire::FieldReader fields(message, entry.bytes);
    wire::Field field;
    while (fields.Next(&field)) {
      if (field.number != 1 || field.type != wire::WireType::kLengthDelimited) continue;
      if (!google::protobuf::internal::IsStructurallyValidUTF8(ReadString(message, field))) {
        return true;
      }
    }
  }
  return false;
}

void CompareStepRequest(const MessageBytes& message, const wire::StepRequestView& view) {
  v1::StepRequest proto;
  const bool parsed = ParseProto(message, &proto);
  if (!parsed) {
    // Protobuf refuses proto3 strings that are not UTF-8; the server refuses such an id too
    // (CheckSequenceId), and one that a later occurrence replaced never reaches it.
    FUZZ_CHECK(AnySequenceIdNotUtf8(message))
        << "the decoder accepted a StepRequest protobuf refuses";
    return;
  }
  FUZZ_CHECK(view.layer == proto.layer()) << "layer";
  FUZZ_CHECK(view.step_id == proto.step_id()) << "step_id";
  FUZZ_CHECK(view.entries.size() == static_cast<size_t>(proto.entries_size())) << "entries";
  for (size_t i = 0; i < view.entries.size(); ++i) {
    const wire::StepEntryView& e = view.entries[i];
    const v1::StepEntry& p = proto.entries(static_cast<int>(i));
    FUZZ_CHECK(e.sequence_id == p.sequence_id()) << "entries[" << i << "].sequence_id";
    ExpectSameTensor(message, e.q, p.has_q(), p.q(), "entry.q");
    ExpectSameTensor(message, e.k, p.has_k(), p.k(), "entry.k");
    ExpectSameTensor(message, e.v, p.has_v(), p.v(), "entry.v");
    FUZZ_CHECK(e.token_ids == std::vector<int64_t>(p.token_ids().begin(), p.token_ids().end()))
        << "entries[" << i << "].token_ids";
    ExpectSameRegion(e.out, p.has_out(), p.out(), "entry.out");
  }
  const wire::StepBatchView& b = view.batch;
  const v1::StepBatch& pb = proto.batch();
  FUZZ_CHECK(b.present == proto.has_batch()) << "batch.present";
  FUZZ_CHECK(b.sequence_ids ==
             std::vector<std::string>(pb.sequence_ids().begin(), pb.sequence_ids().end()))
      << "batch.sequence_ids";
  FUZZ_CHECK(b.num_tokens == std::vector<int64_t>(pb.num_tokens().begin(), pb.num_tokens().end()))
      << "batch.num_tokens";
  ExpectSameTensor(message, b.q, pb.has_q(), pb.q(), "batch.q");
  ExpectSameTensor(message, b.k, pb.has_k(), pb.k(), "batch.k");
  ExpectSameTensor(message, b.v, pb.has_v(), pb.v(), "batch.v");
  ExpectSameRegion(b.out, pb.has_out(), pb.out(), "batch.out");
  FUZZ_CHECK(b.token_ids == std::vector<int64_t>(pb.token_ids().begin(), pb.token_ids().end()))
      << "batch.token_ids";
}

void CompareStepResponse(const MessageBytes& message, const wire::StepResponseView& view) {
  v1::StepResponse proto;
  FUZZ_CHECK(ParseProto(message, &proto)) << "the decoder accepted a StepResponse protobuf refuses";
  FUZZ_CHECK(view.step_id == proto.step_id()) << "step_id";
  FUZZ_CHECK(view.out.size() == static_cast<size_t>(proto.out_size())) << "out";
  for (size_t i = 0; i < view.out.size(); ++i) {
    ExpectSameTensor(message, view.out[i], true, proto.out(static_cast<int>(i)), "out[i]");
  }
  ExpectSameTensor(message, view.batch_out, proto.has_batch_out(), proto.batch_out(), "batch_out");
}

template <typename View, typename Proto>
void CompareAttentionCommon(const MessageBytes& message, const View& view, const Proto& proto) {
  ExpectSameTensor(message, view.q, proto.has_q(), proto.q(), "q");
  ExpectSameTensor(message, view.k, proto.has_k(), proto.k(), "k");
  ExpectSameTensor(message, view.v, proto.has_v(), proto.v(), "v");
  FUZZ_CHECK(view.causal == proto.causal()) << "causal";
  FUZZ_CHECK(view.softmax_scale.has_value() == proto.has_softmax_scale()) << "has softmax_scale";
  if (view.softmax_scale.has_value()) {
    const float want = proto.softmax_scale();
    FUZZ_CHECK(std::memcmp(&*view.softmax_scale, &want, sizeof want) == 0) << "softmax_scale";
  }
  FUZZ_CHECK(view.return_lse == proto.return_lse()) << "return_lse";
  ExpectSameRegion(view.out, proto.has_out(), proto.out(), "out");
  ExpectSameRegion(view.lse, proto.has_lse(), proto.lse(), "lse");
}

void CompareAttentionRequest(const MessageBytes& message, const wire::AttentionRequestView& view) {
  v1::AttentionRequest proto;
  FUZZ_CHECK(ParseProto(message, &proto)) << "the decoder accepted a request protobuf refuses";
  CompareAttentionCommon(message, view, proto);
}

void CompareVarlenRequest(const MessageBytes& message,
                          const wire::AttentionVarlenRequestView& view) {
  v1::AttentionVarlenRequest proto;
  FUZZ_CHECK(ParseProto(message, &proto)) << "the decoder accepted a request protobuf refuses";
  CompareAttentionCommon(message, view, proto);
  FUZZ_CHECK(view.cu_seqlens_q == std::vector<int32_t>(proto.cu_seqlens_q().begin(),
                                                       proto.cu_seqlens_q().end()))
      << "cu_seqlens_q";
  FUZZ_CHECK(view.cu_seqlens_kv == std::vector<int32_t>(proto.cu_seqlens_kv().begin(),
                                                        proto.cu_seqlens_kv().end()))
      << "cu_seqlens_kv";
}

void CompareAttentionResponse(const MessageBytes& message,
                              const wire::AttentionResponseView& view) {
  v1::AttentionResponse proto;
  FUZZ_CHECK(ParseProto(message, &proto)) << "the decoder accepted a response protobuf refuses";
  ExpectSameTensor(message, view.out, proto.has_out(), proto.out(), "out");
  ExpectSameTensor(message, view.lse, proto.has_lse(), proto.lse(), "lse");
}

// --- Re-encoding ------------------------------------------------------------------------------

void RoundTripStepRequest(const MessageBytes& message, const wire::StepRequestView& view) {
  TensorCopies copies;
  std::vector<wire::StepEntryData> entries;
  for (const wire::StepEntryView& e : view.entries) {
    wire::StepEntryData d;
    d.sequence_id = e.sequence_id;
    d.q = copies.Data(message, e.q);
    d.k = copies.Data(message, e.k);
    d.v = copies.Data(message, e.v);
    d.token_ids = e.token_ids;
    d.out = e.out;
    entries.push_back(std::move(d));
  }
  const MessageBytes again = FromBuffer(wire::EncodeStepRequest(view.layer, view.step_id, entries));
  wire::StepRequestView decoded;
  FUZZ_CHECK(wire::DecodeStepRequest(again, &decoded).ok()) << "re-encoded StepRequest";
  StepRequestsEqual(message, view, again, decoded, /*presence=*/false);
}

void RoundTripStepResponse(const MessageBytes& message, const wire::StepResponseView& view) {
  TensorCopies copies;
  std::vector<wire::TensorData> out;
  for (const wire::TensorView& t : view.out) out.push_back(copies.Data(message, t));
  const MessageBytes again = FromBuffer(wire::EncodeStepResponse(out, view.step_id));
  wire::StepResponseView decoded;
  FUZZ_CHECK(wire::DecodeStepResponse(again, &decoded).ok()) << "re-encoded StepResponse";
  FUZZ_CHECK(decoded.step_id == view.step_id) << "step_id";
  FUZZ_CHECK(decoded.out.size() == view.out.size()) << "out";
  for (size_t i = 0; i < out.size(); ++i) {
    TensorsEqual(message, view.out[i], again, decoded.out[i], "out[i]");
  }
}

void RoundTripAttentionResponse(const MessageBytes& message,
                                const wire::AttentionResponseView& view) {
  TensorCopies copies;
  const wire::TensorData out = copies.Data(message, view.out);
  const wire::TensorData lse = copies.Data(message, view.lse);
  const MessageBytes again =
      FromBuffer(wire::EncodeAttentionResponse(out, view.lse.present ? &lse : nullptr));
  wire::AttentionResponseView decoded;
  FUZZ_CHECK(wire::DecodeAttentionResponse(again, &decoded).ok()) << "re-encoded response";
  // The encoder always writes `out` (an empty Tensor when absent).
  TensorsEqual(message, view.out, again, decoded.out, "out", /*presence=*/false);
  TensorsEqual(message, view.lse, again, decoded.lse, "lse");
}

// --- One message of each kind: decode whole and sliced, compare -------------------------------

void FuzzStepRequest(const MessageBytes& whole, const MessageBytes& sliced) {
  wire::StepRequestView a, b;
  const absl::Status sa = wire::DecodeStepRequest(whole, &a);
  const absl::Status sb = wire::DecodeStepRequest(sliced, &b);
  FUZZ_CHECK(sa == sb) << sa << " vs sliced " << sb;
  if (!sa.ok()) return;
  StepRequestsEqual(whole, a, sliced, b);
  CompareStepRequest(whole, a);
  RoundTripStepRequest(whole, a);
}

void FuzzStepResponse(const MessageBytes& whole, const MessageBytes& sliced) {
  wire::StepResponseView a, b;
  const absl::Status sa = wire::DecodeStepResponse(whole, &a);
  const absl::Status sb = wire::DecodeStepResponse(sliced, &b);
  FUZZ_CHECK(sa == sb) << sa << " vs sliced " << sb;
  if (!sa.ok()) return;
  FUZZ_CHECK(a.step_id == b.step_id && a.out.size() == b.out.size()) << "sliced StepResponse";
  for (size_t i = 0; i < a.out.size(); ++i) TensorsEqual(whole, a.out[i], sliced, b.out[i], "out");
  CompareStepResponse(whole, a);
  RoundTripStepResponse(whole, a);
}

void FuzzAttentionRequest(const MessageBytes& whole, const MessageBytes& sliced) {
  wire::AttentionRequestView a, b;
  const absl::Status sa = wire::DecodeAttentionRequest(whole, &a);
  const absl::Status sb = wire::DecodeAttentionRequest(sliced, &b);
  FUZZ_CHECK(sa == sb) << sa << " vs sliced " << sb;
  if (!sa.ok()) return;
  AttentionRequestsEqual(whole, a, sliced, b);
  CompareAttentionRequest(whole, a);
}

void FuzzVarlenRequest(const MessageBytes& whole, const MessageBytes& sliced) {
  wire::AttentionVarlenRequestView a, b;
  const absl::Status sa = wire::DecodeAttentionVarlenRequest(whole, &a);
  const absl::Status sb = wire::DecodeAttentionVarlenRequest(sliced, &b);
  FUZZ_CHECK(sa == sb) << sa << " vs sliced " << sb;
  if (!sa.ok()) return;
  AttentionRequestsEqual(whole, a, sliced, b);
  FUZZ_CHECK(a.cu_seqlens_q == b.cu_seqlens_q && a.cu_seqlens_kv == b.cu_seqlens_kv)
      << "sliced cu_seqlens";
  CompareVarlenRequest(whole, a);
}

void FuzzAttentionResponse(const MessageBytes& whole, const MessageBytes& sliced) {
  wire::AttentionResponseView a, b;
  const absl::Status sa = wire::DecodeAttentionResponse(whole, &a);
  const absl::Status sb = wire::DecodeAttentionResponse(sliced, &b);
  FUZZ_CHECK(sa == sb) << sa << " vs sliced " << sb;
  if (!sa.ok()) return;
  TensorsEqual(whole, a.out, sliced, b.out, "out");
  TensorsEqual(whole, a.lse, sliced, b.lse, "lse");
  CompareAttentionResponse(whole, a);
  RoundTripAttentionResponse(whole, a);
}

}  // namespace
}  // namespace flashkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashkv::fuzz;
  if (size < 1) return 0;
  const Kind kind = static_cast<Kind>(data[0] % static_cast<uint8_t>(Kind::kCount));
  const SlicedInput input = SliceInput(data + 1, size - 1);
  switch (kind) {
    case Kind::kStepRequest:
      FuzzStepRequest(input.whole, input.sliced);
      break;
    case Kind::kStepResponse:
      FuzzStepResponse(input.whole, input.sliced);
      break;
    case Kind::kAttentionRequest:
      FuzzAttentionRequest(input.whole, input.sliced);
      break;
    case Kind::kAttentionVarlenRequest:
      FuzzVarlenRequest(input.whole, input.sliced);
      break;
    default:
      FuzzAttentionResponse(input.whole, input.sliced);
      break;
  }
  return 0;
}

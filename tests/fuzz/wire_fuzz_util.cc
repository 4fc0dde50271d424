#include "wire_fuzz_util.h"

#include <grpcpp/support/slice.h>

#include <algorithm>
#include <utility>

#include "google/protobuf/stubs/logging.h"

namespace flashkv::fuzz {
namespace {

grpc::Slice MakeSlice(const uint8_t* data, size_t size) { return grpc::Slice(data, size); }

}  // namespace

SlicedInput SliceInput(const uint8_t* data, size_t size) {
  const size_t cuts = size > 0 ? std::min<size_t>(data[0] % 8, size - 1) : 0;
  const uint8_t* message = data + std::min<size_t>(size, 1 + cuts);
  const size_t length = size - static_cast<size_t>(message - data);
  std::vector<size_t> positions;
  for (size_t i = 0; i < cuts; ++i) positions.push_back(data[1 + i] * length / 255);
  std::sort(positions.begin(), positions.end());
  positions.push_back(length);
  std::vector<grpc::Slice> pieces;
  size_t start = 0;
  for (size_t end : positions) {
    pieces.push_back(MakeSlice(message + start, end - start));
    start = end;
  }
  SlicedInput input;
  input.whole = wire::MessageBytes::FromSlices({MakeSlice(message, length)});
  input.sliced = wire::MessageBytes::FromSlices(std::move(pieces));
  return input;
}

wire::MessageBytes FromString(const std::string& bytes) {
  return wire::MessageBytes::FromSlices(
      {MakeSlice(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())});
}

wire::MessageBytes FromBuffer(const grpc::ByteBuffer& buffer) {
  absl::StatusOr<wire::MessageBytes> bytes = wire::MessageBytes::FromByteBuffer(buffer);
  FUZZ_CHECK(bytes.ok()) << bytes.status();
  return *std::move(bytes);
}

std::string SpanBytes(const wire::MessageBytes& message, wire::Span span) {
  FUZZ_CHECK(span.offset + span.size <= message.size() && span.offset + span.size >= span.offset)
      << "span [" << span.offset << ", +" << span.size << ") past the message's "
      << message.size() << " bytes";
  std::string out(span.size, '\0');
  message.CopyTo(span, out.data());
  return out;
}

bool ParseProto(const wire::MessageBytes& message, google::protobuf::MessageLite* proto) {
  // Protobuf logs why a parse failed (invalid UTF-8): noise at fuzzing speed.
  static const bool silenced = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)silenced;
  return proto->ParseFromString(SpanBytes(message, message.whole()));
}

void RegionsEqual(const wire::RegionSliceView& a, const wire::RegionSliceView& b,
                  const char* what) {
  FUZZ_CHECK(a.present == b.present && a.region_id == b.region_id && a.offset == b.offset)
      << what << ".region";
}

void TensorsEqual(const wire::MessageBytes& ma, const wire::TensorView& a,
                  const wire::MessageBytes& mb, const wire::TensorView& b, const char* what,
                  bool presence) {
  if (presence) FUZZ_CHECK(a.present == b.present) << what << ".present";
  FUZZ_CHECK(a.dtype == b.dtype) << what << ".dtype";
  FUZZ_CHECK(a.shape == b.shape) << what << ".shape";
  FUZZ_CHECK(SpanBytes(ma, a.data) == SpanBytes(mb, b.data)) << what << ".data";
  RegionsEqual(a.region, b.region, what);
}

void StepRequestsEqual(const wire::MessageBytes& ma, const wire::StepRequestView& a,
                       const wire::MessageBytes& mb, const wire::StepRequestView& b,
                       bool presence) {
  FUZZ_CHECK(a.layer == b.layer && a.step_id == b.step_id) << "layer, step_id";
  FUZZ_CHECK(a.entries.size() == b.entries.size()) << "entries";
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const wire::StepEntryView& x = a.entries[i];
    const wire::StepEntryView& y = b.entries[i];
    FUZZ_CHECK(x.sequence_id == y.sequence_id) << "entries[" << i << "].sequence_id";
    TensorsEqual(ma, x.q, mb, y.q, "entry.q", presence);
    TensorsEqual(ma, x.k, mb, y.k, "entry.k", presence);
    TensorsEqual(ma, x.v, mb, y.v, "entry.v", presence);
    FUZZ_CHECK(x.token_ids == y.token_ids) << "entries[" << i << "].token_ids";
    RegionsEqual(x.out, y.out, "entry.out");
  }
}

wire::TensorData TensorCopies::Data(const wire::MessageBytes& message,
                                    const wire::TensorView& view) {
  auto bytes = std::make_shared<std::string>(SpanBytes(message, view.data));
  copies_.push_back(bytes);
  wire::TensorData data;
  data.dtype = view.dtype;
  data.shape = view.shape;
  data.data = bytes->data();
  data.size = bytes->size();
  data.owner = bytes;
  data.region = view.region;
  return data;
}

}  // namespace flashkv::fuzz

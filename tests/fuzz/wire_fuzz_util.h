#pragma once

// Helpers of the fuzz targets that feed bytes to the wire decoders and the server's request
// checks: building MessageBytes from fuzz input (whole and cut into slices, as gRPC hands
// messages over), reading spans, field-by-field equality of decoded views (aborting through
// FUZZ_CHECK), protobuf's own parse of the same bytes, and copies of decoded tensors for
// re-encoding.

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashkv/wire/message_bytes.h"
#include "flashkv/wire/messages.h"
#include "fuzz_check.h"
#include "google/protobuf/message_lite.h"

namespace flashkv::fuzz {

struct SlicedInput {
  wire::MessageBytes whole;   // the message in one slice
  wire::MessageBytes sliced;  // the same bytes in up to 8 slices
};

// data[0] % 8 cuts, at positions given by the next bytes (each a fraction of the message), then
// the message itself.
SlicedInput SliceInput(const uint8_t* data, size_t size);

wire::MessageBytes FromString(const std::string& bytes);
wire::MessageBytes FromBuffer(const grpc::ByteBuffer& buffer);
std::string SpanBytes(const wire::MessageBytes& message, wire::Span span);

// Protobuf's parse of the whole message (its log output silenced).
bool ParseProto(const wire::MessageBytes& message, google::protobuf::MessageLite* proto);

// Each check compares two decodes (of the same bytes sliced differently, or of a message and its
// re-encoding); `presence`: also whether each tensor appeared on the wire (an encoder writes
// tensors that were absent as empty ones).
void TensorsEqual(const wire::MessageBytes& ma, const wire::TensorView& a,
                  const wire::MessageBytes& mb, const wire::TensorView& b, const char* what,
                  bool presence = true);
void RegionsEqual(const wire::RegionSliceView& a, const wire::RegionSliceView& b,
                  const char* what);
void StepRequestsEqual(const wire::MessageBytes& ma, const wire::StepRequestView& a,
                       const wire::MessageBytes& mb, const wire::StepRequestView& b,
                       bool presence = true);

template <typename View>
void AttentionRequestsEqual(const wire::MessageBytes& ma, const View& a,
                            const wire::MessageBytes& mb, const View& b) {
  TensorsEqual(ma, a.q, mb, b.q, "q");
  TensorsEqual(ma, a.k, mb, b.k, "k");
  TensorsEqual(ma, a.v, mb, b.v, "v");
  FUZZ_CHECK(a.causal == b.causal && a.return_lse == b.return_lse) << "flags";
  FUZZ_CHECK(a.softmax_scale.has_value() == b.softmax_scale.has_value()) << "softmax_scale";
  RegionsEqual(a.out, b.out, "out");
  RegionsEqual(a.lse, b.lse, "lse");
}

// Owns copies of decoded tensors' bytes so that they can be encoded again.
class TensorCopies {
 public:
  wire::TensorData Data(const wire::MessageBytes& message, const wire::TensorView& view);

 private:
  std::vector<std::shared_ptr<std::string>> copies_;
};

}  // namespace flashkv::fuzz

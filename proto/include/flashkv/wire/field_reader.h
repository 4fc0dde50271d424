#pragma once

// Reads the protobuf wire format (https://protobuf.dev/programming-guides/encoding/) of one
// message lying in a Span of a MessageBytes, field by field, without copying payloads. The
// message decoders (flashkv/wire/messages.h) are built on it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "flashkv/wire/message_bytes.h"

namespace flashkv::wire {

enum class WireType : uint8_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

struct Field {
  uint32_t number = 0;
  WireType type = WireType::kVarint;
  uint64_t value = 0;  // the payload of varint, fixed32 and fixed64 fields
  Span bytes;          // the payload of length-delimited fields
};

// Thread-safety: one reader per thread; the MessageBytes must outlive it.
class FieldReader {
 public:
  FieldReader(const MessageBytes& message, Span span);

  // Reads the next field. Returns false at the end of the span or on malformed input; then
  // status() tells which (OK at the end).
  bool Next(Field* field);
  const absl::Status& status() const { return status_; }

 private:
  // Points the cursor at the slice holding position_; false at the end of the span.
  bool Seek();
  bool ReadByte(uint8_t* byte);
  bool ReadVarint(uint64_t* value);
  bool ReadFixed(int num_bytes, uint64_t* value);
  bool Fail(const std::string& what);

  const MessageBytes& message_;
  size_t position_;
  size_t end_;
  // The slice holding position_ and its bounds, so that reading byte by byte stays cheap.
  const uint8_t* cursor_ = nullptr;
  size_t cursor_start_ = 0;
  size_t cursor_end_ = 0;
  absl::Status status_;
};

// Appends the values of a repeated integer field, packed (length-delimited) or not (one
// varint), to `out`; int32 values are sign-extended varints on the wire, as int64 ones. Fails
// (INVALID_ARGUMENT, `out` unchanged) when `out` would hold more than `max_values`: the values are
// counted before anything is appended, since a packed varint takes one byte on the wire and eight
// in memory.
absl::Status AppendRepeatedVarint(const MessageBytes& message, const Field& field,
                                  std::vector<int64_t>* out, size_t max_values = SIZE_MAX);
absl::Status AppendRepeatedVarint(const MessageBytes& message, const Field& field,
                                  absl::InlinedVector<int64_t, 4>* out,
                                  size_t max_values = SIZE_MAX);

// The payload of a length-delimited field, copied (for short strings such as ids).
std::string ReadString(const MessageBytes& message, const Field& field);

}  // namespace flashkv::wire

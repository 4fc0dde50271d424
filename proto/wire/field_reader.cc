#include "flashkv/wire/field_reader.h"

#include <algorithm>
#include <cstring>

namespace flashkv::wire {

FieldReader::FieldReader(const MessageBytes& message, Span span)
    : message_(message), position_(span.offset), end_(span.offset + span.size) {}

bool FieldReader::Fail(const std::string& what) {
  status_ = absl::InvalidArgumentError(what + " at byte " + std::to_string(position_));
  end_ = position_;  // every later Next() returns false
  return false;
}

bool FieldReader::Seek() {
  if (position_ >= end_) return false;
  if (cursor_ == nullptr || position_ < cursor_start_ || position_ >= cursor_end_) {
    const size_t i = message_.SliceIndex(position_);
    cursor_ = message_.slice(i).begin();
    cursor_start_ = message_.slice_start(i);
    cursor_end_ = cursor_start_ + message_.slice(i).size();
  }
  return true;
}

bool FieldReader::ReadByte(uint8_t* byte) {
  if (!Seek()) return false;
  *byte = cursor_[position_ - cursor_start_];
  ++position_;
  return true;
}

bool FieldReader::ReadVarint(uint64_t* value) {
  // Fast path: the varint ends within the current slice and the span (for a small message, such
  // as a region slice, the span holds fewer than 10 bytes: the varint is still read in place).
  if (Seek()) {
    const uint8_t* p = cursor_ + (position_ - cursor_start_);
    const size_t n = std::min<size_t>(10, std::min(cursor_end_, end_) - position_);
    uint64_t result = 0;
    for (size_t i = 0; i < n; ++i) {
      result |= static_cast<uint64_t>(p[i] & 0x7f) << (7 * i);
      if ((p[i] & 0x80) == 0) {
        position_ += i + 1;
        *value = result;
        return true;
      }
    }
    if (n == 10) return Fail("varint longer than 10 bytes");
    // Unfinished: it continues in the next slice, or the span ends first (truncated).
  }
  // Byte by byte. Errors name the varint's first byte, as the fast path's do: where a message's
  // slices happen to be cut must not change what a client is told.
  const size_t start = position_;
  uint64_t result = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    uint8_t byte;
    if (!ReadByte(&byte)) {
      position_ = start;
      return Fail("truncated varint");
    }
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return true;
    }
  }
  position_ = start;
  return Fail("varint longer than 10 bytes");
}

bool FieldReader::ReadFixed(int num_bytes, uint64_t* value) {
  uint64_t result = 0;
  for (int i = 0; i < num_bytes; ++i) {
    uint8_t byte;
    if (!ReadByte(&byte)) return Fail("truncated fixed-width field");
    result |= static_cast<uint64_t>(byte) << (8 * i);
  }
  *value = result;
  return true;
}

bool FieldReader::Next(Field* field) {
  if (position_ >= end_) return false;
  const size_t tag_start = position_;
  uint64_t tag;
  if (!ReadVarint(&tag)) return false;
  // A tag is a 32-bit varint: at most 5 bytes, as protobuf parses it (a longer encoding of a
  // small number is malformed there, so it is here). Found by the wire_decode fuzz target.
  if (position_ - tag_start > 5 || tag > 0xffffffffu) {
    position_ = tag_start;
    return Fail("tag longer than 5 bytes");
  }
  const uint64_t number = tag >> 3;
  if (number == 0 || number > 0x1fffffff)
    return Fail("invalid field number " + std::to_string(number));
  field->number = static_cast<uint32_t>(number);
  field->type = static_cast<WireType>(tag & 7);
  field->value = 0;
  field->bytes = Span{};
  switch (field->type) {
    case WireType::kVarint:
      return ReadVarint(&field->value);
    case WireType::kFixed64:
      return ReadFixed(8, &field->value);
    case WireType::kFixed32:
      return ReadFixed(4, &field->value);
    case WireType::kLengthDelimited: {
      uint64_t length;
      if (!ReadVarint(&length)) return false;
      if (length > end_ - position_) {
        return Fail("length " + std::to_string(length) + " of field " + std::to_string(number) +
                    " runs past the end of its message");
      }
      field->bytes = Span{position_, static_cast<size_t>(length)};
      position_ += length;
      return true;
    }
    default:
      // Groups are proto2-only and never appear in flashkv's messages.
      return Fail("unsupported wire type " + std::to_string(tag & 7) + " of field " +
                  std::to_string(number));
  }
}

namespace {

absl::Status TooMany(const Field& field, size_t max_values) {
  return absl::InvalidArgumentError("field " + std::to_string(field.number) + " has more than " +
                                    std::to_string(max_values) + " values (the limit)");
}

}  // namespace

namespace {

template <typename Values>
absl::Status AppendVarints(const MessageBytes& message, const Field& field, Values* out,
                          size_t max_values) {
  if (field.type == WireType::kVarint) {
    if (out->size() >= max_values) return TooMany(field, max_values);
    out->push_back(static_cast<int64_t>(field.value));
    return absl::OkStatus();
  }
  if (field.type != WireType::kLengthDelimited) {
    return absl::InvalidArgumentError("field " + std::to_string(field.number) +
                                      " must be a varint or a packed list of varints");
  }
  // A packed list: the payload is a plain run of varints, without tags.
  std::vector<uint8_t> small;
  const uint8_t* data = message.Contiguous(field.bytes);
  if (data == nullptr) {
    small.resize(field.bytes.size);
    message.CopyTo(field.bytes, small.data());
    data = small.data();
  }
  const uint8_t* end = data + field.bytes.size;
  // Every varint ends with the one byte of it whose high bit is clear.
  size_t count = 0;
  for (const uint8_t* p = data; p < end; ++p) count += (*p & 0x80) == 0;
  if (count > max_values || out->size() > max_values - count) return TooMany(field, max_values);
  const size_t old_size = out->size();
  out->reserve(old_size + count);
  while (data < end) {
    uint64_t value = 0;
    int shift = 0;
    for (;; shift += 7) {
      if (data == end || shift >= 64) {
        out->resize(old_size);
        return absl::InvalidArgumentError("malformed packed varints in field " +
                                          std::to_string(field.number));
      }
      const uint8_t byte = *data++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) break;
    }
    out->push_back(static_cast<int64_t>(value));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AppendRepeatedVarint(const MessageBytes& message, const Field& field,
                                  std::vector<int64_t>* out, size_t max_values) {
  return AppendVarints(message, field, out, max_values);
}

absl::Status AppendRepeatedVarint(const MessageBytes& message, const Field& field,
                                  absl::InlinedVector<int64_t, 4>* out, size_t max_values) {
  return AppendVarints(message, field, out, max_values);
}

std::string ReadString(const MessageBytes& message, const Field& field) {
  std::string out(field.bytes.size, '\0');
  message.CopyTo(field.bytes, out.data());
  return out;
}

}  // namespace flashkv::wire

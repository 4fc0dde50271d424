#include "flashkv/wire/message_builder.h"

#include <utility>

#include "flashkv/base/handoff.h"

namespace flashkv::wire {
namespace {

// gRPC calls it, on whichever thread drops the slice's last reference, once it has sent the
// bytes: it takes the owner back from Alias (see flashkv/base/handoff.h).
void ReleaseOwner(void* owner) {
  TakeBack(owner);
  delete static_cast<std::shared_ptr<const void>*>(owner);
}

}  // namespace

size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

size_t TagSize(uint32_t field_number) {
  return VarintSize(static_cast<uint64_t>(field_number) << 3);
}

size_t LengthDelimitedFieldSize(uint32_t field_number, size_t payload_size) {
  return TagSize(field_number) + VarintSize(payload_size) + payload_size;
}

void MessageBuilder::Varint(uint64_t value) {
  char bytes[10];
  size_t n = 0;
  while (value >= 0x80) {
    bytes[n++] = static_cast<char>((value & 0x7f) | 0x80);
    value >>= 7;
  }
  bytes[n++] = static_cast<char>(value);
  pending_.append(bytes, n);
  size_ += n;
}

void MessageBuilder::Tag(uint32_t field_number, WireType type) {
  Varint((static_cast<uint64_t>(field_number) << 3) | static_cast<uint64_t>(type));
}

void MessageBuilder::VarintField(uint32_t field_number, uint64_t value) {
  Tag(field_number, WireType::kVarint);
  Varint(value);
}

void MessageBuilder::Fixed32Field(uint32_t field_number, uint32_t value) {
  Tag(field_number, WireType::kFixed32);
  char bytes[4];
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  pending_.append(bytes, 4);
  size_ += 4;
}

void MessageBuilder::LengthDelimitedHeader(uint32_t field_number, size_t payload_size) {
  Tag(field_number, WireType::kLengthDelimited);
  Varint(payload_size);
}

void MessageBuilder::Copy(const void* data, size_t size) {
  pending_.append(static_cast<const char*>(data), size);
  size_ += size;
}

void MessageBuilder::Alias(const void* data, size_t size, std::shared_ptr<const void> owner) {
  if (size < kAliasThresholdBytes || owner == nullptr) {
    Copy(data, size);
    return;
  }
  Flush();
  // grpc::Slice's destroy callback gets one pointer: a heap copy of the owner reference.
  auto* holder = new std::shared_ptr<const void>(std::move(owner));
  HandOff(holder);
  slices_.emplace_back(const_cast<void*>(data), size, &ReleaseOwner, holder);
  size_ += size;
}

void MessageBuilder::Flush() {
  if (pending_.empty()) return;
  slices_.emplace_back(pending_);
  pending_.clear();
}

grpc::ByteBuffer MessageBuilder::Finish() {
  Flush();
  grpc::ByteBuffer buffer(slices_.data(), slices_.size());
  slices_.clear();
  size_ = 0;
  return buffer;
}

}  // namespace flashkv::wire

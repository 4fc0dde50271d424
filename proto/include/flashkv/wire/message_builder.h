#pragma once

// Builds a serialized protobuf message as a grpc::ByteBuffer whose large byte payloads are
// referenced in place rather than copied: small fields go into owned buffers, and a tensor's
// data becomes its own slice that keeps its owner alive until gRPC has written it to the socket.

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "flashkv/wire/field_reader.h"

namespace flashkv::wire {

// Bytes of `value` as a varint.
size_t VarintSize(uint64_t value);
// Bytes of a field's tag.
size_t TagSize(uint32_t field_number);
// Bytes of a whole length-delimited field (tag, length, payload).
size_t LengthDelimitedFieldSize(uint32_t field_number, size_t payload_size);

// Ownership: owns what it copied and references what it aliased. Thread-compatible; Finish()
// once.
class MessageBuilder {
 public:
  // Payloads at least this large are referenced, smaller ones copied: below it a slice of its
  // own costs more than the copy.
  static constexpr size_t kAliasThresholdBytes = 4096;

  MessageBuilder() = default;

  void Tag(uint32_t field_number, WireType type);
  void Varint(uint64_t value);
  void VarintField(uint32_t field_number, uint64_t value);
  void Fixed32Field(uint32_t field_number, uint32_t value);
  // Tag and length of a length-delimited field; the payload follows with Copy/Alias or the
  // nested message's fields.
  void LengthDelimitedHeader(uint32_t field_number, size_t payload_size);
  void Copy(const void* data, size_t size);
  // References [data, data + size); `owner` keeps the memory valid until the last slice that
  // refers to it is released (possibly on a gRPC thread, after this builder is gone).
  void Alias(const void* data, size_t size, std::shared_ptr<const void> owner);

  size_t size() const { return size_; }
  grpc::ByteBuffer Finish();

 private:
  void Flush();

  std::vector<grpc::Slice> slices_;
  std::string pending_;  // copied bytes not yet made into a slice
  size_t size_ = 0;
};

}  // namespace flashkv::wire

#pragma once

// The bytes of one received gRPC message, kept as the slices the transport produced so that
// decoding never copies tensor payloads: a field is located as a Span, and its bytes are copied
// once, straight to where they are needed (a staging buffer, a KV page), or read in place when
// they happen to lie in one slice.

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace flashkv::wire {

// A byte range [offset, offset + size) of a MessageBytes.
struct Span {
  size_t offset = 0;
  size_t size = 0;
};

// Ownership: holds references to its slices (and so to the transport's buffers) until destroyed;
// copies share them. Thread-safety: immutable after construction, so any number of threads may
// read one concurrently.
class MessageBytes {
 public:
  MessageBytes() = default;

  // References the buffer's slices (gRPC decompresses first when the message was compressed).
  static absl::StatusOr<MessageBytes> FromByteBuffer(const grpc::ByteBuffer& buffer);
  static MessageBytes FromSlices(std::vector<grpc::Slice> slices);

  size_t size() const { return size_; }
  size_t num_slices() const { return slices_.size(); }
  Span whole() const { return Span{0, size_}; }

  // The range's bytes when they lie in one slice (or the range is empty), else nullptr.
  const uint8_t* Contiguous(Span span) const;
  // Copies the range's bytes to `dst`, which holds span.size bytes.
  void CopyTo(Span span, void* dst) const;

  // Calls fn(const uint8_t* data, size_t size) for each piece of the range, in order.
  template <typename Fn>
  void ForEachFragment(Span span, Fn&& fn) const {
    size_t offset = span.offset;
    size_t remaining = span.size;
    for (size_t i = remaining == 0 ? slices_.size() : SliceIndex(offset);
         remaining > 0 && i < slices_.size(); ++i) {
      const size_t in_slice = offset - starts_[i];
      const size_t n = std::min(remaining, slices_[i].size() - in_slice);
      fn(slices_[i].begin() + in_slice, n);
      offset += n;
      remaining -= n;
    }
  }

  // Index of the slice holding byte `offset` (< size()).
  size_t SliceIndex(size_t offset) const;
  const grpc::Slice& slice(size_t index) const { return slices_[index]; }
  size_t slice_start(size_t index) const { return starts_[index]; }

 private:
  std::vector<grpc::Slice> slices_;  // never empty slices
  std::vector<size_t> starts_;       // starts_[i]: offset of slices_[i]'s first byte
  size_t size_ = 0;
};

}  // namespace flashkv::wire

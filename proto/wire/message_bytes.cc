#include "flashkv/wire/message_bytes.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"

namespace flashkv::wire {

absl::StatusOr<MessageBytes> MessageBytes::FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  const grpc::Status status = buffer.Dump(&slices);
  if (!status.ok()) {
    return absl::InternalError("reading the message's slices: " + status.error_message());
  }
  return FromSlices(std::move(slices));
}

MessageBytes MessageBytes::FromSlices(std::vector<grpc::Slice> slices) {
  MessageBytes bytes;
  bytes.slices_.reserve(slices.size());
  bytes.starts_.reserve(slices.size());
  for (grpc::Slice& slice : slices) {
    if (slice.size() == 0) continue;
    bytes.starts_.push_back(bytes.size_);
    bytes.size_ += slice.size();
    bytes.slices_.push_back(std::move(slice));
  }
  return bytes;
}

size_t MessageBytes::SliceIndex(size_t offset) const {
  // The last slice starting at or before `offset`.
  const auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

const uint8_t* MessageBytes::Contiguous(Span span) const {
  static constexpr uint8_t kEmpty = 0;
  if (span.size == 0) return &kEmpty;
  const size_t i = SliceIndex(span.offset);
  const size_t in_slice = span.offset - starts_[i];
  if (in_slice + span.size > slices_[i].size()) return nullptr;
  return slices_[i].begin() + in_slice;
}

void MessageBytes::CopyTo(Span span, void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  ForEachFragment(span, [&out](const uint8_t* data, size_t n) {
    std::memcpy(out, data, n);
    out += n;
  });
}

}  // namespace flashkv::wire

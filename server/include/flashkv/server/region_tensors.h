#pragma once

// Region-backed tensors in requests (the shared-memory data plane): a tensor whose bytes lie in a
// registered region (Tensor.region) is resolved, bounds-checked, into extra slices of the
// request's MessageBytes that point at the region's memory (pinning it), so that everything
// downstream reads it as it reads bytes that came over the wire, in place and without copies.

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/wire/message_bytes.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// What a call may reach: the registry (null: the server has no data plane) and its tenant.
struct RegionAccess {
  const RegionRegistry* registry = nullptr;
  std::string tenant;
};

// Gathers the region bytes of a request's tensors and appends them to its MessageBytes once, at
// the end: rebuilding the message for every entry of a large Step would cost quadratic time in
// slice references. Resolve() checks and resolves; each resolved tensor's `data` then names a
// span past the message's current end, valid once Commit() has appended the bytes.
// Thread-compatible; one request's checks.
class RegionTensorResolver {
 public:
  RegionTensorResolver(const RegionAccess& access, wire::MessageBytes* message)
      : access_(access), message_(message), end_(message->size()) {}

  // For every (tensor, field name) whose region is set: checks that its data is empty, resolves
  // prod(shape) * element size bytes at the slice (host memory only; the offset a multiple of
  // the element size) and points tensor->data at them. Tensors without a region are left alone. Errors name the field: INVALID_ARGUMENT (bytes
  // and region both set, out of bounds, a bad dtype or shape), NOT_FOUND (unknown region),
  // FAILED_PRECONDITION (no data plane, device memory).
  absl::Status Resolve(std::initializer_list<std::pair<wire::TensorView*, const char*>> tensors);
  // Appends the resolved bytes to the message (a no-op when nothing was resolved).
  void Commit();

 private:
  const RegionAccess& access_;
  wire::MessageBytes* const message_;
  size_t end_;
  std::vector<grpc::Slice> extra_;
};

// Resolve() and Commit() for the tensors of one call.
absl::Status ResolveRegionTensors(
    const RegionAccess& access,
    std::initializer_list<std::pair<wire::TensorView*, const char*>> tensors,
    wire::MessageBytes* message);

// An output slice: `bytes` of host memory at `slice`, or nullopt when the slice is not set. The
// offset must be a multiple of `element_bytes` (INVALID_ARGUMENT otherwise).
absl::StatusOr<std::optional<RegionBytes>> ResolveOutputSlice(const RegionAccess& access,
                                                              const wire::RegionSliceView& slice,
                                                              uint64_t bytes, uint64_t element_bytes,
                                                              const char* field);

// Bytes of one element of `dtype` (a flashkv.v1.DType value); 0 when the dtype is unknown.
uint64_t ElementBytes(int32_t dtype);

// Bytes of a tensor of `dtype` (a flashkv.v1.DType value) and `shape`; INVALID_ARGUMENT naming
// `field` for an unknown dtype, a negative dimension or a size past 2^62.
absl::StatusOr<uint64_t> TensorByteCount(int32_t dtype, const std::vector<int64_t>& shape,
                                         const char* field);

}  // namespace flashkv::server

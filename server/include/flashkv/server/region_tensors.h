#pragma once

// Region-backed tensors in requests (the shared-memory data plane): a tensor whose bytes lie in a
// registered host region (Tensor.region) is resolved, bounds-checked, into extra slices of the
// request's MessageBytes that point at the region's memory (pinning it), so that everything
// downstream reads it as it reads bytes that came over the wire, in place and without copies.
// A tensor in a CUDA IPC region cannot join the message (its bytes are device memory): it is
// resolved to a pinned device pointer that the CUDA backend's kernels read in place, once its
// placement is checked against the device that computes (CheckRegionPlacement).

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/wire/message_bytes.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// What a call may reach: the registry (null: the server has no data plane) and its tenant.
struct RegionAccess {
  const RegionRegistry* registry = nullptr;
  std::string tenant;
};

// Where a computation runs, for CheckRegionPlacement: the CPU backend, or a CUDA ordinal.
inline constexpr int kCpuCompute = -1;

// Whether a tensor in region `region_id`, which lies on `region_device` (-1: host memory, else a
// CUDA ordinal), may be read or written by a computation on `compute_device` (kCpuCompute or a
// CUDA ordinal); `compute_what` says what sits there ("the sequence's KV cache"). Host regions go
// anywhere (the CUDA backend stages them through pinned memory). A CUDA region must be on the
// computing device: FAILED_PRECONDITION naming `field`, the region's device and the needed one
// (on the CPU backend: that it reads host regions only).
absl::Status CheckRegionPlacement(absl::string_view field, uint64_t region_id, int region_device,
                                  int compute_device, absl::string_view compute_what);

// One tensor for RegionTensorResolver: the decoded tensor, its field name, and where its bytes go
// when they lie in a CUDA IPC region (null: device memory is refused).
struct RegionInput {
  wire::TensorView* tensor;
  const char* name;
  std::optional<RegionBytes>* device = nullptr;
};

// Gathers the region bytes of a request's tensors and appends them to its MessageBytes once, at
// the end: rebuilding the message for every entry of a large Step would cost quadratic time in
// slice references. Each region the request names is looked up in the registry once and joins
// the message as one slice (pinning it once), whatever the number of tensors in it: a batch of
// 256 entries with q, k, v and out in one region costs one registry lookup, not 1,024 lookups,
// pins and slices. Resolve() checks and resolves; each resolved tensor's `data` then names a
// span past the message's current end, valid once Commit() has appended the bytes.
// Thread-compatible; one request's checks.
class RegionTensorResolver {
 public:
  RegionTensorResolver(const RegionAccess& access, wire::MessageBytes* message)
      : access_(access), message_(message), end_(message->size()) {}

  // For every tensor whose region is set: checks that its data is empty, resolves
  // prod(shape) * element size bytes at the slice (its offset a multiple of the element size)
  // and points tensor->data at them (host memory),
  // or stores them in *input.device (device memory; tensor->data then only carries the size,
  // {0, bytes}, for the shape checks: the bytes are not in the message). Tensors without a region
  // are left alone. Errors name the field: INVALID_ARGUMENT (bytes and region both set, out of
  // bounds, a bad dtype or shape), NOT_FOUND (unknown region), FAILED_PRECONDITION (no data
  // plane, device memory where none is accepted).
  absl::Status Resolve(std::initializer_list<RegionInput> tensors);
  // Appends the resolved bytes to the message (a no-op when nothing was resolved).
  void Commit();

  // ResolveOutputSlice, through the same per-request lookups; errors name `field` + `suffix`.
  absl::StatusOr<std::optional<RegionBytes>> ResolveOutput(const wire::RegionSliceView& slice,
                                                           uint64_t bytes, uint64_t element_bytes,
                                                           const char* field,
                                                           const char* suffix = "");

 private:
  struct Mapped {
    uint64_t region_id = 0;
    std::shared_ptr<MappedRegion> region;
    size_t message_offset = SIZE_MAX;  // where its slice starts in the message; SIZE_MAX: none
  };
  // [slice.offset, + bytes) of the named region, checked like RegionRegistry::Resolve (whose
  // errors it returns, naming `name` + `suffix`).
  absl::StatusOr<Mapped*> Find(const wire::RegionSliceView& slice, uint64_t bytes,
                               uint64_t alignment, const char* name, const char* suffix);

  const RegionAccess& access_;
  wire::MessageBytes* const message_;
  size_t end_;
  std::vector<grpc::Slice> extra_;
  std::vector<Mapped> mapped_;  // a request names one region or a few: a linear search
};

// Resolve() and Commit() for the tensors of one call.
absl::Status ResolveRegionTensors(const RegionAccess& access,
                                  std::initializer_list<RegionInput> tensors,
                                  wire::MessageBytes* message);

// An output slice: `bytes` at `slice` (host or device memory: the caller checks its placement),
// or nullopt when the slice is not set. The offset must be a multiple of `element_bytes`
// (INVALID_ARGUMENT otherwise).
absl::StatusOr<std::optional<RegionBytes>> ResolveOutputSlice(const RegionAccess& access,
                                                              const wire::RegionSliceView& slice,
                                                              uint64_t bytes, uint64_t element_bytes,
                                                              const char* field);

// Bytes of one element of `dtype` (a flashkv.v1.DType value); 0 when the dtype is unknown.
uint64_t ElementBytes(int32_t dtype);

// Bytes of a tensor of `dtype` (a flashkv.v1.DType value) and `shape`; INVALID_ARGUMENT naming
// `field` for an unknown dtype, a negative dimension or a size past 2^62.
absl::StatusOr<uint64_t> TensorByteCount(int32_t dtype, absl::Span<const int64_t> shape,
                                         const char* field);

}  // namespace flashkv::server

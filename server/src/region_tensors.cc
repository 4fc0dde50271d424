#include "flashkv/server/region_tensors.h"

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flashkv/dtype.h"

namespace flashkv::server {
namespace {

// `alignment`: the element size. Kernels read inputs and write outputs in place, as elements of
// their type, so an offset inside an element would be a misaligned access.
absl::StatusOr<RegionBytes> ResolveSlice(const RegionAccess& access,
                                         const wire::RegionSliceView& slice, uint64_t bytes,
                                         uint64_t alignment, absl::string_view name,
                                         absl::string_view suffix) {
  if (access.registry == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        name, suffix, " names a shared-memory region, but this server has no data plane"));
  }
  // The field's full name is built only for an error message: this runs for every region tensor
  // of every request, and the registry answers a repeated question the same way.
  absl::StatusOr<RegionBytes> resolved =
      access.registry->Resolve(access.tenant, slice, bytes, name, alignment);
  if (!resolved.ok() && !suffix.empty()) {
    resolved = access.registry->Resolve(access.tenant, slice, bytes, absl::StrCat(name, suffix),
                                        alignment);
  }
  return resolved;
}

}  // namespace

uint64_t ElementBytes(int32_t dtype) {
  switch (dtype) {
    case 1:
    case 2:
      return 2;
    case 3:
      return 4;
    default:
      return 0;
  }
}

absl::StatusOr<uint64_t> TensorByteCount(int32_t dtype, const std::vector<int64_t>& shape,
                                         const char* field) {
  const uint64_t element = ElementBytes(dtype);
  if (element == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ".dtype (", dtype, ") must be DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32"));
  }
  constexpr uint64_t kMax = uint64_t{1} << 62;
  uint64_t bytes = element;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape[", i, "] (", shape[i], ") must be >= 0"));
    }
    if (shape[i] != 0 && bytes > kMax / uint64_t(shape[i])) {
      return absl::InvalidArgumentError(absl::StrCat(field, " is larger than 2^62 bytes"));
    }
    bytes *= uint64_t(shape[i]);
  }
  return bytes;
}

absl::Status CheckRegionPlacement(absl::string_view field, uint64_t region_id, int region_device,
                                  int compute_device, absl::string_view compute_what) {
  if (region_device < 0 || region_device == compute_device) return absl::OkStatus();
  if (compute_device == kCpuCompute) {
    return absl::FailedPreconditionError(absl::StrCat(
        field, ": region ", region_id, " is memory of CUDA device ", region_device,
        ", but this server computes on the CPU backend, which reads host (memfd) regions only"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat(field, ": region ", region_id, " is memory of CUDA device ", region_device,
                   ", but ", compute_what, " is on CUDA device ", compute_device,
                   ": register the region on device ", compute_device, " (or use a host region)"));
}

absl::Status RegionTensorResolver::Resolve(std::initializer_list<RegionInput> tensors) {
  for (const RegionInput& input : tensors) {
    wire::TensorView* tensor = input.tensor;
    const char* name = input.name;
    if (!tensor->present || !tensor->region.present) continue;
    if (tensor->data.size != 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, ".data (", tensor->data.size,
                                                     " bytes) must be empty when ", name,
                                                     ".region is set"));
    }
    absl::StatusOr<uint64_t> bytes = TensorByteCount(tensor->dtype, tensor->shape, name);
    if (!bytes.ok()) return bytes.status();
    absl::StatusOr<RegionBytes> resolved =
        ResolveSlice(access_, tensor->region, *bytes, ElementBytes(tensor->dtype), name, ".region");
    if (!resolved.ok()) return resolved.status();
    if (resolved->region->device() >= 0) {
      if (input.device == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(name, ".region: region ", tensor->region.region_id,
                         " is CUDA device memory; this field reads host memory regions only"));
      }
      // Not in the message: the size alone, for the shape checks.
      tensor->data = wire::Span{0, size_t(*bytes)};
      *input.device = *std::move(resolved);
      continue;
    }
    tensor->data = wire::Span{end_, size_t(*bytes)};
    if (*bytes == 0) continue;  // MessageBytes holds no empty slices
    // The slice pins the mapping for as long as anything references the request's bytes.
    auto* pin = new std::shared_ptr<MappedRegion>(resolved->region);
    extra_.emplace_back(
        resolved->data, size_t(*bytes),
        [](void* p) { delete static_cast<std::shared_ptr<MappedRegion>*>(p); }, pin);
    end_ += *bytes;
  }
  return absl::OkStatus();
}

void RegionTensorResolver::Commit() {
  if (extra_.empty()) return;
  std::vector<grpc::Slice> slices;
  slices.reserve(message_->num_slices() + extra_.size());
  for (size_t i = 0; i < message_->num_slices(); ++i) slices.push_back(message_->slice(i));
  for (grpc::Slice& s : extra_) slices.push_back(std::move(s));
  extra_.clear();
  *message_ = wire::MessageBytes::FromSlices(std::move(slices));
}

absl::Status ResolveRegionTensors(const RegionAccess& access,
                                  std::initializer_list<RegionInput> tensors,
                                  wire::MessageBytes* message) {
  RegionTensorResolver resolver(access, message);
  if (absl::Status s = resolver.Resolve(tensors); !s.ok()) return s;
  resolver.Commit();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<RegionBytes>> ResolveOutputSlice(const RegionAccess& access,
                                                              const wire::RegionSliceView& slice,
                                                              uint64_t bytes, uint64_t element_bytes,
                                                              const char* field) {
  if (!slice.present) return std::optional<RegionBytes>();
  absl::StatusOr<RegionBytes> resolved =
      ResolveSlice(access, slice, bytes, element_bytes, field, "");
  if (!resolved.ok()) return resolved.status();
  return std::optional<RegionBytes>(*std::move(resolved));
}

}  // namespace flashkv::server

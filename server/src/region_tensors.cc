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

absl::StatusOr<uint64_t> TensorByteCount(int32_t dtype, absl::Span<const int64_t> shape,
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

absl::StatusOr<RegionTensorResolver::Mapped*> RegionTensorResolver::Find(
    const wire::RegionSliceView& slice, uint64_t bytes, uint64_t alignment, const char* name,
    const char* suffix) {
  Mapped* mapped = nullptr;
  for (Mapped& m : mapped_) {
    if (m.region_id == slice.region_id) mapped = &m;
  }
  if (mapped == nullptr && access_.registry != nullptr) {
    absl::StatusOr<RegionBytes> whole = access_.registry->Resolve(
        access_.tenant, wire::RegionSliceView{true, slice.region_id, 0}, 0, name);
    if (whole.ok()) {
      mapped_.push_back(Mapped{slice.region_id, std::move(whole->region)});
      mapped = &mapped_.back();
    }
  }
  const uint64_t size = mapped == nullptr ? 0 : mapped->region->size();
  if (mapped == nullptr || slice.offset > size || bytes > size - slice.offset ||
      (alignment > 1 && slice.offset % alignment != 0)) {
    // The registry's own checks, for their messages (the success path never builds one).
    absl::StatusOr<RegionBytes> refused =
        ResolveSlice(access_, slice, bytes, alignment, name, suffix);
    return refused.ok() ? absl::InternalError(absl::StrCat(name, suffix, ": region check mismatch"))
                        : refused.status();
  }
  return mapped;
}

absl::StatusOr<std::optional<RegionBytes>> RegionTensorResolver::ResolveOutput(
    const wire::RegionSliceView& slice, uint64_t bytes, uint64_t element_bytes, const char* field,
    const char* suffix) {
  if (!slice.present) return std::optional<RegionBytes>();
  absl::StatusOr<Mapped*> mapped = Find(slice, bytes, element_bytes, field, suffix);
  if (!mapped.ok()) return mapped.status();
  const std::shared_ptr<MappedRegion>& region = (*mapped)->region;
  return std::optional<RegionBytes>(RegionBytes{region, region->data() + slice.offset, bytes});
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
    absl::StatusOr<Mapped*> found =
        Find(tensor->region, *bytes, ElementBytes(tensor->dtype), name, ".region");
    if (!found.ok()) return found.status();
    Mapped& mapped = **found;
    const uint64_t offset = tensor->region.offset;
    if (mapped.region->device() >= 0) {
      if (input.device == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(name, ".region: region ", tensor->region.region_id,
                         " is CUDA device memory; this field reads host memory regions only"));
      }
      // Not in the message: the size alone, for the shape checks.
      tensor->data = wire::Span{0, size_t(*bytes)};
      *input.device = RegionBytes{mapped.region, mapped.region->data() + offset, *bytes};
      continue;
    }
    if (mapped.message_offset == SIZE_MAX) {
      // The whole region joins the message as one slice, which pins the mapping for as long as
      // anything references the request's bytes.
      auto* pin = new std::shared_ptr<MappedRegion>(mapped.region);
      extra_.emplace_back(
          mapped.region->data(), size_t(mapped.region->size()),
          [](void* p) { delete static_cast<std::shared_ptr<MappedRegion>*>(p); }, pin);
      mapped.message_offset = end_;
      end_ += mapped.region->size();
    }
    tensor->data = wire::Span{mapped.message_offset + size_t(offset), size_t(*bytes)};
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

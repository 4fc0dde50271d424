#pragma once

// Host tensors for the client: a non-owning TensorView and an owning HostTensor over
// (dtype, shape, bytes) in the wire layout of flashkv.v1.Tensor (C order, little-endian, no
// padding), with fp16/bf16 <-> float conversion and proto conversion.
//
// HostTensor keeps its bytes in a std::string so they move into and out of a protobuf `bytes`
// field without a copy (protobuf 3.21 stores `bytes` as std::string).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "flashkv/dtype.h"
#include "flashkv/v1/tensor.pb.h"

namespace flashkv {

using Shape = absl::InlinedVector<int64_t, 4>;

// Product of the dimensions; 1 for a scalar shape {}. Dimensions must be >= 0.
int64_t NumElements(absl::Span<const int64_t> shape);
// "[2,16,8,128]", for error messages.
std::string ShapeString(absl::Span<const int64_t> shape);

v1::DType ToProtoDType(DType dtype);
// INVALID_ARGUMENT naming `field` for DTYPE_UNSPECIFIED or an unknown value.
absl::StatusOr<DType> FromProtoDType(int proto_dtype, absl::string_view field);

// Element conversion between storage types and float, round to nearest even (flashkv/dtype.h).
void ConvertToFloat(DType dtype, const void* src, float* dst, int64_t count);
void ConvertFromFloat(DType dtype, const float* src, void* dst, int64_t count);

// Where a tensor's bytes lie in a shared-memory region registered with the server
// (flashkv/client/region.h): `offset` bytes from the start of region `region_id`.
struct RegionSlice {
  uint64_t region_id = 0;
  uint64_t offset = 0;
};
inline bool operator==(const RegionSlice& a, const RegionSlice& b) {
  return a.region_id == b.region_id && a.offset == b.offset;
}

// A read-only view of someone else's tensor bytes. Cheap to copy; the bytes must outlive it.
// A view of a tensor in a shared-memory region also carries its slice: requests then send the
// slice instead of the bytes (and for a device region, data() is a device pointer).
class TensorView {
 public:
  TensorView() = default;
  TensorView(DType dtype, Shape shape, const void* data)
      : dtype_(dtype), shape_(std::move(shape)), data_(static_cast<const std::byte*>(data)) {}
  TensorView(DType dtype, Shape shape, const void* data, RegionSlice region)
      : dtype_(dtype),
        shape_(std::move(shape)),
        data_(static_cast<const std::byte*>(data)),
        region_(region) {}

  DType dtype() const { return dtype_; }
  absl::Span<const int64_t> shape() const { return shape_; }
  int64_t num_elements() const { return NumElements(shape_); }
  size_t num_bytes() const { return static_cast<size_t>(num_elements()) * DTypeSize(dtype_); }
  const std::byte* data() const { return data_; }
  const std::optional<RegionSlice>& region() const { return region_; }
  // Element `index` (flat, C order) converted to float.
  float GetFloat(int64_t index) const;
  std::vector<float> ToFloats() const;

 private:
  DType dtype_ = DType::kFloat32;
  Shape shape_;
  const std::byte* data_ = nullptr;
  std::optional<RegionSlice> region_;
};

// An owning host tensor. Movable, copyable; not thread-safe for concurrent mutation.
class HostTensor {
 public:
  HostTensor() = default;

  // Zero-filled tensor.
  static HostTensor Zeros(DType dtype, Shape shape);
  // Converts `values` (prod(shape) of them) to `dtype`.
  static absl::StatusOr<HostTensor> FromFloats(DType dtype, Shape shape,
                                               absl::Span<const float> values);
  // Takes `bytes`, which must hold exactly prod(shape) elements of `dtype`.
  static absl::StatusOr<HostTensor> FromBytes(DType dtype, Shape shape, std::string bytes);
  // Validates `proto` (known dtype, non-negative shape, byte count matching the shape; errors
  // name `field`, e.g. "out[3].shape") and takes its bytes.
  static absl::StatusOr<HostTensor> FromProto(v1::Tensor&& proto, absl::string_view field);

  DType dtype() const { return dtype_; }
  absl::Span<const int64_t> shape() const { return shape_; }
  int64_t num_elements() const { return NumElements(shape_); }
  size_t num_bytes() const { return bytes_.size(); }
  const std::byte* data() const { return reinterpret_cast<const std::byte*>(bytes_.data()); }
  std::byte* mutable_data() { return reinterpret_cast<std::byte*>(bytes_.data()); }
  TensorView view() const { return TensorView(dtype_, shape_, bytes_.data()); }
  std::vector<float> ToFloats() const { return view().ToFloats(); }

  // Moves the bytes into `proto` (this tensor is left empty) / copies them.
  void MoveToProto(v1::Tensor* proto) &&;
  void CopyToProto(v1::Tensor* proto) const;

 private:
  HostTensor(DType dtype, Shape shape, std::string bytes)
      : dtype_(dtype), shape_(std::move(shape)), bytes_(std::move(bytes)) {}

  DType dtype_ = DType::kFloat32;
  Shape shape_;
  std::string bytes_;
};

// Copies a view into a proto tensor (one copy of the bytes); a region tensor's view becomes its
// descriptor (dtype, shape, region slice; no bytes).
void CopyToProto(const TensorView& view, v1::Tensor* proto);

// Checks a proto tensor without taking it: known dtype, shape dims >= 0 and a byte count equal to
// prod(shape) * dtype size. Errors are INVALID_ARGUMENT naming `field`.
absl::Status ValidateTensorProto(const v1::Tensor& proto, absl::string_view field);

}  // namespace flashkv

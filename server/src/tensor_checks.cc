#include "flashkv/server/tensor_checks.h"

#include <cstdint>

namespace flashkv::server {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

std::string ShapeString(absl::Span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string DimsString(const TensorSpec& spec) {
  std::string out = "[";
  for (size_t i = 0; i < spec.dims.size(); ++i) {
    if (i > 0) out += ",";
    out += spec.dims[i].name;
  }
  return out + "]";
}

absl::StatusOr<DType> CheckDType(const wire::TensorView& tensor, const TensorSpec& spec) {
  const int32_t wire = tensor.dtype;
  if (wire != static_cast<int32_t>(DType::kFloat16) &&
      wire != static_cast<int32_t>(DType::kBFloat16) &&
      wire != static_cast<int32_t>(DType::kFloat32)) {
    return Invalid(spec.name + ".dtype (" + WireDTypeName(wire) +
                   ") must be DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32");
  }
  const DType dtype = static_cast<DType>(wire);
  if (spec.dtype.has_value() && dtype != *spec.dtype) {
    return Invalid(spec.name + ".dtype (" + WireDTypeName(wire) + ") must match " +
                   spec.dtype_source + " (" + WireDTypeName(static_cast<int32_t>(*spec.dtype)) +
                   ")");
  }
  return dtype;
}

}  // namespace

std::string WireDTypeName(int32_t dtype) {
  switch (dtype) {
    case 0:
      return "DTYPE_UNSPECIFIED";
    case 1:
      return "DTYPE_FLOAT16";
    case 2:
      return "DTYPE_BFLOAT16";
    case 3:
      return "DTYPE_FLOAT32";
    default:
      return std::to_string(dtype);
  }
}

absl::StatusOr<DType> CheckTensor(const wire::TensorView& tensor, const TensorSpec& spec) {
  if (!tensor.present) return Invalid(spec.name + " is missing");
  absl::StatusOr<DType> dtype = CheckDType(tensor, spec);
  if (!dtype.ok()) return dtype.status();
  if (tensor.shape.size() != spec.dims.size()) {
    return Invalid(spec.name + ".shape " + ShapeString(tensor.shape) + " must have " +
                   std::to_string(spec.dims.size()) + " dimensions " + DimsString(spec));
  }
  // The product saturates instead of overflowing; a saturated size never matches real data.
  uint64_t bytes = static_cast<uint64_t>(DTypeSize(*dtype));
  for (size_t i = 0; i < spec.dims.size(); ++i) {
    const int64_t d = tensor.shape[i];
    const DimSpec& dim = spec.dims[i];
    // Built only for a message: this runs for every tensor of every request.
    auto field = [&] {
      return spec.name + ".shape[" + std::to_string(i) + "] (" + dim.name + ")";
    };
    if (d < 0 || d > kMaxDim) {
      return Invalid(field() + " = " + std::to_string(d) + " must be in [0, " +
                     std::to_string(kMaxDim) + "]");
    }
    if (dim.required != kAnyDim && d != dim.required) {
      return Invalid(field() + " = " + std::to_string(d) + " must equal " + dim.source + " (" +
                     std::to_string(dim.required) + ")");
    }
    const uint64_t extent = static_cast<uint64_t>(d);
    bytes = (extent != 0 && bytes > UINT64_MAX / extent) ? UINT64_MAX : bytes * extent;
  }
  if (bytes != tensor.data.size) {
    return Invalid(spec.name + ".data has " + std::to_string(tensor.data.size) + " bytes; shape " +
                   ShapeString(tensor.shape) + " of " + DTypeName(*dtype) + " needs " +
                   std::to_string(bytes));
  }
  return dtype;
}

TensorBytes TensorBytes::Get(const wire::MessageBytes& message, wire::Span span, DType dtype) {
  TensorBytes bytes;
  const uint8_t* in_place = message.Contiguous(span);
  if (in_place != nullptr &&
      reinterpret_cast<uintptr_t>(in_place) % static_cast<uintptr_t>(DTypeSize(dtype)) == 0) {
    bytes.data_ = in_place;
    return bytes;
  }
  bytes.copy_ = HostBytes::Allocate(span.size);
  message.CopyTo(span, bytes.copy_->data());
  bytes.data_ = bytes.copy_->data();
  return bytes;
}

}  // namespace flashkv::server

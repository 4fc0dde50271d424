#include "flashkv/client/tensor.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flashkv {

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

v1::DType ToProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
    case DType::kBFloat16:
      return v1::DTYPE_BFLOAT16;
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<DType> FromProtoDType(int proto_dtype, absl::string_view field) {
  switch (proto_dtype) {
    case v1::DTYPE_FLOAT16:
      return DType::kFloat16;
    case v1::DTYPE_BFLOAT16:
      return DType::kBFloat16;
    case v1::DTYPE_FLOAT32:
      return DType::kFloat32;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          field, " (", proto_dtype, ") must be DTYPE_FLOAT16, DTYPE_BFLOAT16 or DTYPE_FLOAT32"));
  }
}

namespace {

template <typename T>
void ToFloatTyped(const void* src, float* dst, int64_t count) {
  const T* in = static_cast<const T*>(src);
  for (int64_t i = 0; i < count; ++i) dst[i] = ToFloat(in[i]);
}

template <typename T>
void FromFloatTyped(const float* src, void* dst, int64_t count) {
  T* out = static_cast<T*>(dst);
  for (int64_t i = 0; i < count; ++i) out[i] = FromFloat<T>(src[i]);
}

}  // namespace

void ConvertToFloat(DType dtype, const void* src, float* dst, int64_t count) {
  switch (dtype) {
    case DType::kFloat16:
      return ToFloatTyped<Float16>(src, dst, count);
    case DType::kBFloat16:
      return ToFloatTyped<BFloat16>(src, dst, count);
    case DType::kFloat32:
      return ToFloatTyped<float>(src, dst, count);
  }
}

void ConvertFromFloat(DType dtype, const float* src, void* dst, int64_t count) {
  switch (dtype) {
    case DType::kFloat16:
      return FromFloatTyped<Float16>(src, dst, count);
    case DType::kBFloat16:
      return FromFloatTyped<BFloat16>(src, dst, count);
    case DType::kFloat32:
      return FromFloatTyped<float>(src, dst, count);
  }
}

float TensorView::GetFloat(int64_t index) const {
  float value;
  ConvertToFloat(dtype_, data_ + index * DTypeSize(dtype_), &value, 1);
  return value;
}

std::vector<float> TensorView::ToFloats() const {
  std::vector<float> values(static_cast<size_t>(num_elements()));
  ConvertToFloat(dtype_, data_, values.data(), num_elements());
  return values;
}

HostTensor HostTensor::Zeros(DType dtype, Shape shape) {
  const int64_t n = NumElements(shape);
  return HostTensor(dtype, std::move(shape), std::string(n * DTypeSize(dtype), '\0'));
}

absl::StatusOr<HostTensor> HostTensor::FromFloats(DType dtype, Shape shape,
                                                  absl::Span<const float> values) {
  const int64_t n = NumElements(shape);
  if (static_cast<int64_t>(values.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("values (", values.size(),
                                                   ") must hold prod(shape ", ShapeString(shape),
                                                   ") = ", n, " elements"));
  }
  HostTensor tensor = Zeros(dtype, std::move(shape));
  ConvertFromFloat(dtype, values.data(), tensor.mutable_data(), n);
  return tensor;
}

absl::StatusOr<HostTensor> HostTensor::FromBytes(DType dtype, Shape shape, std::string bytes) {
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(shape), " has a negative dimension"));
    }
  }
  const int64_t expected = NumElements(shape) * DTypeSize(dtype);
  if (static_cast<int64_t>(bytes.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("bytes (", bytes.size(), ") must be ", expected,
                                                   " for ", DTypeName(dtype), " shape ",
                                                   ShapeString(shape)));
  }
  return HostTensor(dtype, std::move(shape), std::move(bytes));
}

absl::Status ValidateTensorProto(const v1::Tensor& proto, absl::string_view field) {
  absl::StatusOr<DType> dtype = FromProtoDType(proto.dtype(), absl::StrCat(field, ".dtype"));
  if (!dtype.ok()) return dtype.status();
  // Guard the element count against overflow: a hostile or corrupt shape must not wrap around.
  int64_t n = 1;
  for (int64_t d : proto.shape()) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape ", ShapeString(proto.shape()), " has a negative dimension"));
    }
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 4 / d) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape ", ShapeString(proto.shape()), " is too large"));
    }
    n *= d;
  }
  const int64_t expected = n * DTypeSize(*dtype);
  if (static_cast<int64_t>(proto.data().size()) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".data (", proto.data().size(), " bytes) must be ", expected,
                     " bytes for ", DTypeName(*dtype), " shape ", ShapeString(proto.shape())));
  }
  return absl::OkStatus();
}

absl::StatusOr<HostTensor> HostTensor::FromProto(v1::Tensor&& proto, absl::string_view field) {
  if (absl::Status s = ValidateTensorProto(proto, field); !s.ok()) return s;
  Shape shape(proto.shape().begin(), proto.shape().end());
  return HostTensor(static_cast<DType>(proto.dtype()), std::move(shape),
                    std::move(*proto.mutable_data()));
}

void HostTensor::MoveToProto(v1::Tensor* proto) && {
  proto->set_dtype(ToProtoDType(dtype_));
  proto->mutable_shape()->Assign(shape_.begin(), shape_.end());
  *proto->mutable_data() = std::move(bytes_);
  shape_.clear();
  bytes_.clear();
}

void HostTensor::CopyToProto(v1::Tensor* proto) const { flashkv::CopyToProto(view(), proto); }

void CopyToProto(const TensorView& view, v1::Tensor* proto) {
  proto->set_dtype(ToProtoDType(view.dtype()));
  proto->mutable_shape()->Assign(view.shape().begin(), view.shape().end());
  if (view.region().has_value()) {
    proto->clear_data();
    proto->mutable_region()->set_region_id(view.region()->region_id);
    proto->mutable_region()->set_offset(view.region()->offset);
    return;
  }
  proto->mutable_data()->assign(reinterpret_cast<const char*>(view.data()), view.num_bytes());
}

}  // namespace flashkv

#pragma once

// Checks of decoded request tensors (flashkv/wire/messages.h) against what an RPC expects, and
// access to their bytes for the kernels. Every error is INVALID_ARGUMENT naming the field as the
// client wrote it ("entries[3].k.shape[1]") and the limit it broke.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/dtype.h"
#include "flashkv/server/host_bytes.h"
#include "flashkv/wire/message_bytes.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// Largest value of any one dimension: the kernels index with int.
inline constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;

// What one dimension must be: any extent in [0, kMaxDim] (kAnyDim), or exactly `required`,
// which `source` explains in messages ("q.shape[0]", "the model's num_kv_heads").
inline constexpr int64_t kAnyDim = -1;
struct DimSpec {
  const char* name = "";  // "B", "Sq", "Hkv", ...
  int64_t required = kAnyDim;
  std::string source;
};

// What one tensor must look like.
struct TensorSpec {
  std::string name;  // "q", "entries[2].k"
  std::vector<DimSpec> dims;
  std::optional<DType> dtype;  // required dtype; unset: any of fp16, bf16, fp32
  std::string dtype_source;    // what fixed the dtype, for the message ("q.dtype", "the model")
};

// "DTYPE_FLOAT16" etc., or the number for values outside the enum.
std::string WireDTypeName(int32_t dtype);

// Checks presence, dtype, rank, every dimension and that data holds exactly
// prod(shape) * element size bytes. Returns the dtype.
absl::StatusOr<DType> CheckTensor(const wire::TensorView& tensor, const TensorSpec& spec);

// A tensor's bytes ready for a kernel: in place when they lie in one slice and are aligned for
// the element type, else copied once into an aligned buffer.
class TensorBytes {
 public:
  static TensorBytes Get(const wire::MessageBytes& message, wire::Span span, DType dtype);
  // Bytes used where they are (device memory of a CUDA region, which the caller pins).
  static TensorBytes Borrow(const void* data) {
    TensorBytes bytes;
    bytes.data_ = data;
    return bytes;
  }
  const void* data() const { return data_; }
  bool copied() const { return copy_ != nullptr; }

 private:
  const void* data_ = nullptr;
  std::shared_ptr<HostBytes> copy_;
};

}  // namespace flashkv::server

#pragma once

// Tensor files for `flashkv attention`: NumPy .npy (version 1-3, C order, little-endian '<f2'
// float16 or '<f4' float32; bfloat16 as any 2-byte type such as '<u2' or '|V2' when the dtype is
// bf16) or raw bytes whose dtype and shape come from flags.

#include <string>

#include "absl/status/statusor.h"
#include "flashkv/client/tensor.h"

namespace flashkv::cli {

// `expected_shape` checks (raw: defines) the shape; `dtype` is the dtype of raw files and of
// 2-byte untyped .npy data; a float .npy must agree with it. Errors name the file.
absl::StatusOr<HostTensor> ReadTensorFile(const std::string& path, DType dtype,
                                          const Shape& expected_shape);

// Writes .npy when the name ends in ".npy" (bf16 as '<u2'), raw bytes otherwise.
absl::Status WriteTensorFile(const std::string& path, const HostTensor& tensor);

}  // namespace flashkv::cli

// DeviceInputs in a build without CUDA: there is no device to generate on.
#include "device_inputs.h"

namespace flashkv::loadgen {

absl::StatusOr<std::unique_ptr<DeviceInputs>> DeviceInputs::Create(DType, size_t) {
  return absl::FailedPreconditionError(
      "--inputs=device needs a build with CUDA (and CUDA regions); this one has none");
}

DeviceInputs::~DeviceInputs() = default;

absl::Status DeviceInputs::Fill(std::byte*, absl::Span<const FillJob>) {
  return absl::FailedPreconditionError("--inputs=device needs a build with CUDA");
}

}  // namespace flashkv::loadgen

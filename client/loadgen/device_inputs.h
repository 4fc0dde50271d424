#pragma once

// Runner inputs generated on the GPU (--inputs=device): a kernel writes q, k and v straight into
// the runner's CUDA region, as a co-located model runner's projections write them, instead of the
// host generating them and copying them in. Host generation of a batch-256 pass is milliseconds of
// CPU work and megabytes of memory traffic between two layer steps, which no model runner does
// and which the server's measured overhead then carries (docs/performance.md). The values are
// FillValues's (synthetic_data.h), bit for bit: Create checks that on the device before use, so
// the host can regenerate what it verifies.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "flashkv/dtype.h"

namespace flashkv::loadgen {

// FillValues(dtype, seed, count, base + offset) for one FillJobs call's base.
struct FillJob {
  uint64_t seed = 0;
  uint64_t offset = 0;  // bytes
  int64_t count = 0;    // values
};

class DeviceInputs {
 public:
  // For jobs of `dtype`, at most `max_jobs` per Fill, on the calling thread's current device.
  // FAILED_PRECONDITION in a build without CUDA, or when the device's values differ from
  // FillValues's.
  static absl::StatusOr<std::unique_ptr<DeviceInputs>> Create(DType dtype, size_t max_jobs);
  ~DeviceInputs();
  DeviceInputs(const DeviceInputs&) = delete;
  DeviceInputs& operator=(const DeviceInputs&) = delete;

  // Queues the jobs on the default stream (device memory at `base`); the caller synchronises.
  absl::Status Fill(std::byte* base, absl::Span<const FillJob> jobs);

 private:
  DeviceInputs(DType dtype, size_t max_jobs) : dtype_(dtype), max_jobs_(max_jobs) {}

  const DType dtype_;
  const size_t max_jobs_;
  FillJob* host_jobs_ = nullptr;    // pinned staging
  FillJob* device_jobs_ = nullptr;  // what the kernel reads
};

}  // namespace flashkv::loadgen

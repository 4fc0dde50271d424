#include "config.h"

#include "absl/strings/str_cat.h"

namespace flashkv::loadgen {

const char* DataPlaneName(DataPlane plane) { return plane == DataPlane::kShm ? "shm" : "bytes"; }

const char* RegionMemoryName(RegionMemory memory) {
  switch (memory) {
    case RegionMemory::kHost:
      return "host";
    case RegionMemory::kCuda:
      return "cuda";
    case RegionMemory::kAuto:
      break;
  }
  return "auto";
}

const char* InputSourceName(InputSource source) {
  return source == InputSource::kDevice ? "device" : "host";
}

absl::Status LoadgenConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v >= 1) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(name, " (", v, ") must be >= 1"));
  };
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"--runners", runners},
                                {"--max-batch", max_batch},
                                {"--prefill-chunk", prefill_chunk},
                                {"--max-pass-tokens", max_pass_tokens},
                                {"--pipeline-depth", pipeline_depth}}) {
    if (absl::Status s = positive(name, v); !s.ok()) return s;
  }
  if (max_pass_tokens < max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("--max-pass-tokens (", max_pass_tokens,
                                                   ") must be >= --max-batch (", max_batch,
                                                   ") so every decode fits a pass"));
  }
  if (duration <= absl::ZeroDuration() && requests <= 0) {
    return absl::InvalidArgumentError("give --duration or --requests (or both) to bound the run");
  }
  if (rate < 0) return absl::InvalidArgumentError("--rate must be >= 0");
  if (verify_fraction < 0 || verify_fraction > 1) {
    return absl::InvalidArgumentError("--verify must be all, none or a fraction in [0, 1]");
  }
  if (prefix_fraction < 0 || prefix_fraction > 1) {
    return absl::InvalidArgumentError("--prefix-fraction must be in [0, 1]");
  }
  if (prefix_pool < 0) return absl::InvalidArgumentError("--prefix-pool must be >= 0");
  if (region_cuda_device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--region-cuda-device (", region_cuda_device, ") must be >= 0"));
  }
  if (inputs == InputSource::kDevice &&
      (data_plane != DataPlane::kShm || region_memory == RegionMemory::kHost)) {
    return absl::InvalidArgumentError(
        "--inputs=device needs CUDA regions (--data-plane=shm, --region-memory cuda or auto)");
  }
  if (layer_gap < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--layer-gap-us must be >= 0");
  }
  if (run_id.empty()) return absl::InvalidArgumentError("run_id must not be empty");
  return absl::OkStatus();
}

}  // namespace flashkv::loadgen

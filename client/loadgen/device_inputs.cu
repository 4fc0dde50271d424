#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "device_inputs.h"
#include "synthetic_data.h"

namespace flashkv::loadgen {
namespace {

// Round to nearest even, as FromFloat on the host.
template <DType kDType>
__device__ __forceinline__ void Store(float x, std::byte* out, int64_t i) {
  if constexpr (kDType == DType::kFloat16) {
    reinterpret_cast<__half*>(out)[i] = __float2half_rn(x);
  } else if constexpr (kDType == DType::kBFloat16) {
    reinterpret_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(x);
  } else {
    reinterpret_cast<float*>(out)[i] = x;
  }
}

// One block per job; a thread writes the four values of one 64-bit draw at a time.
template <DType kDType>
__global__ void FillJobsKernel(const FillJob* jobs, std::byte* base) {
  const FillJob job = jobs[blockIdx.x];
  std::byte* out = base + job.offset;
  const int64_t groups = (job.count + 3) / 4;
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    uint64_t bits = SyntheticBits(job.seed, g);
    for (int64_t i = 4 * g; i < 4 * g + 4 && i < job.count; ++i, bits >>= 16) {
      Store<kDType>(SyntheticValue(static_cast<uint32_t>(bits)), out, i);
    }
  }
}

absl::Status FromCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("--inputs=device: ", what, ": ", cudaGetErrorString(e)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceInputs>> DeviceInputs::Create(DType dtype, size_t max_jobs) {
  std::unique_ptr<DeviceInputs> inputs(new DeviceInputs(dtype, max_jobs));
  const size_t bytes = max_jobs * sizeof(FillJob);
  if (auto s = FromCuda(cudaMallocHost(&inputs->host_jobs_, bytes), "cudaMallocHost"); !s.ok()) {
    return s;
  }
  if (auto s = FromCuda(cudaMalloc(&inputs->device_jobs_, bytes), "cudaMalloc"); !s.ok()) return s;

  // The host regenerates what it verifies: the device's values must be FillValues's exactly. A
  // probe over counts with and without a partial last draw, of several seeds, checks that once.
  const size_t elem = DTypeSize(dtype);
  const FillJob probe[] = {
      {0x243f6a8885a308d3ull, 0, 4099}, {7, 4352 * elem, 1}, {1, 4608 * elem, 4096}};
  const size_t probe_bytes = 8704 * elem;
  std::byte* device = nullptr;
  if (auto s = FromCuda(cudaMalloc(&device, probe_bytes), "cudaMalloc"); !s.ok()) return s;
  std::vector<std::byte> got(probe_bytes), want(probe_bytes);
  const absl::Status filled = inputs->Fill(device, probe);
  const cudaError_t copied =
      filled.ok() ? cudaMemcpy(got.data(), device, probe_bytes, cudaMemcpyDeviceToHost)
                  : cudaSuccess;
  (void)cudaFree(device);
  if (!filled.ok()) return filled;
  if (auto s = FromCuda(copied, "cudaMemcpy"); !s.ok()) return s;
  for (const FillJob& job : probe) FillValues(dtype, job.seed, job.count, want.data() + job.offset);
  for (const FillJob& job : probe) {
    if (std::memcmp(got.data() + job.offset, want.data() + job.offset, job.count * elem) != 0) {
      return absl::FailedPreconditionError(
          "--inputs=device: the values generated on the GPU differ from the host's FillValues, so "
          "the host could not verify the outputs");
    }
  }
  return inputs;
}

DeviceInputs::~DeviceInputs() {
  if (host_jobs_ != nullptr) (void)cudaFreeHost(host_jobs_);
  if (device_jobs_ != nullptr) (void)cudaFree(device_jobs_);
}

absl::Status DeviceInputs::Fill(std::byte* base, absl::Span<const FillJob> jobs) {
  if (jobs.empty()) return absl::OkStatus();
  if (jobs.size() > max_jobs_) {
    return absl::InternalError(absl::StrCat("--inputs=device: ", jobs.size(),
                                            " fill jobs in one layer, room for ", max_jobs_));
  }
  // The staging buffer is reused per call: wait until the previous upload has left it.
  if (auto s = FromCuda(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize"); !s.ok()) return s;
  std::memcpy(host_jobs_, jobs.data(), jobs.size() * sizeof(FillJob));
  if (auto s = FromCuda(cudaMemcpyAsync(device_jobs_, host_jobs_, jobs.size() * sizeof(FillJob),
                                        cudaMemcpyHostToDevice, nullptr),
                        "cudaMemcpyAsync");
      !s.ok()) {
    return s;
  }
  const unsigned blocks = static_cast<unsigned>(jobs.size());
  switch (dtype_) {
    case DType::kFloat16:
      FillJobsKernel<DType::kFloat16><<<blocks, 128>>>(device_jobs_, base);
      break;
    case DType::kBFloat16:
      FillJobsKernel<DType::kBFloat16><<<blocks, 128>>>(device_jobs_, base);
      break;
    case DType::kFloat32:
      FillJobsKernel<DType::kFloat32><<<blocks, 128>>>(device_jobs_, base);
      break;
  }
  return FromCuda(cudaGetLastError(), "fill kernel launch");
}

}  // namespace flashkv::loadgen

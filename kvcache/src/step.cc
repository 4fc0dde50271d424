// RunLayerStep: append + paged attention for a prepared batch, on either backend.

#include "flashkv/kvcache/step.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/kvcache/status.h"

namespace flashkv::kvcache {
namespace {

absl::Status CheckTensor(const char* name, const TensorRef& t, const CacheConfig& config,
                         int64_t rows, int heads) {
  if (t.dtype != config.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".dtype (", DTypeName(t.dtype),
                                                   ") differs from the cache's (",
                                                   DTypeName(config.dtype), ")"));
  }
  if (t.rows != rows) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has ", t.rows,
                                                   " rows; the batch has ", rows, " new tokens"));
  }
  if (heads > 0 && t.heads != heads) {
    return absl::InvalidArgumentError(absl::StrCat(name, " has ", t.heads,
                                                   " heads; the cache has ", heads, " KV heads"));
  }
  if (t.head_dim != config.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".head_dim (", t.head_dim,
                                                   ") differs from the cache's (",
                                                   config.head_dim, ")"));
  }
  if (t.data == nullptr && rows > 0) return absl::InvalidArgumentError(absl::StrCat(name, " is null"));
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateStepTensors(const KvCache& cache, const LayerBatch& batch,
                                 const StepTensors& t) {
  if (!batch.pending()) return absl::FailedPreconditionError("the batch is not pending");
  if (t.layer >= 0 && (t.layer < batch.layer() || t.layer >= batch.layer() + batch.num_layers())) {
    return absl::InvalidArgumentError(absl::StrCat("layer (", t.layer, ") must be in [",
                                                   batch.layer(), ", ",
                                                   batch.layer() + batch.num_layers(),
                                                   "): the layers the batch spans"));
  }
  const CacheConfig& c = cache.config();
  const int64_t rows = batch.total_q();
  if (absl::Status s = CheckTensor("k", t.k, c, rows, c.num_kv_heads); !s.ok()) return s;
  if (absl::Status s = CheckTensor("v", t.v, c, rows, c.num_kv_heads); !s.ok()) return s;
  if (t.q.data == nullptr) return absl::OkStatus();  // append only
  if (absl::Status s = CheckTensor("q", t.q, c, rows, 0); !s.ok()) return s;
  if (t.q.heads < 1 || t.q.heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("q has ", t.q.heads,
                                                   " heads; it must be a positive multiple of "
                                                   "the cache's KV heads (",
                                                   c.num_kv_heads, ")"));
  }
  if (t.out == nullptr) return absl::InvalidArgumentError("out is null");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StepWorkspace>> StepWorkspace::Create(const KvCache& cache) {
  const CacheConfig& c = cache.config();
  CUstream_st* stream = nullptr;
  if (c.backend == Backend::kCuda) {
    KernelStatus status = cuda::SetDevice(c.device);
    if (status.ok()) status = cuda::StreamCreate(&stream);
    if (!status.ok()) return ToAbslStatus(status);
  }
  return std::unique_ptr<StepWorkspace>(new StepWorkspace(c.device, stream));
}

StepWorkspace::~StepWorkspace() {
  if (stream_ == nullptr) return;
  (void)cuda::SetDevice(device_);
  if (metadata_ != nullptr) (void)cuda::Free(metadata_);
  (void)cuda::StreamDestroy(stream_);
}

absl::StatusOr<const void*> StepWorkspace::UploadMetadata(const LayerBatch& batch) {
  if (stream_ == nullptr) return batch.data();  // CPU: the host buffer is the backend's copy
  if (absl::Status s = ToAbslStatus(cuda::SetDevice(device_)); !s.ok()) return s;
  const size_t bytes = batch.size_bytes();
  if (bytes > capacity_) {
    if (metadata_ != nullptr) {
      (void)cuda::Free(metadata_);
      metadata_ = nullptr;
      capacity_ = 0;
    }
    const size_t capacity = std::max<size_t>(bytes * 2, 64 * 1024);
    if (absl::Status s = ToAbslStatus(cuda::Malloc(&metadata_, capacity)); !s.ok()) return s;
    capacity_ = capacity;
  }
  if (absl::Status s =
          ToAbslStatus(cuda::MemcpyHostToDevice(metadata_, batch.data(), bytes, stream_));
      !s.ok()) {
    return s;
  }
  return static_cast<const void*>(metadata_);
}

absl::Status RunLayerStep(const KvCache& cache, const LayerBatch& batch, const StepTensors& t,
                          StepWorkspace* workspace) {
  if (absl::Status s = ValidateStepTensors(cache, batch, t); !s.ok()) return s;
  const bool cuda = cache.config().backend == Backend::kCuda;
  if (cuda && workspace == nullptr) {
    return absl::InvalidArgumentError("workspace is null: the CUDA backend needs a StepWorkspace");
  }
  const void* metadata = batch.data();
  if (cuda) {
    absl::StatusOr<const void*> uploaded = workspace->UploadMetadata(batch);
    if (!uploaded.ok()) return uploaded.status();
    metadata = *uploaded;
  }
  const int layer = t.layer < 0 ? batch.layer() : t.layer;
  const KvAppendArgs append = batch.MakeAppendArgs(layer, metadata, t.k.data, t.v.data);
  KernelStatus status = cuda ? cuda::AppendKv(append, workspace->stream()) : cpu::AppendKv(append);
  if (status.ok() && t.q.data != nullptr) {
    const PagedAttentionArgs attention =
        batch.MakeAttentionArgs(layer, metadata, t.q.heads, t.q.data, t.out, t.lse, t.options);
    status = cuda ? cuda::AttentionPaged(attention, workspace->stream())
                  : cpu::AttentionPaged(attention);
  }
  if (cuda) {
    // Wait even after an error: the metadata buffer may be rewritten by the next call.
    const KernelStatus synced = cuda::StreamSynchronize(workspace->stream());
    if (status.ok()) status = synced;
  }
  return ToAbslStatus(status);
}

}  // namespace flashkv::kvcache

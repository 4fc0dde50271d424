#pragma once

// A whole layer step on a prepared batch: copy the metadata to the backend, append the new K/V
// rows into the pools, run paged attention of the new queries over each sequence's context, wait.
// The service builds its launches from LayerBatch::Make*Args directly when it needs its own
// streams; this is the reference composition (and what tests use).

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/attention.h"
#include "flashkv/kvcache/kv_cache.h"
#include "flashkv/kvcache/layer_batch.h"

struct CUstream_st;

namespace flashkv::kvcache {

// A packed tensor [rows, heads, head_dim], dense, in backend memory (device memory with CUDA).
struct TensorRef {
  DType dtype = DType::kFloat16;
  int64_t rows = 0;
  int heads = 0;
  int head_dim = 0;
  const void* data = nullptr;
};

struct StepTensors {
  TensorRef q;  // [total_q, Hq, D]; data == nullptr: append only, no attention
  TensorRef k;  // [total_q, Hkv, D]
  TensorRef v;  // [total_q, Hkv, D]
  void* out = nullptr;   // [total_q, Hq, D], dtype of q
  float* lse = nullptr;  // optional [Hq, total_q]
  // The layer to run: -1 for the batch's own; for a decode pass (KvCache::PreparePass) any layer
  // it spans.
  int layer = -1;
  AttentionOptions options{/*causal=*/true, /*softmax_scale=*/std::nullopt};
};

// Per-thread scratch for RunLayerStep with CUDA: a device buffer for the batch metadata (grown as
// needed) and a stream on the cache's device. Not needed (may be null) on the CPU backend.
// Thread-safety: one workspace per thread at a time.
class StepWorkspace {
 public:
  static absl::StatusOr<std::unique_ptr<StepWorkspace>> Create(const KvCache& cache);
  ~StepWorkspace();
  StepWorkspace(const StepWorkspace&) = delete;
  StepWorkspace& operator=(const StepWorkspace&) = delete;

  CUstream_st* stream() const { return stream_; }
  // A device copy of `batch`'s metadata, enqueued on stream().
  absl::StatusOr<const void*> UploadMetadata(const LayerBatch& batch);

 private:
  StepWorkspace(int device, CUstream_st* stream) : device_(device), stream_(stream) {}
  int device_ = 0;
  CUstream_st* stream_ = nullptr;
  void* metadata_ = nullptr;
  size_t capacity_ = 0;
};

// Checks every tensor against the batch and the cache (dtype, rows == total_q, heads, head dim:
// INVALID_ARGUMENT naming the tensor and field), then runs append and attention and waits for
// them. The batch stays pending: the caller commits or aborts it.
absl::Status RunLayerStep(const KvCache& cache, const LayerBatch& batch,
                          const StepTensors& tensors, StepWorkspace* workspace);

// Checks only (no work): what RunLayerStep refuses.
absl::Status ValidateStepTensors(const KvCache& cache, const LayerBatch& batch,
                                 const StepTensors& tensors);

}  // namespace flashkv::kvcache

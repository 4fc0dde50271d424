#pragma once

// One scheduler launch: rows of one or more Step parts at one layer (each part's window of rows,
// possibly a chunk of a long prefill) merged into a single append + paged attention. Builds the
// launch's metadata (slot mapping, cu_seqlens, block table) from the parts' prepared kvcache
// batches, gathers the q/k/v rows straight from the requests' received bytes into one staging
// buffer, copies that buffer to the device in one transfer (CUDA), runs both kernels, and
// scatters the output rows into each step's output buffer. Rows that already lie in one
// contiguous run the kernels can reach are read and written in place instead: no staging copy,
// no scatter. On the CPU backend that is host memory (a runner's batch in a shared-memory region;
// the outputs of a single step); on CUDA, device memory of the launch's device (a runner's batch
// in a CUDA IPC region). Rows in CUDA regions that are not contiguous are copied device-side into
// the staging (and outputs out of it), adjacent rows in one copy; they never cross to the host.
// With CUDA, RunLaunch returns after synchronising its stream: outputs are in place and inputs
// no longer read.
//
// A window [begin, end) of a part computes the queries of rows begin..end-1 over the context up
// to and including row end-1: the rows before `begin` were appended by earlier launches, the
// rows from `end` on are reserved (blocks allocated by Prepare) but not yet written, and causal
// bottom-right masking within the window gives each query exactly its prefix. So a long prefill
// computed as several windows gives the same result as one launch.

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/attention.h"
#include "flashkv/kvcache/layer_batch.h"
#include "flashkv/kvcache/memory.h"
#include "flashkv/server/config.h"
#include "flashkv/server/step.h"

struct CUstream_st;
struct CUevent_st;

namespace flashkv::server {

struct LaunchWindow {
  StepPart* part = nullptr;
  int64_t begin = 0;  // part rows
  int64_t end = 0;
};

// Staging memory of one scheduler, grown on demand and reused: on the CPU backend one host
// buffer for inputs and one for outputs, which the kernels read and write directly; with CUDA
// pinned host buffers and their device twins, and the scheduler's stream.
// Thread-safety: one scheduler thread.
class LaunchArena {
 public:
  static absl::StatusOr<std::unique_ptr<LaunchArena>> Create(bool cuda, int cuda_device);
  ~LaunchArena();
  LaunchArena(const LaunchArena&) = delete;
  LaunchArena& operator=(const LaunchArena&) = delete;

  absl::Status Reserve(size_t in_bytes, size_t out_bytes);
  uint8_t* host_in() const { return host_in_.data; }
  uint8_t* host_out() const { return host_out_.data; }
  // Where the kernels read and write: device memory with CUDA, the host buffers otherwise.
  uint8_t* device_in() const { return cuda_ ? device_in_.data : host_in_.data; }
  uint8_t* device_out() const { return cuda_ ? device_out_.data : host_out_.data; }
  bool cuda() const { return cuda_; }
  CUstream_st* stream() const { return stream_; }
  // Recorded around the kernels on stream() (CUDA only), to time them without a synchronisation.
  CUevent_st* kernels_start() const { return kernels_start_; }
  CUevent_st* kernels_end() const { return kernels_end_; }

 private:
  struct Buffer {
    uint8_t* data = nullptr;
    size_t bytes = 0;
  };
  LaunchArena(bool cuda, int device, CUstream_st* stream, CUevent_st* kernels_start,
              CUevent_st* kernels_end);
  absl::Status Grow(kvcache::MemoryAllocator& allocator, Buffer* buffer, size_t bytes);
  void Release(kvcache::MemoryAllocator& allocator, Buffer* buffer);

  const bool cuda_;
  const int device_;
  CUstream_st* const stream_;
  CUevent_st* const kernels_start_;
  CUevent_st* const kernels_end_;
  std::shared_ptr<kvcache::MemoryAllocator> host_allocator_;
  std::shared_ptr<kvcache::MemoryAllocator> device_allocator_;
  Buffer host_in_, host_out_, device_in_, device_out_;
};

struct LaunchSummary {
  int entries = 0;     // sequences in the launch
  int64_t tokens = 0;  // query rows
  // The KV append and attention kernels alone: not the staging, the transfers, the scatter, or
  // the checks of the attention launch (planned before the kernels' clock starts; with CUDA the
  // clock is two events around the kernels' launch calls).
  absl::Duration kernel_time;
};

// Runs `windows` (all prepared at `layer` of one cache whose pools are `pools`) and scatters the
// outputs. On error, outputs written in place may be partial; the caller fails every window's
// step.
absl::StatusOr<LaunchSummary> RunLaunch(const ModelShape& model,
                                        absl::Span<const LaunchWindow> windows,
                                        const kvcache::LayerPools& pools, LaunchArena* arena);

// One layer of a decode pass (decode_pass.h): `part` is the layer step's part, whose one entry
// holds the pass's T rows of q, k, v and out; the kernels run with the pass's kvcache batch at
// `layer` and its `metadata` (already where the kernels read it: on the device with CUDA). No
// per-entry work: the rows are read and written in place when they can be, else staged in one
// copy per tensor. `plan`: the pass's attention launch, checked by the first layer's launch
// (block table and all) and run by every layer with that layer's tensors and pools.
absl::StatusOr<LaunchSummary> RunPassLaunch(const ModelShape& model,
                                            const kvcache::LayerBatch& pass, int layer,
                                            const void* metadata, const StepPart& part,
                                            PagedAttentionPlan* plan, LaunchArena* arena);

}  // namespace flashkv::server

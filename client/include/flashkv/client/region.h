#pragma once

// The shared-memory data plane from C++ (proto/flashkv/v1/region.proto, docs/client.md): memory
// shared with a server on this host, so that Step and Attention requests name slices of it
// instead of carrying bytes and the server writes outputs into it. gRPC then carries descriptors
// of a few dozen bytes per tensor, whatever the batch.
//
//   auto region = client->AttachHostRegion(64 << 20);       // StatusOr<unique_ptr<SharedRegion>>
//   auto q = (*region)->Allocate(DType::kFloat16, {n, Hq, D});  // StatusOr<RegionTensor>
//   FillQueries(q->mutable_data());                           // write in place
//   StepInput input{"seq-1", q->view(), k->view(), v->view(), {}};
//   input.out = out->slice();                                 // the output lands in out->data()
//   client->Step(layer, {input});
//
// Host regions are sealed memfds (memfd_create, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
// which the server opens through /proc/<pid>/fd/<fd>: client and server must share a host, a
// PID namespace and a user. A sealed memfd, unlike a shm_open name, can never shrink under the
// server's mapping. Device regions (CUDA builds) are cudaMalloc allocations exported with
// cudaIpcGetMemHandle; the server opens them on the device of its numbering.
//
// Ownership: a SharedRegion owns its memory and its AttachRegion stream; the server keeps the
// region registered as long as the stream lasts. Release() (or the destructor) unregisters it,
// ends the stream and unmaps. A region belongs to the client's tenant (its bearer token).
// Thread-safety: Allocate/Reset are not synchronised (one owner allocates); everything else may
// be called from any thread. Lifetime: must not outlive the Client that attached it; requests
// naming it must be finished before Release().

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "flashkv/client/tensor.h"
#include "flashkv/v1/region.grpc.pb.h"
#include "grpcpp/client_context.h"

namespace flashkv {

class SharedRegion;

// Slices are placed at this alignment: the server's kernels read aligned rows in place.
inline constexpr uint64_t kRegionAlignment = 64;

// A tensor in a SharedRegion: dtype, shape, offset. A cheap value; it does not keep the region
// alive.
class RegionTensor {
 public:
  RegionTensor() = default;

  DType dtype() const { return dtype_; }
  absl::Span<const int64_t> shape() const { return shape_; }
  size_t num_bytes() const { return static_cast<size_t>(NumElements(shape_)) * DTypeSize(dtype_); }
  uint64_t offset() const { return offset_; }
  RegionSlice slice() const { return RegionSlice{region_id_, offset_}; }
  // The bytes: a host pointer, or for a device region a device pointer (not to be dereferenced
  // on the host).
  std::byte* mutable_data() const { return data_; }
  const std::byte* data() const { return data_; }
  bool on_device() const { return on_device_; }
  // As a request input: the descriptor travels, not the bytes.
  TensorView view() const { return TensorView(dtype_, shape_, data_, slice()); }

 private:
  friend class SharedRegion;
  RegionTensor(DType dtype, Shape shape, uint64_t region_id, uint64_t offset, std::byte* data,
               bool on_device)
      : dtype_(dtype),
        shape_(std::move(shape)),
        region_id_(region_id),
        offset_(offset),
        data_(data),
        on_device_(on_device) {}

  DType dtype_ = DType::kFloat32;
  Shape shape_;
  uint64_t region_id_ = 0;
  uint64_t offset_ = 0;
  std::byte* data_ = nullptr;
  bool on_device_ = false;
};

class SharedRegion {
 public:
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  uint64_t id() const { return id_; }
  uint64_t size() const { return size_; }
  // -1 for host memory, else the CUDA device holding it.
  int device() const { return device_; }
  std::byte* data() const { return data_; }

  // `shape`-shaped `dtype` bytes after the last allocation, at kRegionAlignment.
  // RESOURCE_EXHAUSTED (naming what is left) when they do not fit.
  absl::StatusOr<RegionTensor> Allocate(DType dtype, Shape shape);
  // Forgets every allocation; tensors allocated before must no longer be used in requests.
  void Reset() { next_ = 0; }
  uint64_t used() const { return next_; }
  // A tensor at an explicit offset (the caller's own layout). INVALID_ARGUMENT naming `field` when
  // [offset, offset + bytes) leaves the region or the shape is invalid.
  absl::StatusOr<RegionTensor> At(uint64_t offset, DType dtype, Shape shape,
                                  absl::string_view field = "offset") const;

  // OK until Release(); FAILED_PRECONDITION after. (The stream is not watched between calls, so a
  // region the server dropped on its own — shutdown, a lost connection — shows as NOT_FOUND on the
  // next request that names it.)
  absl::Status status() const;

  // Unregisters the region (ReleaseRegion), ends its stream, and frees the memory. Idempotent;
  // returns the ReleaseRegion call's status (NOT_FOUND when the server had already dropped it).
  absl::Status Release();

 private:
  friend class Client;
  class Attachment;
  struct Memory;

  // How Client reaches the server: `prepare` readies a call's context (token, deadline).
  using Prepare = std::function<absl::Status(grpc::ClientContext*)>;
  static absl::StatusOr<std::unique_ptr<SharedRegion>> AttachHost(v1::RegionService::Stub* stub,
                                                                  Prepare prepare, uint64_t size,
                                                                  absl::Duration wait);
  static absl::StatusOr<std::unique_ptr<SharedRegion>> AttachDevice(
      v1::RegionService::Stub* stub, Prepare prepare, uint64_t size, int device,
      absl::Duration wait);
  // Registers `memory` and waits (at most `wait`) for the region id.
  static absl::StatusOr<std::unique_ptr<SharedRegion>> Attach(v1::RegionService::Stub* stub,
                                                              Prepare prepare,
                                                              std::unique_ptr<Memory> memory,
                                                              v1::AttachRegionRequest request,
                                                              absl::Duration wait);
  SharedRegion(v1::RegionService::Stub* stub, Prepare prepare, std::unique_ptr<Memory> memory);

  v1::RegionService::Stub* const stub_;
  const Prepare prepare_;
  std::unique_ptr<Memory> memory_;
  std::unique_ptr<Attachment> attachment_;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  int device_ = -1;
  uint64_t id_ = 0;
  uint64_t next_ = 0;
  mutable absl::Mutex release_mu_;
  bool released_ ABSL_GUARDED_BY(release_mu_) = false;
  absl::Status release_status_ ABSL_GUARDED_BY(release_mu_);
};

}  // namespace flashkv

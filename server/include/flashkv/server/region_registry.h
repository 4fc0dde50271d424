#pragma once

// The shared-memory data plane's regions (proto/flashkv/v1/region.proto): memory a client on this
// host registered so that requests can name slices of it instead of carrying bytes. Host regions
// are memfds of the client, sealed against shrinking and opened through /proc/<pid>/fd/<fd>;
// device regions are CUDA IPC handles opened with flashkv::cuda::IpcOpenMemHandle, their stated
// size checked against the exported allocation's (cuda::MemGetAddressRange).
//
// Why sealed memfds rather than shm_open names: the server maps the client's memory, and a client
// that later shrank a POSIX shm object would make the server's next access fault (SIGBUS) and
// kill it. A memfd with F_SEAL_SHRINK can never shrink, so a mapping of its registered size stays
// valid whatever the client does.
//
// Ownership: a region belongs to its tenant (the caller's bearer token) and is reachable only
// with that tenant. The registry holds each mapping through a shared_ptr; every use pins it
// (RegionBytes), so releasing a region while a request still reads it unmaps only after that
// request is done. Thread-safety: all methods may be called from any thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "flashkv/base/mutex.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {

// One mapped region. Unmapped (or its IPC handle closed) when the last reference goes.
class MappedRegion {
 public:
  virtual ~MappedRegion() = default;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // -1 for host memory, else the CUDA device holding it.
  int device() const { return device_; }

 protected:
  MappedRegion(uint8_t* data, uint64_t size, int device)
      : data_(data), size_(size), device_(device) {}

 private:
  uint8_t* data_;
  uint64_t size_;
  int device_;
};

// A bounds-checked byte range of a region, pinning its mapping while it lives.
struct RegionBytes {
  std::shared_ptr<MappedRegion> region;
  uint8_t* data = nullptr;
  uint64_t size = 0;
};

struct RegionLimits {
  // Regions and mapped bytes one tenant may hold at once (RESOURCE_EXHAUSTED beyond).
  int max_regions_per_tenant = 64;
  uint64_t max_bytes_per_tenant = uint64_t{64} << 30;
};

// Whether a CUDA region of the stated `size`, opened at `data`, fits the allocation the driver
// reports for it ([allocation_base, allocation_base + allocation_bytes)). INVALID_ARGUMENT naming
// the size and the allocation's bytes when it does not; INTERNAL when `data` is not inside it.
absl::Status CheckCudaRegionSize(uint64_t size, const uint8_t* allocation_base,
                                 uint64_t allocation_bytes, const uint8_t* data);

class RegionRegistry {
 public:
  explicit RegionRegistry(RegionLimits limits = {}) : limits_(limits) {}
  ~RegionRegistry();

  // Maps `size` bytes of the memfd `fd` of process `pid`. Errors: INVALID_ARGUMENT for a size of
  // 0, NOT_FOUND when the descriptor cannot be opened, FAILED_PRECONDITION when it is not a
  // memfd sealed with F_SEAL_SHRINK or is smaller than `size`, RESOURCE_EXHAUSTED past limits.
  // `on_release` runs (outside the registry's lock) when the region is released by Release or
  // ReleaseAll, e.g. to end the stream that attached it.
  absl::StatusOr<uint64_t> AttachHost(absl::string_view tenant, int pid, int fd, uint64_t size,
                                      std::function<void()> on_release = nullptr);
  // Opens a CUDA IPC handle on `device`; UNAVAILABLE without CUDA. INVALID_ARGUMENT when `size`
  // exceeds what the exported allocation holds from the handle's base (CheckCudaRegionSize, the
  // driver's own figure): the server's kernels would otherwise fault on its own context.
  absl::StatusOr<uint64_t> AttachCuda(absl::string_view tenant, absl::string_view handle,
                                      int device, uint64_t size,
                                      std::function<void()> on_release = nullptr);

  // NOT_FOUND when the id is unknown or belongs to another tenant (the same answer, so ids of
  // other tenants cannot be probed).
  absl::Status Release(absl::string_view tenant, uint64_t region_id);
  // Drops a region whatever its tenant, without running on_release (its attaching stream ended).
  void Forget(uint64_t region_id);
  // Releases everything (server shutdown).
  void ReleaseAll();

  // [slice.offset, slice.offset + bytes) of the tenant's region; INVALID_ARGUMENT naming `field`
  // when out of bounds (or the offset is not `alignment`-aligned), NOT_FOUND as in Release.
  absl::StatusOr<RegionBytes> Resolve(absl::string_view tenant, const wire::RegionSliceView& slice,
                                      uint64_t bytes, absl::string_view field,
                                      uint64_t alignment = 1) const;

  int num_regions() const;

 private:
  struct Entry {
    std::string tenant;
    std::shared_ptr<MappedRegion> region;
    std::function<void()> on_release;
  };
  absl::StatusOr<uint64_t> Insert(absl::string_view tenant, std::shared_ptr<MappedRegion> region,
                                  std::function<void()> on_release);
  absl::Status CheckLimits(absl::string_view tenant, uint64_t size) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RegionLimits limits_;
  mutable Mutex mu_;
  absl::flat_hash_map<uint64_t, Entry> regions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace flashkv::server

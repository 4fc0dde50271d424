#pragma once

// The KV caches of every device and the directory from sequence id to the device that holds it.
// New sequences go to the least-loaded device; a fork stays on its parent's device (it shares
// the parent's blocks). Written for any number of devices: CUDA devices, or CPU "devices" (each
// its own cache in host memory) that exercise the same placement without GPUs.
//
// Ownership: owns the caches. Thread-safety: every method may be called from any thread; `mu_`
// guards the directory and is held across the cache calls that change it, so the directory and
// the caches never disagree. Lock order: mu_, then a KvCache's internal lock.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "flashkv/base/mutex.h"
#include "absl/types/span.h"
#include "flashkv/kvcache/kv_cache.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/config.h"

namespace flashkv::server {

// What the server runs on, decided from the config and the machine.
struct DevicePlan {
  bool cuda = false;
  std::vector<int> ids;  // CUDA ordinals, or CPU device ids -1, -2, ...
};
absl::StatusOr<DevicePlan> PlanDevices(const ServerConfig& config);

class CacheSet {
 public:
  static absl::StatusOr<std::unique_ptr<CacheSet>> Create(const ServerConfig& config,
                                                          const DevicePlan& plan,
                                                          std::shared_ptr<Clock> clock);

  int num_devices() const { return static_cast<int>(caches_.size()); }
  // Device index (0..num_devices-1) -> its cache and its public id (CUDA ordinal or -1-index).
  kvcache::KvCache& cache(int device) const { return *caches_[device]; }
  int device_id(int device) const { return plan_.ids[device]; }
  bool cuda() const { return plan_.cuda; }

  // Returns the cached prompt length (see KvCache::CreateSequence). ALREADY_EXISTS when the id
  // is live on any device.
  absl::StatusOr<int> CreateSequence(absl::string_view id, absl::Span<const int64_t> prompt);
  // NOT_FOUND (parent), ALREADY_EXISTS (child), ABORTED (parent in a running step).
  absl::Status ForkSequence(absl::string_view parent, absl::string_view child);
  absl::Status FreeSequence(absl::string_view id);
  // The device index holding `id`.
  std::optional<int> DeviceOf(absl::string_view id) const;
  // Frees sequences idle for `ttl` on every device; returns their ids.
  std::vector<std::string> ExpireIdle(absl::Time now, absl::Duration ttl);
  int64_t num_sequences(int device) const;

 private:
  CacheSet(DevicePlan plan, std::vector<std::unique_ptr<kvcache::KvCache>> caches)
      : plan_(std::move(plan)), caches_(std::move(caches)), sequences_per_device_(caches_.size()) {}
  int LeastLoadedDevice() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DevicePlan plan_;
  const std::vector<std::unique_ptr<kvcache::KvCache>> caches_;
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, int> device_of_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> sequences_per_device_ ABSL_GUARDED_BY(mu_);
};

}  // namespace flashkv::server

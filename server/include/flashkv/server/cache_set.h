#pragma once

// The KV caches of every device, the directory from sequence id to the device that holds it, and
// the tenants' ledger (tenant_ledger.h: sequences and KV blocks per tenant against their quotas).
// New sequences go to the least-loaded device; a fork stays on its parent's device (it shares
// the parent's blocks). Written for any number of devices: CUDA devices, or CPU "devices" (each
// its own cache in host memory) that exercise the same placement without GPUs.
//
// Ids here are scoped ("<tenant>/<id>", auth.h): the service scopes what clients send, so a
// tenant never reaches another's sequences, and the caches keep each tenant's prefix blocks
// apart (SequenceOptions::tenant).
//
// Ownership: owns the caches. Thread-safety: every method may be called from any thread; `mu_`
// guards the directory and the ledger and is held across the cache calls that change them, so
// the three never disagree. Lock order: mu_, then a KvCache's internal lock.

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
#include "flashkv/server/auth.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/config.h"
#include "flashkv/server/tenant_ledger.h"

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
  // is live on any device; RESOURCE_EXHAUSTED past the sequence limits or the block quota.
  absl::StatusOr<int> CreateSequence(const Tenant& tenant, absl::string_view id,
                                     absl::Span<const int64_t> prompt);
  // NOT_FOUND (parent), ALREADY_EXISTS (child), ABORTED (parent in a running step),
  // RESOURCE_EXHAUSTED (limits and quotas, as CreateSequence).
  absl::Status ForkSequence(const Tenant& tenant, absl::string_view parent,
                            absl::string_view child);
  absl::Status FreeSequence(absl::string_view id);
  // The blocks a step's layer-0 entries (scoped id, new tokens) add, reserved against the
  // tenant's quota (TenantLedger::Reserve); settle it once the step resolves.
  absl::StatusOr<LedgerReservation> ReserveStep(
      const Tenant& tenant, absl::Span<const std::pair<std::string, int64_t>> entries);
  void SettleStep(const LedgerReservation& reservation, bool committed);
  TenantUsage Usage(absl::string_view tenant) const;
  std::vector<std::pair<std::string, TenantUsage>> AllUsage() const;
  // The device index holding `id`.
  std::optional<int> DeviceOf(absl::string_view id) const;
  // DeviceOf for a whole batch under one lock: (*devices)[i] for ids[i], -1 when none holds it.
  // A known id named twice is found on the way (no set of the batch's ids needed): returns the
  // first such pair (earlier index, later index), or nullopt.
  std::optional<std::pair<size_t, size_t>> DevicesOf(absl::Span<const std::string> ids,
                                                     std::vector<int>* devices) const;
  // Frees sequences idle for `ttl` on every device; returns their ids.
  std::vector<std::string> ExpireIdle(absl::Time now, absl::Duration ttl);
  int64_t num_sequences(int device) const;

 private:
  CacheSet(DevicePlan plan, std::vector<std::unique_ptr<kvcache::KvCache>> caches,
           int page_size, int64_t max_sequences)
      : plan_(std::move(plan)),
        caches_(std::move(caches)),
        sequences_per_device_(caches_.size()),
        ledger_(page_size, max_sequences) {}
  int LeastLoadedDevice() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const DevicePlan plan_;
  const std::vector<std::unique_ptr<kvcache::KvCache>> caches_;
  mutable Mutex mu_;
  struct Placement {
    int device = 0;
    // The DevicesOf call that last saw this id, and at which index (repeat detection).
    mutable uint64_t seen_by = 0;
    mutable size_t seen_at = 0;
  };
  absl::flat_hash_map<std::string, Placement> device_of_ ABSL_GUARDED_BY(mu_);
  mutable uint64_t lookups_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int64_t> sequences_per_device_ ABSL_GUARDED_BY(mu_);
  TenantLedger ledger_ ABSL_GUARDED_BY(mu_);
};

}  // namespace flashkv::server

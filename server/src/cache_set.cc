#include "flashkv/server/cache_set.h"

#include <unistd.h>

#include <string>
#include <utility>

#include "flashkv/cuda_backend.h"

namespace flashkv::server {
namespace {

kvcache::PoolBudget Budget(const ServerConfig& config, bool cuda) {
  if (config.kv_cache_bytes > 0) return kvcache::PoolBudget::Bytes(config.kv_cache_bytes);
  if (cuda) {
    return kvcache::PoolBudget::FractionOfFreeDeviceMemory(
        config.kv_cache_fraction > 0 ? config.kv_cache_fraction : 0.9);
  }
  if (config.kv_cache_fraction > 0) {
    const int64_t host_bytes = int64_t{sysconf(_SC_PHYS_PAGES)} * sysconf(_SC_PAGESIZE);
    // Shared by every CPU device.
    return kvcache::PoolBudget::FractionOfHostMemory(config.kv_cache_fraction / config.cpu_devices,
                                                     host_bytes);
  }
  return kvcache::PoolBudget::Bytes(kDefaultCpuKvCacheBytes);
}

}  // namespace

absl::StatusOr<DevicePlan> PlanDevices(const ServerConfig& config) {
  DevicePlan plan;
  const int visible = cuda::DeviceCount();
  const bool want_cuda = config.backend == BackendChoice::kCuda ||
                         (config.backend == BackendChoice::kAuto && cuda::IsBuilt() && visible > 0);
  if (!want_cuda) {
    for (int i = 0; i < config.cpu_devices; ++i) plan.ids.push_back(-1 - i);
    return plan;
  }
  if (!cuda::IsBuilt()) {
    return absl::FailedPreconditionError("backend cuda: flashkv was built without CUDA");
  }
  if (visible == 0) return absl::FailedPreconditionError("backend cuda: no CUDA device is visible");
  plan.cuda = true;
  plan.ids = config.cuda_devices;
  if (plan.ids.empty()) {
    for (int i = 0; i < visible; ++i) plan.ids.push_back(i);
  }
  for (int id : plan.ids) {
    if (id >= visible) {
      return absl::InvalidArgumentError("devices: CUDA device " + std::to_string(id) +
                                        " does not exist (" + std::to_string(visible) +
                                        " visible)");
    }
  }
  return plan;
}

absl::StatusOr<std::unique_ptr<CacheSet>> CacheSet::Create(const ServerConfig& config,
                                                           const DevicePlan& plan,
                                                           std::shared_ptr<Clock> clock) {
  std::vector<std::unique_ptr<kvcache::KvCache>> caches;
  for (size_t i = 0; i < plan.ids.size(); ++i) {
    kvcache::CacheConfig c;
    c.num_layers = config.model.num_layers;
    c.num_kv_heads = config.model.num_kv_heads;
    c.head_dim = config.model.head_dim;
    c.dtype = config.model.dtype;
    c.page_size = config.model.page_size;
    c.backend = plan.cuda ? kvcache::Backend::kCuda : kvcache::Backend::kCpu;
    c.device = plan.cuda ? plan.ids[i] : 0;
    c.budget = Budget(config, plan.cuda);
    c.max_context = config.max_context;
    c.swap_budget_bytes = config.swap_bytes;
    c.clock = [clock] { return clock->Now(); };
    absl::StatusOr<std::unique_ptr<kvcache::KvCache>> cache = kvcache::KvCache::Create(c);
    if (!cache.ok()) {
      return absl::Status(cache.status().code(),
                          "device " + std::to_string(plan.ids[i]) +
                              ": KV cache: " + std::string(cache.status().message()));
    }
    caches.push_back(*std::move(cache));
  }
  return std::unique_ptr<CacheSet>(new CacheSet(plan, std::move(caches), config.model.page_size,
                                                config.limits.max_sequences));
}

int CacheSet::LeastLoadedDevice() const {
  // Fewest blocks in use relative to the pool, then fewest sequences: blocks are what runs out.
  int best = 0;
  double best_load = 2.0;
  for (int d = 0; d < num_devices(); ++d) {
    const kvcache::CacheStats stats = caches_[d]->GetStats();
    const double load =
        stats.blocks_total > 0 ? double(stats.blocks_used) / double(stats.blocks_total) : 1.0;
    if (load < best_load ||
        (load == best_load && sequences_per_device_[d] < sequences_per_device_[best])) {
      best = d;
      best_load = load;
    }
  }
  return best;
}

absl::StatusOr<int> CacheSet::CreateSequence(const Tenant& tenant, absl::string_view id,
                                             absl::Span<const int64_t> prompt) {
  MutexLock lock(&mu_);
  if (device_of_.contains(id)) {
    return absl::AlreadyExistsError("sequence '" + std::string(id) + "' already exists");
  }
  if (absl::Status s = ledger_.CheckNewSequence(tenant); !s.ok()) return s;
  const int device = LeastLoadedDevice();
  kvcache::SequenceOptions options;
  options.prompt_token_ids = prompt;
  options.tenant = tenant.name;  // prefix-cache blocks are shared within a tenant only
  absl::StatusOr<int> cached = caches_[device]->CreateSequence(id, options);
  if (!cached.ok()) return cached.status();
  if (absl::Status s = ledger_.AddSequence(tenant, std::string(id), *cached); !s.ok()) {
    (void)caches_[device]->FreeSequence(id);
    return s;
  }
  device_of_.emplace(std::string(id), Placement{device});
  ++sequences_per_device_[device];
  return cached;
}

absl::Status CacheSet::ForkSequence(const Tenant& tenant, absl::string_view parent,
                                   absl::string_view child) {
  MutexLock lock(&mu_);
  const auto it = device_of_.find(parent);
  if (it == device_of_.end()) {
    return absl::NotFoundError("parent sequence '" + std::string(parent) + "' does not exist");
  }
  if (device_of_.contains(child)) {
    return absl::AlreadyExistsError("sequence '" + std::string(child) + "' already exists");
  }
  const int device = it->second.device;
  if (absl::Status s = ledger_.CheckNewSequence(tenant); !s.ok()) return s;
  if (absl::Status s = caches_[device]->ForkSequence(parent, child); !s.ok()) return s;
  // The child's length is the parent's committed one, as the cache has it.
  absl::StatusOr<kvcache::SequenceInfo> info = caches_[device]->GetSequence(child);
  const int64_t length =
      info.ok() && !info->layer_lengths.empty() ? info->layer_lengths[0] : 0;
  if (absl::Status s = ledger_.AddSequence(tenant, std::string(child), length); !s.ok()) {
    (void)caches_[device]->FreeSequence(child);
    return s;
  }
  device_of_.emplace(std::string(child), Placement{device});
  ++sequences_per_device_[device];
  return absl::OkStatus();
}

absl::Status CacheSet::FreeSequence(absl::string_view id) {
  MutexLock lock(&mu_);
  const auto it = device_of_.find(id);
  if (it == device_of_.end()) {
    return absl::NotFoundError("sequence '" + std::string(id) + "' does not exist");
  }
  const int device = it->second.device;
  if (absl::Status s = caches_[device]->FreeSequence(id); !s.ok()) return s;
  ledger_.RemoveSequence(id);
  device_of_.erase(it);
  --sequences_per_device_[device];
  return absl::OkStatus();
}

std::optional<int> CacheSet::DeviceOf(absl::string_view id) const {
  MutexLock lock(&mu_);
  const auto it = device_of_.find(id);
  if (it == device_of_.end()) return std::nullopt;
  return it->second.device;
}

std::optional<std::pair<size_t, size_t>> CacheSet::DevicesOf(absl::Span<const std::string> ids,
                                                             std::vector<int>* devices) const {
  devices->resize(ids.size());
  std::optional<std::pair<size_t, size_t>> repeat;
  MutexLock lock(&mu_);
  const uint64_t lookup = ++lookups_;
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto it = device_of_.find(ids[i]);
    if (it == device_of_.end()) {
      (*devices)[i] = -1;
      continue;
    }
    const Placement& p = it->second;
    (*devices)[i] = p.device;
    if (p.seen_by == lookup && !repeat.has_value()) repeat.emplace(p.seen_at, i);
    p.seen_by = lookup;
    p.seen_at = i;
  }
  return repeat;
}

std::vector<std::string> CacheSet::ExpireIdle(absl::Time now, absl::Duration ttl) {
  MutexLock lock(&mu_);
  std::vector<std::string> expired;
  for (int d = 0; d < num_devices(); ++d) {
    for (std::string& id : caches_[d]->ExpireIdle(now, ttl)) {
      ledger_.RemoveSequence(id);
      device_of_.erase(id);
      --sequences_per_device_[d];
      expired.push_back(std::move(id));
    }
  }
  return expired;
}

absl::StatusOr<LedgerReservation> CacheSet::ReserveStep(
    const Tenant& tenant, absl::Span<const std::pair<std::string, int64_t>> entries) {
  MutexLock lock(&mu_);
  return ledger_.Reserve(tenant, entries);
}

void CacheSet::SettleStep(const LedgerReservation& reservation, bool committed) {
  MutexLock lock(&mu_);
  ledger_.Settle(reservation, committed);
}

TenantUsage CacheSet::Usage(absl::string_view tenant) const {
  MutexLock lock(&mu_);
  return ledger_.Usage(tenant);
}

std::vector<std::pair<std::string, TenantUsage>> CacheSet::AllUsage() const {
  MutexLock lock(&mu_);
  return ledger_.AllUsage();
}

int64_t CacheSet::num_sequences(int device) const {
  MutexLock lock(&mu_);
  return sequences_per_device_[device];
}

}  // namespace flashkv::server

#pragma once

// The batch scheduler of one device. Step parts queue here in arrival order (the same order on
// every device: the service enqueues a step's parts under one lock). One thread forms launches:
//
// - Per sequence, steps apply in arrival order: a part waits while an earlier part (queued or
//   still unresolved) names one of its sequences.
// - A launch holds parts of one layer: the layer of the longest-waiting part of the tenant whose
//   turn it is (tenant_shares.h: fair queuing on tokens between tenants; with one tenant, simply
//   the part that has waited longest). Parts join in waiting order until the token budget
//   (max_batch_tokens) is used; when it is over-subscribed, it is split fairly between the
//   tenants. A part contributes a window of at most prefill_chunk_tokens rows per launch; a longer
//   one stays active and joins later launches, behind work that arrived meanwhile, so decodes
//   never wait behind a whole long prefill. A part's kvcache batch is prepared (every block
//   reserved) when it first joins a launch and stays pending until its step resolves: see step.h
//   for all-or-nothing.
// - Batching window: with no part already computing and fewer waiting tokens than the budget,
//   the thread waits until the oldest waiting part is batch_window old (zero: not at all).
// - A part whose step is cancelled or failed elsewhere stops at the next launch boundary.
// - A decode pass's step (decode_pass.h) launches alone and whole, when its tenant leads; a
//   pass's layer step waits until the pass computed every layer before it.
//
// Ownership: does not own the cache, metrics or clock. Thread-safety: Enqueue, Wake and
// ReleasePart from any thread. Lifetime: the destructor fails whatever is still queued with
// UNAVAILABLE and joins the thread; every step must resolve before the caches are destroyed.

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "flashkv/base/mutex.h"
#include "flashkv/kvcache/kv_cache.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/config.h"
#include "flashkv/server/launch.h"
#include "flashkv/server/metrics.h"
#include "flashkv/server/step.h"
#include "flashkv/server/tenant_shares.h"

namespace flashkv::server {

struct SchedulerCounters {
  uint64_t launches = 0;
  uint64_t entries = 0;  // sequences over all launches
  uint64_t tokens = 0;
  uint64_t max_entries = 0;
  uint64_t parts_completed = 0;
  uint64_t queued = 0;  // parts waiting or partly computed, now
};

class DeviceScheduler final : public PartReleaser {
 public:
  // `device` is the index in the CacheSet, `device_id` its public id (for metrics and logs).
  static absl::StatusOr<std::unique_ptr<DeviceScheduler>> Create(
      int device, int device_id, bool cuda, kvcache::KvCache* cache, const ModelShape& model,
      const SchedulerConfig& config, std::shared_ptr<Clock> clock, Metrics* metrics);
  ~DeviceScheduler() override;

  // Returns true when the part was claimed for an inline launch (`may_claim`: the step has no
  // other part); the caller must then call RunClaimed(), holding no lock.
  bool Enqueue(std::shared_ptr<StepState> step, StepPart* part, bool may_claim = false);
  void RunClaimed();
  // Re-examines the queues now (after a cancellation).
  void Wake();
  void ReleasePart(const StepPart& part) override;
  SchedulerCounters counters() const;

 private:
  struct Item {
    std::shared_ptr<StepState> step;
    StepPart* part;
  };
  struct Plan {
    int layer = -1;
    std::vector<Item> fresh;  // to prepare
    std::vector<LaunchWindow> windows;
    std::vector<Item> items;  // every part in the launch, fresh ones included
  };

  DeviceScheduler(int device, int device_id, kvcache::KvCache* cache, const ModelShape& model,
                  const SchedulerConfig& config, std::shared_ptr<Clock> clock, Metrics* metrics,
                  std::unique_ptr<LaunchArena> arena);
  void Loop();
  // Under mu_: takes doomed parts out (into `finished`), then plans the next launch. Returns
  // false to wait: nothing to do, or the batching window asks to wait until `*wake_at`.
  bool PlanLaunch(Plan* plan, std::vector<Item>* doomed, absl::Time* wake_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A decode pass's step (decode_pass.h) launches alone: `plan` gets only `item`, taken out of
  // pending_ at `pending_index`, its sequences (a begin step's) busy until the pass ends.
  void PlanAlone(const Item& item, size_t pending_index, const std::string& tenant, Plan* plan)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Execute(Plan& plan);
  // Begin (prepare the pass over every layer) or next layer, then the launch with the pass's
  // metadata; a failure aborts the pass.
  void ExecutePass(const Item& item);
  // Tells the fair shares which tenants have parts queued (pending or active).
  void RetainWaitingTenants() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A launch's entries and tokens in the scheduler's counters.
  void CountLaunch(const LaunchSummary& summary) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Report(const Item& item, absl::Status status);
  void ReportDoomed(const std::vector<Item>& doomed, bool stopping);
  // Tells the scheduler thread to look again (work queued, sequences released, a launch done).
  void Poke();

  const int device_;
  const int device_id_;
  kvcache::KvCache* const cache_;
  const ModelShape model_;
  const SchedulerConfig config_;
  const std::shared_ptr<Clock> clock_;
  Metrics* const metrics_;
  // Used by whichever thread runs the current launch (executing_).
  const std::unique_ptr<LaunchArena> arena_;

  mutable Mutex mu_;
  std::deque<Item> pending_ ABSL_GUARDED_BY(mu_);  // not yet in a launch, arrival order
  std::vector<Item> active_ ABSL_GUARDED_BY(mu_);  // prepared, rows left
  // Sequences of started parts. A part starts only when none of its sequences is here, so each
  // id is held by one part at a time, and the key views that part's own id (StepPart::
  // sequence_ids), valid until ReleasePart takes it out: no copy of the id per entry and launch.
  absl::flat_hash_set<absl::string_view> busy_ ABSL_GUARDED_BY(mu_);
  bool executing_ ABSL_GUARDED_BY(mu_) = false;   // a launch is planned and running
  // The inline launch Enqueue claimed: written under mu_ as executing_ is set, then used by the
  // claiming thread alone until it clears executing_.
  Plan claimed_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  SchedulerCounters counters_ ABSL_GUARDED_BY(mu_);
  TenantShares shares_ ABSL_GUARDED_BY(mu_);
  // The scheduler thread sleeps on wake_mu_, not on mu_: flashkv::Mutex wakes its waiters on
  // every unlock, and mu_ is also taken for counters and by inline launches, which would wake the
  // thread for nothing (each a pair of context switches on the request path). Lock order: mu_
  // before wake_mu_.
  Mutex wake_mu_;
  uint64_t wakes_ ABSL_GUARDED_BY(wake_mu_) = 0;  // bumped by Poke()
  std::thread thread_;
};

}  // namespace flashkv::server

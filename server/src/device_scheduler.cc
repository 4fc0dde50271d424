#include "flashkv/server/device_scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "flashkv/cuda_backend.h"
#include "flashkv/server/decode_pass.h"
#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

// kvcache names entries by their index in the batch it was given (this part's entries); the
// client knows them by their index in its request: entries[i], or batch.sequence_ids[i] for a
// batched request.
absl::Status InRequestTerms(absl::Status status, const StepPart& part) {
  const std::optional<int> index = kvcache::FailedEntryIndex(status);
  if (!index.has_value() || *index < 0 || *index >= static_cast<int>(part.entries().size())) {
    return status;
  }
  const std::string local = "entries[" + std::to_string(*index) + "]";
  std::string message(status.message());
  const std::string global = (part.step().batched() ? "batch.sequence_ids[" : "entries[") +
                             std::to_string(part.entries()[*index]) + "]";
  if (absl::StartsWith(message, local)) {
    message = global + message.substr(local.size());
  } else {
    message = global + ": " + message;
  }
  return absl::Status(status.code(), message);
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceScheduler>> DeviceScheduler::Create(
    int device, int device_id, bool cuda, kvcache::KvCache* cache, const ModelShape& model,
    const SchedulerConfig& config, std::shared_ptr<Clock> clock, Metrics* metrics) {
  absl::StatusOr<std::unique_ptr<LaunchArena>> arena = LaunchArena::Create(cuda, device_id);
  if (!arena.ok()) return arena.status();
  return std::unique_ptr<DeviceScheduler>(new DeviceScheduler(
      device, device_id, cache, model, config, std::move(clock), metrics, *std::move(arena)));
}

DeviceScheduler::DeviceScheduler(int device, int device_id, kvcache::KvCache* cache,
                                 const ModelShape& model, const SchedulerConfig& config,
                                 std::shared_ptr<Clock> clock, Metrics* metrics,
                                 std::unique_ptr<LaunchArena> arena)
    : device_(device),
      device_id_(device_id),
      cache_(cache),
      model_(model),
      config_(config),
      clock_(std::move(clock)),
      metrics_(metrics),
      arena_(std::move(arena)) {
  thread_ = std::thread([this] { Loop(); });
}

DeviceScheduler::~DeviceScheduler() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  Poke();
  thread_.join();
}

bool DeviceScheduler::Enqueue(std::shared_ptr<StepState> step, StepPart* part, bool may_claim) {
  const bool pass_layer = step->pass() != nullptr && !step->pass_begin();
  const bool small =
      part->total_rows() <= config_.inline_launch_tokens ||
      (pass_layer && arena_->cuda() && part->total_rows() <= config_.inline_pass_tokens);
  std::vector<Item> doomed;
  bool claimed = false;
  {
    MutexLock lock(&mu_);
    pending_.push_back(Item{std::move(step), part});
    if (may_claim && small && !stopping_ && !executing_ && active_.empty() &&
        pending_.size() == 1 && config_.batch_window == absl::ZeroDuration()) {
      claimed_ = Plan();
      absl::Time wake_at = absl::InfiniteFuture();
      claimed = PlanLaunch(&claimed_, &doomed, &wake_at);
      executing_ = claimed;
    }
  }
  // A claimed part needs nobody else; anything else wakes the scheduler thread.
  if (!claimed) Poke();
  ReportDoomed(doomed, /*stopping=*/false);
  return claimed;
}

void DeviceScheduler::RunClaimed() {
  // The scheduler thread selected its device once; this thread may serve several devices.
  if (arena_->cuda()) (void)cuda::SetDevice(device_id_);
  Execute(claimed_);
  claimed_ = Plan();
  bool waiting;
  {
    MutexLock lock(&mu_);
    executing_ = false;
    waiting = !pending_.empty() || !active_.empty();
  }
  if (waiting) Poke();  // the scheduler thread takes whatever arrived meanwhile
}

void DeviceScheduler::Wake() { Poke(); }

void DeviceScheduler::Poke() {
  MutexLock lock(&wake_mu_);
  ++wakes_;
}

void DeviceScheduler::ReleasePart(const StepPart& part) {
  bool waiting;
  {
    MutexLock lock(&mu_);
    if (part.holds_sequences) {
      for (absl::string_view id : part.sequence_ids()) {
        auto it = busy_.find(id);
        // Only the holder's own view is erased (the map's key must not outlive it).
        if (it != busy_.end() && it->data() == id.data()) busy_.erase(it);
      }
    }
    waiting = !pending_.empty() || !active_.empty();
  }
  // Released sequences matter only to parts that wait (a poke for nothing costs the scheduler
  // thread a wake-up).
  if (waiting) Poke();
}

SchedulerCounters DeviceScheduler::counters() const {
  MutexLock lock(&mu_);
  SchedulerCounters c = counters_;
  c.queued = pending_.size() + active_.size();
  return c;
}

void DeviceScheduler::Report(const Item& item, absl::Status status) {
  item.step->ReportPart(item.part, std::move(status));
}

void DeviceScheduler::ReportDoomed(const std::vector<Item>& doomed, bool stopping) {
  for (const Item& item : doomed) {
    Report(item, stopping                 ? absl::UnavailableError("the server is shutting down")
                 : item.step->cancelled() ? absl::CancelledError("the call was cancelled")
                                          : absl::AbortedError("another part of the step failed"));
  }
}

void DeviceScheduler::RetainWaitingTenants() {
  absl::flat_hash_set<absl::string_view> seen;
  std::vector<absl::string_view> waiting;
  auto add = [&](const Item& item) {
    if (seen.insert(item.step->tenant()).second) waiting.push_back(item.step->tenant());
  };
  for (const Item& item : pending_) add(item);
  for (const Item& item : active_) add(item);
  shares_.Retain(waiting);
}

bool DeviceScheduler::PlanLaunch(Plan* plan, std::vector<Item>* doomed, absl::Time* wake_at) {
  auto is_doomed = [](const Item& item) { return item.step->doomed(); };
  for (const Item& item : pending_) {
    if (is_doomed(item)) doomed->push_back(item);
  }
  for (const Item& item : active_) {
    if (is_doomed(item)) doomed->push_back(item);
  }
  if (!doomed->empty()) {
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(), is_doomed), pending_.end());
    active_.erase(std::remove_if(active_.begin(), active_.end(), is_doomed), active_.end());
    return false;
  }

  RetainWaitingTenants();

  // Parts that may start: none of their sequences is held by a started part or named by an
  // earlier waiting one.
  absl::flat_hash_set<absl::string_view> claimed;
  std::vector<size_t> eligible;
  for (size_t i = 0; i < pending_.size(); ++i) {
    // A decode pass's layer step names no sequence; it waits for the pass's layers before it.
    const StepState& step = *pending_[i].step;
    if (step.pass() != nullptr && !step.pass_begin()) {
      if (step.pass()->ReadyFor(static_cast<int>(step.layer()))) eligible.push_back(i);
      continue;
    }
    bool free = true;
    // The last waiting part's ids need not be remembered: no later part looks for them (and with
    // one part waiting, the usual case, this is a lookup in `busy_` per entry and nothing else).
    const bool last = i + 1 == pending_.size();
    for (absl::string_view id : pending_[i].part->sequence_ids()) {
      if (busy_.contains(id) || (last ? claimed.contains(id) : !claimed.insert(id).second)) {
        free = false;
      }
    }
    if (free) eligible.push_back(i);
  }
  if (active_.empty() && eligible.empty()) return false;

  // Candidates in waiting order; their tenants ranked by fair share (tenant_shares.h).
  struct Candidate {
    Item item;
    bool fresh;
    size_t pending_index;
    size_t tenant;  // index in `ranked`
  };
  std::vector<Candidate> candidates;
  for (const Item& item : active_) candidates.push_back({item, false, 0, 0});
  for (size_t i : eligible) candidates.push_back({pending_[i], true, i, 0});
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& a, const Candidate& b) {
                     return a.item.part->ready_time < b.item.part->ready_time;
                   });
  std::vector<absl::string_view> eligible_tenants;
  absl::flat_hash_map<absl::string_view, size_t> tenant_index;
  for (const Candidate& c : candidates) {
    if (tenant_index.emplace(c.item.step->tenant(), 0).second) {
      eligible_tenants.push_back(c.item.step->tenant());
    }
  }
  const std::vector<std::string> ranked = shares_.Rank(eligible_tenants);
  for (size_t t = 0; t < ranked.size(); ++t) tenant_index[ranked[t]] = t;
  for (Candidate& c : candidates) c.tenant = tenant_index.at(c.item.step->tenant());
  // The most deserving tenant leads: the layer of its longest-waiting part.
  const Candidate& lead = *std::find_if(candidates.begin(), candidates.end(),
                                        [](const Candidate& c) { return c.tenant == 0; });
  const int layer = static_cast<int>(lead.item.step->layer());
  if (lead.item.step->pass() != nullptr) {
    // A pass step is a whole batch already: it launches alone, at once, all its rows.
    PlanAlone(lead.item, lead.pending_index, ranked.front(), plan);
    return true;
  }
  auto at_layer = [layer](const Candidate& c) {
    return static_cast<int>(c.item.step->layer()) == layer && c.item.step->pass() == nullptr;
  };
  // The rows a part asks of this launch.
  auto wanted = [this](const StepPart& part) {
    return std::min<int64_t>(part.total_rows() - part.rows_done, config_.prefill_chunk_tokens);
  };

  if (active_.empty() && config_.batch_window > absl::ZeroDuration()) {
    int64_t waiting_rows = 0;
    bool urgent = false;
    absl::Time oldest = absl::InfiniteFuture();
    for (const Candidate& c : candidates) {
      if (!at_layer(c)) continue;
      waiting_rows += c.item.part->total_rows();
      urgent = urgent || c.item.step->urgent();
      oldest = std::min(oldest, c.item.part->ready_time);
    }
    const absl::Time launch_at = oldest + config_.batch_window;
    if (!urgent && waiting_rows < config_.max_batch_tokens && clock_->Now() < launch_at) {
      *wake_at = launch_at;
      return false;
    }
  }

  // The budget split between the tenants at this layer; each takes its parts in waiting order.
  std::vector<int64_t> demand(ranked.size(), 0);
  for (const Candidate& c : candidates) {
    if (at_layer(c)) demand[c.tenant] += wanted(*c.item.part);
  }
  std::vector<int64_t> allotted = TenantShares::Split(demand, config_.max_batch_tokens);
  std::vector<int64_t> given(ranked.size(), 0);
  std::vector<bool> taken(pending_.size(), false);
  for (const Candidate& c : candidates) {
    if (!at_layer(c)) continue;
    StepPart* part = c.item.part;
    const int64_t want = wanted(*part);
    const int64_t rows = std::min(want, allotted[c.tenant] - given[c.tenant]);
    if (want > 0 && rows == 0) continue;  // (a part with no rows left joins to complete)
    given[c.tenant] += rows;
    plan->windows.push_back(LaunchWindow{part, part->rows_done, part->rows_done + rows});
    plan->items.push_back(c.item);
    if (c.fresh) {
      taken[c.pending_index] = true;
      part->holds_sequences = true;
      for (absl::string_view id : part->sequence_ids()) busy_.insert(id);
      plan->fresh.push_back(c.item);
    } else {
      active_.erase(std::find_if(active_.begin(), active_.end(),
                                 [part](const Item& i) { return i.part == part; }));
    }
  }
  for (size_t t = 0; t < ranked.size(); ++t) shares_.Charge(ranked[t], given[t]);
  shares_.Led(ranked.front());
  std::deque<Item> still_pending;
  for (size_t i = 0; i < pending_.size(); ++i) {
    if (!taken[i]) still_pending.push_back(std::move(pending_[i]));
  }
  pending_.swap(still_pending);
  plan->layer = layer;
  return true;
}

void DeviceScheduler::PlanAlone(const Item& item, size_t pending_index, const std::string& tenant,
                                Plan* plan) {
  StepPart* part = item.part;
  plan->layer = static_cast<int>(item.step->layer());
  plan->windows.push_back(LaunchWindow{part, 0, part->total_rows()});
  plan->items.push_back(item);
  plan->fresh.push_back(item);
  part->holds_sequences = true;
  for (absl::string_view id : part->sequence_ids()) busy_.insert(id);
  shares_.Charge(tenant, part->total_rows());
  shares_.Led(tenant);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(pending_index));
}

void DeviceScheduler::Loop() {
  if (arena_->cuda()) {
    if (KernelStatus s = cuda::SetDevice(device_id_); !s.ok()) {
      spdlog::error("device {}: scheduler cannot select its device: {}", device_id_, s.ToString());
    }
  }
  for (;;) {
    Plan plan;
    std::vector<Item> doomed;
    bool stop = false;
    for (;;) {
      // Pokes from here on are seen: planning below and the wait after it cannot miss one.
      uint64_t seen;
      {
        MutexLock lock(&wake_mu_);
        seen = wakes_;
      }
      absl::Time wake_at = absl::InfiniteFuture();
      {
        MutexLock lock(&mu_);
        // An inline launch still running holds the arena: shutting down waits for it.
        if (stopping_ && !executing_) {
          doomed.assign(pending_.begin(), pending_.end());
          doomed.insert(doomed.end(), active_.begin(), active_.end());
          pending_.clear();
          active_.clear();
          stop = true;
          break;
        }
        // While an inline launch runs, wait for it (it pokes when done).
        if (!executing_ && !stopping_ &&
            (PlanLaunch(&plan, &doomed, &wake_at) || !doomed.empty())) {
          executing_ = plan.layer >= 0;
          break;
        }
      }
      MutexLock lock(&wake_mu_);
      auto poked = [this, seen]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(wake_mu_) { return wakes_ != seen; };
      clock_->AwaitWithDeadline(&wake_mu_, poked, wake_at);
    }
    ReportDoomed(doomed, stop);
    if (stop) return;
    if (plan.layer >= 0) {
      Execute(plan);
      MutexLock lock(&mu_);
      executing_ = false;
    }
  }
}

void DeviceScheduler::CountLaunch(const LaunchSummary& summary) {
  ++counters_.launches;
  counters_.entries += summary.entries;
  counters_.tokens += summary.tokens;
  counters_.max_entries = std::max<uint64_t>(counters_.max_entries, summary.entries);
}

void DeviceScheduler::ExecutePass(const Item& item) {
  StepPart* part = item.part;
  DecodePass& pass = *item.step->pass();
  const int layer = static_cast<int>(item.step->layer());
  const absl::Time started = clock_->Now();
  part->first_launch = started;
  metrics_->RecordQueueWait(started - item.step->received());
  if (layer == 0) {
    if (absl::Status s = pass.Prepare(part->batch_entries()); !s.ok()) {
      s = InRequestTerms(s, *part);
      pass.Abort(s);
      Report(item, s);
      return;
    }
  }
  absl::StatusOr<const kvcache::LayerBatch*> batch = pass.Acquire(layer);
  if (!batch.ok()) {
    Report(item, batch.status());
    return;
  }
  absl::Status uploaded;
  if (layer == 0) {
    uploaded = pass.UploadMetadata(**batch, arena_->cuda(), device_id_, arena_->stream());
  }
  absl::StatusOr<LaunchSummary> summary =
      uploaded.ok() ? RunPassLaunch(model_, **batch, layer, pass.metadata(), *part,
                                    pass.attention_plan(), arena_.get())
                    : absl::StatusOr<LaunchSummary>(uploaded);
  const absl::Duration elapsed = clock_->Now() - started;
  pass.Release(layer, summary.ok());
  if (!summary.ok()) {
    spdlog::warn("device {} layer {}: pass {} launch failed: {}", device_id_, layer, pass.id(),
                 summary.status().ToString());
    pass.Abort(summary.status());
    Report(item, summary.status());
    return;
  }
  metrics_->RecordBatch(device_id_, summary->entries, summary->tokens, elapsed);
  {
    MutexLock lock(&mu_);
    part->rows_done = part->total_rows();
    part->kernel_time += summary->kernel_time;
    part->launch_time += elapsed;
    CountLaunch(*summary);
    ++counters_.parts_completed;
    RetainWaitingTenants();
  }
  Report(item, absl::OkStatus());
}

void DeviceScheduler::Execute(Plan& plan) {
  if (plan.items.size() == 1 && plan.items[0].step->pass() != nullptr) {
    ExecutePass(plan.items[0]);
    return;
  }
  const absl::Time prepared_at = clock_->Now();
  std::vector<std::pair<Item, absl::Status>> failed;
  for (const Item& item : plan.fresh) {
    StepPart* part = item.part;
    absl::StatusOr<kvcache::LayerBatch> batch =
        cache_->PrepareLayerBatch(plan.layer, part->batch_entries());
    if (!batch.ok()) {
      failed.emplace_back(item, InRequestTerms(batch.status(), *part));
      continue;
    }
    part->batch.emplace(*std::move(batch));
    part->first_launch = prepared_at;
    metrics_->RecordQueueWait(prepared_at - item.step->received());
  }
  std::vector<LaunchWindow> windows;
  std::vector<Item> launched;
  for (size_t i = 0; i < plan.windows.size(); ++i) {
    if (plan.items[i].part->prepared()) {
      windows.push_back(plan.windows[i]);
      launched.push_back(plan.items[i]);
    }
  }
  absl::Status launch_status;
  absl::Duration kernel_time;
  if (!windows.empty()) {
    const absl::Time start = absl::Now();
    absl::StatusOr<LaunchSummary> summary =
        RunLaunch(model_, windows, cache_->layer_pools(plan.layer), arena_.get());
    const absl::Duration elapsed = absl::Now() - start;
    launch_status = summary.status();
    if (summary.ok()) {
      kernel_time = summary->kernel_time;
      metrics_->RecordBatch(device_id_, summary->entries, summary->tokens, elapsed);
      spdlog::trace("device {} layer {}: {} sequences, {} tokens in {}", device_id_, plan.layer,
                    summary->entries, summary->tokens, absl::FormatDuration(elapsed));
      MutexLock lock(&mu_);
      CountLaunch(*summary);
    } else {
      spdlog::warn("device {} layer {}: launch failed: {}", device_id_, plan.layer,
                   launch_status.ToString());
    }
  }
  std::vector<Item> completed;
  {
    const absl::Time now = clock_->Now();
    const absl::Duration round = now - prepared_at;  // preparation, staging, kernels
    MutexLock lock(&mu_);
    for (size_t i = 0; i < windows.size(); ++i) {
      if (!launch_status.ok()) {
        failed.emplace_back(launched[i], launch_status);
        continue;
      }
      StepPart* part = windows[i].part;
      part->rows_done = windows[i].end;
      part->kernel_time += kernel_time;
      part->launch_time += round;
      if (part->rows_done == part->total_rows()) {
        completed.push_back(launched[i]);
        ++counters_.parts_completed;
      } else {
        part->ready_time = now;  // behind whatever arrived meanwhile
        active_.push_back(launched[i]);
      }
    }
    // Before the completed steps are answered: a tenant whose last part completed is forgotten
    // by the time its next request can arrive.
    RetainWaitingTenants();
  }
  for (auto& [item, status] : failed) Report(item, status);
  for (const Item& item : completed) Report(item, absl::OkStatus());
}

}  // namespace flashkv::server

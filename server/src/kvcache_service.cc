#include "flashkv/server/kvcache_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "flashkv/base/handoff.h"
#include "flashkv/server/status.h"
#include "flashkv/server/step_request.h"
#include "flashkv/server/step_stream.h"
#include "flashkv/wire/messages.h"

namespace flashkv::server {
namespace {

namespace v1 = flashkv::v1;

// A fork whose parent is in a running step waits for the step to end (it answers ABORTED only
// past this, or the call's deadline).
constexpr absl::Duration kForkWaitLimit = absl::Seconds(30);

// Unary Step: the step's completion finishes the call; a cancellation cancels the step.
class StepReactor final : public grpc::ServerUnaryReactor {
 public:
  StepReactor(KvCacheService* service, std::shared_ptr<const Tenant> tenant,
              grpc::ByteBuffer* response)
      : service_(service),
        tenant_(std::move(tenant)),
        response_(response),
        start_(service->clock().Now()) {
    service_->metrics().CallStarted("Step");
  }

  void Start(const grpc::ByteBuffer& request) {
    absl::StatusOr<std::shared_ptr<StepState>> step = service_->NewStep(
        request, *tenant_, start_,
        [this](const absl::Status& status, grpc::ByteBuffer r) { Complete(status, std::move(r)); });
    if (!step.ok()) {
      Complete(step.status(), grpc::ByteBuffer());
      return;
    }
    {
      MutexLock lock(&mu_);
      step_ = *step;
    }
    service_->Submit(*step);
  }

  void OnCancel() override {
    TakeBack(this);  // gRPC's reactions take the reactor back (flashkv/base/handoff.h)
    std::shared_ptr<StepState> step;
    {
      MutexLock lock(&mu_);
      step = step_;
    }
    if (step != nullptr) service_->Cancel(*step);
  }

  void OnDone() override {
    TakeBack(this);
    delete this;
  }

 private:
  void Complete(const absl::Status& status, grpc::ByteBuffer response) {
    *response_ = std::move(response);
    const grpc::Status grpc_status = ToGrpcStatus(UnscopeStatus(status, *tenant_));
    service_->metrics().CallFinished("Step");
    service_->metrics().RecordRpc("Step", grpc_status.error_code(),
                                  service_->clock().Now() - start_);
    spdlog::debug("Step: {}", status.ok() ? "OK" : status.ToString());
    HandOff(this);
    Finish(grpc_status);
  }

  KvCacheService* const service_;
  const std::shared_ptr<const Tenant> tenant_;
  grpc::ByteBuffer* const response_;
  const absl::Time start_;
  Mutex mu_;
  std::shared_ptr<StepState> step_ ABSL_GUARDED_BY(mu_);
};

// A StepStream refused before it starts (its call could not authenticate).
class RefusedStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) {
    HandOff(this);
    Finish(status);
  }
  void OnDone() override {
    TakeBack(this);
    delete this;
  }
};

}  // namespace

KvCacheService::KvCacheService(const ServerConfig& config, Executor* executor, Metrics* metrics,
                               std::shared_ptr<Clock> clock, const Authenticator* auth,
                               const RegionRegistry* regions)
    : config_(config),
      executor_(executor),
      metrics_(metrics),
      clock_(std::move(clock)),
      auth_(auth),
      regions_(regions) {}

void KvCacheService::Attach(CacheSet* caches, std::vector<DeviceScheduler*> schedulers) {
  caches_ = caches;
  schedulers_ = std::move(schedulers);
  for (DeviceScheduler* s : schedulers_) releasers_.push_back(s);
  attached_.store(true, std::memory_order_release);
}

absl::Status KvCacheService::Ready() const {
  if (attached_.load(std::memory_order_acquire)) return absl::OkStatus();
  return absl::UnavailableError("the server is starting: its KV caches are not ready yet");
}

KvCacheService::~KvCacheService() = default;

void KvCacheService::FinishUnary(grpc::ServerUnaryReactor* reactor, const char* rpc,
                                 absl::Time start, const absl::Status& status,
                                 const Tenant* tenant) {
  const grpc::Status grpc_status =
      ToGrpcStatus(tenant != nullptr ? UnscopeStatus(status, *tenant) : status);
  metrics_->RecordRpc(rpc, grpc_status.error_code(), clock_->Now() - start);
  spdlog::debug("{}: {}", rpc, status.ok() ? "OK" : status.ToString());
  reactor->Finish(grpc_status);
}

grpc::ServerUnaryReactor* KvCacheService::GetCacheInfo(grpc::CallbackServerContext* context,
                                                       const v1::GetCacheInfoRequest*,
                                                       v1::CacheInfo* response) {
  const absl::Time start = clock_->Now();
  auto* reactor = context->DefaultReactor();
  absl::Status s = auth_->Authenticate(*context).status();
  if (s.ok()) s = Ready();
  if (!s.ok()) {
    FinishUnary(reactor, "GetCacheInfo", start, s);
    return reactor;
  }
  const ModelShape& m = config_.model;
  response->set_num_layers(m.num_layers);
  response->set_num_q_heads(m.num_q_heads);
  response->set_num_kv_heads(m.num_kv_heads);
  response->set_head_dim(m.head_dim);
  response->set_dtype(static_cast<v1::DType>(static_cast<int>(m.dtype)));
  response->set_page_size(m.page_size);
  int max_context = 0;
  for (int d = 0; d < caches_->num_devices(); ++d) {
    const kvcache::CacheStats s = caches_->cache(d).GetStats();
    response->set_blocks_total(response->blocks_total() + s.blocks_total);
    // As the proto says: cached blocks are free blocks that still hold a reusable prefix.
    response->set_blocks_free(response->blocks_free() + s.blocks_free + s.blocks_cached);
    response->set_blocks_cached(response->blocks_cached() + s.blocks_cached);
    const int device_context = caches_->cache(d).max_context();
    max_context = d == 0 ? device_context : std::min(max_context, device_context);
  }
  response->set_max_context(max_context);
  response->set_num_devices(caches_->num_devices());
  response->set_backend(caches_->cuda() ? "cuda" : "cpu");
  FinishUnary(reactor, "GetCacheInfo", start, absl::OkStatus());
  return reactor;
}

grpc::ServerUnaryReactor* KvCacheService::CreateSequence(grpc::CallbackServerContext* context,
                                                         const v1::CreateSequenceRequest* request,
                                                         v1::CreateSequenceResponse* response) {
  const absl::Time start = clock_->Now();
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  absl::Status status = tenant.status();
  if (status.ok()) status = Ready();
  if (status.ok()) status = CheckSequenceId(request->sequence_id(), "sequence_id");
  if (status.ok()) {
    absl::StatusOr<int> cached = caches_->CreateSequence(
        **tenant, ScopedSequenceId(**tenant, request->sequence_id()),
        absl::MakeConstSpan(request->token_ids().data(), request->token_ids().size()));
    status = cached.status();
    if (cached.ok()) response->set_cached_tokens(static_cast<uint32_t>(*cached));
  }
  FinishUnary(reactor, "CreateSequence", start, status, tenant.ok() ? tenant->get() : nullptr);
  return reactor;
}

grpc::ServerUnaryReactor* KvCacheService::ForkSequence(grpc::CallbackServerContext* context,
                                                       const v1::ForkSequenceRequest* request,
                                                       v1::ForkSequenceResponse*) {
  const absl::Time start = clock_->Now();
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  absl::Status status = tenant.status();
  if (status.ok()) status = Ready();
  if (status.ok()) status = CheckSequenceId(request->parent_id(), "parent_id");
  if (status.ok()) status = CheckSequenceId(request->child_id(), "child_id");
  if (!status.ok()) {
    FinishUnary(reactor, "ForkSequence", start, status);
    return reactor;
  }
  // The parent may be in a step that is still running; the fork then waits for it to resolve
  // (on the executor, not a gRPC thread).
  const bool queued = executor_->TrySubmit([this, context, reactor, request, start,
                                            tenant = *std::move(tenant)] {
    const absl::Time give_up =
        std::min(absl::FromChrono(context->deadline()), absl::Now() + kForkWaitLimit);
    const std::string parent = ScopedSequenceId(*tenant, request->parent_id());
    const std::string child = ScopedSequenceId(*tenant, request->child_id());
    absl::Duration pause = absl::Microseconds(100);
    absl::Status s;
    for (;;) {
      s = caches_->ForkSequence(*tenant, parent, child);
      if (!absl::IsAborted(s) || context->IsCancelled() || absl::Now() + pause > give_up) break;
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Milliseconds(10));
    }
    FinishUnary(reactor, "ForkSequence", start, s, tenant.get());
  });
  if (!queued) {
    FinishUnary(reactor, "ForkSequence", start,
                absl::ResourceExhaustedError("the server's work queue is full; retry later"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* KvCacheService::FreeSequence(grpc::CallbackServerContext* context,
                                                       const v1::FreeSequenceRequest* request,
                                                       v1::FreeSequenceResponse*) {
  const absl::Time start = clock_->Now();
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  absl::Status status = tenant.status();
  if (status.ok()) status = Ready();
  if (status.ok()) status = CheckSequenceId(request->sequence_id(), "sequence_id");
  if (status.ok()) {
    status = caches_->FreeSequence(ScopedSequenceId(**tenant, request->sequence_id()));
  }
  FinishUnary(reactor, "FreeSequence", start, status, tenant.ok() ? tenant->get() : nullptr);
  return reactor;
}

grpc::ServerUnaryReactor* KvCacheService::Step(grpc::CallbackServerContext* context,
                                               const grpc::ByteBuffer* request,
                                               grpc::ByteBuffer* response) {
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  if (!tenant.ok()) {
    auto* refused = context->DefaultReactor();
    FinishUnary(refused, "Step", clock_->Now(), tenant.status());
    return refused;
  }
  auto* reactor = new StepReactor(this, *std::move(tenant), response);
  reactor->Start(*request);
  return reactor;
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KvCacheService::StepStream(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  if (!tenant.ok()) {
    metrics_->RecordRpc("StepStream", ToGrpcStatus(tenant.status()).error_code(),
                        absl::ZeroDuration());
    return new RefusedStream(ToGrpcStatus(tenant.status()));
  }
  return new StepStreamReactor(this, *std::move(tenant));
}

grpc::ServerUnaryReactor* KvCacheService::GetStats(grpc::CallbackServerContext* context,
                                                   const v1::GetStatsRequest*,
                                                   v1::ServerStats* response) {
  const absl::Time start = clock_->Now();
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  absl::Status status = tenant.status();
  if (status.ok()) status = Ready();
  if (status.ok()) *response = Stats(tenant->get());
  FinishUnary(reactor, "GetStats", start, status);
  return reactor;
}

v1::ServerStats KvCacheService::Stats(const Tenant* tenant) const {
  v1::ServerStats out;
  for (int d = 0; d < caches_->num_devices(); ++d) {
    const kvcache::CacheStats s = caches_->cache(d).GetStats();
    out.set_sequences(out.sequences() + s.sequences);
    out.set_blocks_total(out.blocks_total() + s.blocks_total);
    out.set_blocks_free(out.blocks_free() + s.blocks_free + s.blocks_cached);  // cached ones too
    out.set_blocks_cached(out.blocks_cached() + s.blocks_cached);
    out.set_blocks_used(out.blocks_used() + s.blocks_used);
    out.set_prefix_hit_tokens(out.prefix_hit_tokens() + s.prefix_hit_tokens);
    out.set_prefix_query_tokens(out.prefix_query_tokens() + s.prefix_lookup_tokens);
    out.set_swaps_out(out.swaps_out() + s.swap_outs);
    out.set_swaps_in(out.swaps_in() + s.swap_ins);
    out.set_swap_bytes_out(out.swap_bytes_out() + s.swap_out_bytes);
    out.set_swap_bytes_in(out.swap_bytes_in() + s.swap_in_bytes);
    const SchedulerCounters c = schedulers_[d]->counters();
    out.set_batches(out.batches() + c.launches);
    out.set_batched_entries(out.batched_entries() + c.entries);
    out.set_batched_tokens(out.batched_tokens() + c.tokens);
    out.set_max_batch_entries(std::max<uint64_t>(out.max_batch_entries(), c.max_entries));
    v1::DeviceStats* device = out.add_devices();
    device->set_device(caches_->device_id(d));
    device->set_sequences(s.sequences);
    device->set_blocks_total(s.blocks_total);
    device->set_blocks_used(s.blocks_used);
    device->set_queued_steps(c.queued);
  }
  out.set_steps(steps_completed_.load());
  if (tenant != nullptr) {
    v1::TenantStats* own = out.mutable_tenant();
    own->set_name(tenant->name);
    const TenantUsage usage = caches_->Usage(tenant->name);
    own->set_sequences(usage.sequences);
    own->set_kv_blocks(usage.kv_blocks);
    own->set_max_sequences(tenant->quota.max_sequences);
    own->set_max_kv_blocks(tenant->quota.max_kv_blocks);
    MutexLock lock(&activity_mu_);
    auto it = activity_.find(tenant->name);
    if (it != activity_.end()) {
      own->set_steps(it->second.steps);
      own->set_tokens(it->second.tokens);
    }
  }
  return out;
}

absl::StatusOr<std::shared_ptr<StepState>> KvCacheService::NewStep(const grpc::ByteBuffer& request,
                                                                   const Tenant& tenant,
                                                                   absl::Time received,
                                                                   StepCompletion done,
                                                                   StreamPasses* passes) {
  if (absl::Status s = Ready(); !s.ok()) return s;
  absl::StatusOr<wire::MessageBytes> message = wire::MessageBytes::FromByteBuffer(request);
  if (!message.ok()) return message.status();
  wire::StepRequestView view;
  if (auto s = DecodeStepRequestWithinLimits(config_, *message, &view); !s.ok()) return s;
  if (view.batch.present && view.batch.pass_id != 0) {
    return NewPassStep(&*message, view, tenant, received, std::move(done), passes);
  }
  if (passes != nullptr) {
    if (auto s = passes->CheckNotHeld(view); !s.ok()) return s;
  }
  const RegionAccess regions{regions_, tenant.name};
  absl::StatusOr<std::vector<StepEntry>> entries =
      CheckStepRequest(view, config_, *caches_, regions, tenant, &*message);
  if (!entries.ok()) return entries.status();
  absl::StatusOr<std::optional<LedgerReservation>> reservation =
      ReserveLayerZero(tenant, view.layer, *entries);
  if (!reservation.ok()) return reservation.status();
  std::shared_ptr<StepState> step =
      MakeStep(*std::move(message), view.layer, view.step_id, *std::move(entries), received,
               std::move(done), tenant.name, *std::move(reservation));
  if (view.batch.present) step->set_batch_output(view.batch.out);
  return step;
}

absl::StatusOr<std::optional<LedgerReservation>> KvCacheService::ReserveLayerZero(
    const Tenant& tenant, uint32_t layer, const std::vector<StepEntry>& entries) {
  // Layer 0 leads: only its appends add blocks, so only its entries reserve against the quota.
  if (layer != 0) return std::nullopt;
  std::vector<std::pair<std::string, int64_t>> adds;
  adds.reserve(entries.size());
  for (const StepEntry& e : entries) adds.emplace_back(e.sequence_id, e.num_tokens);
  absl::StatusOr<LedgerReservation> reserved = caches_->ReserveStep(tenant, adds);
  if (!reserved.ok()) return reserved.status();
  return std::optional<LedgerReservation>(*std::move(reserved));
}

std::shared_ptr<StepState> KvCacheService::MakeStep(
    wire::MessageBytes message, uint32_t layer, uint64_t step_id, std::vector<StepEntry> entries,
    absl::Time received, StepCompletion done, std::string tenant,
    std::optional<LedgerReservation> reservation) {
  const ModelShape& m = config_.model;
  const int64_t out_row_bytes = int64_t{m.num_q_heads} * m.head_dim * DTypeSize(m.dtype);
  int64_t tokens = 0;
  for (const StepEntry& e : entries) tokens += e.num_tokens;
  auto completion = [this, received, tenant, tokens, done = std::move(done)](
                        const absl::Status& status, grpc::ByteBuffer response) {
    const absl::Duration latency = clock_->Now() - received;
    if (status.ok()) steps_completed_.fetch_add(1);
    metrics_->RecordStep(latency);
    // Per tenant, for fairness (the server's own warm-up steps have none).
    if (!tenant.empty()) {
      metrics_->RecordTenantStep(tenant, status.ok(), tokens, latency);
      if (status.ok()) {
        MutexLock lock(&activity_mu_);
        TenantActivity& a = activity_[tenant];
        ++a.steps;
        a.tokens += static_cast<uint64_t>(tokens);
      }
    }
    done(status, std::move(response));
  };
  auto step = std::make_shared<StepState>(std::move(message), layer, step_id, std::move(entries),
                                          out_row_bytes, static_cast<int32_t>(m.dtype),
                                          m.num_q_heads, m.head_dim, received, clock_, caches_,
                                          releasers_, std::move(completion));
  step->set_tenant(std::move(tenant));
  if (reservation.has_value()) step->set_reservation(*std::move(reservation));
  return step;
}

void KvCacheService::Submit(const std::shared_ptr<StepState>& step) {
  // One global order: two steps meet in the same order on every device, so a step never waits
  // on a device for one that waits for it on another.
  DeviceScheduler* run_here = nullptr;
  {
    MutexLock lock(&submit_mu_);
    const bool one_part = step->parts().size() == 1;
    for (const auto& part : step->parts()) {
      DeviceScheduler* scheduler = schedulers_[part->device()];
      if (scheduler->Enqueue(step, part.get(), /*may_claim=*/one_part)) run_here = scheduler;
    }
  }
  // A small step that found its scheduler idle launches here, saving the scheduler thread's
  // wake-up (DeviceScheduler: inline launches); never under submit_mu_.
  if (run_here != nullptr) run_here->RunClaimed();
}

void KvCacheService::Cancel(StepState& step) {
  step.Cancel();
  for (const auto& part : step.parts()) schedulers_[part->device()]->Wake();
}

void KvCacheService::Register(StepStreamReactor* reactor) {
  MutexLock lock(&streams_mu_);
  streams_.insert(reactor);
  if (draining_) reactor->Drain();
}

void KvCacheService::Unregister(StepStreamReactor* reactor) {
  MutexLock lock(&streams_mu_);
  streams_.erase(reactor);
}

void KvCacheService::BeginDrain() {
  MutexLock lock(&streams_mu_);
  draining_ = true;
  for (StepStreamReactor* reactor : streams_) reactor->Drain();
}

}  // namespace flashkv::server

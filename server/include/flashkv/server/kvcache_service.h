#pragma once

// flashkv.v1.KvCacheService: sequences (create, fork, free), Step and StepStream over the batch
// schedulers, cache info and stats. Step and StepStream take raw bytes (decoded without copying
// tensors, flashkv/wire/messages.h); the other RPCs use the generated messages. Every call is
// authenticated first (auth.h); the sequence ids it names are scoped to its tenant, and the ids
// in its errors are unscoped again, so a client sees only its own namespace.
//
// Ownership: does not own the caches, schedulers, executor or metrics; they outlive the gRPC
// server it is registered with. Thread-safety: gRPC calls it from many threads. Lock order:
// streams_mu_, then a stream reactor's lock; submit_mu_ and activity_mu_ are taken alone.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "flashkv/base/mutex.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/config.h"
#include "flashkv/server/decode_pass.h"
#include "flashkv/server/device_scheduler.h"
#include "flashkv/server/executor.h"
#include "flashkv/server/metrics.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/server/step.h"
#include "flashkv/v1/kvcache.grpc.pb.h"

namespace flashkv::server {

// Step and StepStream raw, the rest typed. (A raw method cannot override a typed one of the same
// signature, so the bases are listed one by one instead of wrapping CallbackService.)
using KvCacheServiceBase = flashkv::v1::KvCacheService::WithCallbackMethod_GetCacheInfo<
    flashkv::v1::KvCacheService::WithCallbackMethod_CreateSequence<
        flashkv::v1::KvCacheService::WithCallbackMethod_ForkSequence<
            flashkv::v1::KvCacheService::WithCallbackMethod_FreeSequence<
                flashkv::v1::KvCacheService::WithRawCallbackMethod_Step<
                    flashkv::v1::KvCacheService::WithRawCallbackMethod_StepStream<
                        flashkv::v1::KvCacheService::WithCallbackMethod_GetStats<
                            flashkv::v1::KvCacheService::Service>>>>>>>;

class StepStreamReactor;

class KvCacheService final : public KvCacheServiceBase {
 public:
  // The service answers UNAVAILABLE until Attach gives it the caches and their schedulers (the
  // server listens before the pools are allocated, so that health probes see it start).
  // `auth` (not owned) tells each call's tenant. `regions` (not owned; may be null: no data
  // plane) resolves Step tensors and outputs that lie in shared-memory regions.
  KvCacheService(const ServerConfig& config, Executor* executor, Metrics* metrics,
                 std::shared_ptr<Clock> clock, const Authenticator* auth,
                 const RegionRegistry* regions = nullptr);
  ~KvCacheService() override;
  void Attach(CacheSet* caches, std::vector<DeviceScheduler*> schedulers);

  grpc::ServerUnaryReactor* GetCacheInfo(grpc::CallbackServerContext* context,
                                         const flashkv::v1::GetCacheInfoRequest* request,
                                         flashkv::v1::CacheInfo* response) override;
  grpc::ServerUnaryReactor* CreateSequence(grpc::CallbackServerContext* context,
                                           const flashkv::v1::CreateSequenceRequest* request,
                                           flashkv::v1::CreateSequenceResponse* response) override;
  grpc::ServerUnaryReactor* ForkSequence(grpc::CallbackServerContext* context,
                                         const flashkv::v1::ForkSequenceRequest* request,
                                         flashkv::v1::ForkSequenceResponse* response) override;
  grpc::ServerUnaryReactor* FreeSequence(grpc::CallbackServerContext* context,
                                         const flashkv::v1::FreeSequenceRequest* request,
                                         flashkv::v1::FreeSequenceResponse* response) override;
  grpc::ServerUnaryReactor* Step(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* StepStream(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const flashkv::v1::GetStatsRequest* request,
                                     flashkv::v1::ServerStats* response) override;

  // Decodes and checks a Step request of `tenant` (whose namespace its ids and regions are in),
  // reserves the KV blocks it adds against the tenant's quota, and builds its state; `done` runs
  // once when it resolves, with a status whose ids are the client's own. `passes`: the decode
  // passes of the calling stream (under its lock); null for a unary Step, which may not name one.
  absl::StatusOr<std::shared_ptr<StepState>> NewStep(const grpc::ByteBuffer& request,
                                                     const Tenant& tenant, absl::Time received,
                                                     StepCompletion done,
                                                     StreamPasses* passes = nullptr);
  // A step from checked, routed entries (NewStep's second half; the warm-up uses it directly,
  // without a tenant or a reservation).
  std::shared_ptr<StepState> MakeStep(wire::MessageBytes message, uint32_t layer, uint64_t step_id,
                                      std::vector<StepEntry> entries, absl::Time received,
                                      StepCompletion done, std::string tenant = {},
                                      std::optional<LedgerReservation> reservation = {});
  const Authenticator& auth() const { return *auth_; }
  // Queues every part of `step` on its device's scheduler (all steps in one global order). A small
  // step that finds its scheduler idle is launched on the calling thread before this returns (it
  // may then have completed already); the caller holds no lock the completion takes.
  void Submit(const std::shared_ptr<StepState>& step);
  void Cancel(StepState& step);
  // Streams end once their requests in flight are answered; new requests on them are refused.
  void BeginDrain();

  Metrics& metrics() { return *metrics_; }
  const RequestLimits& limits() const { return config_.limits; }
  Clock& clock() { return *clock_; }
  // Server-wide stats, and the tenant's own when `tenant` is given.
  flashkv::v1::ServerStats Stats(const Tenant* tenant = nullptr) const;

 private:
  friend class StepStreamReactor;
  void Register(StepStreamReactor* reactor);
  void Unregister(StepStreamReactor* reactor);
  // Finishes a unary call with `status` (its ids unscoped for `tenant`, when known), recording
  // its metrics.
  void FinishUnary(grpc::ServerUnaryReactor* reactor, const char* rpc, absl::Time start,
                   const absl::Status& status, const Tenant* tenant = nullptr);

  // Whether Attach has run; an error for the client when not.
  absl::Status Ready() const;
  // The KV blocks a layer-0 step adds, reserved against the tenant's quota (none at other layers).
  absl::StatusOr<std::optional<LedgerReservation>> ReserveLayerZero(
      const Tenant& tenant, uint32_t layer, const std::vector<StepEntry>& entries);
  // NewStep for a step naming a decode pass (pass_step.cc): begins the pass at layer 0, else runs
  // the pass's next layer.
  absl::StatusOr<std::shared_ptr<StepState>> NewPassStep(wire::MessageBytes* message,
                                                         wire::StepRequestView& view,
                                                         const Tenant& tenant, absl::Time received,
                                                         StepCompletion done,
                                                         StreamPasses* passes);

  const ServerConfig config_;
  // Set once by Attach, before `attached_` turns true (release); read after it (acquire).
  CacheSet* caches_ = nullptr;
  std::vector<DeviceScheduler*> schedulers_;
  std::vector<PartReleaser*> releasers_;
  std::atomic<bool> attached_{false};
  Executor* const executor_;
  Metrics* const metrics_;
  const std::shared_ptr<Clock> clock_;
  const Authenticator* const auth_;
  const RegionRegistry* const regions_;
  std::atomic<uint64_t> steps_completed_{0};
  struct TenantActivity {
    uint64_t steps = 0;
    uint64_t tokens = 0;
  };
  mutable Mutex activity_mu_;
  absl::flat_hash_map<std::string, TenantActivity> activity_ ABSL_GUARDED_BY(activity_mu_);

  Mutex submit_mu_;
  Mutex streams_mu_;
  absl::flat_hash_set<StepStreamReactor*> streams_ ABSL_GUARDED_BY(streams_mu_);
  bool draining_ ABSL_GUARDED_BY(streams_mu_) = false;
};

}  // namespace flashkv::server

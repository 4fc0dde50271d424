#include "flashkv/server/attention_service.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/time/clock.h"
#include "flashkv/server/attention_calls.h"
#include "flashkv/server/status.h"

namespace flashkv::server {

AttentionService::AttentionService(std::vector<AttentionBackend*> backends, Executor* executor,
                                   Metrics* metrics, const Authenticator* auth,
                                   const RequestLimits& limits, const RegionRegistry* regions)
    : backends_(std::move(backends)),
      executor_(executor),
      metrics_(metrics),
      auth_(auth),
      limits_(limits),
      regions_(regions) {}

grpc::ServerUnaryReactor* AttentionService::Attention(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return Handle("Attention", /*varlen=*/false, context, request, response);
}

grpc::ServerUnaryReactor* AttentionService::AttentionVarlen(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* request,
                                                            grpc::ByteBuffer* response) {
  return Handle("AttentionVarlen", /*varlen=*/true, context, request, response);
}

grpc::ServerUnaryReactor* AttentionService::Handle(const char* rpc, bool varlen,
                                                   grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request,
                                                   grpc::ByteBuffer* response) {
  const absl::Time start = absl::Now();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  metrics_->CallStarted(rpc);
  auto finish = [this, rpc, start, reactor](const absl::Status& status) {
    const grpc::Status grpc_status = ToGrpcStatus(status);
    const absl::Duration latency = absl::Now() - start;
    metrics_->CallFinished(rpc);
    metrics_->RecordRpc(rpc, grpc_status.error_code(), latency);
    spdlog::debug("{} {} in {}", rpc, status.ok() ? "OK" : status.ToString(),
                  absl::FormatDuration(latency));
    reactor->Finish(grpc_status);
  };

  absl::StatusOr<std::shared_ptr<const Tenant>> tenant = auth_->Authenticate(*context);
  if (!tenant.ok()) {
    finish(tenant.status());
    return reactor;
  }
  absl::StatusOr<wire::MessageBytes> message = wire::MessageBytes::FromByteBuffer(*request);
  if (!message.ok()) {
    finish(message.status());
    return reactor;
  }
  const RegionAccess regions{regions_, (*tenant)->name};
  absl::StatusOr<AttentionCall> call =
      varlen ? PrepareAttentionVarlen(*std::move(message), regions, limits_)
             : PrepareAttention(*std::move(message), regions, limits_);
  if (!call.ok()) {
    finish(call.status());
    return reactor;
  }
  absl::StatusOr<AttentionBackend*> chosen =
      ChooseBackend(*call, backends_, next_backend_.fetch_add(1));
  if (!chosen.ok()) {
    finish(chosen.status());
    return reactor;
  }
  AttentionBackend* backend = *chosen;
  auto shared_call = std::make_shared<AttentionCall>(*std::move(call));
  const bool queued = executor_->TrySubmit([context, backend, response, finish, shared_call] {
    // Work that nobody waits for any more is skipped; gRPC answers the client itself.
    if (context->IsCancelled()) {
      finish(absl::CancelledError("cancelled before it ran"));
      return;
    }
    finish(RunAttention(*shared_call, backend, response));
  });
  if (!queued) {
    finish(absl::ResourceExhaustedError("stateless attention queue is full (" +
                                        std::to_string(executor_->max_queued()) +
                                        " calls waiting); retry later"));
  }
  return reactor;
}

}  // namespace flashkv::server

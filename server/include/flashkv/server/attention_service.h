#pragma once

// flashkv.v1.AttentionService: stateless attention. Requests arrive as raw bytes (decoded without
// copying tensors, flashkv/wire/messages.h), are checked on the gRPC thread, computed on the
// executor, and answered with responses whose tensors reference the output buffers.
//
// Ownership: the service does not own its backends, executor or metrics; they must outlive the
// gRPC server it is registered with. Thread-safety: gRPC calls it from many threads.

#include <atomic>
#include <vector>

#include "flashkv/server/attention_backend.h"
#include "flashkv/server/auth.h"
#include "flashkv/server/config.h"
#include "flashkv/server/executor.h"
#include "flashkv/server/metrics.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/v1/attention.grpc.pb.h"

namespace flashkv::server {

using AttentionServiceBase = flashkv::v1::AttentionService::WithRawCallbackMethod_Attention<
    flashkv::v1::AttentionService::WithRawCallbackMethod_AttentionVarlen<
        flashkv::v1::AttentionService::Service>>;

class AttentionService final : public AttentionServiceBase {
 public:
  // Calls are spread round-robin over `backends` (one per device). `auth` (not owned) tells the
  // caller's tenant; `limits` bound each call's size and work. `regions` (not owned; may be
  // null) resolves tensors and outputs in shared-memory regions.
  AttentionService(std::vector<AttentionBackend*> backends, Executor* executor, Metrics* metrics,
                   const Authenticator* auth, const RequestLimits& limits,
                   const RegionRegistry* regions = nullptr);

  grpc::ServerUnaryReactor* Attention(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* AttentionVarlen(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;

 private:
  grpc::ServerUnaryReactor* Handle(const char* rpc, bool varlen,
                                   grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request, grpc::ByteBuffer* response);

  const std::vector<AttentionBackend*> backends_;
  Executor* const executor_;
  Metrics* const metrics_;
  const Authenticator* const auth_;
  const RequestLimits limits_;
  const RegionRegistry* const regions_;
  std::atomic<size_t> next_backend_{0};
};

}  // namespace flashkv::server

#pragma once

// flashkv.v1.RegionService: clients on this host attach shared-memory regions (a sealed memfd on
// the CPU backend, a CUDA IPC handle on GPUs) for the data plane; see region_registry.h. A region
// lives as long as the AttachRegion stream that attached it: the client's cancel, a dropped
// connection, ReleaseRegion or server shutdown all release it.
//
// Ownership: the service does not own the registry, which must outlive the gRPC server.
// Thread-safety: gRPC calls it from many threads.

#include "flashkv/server/auth.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/v1/region.grpc.pb.h"
#include "grpcpp/support/server_callback.h"

namespace flashkv::server {

class RegionService final : public flashkv::v1::RegionService::CallbackService {
 public:
  // Regions belong to the tenant `auth` (not owned) finds for the attaching call.
  RegionService(RegionRegistry* registry, const Authenticator* auth)
      : registry_(registry), auth_(auth) {}

  grpc::ServerWriteReactor<flashkv::v1::AttachRegionResponse>* AttachRegion(
      grpc::CallbackServerContext* context,
      const flashkv::v1::AttachRegionRequest* request) override;
  grpc::ServerUnaryReactor* ReleaseRegion(grpc::CallbackServerContext* context,
                                          const flashkv::v1::ReleaseRegionRequest* request,
                                          flashkv::v1::ReleaseRegionResponse* response) override;

 private:
  RegionRegistry* const registry_;
  const Authenticator* const auth_;
};

}  // namespace flashkv::server

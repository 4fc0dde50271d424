#pragma once

// grpc.health.v1.Health (Check and Watch) over flashkv's own serving state, registered instead of
// gRPC's default health service. The default one answers the empty service name SERVING from the
// moment the server starts until the application first changes it, so a readiness probe landing
// in that window would send traffic to a server whose KV pools and warm-up are not ready; and it
// cannot be given a status before the server starts. This one knows its service names from
// construction, all NOT_SERVING, so every answer before SetServing(true) is NOT_SERVING.
//
// Check: the name's status; NOT_FOUND for a name it does not know. Watch: the name's status at
// once (SERVICE_UNKNOWN for an unknown name), then each change; only the latest status is sent
// when several changes meet one write in flight. Shutdown() makes every name NOT_SERVING for
// good and ends every Watch stream (OK) once it has sent NOT_SERVING, so open watches do not hold
// a drain for its whole deadline; a Watch arriving later gets NOT_SERVING and ends the same way.
//
// No bearer token is asked: load balancers and orchestrators probe without one.
//
// Ownership: the service must outlive the gRPC server it is registered with (Watch reactors
// reach it until their OnDone). Thread-safety: all methods from any thread.

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "flashkv/base/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/support/server_callback.h"

namespace flashkv::server {

class HealthWatchReactor;

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `service_names` (the empty name, the whole server, among them) start NOT_SERVING.
  explicit HealthService(const std::vector<std::string>& service_names);

  // Every name SERVING or NOT_SERVING; ignored after Shutdown.
  void SetServing(bool serving);
  // Every name NOT_SERVING from now on; Watch streams end once they have said so.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  friend class HealthWatchReactor;
  // Every name takes `status` and every Watch is offered it (`last`: then ends); after a `last`
  // publication only another `last` one is (SetServing is ignored after Shutdown).
  void Publish(ServingStatus status, bool last);
  // A finished Watch reactor leaves the set (from its OnDone, before it is deleted).
  void Forget(HealthWatchReactor* reactor);
  ServingStatus StatusOf(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Lock order: mu_, then a reactor's own mutex.
  mutable Mutex mu_;
  absl::flat_hash_map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<HealthWatchReactor*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace flashkv::server

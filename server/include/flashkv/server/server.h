#pragma once

// One flashkv server: the gRPC services (AttentionService, KvCacheService, grpc.health.v1, server
// reflection) on one listening address, their devices, and the Prometheus endpoint.
//
// Life cycle: Create() validates the config, binds the address (health NOT_SERVING from the first
// connection on: health_service.h), allocates what every device needs and runs a warm-up launch
// on each, then reports SERVING. Shutdown() drains: NOT_SERVING, no new calls, in-flight calls get
// until the deadline, then whatever is left is cancelled. The destructor shuts down (with a zero
// deadline) if Shutdown was not called.
//
// Thread-safety: Shutdown, ReloadTokens and Wait may be called from any thread (Shutdown once).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "flashkv/server/config.h"

namespace flashkv::server {

class Metrics;

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerConfig& config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound TCP port (the real one when the config asked for port 0); 0 for unix sockets.
  int port() const;
  // "host:port" of the metrics endpoint, empty when disabled.
  std::string metrics_address() const;
  // "cpu" or "cuda", and the number of devices in use.
  std::string backend_name() const;
  int num_devices() const;
  Metrics& metrics();

  // Re-reads the token file (SIGHUP). On error the tokens in use stay, and the error says why.
  absl::Status ReloadTokens();

  void Shutdown(absl::Duration deadline);
  // Blocks until Shutdown has finished.
  void Wait();

 private:
  class Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace flashkv::server

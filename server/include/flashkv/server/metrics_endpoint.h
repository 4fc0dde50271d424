#pragma once

// The Prometheus pull endpoint (prometheus-cpp's Exposer, an embedded civetweb server) on its own
// address. civetweb's listener wakes every 2 s to notice a stop request; the destructor connects
// to the endpoint to wake it at once, so that a shutdown does not stall for 2 s.
//
// Ownership: the exposer holds weak references to what it exports; the owner keeps them alive.
// Thread-safety: construction and destruction on one thread.

#include <prometheus/collectable.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}

namespace flashkv::server {

class MetricsEndpoint {
 public:
  // `address` is "host:port" (port 0 picks one). UNAVAILABLE when it cannot listen. The exporter
  // keeps weak references: the caller keeps the collectables alive while the endpoint runs.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address,
      const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables);
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer, std::string address, int port);

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
  int port_ = 0;
};

}  // namespace flashkv::server

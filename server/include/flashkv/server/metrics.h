#pragma once

// The server's Prometheus metrics (names and meanings in docs/operations.md). One Metrics object
// per server; the exporter (prometheus-cpp's pull endpoint) scrapes registry() on its own port.
//
// Thread-safety: every method may be called from any thread (prometheus-cpp metrics are atomic;
// families lock internally when a new label set appears). Ownership: the registry and its
// metrics live as long as the Metrics object.
//
// Cost: every Step records several metrics, so label sets are resolved once and their metrics
// cached (prometheus-cpp's Family::Add builds a label map, hashes it and locks the family on every
// call, which showed in the Step path's profile); a record is then a short lookup and an atomic.

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "flashkv/base/mutex.h"

namespace flashkv::server {

class Metrics {
 public:
  Metrics();

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // Calls whose handler has started and not yet answered (StepStream: request messages).
  void CallStarted(std::string_view rpc);
  void CallFinished(std::string_view rpc);
  // One finished RPC (a StepStream counts once per request message, as rpc "StepStream").
  void RecordRpc(std::string_view rpc, grpc::StatusCode code, absl::Duration latency);
  // A Step (unary or stream message) from receipt to response.
  void RecordStep(absl::Duration latency);
  // A Step of `tenant` answered (`ok`: completed, with `tokens` new tokens): per-tenant steps,
  // tokens and latency, from which the spread of throughput between tenants is read.
  void RecordTenantStep(const std::string& tenant, bool ok, int64_t tokens,
                        absl::Duration latency);
  // A Step part's wait from receipt to its first launch.
  void RecordQueueWait(absl::Duration wait);
  // One scheduler launch on `device`.
  void RecordBatch(int device, int entries, int64_t tokens, absl::Duration kernel_time);
  void RecordExpiredSequences(int count);

 private:
  // The metrics of one label set, resolved on first use. Family::Add's references stay valid for
  // the registry's life (nothing is ever removed).
  struct RpcMetrics {
    prometheus::Gauge* in_flight = nullptr;
    prometheus::Histogram* latency = nullptr;
    std::array<prometheus::Counter*, 17> by_code{};  // grpc::StatusCode 0..16
  };
  struct TenantMetrics {
    prometheus::Counter* ok = nullptr;
    prometheus::Counter* error = nullptr;
    prometheus::Counter* tokens = nullptr;
    prometheus::Histogram* latency = nullptr;
  };
  struct DeviceMetrics {
    prometheus::Histogram* entries = nullptr;
    prometheus::Histogram* tokens = nullptr;
    prometheus::Histogram* kernel = nullptr;
  };
  RpcMetrics& Rpc(std::string_view rpc);
  TenantMetrics& Tenant(const std::string& tenant);
  DeviceMetrics& Device(int device);

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpc_requests_;
  prometheus::Family<prometheus::Histogram>& rpc_latency_;
  prometheus::Family<prometheus::Gauge>& rpc_in_flight_;
  prometheus::Histogram& step_latency_;
  prometheus::Histogram& step_queue_wait_;
  prometheus::Family<prometheus::Histogram>& batch_entries_;
  prometheus::Family<prometheus::Histogram>& batch_tokens_;
  prometheus::Family<prometheus::Histogram>& kernel_seconds_;
  prometheus::Counter& expired_sequences_;
  prometheus::Family<prometheus::Counter>& tenant_steps_;
  prometheus::Family<prometheus::Counter>& tenant_tokens_;
  prometheus::Family<prometheus::Histogram>& tenant_step_latency_;

  Mutex cache_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<RpcMetrics>> rpcs_ ABSL_GUARDED_BY(cache_mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<TenantMetrics>> tenants_
      ABSL_GUARDED_BY(cache_mu_);
  absl::flat_hash_map<int, std::unique_ptr<DeviceMetrics>> devices_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace flashkv::server

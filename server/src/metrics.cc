#include "flashkv/server/metrics.h"

#include <string>

#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

using prometheus::Histogram;

// Latencies from 50 µs (a loopback round trip) to 10 s (a very long prefill).
const Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
      5e-2, 0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0};
  return *buckets;
}
const Histogram::BucketBoundaries& EntryBuckets() {
  static const auto* buckets =
      new Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
  return *buckets;
}
const Histogram::BucketBoundaries& TokenBuckets() {
  static const auto* buckets =
      new Histogram::BucketBoundaries{1, 4, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536};
  return *buckets;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      rpc_requests_(
          prometheus::BuildCounter()
              .Name("flashkv_rpc_requests_total")
              .Help("Finished RPCs (StepStream: request messages) by method and status code")
              .Register(*registry_)),
      rpc_latency_(prometheus::BuildHistogram()
                       .Name("flashkv_rpc_latency_seconds")
                       .Help("Time from receiving a request to its response, by method")
                       .Register(*registry_)),
      rpc_in_flight_(prometheus::BuildGauge()
                         .Name("flashkv_rpc_in_flight")
                         .Help("Calls started and not yet answered (StepStream: request messages)")
                         .Register(*registry_)),
      step_latency_(prometheus::BuildHistogram()
                        .Name("flashkv_step_latency_seconds")
                        .Help("Step requests (unary and stream) from receipt to response")
                        .Register(*registry_)
                        .Add({}, LatencyBuckets())),
      step_queue_wait_(
          prometheus::BuildHistogram()
              .Name("flashkv_step_queue_wait_seconds")
              .Help("Step requests (per device part): time queued before their first launch")
              .Register(*registry_)
              .Add({}, LatencyBuckets())),
      batch_entries_(prometheus::BuildHistogram()
                         .Name("flashkv_batch_entries")
                         .Help("Sequences per scheduler launch, by device")
                         .Register(*registry_)),
      batch_tokens_(prometheus::BuildHistogram()
                        .Name("flashkv_batch_tokens")
                        .Help("New tokens (query rows) per scheduler launch, by device")
                        .Register(*registry_)),
      kernel_seconds_(prometheus::BuildHistogram()
                          .Name("flashkv_kernel_seconds")
                          .Help("Launch time (metadata and tensor copies, append, paged "
                                "attention, output copy), by device")
                          .Register(*registry_)),
      expired_sequences_(prometheus::BuildCounter()
                             .Name("flashkv_sequences_expired_total")
                             .Help("Sequences freed after --sequence-ttl without a step")
                             .Register(*registry_)
                             .Add({})),
      tenant_steps_(prometheus::BuildCounter()
                        .Name("flashkv_tenant_steps_total")
                        .Help("Step requests answered, by tenant and outcome (ok, error)")
                        .Register(*registry_)),
      tenant_tokens_(prometheus::BuildCounter()
                         .Name("flashkv_tenant_tokens_total")
                         .Help("New tokens (q rows, summed over layers) of completed Step "
                               "requests, by tenant")
                         .Register(*registry_)),
      tenant_step_latency_(prometheus::BuildHistogram()
                               .Name("flashkv_tenant_step_latency_seconds")
                               .Help("Step requests from receipt to response, by tenant")
                               .Register(*registry_)) {}

Metrics::RpcMetrics& Metrics::Rpc(std::string_view rpc) {
  MutexLock lock(&cache_mu_);
  auto it = rpcs_.find(absl::string_view(rpc.data(), rpc.size()));
  if (it != rpcs_.end()) return *it->second;
  auto metrics = std::make_unique<RpcMetrics>();
  const std::string method(rpc);
  metrics->in_flight = &rpc_in_flight_.Add({{"rpc", method}});
  metrics->latency = &rpc_latency_.Add({{"rpc", method}}, LatencyBuckets());
  return *rpcs_.emplace(method, std::move(metrics)).first->second;
}

Metrics::TenantMetrics& Metrics::Tenant(const std::string& tenant) {
  MutexLock lock(&cache_mu_);
  auto it = tenants_.find(tenant);
  if (it != tenants_.end()) return *it->second;
  auto metrics = std::make_unique<TenantMetrics>();
  metrics->ok = &tenant_steps_.Add({{"tenant", tenant}, {"outcome", "ok"}});
  metrics->error = &tenant_steps_.Add({{"tenant", tenant}, {"outcome", "error"}});
  metrics->tokens = &tenant_tokens_.Add({{"tenant", tenant}});
  metrics->latency = &tenant_step_latency_.Add({{"tenant", tenant}}, LatencyBuckets());
  return *tenants_.emplace(tenant, std::move(metrics)).first->second;
}

Metrics::DeviceMetrics& Metrics::Device(int device) {
  MutexLock lock(&cache_mu_);
  auto it = devices_.find(device);
  if (it != devices_.end()) return *it->second;
  auto metrics = std::make_unique<DeviceMetrics>();
  const prometheus::Labels labels = {{"device", std::to_string(device)}};
  metrics->entries = &batch_entries_.Add(labels, EntryBuckets());
  metrics->tokens = &batch_tokens_.Add(labels, TokenBuckets());
  metrics->kernel = &kernel_seconds_.Add(labels, LatencyBuckets());
  return *devices_.emplace(device, std::move(metrics)).first->second;
}

void Metrics::RecordRpc(std::string_view rpc, grpc::StatusCode code, absl::Duration latency) {
  RpcMetrics& m = Rpc(rpc);
  const size_t index = static_cast<size_t>(code) < m.by_code.size() ? size_t(code) : 2;  // UNKNOWN
  prometheus::Counter* counter;
  {
    MutexLock lock(&cache_mu_);
    if (m.by_code[index] == nullptr) {
      m.by_code[index] = &rpc_requests_.Add(
          {{"rpc", std::string(rpc)},
           {"code", GrpcCodeName(static_cast<grpc::StatusCode>(index))}});
    }
    counter = m.by_code[index];
  }
  counter->Increment();
  m.latency->Observe(Seconds(latency));
}

void Metrics::CallStarted(std::string_view rpc) { Rpc(rpc).in_flight->Increment(); }

void Metrics::CallFinished(std::string_view rpc) { Rpc(rpc).in_flight->Decrement(); }

void Metrics::RecordStep(absl::Duration latency) { step_latency_.Observe(Seconds(latency)); }

void Metrics::RecordTenantStep(const std::string& tenant, bool ok, int64_t tokens,
                               absl::Duration latency) {
  TenantMetrics& m = Tenant(tenant);
  (ok ? m.ok : m.error)->Increment();
  if (ok) m.tokens->Increment(static_cast<double>(tokens));
  m.latency->Observe(Seconds(latency));
}

void Metrics::RecordQueueWait(absl::Duration wait) { step_queue_wait_.Observe(Seconds(wait)); }

void Metrics::RecordBatch(int device, int entries, int64_t tokens, absl::Duration kernel_time) {
  DeviceMetrics& m = Device(device);
  m.entries->Observe(entries);
  m.tokens->Observe(static_cast<double>(tokens));
  m.kernel->Observe(Seconds(kernel_time));
}

void Metrics::RecordExpiredSequences(int count) { expired_sequences_.Increment(count); }

}  // namespace flashkv::server

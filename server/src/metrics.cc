#include "flashkv/server/metrics.h"

#include <string>

#include "flashkv/server/status.h"

namespace flashkv::server {
namespace {

using prometheus::Histogram;

// Latencies from 50 µs (a loopback round trip) to 10 s (a very long prefill).
Histogram::BucketBoundaries LatencyBuckets() {
  return {5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
          5e-2, 0.1,  0.25,   0.5,  1.0,  2.5,    5.0,  10.0};
}
Histogram::BucketBoundaries EntryBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
}
Histogram::BucketBoundaries TokenBuckets() {
  return {1, 4, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 65536};
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

void Metrics::RecordRpc(std::string_view rpc, grpc::StatusCode code, absl::Duration latency) {
  const std::string method(rpc);
  rpc_requests_.Add({{"rpc", method}, {"code", GrpcCodeName(code)}}).Increment();
  rpc_latency_.Add({{"rpc", method}}, LatencyBuckets()).Observe(Seconds(latency));
}

void Metrics::CallStarted(std::string_view rpc) {
  rpc_in_flight_.Add({{"rpc", std::string(rpc)}}).Increment();
}

void Metrics::CallFinished(std::string_view rpc) {
  rpc_in_flight_.Add({{"rpc", std::string(rpc)}}).Decrement();
}

void Metrics::RecordStep(absl::Duration latency) { step_latency_.Observe(Seconds(latency)); }

void Metrics::RecordTenantStep(const std::string& tenant, bool ok, int64_t tokens,
                               absl::Duration latency) {
  tenant_steps_.Add({{"tenant", tenant}, {"outcome", ok ? "ok" : "error"}}).Increment();
  if (ok) tenant_tokens_.Add({{"tenant", tenant}}).Increment(static_cast<double>(tokens));
  tenant_step_latency_.Add({{"tenant", tenant}}, LatencyBuckets()).Observe(Seconds(latency));
}

void Metrics::RecordQueueWait(absl::Duration wait) { step_queue_wait_.Observe(Seconds(wait)); }

void Metrics::RecordBatch(int device, int entries, int64_t tokens, absl::Duration kernel_time) {
  const prometheus::Labels labels = {{"device", std::to_string(device)}};
  batch_entries_.Add(labels, EntryBuckets()).Observe(entries);
  batch_tokens_.Add(labels, TokenBuckets()).Observe(static_cast<double>(tokens));
  kernel_seconds_.Add(labels, LatencyBuckets()).Observe(Seconds(kernel_time));
}

void Metrics::RecordExpiredSequences(int count) { expired_sequences_.Increment(count); }

}  // namespace flashkv::server

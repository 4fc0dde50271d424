#include "flashkv/server/cache_metrics.h"

#include <string>

namespace flashkv::server {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(const char* name, const char* help, MetricType type) {
  MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  return family;
}

void Add(MetricFamily* family, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family->type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family->metric.push_back(std::move(metric));
}

}  // namespace

std::vector<MetricFamily> CacheMetrics::Collect() const {
  MetricFamily blocks = Family(
      "flashkv_kv_blocks", "KV blocks by state (used, free, cached), by device", MetricType::Gauge);
  MetricFamily sequences =
      Family("flashkv_kv_sequences", "Live sequences (resident and swapped), by device",
             MetricType::Gauge);
  MetricFamily swapped =
      Family("flashkv_kv_sequences_swapped", "Sequences swapped out to host memory, by device",
             MetricType::Gauge);
  MetricFamily lookups = Family("flashkv_prefix_lookup_tokens_total",
                                "Prompt tokens looked up in the prefix cache", MetricType::Counter);
  MetricFamily hits = Family("flashkv_prefix_hit_tokens_total",
                             "Prompt tokens found in the prefix cache", MetricType::Counter);
  MetricFamily hit_rate =
      Family("flashkv_prefix_hit_ratio", "Prefix-cache hit tokens / looked-up tokens since start",
             MetricType::Gauge);
  MetricFamily swaps = Family("flashkv_swaps_total", "Sequences swapped, by direction (out, in)",
                              MetricType::Counter);
  MetricFamily swap_bytes =
      Family("flashkv_swap_bytes_total", "Bytes swapped, by direction", MetricType::Counter);
  MetricFamily cow = Family("flashkv_kv_copy_on_write_total",
                            "Blocks copied on the first write after a fork", MetricType::Counter);
  for (int d = 0; d < caches_->num_devices(); ++d) {
    const kvcache::CacheStats s = caches_->cache(d).GetStats();
    const std::string device = std::to_string(caches_->device_id(d));
    Add(&blocks, {{"device", device}, {"state", "used"}}, double(s.blocks_used));
    Add(&blocks, {{"device", device}, {"state", "free"}}, double(s.blocks_free));
    Add(&blocks, {{"device", device}, {"state", "cached"}}, double(s.blocks_cached));
    Add(&sequences, {{"device", device}}, double(s.sequences));
    Add(&swapped, {{"device", device}}, double(s.sequences_swapped));
    Add(&lookups, {{"device", device}}, double(s.prefix_lookup_tokens));
    Add(&hits, {{"device", device}}, double(s.prefix_hit_tokens));
    Add(&hit_rate, {{"device", device}}, s.prefix_hit_rate);
    Add(&swaps, {{"device", device}, {"direction", "out"}}, double(s.swap_outs));
    Add(&swaps, {{"device", device}, {"direction", "in"}}, double(s.swap_ins));
    Add(&swap_bytes, {{"device", device}, {"direction", "out"}}, double(s.swap_out_bytes));
    Add(&swap_bytes, {{"device", device}, {"direction", "in"}}, double(s.swap_in_bytes));
    Add(&cow, {{"device", device}}, double(s.cow_copies));
  }
  MetricFamily tenant_sequences =
      Family("flashkv_tenant_sequences", "Live sequences, by tenant", MetricType::Gauge);
  MetricFamily tenant_blocks = Family(
      "flashkv_tenant_kv_blocks", "Logical KV blocks held (the quota's measure), by tenant",
      MetricType::Gauge);
  for (const auto& [tenant, usage] : caches_->AllUsage()) {
    Add(&tenant_sequences, {{"tenant", tenant}}, double(usage.sequences));
    Add(&tenant_blocks, {{"tenant", tenant}}, double(usage.kv_blocks));
  }
  return {blocks,     sequences,  swapped, lookups,          hits,         hit_rate,
          swaps,      swap_bytes, cow,     tenant_sequences, tenant_blocks};
}

}  // namespace flashkv::server

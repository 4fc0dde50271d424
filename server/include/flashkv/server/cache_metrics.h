#pragma once

// Prometheus families read from the KV caches at scrape time (so they are exact when scraped and
// cost nothing between scrapes): blocks by state, sequences, prefix-cache lookups and hits,
// swaps, copy-on-write copies, per device.
//
// Thread-safety: Collect is called by the exporter's threads; the caches are thread-safe.

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <vector>

#include "flashkv/server/cache_set.h"

namespace flashkv::server {

class CacheMetrics final : public prometheus::Collectable {
 public:
  explicit CacheMetrics(const CacheSet* caches) : caches_(caches) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const CacheSet* const caches_;
};

}  // namespace flashkv::server

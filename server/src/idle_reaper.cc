#include "flashkv/server/idle_reaper.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string>
#include <vector>

namespace flashkv::server {

IdleReaper::IdleReaper(CacheSet* caches, std::shared_ptr<Clock> clock, absl::Duration ttl,
                       Metrics* metrics)
    : caches_(caches), clock_(std::move(clock)), ttl_(ttl), metrics_(metrics) {
  if (ttl_ > absl::ZeroDuration()) thread_ = std::thread([this] { Loop(); });
}

IdleReaper::~IdleReaper() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int IdleReaper::ReapNow() {
  const std::vector<std::string> expired = caches_->ExpireIdle(clock_->Now(), ttl_);
  for (const std::string& id : expired) {
    spdlog::info("sequence '{}' freed: no step for {} (--sequence-ttl)", id,
                 absl::FormatDuration(ttl_));
  }
  if (!expired.empty()) metrics_->RecordExpiredSequences(static_cast<int>(expired.size()));
  return static_cast<int>(expired.size());
}

void IdleReaper::Loop() {
  // Checking eight times per TTL bounds how long past its TTL a sequence lives (by 1/8).
  const absl::Duration period = std::clamp(ttl_ / 8, absl::Milliseconds(10), absl::Seconds(5));
  MutexLock lock(&mu_);
  while (!stopping_) {
    clock_->AwaitWithDeadline(
        &mu_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; },
        clock_->Now() + period);
    if (stopping_) break;
    mu_.Unlock();
    ReapNow();
    mu_.Lock();
  }
}

}  // namespace flashkv::server

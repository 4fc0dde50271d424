#pragma once

// Frees sequences that have not been stepped for --sequence-ttl (a runner that died leaves its
// sequences behind; their blocks would otherwise never come back). Each expiry is logged and
// counted. A sequence in a running step is never expired; the TTL counts from its last step.
//
// Ownership: does not own the caches or metrics. Thread-safety: ReapNow from any thread. Lifetime:
// the destructor stops the thread.

#include <memory>
#include <thread>

#include "flashkv/base/mutex.h"
#include "absl/time/time.h"
#include "flashkv/server/cache_set.h"
#include "flashkv/server/clock.h"
#include "flashkv/server/metrics.h"

namespace flashkv::server {

class IdleReaper {
 public:
  // A zero ttl starts no thread (expiry off).
  IdleReaper(CacheSet* caches, std::shared_ptr<Clock> clock, absl::Duration ttl, Metrics* metrics);
  ~IdleReaper();
  IdleReaper(const IdleReaper&) = delete;
  IdleReaper& operator=(const IdleReaper&) = delete;

  // One pass now; returns how many sequences were freed.
  int ReapNow();

 private:
  void Loop();

  CacheSet* const caches_;
  const std::shared_ptr<Clock> clock_;
  const absl::Duration ttl_;
  Metrics* const metrics_;
  Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace flashkv::server

#pragma once

// Where the runners' requests come from: a closed loop (a request whenever a runner has a free
// slot) or an open loop (Poisson arrivals at a fixed rate, queued until a runner takes them, so
// queueing shows in time-to-first-token), bounded by a request count. Prompts optionally start
// with a prefix from a shared pool, to exercise the server's prefix cache.
//
// Thread-safety: all methods may be called from any runner thread.

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "config.h"

namespace flashkv::loadgen {

struct Request {
  int64_t number = 0;
  std::vector<int64_t> prompt;  // token ids
  int64_t output_len = 1;       // tokens to generate (the first comes from the prefill)
  absl::Time arrival;
  bool from_pool = false;
};

class RequestSource {
 public:
  // `max_context`: the server's limit; prompt + output are clipped to fit it.
  RequestSource(const LoadgenConfig& config, int64_t max_context, absl::Time start);

  // The next request available at `now`, if any.
  std::optional<Request> Next(absl::Time now);
  // When the next request becomes available: now for a closed loop, the next arrival for an
  // open loop; InfiniteFuture when none will.
  absl::Time NextAvailable(absl::Time now) const;
  // No request will come any more (count reached or stopped).
  bool Exhausted() const;
  void Stop();
  // Open loop: requests that arrived and wait for a runner.
  int64_t Backlog(absl::Time now) const;

 private:
  Request Make(absl::Time arrival) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const LoadgenConfig& config_;
  const int64_t max_context_;
  mutable absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<int64_t>> pool_;  // immutable after construction
  int64_t issued_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_arrival_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

// Token ids are drawn from a vocabulary of this size.
inline constexpr int64_t kVocabularySize = 32000;

}  // namespace flashkv::loadgen

#pragma once

// A clock that moves only when a test says so. Timed waits poll it every millisecond of real
// time, so advancing it wakes them promptly.

#include "flashkv/base/mutex.h"
#include "flashkv/server/clock.h"

namespace flashkv::testing {

class FakeClock final : public server::Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'000'000)) : now_(start) {}

  absl::Time Now() override {
    MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    MutexLock lock(&mu_);
    now_ += d;
  }
  bool AwaitWithDeadline(Mutex* mu, const std::function<bool()>& condition,
                         absl::Time deadline) override {
    while (!condition()) {
      if (Now() >= deadline) return false;
      mu->AwaitWithTimeout(condition, absl::Milliseconds(1));
    }
    return true;
  }

 private:
  Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace flashkv::testing

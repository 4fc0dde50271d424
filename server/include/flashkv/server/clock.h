#pragma once

// Time for the scheduler's batching window, sequence expiry and latency figures, replaceable by a
// fake clock in tests (tests/server/testing/fake_clock.h). gRPC deadlines are not measured with
// it: gRPC cancels calls whose deadline passed, and the scheduler reacts to the cancellation.
//
// Thread-safety: implementations must allow calls from any thread.

#include <functional>
#include <memory>

#include "flashkv/base/mutex.h"
#include "absl/time/time.h"

namespace flashkv::server {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // With `mu` held: waits until `condition` holds or Now() >= deadline, releasing `mu` while it
  // waits, as Mutex::AwaitWithDeadline does. Returns whether `condition` holds.
  virtual bool AwaitWithDeadline(Mutex* mu, const std::function<bool()>& condition,
                                 absl::Time deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// absl::Now() and Mutex's own timed waits.
std::shared_ptr<Clock> RealClock();

}  // namespace flashkv::server

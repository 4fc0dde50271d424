#pragma once

// A one-shot event, as absl::Notification, built on flashkv::Mutex so that ThreadSanitizer sees
// the happens-before edge from Notify to the waiters (see mutex.h for why absl's would hide it).
//
// Thread-safety: Notify once, from any thread; wait from any number of threads.

#include "absl/time/time.h"
#include "flashkv/base/mutex.h"

namespace flashkv {

class Notification {
 public:
  void Notify() {
    MutexLock lock(&mu_);
    notified_ = true;
  }
  bool HasBeenNotified() {
    MutexLock lock(&mu_);
    return notified_;
  }
  void WaitForNotification() {
    MutexLock lock(&mu_);
    mu_.Await([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; });
  }
  // Whether it was notified within `timeout`.
  bool WaitForNotificationWithTimeout(absl::Duration timeout) {
    MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout([this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return notified_; },
                                timeout);
  }

 private:
  Mutex mu_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace flashkv

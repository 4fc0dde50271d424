#pragma once

// The mutex of flashkv's host code: std::mutex with Clang thread-safety annotations (so
// ABSL_GUARDED_BY and friends keep working) and absl::Mutex-style waits on a condition.
//
// Why not absl::Mutex: Debian's abseil is built without ThreadSanitizer, and absl::Mutex blocks
// through raw futex calls that TSan cannot see, so TSan misses its happens-before edges and
// reports every access it guards as a race. std::mutex and std::condition_variable go through
// pthread calls, which TSan intercepts: the tsan preset stays meaningful.
//
// Waits: Await(condition) blocks until `condition` (evaluated with the mutex held) is true,
// releasing the mutex meanwhile. As with absl::Mutex, nobody has to signal: whoever releases the
// mutex while a thread waits wakes the waiters, which re-evaluate their conditions. That costs one
// notify per unlock while someone waits, which is what the schedulers and executors here want
// anyway (every change under their lock is a reason to look again). The notify comes before the
// unlock, so a waiter that returns and destroys the mutex never races with it.
//
// Thread-safety: Lock/Unlock/Await from any thread, as a mutex.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace flashkv {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    // Notify before unlocking, not after: once the mutex is free, a waiter (woken spuriously, or
    // by its deadline) may find its condition true, return, and destroy the object that holds
    // this mutex — a Notification on its stack, a reactor whose last step ended — so a notify
    // after the unlock could touch a destroyed condition variable. (Found by ThreadSanitizer.)
    if (waiters_ > 0) cv_.notify_all();
    mu_.unlock();
  }
  // For the thread-safety analysis only (no run-time check).
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

  // With the mutex held: waits until condition() is true.
  void Await(const std::function<bool()>& condition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    AwaitWithDeadline(condition, absl::InfiniteFuture());
  }
  // With the mutex held: waits until condition() is true or `deadline` passed; returns
  // condition(). The mutex is held again on return either way.
  bool AwaitWithDeadline(const std::function<bool()>& condition, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    // What this thread changed before waiting may be what another waiter waits for: waking them
    // here is the Unlock the wait below does without. (Only on entry: re-waits change nothing,
    // and waking each other on every one would spin.)
    if (waiters_ > 0) cv_.notify_all();
    ++waiters_;
    while (!condition()) {
      if (deadline == absl::InfiniteFuture()) {
        cv_.wait(lock);
        continue;
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) break;
      // wait_for on the steady clock: absolute system-clock deadlines far in the future overflow
      // libstdc++'s clock conversion, and a wall-clock jump must not stretch the wait.
      cv_.wait_for(lock, absl::ToChronoNanoseconds(std::min(deadline - now, absl::Hours(1))));
    }
    --waiters_;
    lock.release();  // still held, by the caller's scope
    return condition();
  }
  bool AwaitWithTimeout(const std::function<bool()>& condition, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(this) {
    return AwaitWithDeadline(condition, absl::Now() + timeout);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiters_ = 0;  // threads in AwaitWithDeadline; guarded by mu_
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace flashkv

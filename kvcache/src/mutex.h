#pragma once

// The cache's lock: a std::mutex with Clang thread-safety annotations, so ABSL_GUARDED_BY and
// friends keep working. Not absl::Mutex: Debian's abseil is built without ThreadSanitizer, so
// TSan cannot see absl::Mutex's happens-before edges (it blocks through raw futex calls) and
// reports every access the lock guards as a race; the tsan preset has to stay meaningful.

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace flashkv::kvcache::internal {

class ABSL_LOCKABLE Mutex {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* mu_;
};

}  // namespace flashkv::kvcache::internal

#pragma once

// A fixed set of worker threads running submitted tasks in order, with a bounded queue so that a
// flood of calls is refused (the caller answers RESOURCE_EXHAUSTED) instead of piling up memory.
//
// Thread-safety: TrySubmit from any thread. Lifetime: the destructor runs every task already
// queued, then joins the workers.

#include <cstddef>
#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "flashkv/base/mutex.h"

namespace flashkv::server {

class Executor {
 public:
  Executor(int num_threads, size_t max_queued);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // False (and the task is dropped) when max_queued tasks are already waiting.
  [[nodiscard]] bool TrySubmit(std::function<void()> task);
  size_t max_queued() const { return max_queued_; }

 private:
  void WorkerLoop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t max_queued_;
  Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace flashkv::server

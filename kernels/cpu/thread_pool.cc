#include "cpu/thread_pool.h"

#include <algorithm>

#if defined(__linux__)
#include <sched.h>
#endif

namespace flashkv::cpu {

ThreadPool& ThreadPool::Global() {
  static ThreadPool* const pool = new ThreadPool(DefaultNumThreads());
  return *pool;
}

int ThreadPool::DefaultNumThreads() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int count = CPU_COUNT(&set);
    if (count > 0) return count;
  }
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool::ThreadPool(int num_threads) { SetNumThreads(num_threads); }

ThreadPool::~ThreadPool() {
  std::lock_guard<std::mutex> resize_lock(resize_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_target_ = 0;
  }
  work_available_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::SetNumThreads(int num_threads) {
  if (num_threads < 1) num_threads = DefaultNumThreads();
  std::lock_guard<std::mutex> resize_lock(resize_mu_);
  const int num_workers = num_threads - 1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    worker_target_ = num_workers;
  }
  // Workers past the new size leave once their current job is drained; running jobs still finish
  // because their callers work on them too.
  work_available_.notify_all();
  while (static_cast<int>(workers_.size()) > num_workers) {
    workers_.back().join();
    workers_.pop_back();
  }
  while (static_cast<int>(workers_.size()) < num_workers) {
    const int index = static_cast<int>(workers_.size());
    workers_.emplace_back([this, index] { WorkerLoop(index); });
  }
  num_threads_.store(num_threads, std::memory_order_relaxed);
}

void ThreadPool::Drain(Job& job) {
  for (;;) {
    const int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.count) return;
    job.fn(i);
  }
}

void ThreadPool::RemoveJobLocked(Job* job) {
  const auto it = std::find(jobs_.begin(), jobs_.end(), job);
  if (it != jobs_.end()) jobs_.erase(it);
}

void ThreadPool::ParallelFor(int64_t count, IndexFunctionRef fn) {
  if (count <= 0) return;
  const int num_workers = NumThreads() - 1;
  if (count == 1 || num_workers == 0) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  Job job(fn, count);
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(&job);
  }
  const int64_t helpers = std::min<int64_t>(count - 1, num_workers);
  if (helpers >= num_workers) {
    work_available_.notify_all();
  } else {
    for (int64_t i = 0; i < helpers; ++i) work_available_.notify_one();
  }
  Drain(job);
  // Every index is claimed. Unqueue the job so no worker picks it up any more, then wait for the
  // workers still running one of its items; after that nothing references `job`.
  std::unique_lock<std::mutex> lock(mu_);
  RemoveJobLocked(&job);
  job.workers_done.wait(lock, [&job] { return job.active_workers == 0; });
}

void ThreadPool::WorkerLoop(int index) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_available_.wait(lock, [&] { return index >= worker_target_ || !jobs_.empty(); });
    if (index >= worker_target_) return;
    Job* job = jobs_.front();
    ++job->active_workers;
    lock.unlock();
    Drain(*job);
    lock.lock();
    // The job is drained: unqueue it (its caller may not have got there yet) so idle workers wait
    // for new work instead of spinning on it.
    RemoveJobLocked(job);
    if (--job->active_workers == 0) job->workers_done.notify_all();
  }
}

}  // namespace flashkv::cpu

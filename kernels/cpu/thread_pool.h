#pragma once

// The process-wide worker pool of the CPU backend.
//
// Ownership and lifetime: Global() creates the pool on first use and never destroys it (a worker
// may still be parked when the process exits; destroying it then would race static destructors).
// Thread-safety: every method may be called from any thread at any time. Concurrent ParallelFor
// calls share the workers: each caller queues a job, works on it itself, and idle workers join
// the oldest unfinished job, so a caller never waits for a job it cannot help finish.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace flashkv::cpu {

// A non-owning reference to a callable `void(int64_t)`, cheap to copy (no allocation, unlike
// std::function). The callable must outlive every call through the reference.
class IndexFunctionRef {
 public:
  template <class Fn, class = std::enable_if_t<!std::is_same_v<std::decay_t<Fn>, IndexFunctionRef>>>
  IndexFunctionRef(Fn&& fn)  // NOLINT(google-explicit-constructor): used like a function type
      : object_(const_cast<void*>(static_cast<const void*>(&fn))),
        invoke_([](void* object, int64_t i) { (*static_cast<std::remove_reference_t<Fn>*>(object))(i); }) {}

  void operator()(int64_t i) const { invoke_(object_, i); }

 private:
  void* object_;
  void (*invoke_)(void*, int64_t);
};

class ThreadPool {
 public:
  // The pool every CPU kernel call uses, sized DefaultNumThreads() until SetNumThreads().
  static ThreadPool& Global();
  // Threads this process may run on: the CPU affinity mask's size where the OS reports it,
  // otherwise std::thread::hardware_concurrency(); at least 1.
  static int DefaultNumThreads();

  // `num_threads` < 1 means DefaultNumThreads(). The pool starts num_threads - 1 workers: the
  // thread that calls ParallelFor is the last one.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Calls fn(i) exactly once for every i in [0, count) and returns when all calls have returned;
  // they run on the calling thread and on up to NumThreads() - 1 workers. Indices are handed out
  // one at a time in increasing order, so putting the longest work first balances uneven items.
  void ParallelFor(int64_t count, IndexFunctionRef fn);

  // Resizes the pool (< 1: the default). Calls that start after it returns use the new size;
  // running calls finish with whatever workers they have.
  void SetNumThreads(int num_threads);
  int NumThreads() const { return num_threads_.load(std::memory_order_relaxed); }

 private:
  struct Job {
    Job(IndexFunctionRef f, int64_t n) : fn(f), count(n) {}
    IndexFunctionRef fn;
    const int64_t count;
    std::atomic<int64_t> next{0};
    int active_workers = 0;  // guarded by ThreadPool::mu_
    std::condition_variable workers_done;
  };

  static void Drain(Job& job);
  void WorkerLoop(int index);
  void RemoveJobLocked(Job* job);

  // Lock order: resize_mu_ before mu_.
  std::mutex resize_mu_;  // serialises SetNumThreads; guards workers_
  std::vector<std::thread> workers_;

  std::mutex mu_;
  std::condition_variable work_available_;
  std::deque<Job*> jobs_;  // guarded by mu_: queued jobs with unclaimed indices (or just drained)
  int worker_target_ = 0;  // guarded by mu_: workers with index >= this exit

  std::atomic<int> num_threads_{1};
};

}  // namespace flashkv::cpu

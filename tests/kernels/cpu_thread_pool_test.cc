// The CPU backend's shared worker pool (kernels/cpu/thread_pool.h): every index runs exactly once,
// concurrent callers and resizes neither lose work nor deadlock.

#include "cpu/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace flashkv::cpu {
namespace {

// Runs ParallelFor(count) and checks that every index ran exactly once.
void ExpectEachIndexOnce(ThreadPool& pool, int64_t count) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(count));
  pool.ParallelFor(count, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); });
  for (int64_t i = 0; i < count; ++i) {
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << i << " of " << count;
  }
}

TEST(CpuThreadPoolTest, RunsEveryIndexOnceForAnySize) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.NumThreads(), threads);
    for (int64_t count : {0, 1, 2, 7, 1000}) ExpectEachIndexOnce(pool, count);
  }
}

TEST(CpuThreadPoolTest, OneThreadRunsInOrderOnTheCaller) {
  ThreadPool pool(1);
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<int64_t> order;
  pool.ParallelFor(5, [&](int64_t i) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    order.push_back(i);
  });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(CpuThreadPoolTest, WorkersShareTheWork) {
  ThreadPool pool(4);
  std::atomic<int> running{0};
  std::atomic<int> most_running{0};
  pool.ParallelFor(64, [&](int64_t) {
    const int now = running.fetch_add(1) + 1;
    int seen = most_running.load();
    while (now > seen && !most_running.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    running.fetch_sub(1);
  });
  EXPECT_GT(most_running.load(), 1);
  EXPECT_LE(most_running.load(), 4);
}

TEST(CpuThreadPoolTest, ConcurrentCallersAndResizesFinishAllWork) {
  ThreadPool pool(3);
  std::atomic<bool> stop{false};
  std::thread resizer([&] {
    int n = 1;
    while (!stop.load()) {
      pool.SetNumThreads(n);
      n = n % 4 + 1;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 6; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 50; ++round) {
        std::atomic<int64_t> sum{0};
        pool.ParallelFor(100, [&](int64_t i) { sum.fetch_add(i); });
        EXPECT_EQ(sum.load(), 4950);
        total.fetch_add(sum.load());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  stop.store(true);
  resizer.join();
  EXPECT_EQ(total.load(), 6 * 50 * 4950);
  pool.SetNumThreads(2);
  EXPECT_EQ(pool.NumThreads(), 2);
  ExpectEachIndexOnce(pool, 100);
}

TEST(CpuThreadPoolTest, NonPositiveSizeMeansTheDefault) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.NumThreads(), ThreadPool::DefaultNumThreads());
  EXPECT_GE(ThreadPool::DefaultNumThreads(), 1);
}

}  // namespace
}  // namespace flashkv::cpu

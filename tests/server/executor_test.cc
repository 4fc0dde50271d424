#include "flashkv/server/executor.h"

#include <gtest/gtest.h>

#include <atomic>

#include "flashkv/base/notification.h"

namespace flashkv::server {
namespace {

TEST(ExecutorTest, RunsEverythingQueuedBeforeItIsDestroyed) {
  std::atomic<int> ran{0};
  {
    Executor executor(2, 1000);
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(executor.TrySubmit([&ran] { ran.fetch_add(1); }));
  }
  EXPECT_EQ(ran.load(), 500);
}

TEST(ExecutorTest, RefusesWhenTheQueueIsFull) {
  Notification release;
  Notification started;
  Executor executor(1, 2);
  ASSERT_TRUE(executor.TrySubmit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  started.WaitForNotification();  // the worker holds the first task; the queue is empty
  EXPECT_TRUE(executor.TrySubmit([] {}));
  EXPECT_TRUE(executor.TrySubmit([] {}));
  EXPECT_FALSE(executor.TrySubmit([] {}));
  release.Notify();
}

}  // namespace
}  // namespace flashkv::server

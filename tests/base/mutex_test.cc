// flashkv::Mutex and Notification: waits, wake-ups and lifetime.

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "flashkv/base/mutex.h"
#include "flashkv/base/notification.h"

namespace flashkv {
namespace {

TEST(MutexTest, AwaitReturnsOnceAnotherThreadMakesTheConditionTrue) {
  Mutex mu;
  int value = 0;
  std::thread writer([&] {
    for (int i = 0; i < 100; ++i) {
      MutexLock lock(&mu);
      ++value;
    }
  });
  {
    MutexLock lock(&mu);
    mu.Await([&] { return value == 100; });
    EXPECT_EQ(value, 100);
  }
  writer.join();
}

TEST(MutexTest, AwaitWithTimeoutGivesUp) {
  Mutex mu;
  MutexLock lock(&mu);
  EXPECT_FALSE(mu.AwaitWithTimeout([] { return false; }, absl::Milliseconds(5)));
}

// Found by ThreadSanitizer: Mutex::Unlock notified the condition variable after releasing the
// mutex, so a waiter that saw its condition and returned at once (woken by its deadline, or
// spuriously) could destroy the mutex under that notify — as callers do with a Notification on
// their stack, and as OnDone does with a reactor. Here the waiter polls with short timeouts and
// destroys the Notification the moment it returns; under TSan the old order is a reported race,
// under ASan a use after free when the timing falls that way.
TEST(NotificationTest, TheWaiterMayDestroyItAsSoonAsItReturns) {
  for (int i = 0; i < 500; ++i) {
    auto notification = std::make_unique<Notification>();
    Notification* raw = notification.get();
    std::thread notifier([raw] { raw->Notify(); });
    while (!notification->WaitForNotificationWithTimeout(absl::Microseconds(20))) {
    }
    notification.reset();
    notifier.join();
  }
}

TEST(NotificationTest, EveryWaiterWakes) {
  Notification notification;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i) waiters.emplace_back([&] { notification.WaitForNotification(); });
  EXPECT_FALSE(notification.HasBeenNotified());
  notification.Notify();
  for (std::thread& t : waiters) t.join();
  EXPECT_TRUE(notification.HasBeenNotified());
}

}  // namespace
}  // namespace flashkv

#include "flashkv/server/clock.h"

#include "absl/time/clock.h"

namespace flashkv::server {
namespace {

class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  bool AwaitWithDeadline(Mutex* mu, const std::function<bool()>& condition,
                         absl::Time deadline) override {
    return mu->AwaitWithDeadline(condition, deadline);
  }
};

}  // namespace

std::shared_ptr<Clock> RealClock() {
  static const auto* const clock = new std::shared_ptr<Clock>(std::make_shared<SystemClock>());
  return *clock;
}

}  // namespace flashkv::server

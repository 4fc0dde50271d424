#include "flashkv/server/cpu_affinity.h"

#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "flashkv/cpu_backend.h"
#include "flashkv/server/config.h"
#include "testing/test_server.h"

namespace flashkv::server {
namespace {

std::vector<int> Parsed(const std::string& text) {
  absl::StatusOr<std::vector<int>> cpus = ParseCpuList(text);
  EXPECT_TRUE(cpus.ok()) << text << ": " << cpus.status();
  return cpus.ok() ? *cpus : std::vector<int>{};
}

// The CPUs a thread started now gets, seen from inside it.
std::vector<int> NewThreadsCpus() {
  std::vector<int> seen;
  std::thread([&] { seen = AllowedCpus().value(); }).join();
  return seen;
}

// Puts every thread back on the CPUs the process had, whatever a test did (each test runs in a
// process of its own under ctest, but not when the binary runs alone). Not PinProcessToCpus: it
// refuses CPUs outside the current set, which the test has narrowed.
class CpuAffinityTest : public ::testing::Test {
 protected:
  void SetUp() override { original_ = AllowedCpus().value(); }
  void TearDown() override {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu : original_) CPU_SET(cpu, &set);
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
      sched_setaffinity(std::stoi(task.path().filename().string()), sizeof set, &set);
    }
    ASSERT_EQ(AllowedCpus().value(), original_);
  }
  std::vector<int> original_;
};

TEST(CpuListTest, ParsesTasksetLists) {
  EXPECT_EQ(Parsed("3"), (std::vector<int>{3}));
  EXPECT_EQ(Parsed("2-5"), (std::vector<int>{2, 3, 4, 5}));
  EXPECT_EQ(Parsed("7,0,4-5,5"), (std::vector<int>{0, 4, 5, 7}));
  EXPECT_EQ(Parsed("1023"), (std::vector<int>{1023}));
  EXPECT_EQ(FormatCpuList({0, 2, 3, 4, 7, 9, 10}), "0,2-4,7,9-10");
  EXPECT_EQ(FormatCpuList(Parsed("0,2-4,7,9-10")), "0,2-4,7,9-10");
}

TEST(CpuListTest, RefusesAnythingElseNamingTheField) {
  for (const char* text : {"", ",", "a", "3-", "-3", "1,,2", " 1", "1024", "2-1024", "1-2-3"}) {
    absl::StatusOr<std::vector<int>> cpus = ParseCpuList(text, "--cpus");
    ASSERT_FALSE(cpus.ok()) << "'" << text << "'";
    EXPECT_EQ(cpus.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cpus.status().message().rfind(std::string("--cpus ('") + text + "')", 0), 0)
        << cpus.status();
  }
  absl::StatusOr<std::vector<int>> reversed = ParseCpuList("5-2");
  ASSERT_FALSE(reversed.ok());
  EXPECT_NE(reversed.status().message().find("reversed range 5-2"), std::string::npos);
}

TEST_F(CpuAffinityTest, PinsThreadsAlreadyRunningAndThoseStartedLater) {
  const int cpu = original_.back();
  std::promise<void> pinned;
  std::vector<int> seen_by_older;
  std::thread older([&, ready = pinned.get_future()]() mutable {
    ready.wait();
    seen_by_older = AllowedCpus().value();
  });
  ASSERT_TRUE(PinProcessToCpus({cpu}).ok());
  pinned.set_value();
  older.join();
  EXPECT_EQ(seen_by_older, (std::vector<int>{cpu}));
  EXPECT_EQ(AllowedCpus().value(), (std::vector<int>{cpu}));
  EXPECT_EQ(NewThreadsCpus(), (std::vector<int>{cpu}));
}

TEST_F(CpuAffinityTest, RefusesCpusOutsideTheAllowedSetAndChangesNothing) {
  int outside = -1;
  for (int cpu = kMaxCpus - 1; cpu >= 0 && outside < 0; --cpu) {
    if (!std::binary_search(original_.begin(), original_.end(), cpu)) outside = cpu;
  }
  ASSERT_GE(outside, 0);
  const absl::Status status = PinProcessToCpus({original_.front(), outside}, "--cpus");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_NE(message.find("names CPU " + std::to_string(outside)), std::string::npos) << message;
  EXPECT_NE(message.find("it may run on " + FormatCpuList(original_)), std::string::npos)
      << message;
  EXPECT_EQ(message.rfind("--cpus (", 0), 0) << message;
  EXPECT_EQ(AllowedCpus().value(), original_);
  EXPECT_EQ(PinProcessToCpus({}).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuAffinityTest, ServerKeepsItsThreadsOnTheConfiguredCpus) {
  ServerConfig config = testing::SmallModelConfig();
  config.cpus = {original_.front()};
  config.cpu_threads = 0;  // the default: sized by the list
  absl::StatusOr<std::unique_ptr<testing::TestServer>> server = testing::TestServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  // The server's threads (gRPC's, the schedulers', the kernels' pool) inherit the set.
  EXPECT_EQ(AllowedCpus().value(), (std::vector<int>{original_.front()}));
  EXPECT_EQ(NewThreadsCpus(), (std::vector<int>{original_.front()}));
  EXPECT_EQ(cpu::NumThreads(), 1);  // the kernels' pool: one thread per listed CPU
  server->reset();

  ServerConfig bad = testing::SmallModelConfig();
  bad.cpus = {kMaxCpus};
  const absl::Status invalid = testing::TestServer::Start(bad).status();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(invalid.message().find("cpus (1024) must be in [0, 1024)"), std::string::npos)
      << invalid;
}

}  // namespace
}  // namespace flashkv::server

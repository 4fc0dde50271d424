// The flashkv-server binary on SIGTERM: health turns NOT_SERVING, calls in flight finish with
// their results, new calls are refused, and the process exits 0 within the drain deadline.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "flashkv/transport.h"
#include "flashkv/v1/attention.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/reference.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;
using Clock = std::chrono::steady_clock;

// The server process, killed (SIGKILL) if a test leaves it running.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& args) {
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(FLASHKV_SERVER_BINARY));
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(FLASHKV_SERVER_BINARY, argv.data());
      _exit(127);
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  void Signal(int signal) { kill(pid_, signal); }
  // The exit status, or -1 if it did not exit within `timeout`.
  int WaitForExit(std::chrono::seconds timeout) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
};

bool WaitForServing(const std::shared_ptr<grpc::Channel>& channel, std::chrono::seconds timeout) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    if (stub->Check(&context, request, &response).ok() &&
        response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(DrainTest, SigtermFinishesCallsInFlightThenExitsZero) {
  const std::string socket = "/tmp/flashkv-drain-test-" + std::to_string(getpid()) + ".sock";
  ServerProcess process({"--backend=cpu", "--listen=unix:" + socket, "--metrics-address=off",
                         "--layers=2", "--q-heads=4", "--kv-heads=2", "--head-dim=64",
                         "--dtype=fp32", "--page-size=4", "--kv-cache-bytes=4MiB",
                         "--cpu-threads=2", "--drain-deadline=20s", "--log-level=warn"});
  auto channel = grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(),
                                           MakeChannelArguments(TransportOptions{}));
  ASSERT_TRUE(WaitForServing(channel, std::chrono::seconds(30)));
  auto stub = v1::AttentionService::NewStub(channel);

  // A call long enough (a second or more on two cores) to be in flight when the signal lands.
  std::mt19937_64 rng(1);
  v1::AttentionRequest request;
  const int s = 1024;
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_q());
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_k());
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_v());
  v1::AttentionResponse response;
  grpc::ClientContext context;
  absl::Notification done;
  grpc::Status status;
  stub->async()->Attention(&context, &request, &response, [&](grpc::Status s) {
    status = s;
    done.Notify();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  ASSERT_FALSE(done.HasBeenNotified()) << "the call finished before the signal; make it longer";
  process.Signal(SIGTERM);

  done.WaitForNotification();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.out().shape_size(), 4);
  EXPECT_EQ(response.out().data().size(), size_t(s) * 8 * 64 * 4);

  // New calls are refused once the drain began.
  grpc::ClientContext late_context;
  v1::AttentionResponse late_response;
  const grpc::Status late = stub->Attention(&late_context, request, &late_response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE) << late.error_message();

  EXPECT_EQ(process.WaitForExit(std::chrono::seconds(25)), 0);
  unlink(socket.c_str());
}

TEST(DrainTest, BadFlagsExitNonZeroWithAMessage) {
  ServerProcess process({"--backend=cpu", "--q-heads=3", "--kv-heads=2", "--metrics-address=off",
                         "--listen=127.0.0.1:0", "--log-level=off"});
  EXPECT_EQ(process.WaitForExit(std::chrono::seconds(20)), 1);
  ServerProcess unknown({"--no-such-flag"});
  EXPECT_NE(unknown.WaitForExit(std::chrono::seconds(20)), 0);
}

}  // namespace
}  // namespace flashkv::testing

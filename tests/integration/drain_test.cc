// The flashkv-server binary on SIGTERM: health turns NOT_SERVING, calls in flight finish with
// their results, new calls are refused, and the process exits 0 within the drain deadline.

#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashkv/base/handoff.h"
#include "flashkv/base/notification.h"
#include "flashkv/transport.h"
#include "flashkv/v1/attention.grpc.pb.h"
#include "flashkv/v1/kvcache.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/http_get.h"
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

// A port nothing listens on right now (the kernel's next ephemeral one; a race with other
// processes is possible but harmless in tests).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t size = sizeof address;
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  close(fd);
  return ntohs(address.sin_port);
}

// The value of one sample in Prometheus text, 0 when absent.
double MetricValue(const std::string& text, const std::string& sample) {
  const size_t at = text.find("\n" + sample + " ");
  if (at == std::string::npos) return 0;
  return std::stod(text.substr(at + sample.size() + 2));
}

// Probes the server's health (service ""), as Kubernetes' probes do: it must not say SERVING
// before the caches exist (flashkv's health service starts NOT_SERVING; gRPC's default one
// answered "" SERVING at first, which a probe under TSan on a loaded machine once met).
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

// flashkv-server on its own Unix socket (small fp32 model, CPU backend, a metrics port), and a
// channel to it once it is SERVING.
struct RunningServer {
  std::string socket;
  std::string metrics_address;
  std::unique_ptr<ServerProcess> process;
  std::shared_ptr<grpc::Channel> channel;
  ~RunningServer() { unlink(socket.c_str()); }
};

std::unique_ptr<RunningServer> StartServing(const std::string& name,
                                            const std::vector<std::string>& flags) {
  auto s = std::make_unique<RunningServer>();
  s->socket = "/tmp/flashkv-" + name + "-" + std::to_string(getpid()) + ".sock";
  s->metrics_address = "127.0.0.1:" + std::to_string(FreePort());
  std::vector<std::string> args = {"--backend=cpu",
                                   "--plaintext",
                                   "--listen=unix:" + s->socket,
                                   "--metrics-address=" + s->metrics_address,
                                   "--layers=2",
                                   "--q-heads=4",
                                   "--kv-heads=2",
                                   "--head-dim=64",
                                   "--dtype=fp32",
                                   "--cpu-threads=2",
                                   "--drain-deadline=20s",
                                   "--log-level=warn"};
  args.insert(args.end(), flags.begin(), flags.end());
  s->process = std::make_unique<ServerProcess>(args);
  // Connect only once the socket exists: a first attempt that fails puts the channel into gRPC's
  // reconnect backoff, which waits seconds.
  for (int i = 0; i < 600 && access(s->socket.c_str(), F_OK) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  s->channel = grpc::CreateCustomChannel("unix:" + s->socket, grpc::InsecureChannelCredentials(),
                                         MakeChannelArguments(TransportOptions{}));
  if (!WaitForServing(s->channel, std::chrono::seconds(30))) return nullptr;
  return s;
}

TEST(DrainTest, SigtermFinishesCallsInFlightThenExitsZero) {
  auto server = StartServing("drain-attention",
                             {"--page-size=4", "--kv-cache-bytes=4MiB", "--attention-threads=1"});
  ASSERT_NE(server, nullptr);
  ServerProcess& process = *server->process;
  const std::string& metrics_address = server->metrics_address;
  auto stub = v1::AttentionService::NewStub(server->channel);

  // Calls queued behind one attention thread. The signal lands once the server has started all of
  // them (its in-flight gauge says so) and before most have finished, whatever the machine's
  // speed; every one must complete. (Calls the server has not started yet when a drain begins
  // are refused by gRPC, as new calls are.)
  std::mt19937_64 rng(1);
  v1::AttentionRequest request;
  const int s = 1024;
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_q());
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_k());
  RandomTensor(DType::kFloat32, {1, s, 8, 64}, rng).ToProto(request.mutable_v());
  constexpr int kCalls = 8;
  struct Call {
    grpc::ClientContext context;
    v1::AttentionResponse response;
    grpc::Status status;
    Notification done;
  } calls[kCalls];
  for (Call& call : calls) {
    HandOff(&call);  // to gRPC's callback thread (flashkv/base/handoff.h)
    // One captured reference, no more: gRPC copies the callback after the hand-off, and a closure
    // this small lives inside the std::function, which gRPC moves to the callback's thread. A
    // larger one is a heap copy that the callback reads before its TakeBack, which TSan lets pass
    // only while it can restore the copying thread's stack (tests/sanitizers/tsan.supp).
    stub->async()->Attention(&call.context, &request, &call.response, [&call](grpc::Status s) {
      TakeBack(&call);
      call.status = s;
      call.done.Notify();
    });
  }
  for (;;) {
    absl::StatusOr<std::string> metrics = HttpGet(metrics_address, "/metrics");
    if (metrics.ok()) {
      const double in_flight = MetricValue(*metrics, "flashkv_rpc_in_flight{rpc=\"Attention\"}");
      const double answered =
          MetricValue(*metrics, "flashkv_rpc_requests_total{code=\"OK\",rpc=\"Attention\"}");
      if (in_flight >= 1 && in_flight + answered == kCalls) break;
    }
    int finished = 0;
    for (Call& call : calls) finished += call.done.HasBeenNotified() ? 1 : 0;
    ASSERT_LT(finished, kCalls) << "all calls finished before the signal";
  }
  process.Signal(SIGTERM);
  for (Call& call : calls) {
    call.done.WaitForNotification();
    EXPECT_TRUE(call.status.ok()) << call.status.error_message();
    EXPECT_EQ(call.response.out().data().size(), size_t(s) * 8 * 64 * 4);
  }

  // New calls are refused once the drain began.
  grpc::ClientContext late_context;
  v1::AttentionResponse late_response;
  const grpc::Status late = stub->Attention(&late_context, request, &late_response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE) << late.error_message();

  EXPECT_EQ(process.WaitForExit(std::chrono::seconds(25)), 0);
}

// A StepStream with long prefills in flight: every step the server took is answered, then the
// stream ends with UNAVAILABLE and the process exits 0.
TEST(DrainTest, SigtermLetsStepsInFlightFinishThenEndsStreams) {
  auto server = StartServing("drain-steps",
                             {"--page-size=16", "--kv-cache-bytes=32MiB", "--prefill-chunk=16"});
  ASSERT_NE(server, nullptr);
  ServerProcess& process = *server->process;
  const std::string& metrics_address = server->metrics_address;
  auto stub = v1::KvCacheService::NewStub(server->channel);
  // Steps answered OK so far (-1 if the metrics endpoint does not answer within 10 s).
  const auto answered_so_far = [&]() -> double {
    for (const auto end = Clock::now() + std::chrono::seconds(10); Clock::now() < end;) {
      absl::StatusOr<std::string> metrics = HttpGet(metrics_address, "/metrics");
      if (metrics.ok()) {
        return MetricValue(*metrics, "flashkv_rpc_requests_total{code=\"OK\",rpc=\"StepStream\"}");
      }
    }
    return -1;
  };
  std::mt19937_64 rng(2);
  const int n = 1024;  // tokens per step: 64 launches of 16 rows
  constexpr int kSteps = 2;
  // The signal must land while a step computes, but one scrape of the metrics can take longer
  // than both steps on a loaded machine (200 ms under TSan on 2 cores, against 300 ms for a
  // step). An attempt whose steps were all answered before a scrape saw one in flight ends its
  // stream and goes again on a new sequence; the server is not signalled until one is seen.
  for (int attempt = 0;; ++attempt) {
    ASSERT_LT(attempt, 5) << "every attempt's steps were answered before the signal could land";
    const std::string sequence = "s" + std::to_string(attempt);
    {
      grpc::ClientContext context;
      v1::CreateSequenceRequest request;
      request.set_sequence_id(sequence);
      v1::CreateSequenceResponse response;
      const grpc::Status created = stub->CreateSequence(&context, request, &response);
      ASSERT_TRUE(created.ok()) << created.error_code() << " " << created.error_message();
    }
    const double answered_before = answered_so_far();
    ASSERT_GE(answered_before, 0) << "the metrics endpoint does not answer";
    grpc::ClientContext context;
    auto stream = stub->StepStream(&context);
    for (int i = 0; i < kSteps; ++i) {
      v1::StepRequest request;
      request.set_step_id(i);
      v1::StepEntry* entry = request.add_entries();
      entry->set_sequence_id(sequence);
      RandomTensor(DType::kFloat32, {n, 4, 64}, rng).ToProto(entry->mutable_q());
      RandomTensor(DType::kFloat32, {n, 2, 64}, rng).ToProto(entry->mutable_k());
      RandomTensor(DType::kFloat32, {n, 2, 64}, rng).ToProto(entry->mutable_v());
      ASSERT_TRUE(stream->Write(request));
    }
    bool signalled = false;
    for (const auto end = Clock::now() + std::chrono::seconds(60);;) {
      ASSERT_LT(Clock::now(), end) << "the server never took the steps";
      absl::StatusOr<std::string> metrics = HttpGet(metrics_address, "/metrics");
      if (!metrics.ok()) continue;
      const double in_flight = MetricValue(*metrics, "flashkv_rpc_in_flight{rpc=\"StepStream\"}");
      const double answered =
          MetricValue(*metrics, "flashkv_rpc_requests_total{code=\"OK\",rpc=\"StepStream\"}") -
          answered_before;
      if (in_flight >= 1 && in_flight + answered == kSteps) {
        process.Signal(SIGTERM);
        signalled = true;
        break;
      }
      if (answered == kSteps) break;  // too late: both steps are done
    }
    int responses = 0;
    v1::StepResponse response;
    while (stream->Read(&response)) {
      EXPECT_EQ(response.step_id(), uint64_t(responses));
      ASSERT_EQ(response.out_size(), 1);
      EXPECT_EQ(response.out(0).data().size(), size_t(n) * 4 * 64 * 4);
      ++responses;
      if (!signalled && responses == kSteps) stream->WritesDone();
    }
    EXPECT_EQ(responses, kSteps) << "every step the server took is answered";
    const grpc::Status status = stream->Finish();
    if (!signalled) {
      EXPECT_TRUE(status.ok()) << status.error_message();
      continue;
    }
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    break;
  }
  EXPECT_EQ(process.WaitForExit(std::chrono::seconds(25)), 0);
}

// SIGHUP re-reads the token file without a restart; SIGHUP during the drain is ignored.
TEST(DrainTest, SighupReloadsTheTokenFile) {
  const std::string tokens = "/tmp/flashkv-sighup-" + std::to_string(getpid()) + ".txt";
  const std::string old_token = "old-token-0123456789abcdef";
  const std::string new_token = "new-token-0123456789abcd";
  std::ofstream(tokens) << old_token << " t\n";
  auto server = StartServing("sighup", {"--tokens-file=" + tokens, "--kv-cache-bytes=4MiB"});
  ASSERT_NE(server, nullptr);
  auto stub = v1::KvCacheService::NewStub(server->channel);
  auto info_with = [&](const std::string& token) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", "Bearer " + token);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::CacheInfo info;
    return stub->GetCacheInfo(&context, v1::GetCacheInfoRequest(), &info).error_code();
  };
  EXPECT_EQ(info_with(old_token), grpc::StatusCode::OK);
  EXPECT_EQ(info_with(new_token), grpc::StatusCode::UNAUTHENTICATED);
  std::ofstream(tokens) << new_token << " t\n";
  server->process->Signal(SIGHUP);
  const auto end = Clock::now() + std::chrono::seconds(10);
  while (info_with(new_token) != grpc::StatusCode::OK && Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(info_with(new_token), grpc::StatusCode::OK);
  EXPECT_EQ(info_with(old_token), grpc::StatusCode::UNAUTHENTICATED);
  server->process->Signal(SIGTERM);
  server->process->Signal(SIGHUP);
  EXPECT_EQ(server->process->WaitForExit(std::chrono::seconds(25)), 0);
  unlink(tokens.c_str());
}

TEST(DrainTest, BadFlagsExitNonZeroWithAMessage) {
  ServerProcess process({"--backend=cpu", "--plaintext", "--q-heads=3", "--kv-heads=2",
                         "--metrics-address=off", "--listen=127.0.0.1:0", "--log-level=off"});
  EXPECT_EQ(process.WaitForExit(std::chrono::seconds(20)), 1);
  ServerProcess unknown({"--no-such-flag"});
  EXPECT_NE(unknown.WaitForExit(std::chrono::seconds(20)), 0);
}

}  // namespace
}  // namespace flashkv::testing

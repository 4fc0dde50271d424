// What every flashkv server offers besides its two services: grpc.health.v1, server reflection,
// and the Prometheus endpoint counting RPCs by method and code.

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "flashkv/base/handoff.h"
#include "flashkv/base/notification.h"
#include "flashkv/wire/message_builder.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/conversation.h"
#include "testing/http_get.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr const char* kServiceNames[] = {"", "flashkv.v1.AttentionService",
                                         "flashkv.v1.KvCacheService"};

HealthCheckResponse::ServingStatus Check(Health::Stub& stub, const std::string& service,
                                         grpc::Status* status) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  *status = stub.Check(&context, request, &response);
  return response.status();
}

HealthCheckResponse::ServingStatus Check(TestServer& server, const std::string& service,
                                         grpc::Status* status) {
  auto stub = Health::NewStub(server.channel());
  return Check(*stub, service, status);
}

TEST(ServiceTest, HealthIsServingOnceStartedAndNotServingWhileDraining) {
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(SmallModelConfig());
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::Status status;
  for (const char* service : kServiceNames) {
    EXPECT_EQ(Check(**server, service, &status), HealthCheckResponse::SERVING) << service;
    EXPECT_TRUE(status.ok()) << service;
  }
  Check(**server, "no.such.Service", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);

  // A Watch started before the drain sees NOT_SERVING when the drain begins.
  auto stub = Health::NewStub((*server)->channel());
  grpc::ClientContext watch_context;
  HealthCheckRequest request;
  auto reader = stub->Watch(&watch_context, request);
  HealthCheckResponse update;
  ASSERT_TRUE(reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  std::thread drain([&] { (*server)->server().Shutdown(absl::Milliseconds(500)); });
  bool saw_not_serving = false;
  while (reader->Read(&update)) {
    if (update.status() == HealthCheckResponse::NOT_SERVING) saw_not_serving = true;
  }
  drain.join();
  EXPECT_TRUE(saw_not_serving);
}

// From the first moment the server accepts connections (start-up held there, before the KV pools
// exist) every name is NOT_SERVING, for Check and for a Watch opened then; SERVING once Create
// returns; NOT_SERVING again when the drain begins, after which the Watch ends (OK) without
// holding the drain. gRPC's default health service would answer "" SERVING at first.
TEST(ServiceTest, HealthIsNotServingUntilTheServerIsReady) {
  server::ServerConfig config = SmallModelConfig();
  const std::string socket = "/tmp/flashkv-health-" + std::to_string(getpid()) + ".sock";
  unlink(socket.c_str());
  config.listen_address = "unix:" + socket;
  Notification listening, ready_to_go_on;
  config.on_listening = [&] {
    listening.Notify();
    ready_to_go_on.WaitForNotification();
  };
  absl::StatusOr<std::unique_ptr<server::Server>> server;
  std::thread start([&] { server = server::Server::Create(config); });
  auto stub = Health::NewStub(
      grpc::CreateChannel(config.listen_address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext watch_context;
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch;
  HealthCheckResponse update;
  // No ASSERT until start-up is let go: the start thread waits for it.
  if (listening.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    grpc::Status status;
    for (const char* service : kServiceNames) {
      EXPECT_EQ(Check(*stub, service, &status), HealthCheckResponse::NOT_SERVING) << service;
      EXPECT_TRUE(status.ok()) << service << ": " << status.error_message();
    }
    watch = stub->Watch(&watch_context, HealthCheckRequest());
    EXPECT_TRUE(watch->Read(&update));
    EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  } else {
    ADD_FAILURE() << "the server never listened";
  }
  ready_to_go_on.Notify();
  start.join();
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_NE(watch, nullptr);

  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  grpc::Status status;
  for (const char* service : kServiceNames) {
    EXPECT_EQ(Check(*stub, service, &status), HealthCheckResponse::SERVING) << service;
  }

  // The drain deadline is long: a Watch that held the drain would show in the time it took.
  const auto drain_start = std::chrono::steady_clock::now();
  std::thread drain([&] { (*server)->Shutdown(absl::Seconds(60)); });
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&update));
  // The server ends the Watch with OK before it closes the connection; the status can still be
  // lost when the connection closes before the client has read it (UNAVAILABLE, "Broken pipe":
  // seen once in 20 runs under TSan), but the stream never stays open into the drain's deadline.
  const grpc::Status watch_status = watch->Finish();
  EXPECT_TRUE(watch_status.ok() || watch_status.error_code() == grpc::StatusCode::UNAVAILABLE)
      << watch_status.error_code() << ": " << watch_status.error_message();
  drain.join();
  EXPECT_LT(std::chrono::steady_clock::now() - drain_start, std::chrono::seconds(30));
  // New calls are refused once the drain has begun.
  EXPECT_NE(Check(*stub, "", &status), HealthCheckResponse::SERVING);
  EXPECT_FALSE(status.ok());
  unlink(socket.c_str());
}

// A Watch of a name the server does not know says SERVICE_UNKNOWN and stays open; the client's
// cancel ends it (the server's reactor finishes and leaves the service), and the server still
// answers and shuts down promptly afterwards.
TEST(ServiceTest, HealthWatchOfAnUnknownNameSaysSoAndEndsOnCancel) {
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(SmallModelConfig());
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Health::NewStub((*server)->channel());
  grpc::ClientContext context;
  HealthCheckRequest request;
  request.set_service("no.such.Service");
  auto watch = stub->Watch(&context, request);
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  context.TryCancel();
  EXPECT_FALSE(watch->Read(&update));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::CANCELLED);
  grpc::Status status;
  EXPECT_EQ(Check(**server, "", &status), HealthCheckResponse::SERVING);
  const auto drain_start = std::chrono::steady_clock::now();
  (*server)->server().Shutdown(absl::Seconds(60));
  EXPECT_LT(std::chrono::steady_clock::now() - drain_start, std::chrono::seconds(30));
}

TEST(ServiceTest, ReflectionListsTheServices) {
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(SmallModelConfig());
  ASSERT_TRUE(server.ok()) << server.status();
  // grpc.reflection.v1alpha.ServerReflectionRequest{list_services: ""}, by hand: the reflection
  // messages are compiled into libgrpc++_reflection and must not be generated twice.
  wire::MessageBuilder builder;
  builder.LengthDelimitedHeader(7, 0);
  grpc::ByteBuffer request = builder.Finish();

  class Reactor : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    void OnReadDone(bool ok) override {
      TakeBack(this);  // from the test's thread, through gRPC (flashkv/base/handoff.h)
      read_ok = ok;
      StartWritesDone();
    }
    void OnDone(const grpc::Status& s) override {
      TakeBack(this);
      status = s;
      done.Notify();
    }
    grpc::ByteBuffer response;
    bool read_ok = false;
    grpc::Status status;
    Notification done;
  } reactor;
  grpc::GenericStub stub((*server)->channel());
  grpc::ClientContext context;
  stub.PrepareBidiStreamingCall(&context,
                                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                grpc::StubOptions(), &reactor);
  HandOff(&reactor);
  reactor.StartRead(&reactor.response);
  reactor.StartWrite(&request);
  reactor.StartCall();
  reactor.done.WaitForNotification();
  ASSERT_TRUE(reactor.status.ok()) << reactor.status.error_message();
  ASSERT_TRUE(reactor.read_ok);
  grpc::Slice flat;
  ASSERT_TRUE(reactor.response.DumpToSingleSlice(&flat).ok());
  const std::string bytes(reinterpret_cast<const char*>(flat.begin()), flat.size());
  for (const char* name :
       {"flashkv.v1.AttentionService", "flashkv.v1.KvCacheService", "grpc.health.v1.Health"}) {
    EXPECT_NE(bytes.find(name), std::string::npos) << name << " not in " << bytes;
  }
}

TEST(ServiceTest, MetricsCountRpcsByMethodAndCode) {
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(SmallModelConfig());
  ASSERT_TRUE(server.ok()) << server.status();
  std::mt19937_64 rng(3);
  v1::AttentionRequest request;
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_q());
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_k());
  RandomTensor(DType::kFloat32, {1, 2, 2, 64}, rng).ToProto(request.mutable_v());
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    v1::AttentionResponse response;
    ASSERT_TRUE((*server)->attention().Attention(&context, request, &response).ok());
  }
  request.clear_v();
  grpc::ClientContext context;
  v1::AttentionResponse response;
  ASSERT_FALSE((*server)->attention().Attention(&context, request, &response).ok());

  absl::StatusOr<std::string> body = HttpGet((*server)->server().metrics_address(), "/metrics");
  ASSERT_TRUE(body.ok()) << body.status();
  EXPECT_NE(body->find("flashkv_rpc_requests_total{code=\"OK\",rpc=\"Attention\"} 3"),
            std::string::npos)
      << *body;
  EXPECT_NE(body->find("flashkv_rpc_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"Attention\"} 1"),
            std::string::npos);
  EXPECT_NE(body->find("flashkv_rpc_latency_seconds_count{rpc=\"Attention\"} 4"),
            std::string::npos);
}

TEST(ServiceTest, RefusesToStartOnABadConfigOrAnAddressInUse) {
  server::ServerConfig config = SmallModelConfig();
  config.model.num_q_heads = 3;
  absl::StatusOr<std::unique_ptr<TestServer>> bad = TestServer::Start(config);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("q-heads (3)"), std::string::npos) << bad.status();

  absl::StatusOr<std::unique_ptr<TestServer>> first = TestServer::Start(SmallModelConfig());
  ASSERT_TRUE(first.ok());
  config = SmallModelConfig();
  config.listen_address = (*first)->target();
  absl::StatusOr<std::unique_ptr<TestServer>> second = TestServer::Start(config);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

}  // namespace
}  // namespace flashkv::testing

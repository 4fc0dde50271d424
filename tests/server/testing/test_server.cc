#include "testing/test_server.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "flashkv/transport.h"

namespace flashkv::testing {

server::ServerConfig SmallModelConfig() {
  server::ServerConfig c;
  c.model.num_layers = 3;
  c.model.num_q_heads = 4;
  c.model.num_kv_heads = 2;
  c.model.head_dim = 64;
  c.model.dtype = DType::kFloat32;
  c.model.page_size = 4;
  c.backend = server::BackendChoice::kCpu;
  c.cpu_devices = 1;
  c.cpu_threads = 2;
  c.kv_cache_bytes = 8 << 20;
  c.listen_address = "127.0.0.1:0";
  c.metrics_address = "127.0.0.1:0";
  c.drain_deadline = absl::Seconds(5);
  c.security.plaintext = true;  // loopback tests; tests/server/security_test.cc covers TLS
  c.log_level = "warn";
  return c;
}

absl::StatusOr<std::unique_ptr<TestServer>> TestServer::Start(const server::ServerConfig& config) {
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  std::unique_ptr<TestServer> t(new TestServer());
  t->config_ = config;
  absl::StatusOr<std::unique_ptr<server::Server>> server = server::Server::Create(config);
  if (!server.ok()) return server.status();
  t->server_ = *std::move(server);
  t->channel_ = t->NewChannel();
  if (!t->channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return absl::UnavailableError("cannot connect to the test server at " + t->target());
  }
  t->attention_ = flashkv::v1::AttentionService::NewStub(t->channel_);
  t->kvcache_ = flashkv::v1::KvCacheService::NewStub(t->channel_);
  return t;
}

std::shared_ptr<grpc::Channel> TestServer::NewChannel() const {
  return grpc::CreateCustomChannel(target(), grpc::InsecureChannelCredentials(),
                                   MakeChannelArguments(TransportOptions{}));
}

}  // namespace flashkv::testing

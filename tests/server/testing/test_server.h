#pragma once

// Starts a real flashkv server in-process on 127.0.0.1 (port 0, CPU backend, a small model) and
// hands out channels and stubs, as integration tests need.

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "flashkv/server/config.h"
#include "flashkv/server/server.h"
#include "flashkv/v1/attention.grpc.pb.h"
#include "flashkv/v1/kvcache.grpc.pb.h"

namespace flashkv::testing {

// A small model on the CPU backend: 3 layers, 4 query heads over 2 KV heads, head dim 64, fp32,
// pages of 4 tokens; metrics on an ephemeral port; a short drain deadline.
server::ServerConfig SmallModelConfig();

class TestServer {
 public:
  static absl::StatusOr<std::unique_ptr<TestServer>> Start(const server::ServerConfig& config);

  server::Server& server() { return *server_; }
  const server::ServerConfig& config() const { return config_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(server_->port()); }
  // A new channel (its own connection) with flashkv's transport settings.
  std::shared_ptr<grpc::Channel> NewChannel() const;
  flashkv::v1::AttentionService::Stub& attention() { return *attention_; }
  flashkv::v1::KvCacheService::Stub& kvcache() { return *kvcache_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  TestServer() = default;
  server::ServerConfig config_;
  std::unique_ptr<server::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<flashkv::v1::AttentionService::Stub> attention_;
  std::unique_ptr<flashkv::v1::KvCacheService::Stub> kvcache_;
};

}  // namespace flashkv::testing

#pragma once

// Channels to a flashkv server: TCP ("host:port", "dns:///host:port", "ipv4:..."), Unix sockets
// ("unix:/path" or "unix-abstract:name"), plaintext or TLS (optionally mutual), with channel
// arguments sized for megabyte tensor messages.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/channel_arguments.h"

namespace flashkv {

struct TlsConfig {
  bool enabled = false;
  // PEM files. Empty root_certs_file: the system's roots (gRPC's default bundle).
  std::string root_certs_file;
  // Mutual TLS: both or neither.
  std::string client_cert_file;
  std::string client_key_file;
  // Name checked against the server certificate instead of the target's host (tests, IPs).
  std::string server_name_override;
};

struct ChannelConfig {
  std::string target = "127.0.0.1:50051";
  TlsConfig tls;
  // Largest message either way. Tensors ride in messages: a prefill chunk of 2048 tokens with
  // 32 heads of 128 fp16 values is 16 MiB for Q alone.
  int64_t max_message_bytes = int64_t{1} << 30;
  // Gives the channel its own TCP connection instead of sharing one with every other channel to
  // the same target (gRPC pools subchannels process-wide). Load generators use several
  // connections so one HTTP/2 connection's flow control and framing thread do not cap them.
  bool dedicated_connection = false;
  // Seconds between keepalive pings while calls are open (0 = none, gRPC's default), so a
  // half-dead connection behind a proxy fails fast instead of hanging a step. The server must
  // accept pings this often (its GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS), or it
  // answers with GOAWAY "too_many_pings".
  int keepalive_seconds = 0;
};

// The channel arguments every flashkv client channel carries (message limits, HTTP/2 flow-control
// windows and frame size for megabyte messages, keepalive).
grpc::ChannelArguments MakeChannelArguments(const ChannelConfig& config);

// Reads the TLS files and builds the channel. Errors (unreadable file, cert without key, empty
// target) are INVALID_ARGUMENT naming the field; connection happens lazily on the first call.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ChannelConfig& config);

}  // namespace flashkv

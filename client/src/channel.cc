#include "flashkv/client/channel.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace flashkv {
namespace {

// HTTP/2 windows: gRPC starts a stream at 64 KiB and grows it by BDP probing, which costs several
// round trips per megabyte message before the window opens. Starting at 8 MiB (lookahead) lets a
// typical per-layer step go out in one flight; BDP probing stays on to grow it further.
constexpr int kStreamWindowBytes = 8 << 20;
// The largest frame HTTP/2 allows (2^24 - 1): fewer frame headers and wakeups per message.
constexpr int kMaxFrameBytes = (1 << 24) - 1;
// Socket reads in large chunks, so a megabyte message is not assembled from 8 KiB reads.
constexpr int kTcpMinReadChunkBytes = 256 << 10;
constexpr int kTcpMaxReadChunkBytes = 8 << 20;

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(field, ": cannot read '", path, "'"));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(const TlsConfig& tls) {
  if (!tls.enabled) return grpc::InsecureChannelCredentials();
  if (tls.client_cert_file.empty() != tls.client_key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls client_cert_file and client_key_file must be given together (mutual TLS)");
  }
  grpc::SslCredentialsOptions options;
  if (!tls.root_certs_file.empty()) {
    absl::StatusOr<std::string> roots = ReadFile(tls.root_certs_file, "tls root_certs_file");
    if (!roots.ok()) return roots.status();
    options.pem_root_certs = *std::move(roots);
  }
  if (!tls.client_cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadFile(tls.client_cert_file, "tls client_cert_file");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadFile(tls.client_key_file, "tls client_key_file");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *std::move(cert);
    options.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(options);
}

}  // namespace

grpc::ChannelArguments MakeChannelArguments(const ChannelConfig& config) {
  grpc::ChannelArguments args;
  const int max_message = static_cast<int>(
      std::min<int64_t>(config.max_message_bytes, std::numeric_limits<int>::max()));
  args.SetMaxReceiveMessageSize(max_message);
  args.SetMaxSendMessageSize(max_message);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamWindowBytes);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kMaxFrameBytes);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 1);
  args.SetInt(GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, kTcpMinReadChunkBytes);
  args.SetInt(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, kTcpMaxReadChunkBytes);
  if (config.keepalive_seconds > 0) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, config.keepalive_seconds * 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10 * 1000);
    // Only while calls are open: an idle client has nothing to lose, and a server counts pings
    // without calls as strikes.
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  }
  if (config.dedicated_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (config.tls.enabled && !config.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(config.tls.server_name_override);
  }
  return args;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ChannelConfig& config) {
  if (config.target.empty()) return absl::InvalidArgumentError("target must not be empty");
  if (config.max_message_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes (", config.max_message_bytes, ") must be >= 1"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeCredentials(config.tls);
  if (!credentials.ok()) return credentials.status();
  return grpc::CreateCustomChannel(config.target, *credentials, MakeChannelArguments(config));
}

}  // namespace flashkv

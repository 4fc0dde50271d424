#include "flashkv/client/channel.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace flashkv {
namespace {

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

grpc::ChannelArguments ChannelArgumentsFor(const ChannelConfig& config) {
  grpc::ChannelArguments args = MakeChannelArguments(config.transport);
  if (config.dedicated_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (config.tls.enabled && !config.tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(config.tls.server_name_override);
  }
  return args;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ChannelConfig& config) {
  if (config.target.empty()) return absl::InvalidArgumentError("target must not be empty");
  if (config.transport.max_receive_message_bytes < 1 ||
      config.transport.max_send_message_bytes < 1) {
    return absl::InvalidArgumentError("transport message limits must be >= 1");
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeCredentials(config.tls);
  if (!credentials.ok()) return credentials.status();
  return grpc::CreateCustomChannel(config.target, *credentials, ChannelArgumentsFor(config));
}

}  // namespace flashkv

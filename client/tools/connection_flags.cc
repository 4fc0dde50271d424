#include "connection_flags.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace flashkv::tools {

void AddConnectionFlags(CLI::App* app, ConnectionFlags* flags) {
  app->add_option("--target", flags->target,
                  "server address: host:port, dns:///host:port or unix:/path")
      ->capture_default_str();
  app->add_flag("--tls", flags->tls, "use TLS (system roots unless --tls-ca)");
  app->add_option("--tls-ca", flags->tls_ca, "PEM file of root certificates to trust");
  app->add_option("--tls-cert", flags->tls_cert, "PEM client certificate (mutual TLS)");
  app->add_option("--tls-key", flags->tls_key, "PEM client private key (mutual TLS)");
  app->add_option("--tls-server-name", flags->tls_server_name,
                  "name to check the server certificate against instead of the target host");
  app->add_option("--token-file", flags->token_file,
                  "file holding a bearer token sent as 'authorization: Bearer <token>'");
  app->add_option("--timeout", flags->timeout_s, "deadline of each call, seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

absl::StatusOr<ClientConfig> MakeClientConfig(const ConnectionFlags& flags) {
  ClientConfig config;
  config.channel.target = flags.target;
  TlsConfig& tls = config.channel.tls;
  tls.enabled = flags.tls || !flags.tls_ca.empty() || !flags.tls_cert.empty() ||
                !flags.tls_key.empty() || !flags.tls_server_name.empty();
  tls.root_certs_file = flags.tls_ca;
  tls.client_cert_file = flags.tls_cert;
  tls.client_key_file = flags.tls_key;
  tls.server_name_override = flags.tls_server_name;
  config.default_timeout = absl::Seconds(flags.timeout_s);
  if (!flags.token_file.empty()) {
    std::ifstream in(flags.token_file);
    std::string token;
    if (!in || !std::getline(in, token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file: cannot read a token from '", flags.token_file, "'"));
    }
    config.bearer_token = std::string(absl::StripAsciiWhitespace(token));
    if (config.bearer_token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-file: '", flags.token_file, "' holds an empty token"));
    }
  }
  return config;
}

}  // namespace flashkv::tools

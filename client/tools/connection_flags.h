#pragma once

// The connection flags every flashkv tool takes (--target, --tls*, --token-file, --timeout),
// registered on a CLI11 app and turned into a ClientConfig.

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "flashkv/client/client.h"

namespace flashkv::tools {

struct ConnectionFlags {
  std::string target = "127.0.0.1:50051";
  bool tls = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_server_name;
  std::string token_file;
  double timeout_s = 30;
};

void AddConnectionFlags(CLI::App* app, ConnectionFlags* flags);

// Reads the token file (first line, surrounding whitespace dropped). Any --tls-* flag implies
// --tls. Errors name the flag.
absl::StatusOr<ClientConfig> MakeClientConfig(const ConnectionFlags& flags);

}  // namespace flashkv::tools

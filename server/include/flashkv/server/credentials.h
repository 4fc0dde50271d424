#pragma once

// The listening port's credentials: TLS (mutual when a client CA is configured) or, only when
// the config asks for it, plaintext. The PEM files are read and checked here — the certificate
// chain parses, the key parses and matches the leaf certificate, the client CA parses — so that a
// mistake stops the server at start with the flag named, instead of failing every handshake.
// Certificates are read once: rotating them takes a restart (a rolling one drains each replica).

#include <memory>

#include "absl/status/statusor.h"
#include "flashkv/server/config.h"
#include "grpcpp/security/server_credentials.h"

namespace flashkv::server {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityConfig& security);

}  // namespace flashkv::server

#pragma once

// Channels to a flashkv server: TCP ("host:port", "dns:///host:port", "ipv4:..."), Unix sockets
// ("unix:/path" or "unix-abstract:name"), plaintext or TLS (optionally mutual), with the transport
// settings sized for megabyte tensor messages that the server uses too (flashkv/transport.h).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "flashkv/transport.h"
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
  // Message limits, HTTP/2 windows and frame size, socket reads, keepalive: the settings the
  // server applies on its side too (flashkv/transport.h), since the receiver's window and frame
  // size bound what the sender may put on the wire. Keepalive is off by default; the server
  // accepts pings as often as every 10 s.
  TransportOptions transport;
  // Gives the channel its own TCP connection instead of sharing one with every other channel to
  // the same target (gRPC pools subchannels process-wide). Load generators use several
  // connections so one HTTP/2 connection's flow control and framing thread do not cap them.
  bool dedicated_connection = false;
};

// The channel arguments of a flashkv client channel: the transport settings plus TLS name
// override and connection sharing.
grpc::ChannelArguments ChannelArgumentsFor(const ChannelConfig& config);

// Reads the TLS files and builds the channel. Errors (unreadable file, cert without key, empty
// target) are INVALID_ARGUMENT naming the field; connection happens lazily on the first call.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const ChannelConfig& config);

}  // namespace flashkv

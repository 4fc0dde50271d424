#pragma once

// gRPC transport settings for flashkv's traffic: per-layer steps carry megabytes of tensors, and
// gRPC's defaults (64 KiB stream windows grown slowly by BDP probing, 16 KiB HTTP/2 frames, small
// TCP reads) cost several times the attention kernel for such messages. Both ends of a connection
// apply the same settings: the receiver's window and frame size bound what the sender may put on
// the wire, so tuning only one side gains little. See docs/operations.md and
// benchmarks/server/transport_benchmark for the figures.

#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>

#include <cstdint>

namespace flashkv {

struct TransportOptions {
  // Largest message accepted (receive) and produced (send), in bytes. gRPC takes an int.
  int max_receive_message_bytes = 256 << 20;
  int max_send_message_bytes = 256 << 20;
  // false keeps gRPC's defaults for windows, frames and reads (the benchmark's baseline); the
  // message limits and keepalive still apply.
  bool tuned = true;
  // HTTP/2 keepalive pings on idle connections; 0 turns them off. A dead peer is noticed after
  // time + timeout.
  int keepalive_time_ms = 0;
  int keepalive_timeout_ms = 20'000;
};

// Client side: the arguments for grpc::CreateCustomChannel.
grpc::ChannelArguments MakeChannelArguments(const TransportOptions& options);

// Server side: sets the same transport arguments on a builder, plus the keepalive policy that
// lets clients ping as often as their own keepalive asks.
void ApplyServerTransportOptions(const TransportOptions& options, grpc::ServerBuilder* builder);

}  // namespace flashkv

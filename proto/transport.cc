#include "flashkv/transport.h"

#include <grpc/grpc.h>

#include <utility>
#include <vector>

namespace flashkv {
namespace {

// Bytes a peer may send on one stream before we read: two of the largest step messages we
// expect (8 MiB) in flight, so a sender never stalls on WINDOW_UPDATE round trips mid-message.
constexpr int kStreamWindowBytes = 16 << 20;
// HTTP/2's largest frame (2^24 - 1): a megabyte message crosses in one DATA frame instead of 64.
constexpr int kMaxFrameBytes = (1 << 24) - 1;
// chttp2 gathers this many bytes of frames per write: large, so a big message goes out in few
// sendmsg calls.
constexpr int kWriteBufferBytes = 16 << 20;
// TCP reads: start at 1 MiB and may grow to 16 MiB, so a large message arrives in few slices
// (fewer syscalls, fewer fragments to walk when decoding).
constexpr int kReadChunkBytes = 1 << 20;
constexpr int kMinReadChunkBytes = 256 << 10;
constexpr int kMaxReadChunkBytes = 16 << 20;

std::vector<std::pair<const char*, int>> IntArguments(const TransportOptions& options) {
  std::vector<std::pair<const char*, int>> args = {
      {GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, options.max_receive_message_bytes},
      {GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, options.max_send_message_bytes},
  };
  if (options.tuned) {
    args.insert(args.end(), {
                                {GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamWindowBytes},
                                {GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kMaxFrameBytes},
                                {GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, kWriteBufferBytes},
                                {GRPC_ARG_TCP_READ_CHUNK_SIZE, kReadChunkBytes},
                                {GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, kMinReadChunkBytes},
                                {GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, kMaxReadChunkBytes},
                            });
  }
  if (options.keepalive_time_ms > 0) {
    args.insert(args.end(), {
                                {GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_time_ms},
                                {GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms},
                            });
  }
  return args;
}

}  // namespace

grpc::ChannelArguments MakeChannelArguments(const TransportOptions& options) {
  grpc::ChannelArguments channel_args;
  for (const auto& [key, value] : IntArguments(options)) channel_args.SetInt(key, value);
  if (options.keepalive_time_ms > 0) {
    // Pings keep a long-lived step stream's connection known alive even between bursts.
    channel_args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    channel_args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  return channel_args;
}

void ApplyServerTransportOptions(const TransportOptions& options, grpc::ServerBuilder* builder) {
  for (const auto& [key, value] : IntArguments(options)) builder->AddChannelArgument(key, value);
  builder->SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder->SetMaxSendMessageSize(options.max_send_message_bytes);
  // Accept client keepalive pings as often as the server's own keepalive would send them (and
  // at least every 10 s), on idle connections too, without counting them as abuse.
  const int min_ping_interval_ms =
      options.keepalive_time_ms > 0 ? options.keepalive_time_ms : 10'000;
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              min_ping_interval_ms);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default, so a second server on the same port would start and
  // silently share the traffic; a port in use must be an error instead.
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
}

}  // namespace flashkv

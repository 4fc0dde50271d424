#pragma once

// flashkv::Client: every RPC of flashkv.v1 (AttentionService, KvCacheService) and grpc.health.v1,
// with errors as absl::Status carrying the server's code and message.
//
// Routing: every call that concerns a sequence carries the metadata header x-flashkv-sequence,
// which a proxy hashes to pick the replica that holds the sequence (docs/client.md). Its value is
// the call's routing key: CallOptions::routing_key when set, else the sequence id (ForkSequence:
// the parent's; Step: the first entry's). A runner that batches several sequences into one Step
// or one StepStream names one routing key for all of them, so they live on one replica.
//
// Thread-safety: a Client is safe to use from any number of threads at once; each call has its
// own context. It holds a shared_ptr to its channel; StepSessions it opens must not outlive it.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "flashkv/client/channel.h"
#include "flashkv/client/region.h"
#include "flashkv/client/step_input.h"
#include "flashkv/client/step_session.h"
#include "flashkv/client/tensor.h"
#include "flashkv/v1/attention.grpc.pb.h"
#include "flashkv/v1/kvcache.grpc.pb.h"
#include "flashkv/v1/region.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"

namespace flashkv {

// Metadata key of the routing header (lower case, as HTTP/2 requires).
inline constexpr char kSequenceHeader[] = "x-flashkv-sequence";

struct ClientConfig {
  ChannelConfig channel;
  // Sent as "authorization: Bearer <token>" on every call when not empty. Over plaintext it is
  // readable on the wire: use TLS or a Unix socket.
  std::string bearer_token;
  // Deadline of a unary call when CallOptions::timeout is not set. Zero: no deadline.
  absl::Duration default_timeout = absl::Seconds(60);
};

struct CallOptions {
  // Overrides ClientConfig::default_timeout for this call (absl::InfiniteDuration(): none).
  std::optional<absl::Duration> timeout;
  // Value of x-flashkv-sequence; empty: derived from the request (see above).
  std::string routing_key;
  // Wait for the channel to connect instead of failing fast with UNAVAILABLE.
  bool wait_for_ready = false;
};

enum class HealthState { kUnknown, kServing, kNotServing, kServiceUnknown };
absl::string_view HealthStateName(HealthState state);

// Stateless attention. Fixed: q [B,Sq,Hq,D], k, v [B,Skv,Hkv,D]. Varlen: q [Tq,Hq,D],
// k, v [Tkv,Hkv,D] with cu_seqlens. Tensors as in StepInput: bytes referenced in place, or
// region tensors' descriptors.
struct AttentionInput {
  TensorView q;
  TensorView k;
  TensorView v;
  bool causal = false;
  std::optional<float> softmax_scale;
  bool return_lse = false;
  std::vector<int32_t> cu_seqlens_q;   // varlen only
  std::vector<int32_t> cu_seqlens_kv;  // varlen only
  // Shared-memory data plane: where the server writes out (q's dtype and shape) and lse.
  std::optional<RegionSlice> out;
  std::optional<RegionSlice> lse;
};

// An output written into a region comes back as a default HostTensor (no bytes): its rows are at
// the slice the request named.
struct AttentionResult {
  HostTensor out;
  std::optional<HostTensor> lse;  // float32, when asked for
};

class Client {
 public:
  // Builds the channel (no connection yet).
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientConfig& config);
  // Over an existing channel, e.g. an in-process server's. `config.channel` is ignored.
  static std::unique_ptr<Client> FromChannel(std::shared_ptr<grpc::Channel> channel,
                                             const ClientConfig& config = {});

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // grpc.health.v1.Health/Check. `service` empty: the whole server.
  absl::StatusOr<HealthState> CheckHealth(absl::string_view service = {},
                                          const CallOptions& options = {});

  absl::StatusOr<v1::CacheInfo> GetCacheInfo(const CallOptions& options = {});
  absl::StatusOr<v1::ServerStats> GetStats(const CallOptions& options = {});

  // Returns cached_tokens: how many leading prompt tokens the server already holds (their K/V
  // need not be sent).
  absl::StatusOr<uint32_t> CreateSequence(absl::string_view sequence_id,
                                          absl::Span<const int64_t> prompt_token_ids = {},
                                          const CallOptions& options = {});
  absl::Status ForkSequence(absl::string_view parent_id, absl::string_view child_id,
                            const CallOptions& options = {});
  absl::Status FreeSequence(absl::string_view sequence_id, const CallOptions& options = {});

  // One Step. The response is checked against the request: one output per entry, each shaped
  // like its entry's q, in q's dtype, with the right byte count (INTERNAL otherwise).
  absl::StatusOr<v1::StepResponse> Step(const v1::StepRequest& request,
                                        const CallOptions& options = {});
  // Typed form: outputs [n_i,Hq,D] in entry order; an entry whose `out` names a region slice gets
  // a default HostTensor (no bytes): its output is in the region. The request is encoded without
  // copying tensor bytes; they must stay unchanged until the call returns. `timing` (optional)
  // receives the server's account of the step's time.
  absl::StatusOr<std::vector<HostTensor>> Step(uint32_t layer, absl::Span<const StepInput> entries,
                                               const CallOptions& options = {},
                                               StepTiming* timing = nullptr);
  // A batched Step (StepBatchInput): the output [T,Hq,D], or a default HostTensor when
  // `batch.out` names a region slice (the rows are there).
  absl::StatusOr<HostTensor> Step(uint32_t layer, const StepBatchInput& batch,
                                  const CallOptions& options = {}, StepTiming* timing = nullptr);

  // Opens one StepStream. The routing key is fixed for the stream's life (a stream reaches one
  // replica): options.routing_key, else the first request's first entry's sequence id.
  absl::StatusOr<std::unique_ptr<StepSession>> OpenStepSession(StepSessionOptions options = {});

  absl::StatusOr<v1::AttentionResponse> Attention(const v1::AttentionRequest& request,
                                                  const CallOptions& options = {});
  absl::StatusOr<AttentionResult> Attention(const AttentionInput& input,
                                            const CallOptions& options = {});
  absl::StatusOr<v1::AttentionResponse> AttentionVarlen(const v1::AttentionVarlenRequest& request,
                                                        const CallOptions& options = {});
  absl::StatusOr<AttentionResult> AttentionVarlen(const AttentionInput& input,
                                                  const CallOptions& options = {});

  // Registers shared memory with the server (flashkv/client/region.h): host memory (a sealed
  // memfd), or device memory on CUDA device `device` (CUDA builds; UNAVAILABLE otherwise). The
  // region must not outlive this client. `options.timeout` bounds the wait for the region id
  // (default 60 s); the registration itself lasts until the region is released.
  absl::StatusOr<std::unique_ptr<SharedRegion>> AttachHostRegion(uint64_t size,
                                                                 const CallOptions& options = {});
  absl::StatusOr<std::unique_ptr<SharedRegion>> AttachDeviceRegion(
      uint64_t size, int device, const CallOptions& options = {});

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, const ClientConfig& config);

  // Deadline, bearer token, wait-for-ready and (when `routing_key` is not null) the routing
  // header. INVALID_ARGUMENT when the key cannot travel as a header value.
  absl::Status Prepare(grpc::ClientContext* context, const CallOptions& options,
                       const std::string* routing_key) const;
  // How a SharedRegion prepares its calls.
  SharedRegion::Prepare RegionCalls(const CallOptions& options) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::string bearer_token_;
  absl::Duration default_timeout_;
  std::unique_ptr<v1::AttentionService::Stub> attention_;
  std::unique_ptr<v1::KvCacheService::Stub> kvcache_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::unique_ptr<v1::RegionService::Stub> regions_;
  // Requests encoded by the wire codec (request_encoding.h) go out as ByteBuffers.
  std::unique_ptr<grpc::TemplatedGenericStub<grpc::ByteBuffer, v1::StepResponse>> step_bytes_;
  std::unique_ptr<grpc::TemplatedGenericStub<grpc::ByteBuffer, v1::AttentionResponse>>
      attention_bytes_;
};

// Checks that a routing key can be sent as an HTTP/2 header value (printable ASCII, at most 256
// bytes); errors name the field.
absl::Status ValidateRoutingKey(absl::string_view key, absl::string_view field);

}  // namespace flashkv

#include "flashkv/client/client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "flashkv/client/status.h"
#include "grpcpp/completion_queue.h"
#include "request_encoding.h"

namespace flashkv {

absl::string_view HealthStateName(HealthState state) {
  switch (state) {
    case HealthState::kServing:
      return "SERVING";
    case HealthState::kNotServing:
      return "NOT_SERVING";
    case HealthState::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case HealthState::kUnknown:
      break;
  }
  return "UNKNOWN";
}

absl::Status ValidateRoutingKey(absl::string_view key, absl::string_view field) {
  constexpr size_t kMaxRoutingKeyBytes = 256;
  if (key.size() > kMaxRoutingKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, " (", key.size(),
                                                   " bytes) must be at most ", kMaxRoutingKeyBytes,
                                                   " bytes to route on"));
  }
  for (char c : key) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " must be printable ASCII to travel in the ", kSequenceHeader, " header"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientConfig& config) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateChannel(config.channel);
  if (!channel.ok()) return channel.status();
  return FromChannel(*std::move(channel), config);
}

std::unique_ptr<Client> Client::FromChannel(std::shared_ptr<grpc::Channel> channel,
                                            const ClientConfig& config) {
  return std::unique_ptr<Client>(new Client(std::move(channel), config));
}

Client::Client(std::shared_ptr<grpc::Channel> channel, const ClientConfig& config)
    : channel_(std::move(channel)),
      bearer_token_(config.bearer_token),
      default_timeout_(config.default_timeout),
      attention_(v1::AttentionService::NewStub(channel_)),
      kvcache_(v1::KvCacheService::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)),
      regions_(v1::RegionService::NewStub(channel_)),
      step_bytes_(std::make_unique<grpc::TemplatedGenericStub<grpc::ByteBuffer, v1::StepResponse>>(
          channel_)),
      attention_bytes_(
          std::make_unique<grpc::TemplatedGenericStub<grpc::ByteBuffer, v1::AttentionResponse>>(
              channel_)) {}

absl::Status Client::Prepare(grpc::ClientContext* context, const CallOptions& options,
                             const std::string* routing_key) const {
  const absl::Duration timeout = options.timeout.value_or(default_timeout_);
  if (timeout != absl::InfiniteDuration() && timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  if (options.wait_for_ready) context->set_wait_for_ready(true);
  if (!bearer_token_.empty()) context->AddMetadata("authorization", "Bearer " + bearer_token_);
  if (routing_key != nullptr) {
    const std::string& key = options.routing_key.empty() ? *routing_key : options.routing_key;
    if (absl::Status s = ValidateRoutingKey(key, "routing key"); !s.ok()) return s;
    context->AddMetadata(kSequenceHeader, key);
  }
  return absl::OkStatus();
}

absl::StatusOr<HealthState> Client::CheckHealth(absl::string_view service,
                                                const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = health_->Check(&context, request, &response);
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return HealthState::kServiceUnknown;
  if (!status.ok()) return FromGrpcStatus(status, "Health.Check");
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return HealthState::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return HealthState::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return HealthState::kServiceUnknown;
    default:
      return HealthState::kUnknown;
  }
}

absl::StatusOr<v1::CacheInfo> Client::GetCacheInfo(const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  v1::CacheInfo info;
  const grpc::Status status = kvcache_->GetCacheInfo(&context, v1::GetCacheInfoRequest(), &info);
  if (!status.ok()) return FromGrpcStatus(status, "GetCacheInfo");
  return info;
}

absl::StatusOr<v1::ServerStats> Client::GetStats(const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  v1::ServerStats stats;
  const grpc::Status status = kvcache_->GetStats(&context, v1::GetStatsRequest(), &stats);
  if (!status.ok()) return FromGrpcStatus(status, "GetStats");
  return stats;
}

absl::StatusOr<uint32_t> Client::CreateSequence(absl::string_view sequence_id,
                                                absl::Span<const int64_t> prompt_token_ids,
                                                const CallOptions& options) {
  v1::CreateSequenceRequest request;
  request.set_sequence_id(std::string(sequence_id));
  request.mutable_token_ids()->Assign(prompt_token_ids.begin(), prompt_token_ids.end());
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, &request.sequence_id()); !s.ok()) return s;
  v1::CreateSequenceResponse response;
  const grpc::Status status = kvcache_->CreateSequence(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "CreateSequence");
  if (response.cached_tokens() > prompt_token_ids.size()) {
    return absl::InternalError(absl::StrCat("CreateSequence: cached_tokens (",
                                            response.cached_tokens(), ") exceeds the prompt (",
                                            prompt_token_ids.size(), " tokens)"));
  }
  return response.cached_tokens();
}

absl::Status Client::ForkSequence(absl::string_view parent_id, absl::string_view child_id,
                                  const CallOptions& options) {
  v1::ForkSequenceRequest request;
  request.set_parent_id(std::string(parent_id));
  request.set_child_id(std::string(child_id));
  grpc::ClientContext context;
  // The child is created where the parent lives.
  if (absl::Status s = Prepare(&context, options, &request.parent_id()); !s.ok()) return s;
  v1::ForkSequenceResponse response;
  return FromGrpcStatus(kvcache_->ForkSequence(&context, request, &response), "ForkSequence");
}

absl::Status Client::FreeSequence(absl::string_view sequence_id, const CallOptions& options) {
  v1::FreeSequenceRequest request;
  request.set_sequence_id(std::string(sequence_id));
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, &request.sequence_id()); !s.ok()) return s;
  v1::FreeSequenceResponse response;
  return FromGrpcStatus(kvcache_->FreeSequence(&context, request, &response), "FreeSequence");
}

absl::StatusOr<v1::StepResponse> Client::Step(const v1::StepRequest& request,
                                              const CallOptions& options) {
  static const std::string kNoEntries;
  const std::string& key = request.entries_size() > 0 ? request.entries(0).sequence_id()
                           : request.batch().sequence_ids_size() > 0
                               ? request.batch().sequence_ids(0)
                               : kNoEntries;
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, &key); !s.ok()) return s;
  v1::StepResponse response;
  const grpc::Status status = kvcache_->Step(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Step");
  if (absl::Status s = CheckStepResponse(ExpectationFor(request), response); !s.ok()) return s;
  return response;
}

namespace {

// Full method names of the calls sent as ByteBuffers (static: gRPC keeps the pointer).
constexpr char kStepMethod[] = "/flashkv.v1.KvCacheService/Step";
constexpr char kStepStreamMethod[] = "/flashkv.v1.KvCacheService/StepStream";
constexpr char kAttentionMethod[] = "/flashkv.v1.AttentionService/Attention";
constexpr char kAttentionVarlenMethod[] = "/flashkv.v1.AttentionService/AttentionVarlen";

// A blocking unary call of an encoded request, on the calling thread (as gRPC's own synchronous
// stubs do: a completion queue of the call's own, so no other thread is woken).
template <typename Response>
grpc::Status BlockingCall(grpc::TemplatedGenericStub<grpc::ByteBuffer, Response>& stub,
                          grpc::ClientContext* context, const char* method,
                          const grpc::ByteBuffer& request, Response* response) {
  grpc::CompletionQueue cq;
  std::unique_ptr<grpc::ClientAsyncResponseReader<Response>> call =
      stub.PrepareUnaryCall(context, method, request, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(response, &status, nullptr);
  void* tag;
  bool ok;
  (void)cq.Next(&tag, &ok);  // the only event: Finish
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

}  // namespace

absl::StatusOr<std::vector<HostTensor>> Client::Step(uint32_t layer,
                                                     absl::Span<const StepInput> entries,
                                                     const CallOptions& options,
                                                     StepTiming* timing) {
  static const std::string kNoEntries;
  const std::string& key = entries.empty() ? kNoEntries : entries.front().sequence_id;
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, &key); !s.ok()) return s;
  const grpc::ByteBuffer request = client_internal::EncodeStep(layer, 0, entries);
  v1::StepResponse response;
  const grpc::Status status = BlockingCall(*step_bytes_, &context, kStepMethod, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Step");
  if (absl::Status s = CheckStepResponse(ExpectationFor(0, entries), response); !s.ok()) return s;
  if (timing != nullptr) *timing = TimingOf(response);
  std::vector<HostTensor> outputs(response.out_size());
  for (int i = 0; i < response.out_size(); ++i) {
    if (entries[i].out.has_value()) continue;  // in the region
    absl::StatusOr<HostTensor> out =
        HostTensor::FromProto(std::move(*response.mutable_out(i)), absl::StrCat("out[", i, "]"));
    if (!out.ok()) return out.status();  // already checked; kept for safety
    outputs[i] = *std::move(out);
  }
  return outputs;
}

absl::StatusOr<HostTensor> Client::Step(uint32_t layer, const StepBatchInput& batch,
                                        const CallOptions& options, StepTiming* timing) {
  static const std::string kNoEntries;
  const std::string& key = batch.sequence_ids.empty() ? kNoEntries : batch.sequence_ids.front();
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, &key); !s.ok()) return s;
  const grpc::ByteBuffer request = client_internal::EncodeStepBatch(layer, 0, batch);
  v1::StepResponse response;
  const grpc::Status status = BlockingCall(*step_bytes_, &context, kStepMethod, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Step");
  if (absl::Status s = CheckStepResponse(ExpectationFor(0, batch), response); !s.ok()) return s;
  if (timing != nullptr) *timing = TimingOf(response);
  if (batch.out.has_value()) return HostTensor();
  return HostTensor::FromProto(std::move(*response.mutable_batch_out()), "batch_out");
}

absl::StatusOr<std::unique_ptr<StepSession>> Client::OpenStepSession(StepSessionOptions options) {
  if (options.max_in_flight < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_in_flight (", options.max_in_flight, ") must be >= 1"));
  }
  if (!options.routing_key.empty()) {
    if (absl::Status s = ValidateRoutingKey(options.routing_key, "routing_key"); !s.ok()) return s;
  }
  CallOptions call;
  call.timeout = options.timeout;
  call.wait_for_ready = options.wait_for_ready;
  auto start = [this, call](grpc::ClientContext* context, grpc::CompletionQueue* cq,
                            const std::string& routing_key)
      -> absl::StatusOr<std::unique_ptr<StepSession::Call>> {
    if (absl::Status s = Prepare(context, call, &routing_key); !s.ok()) return s;
    return step_bytes_->PrepareCall(context, kStepStreamMethod, cq);
  };
  return std::unique_ptr<StepSession>(new StepSession(std::move(options), std::move(start)));
}

namespace {

// An output the request asked to be written into `slice`: the response names it, without bytes.
absl::Status CheckRegionResult(const v1::Tensor& got, const RegionSlice& slice, DType dtype,
                               absl::Span<const int64_t> shape, const char* field) {
  const bool same_slice = got.has_region() && got.region().region_id() == slice.region_id &&
                          got.region().offset() == slice.offset && got.data().empty();
  if (!same_slice || got.dtype() != ToProtoDType(dtype) ||
      !std::equal(got.shape().begin(), got.shape().end(), shape.begin(), shape.end())) {
    return absl::InternalError(absl::StrCat(field, " does not describe the requested region slice (",
                                            slice.region_id, ", offset ", slice.offset, ") as ",
                                            DTypeName(dtype), " ", ShapeString(shape)));
  }
  return absl::OkStatus();
}

// The response must carry out shaped like q in q's dtype, and lse when asked for (one float32
// per query row and head); outputs asked into a region come back as their slice.
absl::StatusOr<AttentionResult> TakeResult(v1::AttentionResponse&& response,
                                           const AttentionInput& input) {
  const TensorView& q = input.q;
  AttentionResult result;
  if (input.out.has_value()) {
    if (auto s = CheckRegionResult(response.out(), *input.out, q.dtype(), q.shape(), "out");
        !s.ok()) {
      return s;
    }
  } else {
    absl::StatusOr<HostTensor> out =
        HostTensor::FromProto(std::move(*response.mutable_out()), "out");
    if (!out.ok()) return absl::InternalError(out.status().message());
    if (out->dtype() != q.dtype() || out->shape() != q.shape()) {
      return absl::InternalError(absl::StrCat("out is ", DTypeName(out->dtype()), " ",
                                              ShapeString(out->shape()), ", expected ",
                                              DTypeName(q.dtype()), " ", ShapeString(q.shape())));
    }
    result.out = *std::move(out);
  }
  if (!input.return_lse) return result;
  const int64_t rows = q.shape().empty() ? 0 : q.num_elements() / q.shape().back();
  if (input.lse.has_value()) {
    const v1::Tensor& lse = response.lse();
    if (!lse.has_region() || lse.region().region_id() != input.lse->region_id ||
        lse.region().offset() != input.lse->offset || lse.dtype() != v1::DTYPE_FLOAT32 ||
        NumElements(lse.shape()) != rows) {
      return absl::InternalError(absl::StrCat("lse does not describe the requested region slice (",
                                              input.lse->region_id, ", offset ",
                                              input.lse->offset, ") as float32 with ", rows,
                                              " values"));
    }
    result.lse = HostTensor();
    return result;
  }
  absl::StatusOr<HostTensor> lse = HostTensor::FromProto(std::move(*response.mutable_lse()), "lse");
  if (!lse.ok()) return absl::InternalError(lse.status().message());
  if (lse->dtype() != DType::kFloat32 || lse->num_elements() != rows) {
    return absl::InternalError(absl::StrCat("lse is ", DTypeName(lse->dtype()), " ",
                                            ShapeString(lse->shape()),
                                            ", expected float32 with one value per query row "
                                            "and head"));
  }
  result.lse = *std::move(lse);
  return result;
}

}  // namespace

absl::StatusOr<v1::AttentionResponse> Client::Attention(const v1::AttentionRequest& request,
                                                        const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  v1::AttentionResponse response;
  const grpc::Status status = attention_->Attention(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Attention");
  return response;
}

absl::StatusOr<AttentionResult> Client::Attention(const AttentionInput& input,
                                                  const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  const grpc::ByteBuffer request = client_internal::EncodeAttention(input, /*varlen=*/false);
  v1::AttentionResponse response;
  const grpc::Status status =
      BlockingCall(*attention_bytes_, &context, kAttentionMethod, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "Attention");
  return TakeResult(std::move(response), input);
}

absl::StatusOr<v1::AttentionResponse> Client::AttentionVarlen(
    const v1::AttentionVarlenRequest& request, const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  v1::AttentionResponse response;
  const grpc::Status status = attention_->AttentionVarlen(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "AttentionVarlen");
  return response;
}

absl::StatusOr<AttentionResult> Client::AttentionVarlen(const AttentionInput& input,
                                                        const CallOptions& options) {
  grpc::ClientContext context;
  if (absl::Status s = Prepare(&context, options, nullptr); !s.ok()) return s;
  const grpc::ByteBuffer request = client_internal::EncodeAttention(input, /*varlen=*/true);
  v1::AttentionResponse response;
  const grpc::Status status =
      BlockingCall(*attention_bytes_, &context, kAttentionVarlenMethod, request, &response);
  if (!status.ok()) return FromGrpcStatus(status, "AttentionVarlen");
  return TakeResult(std::move(response), input);
}

SharedRegion::Prepare Client::RegionCalls(const CallOptions& options) const {
  // The region's calls (its stream and ReleaseRegion) take the client's default deadline; the
  // stream overrides it, since it lasts as long as the region.
  CallOptions call = options;
  call.timeout.reset();
  return [this, call](grpc::ClientContext* context) { return Prepare(context, call, nullptr); };
}

absl::StatusOr<std::unique_ptr<SharedRegion>> Client::AttachHostRegion(
    uint64_t size, const CallOptions& options) {
  return SharedRegion::AttachHost(regions_.get(), RegionCalls(options), size,
                                  options.timeout.value_or(absl::Seconds(60)));
}

absl::StatusOr<std::unique_ptr<SharedRegion>> Client::AttachDeviceRegion(
    uint64_t size, int device, const CallOptions& options) {
  return SharedRegion::AttachDevice(regions_.get(), RegionCalls(options), size, device,
                                    options.timeout.value_or(absl::Seconds(60)));
}

}  // namespace flashkv

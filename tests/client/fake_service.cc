#include "fake_service.h"

#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "flashkv/client/status.h"
#include "flashkv/client/tensor.h"
#include "flashkv/cpu_backend.h"
#include "flashkv/transport.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace flashkv::testing {

int CompiledHeadDim(DType dtype) {
  for (int d : kSupportedHeadDims) {
    if (cpu::IsCompiled(dtype, d)) return d;
  }
  return 0;
}

std::vector<float> NaiveAttention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, int64_t sq, int64_t skv, int hq,
                                  int hkv, int d, bool causal, float scale) {
  std::vector<float> out(static_cast<size_t>(sq * hq * d), 0.0f);
  const int group = hq / hkv;
  std::vector<double> scores(static_cast<size_t>(skv));
  for (int64_t i = 0; i < sq; ++i) {
    const int64_t last = causal ? i + skv - sq : skv - 1;  // bottom-right alignment
    for (int h = 0; h < hq; ++h) {
      const int kvh = h / group;
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j <= last && j < skv; ++j) {
        double dot = 0;
        for (int x = 0; x < d; ++x) {
          dot += double(q[(i * hq + h) * d + x]) * double(k[(j * hkv + kvh) * d + x]);
        }
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      if (last < 0) continue;  // no visible key: zeros
      double sum = 0;
      std::vector<double> acc(d, 0.0);
      for (int64_t j = 0; j <= last && j < skv; ++j) {
        const double p = std::exp(scores[j] - max_score);
        sum += p;
        for (int x = 0; x < d; ++x) acc[x] += p * double(v[(j * hkv + kvh) * d + x]);
      }
      for (int x = 0; x < d; ++x) out[(i * hq + h) * d + x] = static_cast<float>(acc[x] / sum);
    }
  }
  return out;
}

namespace {

std::vector<float> Floats(const v1::Tensor& t) {
  std::vector<float> values(static_cast<size_t>(NumElements(t.shape())));
  ConvertToFloat(static_cast<DType>(t.dtype()), t.data().data(), values.data(),
                 static_cast<int64_t>(values.size()));
  return values;
}

void SetFloats(DType dtype, const std::vector<int64_t>& shape, const std::vector<float>& values,
               v1::Tensor* out) {
  out->set_dtype(ToProtoDType(dtype));
  out->mutable_shape()->Assign(shape.begin(), shape.end());
  out->mutable_data()->resize(values.size() * DTypeSize(dtype));
  ConvertFromFloat(dtype, values.data(), out->mutable_data()->data(),
                   static_cast<int64_t>(values.size()));
}

absl::Status CheckShape(const v1::Tensor& t, const std::string& field, DType dtype,
                        std::vector<int64_t> shape) {
  if (absl::Status s = ValidateTensorProto(t, field); !s.ok()) return s;
  if (t.dtype() != ToProtoDType(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".dtype must be ", DTypeName(dtype)));
  }
  if (!std::equal(t.shape().begin(), t.shape().end(), shape.begin(), shape.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".shape ", ShapeString(t.shape()), " must be ", ShapeString(shape)));
  }
  return absl::OkStatus();
}

std::string Metadata(grpc::ServerContext* context, const char* key) {
  auto it = context->client_metadata().find(key);
  if (it == context->client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

void FakeKvCacheService::FailStep(uint64_t step_number, absl::Status status) {
  absl::MutexLock lock(&mu_);
  failures_[step_number] = std::move(status);
}
void FakeKvCacheService::PerturbStep(uint64_t step_number, float delta) {
  absl::MutexLock lock(&mu_);
  perturbations_[step_number] = delta;
}
void FakeKvCacheService::SetStepDelay(absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  delay_ = delay;
}
void FakeKvCacheService::SetStepIdEcho(bool echo) {
  absl::MutexLock lock(&mu_);
  echo_step_id_ = echo;
}
void FakeKvCacheService::PerturbAttention(float delta) {
  absl::MutexLock lock(&mu_);
  attention_delta_ = delta;
}
std::vector<SeenCall> FakeKvCacheService::seen() const {
  absl::MutexLock lock(&mu_);
  return seen_;
}
uint64_t FakeKvCacheService::steps() const {
  absl::MutexLock lock(&mu_);
  return steps_;
}
int FakeKvCacheService::live_sequences() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(sequences_.size());
}

void FakeKvCacheService::Record(grpc::ServerContext* context, const char* method) {
  absl::MutexLock lock(&mu_);
  seen_.push_back(SeenCall{method, Metadata(context, "x-flashkv-sequence"),
                           Metadata(context, "authorization")});
}

grpc::Status FakeKvCacheService::GetCacheInfo(grpc::ServerContext* context,
                                              const v1::GetCacheInfoRequest*, v1::CacheInfo* info) {
  Record(context, "GetCacheInfo");
  info->set_num_layers(model_.num_layers);
  info->set_num_q_heads(model_.num_q_heads);
  info->set_num_kv_heads(model_.num_kv_heads);
  info->set_head_dim(model_.head_dim);
  info->set_dtype(ToProtoDType(model_.dtype));
  info->set_page_size(model_.page_size);
  info->set_blocks_total(model_.blocks_total);
  info->set_blocks_free(model_.blocks_total);
  info->set_max_context(model_.max_context);
  info->set_num_devices(1);
  info->set_backend("fake");
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*,
                                          v1::ServerStats* stats) {
  Record(context, "GetStats");
  absl::MutexLock lock(&mu_);
  stats->set_sequences(sequences_.size());
  stats->set_blocks_total(model_.blocks_total);
  stats->set_steps(steps_);
  stats->set_batches(steps_);
  stats->set_prefix_hit_tokens(prefix_hit_tokens_);
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::CreateSequence(grpc::ServerContext* context,
                                                const v1::CreateSequenceRequest* request,
                                                v1::CreateSequenceResponse* response) {
  Record(context, "CreateSequence");
  absl::MutexLock lock(&mu_);
  if (request->sequence_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "sequence_id must not be empty");
  }
  if (sequences_.count(request->sequence_id())) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "sequence '" + request->sequence_id() + "' already exists");
  }
  Sequence sequence;
  sequence.k.resize(model_.num_layers);
  sequence.v.resize(model_.num_layers);
  sequence.lengths.assign(model_.num_layers, 0);
  // Longest cached whole-block prefix of the prompt.
  const std::vector<int64_t> prompt(request->token_ids().begin(), request->token_ids().end());
  for (size_t end = prompt.size() / model_.page_size * model_.page_size; end > 0;
       end -= model_.page_size) {
    auto it = prefixes_.find(std::vector<int64_t>(prompt.begin(), prompt.begin() + end));
    if (it == prefixes_.end()) continue;
    sequence = it->second;
    response->set_cached_tokens(static_cast<uint32_t>(end));
    prefix_hit_tokens_ += end;
    break;
  }
  sequences_.emplace(request->sequence_id(), std::move(sequence));
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::ForkSequence(grpc::ServerContext* context,
                                              const v1::ForkSequenceRequest* request,
                                              v1::ForkSequenceResponse*) {
  Record(context, "ForkSequence");
  absl::MutexLock lock(&mu_);
  auto parent = sequences_.find(request->parent_id());
  if (parent == sequences_.end()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "sequence '" + request->parent_id() + "' not found");
  }
  if (sequences_.count(request->child_id())) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "sequence '" + request->child_id() + "' already exists");
  }
  Sequence child = parent->second;
  sequences_.emplace(request->child_id(), std::move(child));
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::FreeSequence(grpc::ServerContext* context,
                                              const v1::FreeSequenceRequest* request,
                                              v1::FreeSequenceResponse*) {
  Record(context, "FreeSequence");
  absl::MutexLock lock(&mu_);
  if (sequences_.erase(request->sequence_id()) == 0) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "sequence '" + request->sequence_id() + "' not found");
  }
  return grpc::Status::OK;
}

void FakeKvCacheService::PublishBlocks(const Sequence& sequence) {
  const size_t page = model_.page_size;
  for (size_t end = page; end <= sequence.token_ids.size(); end += page) {
    std::vector<int64_t> key(sequence.token_ids.begin(), sequence.token_ids.begin() + end);
    if (prefixes_.count(key)) continue;
    Sequence prefix;
    prefix.token_ids = key;
    prefix.lengths.assign(model_.num_layers, static_cast<int64_t>(end));
    const size_t row = static_cast<size_t>(model_.num_kv_heads) * model_.head_dim;
    for (int l = 0; l < model_.num_layers; ++l) {
      prefix.k.emplace_back(sequence.k[l].begin(), sequence.k[l].begin() + end * row);
      prefix.v.emplace_back(sequence.v[l].begin(), sequence.v[l].begin() + end * row);
    }
    prefixes_.emplace(std::move(key), std::move(prefix));
  }
}

absl::Status FakeKvCacheService::ApplyStep(const v1::StepRequest& request,
                                           v1::StepResponse* response) {
  const int layer = static_cast<int>(request.layer());
  if (layer >= model_.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer (", layer, ") must be < num_layers (", model_.num_layers, ")"));
  }
  std::set<std::string> ids;
  // Validate everything first: a Step is all-or-nothing.
  for (int i = 0; i < request.entries_size(); ++i) {
    const v1::StepEntry& e = request.entries(i);
    const std::string f = absl::StrCat("entries[", i, "]");
    auto it = sequences_.find(e.sequence_id());
    if (it == sequences_.end()) {
      return absl::NotFoundError(absl::StrCat("sequence '", e.sequence_id(), "' not found"));
    }
    if (!ids.insert(e.sequence_id()).second) {
      return absl::InvalidArgumentError(absl::StrCat(f, ".sequence_id repeats"));
    }
    const int64_t n = e.q().shape_size() > 0 ? e.q().shape(0) : -1;
    const int64_t hq = model_.num_q_heads, hkv = model_.num_kv_heads, d = model_.head_dim;
    if (absl::Status s = CheckShape(e.q(), f + ".q", model_.dtype, {n, hq, d}); !s.ok()) return s;
    if (absl::Status s = CheckShape(e.k(), f + ".k", model_.dtype, {n, hkv, d}); !s.ok()) return s;
    if (absl::Status s = CheckShape(e.v(), f + ".v", model_.dtype, {n, hkv, d}); !s.ok()) return s;
    const Sequence& seq = it->second;
    const int64_t want =
        layer == 0 ? seq.lengths[model_.num_layers - 1] : seq.lengths[layer - 1] - n;
    if (seq.lengths[layer] != want) {
      return absl::FailedPreconditionError(
          absl::StrCat(f, ": layer ", layer, " of sequence '", e.sequence_id(), "' runs ahead"));
    }
  }
  for (int i = 0; i < request.entries_size(); ++i) {
    const v1::StepEntry& e = request.entries(i);
    Sequence& seq = sequences_[e.sequence_id()];
    const int64_t n = e.q().shape(0);
    const std::vector<float> k = Floats(e.k()), v = Floats(e.v());
    seq.k[layer].insert(seq.k[layer].end(), k.begin(), k.end());
    seq.v[layer].insert(seq.v[layer].end(), v.begin(), v.end());
    seq.lengths[layer] += n;
    if (layer == 0 && e.token_ids_size() == n &&
        seq.token_ids.size() == static_cast<size_t>(seq.lengths[0] - n)) {
      seq.token_ids.insert(seq.token_ids.end(), e.token_ids().begin(), e.token_ids().end());
    }
    const std::vector<float> out =
        NaiveAttention(Floats(e.q()), seq.k[layer], seq.v[layer], n, seq.lengths[layer],
                       model_.num_q_heads, model_.num_kv_heads, model_.head_dim, true,
                       1.0f / std::sqrt(static_cast<float>(model_.head_dim)));
    SetFloats(model_.dtype, {n, model_.num_q_heads, model_.head_dim}, out, response->add_out());
    if (layer == model_.num_layers - 1) PublishBlocks(seq);
  }
  return absl::OkStatus();
}

absl::Status FakeKvCacheService::RunStep(const v1::StepRequest& request,
                                         v1::StepResponse* response) {
  absl::Duration delay;
  {
    absl::MutexLock lock(&mu_);
    delay = delay_;
  }
  if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
  absl::MutexLock lock(&mu_);
  const uint64_t number = ++steps_;
  if (auto it = failures_.find(number); it != failures_.end()) return it->second;
  if (absl::Status s = ApplyStep(request, response); !s.ok()) {
    response->Clear();
    return s;
  }
  if (auto it = perturbations_.find(number); it != perturbations_.end() && response->out_size()) {
    v1::Tensor* out = response->mutable_out(0);
    std::vector<float> values = Floats(*out);
    values[0] += it->second;
    SetFloats(static_cast<DType>(out->dtype()),
              std::vector<int64_t>(out->shape().begin(), out->shape().end()), values, out);
  }
  response->set_step_id(echo_step_id_ ? request.step_id() : request.step_id() + 1000);
  return absl::OkStatus();
}

grpc::Status FakeKvCacheService::Step(grpc::ServerContext* context, const v1::StepRequest* request,
                                      v1::StepResponse* response) {
  Record(context, "Step");
  return ToGrpcStatus(RunStep(*request, response));
}

grpc::Status FakeKvCacheService::StepStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StepResponse, v1::StepRequest>* stream) {
  Record(context, "StepStream");
  v1::StepRequest request;
  while (stream->Read(&request)) {
    v1::StepResponse response;
    if (absl::Status s = RunStep(request, &response); !s.ok()) return ToGrpcStatus(s);
    if (!stream->Write(response)) break;
  }
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::Attention(grpc::ServerContext* context,
                                           const v1::AttentionRequest* request,
                                           v1::AttentionResponse* response) {
  Record(context, "Attention");
  const v1::Tensor &q = request->q(), &k = request->k(), &v = request->v();
  for (const auto& [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}}) {
    if (absl::Status s = ValidateTensorProto(*t, name); !s.ok()) return ToGrpcStatus(s);
    if (t->shape_size() != 4) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          std::string(name) + ".shape must have 4 dimensions [B,S,H,D]");
    }
  }
  const int64_t b = q.shape(0), sq = q.shape(1), hq = q.shape(2), d = q.shape(3);
  const int64_t skv = k.shape(1), hkv = k.shape(2);
  const float scale = request->has_softmax_scale() ? request->softmax_scale()
                                                   : 1.0f / std::sqrt(static_cast<float>(d));
  const std::vector<float> qf = Floats(q), kf = Floats(k), vf = Floats(v);
  std::vector<float> out;
  for (int64_t i = 0; i < b; ++i) {
    auto slice = [i](const std::vector<float>& x, int64_t rows, int64_t h, int64_t dd) {
      const int64_t n = rows * h * dd;
      return std::vector<float>(x.begin() + i * n, x.begin() + (i + 1) * n);
    };
    std::vector<float> o = NaiveAttention(
        slice(qf, sq, hq, d), slice(kf, skv, hkv, d), slice(vf, skv, hkv, d), sq, skv,
        static_cast<int>(hq), static_cast<int>(hkv), static_cast<int>(d), request->causal(), scale);
    out.insert(out.end(), o.begin(), o.end());
  }
  {
    absl::MutexLock lock(&mu_);
    if (!out.empty()) out[0] += attention_delta_;
  }
  SetFloats(static_cast<DType>(q.dtype()), {b, sq, hq, d}, out, response->mutable_out());
  return grpc::Status::OK;
}

grpc::Status FakeKvCacheService::AttentionVarlen(grpc::ServerContext* context,
                                                 const v1::AttentionVarlenRequest*,
                                                 v1::AttentionResponse*) {
  Record(context, "AttentionVarlen");
  return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "the fake serves fixed attention only");
}

FakeServer::FakeServer(FakeModel model, const FakeServerOptions& options) : service_(model) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.cert_pem.empty()) {
    grpc::SslServerCredentialsOptions ssl(
        options.client_ca_pem.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options.client_ca_pem;
    ssl.pem_key_cert_pairs.push_back({options.key_pem, options.cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
  if (!options.unix_path.empty()) {
    builder.AddListeningPort("unix:" + options.unix_path, grpc::InsecureServerCredentials());
  }
  ApplyServerTransportOptions(TransportOptions{}, &builder);
  builder.RegisterService(static_cast<v1::KvCacheService::Service*>(&service_));
  builder.RegisterService(static_cast<v1::AttentionService::Service*>(&service_));
  server_ = builder.BuildAndStart();
}

FakeServer::~FakeServer() { server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5))); }

void FakeServer::SetServing(bool serving) {
  server_->GetHealthCheckService()->SetServingStatus(serving);
}

}  // namespace flashkv::testing

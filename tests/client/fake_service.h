#pragma once

// An in-test flashkv server: KvCacheService and AttentionService with the contract's semantics
// (docs/api.md) computed naively in double precision, plus hooks the real server does not have:
// it records the metadata of every call, can fail a chosen step, delay steps, or perturb one
// output element so tests can prove the client's verifier catches a wrong answer.
//
// Thread-safety: all state behind one mutex; RPCs are served concurrently by gRPC's sync threads.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "flashkv/dtype.h"
#include "flashkv/v1/attention.grpc.pb.h"
#include "flashkv/v1/kvcache.grpc.pb.h"
#include "grpcpp/server.h"

namespace flashkv::testing {

// The smallest head dim the CPU implementation was built with for `dtype` (the build may narrow
// FLASHKV_HEAD_DIMS), so the client's verification can run; 0 when none.
int CompiledHeadDim(DType dtype);

struct FakeModel {
  int num_layers = 2;
  int num_q_heads = 4;
  int num_kv_heads = 2;
  int head_dim = CompiledHeadDim(DType::kFloat16);
  DType dtype = DType::kFloat16;
  int page_size = 4;
  int max_context = 4096;
  int blocks_total = 1024;
};

// What the fake saw of one call.
struct SeenCall {
  std::string method;          // "CreateSequence", "Step", "StepStream", ...
  std::string routing_header;  // x-flashkv-sequence, "" when absent
  std::string authorization;   // "" when absent
};

class FakeKvCacheService final : public v1::KvCacheService::Service,
                                 public v1::AttentionService::Service {
 public:
  explicit FakeKvCacheService(FakeModel model) : model_(model) {}

  // Hooks. Step numbers count every Step request (unary or streamed) from 1.
  void FailStep(uint64_t step_number, absl::Status status);
  void PerturbStep(uint64_t step_number, float delta);  // adds delta to out[0] element 0
  void SetStepDelay(absl::Duration delay);
  void SetStepIdEcho(bool echo);       // false: answer with a wrong step_id
  void PerturbAttention(float delta);  // adds delta to element 0 of every Attention answer

  std::vector<SeenCall> seen() const;
  uint64_t steps() const;
  int live_sequences() const;

  grpc::Status GetCacheInfo(grpc::ServerContext*, const v1::GetCacheInfoRequest*,
                            v1::CacheInfo*) override;
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*,
                        v1::ServerStats*) override;
  grpc::Status CreateSequence(grpc::ServerContext*, const v1::CreateSequenceRequest*,
                              v1::CreateSequenceResponse*) override;
  grpc::Status ForkSequence(grpc::ServerContext*, const v1::ForkSequenceRequest*,
                            v1::ForkSequenceResponse*) override;
  grpc::Status FreeSequence(grpc::ServerContext*, const v1::FreeSequenceRequest*,
                            v1::FreeSequenceResponse*) override;
  grpc::Status Step(grpc::ServerContext*, const v1::StepRequest*, v1::StepResponse*) override;
  grpc::Status StepStream(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::StepResponse, v1::StepRequest>* stream) override;
  grpc::Status Attention(grpc::ServerContext*, const v1::AttentionRequest*,
                         v1::AttentionResponse*) override;
  grpc::Status AttentionVarlen(grpc::ServerContext*, const v1::AttentionVarlenRequest*,
                               v1::AttentionResponse*) override;

 private:
  struct Sequence {
    std::vector<int64_t> token_ids;        // known ids of the context (prefix of it)
    std::vector<std::vector<float>> k, v;  // per layer, [len, Hkv, D]
    std::vector<int64_t> lengths;          // per layer
  };

  void Record(grpc::ServerContext* context, const char* method);
  absl::Status RunStep(const v1::StepRequest& request, v1::StepResponse* response);
  absl::Status ApplyStep(const v1::StepRequest& request, v1::StepResponse* response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishBlocks(const Sequence& sequence) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FakeModel model_;
  mutable absl::Mutex mu_;
  std::map<std::string, Sequence> sequences_ ABSL_GUARDED_BY(mu_);
  // Prefix cache: token ids of a whole-block prefix -> that prefix's K/V per layer.
  std::map<std::vector<int64_t>, Sequence> prefixes_ ABSL_GUARDED_BY(mu_);
  std::vector<SeenCall> seen_ ABSL_GUARDED_BY(mu_);
  uint64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefix_hit_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, absl::Status> failures_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, float> perturbations_ ABSL_GUARDED_BY(mu_);
  absl::Duration delay_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  bool echo_step_id_ ABSL_GUARDED_BY(mu_) = true;
  float attention_delta_ ABSL_GUARDED_BY(mu_) = 0;
};

struct FakeServerOptions {
  // Also listen on this Unix socket ("unix:" + path reaches it).
  std::string unix_path;
  // Serve TLS with these PEM files; with `client_ca_pem`, require client certificates it signed.
  std::string cert_pem, key_pem, client_ca_pem;
};

// The fake served on 127.0.0.1:<ephemeral port> with the standard health service.
class FakeServer {
 public:
  explicit FakeServer(FakeModel model = {}, const FakeServerOptions& options = {});
  ~FakeServer();
  FakeKvCacheService& service() { return service_; }
  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  void SetServing(bool serving);

 private:
  FakeKvCacheService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Naive float64 attention on float inputs: q [Sq,Hq,D], k, v [Skv,Hkv,D] -> out [Sq,Hq,D];
// causal masks aligned bottom-right.
std::vector<float> NaiveAttention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, int64_t sq, int64_t skv, int hq,
                                  int hkv, int d, bool causal, float scale);

}  // namespace flashkv::testing

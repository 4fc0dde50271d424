// The client library, the CLI and the load generator against the real server, started
// in-process on 127.0.0.1 (CPU backend) by the server's test helper.

#include <sys/wait.h>

#include <cstdio>

#include "fake_service.h"
#include "flashkv/client/client.h"
#include "gtest/gtest.h"
#include "loadgen.h"
#include "nlohmann/json.hpp"
#include "test_util.h"
#include "testing/test_server.h"
#include "verify.h"

namespace flashkv::testing {
namespace {

server::ServerConfig Config(DType dtype) {
  server::ServerConfig config = SmallModelConfig();
  config.model.dtype = dtype;
  config.model.head_dim = CompiledHeadDim(dtype);
  return config;
}

int ExitCode(const std::string& command, std::string* out) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  size_t n;
  while (pipe != nullptr && (n = fread(buffer, 1, sizeof buffer, pipe)) > 0) out->append(buffer, n);
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class RealServerTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (CompiledHeadDim(GetParam()) == 0) GTEST_SKIP() << "dtype not in this build";
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(Config(GetParam()));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = ClientFor(server_->target());
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
  std::mt19937 rng_{11};
};

TEST_P(RealServerTest, HealthAndAttentionMatchTheCpuImplementation) {
  EXPECT_EQ(*client_->CheckHealth(), HealthState::kServing);
  const DType dtype = GetParam();
  const int64_t d = CompiledHeadDim(dtype);
  for (bool causal : {false, true}) {
    HostTensor q = RandomTensor(dtype, {2, 5, 4, d}, rng_);
    HostTensor k = RandomTensor(dtype, {2, 9, 2, d}, rng_);
    HostTensor v = RandomTensor(dtype, {2, 9, 2, d}, rng_);
    AttentionInput input;
    input.q = q.view();
    input.k = k.view();
    input.v = v.view();
    input.causal = causal;
    input.return_lse = true;
    absl::StatusOr<AttentionResult> got = client_->Attention(input);
    ASSERT_TRUE(got.ok()) << got.status();
    HostTensor lse;
    absl::StatusOr<HostTensor> want =
        tools::CpuAttention(q.view(), k.view(), v.view(), causal, std::nullopt, &lse);
    ASSERT_TRUE(want.ok()) << want.status();
    const tools::Comparison c =
        tools::Compare(got->out.view(), want->view(), tools::DefaultTolerance(dtype));
    EXPECT_TRUE(c.ok()) << c.mismatches << " mismatches, max " << c.max_abs_error;
    ASSERT_TRUE(got->lse.has_value());
    EXPECT_TRUE(tools::Compare(got->lse->view(), lse.view(), {1e-3, 1e-4}).ok());
  }
}

TEST_P(RealServerTest, ServerValidationErrorsArriveWithCodeAndField) {
  const int64_t d = CompiledHeadDim(GetParam());
  HostTensor q = RandomTensor(GetParam(), {5, 4, d}, rng_);  // three dimensions, not four
  HostTensor kv = RandomTensor(GetParam(), {1, 9, 2, d}, rng_);
  AttentionInput input;
  input.q = q.view();
  input.k = kv.view();
  input.v = kv.view();
  absl::StatusOr<AttentionResult> got = client_->Attention(input);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find("q"), absl::string_view::npos) << got.status();
}

TEST_P(RealServerTest, CliHealthAndAttention) {
  const std::string cli = std::string(FLASHKV_CLI) + " --target " + server_->target() + " ";
  std::string out;
  EXPECT_EQ(ExitCode(cli + "health --wait 10", &out), 0) << out;
  out.clear();
  const std::string shape =
      " --heads-q 4 --heads-kv 2 --seqlen-q 7 --seqlen-kv 30 --batch 3 --causal --lse --dtype " +
      std::string(DTypeName(GetParam())) + " --head-dim " +
      std::to_string(CompiledHeadDim(GetParam()));
  EXPECT_EQ(ExitCode(cli + "--json attention" + shape, &out), 0) << out;
  EXPECT_NE(out.find("\"match\": true"), std::string::npos) << out;
}

TEST_P(RealServerTest, VarlenAttentionMatchesPerSequenceAttention) {
  const DType dtype = GetParam();
  const int64_t d = CompiledHeadDim(dtype);
  const std::vector<int32_t> cu_q = {0, 3, 3, 10}, cu_kv = {0, 5, 9, 21};  // one empty query run
  HostTensor q = RandomTensor(dtype, {cu_q.back(), 4, d}, rng_);
  HostTensor k = RandomTensor(dtype, {cu_kv.back(), 2, d}, rng_);
  HostTensor v = RandomTensor(dtype, {cu_kv.back(), 2, d}, rng_);
  AttentionInput input;
  input.q = q.view();
  input.k = k.view();
  input.v = v.view();
  input.causal = true;
  input.cu_seqlens_q = cu_q;
  input.cu_seqlens_kv = cu_kv;
  absl::StatusOr<AttentionResult> got = client_->AttentionVarlen(input);
  ASSERT_TRUE(got.ok()) << got.status();
  const int64_t q_row = 4 * d * DTypeSize(dtype), kv_row = 2 * d * DTypeSize(dtype);
  for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
    const int64_t sq = cu_q[b + 1] - cu_q[b], skv = cu_kv[b + 1] - cu_kv[b];
    if (sq == 0) continue;
    auto slice = [](const HostTensor& t, int64_t first, int64_t rows, int64_t heads,
                    int64_t row_bytes, int64_t dd) {
      return TensorView(t.dtype(), {1, rows, heads, dd}, t.data() + first * row_bytes);
    };
    absl::StatusOr<HostTensor> want = tools::CpuAttention(
        slice(q, cu_q[b], sq, 4, q_row, d), slice(k, cu_kv[b], skv, 2, kv_row, d),
        slice(v, cu_kv[b], skv, 2, kv_row, d), true, std::nullopt);
    ASSERT_TRUE(want.ok()) << want.status();
    const tools::Comparison c = tools::Compare(slice(got->out, cu_q[b], sq, 4, q_row, d),
                                               want->view(), tools::DefaultTolerance(dtype));
    EXPECT_TRUE(c.ok()) << "sequence " << b << ": " << c.mismatches << " mismatches";
  }
}

// Prefill, fork, then both branches decode: each sees the shared prefix plus its own tokens.
TEST_P(RealServerTest, ForkedSequencesShareTheirPrefix) {
  absl::StatusOr<v1::CacheInfo> info = client_->GetCacheInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  const DType dtype = GetParam();
  const int64_t hq = info->num_q_heads(), hkv = info->num_kv_heads(), d = info->head_dim();
  ASSERT_TRUE(client_->CreateSequence("parent").ok());
  // Per layer, the K/V each branch's context holds, as float32 rows.
  std::vector<std::vector<float>> k(info->num_layers()), v(info->num_layers());
  auto step = [&](const std::string& id, int64_t n, std::vector<std::vector<float>>* ks,
                  std::vector<std::vector<float>>* vs) {
    for (uint32_t layer = 0; layer < info->num_layers(); ++layer) {
      HostTensor q = RandomTensor(dtype, {n, hq, d}, rng_);
      HostTensor kt = RandomTensor(dtype, {n, hkv, d}, rng_);
      HostTensor vt = RandomTensor(dtype, {n, hkv, d}, rng_);
      absl::StatusOr<std::vector<HostTensor>> out =
          client_->Step(layer, {StepInput{id, q.view(), kt.view(), vt.view(), {}}});
      ASSERT_TRUE(out.ok()) << id << " layer " << layer << ": " << out.status();
      const std::vector<float> kf = kt.ToFloats(), vf = vt.ToFloats();
      (*ks)[layer].insert((*ks)[layer].end(), kf.begin(), kf.end());
      (*vs)[layer].insert((*vs)[layer].end(), vf.begin(), vf.end());
      const int64_t context = static_cast<int64_t>((*ks)[layer].size()) / (hkv * d);
      HostTensor kc = *HostTensor::FromFloats(dtype, {1, context, hkv, d}, (*ks)[layer]);
      HostTensor vc = *HostTensor::FromFloats(dtype, {1, context, hkv, d}, (*vs)[layer]);
      absl::StatusOr<HostTensor> want = tools::CpuAttention(
          TensorView(dtype, {1, n, hq, d}, q.data()), kc.view(), vc.view(), true, std::nullopt);
      ASSERT_TRUE(want.ok()) << want.status();
      const tools::Comparison c =
          tools::Compare((*out)[0].view(), want->view(), tools::DefaultTolerance(dtype));
      EXPECT_TRUE(c.ok()) << id << " layer " << layer << ": " << c.mismatches << " mismatches";
    }
  };
  step("parent", 6, &k, &v);  // a prefill of 6 tokens: one whole page of 4 and a partial one
  ASSERT_TRUE(client_->ForkSequence("parent", "child").ok());
  std::vector<std::vector<float>> child_k = k, child_v = v;
  for (int i = 0; i < 3; ++i) {
    step("parent", 1, &k, &v);
    step("child", 1, &child_k, &child_v);
  }
  EXPECT_EQ(client_->ForkSequence("nobody", "orphan").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->FreeSequence("parent").ok());
  ASSERT_TRUE(client_->FreeSequence("child").ok());
  EXPECT_EQ(client_->FreeSequence("child").code(), absl::StatusCode::kNotFound);
}

// The whole load generator, every output checked, against the real stateful service.
TEST_P(RealServerTest, LoadgenRunIsClean) {
  absl::StatusOr<v1::CacheInfo> info = client_->GetCacheInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  loadgen::LoadgenConfig config;
  config.runners = 3;
  config.max_batch = 3;
  config.duration = absl::ZeroDuration();
  config.requests = 18;
  config.prompt_len = *loadgen::LengthDistribution::Parse("uniform:3:40");
  config.output_len = *loadgen::LengthDistribution::Parse("uniform:1:8");
  config.prefill_chunk = 16;
  config.max_pass_tokens = 32;
  config.prefix_pool = 2;
  config.prefix_len = loadgen::LengthDistribution::Fixed(8);
  config.verify_fraction = 1.0;
  config.run_id = "real";
  Client* clients[] = {client_.get()};
  // Last: --step-format=pass, every forward pass as a decode pass (sequences named at layer 0).
  for (auto [depth, plane, passes] : {std::tuple{1, loadgen::DataPlane::kBytes, false},
                                      {3, loadgen::DataPlane::kBytes, false},  // layers overlap
                                      {1, loadgen::DataPlane::kShm, false},
                                      {3, loadgen::DataPlane::kShm, false},
                                      {1, loadgen::DataPlane::kBytes, true},
                                      {3, loadgen::DataPlane::kShm, true}}) {
    config.pipeline_depth = depth;
    config.data_plane = plane;
    config.batched_steps = config.pass_steps = passes;
    absl::StatusOr<loadgen::Report> report = loadgen::RunLoadgen(config, clients, {});
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->clean()) << report->ToJson().dump(2);
    EXPECT_EQ(report->ToJson()["config"]["step_format"], passes ? "pass" : "entries");
    const nlohmann::json latency = report->ToJson()["latency"];
    EXPECT_GT(latency["Step kernel"]["p50_ms"].get<double>(), 0) << latency.dump(2);
    EXPECT_GT(latency["Step"]["p50_ms"], latency["Step kernel"]["p50_ms"]);
    EXPECT_TRUE(latency.contains("decode Step overhead")) << latency.dump(2);
    EXPECT_EQ(report->totals.requests_completed, 18u);
    EXPECT_EQ(report->totals.verification.steps_checked, report->totals.steps);
    ASSERT_TRUE(report->server_after.has_value());
    EXPECT_EQ(report->server_after->sequences(), 0u);
    EXPECT_GT(report->server_after->steps(), report->server_before->steps());
  }
}

// StepSession::SendPass refuses what the server would, before sending.
TEST_P(RealServerTest, SendPassChecksItsInput) {
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok()) << session.status();
  StepBatchInput named;
  named.sequence_ids = {"x"};
  EXPECT_EQ((*session)->SendPass(0, 0, named).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*session)->SendPass(1, 4, named).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*session)->SendPass(0, 4, StepBatchInput{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(RealServerTest, CliInfoAndStatsJson) {
  const std::string cli = std::string(FLASHKV_CLI) + " --target " + server_->target() + " --json ";
  std::string out;
  ASSERT_EQ(ExitCode(cli + "info", &out), 0) << out;
  nlohmann::json info = nlohmann::json::parse(out);
  EXPECT_EQ(info["num_layers"], server_->config().model.num_layers);
  EXPECT_EQ(info["dtype"], DTypeName(GetParam()));
  EXPECT_EQ(info["backend"], "cpu");
  EXPECT_GT(info["blocks_total"].get<int64_t>(), 0);
  out.clear();
  ASSERT_EQ(ExitCode(cli + "stats", &out), 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["sequences"], 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RealServerTest,
                         ::testing::Values(DType::kFloat16, DType::kBFloat16, DType::kFloat32),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace flashkv::testing

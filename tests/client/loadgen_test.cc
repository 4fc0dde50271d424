// flashkv-loadgen's engine run in-process against the fake server: a clean run verifies every
// output, the prefix cache is honoured, a perturbed answer is caught, failures are counted by
// code as expected or unexpected, and open-loop arrivals work.

#include "loadgen.h"

#include "fake_service.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace flashkv::testing {
namespace {

using loadgen::LengthDistribution;
using loadgen::LoadgenConfig;
using loadgen::Report;

class LoadgenTest : public ::testing::Test {
 protected:
  LoadgenTest() {
    model_.num_layers = 3;
    server_ = std::make_unique<FakeServer>(model_);
    client_ = ClientFor(server_->target());
    config_.runners = 2;
    config_.max_batch = 3;
    config_.duration = absl::ZeroDuration();
    config_.requests = 12;
    config_.prompt_len = *LengthDistribution::Parse("uniform:5:30");
    config_.output_len = *LengthDistribution::Parse("uniform:1:6");
    config_.prefill_chunk = 8;
    config_.max_pass_tokens = 16;
    config_.verify_fraction = 1.0;
    config_.run_id = "test";
  }

  Report Run() {
    Client* clients[] = {client_.get()};
    absl::StatusOr<Report> report = loadgen::RunLoadgen(config_, clients, {});
    EXPECT_TRUE(report.ok()) << report.status();
    return report.ok() ? *std::move(report) : Report{};
  }

  FakeModel model_;
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
  LoadgenConfig config_;
};

TEST_F(LoadgenTest, ClosedLoopRunChecksEveryOutputAndFreesEverything) {
  const Report report = Run();
  const loadgen::RunStats& t = report.totals;
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  EXPECT_EQ(t.requests_started, 12u);
  EXPECT_EQ(t.requests_completed, 12u);
  EXPECT_EQ(t.steps, t.passes * model_.num_layers);
  EXPECT_EQ(t.verification.steps_checked, t.steps);
  EXPECT_GT(t.verification.elements_checked, 0u);
  EXPECT_GT(t.verification.max_abs_error, 0.0);  // the fake rounds differently: not a tautology
  EXPECT_EQ(t.prefill_tokens, t.prompt_tokens);
  EXPECT_GT(report.client_cpu_s, 0.0);
  EXPECT_EQ(server_->service().live_sequences(), 0);
  // Every sequence call named the runner's routing key.
  for (const SeenCall& call : server_->service().seen()) {
    if (call.method == "GetCacheInfo" || call.method == "GetStats") continue;
    EXPECT_TRUE(call.routing_header == "test-r0" || call.routing_header == "test-r1")
        << call.method << " " << call.routing_header;
  }
  const nlohmann::json json = report.ToJson();
  EXPECT_EQ(json["requests"]["completed"], 12);
  EXPECT_TRUE(json["latency"].contains("Step"));
  EXPECT_TRUE(json["latency"].contains("ttft"));
  EXPECT_TRUE(json["clean"].get<bool>());
}

TEST_F(LoadgenTest, PrefixCacheHitsAreHonouredAndStillVerified) {
  config_.prefix_pool = 1;
  config_.prefix_len = LengthDistribution::Fixed(16);
  config_.prefix_fraction = 1.0;
  config_.runners = 1;
  config_.max_batch = 1;  // one after another, so later requests find the prefix published
  config_.requests = 4;
  const Report report = Run();
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  EXPECT_GE(report.totals.cached_tokens, 3u * 16u);
  EXPECT_EQ(report.totals.prefill_tokens + report.totals.cached_tokens,
            report.totals.prompt_tokens);
}

TEST_F(LoadgenTest, APerturbedAnswerIsCaught) {
  server_->service().PerturbStep(5, 0.25f);
  const Report report = Run();
  EXPECT_FALSE(report.clean());
  EXPECT_EQ(report.mismatches(), 1u);
  EXPECT_EQ(report.unexpected_errors(), 0u);
  ASSERT_EQ(report.totals.verification.examples.size(), 1u);
  EXPECT_NE(report.totals.verification.examples[0].find("elements differ"), std::string::npos)
      << report.totals.verification.examples[0];
}

TEST_F(LoadgenTest, SampledVerificationSkipsSomeStepsButCountsThem) {
  config_.verify_fraction = 0.3;
  config_.requests = 20;
  const Report report = Run();
  const loadgen::VerificationStats& v = report.totals.verification;
  EXPECT_TRUE(report.clean());
  EXPECT_EQ(v.steps_seen, report.totals.steps);
  EXPECT_GT(v.steps_checked, 0u);
  EXPECT_LT(v.steps_checked, v.steps_seen);
}

TEST_F(LoadgenTest, FailuresAreCountedByCodeAsExpectedOrNot) {
  server_->service().FailStep(4, absl::ResourceExhaustedError("no free KV blocks"));
  Report report = Run();
  EXPECT_EQ(report.unexpected_errors(), 1u);
  EXPECT_EQ(report.totals.unexpected_errors.at("Step RESOURCE_EXHAUSTED"), 1u);
  EXPECT_GE(report.totals.requests_aborted + report.totals.requests_preempted, 1u);
  EXPECT_EQ(report.mismatches(), 0u);
  EXPECT_EQ(server_->service().live_sequences(), 0);

  server_->service().FailStep(server_->service().steps() + 2,
                              absl::ResourceExhaustedError("no free KV blocks"));
  config_.expected_codes = {absl::StatusCode::kResourceExhausted};
  report = Run();
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  EXPECT_EQ(report.totals.expected_errors.at("Step RESOURCE_EXHAUSTED"), 1u);
}

// One runner, three layers: pass 1 is steps 1-3, pass 2 starts with step 4.
TEST_F(LoadgenTest, RefusedFirstLayerPreemptsTheNewestSequenceAndTheRestStayCorrect) {
  config_.runners = 1;
  config_.requests = 9;
  config_.expected_codes = {absl::StatusCode::kResourceExhausted};
  server_->service().FailStep(4, absl::ResourceExhaustedError("no free KV blocks"));
  const Report report = Run();
  // Every later output of the surviving sequences is checked: a rollback that left a decode
  // token or a K/V row behind would show as mismatches here.
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  EXPECT_EQ(report.totals.requests_preempted, 1u);
  EXPECT_EQ(report.totals.requests_aborted, 0u);
  EXPECT_EQ(report.totals.requests_completed, 8u);
  EXPECT_EQ(server_->service().live_sequences(), 0);
}

TEST_F(LoadgenTest, FailureAfterALayerAppliedAbortsThePass) {
  config_.runners = 1;
  config_.requests = 9;
  config_.expected_codes = {absl::StatusCode::kResourceExhausted};
  server_->service().FailStep(5, absl::ResourceExhaustedError("no free KV blocks"));
  const Report report = Run();
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  EXPECT_EQ(report.totals.requests_preempted, 0u);
  EXPECT_EQ(report.totals.requests_aborted, 3u);  // the whole batch of the pass
  EXPECT_EQ(server_->service().live_sequences(), 0);
}

TEST_F(LoadgenTest, OpenLoopAndPipelinedLayers) {
  config_.rate = 40;
  config_.requests = 0;
  config_.duration = absl::Seconds(1);
  config_.pipeline_depth = 3;
  const Report report = Run();
  EXPECT_TRUE(report.clean()) << report.ToJson().dump(2);
  // Arrival counts are RequestSourceTest's business; here the loop must simply work.
  EXPECT_GT(report.totals.requests_started, 0u);
  EXPECT_LT(report.totals.requests_started, 120u);
  EXPECT_EQ(report.totals.latency.at("queue").count(), report.totals.requests_started);
  EXPECT_EQ(server_->service().live_sequences(), 0);
}

TEST_F(LoadgenTest, UnreachableServerIsAnErrorNotAReport) {
  std::unique_ptr<Client> nowhere = ClientFor("127.0.0.1:1");
  config_.rpc_timeout = absl::Seconds(3);
  Client* clients[] = {nowhere.get()};
  absl::StatusOr<Report> report = loadgen::RunLoadgen(config_, clients, {});
  EXPECT_EQ(report.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace flashkv::testing

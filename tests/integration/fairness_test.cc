// Fair scheduling between tenants through the real server: a tenant flooding the scheduler with
// long prefills does not starve a tenant that decodes one token at a time. Deterministic: the
// whole workload is queued while the scheduler waits for its batching window on a frozen fake
// clock, so the launches that follow depend on the queue alone. Every output is checked against
// the float64 reference, and the per-tenant counters (GetStats, Prometheus) add up.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "testing/conversation.h"
#include "testing/fake_clock.h"
#include "testing/http_get.h"
#include "testing/kvcache_calls.h"
#include "testing/temp_dir.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

constexpr char kLight[] = "alpha-light-token-0123456789";  // tenant "alpha"
constexpr char kFlood[] = "bravo-flood-token-0123456789";  // tenant "bravo"

class FairnessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    std::ofstream(dir_.File("tokens.txt")) << kLight << " alpha\n" << kFlood << " bravo\n";
    config_ = SmallModelConfig();
    config_.security.tokens_file = dir_.File("tokens.txt");
    config_.clock = clock_;
    config_.scheduler.batch_window = absl::Seconds(1);
    config_.scheduler.max_batch_tokens = 16;
    config_.scheduler.prefill_chunk_tokens = 16;
    config_.kv_cache_bytes = 64 << 20;
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  v1::ServerStats Stats(const char* token) { return GetStats(server_->kvcache(), token); }
  // Waits (real time) until the scheduler holds `parts` step parts.
  void AwaitQueued(uint64_t parts) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (Stats(kLight).devices(0).queued_steps() != parts &&
           std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_EQ(Stats(kLight).devices(0).queued_steps(), parts);
  }

  TempDir dir_{"flashkv-fairness"};
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>();
  server::ServerConfig config_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(FairnessTest, AFloodingTenantDoesNotStarveADecodingOne) {
  constexpr int kFloodSteps = 192, kFloodRows = 16;
  ReferenceCache light_ref(config_.model), flood_ref(config_.model);
  std::mt19937_64 rng(17);
  // The light tenant's sequence holds 17, 16, 16 tokens at layers 0, 1, 2 (steps that fill the
  // budget launch at once, without the window).
  ASSERT_TRUE(CreateSequence(server_->kvcache(), "l", kLight).ok());
  for (int layer = 0; layer < 3; ++layer) {
    const v1::StepEntry entry = light_ref.MakeEntry("l", layer == 0 ? 17 : 16, rng);
    v1::StepResponse response;
    ASSERT_TRUE(StepCall(server_->kvcache(), MakeStep(layer, {entry}), &response, kLight).ok());
    ASSERT_EQ(light_ref.Apply(layer, entry, response.out(0)), "");
  }
  for (int f = 0; f < kFloodSteps; ++f)
    ASSERT_TRUE(CreateSequence(server_->kvcache(), "f" + std::to_string(f), kFlood).ok());

  // The light tenant's next token at layer 1: alone and short, it waits for the window, which
  // the frozen clock never ends.
  grpc::ClientContext light_context;
  PrepareCall(light_context, kLight);
  auto light = server_->kvcache().StepStream(&light_context);
  std::vector<std::pair<int, v1::StepEntry>> light_steps = {{1, light_ref.MakeEntry("l", 1, rng)}};
  ASSERT_TRUE(light->Write(MakeStep(1, {light_steps[0].second})));
  AwaitQueued(1);
  // The flood: 192 prefills of 16 tokens (each one launch's budget) at layer 0, queued behind it.
  grpc::ClientContext flood_context;
  PrepareCall(flood_context, kFlood);
  auto flood = server_->kvcache().StepStream(&flood_context);
  std::vector<v1::StepEntry> flood_steps;
  for (int f = 0; f < kFloodSteps; ++f) {
    flood_steps.push_back(flood_ref.MakeEntry("f" + std::to_string(f), kFloodRows, rng));
    ASSERT_TRUE(flood->Write(MakeStep(0, {flood_steps.back()})));
  }
  AwaitQueued(1 + kFloodSteps);
  // Then the rest of the light tenant's token at layer 2 and three more tokens, all after the
  // flood: first come, first served would compute all of the flood first.
  light_steps.push_back({2, light_ref.MakeEntry("l", 1, rng)});
  for (int t = 0; t < 3; ++t) {
    for (int layer = 0; layer < 3; ++layer) {
      light_steps.push_back({layer, light_ref.MakeEntry("l", 1, rng)});
    }
  }
  for (size_t i = 1; i < light_steps.size(); ++i) {
    ASSERT_TRUE(light->Write(MakeStep(light_steps[i].first, {light_steps[i].second})));
  }
  AwaitQueued(light_steps.size() + kFloodSteps);

  std::atomic<int> flood_answered{0};
  std::vector<std::string> flood_errors(kFloodSteps);
  std::thread flood_reader([&] {
    for (int f = 0; f < kFloodSteps; ++f) {
      v1::StepResponse response;
      if (!flood->Read(&response)) {
        flood_errors[f] = "stream ended";
        return;
      }
      flood_answered.fetch_add(1);
      flood_errors[f] = flood_ref.Apply(0, flood_steps[f], response.out(0));
    }
  });
  clock_->Advance(absl::Seconds(2));  // the window ends: everything queued runs
  for (const auto& [layer, entry] : light_steps) {
    v1::StepResponse response;
    ASSERT_TRUE(light->Read(&response));
    EXPECT_EQ(light_ref.Apply(layer, entry, response.out(0)), "");
  }
  const int flood_before_light = flood_answered.load();
  flood_reader.join();
  light->WritesDone();
  flood->WritesDone();
  EXPECT_TRUE(light->Finish().ok());
  EXPECT_TRUE(flood->Finish().ok());
  for (int f = 0; f < kFloodSteps; ++f) EXPECT_EQ(flood_errors[f], "") << "flood step " << f;
  // The light tenant, served fewer tokens, led nearly every launch until its 11 steps were done
  // (about 12 launches), sharing those at layer 0 with the flood: a few of the flood's steps
  // completed meanwhile. First come, first served would have completed all 192 first.
  EXPECT_LE(flood_before_light, kFloodSteps / 12) << "the light tenant waited behind the flood";

  // Per-tenant counters: each tenant sees its own.
  const v1::TenantStats light_stats = Stats(kLight).tenant();
  EXPECT_EQ(light_stats.name(), "alpha");
  EXPECT_EQ(light_stats.steps(), 3u + light_steps.size());
  EXPECT_EQ(light_stats.tokens(), 17u + 16 + 16 + light_steps.size());
  EXPECT_EQ(light_stats.sequences(), 1u);
  EXPECT_EQ(light_stats.kv_blocks(), 5u);  // 20 tokens at layer 0, pages of 4
  const v1::TenantStats flood_stats = Stats(kFlood).tenant();
  EXPECT_EQ(flood_stats.name(), "bravo");
  EXPECT_EQ(flood_stats.steps(), uint64_t{kFloodSteps});
  EXPECT_EQ(flood_stats.tokens(), uint64_t{kFloodSteps} * kFloodRows);
  EXPECT_EQ(flood_stats.kv_blocks(), uint64_t{kFloodSteps} * kFloodRows / 4);
  absl::StatusOr<std::string> metrics = HttpGet(server_->server().metrics_address(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  for (const std::string line : {"flashkv_tenant_tokens_total{tenant=\"bravo\"} 3072",
                                 "flashkv_tenant_steps_total{outcome=\"ok\",tenant=\"alpha\"} 14",
                                 "flashkv_tenant_sequences{tenant=\"bravo\"} 192",
                                 "flashkv_tenant_kv_blocks{tenant=\"alpha\"} 5"}) {
    EXPECT_NE(metrics->find(line), std::string::npos) << line << "\n" << *metrics;
  }
}

}  // namespace
}  // namespace flashkv::testing

// The batch scheduler through the real service: concurrent clients batched together and each
// given its own correct results; the batching window and token budget on a fake clock;
// cancellation and deadlines that never leave a half-applied step; RESOURCE_EXHAUSTED that
// leaves everything intact; several CPU "devices"; sequence expiry.

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashkv/base/handoff.h"
#include "flashkv/base/notification.h"
#include "testing/conversation.h"
#include "testing/fake_clock.h"
#include "testing/kvcache_calls.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

std::unique_ptr<TestServer> StartServer(const server::ServerConfig& config) {
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

grpc::Status Create(TestServer& s, const std::string& id) {
  return CreateSequence(s.kvcache(), id);
}

grpc::Status Step(TestServer& s, const v1::StepRequest& request, v1::StepResponse* response,
                  int deadline_seconds = 60) {
  grpc::ClientContext context;
  context.set_deadline(In(deadline_seconds));
  return s.kvcache().Step(&context, request, response);
}

v1::ServerStats Stats(TestServer& s) { return GetStats(s.kvcache()); }

// A one-token step at every layer; each output checked against the client's own reference.
std::string DecodeAllLayers(TestServer& s, ReferenceCache& reference, const std::string& id,
                            int layers, std::mt19937_64& rng) {
  for (int layer = 0; layer < layers; ++layer) {
    const v1::StepEntry entry = reference.MakeEntry(id, 1, rng);
    v1::StepResponse response;
    const grpc::Status status = Step(s, MakeStep(layer, {entry}), &response);
    if (!status.ok()) return "layer " + std::to_string(layer) + ": " + status.error_message();
    const std::string error = reference.Apply(layer, entry, response.out(0));
    if (!error.empty()) return "layer " + std::to_string(layer) + ": " + error;
  }
  return "";
}

// 16 clients, each with its own sequence and its own reference, some on unary calls and some on
// streams: every answer is right, and the scheduler merged calls into batches of several.
// 16 clients, half on unary Steps and half on streams, each checking its outputs against its
// own reference; returns the server's stats afterwards.
v1::ServerStats RunConcurrentClients(const server::ServerConfig& config) {
  auto server = StartServer(config);
  EXPECT_NE(server, nullptr);
  if (server == nullptr) return {};
  constexpr int kClients = 16, kTokens = 6;
  std::vector<std::string> errors(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      const std::string id = "client-" + std::to_string(c);
      ReferenceCache reference(config.model);
      std::mt19937_64 rng(c);
      if (!Create(*server, id).ok()) {
        errors[c] = "create failed";
        return;
      }
      if (c % 2 == 0) {
        for (int t = 0; t < kTokens && errors[c].empty(); ++t) {
          errors[c] = DecodeAllLayers(*server, reference, id, config.model.num_layers, rng);
        }
        return;
      }
      grpc::ClientContext context;
      context.set_deadline(In(60));
      auto stream = server->kvcache().StepStream(&context);
      for (int t = 0; t < kTokens && errors[c].empty(); ++t) {
        for (int layer = 0; layer < config.model.num_layers; ++layer) {
          const v1::StepEntry entry = reference.MakeEntry(id, t == 0 ? 3 : 1, rng);
          v1::StepResponse response;
          if (!stream->Write(MakeStep(layer, {entry})) || !stream->Read(&response)) {
            errors[c] = "stream broke";
            break;
          }
          errors[c] = reference.Apply(layer, entry, response.out(0));
          if (!errors[c].empty()) break;
        }
      }
      stream->WritesDone();
      const grpc::Status status = stream->Finish();
      if (errors[c].empty() && !status.ok()) errors[c] = status.error_message();
    });
  }
  for (auto& t : clients) t.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(errors[c], "") << "client " << c;
  const v1::ServerStats stats = Stats(*server);
  EXPECT_EQ(stats.steps(), uint64_t(kClients) * kTokens * config.model.num_layers +
                               config.model.num_layers)  // + the warm-up's one step per layer
      << "every step counted once";
  return stats;
}

TEST(StepSchedulingTest, ConcurrentClientsAreBatchedAndGetTheirOwnResults) {
  server::ServerConfig config = SmallModelConfig();
  config.scheduler.batch_window = absl::Milliseconds(2);
  const v1::ServerStats stats = RunConcurrentClients(config);
  EXPECT_GT(stats.max_batch_entries(), 1u) << "no launch merged two calls";
  EXPECT_LT(stats.batches(), stats.batched_entries())
      << "on average more than one entry per launch";
}

// Without a batching window, small steps that find the scheduler idle launch on the receiving
// thread, and those that arrive meanwhile go to the scheduler thread: both kinds, interleaved
// across 16 clients, each still gets exactly its own results. (And with inline launches off.)
TEST(StepSchedulingTest, InlineLaunchesAndTheSchedulerThreadTakeTurns) {
  for (int inline_tokens : {16, 0}) {
    server::ServerConfig config = SmallModelConfig();
    config.scheduler.batch_window = absl::ZeroDuration();
    config.scheduler.inline_launch_tokens = inline_tokens;
    RunConcurrentClients(config);
  }
}

// The batching window on a fake clock: lone steps wait for it, steps arriving within it share one
// launch, and a step that fills the token budget goes at once.
TEST(StepSchedulingTest, BatchingWindowAndTokenBudgetOnAFakeClock) {
  auto clock = std::make_shared<FakeClock>();
  server::ServerConfig config = SmallModelConfig();
  config.clock = clock;
  config.scheduler.batch_window = absl::Milliseconds(50);
  config.scheduler.max_batch_tokens = 8;
  config.scheduler.prefill_chunk_tokens = 8;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(1);
  ASSERT_TRUE(Create(*server, "a").ok());
  ASSERT_TRUE(Create(*server, "b").ok());
  const uint64_t launches = Stats(*server).batches();

  struct Call {
    grpc::ClientContext context;
    v1::StepRequest request;
    v1::StepResponse response;
    grpc::Status status;
    Notification done;
  } calls[2];
  const char* ids[] = {"a", "b"};
  for (int i = 0; i < 2; ++i) {
    calls[i].request = MakeStep(0, {reference.MakeEntry(ids[i], 1, rng)});
    calls[i].context.set_deadline(In(60));
    HandOff(&calls[i]);  // to gRPC's callback thread (flashkv/base/handoff.h)
    server->kvcache().async()->Step(&calls[i].context, &calls[i].request, &calls[i].response,
                                    [&call = calls[i]](grpc::Status s) {
                                      TakeBack(&call);
                                      call.status = s;
                                      call.done.Notify();
                                    });
  }
  absl::SleepFor(absl::Milliseconds(200));  // real time passes, fake time does not
  EXPECT_FALSE(calls[0].done.HasBeenNotified()) << "launched before the window ended";
  EXPECT_FALSE(calls[1].done.HasBeenNotified());
  clock->Advance(absl::Milliseconds(50));
  for (auto& call : calls) {
    call.done.WaitForNotification();
    ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  }
  for (auto& call : calls) {
    EXPECT_EQ(reference.Apply(0, call.request.entries(0), call.response.out(0)), "");
  }
  v1::ServerStats stats = Stats(*server);
  EXPECT_EQ(stats.batches(), launches + 1) << "both steps in one launch";
  EXPECT_EQ(stats.max_batch_entries(), 2u);

  // 8 tokens fill the budget: launched without waiting for the window (the fake clock stands).
  const v1::StepEntry full = reference.MakeEntry("a", 8, rng);
  v1::StepResponse response;
  const grpc::Status status = Step(*server, MakeStep(0, {full}), &response, 20);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(reference.Apply(0, full, response.out(0)), "");
}

// A server with one sequence and a 2048-token prefill for it that takes 128 chunks of 16.
class LongPrefillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerConfig config = SmallModelConfig();
    config.kv_cache_bytes = 64 << 20;  // 5461 blocks of 4 tokens
    config.scheduler.prefill_chunk_tokens = 16;
    server_ = StartServer(config);
    ASSERT_NE(server_, nullptr);
    reference_ = std::make_unique<ReferenceCache>(config.model);
    ASSERT_TRUE(Create(*server_, "long").ok());
    prefill_ = reference_->MakeEntry("long", 2048, rng_);
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<ReferenceCache> reference_;
  std::mt19937_64 rng_{2};
  v1::StepEntry prefill_;
};

// A client cancels a stream while its long prefill is being computed in chunks: the step is
// either wholly applied or not at all (here, almost always not), never in part.
TEST_F(LongPrefillTest, CancellingMidStreamNeverLeavesAHalfAppliedStep) {
  TestServer* server = server_.get();
  ReferenceCache& reference = *reference_;
  const v1::StepEntry& prefill = prefill_;
  {
    grpc::ClientContext context;
    auto stream = server->kvcache().StepStream(&context);
    ASSERT_TRUE(stream->Write(MakeStep(0, {prefill})));
    // Wait until it is being computed (launches are counted), then cancel.
    const uint64_t before = Stats(*server).batches();
    for (int i = 0; i < 2000 && Stats(*server).batches() < before + 2; ++i) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    context.TryCancel();
    v1::StepResponse ignored;
    while (stream->Read(&ignored)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The next step at layer 0 sees either no context or all 2048 tokens.
  const v1::StepEntry probe = reference.MakeEntry("long", 1, rng_);
  v1::StepResponse response;
  ASSERT_TRUE(Step(*server, MakeStep(0, {probe}), &response).ok());
  const std::vector<double> got = FromProto(response.out(0)).values;
  const std::string if_not_applied = CompareValues(got, reference.Expected(0, probe), 1e-4);
  reference.Append(0, prefill);
  const std::string if_applied = CompareValues(got, reference.Expected(0, probe), 1e-4);
  EXPECT_TRUE(if_not_applied.empty() || if_applied.empty())
      << "neither none nor all of the prefill is in the cache: " << if_not_applied;
  EXPECT_TRUE(if_not_applied.empty()) << "the prefill finished before the cancellation landed";
  EXPECT_EQ(Stats(*server).blocks_used(), 1u) << "the aborted step's blocks are back";
}

// The same with a deadline on a unary call: the client gives up after 20 ms, long before twice
// the prefill (4096 tokens, 256 chunks) could be computed, and the step is rolled back.
TEST_F(LongPrefillTest, AnExpiredDeadlineAbortsTheStep) {
  TestServer* server = server_.get();
  v1::StepEntry prefill = reference_->MakeEntry("long", 4096, rng_);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(20));
    v1::StepResponse response;
    const grpc::Status status = server->kvcache().Step(&context, MakeStep(0, {prefill}), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // Let the server notice (the abort happens at the next chunk boundary). On a loaded machine
  // the server may not even have taken the step when the client gives up: 0 blocks used then
  // says nothing yet. So wait until the step was seen at work (its blocks allocated or its parts
  // queued) and is gone again; a server that drops the expired step before allocating anything
  // is never seen at work, and gets 1 s to prove it leaves nothing behind (usually the step was
  // taken, aborted and rolled back before the client's DEADLINE_EXCEEDED even arrived).
  bool seen_at_work = false;
  for (int i = 0; i < 500 || (seen_at_work && i < 2500); ++i) {
    const v1::ServerStats stats = Stats(*server);
    const bool busy = stats.blocks_used() != 0 || stats.devices(0).queued_steps() != 0;
    seen_at_work = seen_at_work || busy;
    if (seen_at_work && !busy) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(Stats(*server).blocks_used(), 0u);
  EXPECT_EQ(DecodeAllLayers(*server, *reference_, "long", 1, rng_), "");
}

// A pool of 16 blocks (4 tokens each) and no swap space: a step needing more than is free fails
// with the numbers, and nothing changes.
TEST(StepSchedulingTest, ResourceExhaustedLeavesEverythingIntact) {
  server::ServerConfig config = SmallModelConfig();
  const int64_t block_bytes =
      2LL * 3 * 2 * 4 * 64 * 4;              // K and V, 3 layers, Hkv 2, page 4, D 64, fp32
  config.kv_cache_bytes = 17 * block_bytes;  // 16 usable blocks and the null block
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(4);
  ASSERT_TRUE(Create(*server, "big").ok());
  ASSERT_TRUE(Create(*server, "other").ok());
  for (int layer = 0; layer < 3; ++layer) {
    const v1::StepEntry e = reference.MakeEntry("big", 40, rng);  // 10 blocks
    v1::StepResponse response;
    ASSERT_TRUE(Step(*server, MakeStep(layer, {e}), &response).ok());
    ASSERT_EQ(reference.Apply(layer, e, response.out(0)), "");
  }
  const v1::ServerStats before = Stats(*server);
  EXPECT_EQ(before.blocks_used(), 10u);
  v1::StepResponse response;
  const grpc::Status status =
      Step(*server,
           MakeStep(0, {reference.MakeEntry("other", 30, rng), reference.MakeEntry("big", 2, rng)}),
           &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  // 8 blocks for "other" and one more for "big"'s 41st token; 6 are free.
  EXPECT_NE(status.error_message().find("needs 9 blocks: 6 free"), std::string::npos)
      << status.error_message();
  const v1::ServerStats after = Stats(*server);
  EXPECT_EQ(after.blocks_used(), before.blocks_used());
  EXPECT_EQ(after.blocks_free(), before.blocks_free());
  EXPECT_EQ(after.blocks_used() + after.blocks_free(), after.blocks_total());
  // Both sequences carry on as if the failed step never happened.
  EXPECT_EQ(DecodeAllLayers(*server, reference, "big", 3, rng), "");
  for (int layer = 0; layer < 3; ++layer) {
    const v1::StepEntry e = reference.MakeEntry("other", 20, rng);
    ASSERT_TRUE(Step(*server, MakeStep(layer, {e}), &response).ok());
    EXPECT_EQ(reference.Apply(layer, e, response.out(0)), "");
  }
}

// With swap space, a step that needs more blocks than are free swaps idle sequences out to host
// memory; stepping them later brings them back, with their K/V intact.
TEST(StepSchedulingTest, SwappingMakesRoomAndBringsSequencesBackIntact) {
  server::ServerConfig config = SmallModelConfig();
  const int64_t block_bytes = 2LL * 3 * 2 * 4 * 64 * 4;
  config.kv_cache_bytes = 17 * block_bytes;  // 16 usable blocks of 4 tokens
  config.swap_bytes = 32 * block_bytes;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(7);
  for (const char* id : {"first", "second"}) {
    ASSERT_TRUE(Create(*server, id).ok());
    for (int layer = 0; layer < 3; ++layer) {
      const v1::StepEntry e = reference.MakeEntry(id, 36, rng);  // 9 blocks each: 18 > 16
      v1::StepResponse response;
      const grpc::Status status = Step(*server, MakeStep(layer, {e}), &response);
      ASSERT_TRUE(status.ok()) << id << " layer " << layer << ": " << status.error_message();
      ASSERT_EQ(reference.Apply(layer, e, response.out(0)), "");
    }
  }
  EXPECT_GE(Stats(*server).swaps_out(), 1u) << "the second sequence needed the first one's blocks";
  EXPECT_EQ(DecodeAllLayers(*server, reference, "first", 3, rng), "") << "swapped back in intact";
  EXPECT_EQ(DecodeAllLayers(*server, reference, "second", 3, rng), "");
  const v1::ServerStats stats = Stats(*server);
  EXPECT_GE(stats.swaps_in(), 1u);
  EXPECT_GT(stats.swap_bytes_out(), 0u);
}

// Three CPU "devices": sequences spread over them; a step spanning devices is right; a step that
// fails on one device changes nothing on the others.
TEST(StepSchedulingTest, SeveralDevicesShareTheLoadAndStepsSpanThemAllOrNothing) {
  server::ServerConfig config = SmallModelConfig();
  config.cpu_devices = 3;
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(5);
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back("m" + std::to_string(i));
    ASSERT_TRUE(Create(*server, ids.back()).ok());
  }
  v1::ServerStats stats = Stats(*server);
  ASSERT_EQ(stats.devices_size(), 3);
  for (const auto& d : stats.devices()) {
    EXPECT_EQ(d.sequences(), 2u) << "device " << d.device();
    EXPECT_LT(d.device(), 0) << "CPU devices are numbered -1, -2, ...";
  }
  for (int t = 0; t < 2; ++t) {
    for (int layer = 0; layer < 3; ++layer) {
      std::vector<v1::StepEntry> entries;
      for (const auto& id : ids) entries.push_back(reference.MakeEntry(id, t == 0 ? 5 : 1, rng));
      v1::StepResponse response;
      const grpc::Status status = Step(*server, MakeStep(layer, entries), &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      for (size_t i = 0; i < entries.size(); ++i) {
        EXPECT_EQ(reference.Apply(layer, entries[i], response.out(int(i))), "") << ids[i];
      }
    }
  }
  // m5 at layer 1 would run ahead of layer 0; m0..m4 (on every device) must not move.
  std::vector<v1::StepEntry> entries;
  for (int i = 0; i < 5; ++i) entries.push_back(reference.MakeEntry(ids[i], 1, rng));
  v1::StepResponse response;
  ASSERT_TRUE(Step(*server, MakeStep(0, entries), &response).ok());
  for (int i = 0; i < 5; ++i) ASSERT_EQ(reference.Apply(0, entries[i], response.out(i)), "");
  entries.clear();
  for (int i = 0; i < 6; ++i) entries.push_back(reference.MakeEntry(ids[i], 1, rng));
  const grpc::Status failed = Step(*server, MakeStep(1, entries), &response);
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << failed.error_message();
  EXPECT_NE(failed.error_message().find("entries[5]"), std::string::npos) << failed.error_message();
  entries.pop_back();
  ASSERT_TRUE(Step(*server, MakeStep(1, entries), &response).ok());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(reference.Apply(1, entries[i], response.out(i)), "");
}

// Sequences without a step for --sequence-ttl are freed; the others stay.
TEST(StepSchedulingTest, IdleSequencesExpire) {
  auto clock = std::make_shared<FakeClock>();
  server::ServerConfig config = SmallModelConfig();
  config.clock = clock;
  config.sequence_ttl = absl::Seconds(10);
  auto server = StartServer(config);
  ASSERT_NE(server, nullptr);
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(6);
  ASSERT_TRUE(Create(*server, "idle").ok());
  ASSERT_TRUE(Create(*server, "busy").ok());
  clock->Advance(absl::Seconds(6));
  ASSERT_EQ(DecodeAllLayers(*server, reference, "busy", 1, rng), "");
  clock->Advance(absl::Seconds(5));  // idle: 11 s without a step; busy: 5 s
  // The reaper checks every ttl/8 of (fake) time: keep time moving, as real time would, by less
  // than the 5 s "busy" has left.
  bool expired = false;
  for (int i = 0; i < 2000 && !expired; ++i) {
    expired = Stats(*server).sequences() == 1;
    if (i % 10 == 9) clock->Advance(absl::Milliseconds(100));
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_TRUE(expired);
  v1::StepResponse response;
  EXPECT_EQ(
      Step(*server, MakeStep(0, {reference.MakeEntry("idle", 1, rng)}), &response).error_code(),
      grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(DecodeAllLayers(*server, reference, "busy", 1, rng), "");
}

}  // namespace
}  // namespace flashkv::testing

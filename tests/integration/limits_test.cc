// Every size a client controls has a limit, checked before anything is allocated for it, and a
// request past one gets INVALID_ARGUMENT (RESOURCE_EXHAUSTED for the sequence count) naming the
// field, the limit and the flag that sets it. Run against a real in-process server with small
// limits, through the generated stubs (so the requests are protobuf's own encoding).

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "testing/conversation.h"
#include "testing/fake_clock.h"
#include "testing/kvcache_calls.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

class LimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerConfig config = SmallModelConfig();
    server::RequestLimits& l = config.limits;
    l.max_entries_per_step = 4;
    l.max_tokens_per_entry = 8;
    l.max_tokens_per_step = 16;
    l.max_sequences = 6;
    l.max_attention_rows = 64;
    l.max_attention_batch = 3;
    l.max_attention_work = 64 * 32 * 4 * 64;  // Hq=4, D=64: one sequence of 64 x 32
    config.max_context = 24;
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    reference_ = std::make_unique<ReferenceCache>(config.model);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(Create("s" + std::to_string(i)).ok());
  }

  grpc::Status Create(const std::string& id) { return CreateSequence(server_->kvcache(), id); }
  grpc::Status Step(const v1::StepRequest& request) {
    v1::StepResponse response;
    return StepCall(server_->kvcache(), request, &response);
  }
  // Expects `status` to be `code` with `text` in its message.
  static void Expect(const grpc::Status& status, grpc::StatusCode code, const std::string& text) {
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_NE(status.error_message().find(text), std::string::npos) << status.error_message();
  }
  v1::StepEntry Entry(const std::string& id, int n) { return reference_->MakeEntry(id, n, rng_); }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<ReferenceCache> reference_;
  std::mt19937_64 rng_{9};
};

TEST_F(LimitsTest, StepRequestSizes) {
  Expect(Step(MakeStep(
             0, {Entry("s0", 1), Entry("s1", 1), Entry("s2", 1), Entry("s3", 1), Entry("s4", 1)})),
         grpc::StatusCode::INVALID_ARGUMENT, "StepRequest.entries: more than 4 entries");
  Expect(Step(MakeStep(0, {Entry("s0", 9)})), grpc::StatusCode::INVALID_ARGUMENT,
         "entries[0].q.shape[0] (n) = 9 exceeds the server's limit of 8 tokens per entry "
         "(--max-tokens-per-entry)");
  Expect(Step(MakeStep(0, {Entry("s0", 6), Entry("s1", 6), Entry("s2", 6)})),
         grpc::StatusCode::INVALID_ARGUMENT,
         "entries[0..2] have 18 new tokens; a step may have at most 16 (--max-tokens-per-step)");
  v1::StepEntry ids = Entry("s0", 1);
  for (int i = 0; i < 9; ++i) ids.add_token_ids(i);
  Expect(Step(MakeStep(0, {ids})), grpc::StatusCode::INVALID_ARGUMENT,
         "StepEntry.token_ids: field 5 has more than 8 values");
  Expect(Step(MakeStep(0, {Entry(std::string(300, 'x'), 1)})), grpc::StatusCode::INVALID_ARGUMENT,
         "StepEntry.sequence_id has 300 bytes; at most 256");
  v1::StepEntry rank = Entry("s0", 1);
  for (int i = 0; i < 6; ++i) rank.mutable_q()->add_shape(1);
  Expect(Step(MakeStep(0, {rank})), grpc::StatusCode::INVALID_ARGUMENT,
         "Tensor.shape: field 2 has more than 8 values");
  // The limits are not off by one: the largest request that fits is served.
  const grpc::Status fits =
      Step(MakeStep(0, {Entry("s0", 8), Entry("s1", 4), Entry("s2", 2), Entry("s3", 2)}));
  EXPECT_TRUE(fits.ok()) << fits.error_message();
}

// Two bytes on the wire per entry would be a few hundred in memory each: a flood of empty
// entries is refused by the decoder at the limit, before it allocates for the rest.
TEST_F(LimitsTest, AFloodOfEmptyEntriesIsRefusedCheaply) {
  v1::StepRequest request;
  for (int i = 0; i < 1'000'000; ++i) request.add_entries();
  const auto start = std::chrono::steady_clock::now();
  Expect(Step(request), grpc::StatusCode::INVALID_ARGUMENT,
         "StepRequest.entries: more than 4 entries");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST_F(LimitsTest, SequenceCount) {
  ASSERT_TRUE(Create("s5").ok());
  Expect(Create("s6"), grpc::StatusCode::RESOURCE_EXHAUSTED,
         "the server holds 6 sequences, its limit (6, --max-sequences)");
  ASSERT_TRUE(FreeSequence(server_->kvcache(), "s5").ok());
  EXPECT_TRUE(Create("s6").ok());
}

TEST_F(LimitsTest, ContextLength) {
  // 24 tokens fit; the 25th is refused before any block is reserved, and changes nothing.
  for (int i = 0; i < 3; ++i) {
    v1::StepEntry entry = Entry("s0", 8);
    ASSERT_TRUE(Step(MakeStep(0, {entry})).ok());
  }
  Expect(Step(MakeStep(0, {Entry("s0", 1)})), grpc::StatusCode::INVALID_ARGUMENT,
         "entries[0]: sequence 's0' would reach 25 tokens at layer 0, past max_context (24)");
  // A prompt longer than the context is refused at creation.
  std::vector<int64_t> prompt(25);
  for (int i = 0; i < 25; ++i) prompt[i] = i;
  Expect(CreateSequence(server_->kvcache(), "long-prompt", "", prompt),
         grpc::StatusCode::INVALID_ARGUMENT,
         "prompt_token_ids has 25 tokens, past max_context (24)");
  grpc::ClientContext info_context;
  v1::CacheInfo info;
  ASSERT_TRUE(
      server_->kvcache().GetCacheInfo(&info_context, v1::GetCacheInfoRequest(), &info).ok());
  EXPECT_EQ(info.max_context(), 24u);
}

// Message bytes: gRPC refuses a request past --max-receive-message-bytes from its length
// prefix, before the message is read into memory.
TEST(MessageLimitTest, ARequestPastTheMessageLimitIsRefused) {
  server::ServerConfig config = SmallModelConfig();
  config.transport.max_receive_message_bytes = 8192;
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(3);
  ASSERT_TRUE(CreateSequence((*server)->kvcache(), "s").ok());
  auto step = [&](int n) {
    v1::StepResponse response;
    return StepCall((*server)->kvcache(), MakeStep(0, {reference.MakeEntry("s", n, rng)}),
                    &response);
  };
  // 8 tokens: 8 x (4 + 2 + 2) heads x 64 x 4 bytes = 16 KiB of tensors.
  const grpc::Status big = step(8);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();
  EXPECT_NE(big.error_message().find("8192"), std::string::npos) << big.error_message();
  const grpc::Status small = step(1);  // 2 KiB
  EXPECT_TRUE(small.ok()) << small.error_message();
}

// Steps in flight on one stream: at the limit the server stops reading the stream (HTTP/2 flow
// control then holds the client back) until a response is written, and carries on after.
TEST(StreamLimitTest, AStreamIsNotReadPastItsStepsInFlight) {
  auto clock = std::make_shared<FakeClock>();
  server::ServerConfig config = SmallModelConfig();
  config.clock = clock;
  config.scheduler.batch_window = absl::Seconds(1);  // frozen: nothing launches until advanced
  config.limits.max_stream_steps_in_flight = 4;
  absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
  ASSERT_TRUE(server.ok()) << server.status();
  KvCacheStub& stub = (*server)->kvcache();
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(8);
  constexpr int kSteps = 10;
  std::vector<v1::StepEntry> entries;
  for (int i = 0; i < kSteps; ++i) {
    ASSERT_TRUE(CreateSequence(stub, "s" + std::to_string(i)).ok());
    entries.push_back(reference.MakeEntry("s" + std::to_string(i), 1, rng));
  }
  grpc::ClientContext context;
  PrepareCall(context);
  auto stream = stub.StepStream(&context);
  for (const v1::StepEntry& e : entries) ASSERT_TRUE(stream->Write(MakeStep(0, {e})));
  auto queued = [&] { return GetStats(stub).devices(0).queued_steps(); };
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (queued() < 4 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(queued(), 4u) << "the server read past the limit";

  std::atomic<bool> done{false};
  std::thread ticker([&] {
    while (!done.load()) {
      clock->Advance(absl::Seconds(2));
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  for (const v1::StepEntry& e : entries) {
    v1::StepResponse response;
    ASSERT_TRUE(stream->Read(&response));
    EXPECT_EQ(reference.Apply(0, e, response.out(0)), "");
  }
  stream->WritesDone();
  const grpc::Status status = stream->Finish();
  done.store(true);
  ticker.join();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(LimitsTest, StatelessAttentionRowsBatchAndWork) {
  std::mt19937_64 rng(2);
  auto attention = [&](int b, int sq, int skv) {
    v1::AttentionRequest request;
    RandomTensor(DType::kFloat32, {b, sq, 4, 64}, rng).ToProto(request.mutable_q());
    RandomTensor(DType::kFloat32, {b, skv, 2, 64}, rng).ToProto(request.mutable_k());
    RandomTensor(DType::kFloat32, {b, skv, 2, 64}, rng).ToProto(request.mutable_v());
    grpc::ClientContext context;
    v1::AttentionResponse response;
    return server_->attention().Attention(&context, request, &response);
  };
  Expect(attention(4, 1, 1), grpc::StatusCode::INVALID_ARGUMENT,
         "q.shape[0] (B) = 4 exceeds the server's limit 3 (--max-attention-batch)");
  Expect(attention(1, 65, 1), grpc::StatusCode::INVALID_ARGUMENT,
         "B*Sq = 65 exceeds the server's limit 64 (--max-attention-rows)");
  Expect(attention(1, 1, 65), grpc::StatusCode::INVALID_ARGUMENT,
         "B*Skv = 65 exceeds the server's limit 64 (--max-attention-rows)");
  Expect(attention(1, 64, 64), grpc::StatusCode::INVALID_ARGUMENT,
         "the call's work (sum of Hq*Sq*Skv*D) = 1048576 exceeds the server's limit 524288 "
         "(--max-attention-work)");
  EXPECT_TRUE(attention(1, 64, 32).ok());

  v1::AttentionVarlenRequest varlen;
  RandomTensor(DType::kFloat32, {8, 4, 64}, rng).ToProto(varlen.mutable_q());
  RandomTensor(DType::kFloat32, {8, 2, 64}, rng).ToProto(varlen.mutable_k());
  RandomTensor(DType::kFloat32, {8, 2, 64}, rng).ToProto(varlen.mutable_v());
  for (int i = 0; i <= 8; i += 2) varlen.add_cu_seqlens_q(i), varlen.add_cu_seqlens_kv(i);
  grpc::ClientContext context;
  v1::AttentionResponse response;
  Expect(server_->attention().AttentionVarlen(&context, varlen, &response),
         grpc::StatusCode::INVALID_ARGUMENT,
         "AttentionVarlenRequest.cu_seqlens_q: field 4 has more than 4 values");
}

}  // namespace
}  // namespace flashkv::testing

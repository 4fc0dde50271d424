// KvCacheService through the generated stub against a real in-process server: sequence
// management, multi-layer conversations equal to dense attention over the same K/V (prefills
// computed in chunks, decodes, unary and stream), forks and prefix hits equal to plain
// sequences, and every validation error.

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "testing/conversation.h"
#include "testing/kvcache_calls.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

std::chrono::system_clock::time_point Soon() {
  return std::chrono::system_clock::now() + std::chrono::seconds(30);
}

class KvCacheRpcTest : public ::testing::Test {
 protected:
  void Start(server::ServerConfig config = SmallModelConfig()) {
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    reference_ = std::make_unique<ReferenceCache>(config.model);
  }
  void SetUp() override { Start(); }

  grpc::Status Create(const std::string& id, const std::vector<int64_t>& prompt = {},
                      uint32_t* cached = nullptr) {
    return CreateSequence(server_->kvcache(), id, "", prompt, cached);
  }
  grpc::Status Fork(const std::string& parent, const std::string& child) {
    grpc::ClientContext context;
    context.set_deadline(Soon());
    v1::ForkSequenceRequest request;
    request.set_parent_id(parent);
    request.set_child_id(child);
    v1::ForkSequenceResponse response;
    return server_->kvcache().ForkSequence(&context, request, &response);
  }
  grpc::Status Free(const std::string& id) { return FreeSequence(server_->kvcache(), id); }
  grpc::Status Step(const v1::StepRequest& request, v1::StepResponse* response) {
    return StepCall(server_->kvcache(), request, response);
  }
  v1::ServerStats Stats() { return GetStats(server_->kvcache()); }
  // Steps `entries` at `layer`, expects success, and checks every output against the reference.
  void StepAndCheck(int layer, std::vector<v1::StepEntry> entries) {
    v1::StepResponse response;
    const v1::StepRequest request = MakeStep(layer, entries, 77);
    const grpc::Status status = Step(request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.out_size(), static_cast<int>(entries.size()));
    EXPECT_EQ(response.step_id(), 77u);
    for (size_t i = 0; i < entries.size(); ++i) {
      EXPECT_EQ(reference_->Apply(layer, entries[i], response.out(static_cast<int>(i))), "")
          << "layer " << layer << " entry " << i;
    }
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<ReferenceCache> reference_;
  std::mt19937_64 rng_{42};
};

TEST_F(KvCacheRpcTest, CacheInfoDescribesTheModel) {
  grpc::ClientContext context;
  v1::CacheInfo info;
  ASSERT_TRUE(server_->kvcache().GetCacheInfo(&context, v1::GetCacheInfoRequest(), &info).ok());
  EXPECT_EQ(info.num_layers(), 3u);
  EXPECT_EQ(info.num_q_heads(), 4u);
  EXPECT_EQ(info.num_kv_heads(), 2u);
  EXPECT_EQ(info.head_dim(), 64u);
  EXPECT_EQ(info.dtype(), v1::DTYPE_FLOAT32);
  EXPECT_EQ(info.page_size(), 4u);
  EXPECT_GT(info.blocks_total(), 100u);
  EXPECT_EQ(info.blocks_free(), info.blocks_total()) << "nothing in use yet";
  EXPECT_EQ(info.blocks_cached(), 0u);
  EXPECT_EQ(info.max_context(), info.blocks_total() * 4);
  EXPECT_EQ(info.num_devices(), 1u);
  EXPECT_EQ(info.backend(), "cpu");
}

TEST_F(KvCacheRpcTest, SequencesAreCreatedForkedAndFreedWithTheRightCodes) {
  EXPECT_TRUE(Create("a").ok());
  EXPECT_EQ(Create("a").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Create("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Create(std::string(300, 'x')).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Invalid UTF-8 in a string field: protobuf itself refuses to parse the typed request.
  EXPECT_FALSE(Create("\xc3\x28").ok());
  EXPECT_TRUE(Fork("a", "b").ok());
  EXPECT_EQ(Fork("a", "b").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Fork("nope", "c").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(Free("a").ok());
  EXPECT_EQ(Free("a").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(Create("a").ok()) << "a freed id is free again";
  EXPECT_EQ(Stats().sequences(), 2u);
}

// Three sequences, three layers: a prefill (7 tokens: two chunks of 4 with --prefill-chunk 4),
// then decodes, each layer in order, unary; every output against dense attention.
TEST_F(KvCacheRpcTest, MultiLayerConversationEqualsDenseAttention) {
  server::ServerConfig config = SmallModelConfig();
  config.scheduler.prefill_chunk_tokens = 4;
  config.scheduler.max_batch_tokens = 16;
  Start(config);
  const std::vector<std::string> ids = {"s0", "s1", "s2"};
  for (const auto& id : ids) ASSERT_TRUE(Create(id).ok());
  const uint64_t launches_before = Stats().batches();
  // Prefill of different lengths in one step, then 5 decode steps.
  const std::vector<int> prefill = {7, 1, 12};
  for (int layer = 0; layer < 3; ++layer) {
    std::vector<v1::StepEntry> entries;
    for (size_t i = 0; i < ids.size(); ++i)
      entries.push_back(reference_->MakeEntry(ids[i], prefill[i], rng_));
    StepAndCheck(layer, entries);
  }
  // 20 rows in chunks of at most 4: at least 5 launches per layer.
  EXPECT_GE(Stats().batches() - launches_before, 15u);
  for (int t = 0; t < 5; ++t) {
    for (int layer = 0; layer < 3; ++layer) {
      std::vector<v1::StepEntry> entries;
      for (const auto& id : ids) entries.push_back(reference_->MakeEntry(id, 1, rng_));
      StepAndCheck(layer, entries);
    }
  }
  EXPECT_EQ(reference_->Length("s2", 2), 17);
}

TEST_F(KvCacheRpcTest, StreamAnswersInOrderAndEqualsDenseAttention) {
  ASSERT_TRUE(Create("x").ok());
  ASSERT_TRUE(Create("y").ok());
  grpc::ClientContext context;
  context.set_deadline(Soon());
  auto stream = server_->kvcache().StepStream(&context);
  // Pipelined: x's layer 0..2 and y's layer 0..2 interleaved, all written before any is read.
  std::vector<std::pair<int, v1::StepEntry>> sent;
  for (int t = 0; t < 3; ++t) {
    for (int layer = 0; layer < 3; ++layer) {
      for (const char* id : {"x", "y"}) {
        v1::StepEntry entry = reference_->MakeEntry(id, t == 0 ? 5 : 1, rng_);
        ASSERT_TRUE(stream->Write(MakeStep(layer, {entry}, sent.size() + 1)));
        sent.emplace_back(layer, entry);
      }
    }
  }
  stream->WritesDone();
  for (size_t i = 0; i < sent.size(); ++i) {
    v1::StepResponse response;
    ASSERT_TRUE(stream->Read(&response)) << i;
    EXPECT_EQ(response.step_id(), i + 1) << "responses come in request order";
    ASSERT_EQ(response.out_size(), 1);
    EXPECT_EQ(reference_->Apply(sent[i].first, sent[i].second, response.out(0)), "") << i;
  }
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

// A fork shares the parent's K/V: parent and child stepped with the same new tokens give the
// same outputs, and both equal a plain sequence given the whole history.
TEST_F(KvCacheRpcTest, ForksGiveTheSameOutputsAsPlainSequences) {
  ASSERT_TRUE(Create("parent").ok());
  ASSERT_TRUE(Create("plain").ok());
  for (int layer = 0; layer < 3; ++layer) {
    v1::StepEntry p = reference_->MakeEntry("parent", 6, rng_);  // 6: a partly filled 2nd page
    v1::StepEntry same = p;
    same.set_sequence_id("plain");
    StepAndCheck(layer, {p, same});
  }
  ASSERT_TRUE(Fork("parent", "child").ok());
  reference_->Fork("parent", "child");
  for (int t = 0; t < 4; ++t) {
    for (int layer = 0; layer < 3; ++layer) {
      v1::StepEntry c = reference_->MakeEntry("child", 1, rng_);
      v1::StepEntry p = c, plain = c;
      p.set_sequence_id("parent");
      plain.set_sequence_id("plain");
      StepAndCheck(layer, {c, p, plain});  // all three must agree with dense attention
    }
  }
  // Diverging after the fork: the shared page is copied on write, neither sees the other.
  for (int layer = 0; layer < 3; ++layer) {
    StepAndCheck(
        layer, {reference_->MakeEntry("child", 3, rng_), reference_->MakeEntry("parent", 2, rng_)});
  }
}

// A second sequence with the same prompt finds its full pages cached, sends only the rest, and
// gets the same outputs for it as the first sequence got.
TEST_F(KvCacheRpcTest, PrefixHitsGiveTheSameOutputsAsPlainSequences) {
  std::vector<int64_t> prompt;
  for (int i = 0; i < 11; ++i) prompt.push_back(1000 + i);
  uint32_t cached = 99;
  ASSERT_TRUE(Create("first", prompt, &cached).ok());
  EXPECT_EQ(cached, 0u);
  std::vector<v1::StepResponse> first_out(3);
  for (int layer = 0; layer < 3; ++layer) {
    std::mt19937_64 q_rng(layer);
    const v1::StepEntry e = reference_->EntryForTokens("first", prompt, layer, q_rng);
    v1::StepResponse response;
    ASSERT_TRUE(Step(MakeStep(layer, {e}), &response).ok());
    EXPECT_EQ(reference_->Apply(layer, e, response.out(0)), "");
    first_out[layer] = response;
  }
  ASSERT_TRUE(Create("second", prompt, &cached).ok());
  EXPECT_EQ(cached, 8u) << "two full pages of 4 are cached; the 11th token is always computed";
  EXPECT_EQ(Stats().prefix_hit_tokens(), 8u);
  // The reference learns the cached positions' K/V (the server got them from "first").
  const std::vector<int64_t> cached_part(prompt.begin(), prompt.begin() + 8);
  const std::vector<int64_t> rest(prompt.begin() + 8, prompt.end());
  for (int layer = 0; layer < 3; ++layer) {
    std::mt19937_64 unused(0);
    reference_->Append(layer, reference_->EntryForTokens("second", cached_part, layer, unused));
  }
  for (int layer = 0; layer < 3; ++layer) {
    // The same queries as the first sequence's last 3 positions.
    std::mt19937_64 q_rng(layer);
    v1::StepEntry full = reference_->EntryForTokens("second", prompt, layer, q_rng);
    v1::StepEntry tail = reference_->EntryForTokens("second", rest, layer, q_rng);
    const HostTensor q = FromProto(full.q());
    const size_t row = size_t(4) * 64 * 4;
    tail.mutable_q()->set_data(q.bytes.substr(8 * row));
    v1::StepResponse response;
    const grpc::Status status = Step(MakeStep(layer, {tail}), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(reference_->Apply(layer, tail, response.out(0)), "");
    // The same as the first sequence's outputs for those positions (to rounding: the kernel may
    // sum in another order for 3 new rows over 8 cached than for 11 new rows).
    const std::vector<double> first = FromProto(first_out[layer].out(0)).values;
    const std::vector<double> first_tail(first.begin() + 8 * 4 * 64, first.end());
    EXPECT_EQ(CompareValues(FromProto(response.out(0)).values, first_tail, 1e-5), "")
        << "layer " << layer;
  }
}

struct BadStep {
  const char* name;
  std::function<void(v1::StepRequest*)> mutate;
  grpc::StatusCode code;
  const char* message;
};

TEST_F(KvCacheRpcTest, EveryInvalidStepIsNamedAndChangesNothing) {
  ASSERT_TRUE(Create("a").ok());
  ASSERT_TRUE(Create("b").ok());
  const v1::StepRequest valid =
      MakeStep(0, {reference_->MakeEntry("a", 2, rng_), reference_->MakeEntry("b", 1, rng_)});
  const BadStep cases[] = {
      {"layer", [](auto* r) { r->set_layer(3); }, grpc::StatusCode::INVALID_ARGUMENT,
       "layer (3) must be < the model's layers (3)"},
      {"no entries", [](auto* r) { r->clear_entries(); }, grpc::StatusCode::INVALID_ARGUMENT,
       "entries is empty"},
      {"unknown", [](auto* r) { r->mutable_entries(1)->set_sequence_id("zzz"); },
       grpc::StatusCode::NOT_FOUND, "entries[1]: sequence 'zzz' does not exist"},
      {"repeated", [](auto* r) { r->mutable_entries(1)->set_sequence_id("a"); },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[1].sequence_id 'a' repeats entries[0]"},
      {"empty id", [](auto* r) { r->mutable_entries(0)->set_sequence_id(""); },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[0].sequence_id is empty"},
      {"utf8 id", [](auto* r) { r->mutable_entries(0)->set_sequence_id("\xc3\x28"); },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[0].sequence_id is not valid UTF-8"},
      {"dtype", [](auto* r) { r->mutable_entries(0)->mutable_k()->set_dtype(v1::DTYPE_FLOAT16); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "entries[0].k.dtype (DTYPE_FLOAT16) must match the model's dtype (DTYPE_FLOAT32)"},
      {"q heads", [](auto* r) { r->mutable_entries(1)->mutable_q()->set_shape(1, 2); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "entries[1].q.shape[1] (Hq) = 2 must equal the model's q heads (4)"},
      {"kv rows", [](auto* r) { r->mutable_entries(0)->mutable_v()->set_shape(0, 1); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "entries[0].v.shape[0] (n) = 1 must equal entries[0].q.shape[0] (2)"},
      {"zero rows",
       [](auto* r) {
         auto* e = r->mutable_entries(1);
         for (auto* t : {e->mutable_q(), e->mutable_k(), e->mutable_v()}) {
           t->set_shape(0, 0);
           t->clear_data();
         }
       },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[1].q.shape[0] (n) = 0 must be >= 1"},
      {"data", [](auto* r) { r->mutable_entries(0)->mutable_q()->mutable_data()->append("x"); },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[0].q.data has 2049 bytes"},
      {"missing v", [](auto* r) { r->mutable_entries(0)->clear_v(); },
       grpc::StatusCode::INVALID_ARGUMENT, "entries[0].v is missing"},
      {"token ids", [](auto* r) { r->mutable_entries(0)->add_token_ids(5); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "entries[0].token_ids has 1 ids; it must be empty or have one per new token (2)"},
      {"ahead", [](auto* r) { r->set_layer(1); }, grpc::StatusCode::FAILED_PRECONDITION,
       "entries[0]"},
  };
  for (const BadStep& c : cases) {
    v1::StepRequest request = valid;
    c.mutate(&request);
    v1::StepResponse response;
    const grpc::Status status = Step(request, &response);
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_NE(status.error_message().find(c.message), std::string::npos)
        << c.name << ": " << status.error_message();
  }
  // Nothing changed: the valid step computes over empty contexts, as the reference expects.
  StepAndCheck(0, {valid.entries(0), valid.entries(1)});
}

// All-or-nothing: one entry's layer runs ahead, so the whole step fails and the other entry's
// sequence is unchanged.
TEST_F(KvCacheRpcTest, AFailedStepChangesNoEntry) {
  ASSERT_TRUE(Create("ok").ok());
  ASSERT_TRUE(Create("behind").ok());
  StepAndCheck(0, {reference_->MakeEntry("ok", 3, rng_), reference_->MakeEntry("behind", 2, rng_)});
  StepAndCheck(1, {reference_->MakeEntry("ok", 3, rng_)});
  // Layer 1: "ok" may take 0 more tokens... take a step where "behind" would run ahead of layer 0.
  v1::StepResponse response;
  const grpc::Status status = Step(MakeStep(1, {reference_->MakeEntry("behind", 1, rng_),
                                                reference_->MakeEntry("behind", 1, rng_)}),
                                   &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status ahead = Step(
      MakeStep(1, {reference_->MakeEntry("behind", 2, rng_), reference_->MakeEntry("ok", 1, rng_)}),
      &response);
  EXPECT_EQ(ahead.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << ahead.error_message();
  EXPECT_NE(ahead.error_message().find("entries[1]"), std::string::npos) << ahead.error_message();
  // Neither sequence moved: layer 1 of "behind" still takes 2, layer 0 of "ok" continues at 3.
  StepAndCheck(1, {reference_->MakeEntry("behind", 2, rng_)});
  StepAndCheck(0, {reference_->MakeEntry("ok", 1, rng_)});
  StepAndCheck(1, {reference_->MakeEntry("ok", 1, rng_)});
}

}  // namespace
}  // namespace flashkv::testing

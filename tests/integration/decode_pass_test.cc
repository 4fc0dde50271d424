// Decode passes (StepBatch.pass_id, docs/api.md#decode-passes) through a real server and the
// StepStream RPC: a multi-sequence decode over every layer through passes gives the same bytes as
// plain batched steps and matches the float64 reference (outputs poisoned first); every refusal
// names its field; a failing layer, or the stream ending mid-pass, aborts the pass with every
// length unchanged and the pool whole; a live pass holds its sequences (other steps wait, frees
// are deferred). Swept over models of 1, 2 and 4 layers.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "host_region.h"
#include "testing/conversation.h"
#include "testing/kvcache_calls.h"
#include "testing/reference.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;
using Stream = grpc::ClientReaderWriter<v1::StepRequest, v1::StepResponse>;

v1::StepRequest PassStep(int layer, uint64_t pass_id, v1::StepBatch batch) {
  v1::StepRequest request;
  request.set_layer(layer);
  batch.set_pass_id(pass_id);
  *request.mutable_batch() = std::move(batch);
  return request;
}

// A layer step of a pass: only the tensors (the pass named its sequences at layer 0).
v1::StepBatch TensorsOnly(v1::StepBatch batch) {
  batch.clear_sequence_ids();
  batch.clear_num_tokens();
  batch.clear_token_ids();
  return batch;
}

class DecodePassTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    config_ = SmallModelConfig();
    config_.model.num_layers = GetParam();
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    reference_ = std::make_unique<ReferenceCache>(config_.model);
  }
  int layers() const { return config_.model.num_layers; }

  void Create(const std::string& id) {
    const grpc::Status status = CreateSequence(server_->kvcache(), id);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  uint64_t BlocksUsed() { return GetStats(server_->kvcache()).blocks_used(); }

  // One unary batched step of `entries` at `layer`, checked against the reference.
  void PlainStep(int layer, const std::vector<v1::StepEntry>& entries) {
    v1::StepRequest request;
    request.set_layer(layer);
    *request.mutable_batch() = MakeBatch(entries);
    grpc::ClientContext context;
    v1::StepResponse response;
    const grpc::Status status = server_->kvcache().Step(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    CheckOutputs(layer, entries, response.batch_out(), nullptr);
  }

  void CheckOutputs(int layer, const std::vector<v1::StepEntry>& entries, const v1::Tensor& out,
                    const uint8_t* data) {
    int64_t row = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      const int64_t n = entries[i].q().shape(0);
      EXPECT_EQ(reference_->Apply(layer, entries[i], OutputRows(out, data, row, n)), "")
          << "layer " << layer << " entry " << i;
      row += n;
    }
  }

  // Random decode entries (n tokens each) for `ids`.
  std::vector<v1::StepEntry> Entries(const std::vector<std::string>& ids, int n = 1) {
    std::vector<v1::StepEntry> entries;
    for (const std::string& id : ids) entries.push_back(reference_->MakeEntry(id, n, rng_));
    return entries;
  }

  // Writes `requests` on a new stream, reads every answer, returns the stream's status and the
  // responses it got.
  grpc::Status RunStream(const std::vector<v1::StepRequest>& requests,
                         std::vector<v1::StepResponse>* responses) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    std::unique_ptr<Stream> stream = server_->kvcache().StepStream(&context);
    for (const v1::StepRequest& r : requests) {
      if (!stream->Write(r)) break;
    }
    stream->WritesDone();
    v1::StepResponse response;
    while (stream->Read(&response)) responses->push_back(response);
    return stream->Finish();
  }

  // A stream whose last request is refused with `code` and a message containing `text`; the
  // requests before it are answered.
  void ExpectStreamRefused(const std::vector<v1::StepRequest>& requests, grpc::StatusCode code,
                           const std::string& text) {
    std::vector<v1::StepResponse> responses;
    const grpc::Status status = RunStream(requests, &responses);
    EXPECT_EQ(status.error_code(), code) << status.error_message();
    EXPECT_NE(status.error_message().find(text), std::string::npos) << status.error_message();
    EXPECT_EQ(responses.size(), requests.size() - 1) << text;
  }

  server::ServerConfig config_;
  std::unique_ptr<TestServer> server_;
  std::unique_ptr<ReferenceCache> reference_;
  std::mt19937_64 rng_{11};
};

// StepResponse's timing adds up: the kernels lie inside the launches, and the queue and the
// launches inside the server's time.
void ExpectTimingAddsUp(const v1::StepResponse& r, const std::string& what) {
  EXPECT_GT(r.kernel_ns(), 0u) << what;
  EXPECT_GE(r.launch_ns(), r.kernel_ns()) << what;
  EXPECT_GT(r.queue_ns(), 0u) << what;
  EXPECT_LE(r.queue_ns() + r.launch_ns(), r.server_ns()) << what;
}

TEST_P(DecodePassTest, PassesMatchPlainStepsAndTheReference) {
  // Pass sequences p*, plain-step twins s* fed the same q/k/v: the outputs must be equal bytes.
  const std::vector<std::string> pass_ids = {"p0", "p1", "p2"}, step_ids = {"s0", "s1", "s2"};
  for (const auto& id : pass_ids) Create(id);
  for (const auto& id : step_ids) Create(id);
  HostRegion region(*server_, 1 << 20);
  ASSERT_TRUE(region.attached());
  // Uneven prompts, by plain steps for both.
  for (int layer = 0; layer < layers(); ++layer) {
    std::vector<v1::StepEntry> prompt = {reference_->MakeEntry("p0", 5, rng_),
                                         reference_->MakeEntry("p1", 1, rng_),
                                         reference_->MakeEntry("p2", 7, rng_)};
    PlainStep(layer, prompt);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i].set_sequence_id(step_ids[i]);
    PlainStep(layer, prompt);
  }
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = server_->kvcache().StepStream(&context);
  constexpr size_t kOut = 512 << 10;
  for (uint64_t pass = 1; pass <= 4; ++pass) {
    for (int layer = 0; layer < layers(); ++layer) {
      const std::vector<v1::StepEntry> entries = Entries(pass_ids);
      v1::StepBatch batch = MakeBatch(entries);
      // Odd passes carry their tensors in the region (output there too), even ones in bytes.
      const bool in_region = pass % 2 == 1;
      if (in_region) {
        region.Place(batch.mutable_q(), 0);
        region.Place(batch.mutable_k(), 128 << 10);
        region.Place(batch.mutable_v(), 256 << 10);
        batch.mutable_out()->set_region_id(region.id());
        batch.mutable_out()->set_offset(kOut);
        std::memset(region.data() + kOut, 0xff, 64 << 10);  // poison: NaN
      }
      ASSERT_TRUE(stream->Write(PassStep(layer, pass, layer == 0 ? batch : TensorsOnly(batch))));
      v1::StepResponse response;
      ASSERT_TRUE(stream->Read(&response)) << "pass " << pass << " layer " << layer;
      ASSERT_TRUE(response.has_batch_out());
      EXPECT_EQ(response.batch_out().shape(0), 3);
      const uint8_t* data = in_region ? region.data() + kOut : nullptr;
      const v1::Tensor got = OutputRows(response.batch_out(), data, 0, 3);
      CheckOutputs(layer, entries, response.batch_out(), data);
      // The same step as a plain batch on the twins.
      std::vector<v1::StepEntry> twins = entries;
      for (size_t i = 0; i < twins.size(); ++i) twins[i].set_sequence_id(step_ids[i]);
      v1::StepRequest plain;
      plain.set_layer(layer);
      *plain.mutable_batch() = MakeBatch(twins);
      grpc::ClientContext plain_context;
      v1::StepResponse plain_response;
      ASSERT_TRUE(server_->kvcache().Step(&plain_context, plain, &plain_response).ok());
      CheckOutputs(layer, twins, plain_response.batch_out(), nullptr);
      const std::string at = "pass " + std::to_string(pass) + " layer " + std::to_string(layer);
      ExpectTimingAddsUp(response, at);
      ExpectTimingAddsUp(plain_response, "plain step, " + at);
      EXPECT_EQ(got.data(), plain_response.batch_out().data())
          << "pass " << pass << " layer " << layer;
    }
  }
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(reference_->Length("p2", layers() - 1), 7 + 4);
}

TEST_P(DecodePassTest, RefusalsNameTheFieldAndChangeNothing) {
  for (const char* id : {"a", "b"}) Create(id);
  for (int layer = 0; layer < layers(); ++layer) PlainStep(layer, Entries({"a", "b"}, 2));
  const uint64_t blocks = BlocksUsed();
  const v1::StepBatch good = MakeBatch(Entries({"a", "b"}));
  {
    // A unary Step may not name a pass.
    grpc::ClientContext context;
    v1::StepResponse response;
    const grpc::Status status = server_->kvcache().Step(&context, PassStep(0, 1, good), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("batch.pass_id (1)"), std::string::npos)
        << status.error_message();
  }
  if (layers() > 1) {
    // An id in use by a live pass of the stream.
    ExpectStreamRefused({PassStep(0, 7, good), PassStep(0, 7, good)},
                        grpc::StatusCode::INVALID_ARGUMENT, "pass 7 is live");
    // Layer steps name no sequence, no token count, no token id.
    v1::StepBatch named = TensorsOnly(good);
    named.add_sequence_ids("a");
    ExpectStreamRefused({PassStep(0, 1, good), PassStep(1, 1, named)},
                        grpc::StatusCode::INVALID_ARGUMENT, "batch.sequence_ids has 1 values");
    named = TensorsOnly(good);
    named.add_token_ids(5);
    named.add_token_ids(6);
    ExpectStreamRefused({PassStep(0, 1, good), PassStep(1, 1, named)},
                        grpc::StatusCode::INVALID_ARGUMENT, "batch.token_ids has 2 values");
    // T rows: the pass's.
    v1::StepBatch short_q = TensorsOnly(good);
    short_q.mutable_q()->set_shape(0, 1);
    ExpectStreamRefused({PassStep(0, 1, good), PassStep(1, 1, short_q)},
                        grpc::StatusCode::INVALID_ARGUMENT,
                        "batch.q.shape[0] (T) = 1 must equal the pass's new tokens");
    // An unknown pass, a layer out of order.
    ExpectStreamRefused({PassStep(1, 3, TensorsOnly(good))}, grpc::StatusCode::FAILED_PRECONDITION,
                        "pass 3 is unknown");
    // The pass's sequences, named again on its own stream before its last layer: a plain step,
    // in either request format, or a new pass.
    v1::StepRequest plain;
    *plain.mutable_batch() = MakeBatch(Entries({"b"}));
    ExpectStreamRefused({PassStep(0, 1, good), plain}, grpc::StatusCode::FAILED_PRECONDITION,
                        "batch.sequence_ids[0]: sequence 'b' is in pass 1 of this stream");
    v1::StepRequest plain_entries;
    *plain_entries.add_entries() = Entries({"a"})[0];
    ExpectStreamRefused({PassStep(0, 1, good), plain_entries},
                        grpc::StatusCode::FAILED_PRECONDITION,
                        "entries[0].sequence_id: sequence 'a' is in pass 1 of this stream");
    ExpectStreamRefused({PassStep(0, 1, good), PassStep(0, 2, good)},
                        grpc::StatusCode::FAILED_PRECONDITION,
                        "batch.sequence_ids[0]: sequence 'a' is in pass 1 of this stream");
    if (layers() > 2) {
      ExpectStreamRefused({PassStep(0, 1, good), PassStep(2, 1, TensorsOnly(good))},
                          grpc::StatusCode::FAILED_PRECONDITION,
                          "pass 1 expects layer 1, the step has layer 2");
    }
  }
  // A sequence that is not level: b's layer 0 ran ahead.
  PlainStep(0, Entries({"b"}));
  if (layers() > 1) {
    ExpectStreamRefused({PassStep(0, 1, good)}, grpc::StatusCode::FAILED_PRECONDITION,
                        "batch.sequence_ids[1]: sequence 'b' has 3 tokens at layer 0 but 2 at "
                        "layer");
    for (int layer = 1; layer < layers(); ++layer) PlainStep(layer, Entries({"b"}));
  }
  // Nothing was applied by the refused streams: the lengths are what the reference says (every
  // output matches it) and the pool holds what it held.
  EXPECT_EQ(BlocksUsed(), blocks);
  for (int layer = 0; layer < layers(); ++layer) PlainStep(layer, Entries({"a", "b"}));
}

TEST_P(DecodePassTest, AFailingLayerOrTheStreamEndingAbortsThePass) {
  if (layers() < 2) GTEST_SKIP() << "a pass of one layer has no middle";
  for (const char* id : {"a", "b", "c"}) Create(id);
  for (int layer = 0; layer < layers(); ++layer) PlainStep(layer, Entries({"a", "b", "c"}, 3));
  const uint64_t blocks = BlocksUsed();
  // 2 tokens each: a new block for every sequence, taken by the pass and given back.
  const std::vector<v1::StepEntry> entries = Entries({"a", "b", "c"}, 2);
  const v1::StepBatch batch = MakeBatch(entries);
  v1::StepBatch bad = TensorsOnly(batch);
  bad.mutable_k()->set_dtype(v1::DTYPE_BFLOAT16);
  std::vector<v1::StepRequest> failing = {PassStep(0, 5, batch)};
  for (int layer = 1; layer + 1 < layers(); ++layer) {
    failing.push_back(PassStep(layer, 5, TensorsOnly(batch)));
  }
  failing.push_back(PassStep(layers() - 1, 5, bad));  // the last layer fails: nothing commits
  ExpectStreamRefused(failing, grpc::StatusCode::INVALID_ARGUMENT, "batch.k.dtype");
  EXPECT_EQ(BlocksUsed(), blocks);
  // The stream ends after layer 0 (the client half-closes): the pass is aborted.
  std::vector<v1::StepResponse> responses;
  EXPECT_TRUE(RunStream({PassStep(0, 6, batch)}, &responses).ok());
  EXPECT_EQ(responses.size(), 1u);
  EXPECT_EQ(BlocksUsed(), blocks);
  // Lengths unchanged on every layer, the sequences free again: plain steps match the reference.
  for (int layer = 0; layer < layers(); ++layer) PlainStep(layer, Entries({"a", "b", "c"}));
}

TEST_P(DecodePassTest, ALivePassHoldsItsSequences) {
  if (layers() < 2) GTEST_SKIP() << "a pass of one layer ends with its first step";
  for (const char* id : {"a", "b"}) Create(id);
  for (int layer = 0; layer < layers(); ++layer) PlainStep(layer, Entries({"a", "b"}, 2));
  grpc::ClientContext context;
  std::unique_ptr<Stream> stream = server_->kvcache().StepStream(&context);
  const std::vector<v1::StepEntry> entries = Entries({"a", "b"});
  ASSERT_TRUE(stream->Write(PassStep(0, 1, MakeBatch(entries))));
  v1::StepResponse response;
  ASSERT_TRUE(stream->Read(&response));
  CheckOutputs(0, entries, response.batch_out(), nullptr);
  // Another call's step on a waits for the pass (steps of one sequence apply in arrival order).
  std::atomic<bool> done{false};
  const std::vector<v1::StepEntry> waiting = Entries({"a"});
  grpc::Status waiting_status;
  v1::StepResponse waiting_response;
  std::thread other([&] {
    v1::StepRequest request;
    *request.mutable_batch() = MakeBatch(waiting);
    grpc::ClientContext other_context;
    waiting_status = server_->kvcache().Step(&other_context, request, &waiting_response);
    done = true;
  });
  // b is freed while held: deferred to the pass's end.
  EXPECT_TRUE(FreeSequence(server_->kvcache(), "b").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(done.load()) << "a step on a held sequence ran before the pass ended";
  for (int layer = 1; layer < layers(); ++layer) {
    ASSERT_TRUE(stream->Write(PassStep(layer, 1, TensorsOnly(MakeBatch(entries)))));
    ASSERT_TRUE(stream->Read(&response));
    CheckOutputs(layer, entries, response.batch_out(), nullptr);
  }
  other.join();
  ASSERT_TRUE(waiting_status.ok()) << waiting_status.error_message();
  CheckOutputs(0, waiting, waiting_response.batch_out(), nullptr);  // after the pass's token
  reference_->Free("b");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(GetStats(server_->kvcache()).sequences(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Layers, DecodePassTest, ::testing::Values(1, 2, 4));

}  // namespace
}  // namespace flashkv::testing

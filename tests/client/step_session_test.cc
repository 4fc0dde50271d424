// StepSession over the fake server's StepStream: pipelined sends, responses in request order,
// a stream failure reaching the waiting request and every later one, and response checks.

#include "flashkv/client/step_session.h"

#include "fake_service.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace flashkv::testing {
namespace {

class StepSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_.num_layers = 6;
    server_ = std::make_unique<FakeServer>(model_);
    client_ = ClientFor(server_->target());
    ASSERT_TRUE(client_->CreateSequence("s").ok());
  }

  // One decode entry for "s" at `layer`, with the request's q/k/v kept for checking.
  v1::StepRequest Request(uint32_t layer, int n = 1) {
    v1::StepRequest request;
    request.set_layer(layer);
    v1::StepEntry* e = request.add_entries();
    e->set_sequence_id("s");
    RandomTensor(model_.dtype, {n, model_.num_q_heads, model_.head_dim}, rng_)
        .CopyToProto(e->mutable_q());
    RandomTensor(model_.dtype, {n, model_.num_kv_heads, model_.head_dim}, rng_)
        .CopyToProto(e->mutable_k());
    RandomTensor(model_.dtype, {n, model_.num_kv_heads, model_.head_dim}, rng_)
        .CopyToProto(e->mutable_v());
    return request;
  }

  FakeModel model_;
  std::unique_ptr<FakeServer> server_;
  std::unique_ptr<Client> client_;
  std::mt19937 rng_{3};
};

TEST_F(StepSessionTest, PipelinedLayersComeBackInOrderAndOverlap) {
  // The server takes `delay` per step, so answering all layers takes num_layers * delay; sends
  // that waited for answers could not all return before the server got through them.
  const absl::Duration delay = absl::Milliseconds(100);
  server_->service().SetStepDelay(delay);
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok());
  std::vector<v1::StepRequest> sent;
  for (int layer = 0; layer < model_.num_layers; ++layer) sent.push_back(Request(layer));
  for (int layer = 0; layer < model_.num_layers; ++layer) {
    absl::StatusOr<uint64_t> id = (*session)->Send(sent[layer]);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(*id, static_cast<uint64_t>(layer + 1));
  }
  EXPECT_LT(server_->service().steps(), static_cast<uint64_t>(model_.num_layers));
  EXPECT_EQ((*session)->in_flight(), model_.num_layers);
  for (int layer = 0; layer < model_.num_layers; ++layer) {
    absl::StatusOr<v1::StepResponse> response = (*session)->Receive();
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->step_id(), static_cast<uint64_t>(layer + 1));
    // Each layer's first token attends to itself only, so out equals its v, head by head.
    absl::StatusOr<HostTensor> out =
        HostTensor::FromProto(std::move(*response->mutable_out(0)), "out");
    ASSERT_TRUE(out.ok()) << out.status();
    HostTensor v = *HostTensor::FromProto(v1::Tensor(sent[layer].entries(0).v()), "v");
    const std::vector<float> o = out->ToFloats(), vf = v.ToFloats();
    const int d = model_.head_dim, group = model_.num_q_heads / model_.num_kv_heads;
    for (int h = 0; h < model_.num_q_heads; ++h) {
      for (int x = 0; x < d; ++x) ASSERT_EQ(o[h * d + x], vf[(h / group) * d + x]) << layer;
    }
  }
  EXPECT_EQ((*session)->in_flight(), 0);
  EXPECT_TRUE((*session)->Finish().ok());
  EXPECT_EQ(server_->service().steps(), static_cast<uint64_t>(model_.num_layers));
}

TEST_F(StepSessionTest, AFailureReachesTheWaitingRequestAndEveryLaterOne) {
  server_->service().FailStep(3, absl::ResourceExhaustedError("no free blocks (0 of 1024)"));
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok());
  // Sends 1-3 reach the server before step 3 can fail; sends 4 and 5 race with the failure,
  // which may already have ended the stream: such a send returns the stream's status.
  int sent = 0;
  for (int layer = 0; layer < 5; ++layer) {
    absl::StatusOr<uint64_t> id = (*session)->Send(Request(layer));
    if (!id.ok()) {
      EXPECT_GE(layer, 3);
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
      break;
    }
    ++sent;
  }
  ASSERT_GE(sent, 3);
  EXPECT_TRUE((*session)->Receive().ok());
  EXPECT_TRUE((*session)->Receive().ok());
  for (int i = 2; i < sent; ++i) {
    absl::StatusOr<v1::StepResponse> r = (*session)->Receive();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << i;
    EXPECT_EQ(r.status().message(), "no free blocks (0 of 1024)");
  }
  absl::StatusOr<uint64_t> late = (*session)->Send(Request(0));
  EXPECT_EQ(late.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*session)->Finish().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(StepSessionTest, WrongStepIdIsCaught) {
  server_->service().SetStepIdEcho(false);
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok());
  absl::StatusOr<v1::StepResponse> r = (*session)->Step(Request(0));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("out of order"), absl::string_view::npos) << r.status();
}

TEST_F(StepSessionTest, WindowAndMisuseAreErrorsNotDeadlocks) {
  StepSessionOptions options;
  options.max_in_flight = 2;
  options.routing_key = "runner-1";
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession(options);
  ASSERT_TRUE(session.ok());
  EXPECT_EQ((*session)->Receive().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*session)->Send(Request(0)).ok());
  ASSERT_TRUE((*session)->Send(Request(1)).ok());
  EXPECT_EQ((*session)->Send(Request(2)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*session)->Receive().ok());
  EXPECT_TRUE((*session)->Finish().ok());
  EXPECT_EQ((*session)->Send(Request(2)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(server_->service().seen().back().routing_header, "runner-1");

  StepSessionOptions bad;
  bad.max_in_flight = 0;
  EXPECT_EQ(client_->OpenStepSession(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StepSessionTest, DestroyingABusySessionCancelsCleanly) {
  server_->service().SetStepDelay(absl::Milliseconds(20));
  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok());
  for (int layer = 0; layer < 4; ++layer) ASSERT_TRUE((*session)->Send(Request(layer)).ok());
  session->reset();  // must not hang or crash
}

}  // namespace
}  // namespace flashkv::testing

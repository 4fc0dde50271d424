// flashkv::Client against the in-test fake server: routing header and token on the right calls,
// the server's codes and messages arriving unchanged, typed Step and Attention results.

#include "flashkv/client/client.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "fake_service.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace flashkv::testing {
namespace {

class ClientTest : public ::testing::Test {
 protected:
  FakeModel model_;
  FakeServer server_{model_};
  std::unique_ptr<Client> client_ = ClientFor(server_.target(), "secret-token");
  std::mt19937 rng_{42};

  StepInput Input(const std::string& id, int n, std::vector<HostTensor>& keep) {
    keep.push_back(RandomTensor(model_.dtype, {n, model_.num_q_heads, model_.head_dim}, rng_));
    keep.push_back(RandomTensor(model_.dtype, {n, model_.num_kv_heads, model_.head_dim}, rng_));
    keep.push_back(RandomTensor(model_.dtype, {n, model_.num_kv_heads, model_.head_dim}, rng_));
    const size_t i = keep.size();
    return StepInput{id, keep[i - 3].view(), keep[i - 2].view(), keep[i - 1].view(), {}};
  }
};

TEST_F(ClientTest, EverySequenceCallCarriesTheRoutingHeaderAndToken) {
  ASSERT_TRUE(client_->GetCacheInfo().ok());
  ASSERT_TRUE(client_->CreateSequence("seq-a").ok());
  CallOptions routed;
  routed.routing_key = "runner-7";
  ASSERT_TRUE(client_->CreateSequence("seq-b", {}, routed).ok());
  ASSERT_TRUE(client_->ForkSequence("seq-a", "seq-c").ok());
  std::vector<HostTensor> keep;
  ASSERT_TRUE(client_->Step(0, {Input("seq-c", 1, keep), Input("seq-a", 1, keep)}).ok());
  ASSERT_TRUE(client_->FreeSequence("seq-c").ok());

  absl::StatusOr<std::unique_ptr<StepSession>> session = client_->OpenStepSession({});
  ASSERT_TRUE(session.ok());
  v1::StepRequest request;
  request.set_layer(1);
  std::vector<StepInput> inputs = {Input("seq-a", 1, keep)};
  v1::StepEntry* entry = request.add_entries();
  entry->set_sequence_id("seq-a");
  CopyToProto(inputs[0].q, entry->mutable_q());
  CopyToProto(inputs[0].k, entry->mutable_k());
  CopyToProto(inputs[0].v, entry->mutable_v());
  ASSERT_TRUE((*session)->Step(request).ok());
  ASSERT_TRUE((*session)->Finish().ok());

  const std::vector<SeenCall> seen = server_.service().seen();
  const std::vector<std::pair<std::string, std::string>> want = {
      {"GetCacheInfo", ""},      {"CreateSequence", "seq-a"}, {"CreateSequence", "runner-7"},
      {"ForkSequence", "seq-a"}, {"Step", "seq-c"},           {"FreeSequence", "seq-c"},
      {"StepStream", "seq-a"}};
  ASSERT_EQ(seen.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(seen[i].method, want[i].first);
    EXPECT_EQ(seen[i].routing_header, want[i].second) << seen[i].method;
    EXPECT_EQ(seen[i].authorization, "Bearer secret-token") << seen[i].method;
  }
}

TEST_F(ClientTest, ServerCodesAndMessagesArriveUnchanged) {
  absl::Status s = client_->FreeSequence("nope");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "sequence 'nope' not found");

  ASSERT_TRUE(client_->CreateSequence("dup").ok());
  absl::StatusOr<uint32_t> again = client_->CreateSequence("dup");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(again.status().message(), "sequence 'dup' already exists");

  server_.service().FailStep(1,
                             absl::ResourceExhaustedError("KV cache full: 0 of 1024 blocks free"));
  std::vector<HostTensor> keep;
  absl::StatusOr<std::vector<HostTensor>> out = client_->Step(0, {Input("dup", 3, keep)});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(out.status().message(), "KV cache full: 0 of 1024 blocks free");

  // A layer that runs ahead, then a malformed tensor: the fake's own validation messages.
  out = client_->Step(1, {Input("dup", 1, keep)});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition) << out.status();
}

TEST_F(ClientTest, BadRoutingKeyIsRefusedBeforeSending) {
  CallOptions options;
  options.routing_key = "bad\nkey";
  absl::StatusOr<uint32_t> r = client_->CreateSequence("x", {}, options);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("printable ASCII"), absl::string_view::npos);
  EXPECT_TRUE(server_.service().seen().empty());
}

TEST_F(ClientTest, UnreachableServerIsUnavailable) {
  std::unique_ptr<Client> client = ClientFor("127.0.0.1:1");
  CallOptions options;
  options.timeout = absl::Seconds(5);
  absl::StatusOr<v1::CacheInfo> info = client->GetCacheInfo(options);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
  EXPECT_FALSE(info.status().message().empty());
}

TEST_F(ClientTest, HealthFollowsTheServer) {
  EXPECT_EQ(*client_->CheckHealth(), HealthState::kServing);
  server_.SetServing(false);
  EXPECT_EQ(*client_->CheckHealth(), HealthState::kNotServing);
  EXPECT_EQ(*client_->CheckHealth("no.such.Service"), HealthState::kServiceUnknown);
}

TEST_F(ClientTest, TypedStepMatchesDenseAttentionOverTheSameKv) {
  ASSERT_TRUE(client_->CreateSequence("s").ok());
  std::vector<float> k_all, v_all;
  for (int n : {5, 1, 1}) {  // a prefill chunk, then two decodes, on every layer
    for (int layer = 0; layer < model_.num_layers; ++layer) {
      std::vector<HostTensor> keep;
      StepInput input = Input("s", n, keep);
      absl::StatusOr<std::vector<HostTensor>> out = client_->Step(layer, {input});
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_EQ(out->size(), 1u);
      if (layer != 0) continue;
      const std::vector<float> k = input.k.ToFloats(), v = input.v.ToFloats();
      k_all.insert(k_all.end(), k.begin(), k.end());
      v_all.insert(v_all.end(), v.begin(), v.end());
      const int64_t ctx =
          static_cast<int64_t>(k_all.size()) / (model_.num_kv_heads * model_.head_dim);
      const std::vector<float> want = NaiveAttention(
          input.q.ToFloats(), k_all, v_all, n, ctx, model_.num_q_heads, model_.num_kv_heads,
          model_.head_dim, true, 1.0f / std::sqrt(float(model_.head_dim)));
      EXPECT_LE(MaxAbsDiff((*out)[0].ToFloats(), want), 1e-3f);
    }
  }
}

TEST_F(ClientTest, TypedAttentionChecksTheAnswerShape) {
  HostTensor q = RandomTensor(DType::kBFloat16, {2, 3, 4, 32}, rng_);
  HostTensor k = RandomTensor(DType::kBFloat16, {2, 5, 2, 32}, rng_);
  HostTensor v = RandomTensor(DType::kBFloat16, {2, 5, 2, 32}, rng_);
  AttentionInput input;
  input.q = q.view();
  input.k = k.view();
  input.v = v.view();
  input.causal = true;
  absl::StatusOr<AttentionResult> result = client_->Attention(input);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->out.dtype(), DType::kBFloat16);
  EXPECT_EQ(result->out.shape(), q.shape());
  EXPECT_FALSE(result->lse.has_value());
}

std::string TestData(const std::string& name) {
  std::ifstream in(std::string(FLASHKV_TESTDATA_DIR) + "/" + name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(ChannelTest, UnixSocketTarget) {
  const std::string path =
      ::testing::TempDir() + "flashkv_client_" + std::to_string(getpid()) + ".sock";
  FakeServer server({}, FakeServerOptions{path, "", "", ""});
  std::unique_ptr<Client> client = ClientFor("unix:" + path);
  EXPECT_TRUE(client->GetCacheInfo().ok());
  EXPECT_TRUE(client->CreateSequence("over-unix").ok());
  std::remove(path.c_str());
}

TEST(ChannelTest, MutualTlsWithBearerToken) {
  const std::string dir = FLASHKV_TESTDATA_DIR;
  FakeServer server({}, FakeServerOptions{"", TestData("server.pem"), TestData("server.key"),
                                          TestData("ca.pem")});
  ClientConfig config;
  config.channel.target = server.target();
  config.channel.tls.enabled = true;
  config.channel.tls.root_certs_file = dir + "/ca.pem";
  config.channel.tls.client_cert_file = dir + "/client.pem";
  config.channel.tls.client_key_file = dir + "/client.key";
  config.bearer_token = "t0ken";
  config.default_timeout = absl::Seconds(10);
  std::unique_ptr<Client> client = *Client::Create(config);
  ASSERT_TRUE(client->CreateSequence("secure").ok());
  EXPECT_EQ(server.service().seen().back().authorization, "Bearer t0ken");

  // Without a client certificate the server refuses the handshake.
  config.channel.tls.client_cert_file.clear();
  config.channel.tls.client_key_file.clear();
  absl::StatusOr<v1::CacheInfo> info = (*Client::Create(config))->GetCacheInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
  // Nor does a plaintext client get through.
  info = ClientFor(server.target())->GetCacheInfo();
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable) << info.status();
}

TEST(ChannelTest, TlsFilesAreCheckedUpFront) {
  ClientConfig config;
  config.channel.tls.enabled = true;
  config.channel.tls.root_certs_file = "/nonexistent/ca.pem";
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(config);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("root_certs_file"), absl::string_view::npos);

  config.channel.tls.root_certs_file.clear();
  config.channel.tls.client_cert_file = "/etc/hostname";
  client = Client::Create(config);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(client.status().message().find("together"), absl::string_view::npos);

  config.channel.target.clear();
  EXPECT_FALSE(Client::Create(config).ok());
}

}  // namespace
}  // namespace flashkv::testing

// Who may touch which sequence, against a real in-process server with a token file: calls
// without a valid token are UNAUTHENTICATED; sequence ids live in the caller's tenant's namespace
// (another tenant's id answers NOT_FOUND for Step, Fork and Free, and the same id may be used by
// both); prefix-cache blocks are never shared across tenants; errors quote ids as the client sent
// them; quotas on sequences and KV blocks answer RESOURCE_EXHAUSTED with the numbers and change
// nothing; the token file is re-read on ReloadTokens (SIGHUP in the binary).

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "flashkv/client/client.h"
#include "testing/conversation.h"
#include "testing/temp_dir.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

constexpr char kTokenA[] = "alpha-token-0123456789abcdef";
constexpr char kTokenB[] = "bravo-token-0123456789abcdef";
constexpr char kTokenC[] = "charlie-token-0123456789abcd";

class TenantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    tokens_ = dir_.File("tokens.txt");
    WriteTokens(std::string(kTokenA) + " alpha\n" + kTokenB +
                " bravo max_sequences=3 max_kv_blocks=6\n");
  }
  void TearDown() override { server_.reset(); }
  void WriteTokens(const std::string& text) { std::ofstream(tokens_) << text; }
  void Start() {
    server::ServerConfig config = SmallModelConfig();
    config.security.tokens_file = tokens_;
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  std::unique_ptr<Client> As(const std::string& token) {
    ClientConfig config;
    config.bearer_token = token;
    config.default_timeout = absl::Seconds(30);
    return Client::FromChannel(server_->channel(), config);
  }
  // One step of `n` tokens of `id` at every layer; the first failure's status.
  absl::Status StepAllLayers(Client& client, ReferenceCache& reference, const std::string& id,
                             int n, std::mt19937_64& rng, std::vector<int64_t> tokens = {}) {
    for (int layer = 0; layer < server_->config().model.num_layers; ++layer) {
      const v1::StepEntry entry = tokens.empty() ? reference.MakeEntry(id, n, rng)
                                                 : reference.EntryForTokens(id, tokens, layer, rng);
      absl::StatusOr<v1::StepResponse> response = client.Step(MakeStep(layer, {entry}));
      if (!response.ok()) return response.status();
      const std::string mismatch = reference.Apply(layer, entry, response->out(0));
      if (!mismatch.empty()) return absl::InternalError(mismatch);
    }
    return absl::OkStatus();
  }

  TempDir dir_{"flashkv-tenants"};
  std::string tokens_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(TenantTest, CallsWithoutAValidTokenAreUnauthenticated) {
  Start();
  for (const std::string token : {"", "not-a-token-of-the-file-000000", "short"}) {
    std::unique_ptr<Client> client = As(token);
    EXPECT_EQ(client->CreateSequence("s").status().code(), absl::StatusCode::kUnauthenticated)
        << token;
    EXPECT_EQ(client->GetStats().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->GetCacheInfo().status().code(), absl::StatusCode::kUnauthenticated);
    absl::StatusOr<v1::StepResponse> step = client->Step(MakeStep(0, {}));
    EXPECT_EQ(step.status().code(), absl::StatusCode::kUnauthenticated);
    // The message never echoes what was sent.
    if (!token.empty()) EXPECT_EQ(step.status().message().find(token), std::string::npos);
  }
  // Health stays open: load balancers probe without tokens.
  EXPECT_TRUE(As("")->CheckHealth().ok());
}

TEST_F(TenantTest, AnotherTenantsSequenceIsNotFoundAndItsIdIsFree) {
  Start();
  std::unique_ptr<Client> a = As(kTokenA), b = As(kTokenB);
  ReferenceCache ref_a(server_->config().model), ref_b(server_->config().model);
  std::mt19937_64 rng(3);
  ASSERT_TRUE(a->CreateSequence("s").ok());
  ASSERT_TRUE(StepAllLayers(*a, ref_a, "s", 5, rng).ok());

  // Every way of naming alpha's "s" from bravo answers as an unknown id would.
  absl::StatusOr<v1::StepResponse> step = b->Step(MakeStep(0, {ref_b.MakeEntry("s", 1, rng)}));
  EXPECT_EQ(step.status().code(), absl::StatusCode::kNotFound) << step.status();
  EXPECT_NE(step.status().message().find("sequence 's' does not exist"), std::string::npos)
      << step.status();
  absl::Status fork = b->ForkSequence("s", "child");
  EXPECT_EQ(fork.code(), absl::StatusCode::kNotFound) << fork;
  EXPECT_EQ(fork.message().find("alpha"), std::string::npos) << fork;
  EXPECT_EQ(b->FreeSequence("s").code(), absl::StatusCode::kNotFound);

  // The id is bravo's to use, and the two never meet.
  ASSERT_TRUE(b->CreateSequence("s").ok());
  ASSERT_TRUE(StepAllLayers(*b, ref_b, "s", 3, rng).ok());
  ASSERT_TRUE(StepAllLayers(*a, ref_a, "s", 1, rng).ok());
  EXPECT_EQ(ref_a.Length("s", 0), 6);
  EXPECT_EQ(ref_b.Length("s", 0), 3);
  // Errors quote ids as the client sent them, never with the tenant's prefix.
  absl::StatusOr<uint32_t> again = a->CreateSequence("s");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("'s'"), std::string::npos) << again.status();
  EXPECT_EQ(again.status().message().find("alpha/"), std::string::npos) << again.status();
  ASSERT_TRUE(a->FreeSequence("s").ok());
  ASSERT_TRUE(b->FreeSequence("s").ok());
}

TEST_F(TenantTest, PrefixBlocksAreSharedWithinATenantOnly) {
  Start();
  std::unique_ptr<Client> a = As(kTokenA), b = As(kTokenB);
  ReferenceCache ref_a(server_->config().model), ref_b(server_->config().model);
  std::mt19937_64 rng(4);
  const std::vector<int64_t> prompt = {11, 12, 13, 14, 15, 16, 17, 18, 19};
  ASSERT_TRUE(a->CreateSequence("p", prompt).ok());
  ASSERT_TRUE(StepAllLayers(*a, ref_a, "p", 0, rng, prompt).ok());

  absl::StatusOr<uint32_t> own = a->CreateSequence("p2", prompt);
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(*own, 8u);  // two full pages of 4, the last token left to compute
  // Bravo's identical prompt finds nothing: it cannot probe alpha's prompts.
  absl::StatusOr<uint32_t> other = b->CreateSequence("p", prompt);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*other, 0u);
}

TEST_F(TenantTest, QuotasAnswerResourceExhaustedWithTheNumbersAndChangeNothing) {
  Start();
  std::unique_ptr<Client> b = As(kTokenB);  // max_sequences=3 max_kv_blocks=6, pages of 4
  ReferenceCache ref(server_->config().model);
  std::mt19937_64 rng(6);
  for (const char* id : {"x", "y", "z"}) ASSERT_TRUE(b->CreateSequence(id).ok());
  absl::StatusOr<uint32_t> fourth = b->CreateSequence("w");
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(fourth.status().message().find("tenant 'bravo' holds 3 sequences, its quota (3)"),
            std::string::npos)
      << fourth.status();
  EXPECT_EQ(b->ForkSequence("x", "w").code(), absl::StatusCode::kResourceExhausted);

  // 20 tokens take 5 blocks; 5 more tokens of "y" would need 2 more: past 6.
  ASSERT_TRUE(StepAllLayers(*b, ref, "x", 20, rng).ok());
  absl::Status over = StepAllLayers(*b, ref, "y", 5, rng);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted) << over;
  EXPECT_NE(over.message().find("it holds 5 blocks (0 more reserved by steps in flight); this "
                                "step needs 2 more; the quota is 6"),
            std::string::npos)
      << over;
  // Nothing was applied: "y" is still empty, and a step that fits the quota goes through.
  ASSERT_TRUE(StepAllLayers(*b, ref, "y", 4, rng).ok());
  // Alpha has no quota of its own and is not held back by bravo's.
  std::unique_ptr<Client> a = As(kTokenA);
  ReferenceCache ref_a(server_->config().model);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a->CreateSequence("a" + std::to_string(i)).ok());
  ASSERT_TRUE(StepAllLayers(*a, ref_a, "a0", 40, rng).ok());
  // Freeing gives the quota back.
  ASSERT_TRUE(b->FreeSequence("x").ok());
  ASSERT_TRUE(b->CreateSequence("w").ok());
  ASSERT_TRUE(StepAllLayers(*b, ref, "w", 16, rng).ok());
}

TEST_F(TenantTest, ReloadedTokensTakeEffectAndABadFileKeepsTheOldOnes) {
  Start();
  ASSERT_TRUE(As(kTokenA)->CreateSequence("r").ok());
  WriteTokens(std::string(kTokenC) + " alpha\n");  // alpha's token rotated
  ASSERT_TRUE(server_->server().ReloadTokens().ok());
  EXPECT_EQ(As(kTokenA)->FreeSequence("r").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(As(kTokenB)->CreateSequence("r").status().code(), absl::StatusCode::kUnauthenticated);
  // Same tenant, new token: its sequences are still there.
  ASSERT_TRUE(As(kTokenC)->FreeSequence("r").ok());

  WriteTokens("tooshort alpha\n");
  const absl::Status bad = server_->server().ReloadTokens();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("tokens.txt:1: the token has 8 characters"), std::string::npos)
      << bad;
  EXPECT_TRUE(As(kTokenC)->CreateSequence("r").ok());
}

}  // namespace
}  // namespace flashkv::testing

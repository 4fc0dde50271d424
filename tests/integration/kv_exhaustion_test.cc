// KV exhaustion under load, on the CPU server with a small pool: clients keep opening
// conversations (a prefill, a few decodes, then the sequence stays alive, as a chat session
// waiting for its user). Idle sessions fill the pool and are swapped out to host memory; once the
// swap space is full too, steps answer RESOURCE_EXHAUSTED with the numbers and change nothing.
// When the load drops (sessions freed), the sessions kept — swapped ones included — carry on
// with their K/V intact, and once everything is freed the pool is whole and a single sequence
// can take all of it. Every output is checked against the float64 reference.

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "flashkv/base/mutex.h"
#include "testing/conversation.h"
#include "testing/kvcache_calls.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

constexpr int kClients = 4;
constexpr int kPrefill = 12, kDecodes = 4;  // 16 tokens: 4 blocks of 4 per session
constexpr int kUsableBlocks = 32, kSwapBlocks = 32;

class KvExhaustionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallModelConfig();
    const int64_t block_bytes = 2LL * 3 * 2 * 4 * 64 * 4;  // K and V, 3 layers, Hkv 2, page 4, D 64
    config_.kv_cache_bytes = (kUsableBlocks + 1) * block_bytes;  // and the null block
    config_.swap_bytes = kSwapBlocks * block_bytes;
    absl::StatusOr<std::unique_ptr<TestServer>> server = TestServer::Start(config_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    reference_ = std::make_unique<ReferenceCache>(config_.model);
  }

  grpc::Status Create(const std::string& id) { return CreateSequence(server_->kvcache(), id); }
  grpc::Status Free(const std::string& id) { return FreeSequence(server_->kvcache(), id); }
  v1::ServerStats Stats() { return GetStats(server_->kvcache()); }
  // `n` new tokens of `id` at every layer. A failure's status is returned (the reference is
  // left as it was, since a failed step changes nothing); a wrong output is INTERNAL.
  grpc::Status Advance(const std::string& id, int n, std::mt19937_64& rng) {
    for (int layer = 0; layer < config_.model.num_layers; ++layer) {
      v1::StepEntry entry;
      {
        MutexLock lock(&reference_mu_);
        entry = reference_->MakeEntry(id, n, rng);
      }
      v1::StepResponse response;
      const grpc::Status status = StepCall(server_->kvcache(), MakeStep(layer, {entry}), &response);
      // (Only layer 0 adds blocks, but any layer may need the sequence swapped back in.)
      if (!status.ok()) return status;
      MutexLock lock(&reference_mu_);
      const std::string mismatch = reference_->Apply(layer, entry, response.out(0));
      if (!mismatch.empty()) return grpc::Status(grpc::StatusCode::INTERNAL, id + ": " + mismatch);
    }
    return grpc::Status::OK;
  }

  server::ServerConfig config_;
  std::unique_ptr<TestServer> server_;
  Mutex reference_mu_;  // ReferenceCache is not thread-safe
  std::unique_ptr<ReferenceCache> reference_ ABSL_GUARDED_BY(reference_mu_);
};

TEST_F(KvExhaustionTest, SwapsThenRefusesThenRecoversFully) {
  struct Client {
    std::vector<std::string> sessions;  // complete ones, oldest first
    std::string failed_session;         // the one a step was refused for
    grpc::Status refusal;
    std::string error;  // anything but RESOURCE_EXHAUSTED
  };
  std::vector<Client> clients(kClients);
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      Client& me = clients[c];
      std::mt19937_64 rng(100 + c);
      for (int s = 0; s < 64; ++s) {  // far more sessions than the pool and swap space hold
        const std::string id = "c" + std::to_string(c) + "-s" + std::to_string(s);
        if (grpc::Status st = Create(id); !st.ok()) {
          me.error = id + ": create: " + st.error_message();
          return;
        }
        grpc::Status st = Advance(id, kPrefill, rng);
        for (int d = 0; d < kDecodes && st.ok(); ++d) st = Advance(id, 1, rng);
        if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          me.failed_session = id;
          me.refusal = st;
          return;
        }
        if (!st.ok()) {
          me.error = id + ": " + std::to_string(st.error_code()) + " " + st.error_message();
          return;
        }
        me.sessions.push_back(id);
      }
    });
  }
  for (auto& t : threads) t.join();

  const v1::ServerStats loaded = Stats();
  int complete = 0;
  for (const Client& client : clients) {
    EXPECT_EQ(client.error, "");
    EXPECT_EQ(client.refusal.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << "every client ends refused: the sessions outgrow pool and swap space";
    // The refusal carries the numbers: blocks needed and free (and swappable, swap space).
    EXPECT_NE(client.refusal.error_message().find(" needs "), std::string::npos)
        << client.refusal.error_message();
    EXPECT_NE(client.refusal.error_message().find(" free"), std::string::npos)
        << client.refusal.error_message();
    complete += static_cast<int>(client.sessions.size());
  }
  // The pool alone holds 8 sessions, the swap space 8 more: the service swapped before refusing.
  EXPECT_GE(loaded.swaps_out(), 1u);
  EXPECT_GT(complete, kUsableBlocks / 4) << "sessions beyond the pool were admitted by swapping";
  EXPECT_LE(complete, (kUsableBlocks + kSwapBlocks) / 4);
  EXPECT_EQ(loaded.blocks_used() + loaded.blocks_free(), loaded.blocks_total());

  // The load drops: each client keeps only its oldest session (swapped out by now: the least
  // recently used go first); the rest are freed.
  std::vector<std::string> kept;
  for (Client& client : clients) {
    ASSERT_TRUE(Free(client.failed_session).ok());
    for (size_t i = 0; i < client.sessions.size(); ++i) {
      if (i == 0) {
        kept.push_back(client.sessions[i]);
      } else {
        ASSERT_TRUE(Free(client.sessions[i]).ok());
      }
    }
  }
  // Every kept session decodes again, concurrently: swapped ones come back with their K/V.
  threads.clear();
  std::vector<std::string> errors(kept.size());
  for (size_t k = 0; k < kept.size(); ++k) {
    threads.emplace_back([&, k] {
      std::mt19937_64 rng(200 + k);
      for (int d = 0; d < 4 && errors[k].empty(); ++d) {
        const grpc::Status st = Advance(kept[k], 1, rng);
        if (!st.ok()) errors[k] = kept[k] + ": " + st.error_message();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  EXPECT_GE(Stats().swaps_in(), 1u) << "the oldest sessions had been swapped out";

  // Idle and empty: the pool is whole, and one sequence can take all of it.
  for (const std::string& id : kept) ASSERT_TRUE(Free(id).ok());
  const v1::ServerStats idle = Stats();
  EXPECT_EQ(idle.sequences(), 0u);
  EXPECT_EQ(idle.blocks_used(), 0u);
  EXPECT_EQ(idle.blocks_free(), idle.blocks_total());
  EXPECT_EQ(idle.blocks_total(), uint64_t{kUsableBlocks});
  ASSERT_TRUE(Create("whole").ok());
  std::mt19937_64 rng(7);
  const grpc::Status whole = Advance("whole", kUsableBlocks * 4, rng);
  EXPECT_TRUE(whole.ok()) << whole.error_message();
  EXPECT_EQ(Stats().blocks_used(), uint64_t{kUsableBlocks});
  ASSERT_TRUE(Free("whole").ok());
  EXPECT_EQ(Stats().blocks_free(), uint64_t{kUsableBlocks});
}

}  // namespace
}  // namespace flashkv::testing

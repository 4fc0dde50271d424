// Long random runs of create / append batches (committed, aborted, dropped) / fork / free / swap /
// expire against the Harness model: invariants after every operation, every row of every resident
// sequence compared bit for bit at intervals, expiry compared with the model's last-used times.
// Pools are small, so reclaiming, swapping and RESOURCE_EXHAUSTED all happen.

#include <algorithm>
#include <random>
#include <set>
#include <thread>

#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

struct RandomCase {
  int page_size;
  int64_t blocks;
  int64_t swap_blocks;
  uint32_t seed;
};

void PrintTo(const RandomCase& c, std::ostream* os) {
  *os << "page " << c.page_size << ", " << c.blocks << " blocks, " << c.swap_blocks
      << " swap blocks, seed " << c.seed;
}

class RandomRunTest : public ::testing::TestWithParam<RandomCase> {
 protected:
  void SetUp() override {
    const RandomCase& c = GetParam();
    CacheConfig config = TestConfig(3, c.page_size, c.blocks, c.swap_blocks);
    config.max_context = std::min(160, std::max(64, 40 * c.page_size));
    h_ = std::make_unique<Harness>(config);
    rng_.seed(c.seed);
    for (int i = 0; i < 4; ++i) base_prompts_.push_back(Harness::Prompt(1000 + i, 64));
  }

  int Rand(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  bool Chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  std::string AnyId() {
    auto it = h_->model.begin();
    std::advance(it, Rand(static_cast<int>(h_->model.size())));
    return it->first;
  }
  void Touch(const std::string& id) { last_used_[id] = h_->now(); }

  void DoCreate() {
    const std::string id = "s" + std::to_string(next_id_++);
    std::vector<int64_t> prompt;
    if (Chance(0.7)) {
      const std::vector<int64_t>& base = base_prompts_[Rand(4)];
      prompt.assign(base.begin(), base.begin() + 1 + Rand(static_cast<int>(base.size())));
      if (Chance(0.2)) prompt[Rand(static_cast<int>(prompt.size()))] += 1;
    }
    const std::string tenant = Chance(0.3) ? "t1" : "";
    absl::StatusOr<int> cached = h_->Create(id, prompt, tenant);
    ASSERT_TRUE(cached.ok()) << cached.status();
    const int page = GetParam().page_size;
    EXPECT_EQ(*cached % page, 0);
    EXPECT_LE(*cached, std::max<int>(0, static_cast<int>(prompt.size()) - 1));
    hit_tokens_ += *cached;
    Touch(id);
  }

  // A batch at one layer over up to 4 sequences that can advance there.
  void DoBatch() {
    const int layers = h_->config().num_layers;
    const int layer = Chance(0.4) ? 0 : Rand(layers);
    std::vector<Step> steps;
    for (const auto& [id, seq] : h_->model) {
      if (steps.size() >= 4 || !Chance(0.5)) continue;
      const int room = layer == 0 ? h_->cache().max_context() - seq.len[0]
                                  : seq.len[layer - 1] - seq.len[layer];
      if (room <= 0) continue;
      const int n = 1 + Rand(std::min(room, Chance(0.2) ? 3 * GetParam().page_size + 2 : 3));
      steps.push_back(Step{id, n, Chance(0.7)});
    }
    if (steps.empty()) return;
    absl::StatusOr<LayerBatch> batch = h_->Prepare(layer, steps);
    if (!batch.ok()) {
      ASSERT_EQ(batch.status().code(), absl::StatusCode::kResourceExhausted) << batch.status();
      ++exhausted_;
      return;
    }
    for (const Step& s : steps) Touch(s.id);
    ASSERT_TRUE(h_->Write(*batch, layer, steps).ok());
    if (Chance(0.1)) {
      // Meanwhile: the batch's sequences cannot be forked or swapped; freeing one is deferred.
      const std::string id = steps[Rand(static_cast<int>(steps.size()))].id;
      EXPECT_EQ(h_->Fork(id, "never").code(), absl::StatusCode::kAborted);
      EXPECT_EQ(h_->SwapOut(id).code(), absl::StatusCode::kAborted);
      if (Chance(0.5)) {
        ASSERT_TRUE(h_->Free(id).ok());
        last_used_.erase(id);
      }
    }
    const double r = std::uniform_real_distribution<double>(0, 1)(rng_);
    if (r < 0.8) {
      h_->Commit(*std::move(batch), layer, steps);
    } else if (r < 0.9) {
      h_->Abort(*std::move(batch));
    } else {
      batch = absl::CancelledError("dropped");  // destroying a pending batch aborts it
      h_->Check();
    }
  }

  void DoFork() {
    const std::string parent = AnyId();
    const std::string child = "s" + std::to_string(next_id_++);
    const absl::Status s = h_->Fork(parent, child);
    if (!s.ok()) {
      ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
      return;
    }
    Touch(parent);
    Touch(child);
  }

  void DoSwapOut() {
    const absl::Status s = h_->SwapOut(AnyId());
    ASSERT_TRUE(s.ok() || s.code() == absl::StatusCode::kFailedPrecondition ||
                s.code() == absl::StatusCode::kResourceExhausted)
        << s;
  }

  void DoExpire() {
    const absl::Duration ttl = absl::Seconds(5 + Rand(40));
    std::set<std::string> expected;
    for (const auto& [id, when] : last_used_) {
      if (when <= h_->now() - ttl) expected.insert(id);
    }
    const std::vector<std::string> expired = h_->Expire(ttl);
    EXPECT_EQ(std::set<std::string>(expired.begin(), expired.end()), expected);
    for (const std::string& id : expired) last_used_.erase(id);
  }

  void DoBadInput() {
    EXPECT_EQ(h_->Append(0, {Step{"missing", 1}}).code(), absl::StatusCode::kNotFound);
    if (!h_->model.empty()) {
      const std::string id = AnyId();
      EXPECT_EQ(h_->Append(0, {Step{id, 1}, Step{id, 1}}).code(),
                absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(h_->Create(id).status().code(), absl::StatusCode::kAlreadyExists);
    }
  }

  std::unique_ptr<Harness> h_;
  std::mt19937 rng_;
  std::vector<std::vector<int64_t>> base_prompts_;
  std::map<std::string, absl::Time> last_used_;
  int next_id_ = 0;
  int64_t hit_tokens_ = 0;
  int exhausted_ = 0;
};

TEST_P(RandomRunTest, MatchesTheModelAfterEveryOperation) {
  for (int op = 0; op < 4000 && !HasFatalFailure(); ++op) {
    h_->Advance(absl::Milliseconds(Rand(2000)));
    const int r = Rand(100);
    if (h_->model.empty() || (r < 14 && h_->model.size() < 12)) {
      DoCreate();
    } else if (r < 62) {
      DoBatch();
    } else if (r < 72) {
      DoFork();
    } else if (r < 82 || h_->model.size() >= 12) {
      const std::string id = AnyId();
      ASSERT_TRUE(h_->Free(id).ok());
      last_used_.erase(id);
    } else if (r < 92) {
      DoSwapOut();
    } else if (r < 96) {
      DoExpire();
    } else {
      DoBadInput();
    }
    if (op % 25 == 0) h_->VerifyAll();
  }
  h_->VerifyAll();
  const CacheStats s = h_->cache().GetStats();
  // The run really went through the interesting paths.
  EXPECT_GT(hit_tokens_, 0);
  EXPECT_GT(s.cow_copies, 0);
  if (GetParam().swap_blocks > 0) {
    EXPECT_GT(s.swap_outs, 0);
    EXPECT_GT(s.swap_ins, 0);
  }
  EXPECT_GT(s.batches_aborted, 0);
  EXPECT_GT(s.prefix_blocks_evicted, 0);
  EXPECT_GT(exhausted_, 0);
}

INSTANTIATE_TEST_SUITE_P(
    PageSizes, RandomRunTest,
    ::testing::Values(RandomCase{1, 96, 64, 1}, RandomCase{3, 40, 32, 2}, RandomCase{4, 32, 24, 3},
                      RandomCase{16, 16, 8, 4}, RandomCase{5, 30, 0, 5}),
    [](const ::testing::TestParamInfo<RandomCase>& info) {
      return "page" + std::to_string(info.param.page_size) + "_seed" +
             std::to_string(info.param.seed);
    });

}  // namespace
}  // namespace flashkv::kvcache

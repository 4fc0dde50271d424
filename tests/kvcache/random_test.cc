// Long random runs of create / append batches (committed, aborted, dropped) / fork / free / swap /
// expire (op_runner.h) against the Harness model: invariants after every operation, every row of
// every resident sequence compared bit for bit at intervals, expiry compared with the model's
// last-used times. Pools are small, so reclaiming, swapping and RESOURCE_EXHAUSTED all happen.
// The kvcache_ops fuzz target (tests/fuzz) runs the same operations with the fuzzer's choices.

#include <algorithm>

#include "harness.h"
#include "op_runner.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
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

class RandomRunTest : public ::testing::TestWithParam<RandomCase> {};

TEST_P(RandomRunTest, MatchesTheModelAfterEveryOperation) {
  const RandomCase& c = GetParam();
  CacheConfig config = TestConfig(3, c.page_size, c.blocks, c.swap_blocks);
  config.max_context = std::min(160, std::max(64, 40 * c.page_size));
  Harness h(config);
  kvtest::RngChoices choices(c.seed);
  kvtest::OpRunner runner(&h, &choices);
  for (int op = 0; op < 4000 && !HasFatalFailure(); ++op) {
    runner.RunOne();
    if (op % 25 == 0) h.VerifyAll();
  }
  h.VerifyAll();
  const CacheStats s = h.cache().GetStats();
  // The run really went through the interesting paths.
  EXPECT_GT(runner.counts().prefix_hit_tokens, 0);
  EXPECT_GT(s.cow_copies, 0);
  if (c.swap_blocks > 0) {
    EXPECT_GT(s.swap_outs, 0);
    EXPECT_GT(s.swap_ins, 0);
  }
  EXPECT_GT(s.batches_aborted, 0);
  EXPECT_GT(s.prefix_blocks_evicted, 0);
  EXPECT_GT(runner.counts().exhausted, 0);
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

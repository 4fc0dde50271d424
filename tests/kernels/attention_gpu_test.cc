// The CUDA-only sweep (label gpu; every test skips without a CUDA build and device): the sizes a
// GPU serves and the CPU sweep keeps small, each against the float64 reference and the CPU
// backend (the second oracle): 32k-token contexts, a 256-sequence decode batch, page size 1,
// GQA group 16, prefill chunks and decodes mixed in one paged call, and a long fixed-length
// causal prefill.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

class LargeProblems : public ::testing::TestWithParam<DType> {
 protected:
  AttentionConfig Config(int head_dim, int num_heads_q, int num_heads_kv, bool causal) const {
    AttentionConfig c;
    c.dtype = GetParam();
    c.head_dim = head_dim;
    c.num_heads_q = num_heads_q;
    c.num_heads_kv = num_heads_kv;
    c.causal = causal;
    return c;
  }
  void SetUp() override { FLASHKV_SKIP_UNLESS_AVAILABLE(Backend::kCuda); }
  void TearDown() override {
    if (!HasFailure() && !IsSkipped() && checked_ == 0) {
      GTEST_SKIP() << "no instantiation of this test is compiled for CUDA";
    }
  }
  // Whether CUDA runs this (dtype, head_dim); counts the ones that do.
  bool Runnable(const AttentionConfig& config) {
    if (!UnavailableReason(Backend::kCuda, config.dtype, config.head_dim).empty()) return false;
    ++checked_;
    return true;
  }
  // Paged decode/prefill over `kv` contexts with `q` new tokens each, checked on CUDA.
  void CheckPaged(const AttentionConfig& config, const std::vector<int>& q,
                  const std::vector<int>& kv, int page_size) {
    if (!Runnable(config)) return;
    PagedCacheOptions cache;
    cache.page_size = page_size;
    PagedProblem p = PagedProblem::Random(config, q, kv, cache, seeded_.rng());
    EXPECT_TRUE(RunAndCheck(Backend::kCuda, &p)) << config.ToString() << " page " << page_size;
  }
  SeededRng seeded_;
  int checked_ = 0;
};

// Split-KV territory: few sequences, long contexts, one query each.
TEST_P(LargeProblems, PagedDecodeOver32kContexts) {
  CheckPaged(Config(128, 16, 2, true), {1, 1, 1}, {32768, 32767, 20001}, 16);
}

TEST_P(LargeProblems, PrefillChunkAtTheEndOf32kContext) {
  CheckPaged(Config(128, 4, 1, true), {64, 1}, {32768, 32700}, 16);
}

TEST_P(LargeProblems, DecodeBatchOf256) {
  SeededRng lengths;
  const std::vector<int> kv = RandomLengths(lengths.rng(), 256, 1, 2048);
  CheckPaged(Config(128, 32, 8, true), std::vector<int>(256, 1), kv, 16);
}

TEST_P(LargeProblems, PageSizeOneOverLongContexts) {
  CheckPaged(Config(64, 8, 8, true), {1, 1, 64, 1}, {4096, 1000, 512, 3001}, 1);
}

TEST_P(LargeProblems, GqaGroup16EveryHeadDim) {
  for (int head_dim : kSupportedHeadDims) {
    CheckPaged(Config(head_dim, 32, 2, true), {1, 100, 1, 0}, {3000, 700, 1, 9}, 16);
  }
}

// One launch with 8 prefill chunks of 128 over 512..1024-token contexts and 120 decodes over
// 1k..4k contexts, the shape a serving step has.
TEST_P(LargeProblems, MixedPrefillAndDecodeInOnePagedCall) {
  SeededRng lengths;
  std::vector<int> q(8, 128);
  std::vector<int> kv = RandomLengths(lengths.rng(), 8, 512, 1024);
  const std::vector<int> decode_kv = RandomLengths(lengths.rng(), 120, 1024, 4096);
  q.insert(q.end(), decode_kv.size(), 1);
  kv.insert(kv.end(), decode_kv.begin(), decode_kv.end());
  for (int page : {16, 19}) CheckPaged(Config(128, 8, 2, true), q, kv, page);
}

TEST_P(LargeProblems, LongFixedLengthCausalPrefill) {
  const AttentionConfig config = Config(128, 8, 2, true);
  if (!Runnable(config)) return;
  FixedProblem p = FixedProblem::Random(config, 2, 1031, 1031, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(Backend::kCuda, &p));
}

TEST_P(LargeProblems, LongVarlenPrefillEveryHeadDim) {
  for (int head_dim : kSupportedHeadDims) {
    const AttentionConfig config = Config(head_dim, 8, 8, true);
    if (!Runnable(config)) continue;
    VarlenProblem p =
        VarlenProblem::Random(config, {700, 0, 333, 1}, {700, 50, 1000, 2000}, seeded_.rng());
    EXPECT_TRUE(RunAndCheck(Backend::kCuda, &p)) << config.ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, LargeProblems, ::testing::ValuesIn(kAllDTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

}  // namespace
}  // namespace flashkv::testbed

// Variable-length attention (packed [T, H, D] with cu_seqlens) on every backend against the
// float64 reference: the sweep, plus batches with every sequence empty and host copies of the
// offsets given to a backend that does not need them.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

class VarlenSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(VarlenSweep, MatchesReference) {
  const SweepParam& param = GetParam();
  FLASHKV_SKIP_UNLESS_RUNNABLE(param.backend, param.dtype, param.head_dim);
  SeededRng seeded;
  std::string description;
  VarlenProblem p = SweepVarlenProblem(param, seeded.rng(), &description);
  SCOPED_TRACE(description);
  EXPECT_TRUE(RunAndCheck(param.backend, &p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, VarlenSweep, ::testing::ValuesIn(SweepParams(Backend::kCpu)),
                         SweepParamName);
INSTANTIATE_TEST_SUITE_P(Cuda, VarlenSweep, ::testing::ValuesIn(SweepParams(Backend::kCuda)),
                         SweepParamName);

class VarlenEdges : public ::testing::TestWithParam<Backend> {
 protected:
  AttentionConfig Config(bool causal) const {
    AttentionConfig c;
    c.dtype = DType::kBFloat16;
    c.head_dim = 128;
    c.num_heads_q = 8;
    c.num_heads_kv = 2;
    c.causal = causal;
    return c;
  }
  SeededRng seeded_;
};

TEST_P(VarlenEdges, EverySequenceEmpty) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  VarlenProblem p = VarlenProblem::Random(Config(true), {0, 0, 0}, {0, 0, 0}, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

TEST_P(VarlenEdges, NoSequences) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  VarlenProblem p = VarlenProblem::Random(Config(false), {}, {}, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

TEST_P(VarlenEdges, KeysButNoQueriesAnywhere) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  VarlenProblem p = VarlenProblem::Random(Config(true), {0, 0}, {30, 7}, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

TEST_P(VarlenEdges, HostCopiesOfTheOffsetsAreHonoured) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  VarlenProblem p = VarlenProblem::Random(Config(true), {9, 1, 30}, {20, 44, 30}, seeded_.rng());
  FLASHKV_ASSERT_OK(RunProblem(GetParam(), &p, HostCopies::kAlways));
  EXPECT_TRUE(CheckAgainstReference(p));
}

// max_seqlen is an upper bound, not the exact maximum: a caller may pass a round number.
TEST_P(VarlenEdges, MaxSeqlenLargerThanAnySequence) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  VarlenProblem p = VarlenProblem::Random(Config(true), {9, 1, 30}, {20, 44, 30}, seeded_.rng());
  p.max_seqlen_q = 4096;
  p.max_seqlen_kv = 8192;
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, VarlenEdges, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, VarlenEdges, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed

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

struct VarlenCase {
  std::vector<int> q_lengths;
  std::vector<int> kv_lengths;
  int group;
  int num_heads_kv;
};

// Uneven lengths in one batch, zero-length sequences (no queries; queries but no keys), Sq > Skv
// within a sequence, decode batches, lengths that are no multiple of any tile.
const std::vector<VarlenCase> kVarlenCases = {
    {{17, 0, 1, 63}, {63, 5, 200, 63}, 2, 2},
    {{1, 1, 1, 1, 1}, {1, 17, 0, 129, 65}, 8, 1},  // decodes, one with no context
    {{65, 3, 0}, {17, 0, 0}, 1, 2},                // Sq > Skv; queries without keys
    {{129, 17}, {129, 200}, 4, 1},
    {{1, 33, 0, 200}, {65, 33, 129, 1}, 16, 1},  // GQA 16
    {{63, 64, 65}, {63, 64, 65}, 2, 1},
    {{200, 0}, {17, 0}, 1, 1},
    {{5, 1, 40, 0}, {5, 257, 40, 0}, 4, 2},
};

std::string Describe(const VarlenCase& c) {
  std::string s = "q_lens {";
  for (int l : c.q_lengths) s += std::to_string(l) + " ";
  s += "} kv_lens {";
  for (int l : c.kv_lengths) s += std::to_string(l) + " ";
  return s + "}";
}

class VarlenSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(VarlenSweep, MatchesReference) {
  const SweepParam& param = GetParam();
  FLASHKV_SKIP_UNLESS_RUNNABLE(param.backend, param.dtype, param.head_dim);
  const VarlenCase& c = Pick(kVarlenCases, SweepRotation(param));
  SeededRng seeded;
  VarlenProblem p = VarlenProblem::Random(SweepConfig(param, c.group, c.num_heads_kv), c.q_lengths,
                                          c.kv_lengths, seeded.rng());
  SCOPED_TRACE(Describe(c) + " " + p.config.ToString());
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

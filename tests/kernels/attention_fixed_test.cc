// Fixed-length attention ([B, S, H, D]) on every backend against the float64 reference: the sweep
// over dtype x head dim x causal with rotating shapes, GQA groups, layouts and scales, and the edge
// cases the sweep does not reach (no keys, nothing to do, shared K/V, odd strides, peaked scores).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

class FixedSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(FixedSweep, MatchesReference) {
  const SweepParam& param = GetParam();
  FLASHKV_SKIP_UNLESS_RUNNABLE(param.backend, param.dtype, param.head_dim);
  SeededRng seeded;
  std::string description;
  FixedProblem p = SweepFixedProblem(param, seeded.rng(), &description);
  SCOPED_TRACE(description);
  EXPECT_TRUE(RunAndCheck(param.backend, &p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, FixedSweep, ::testing::ValuesIn(SweepParams(Backend::kCpu)),
                         SweepParamName);
INSTANTIATE_TEST_SUITE_P(Cuda, FixedSweep, ::testing::ValuesIn(SweepParams(Backend::kCuda)),
                         SweepParamName);

class FixedEdges : public ::testing::TestWithParam<Backend> {
 protected:
  AttentionConfig Config(DType dtype, int head_dim, bool causal) const {
    AttentionConfig c;
    c.dtype = dtype;
    c.head_dim = head_dim;
    c.causal = causal;
    c.num_heads_q = 4;
    c.num_heads_kv = 2;
    return c;
  }
  SeededRng seeded_;
};

TEST_P(FixedEdges, NoKeysGiveZeroOutputAndMinusInfinityLse) {
  for (bool causal : {false, true}) {
    const AttentionConfig config = Config(DType::kFloat16, 64, causal);
    FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), config.dtype, config.head_dim);
    FixedProblem p = FixedProblem::Random(config, 2, 5, 0, seeded_.rng());
    EXPECT_TRUE(RunAndCheck(GetParam(), &p)) << (causal ? "causal" : "full");
  }
}

TEST_P(FixedEdges, NothingToDoAcceptsNullPointers) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kBFloat16, 128);
  for (auto [batch, sq] : {std::pair{0, 7}, std::pair{3, 0}}) {
    FixedAttentionArgs a = MakeDenseFixedArgs(DType::kBFloat16, batch, sq, 9, 8, 2, 128, nullptr,
                                              nullptr, nullptr, nullptr, nullptr, {});
    FLASHKV_EXPECT_OK(RunFixed(GetParam(), a));
  }
}

TEST_P(FixedEdges, KvSharedAcrossTheBatchByAZeroBatchStride) {
  const AttentionConfig config = Config(DType::kFloat32, 96, true);
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), config.dtype, config.head_dim);
  FixedProblem p = FixedProblem::Random(config, 3, 19, 33, seeded_.rng());
  // One [Skv, Hkv, D] K and V seen by every batch entry (the references follow the same strides).
  const Shape4 shape{3, 33, 2, 96};
  const Strides shared{0, 2 * 96, 96};
  p.k = HostTensor(config.dtype, shape, shared, 33 * 2 * 96);
  p.v = HostTensor(config.dtype, shape, shared, 33 * 2 * 96);
  p.k.FillNormal(seeded_.rng());
  p.v.FillNormal(seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

// Strides that leave head vectors unaligned. A backend may require alignment, but then it must
// say so with an error naming the stride, never compute garbage or fault.
TEST_P(FixedEdges, UnalignedStridesWorkOrAreRefused) {
  for (DType dtype : {DType::kFloat16, DType::kFloat32}) {
    AttentionConfig config = Config(dtype, 64, true);
    FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), config.dtype, config.head_dim);
    config.q_layout = config.kv_layout = config.out_layout = Layout::kOddPadded;
    FixedProblem p = FixedProblem::Random(config, 2, 21, 37, seeded_.rng());
    const KernelStatus status = RunProblem(GetParam(), &p);
    if (status.ok()) {
      EXPECT_TRUE(CheckAgainstReference(p));
    } else {
      EXPECT_EQ(status.code(), KernelStatusCode::kInvalidArgument) << status.ToString();
      EXPECT_TRUE(HasSubstring(status.message(), "stride"));
    }
  }
}

// Scores in the hundreds: exp() overflows unless the running max is subtracted, and a stale max
// across KV tiles shows as a wrong rescale. (fp32 is left out: with scores this large the output
// is ill-conditioned, and float32 rounding of the scores alone moves it by more than 1e-5; the
// sweep's scale-1.0 variants cover fp32 with scores in the tens.)
TEST_P(FixedEdges, PeakedScoresStayFinite) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    AttentionConfig config = Config(dtype, 128, false);
    FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), config.dtype, config.head_dim);
    config.softmax_scale = 1.0f;
    FixedProblem p = FixedProblem::Random(config, 1, 33, 150, seeded_.rng());
    p.q.FillNormal(seeded_.rng(), 3.0f);
    p.k.FillNormal(seeded_.rng(), 3.0f);
    EXPECT_TRUE(RunAndCheck(GetParam(), &p)) << DTypeName(dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, FixedEdges, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, FixedEdges, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed

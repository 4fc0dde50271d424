// The CPU backend carries one kernel per instruction set (generic, AVX2, AVX-512) with different
// vector widths and tile shapes, and runs the best one the machine has. The main sweeps test that
// one; this sweep runs the others (where the machine can) over the same space, so no kernel
// variant ships untested.

#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "flashkv/cpu_backend.h"
#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

// Makes the CPU backend use `isa` until the end of the scope.
class IsaGuard {
 public:
  explicit IsaGuard(cpu::Isa isa) : saved_(cpu::ActiveIsa()) { status_ = cpu::SetIsa(isa); }
  ~IsaGuard() { (void)cpu::SetIsa(saved_); }
  const KernelStatus& status() const { return status_; }

 private:
  cpu::Isa saved_;
  KernelStatus status_;
};

using IsaParam = std::tuple<cpu::Isa, DType, int /*head dim*/, bool /*causal*/>;

class CpuIsaSweep : public ::testing::TestWithParam<IsaParam> {};

TEST_P(CpuIsaSweep, FixedVarlenAndPagedMatchReference) {
  const auto& [isa, dtype, head_dim, causal] = GetParam();
  if (!cpu::IsaAvailable(isa)) GTEST_SKIP() << cpu::IsaName(isa) << " is not available here";
  if (isa == cpu::ActiveIsa()) GTEST_SKIP() << "the default kernel; the main sweeps cover it";
  FLASHKV_SKIP_UNLESS_RUNNABLE(Backend::kCpu, dtype, head_dim);
  const IsaGuard guard(isa);
  FLASHKV_ASSERT_OK(guard.status());
  // A variant per instruction set, so each meets other shapes than its neighbours.
  const SweepParam param{Backend::kCpu, dtype, head_dim, causal, static_cast<int>(isa)};
  SeededRng seeded;
  std::string description;
  FixedProblem fixed = SweepFixedProblem(param, seeded.rng(), &description);
  EXPECT_TRUE(RunAndCheck(Backend::kCpu, &fixed)) << description;
  VarlenProblem varlen = SweepVarlenProblem(param, seeded.rng(), &description);
  EXPECT_TRUE(RunAndCheck(Backend::kCpu, &varlen)) << description;
  PagedProblem paged = SweepPagedProblem(param, seeded.rng(), &description);
  EXPECT_TRUE(RunAndCheck(Backend::kCpu, &paged)) << description;
}

std::string IsaParamName(const ::testing::TestParamInfo<IsaParam>& info) {
  return std::string(cpu::IsaName(std::get<0>(info.param))) + "_" +
         DTypeName(std::get<1>(info.param)) + "_d" + std::to_string(std::get<2>(info.param)) +
         (std::get<3>(info.param) ? "_causal" : "_full");
}

INSTANTIATE_TEST_SUITE_P(
    CpuIsa, CpuIsaSweep,
    ::testing::Combine(::testing::Values(cpu::Isa::kGeneric, cpu::Isa::kAvx2, cpu::Isa::kAvx512),
                       ::testing::ValuesIn(kAllDTypes), ::testing::ValuesIn(kSupportedHeadDims),
                       ::testing::Bool()),
    IsaParamName);

}  // namespace
}  // namespace flashkv::testbed

// The CUDA backend (label gpu; skips without a device or without the instantiation): pools in
// device memory, copy-on-write and swap through the CUDA copies, append and paged attention
// through the CUDA kernels. The same differential scenario as on the CPU, within tolerance, and
// the pools' contents after swaps compared bit for bit with the model.

#include "differential.h"
#include "flashkv/cuda_backend.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;

// CI compiles the CUDA kernels for fp16 with head dim 128 only.
constexpr DType kDType = DType::kFloat16;
constexpr int kHeadDim = 128;

void SkipWithoutDevice() {
  if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  if (!cuda::CheckDevice(0).ok()) GTEST_SKIP() << cuda::CheckDevice(0).ToString();
  if (!cuda::IsCompiled(kDType, kHeadDim)) GTEST_SKIP() << "fp16 / head dim 128 not compiled";
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override { SkipWithoutDevice(); }
};

class GpuStepTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { SkipWithoutDevice(); }
};

TEST_P(GpuStepTest, PrefixHitForkAndSwapGiveTheSameAttentionAsAPlainSequence) {
  kvtest::RunDifferential(kvtest::StepConfig(Backend::kCuda, kDType, GetParam(), kHeadDim),
                          /*bit_exact=*/false);
}

INSTANTIATE_TEST_SUITE_P(PageSizes, GpuStepTest, ::testing::Values(1, 5, 16));

TEST_F(GpuTest, SwappedSequencesComeBackBitForBit) {
  CacheConfig config = kvtest::StepConfig(Backend::kCuda, kDType, 16, kHeadDim);
  config.budget = PoolBudget::Blocks(8);
  config.swap_budget_bytes = 16 * BlockBytes(config);
  Harness h(config);
  for (const char* id : {"a", "b", "c", "d"}) {
    ASSERT_TRUE(h.Create(id).ok());
    FLASHKV_ASSERT_OK(h.AppendAllLayers(id, 30));  // 2 blocks each: the pool is full
  }
  FLASHKV_ASSERT_OK(h.Fork("d", "e"));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("e", 1));  // copy-on-write of d's last block: a swaps out
  EXPECT_TRUE(h.cache().GetSequence("a")->swapped);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 1));
  EXPECT_FALSE(h.cache().GetSequence("a")->swapped);
  h.VerifyAll();
  const CacheStats s = h.cache().GetStats();
  EXPECT_GE(s.swap_outs, 2);
  EXPECT_EQ(s.cow_copies, 1);
}

TEST_F(GpuTest, TheBudgetCanBeAFractionOfFreeDeviceMemory) {
  CacheConfig config = kvtest::StepConfig(Backend::kCuda, kDType, 16, kHeadDim);
  config.budget = PoolBudget::FractionOfFreeDeviceMemory(0.01);
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(config);
  ASSERT_TRUE(cache.ok()) << cache.status();
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_TRUE(cuda::MemGetInfo(&free_bytes, &total_bytes).ok());
  EXPECT_GT((*cache)->num_blocks(), 2);
  EXPECT_LE(static_cast<size_t>((*cache)->num_blocks()) * BlockBytes(config), total_bytes / 50);
}

}  // namespace
}  // namespace flashkv::kvcache

// Paged attention (packed queries over a K/V cache pool behind a block table) on every backend
// against the float64 reference, which reads the pool page by page through the block table.
// Block tables are shuffled (non-contiguous), unused pool slots and spare blocks hold NaN poison
// (a kernel must never let them reach the output), unused table entries are -1.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

class PagedSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(PagedSweep, MatchesReference) {
  const SweepParam& param = GetParam();
  FLASHKV_SKIP_UNLESS_RUNNABLE(param.backend, param.dtype, param.head_dim);
  SeededRng seeded;
  std::string description;
  PagedProblem p = SweepPagedProblem(param, seeded.rng(), &description);
  SCOPED_TRACE(description);
  EXPECT_TRUE(RunAndCheck(param.backend, &p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, PagedSweep, ::testing::ValuesIn(SweepParams(Backend::kCpu)),
                         SweepParamName);
INSTANTIATE_TEST_SUITE_P(Cuda, PagedSweep, ::testing::ValuesIn(SweepParams(Backend::kCuda)),
                         SweepParamName);

class PagedEdges : public ::testing::TestWithParam<Backend> {
 protected:
  AttentionConfig Config() const {
    AttentionConfig c;
    c.dtype = DType::kFloat16;
    c.head_dim = 128;
    c.num_heads_q = 8;
    c.num_heads_kv = 2;
    c.causal = true;
    return c;
  }
  SeededRng seeded_;
};

TEST_P(PagedEdges, EverySequenceEmpty) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  PagedProblem p = PagedProblem::Random(Config(), {0, 0}, {0, 0}, {}, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

TEST_P(PagedEdges, ManySequencesShareTheirPrefixPages) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  PagedCacheOptions cache;
  cache.page_size = 16;
  cache.shared_prefix_pages = 3;
  PagedProblem p =
      PagedProblem::Random(Config(), {1, 1, 5, 1, 16}, {70, 49, 64, 20, 100}, cache, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

TEST_P(PagedEdges, WideBlockTableAndManySpareBlocks) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  PagedCacheOptions cache;
  cache.page_size = 19;
  cache.spare_blocks = 40;
  cache.spare_table_columns = 13;
  PagedProblem p = PagedProblem::Random(Config(), {3, 1}, {77, 38}, cache, seeded_.rng());
  EXPECT_TRUE(RunAndCheck(GetParam(), &p));
}

// A decode pass's plan: the batch checked once, then run for three layers, each with its own
// queries and pools (fresh values, the same block table), every output against its own reference.
// A run that kept the planned tensors would give every layer layer 0's output.
TEST_P(PagedEdges, OnePlanRunsEveryLayerWithItsOwnTensors) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  PagedCacheOptions cache;
  cache.page_size = 16;
  cache.spare_blocks = 3;
  std::vector<PagedProblem> layers;
  layers.push_back(
      PagedProblem::Random(Config(), {1, 1, 3, 1}, {40, 17, 64, 1}, cache, seeded_.rng()));
  for (int layer = 1; layer < 3; ++layer) {
    PagedProblem p = layers[0];
    p.q.FillNormal(seeded_.rng());
    p.k.FillNormal(seeded_.rng());
    p.v.FillNormal(seeded_.rng());
    p.k_cache.Poison();
    p.v_cache.Poison();
    ScatterToPool(p.k, p.cu_seqlens_kv, p.block_table, p.block_table_stride, &p.k_cache);
    ScatterToPool(p.v, p.cu_seqlens_kv, p.block_table, p.block_table_stride, &p.v_cache);
    layers.push_back(std::move(p));
  }
  const KernelStatus status = RunPlannedLayers(GetParam(), &layers);
  ASSERT_TRUE(status.ok()) << status.ToString();
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    EXPECT_TRUE(CheckAgainstReference(layers[layer])) << "layer " << layer;
  }
}

// The one-token decode the server runs most, with a slot-major pool ([blocks, page, H, D]) and a
// padded one, every page size.
TEST_P(PagedEdges, DecodeOverEveryPageSizeAndPoolLayout) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  for (Layout layout : {Layout::kRowMajor, Layout::kHeadMajor, Layout::kPadded}) {
    for (int page : kSweepPageSizes) {
      AttentionConfig config = Config();
      config.kv_layout = layout;
      PagedCacheOptions cache;
      cache.page_size = page;
      PagedProblem p =
          PagedProblem::Random(config, {1, 1, 1}, {page + 1, 3 * page, 1}, cache, seeded_.rng());
      EXPECT_TRUE(RunAndCheck(GetParam(), &p)) << LayoutName(layout) << " page " << page;
    }
  }
}

TEST_P(PagedEdges, HostCopiesOfTheIndexArraysAreHonoured) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  PagedCacheOptions cache;
  cache.page_size = 16;
  PagedProblem p = PagedProblem::Random(Config(), {4, 1}, {40, 17}, cache, seeded_.rng());
  FLASHKV_ASSERT_OK(RunProblem(GetParam(), &p, HostCopies::kAlways));
  EXPECT_TRUE(CheckAgainstReference(p));
}

INSTANTIATE_TEST_SUITE_P(Cpu, PagedEdges, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, PagedEdges, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed

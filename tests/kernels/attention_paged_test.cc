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

struct PagedCase {
  std::vector<int> q_lengths;
  std::vector<int> kv_lengths;  // context, new tokens included
  int group;
  int num_heads_kv;
};

// Prefill chunks over longer contexts, decodes, sequences with no queries or no context, contexts
// that end anywhere in a page, one sequence with more queries than context (allowed by the API:
// under causal its first rows see no key).
const std::vector<PagedCase> kPagedCases = {
    {{17, 0, 1, 63}, {80, 5, 200, 63}, 2, 2},
    {{1, 1, 1, 1, 1, 1}, {1, 17, 129, 65, 256, 33}, 8, 1},  // decode batch
    {{65, 3, 0}, {65, 40, 0}, 1, 2},
    {{129, 1}, {129, 200}, 4, 1},
    {{1, 33, 0, 20}, {65, 33, 129, 1}, 16, 1},  // GQA 16; 20 queries over 1 key
    {{63, 64, 65}, {63, 64, 65}, 2, 1},
    {{7, 0, 1}, {0, 0, 19}, 1, 1},  // queries without context
    {{5, 1, 40}, {21, 257, 40}, 4, 2},
};

const std::vector<int> kPageSizes = {1, 16, 19, 256};

std::string Describe(const PagedCase& c, const PagedCacheOptions& cache) {
  std::string s = "page " + std::to_string(cache.page_size) + " shared_pages " +
                  std::to_string(cache.shared_prefix_pages) + " q_lens {";
  for (int l : c.q_lengths) s += std::to_string(l) + " ";
  s += "} kv_lens {";
  for (int l : c.kv_lengths) s += std::to_string(l) + " ";
  return s + "}";
}

class PagedSweep : public ::testing::TestWithParam<SweepParam> {};

TEST_P(PagedSweep, MatchesReference) {
  const SweepParam& param = GetParam();
  FLASHKV_SKIP_UNLESS_RUNNABLE(param.backend, param.dtype, param.head_dim);
  const int rotation = SweepRotation(param);
  const PagedCase& c = Pick(kPagedCases, rotation);
  PagedCacheOptions cache;
  cache.page_size = Pick(kPageSizes, rotation + 1);
  cache.shared_prefix_pages = rotation % 3 == 0 ? 2 : 0;
  SeededRng seeded;
  PagedProblem p = PagedProblem::Random(SweepConfig(param, c.group, c.num_heads_kv), c.q_lengths,
                                        c.kv_lengths, cache, seeded.rng());
  SCOPED_TRACE(Describe(c, cache) + " " + p.config.ToString());
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

// The one-token decode the server runs most, with a slot-major pool ([blocks, page, H, D]) and a
// padded one, every page size.
TEST_P(PagedEdges, DecodeOverEveryPageSizeAndPoolLayout) {
  FLASHKV_SKIP_UNLESS_RUNNABLE(GetParam(), DType::kFloat16, 128);
  for (Layout layout : {Layout::kRowMajor, Layout::kHeadMajor, Layout::kPadded}) {
    for (int page : kPageSizes) {
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

// The split-KV heuristic is host arithmetic: tested here without a GPU (label cpu).

#include "split_heuristic.h"

#include <cmath>

#include "gtest/gtest.h"

namespace flashkv::cuda {
namespace {

TEST(SplitHeuristicTest, FullGpuIsNotSplit) {
  EXPECT_EQ(ChooseNumSplits({/*ctas=*/256, /*slots=*/264, /*key_tiles=*/64, 128}), 1);
  EXPECT_EQ(ChooseNumSplits({/*ctas=*/1000, /*slots=*/264, /*key_tiles=*/512, 128}), 1);
}

TEST(SplitHeuristicTest, SingleKeyTileIsNotSplit) {
  EXPECT_EQ(ChooseNumSplits({8, 264, 1, 128}), 1);
}

TEST(SplitHeuristicTest, FewCtasLongContextSplitsToFillTheGpu) {
  // Batch 1 decode, 8 KV heads, 32k context of 64-key tiles on 132 SMs x 2.
  const int splits = ChooseNumSplits({8, 264, 512, 128});
  EXPECT_GT(splits, 16);
  EXPECT_LE(splits * 8, 2 * 264);  // at most two waves
  const double waves = 8.0 * splits / 264;
  EXPECT_GE(waves / std::ceil(waves), 0.8);
}

TEST(SplitHeuristicTest, NeverMoreSplitsThanKeyTiles) {
  EXPECT_LE(ChooseNumSplits({4, 264, 3, 128}), 3);
  EXPECT_LE(ChooseNumSplits({1, 264, 200, 16}), 16);
}

}  // namespace
}  // namespace flashkv::cuda

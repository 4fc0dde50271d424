// Swapping under pressure: the exact victim order (least recently used, never one in the batch),
// cached blocks reclaimed before anything is swapped, the swap budget, RESOURCE_EXHAUSTED that
// changes nothing, and swap-in on next use (sharing still-cached prefix blocks again).

#include "absl/strings/match.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

bool Swapped(Harness& h, const std::string& id) { return h.cache().GetSequence(id)->swapped; }

TEST(SwapTest, VictimsAreTheLeastRecentlyUsedSequencesOutsideTheBatch) {
  Harness h(TestConfig(1, 4, 8, /*swap_blocks=*/16));
  for (const char* id : {"a", "b", "c"}) {
    ASSERT_TRUE(h.Create(id).ok());
    FLASHKV_ASSERT_OK(h.AppendAllLayers(id, 8));  // 2 blocks each
    h.Advance(absl::Seconds(1));
  }
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 1));  // a: 3 blocks; use order b, c, a
  ASSERT_TRUE(h.Create("d").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("d", 4));  // the pool is full: order b, c, a, d
  EXPECT_EQ(h.cache().GetStats().blocks_free, 0);

  FLASHKV_ASSERT_OK(h.AppendAllLayers("d", 4));
  EXPECT_TRUE(Swapped(h, "b"));
  EXPECT_FALSE(Swapped(h, "c") || Swapped(h, "a") || Swapped(h, "d"));
  EXPECT_EQ(h.cache().GetStats().blocks_free, 1);  // b freed 2, d took 1
  FLASHKV_ASSERT_OK(h.AppendAllLayers("d", 4));    // the free block, no swap
  EXPECT_EQ(h.cache().GetStats().swap_outs, 1);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("d", 4));
  EXPECT_TRUE(Swapped(h, "c"));
  EXPECT_FALSE(Swapped(h, "a"));

  // b is used again: 2 blocks to load plus 1 new, 1 free: a (least recently used) goes out.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 1));
  EXPECT_FALSE(Swapped(h, "b"));
  EXPECT_TRUE(Swapped(h, "a"));
  EXPECT_TRUE(Swapped(h, "c"));
  const CacheStats s = h.cache().GetStats();
  EXPECT_EQ(s.swap_outs, 3);
  EXPECT_EQ(s.swap_ins, 1);
  EXPECT_EQ(s.swap_out_bytes, (2 + 2 + 3) * s.block_bytes);
  EXPECT_EQ(s.swap_in_bytes, 2 * s.block_bytes);
  EXPECT_EQ(s.sequences_swapped, 2);
  EXPECT_EQ(s.swap_slots_used, 5);
  h.VerifyAll();
  // Everything comes back intact.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 1));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 1));
  h.VerifyAll();
}

TEST(SwapTest, WithNothingToFreeTheBatchFailsWithTheNumbersAndChangesNothing) {
  Harness h(TestConfig(2, 4, 4));  // no swap space
  ASSERT_TRUE(h.Create("a").ok());
  ASSERT_TRUE(h.Create("b").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 8));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 6));
  const std::vector<int32_t> a_blocks = h.cache().GetSequence("a")->blocks;
  const CacheStats before = h.cache().GetStats();
  // b fits its partial block; a needs one more block, and nothing can be freed.
  const absl::Status s = h.Append(0, {Step{"b", 2}, Step{"a", 1}});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "needs 1 blocks: 0 free (incl. cached), 0 more "
                                             "swappable"))
      << s;
  const CacheStats after = h.cache().GetStats();
  EXPECT_EQ(after.blocks_used, before.blocks_used);
  EXPECT_EQ(after.batches_in_flight, 0);
  EXPECT_EQ(h.cache().GetSequence("a")->blocks, a_blocks);
  EXPECT_EQ(h.model["b"].len[0], 6);
  h.VerifyAll();
}

TEST(SwapTest, TheSwapBudgetBoundsWhatGoesOutAndSequencesInTheBatchStay) {
  Harness h(TestConfig(1, 4, 6, /*swap_blocks=*/2));
  ASSERT_TRUE(h.Create("big").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("big", 12));  // 3 blocks: never fits the swap space
  ASSERT_TRUE(h.Create("small").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("small", 8));  // 2 blocks
  ASSERT_TRUE(h.Create("x").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("x", 4));  // the pool is full
  // x needs a block: big is least recently used but too big; small goes.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("x", 1));
  EXPECT_FALSE(Swapped(h, "big"));
  EXPECT_TRUE(Swapped(h, "small"));
  // Now the swap space is full and big does not fit it anyway: nothing swappable.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("x", 7));  // takes the last free block
  absl::Status s = h.Append(0, {Step{"x", 1}});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(s.message(), "swap space 0 of 2 blocks free")) << s;
  // Sequences of the batch itself are never victims.
  FLASHKV_ASSERT_OK(h.Free("small"));
  s = h.Append(0, {Step{"x", 1}, Step{"big", 4}});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  h.VerifyAll();
}

TEST(SwapTest, CachedBlocksAreReclaimedBeforeAnythingIsSwapped) {
  Harness h(TestConfig(1, 4, 6, /*swap_blocks=*/8));
  ASSERT_EQ(*h.Create("p", Harness::Prompt(5, 9)), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("p", 8));
  FLASHKV_ASSERT_OK(h.Free("p"));  // 2 cached-free blocks
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 8));
  ASSERT_TRUE(h.Create("b").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 16));  // 2 free blocks, then the 2 cached ones
  EXPECT_EQ(h.cache().GetStats().swap_outs, 0);
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_evicted, 2);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 1));
  EXPECT_EQ(h.cache().GetStats().swap_outs, 1);
  EXPECT_TRUE(Swapped(h, "a"));
  h.VerifyAll();
}

TEST(SwapTest, SwapInSharesStillCachedPrefixBlocksAgain) {
  Harness h(TestConfig(2, 4, 32, /*swap_blocks=*/8));
  const std::vector<int64_t> prompt = Harness::Prompt(9, 9);
  ASSERT_EQ(*h.Create("a", prompt), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 9));
  ASSERT_EQ(*h.Create("b", prompt), 8);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 1));
  const std::vector<int32_t> a_blocks = h.cache().GetSequence("a")->blocks;
  FLASHKV_ASSERT_OK(h.SwapOut("b"));
  EXPECT_EQ(h.cache().GetStats().swap_slots_used, 3);
  EXPECT_EQ(h.SwapOut("b").code(), absl::StatusCode::kFailedPrecondition);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 1));  // back in: two blocks shared, one loaded
  std::vector<int32_t> b_blocks = h.cache().GetSequence("b")->blocks;
  EXPECT_EQ(b_blocks[0], a_blocks[0]);
  EXPECT_EQ(b_blocks[1], a_blocks[1]);
  EXPECT_EQ(h.cache().GetStats().swap_in_bytes, h.cache().block_bytes());
  h.VerifyAll();
  // With a gone, its blocks are cached-free: swap-in takes them back without loading them.
  FLASHKV_ASSERT_OK(h.SwapOut("b"));
  FLASHKV_ASSERT_OK(h.Free("a"));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 1));
  b_blocks = h.cache().GetSequence("b")->blocks;
  EXPECT_EQ(b_blocks[0], a_blocks[0]);
  EXPECT_EQ(h.cache().GetStats().swap_in_bytes, 2 * h.cache().block_bytes());
  h.VerifyAll();
}

TEST(SwapTest, ForkFreeAndExpireWorkOnSwappedSequences) {
  Harness h(TestConfig(2, 4, 16, /*swap_blocks=*/4));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 6));
  FLASHKV_ASSERT_OK(h.SwapOut("a"));
  FLASHKV_ASSERT_OK(h.Fork("a", "b"));  // a is brought back to share its blocks
  EXPECT_FALSE(Swapped(h, "a"));
  EXPECT_EQ(h.cache().GetSequence("b")->blocks, h.cache().GetSequence("a")->blocks);
  FLASHKV_ASSERT_OK(h.SwapOut("b"));
  FLASHKV_ASSERT_OK(h.SwapOut("a"));
  EXPECT_EQ(h.SwapOut("a").code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(h.Create("c").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 1));
  EXPECT_EQ(h.SwapOut("c").code(), absl::StatusCode::kResourceExhausted);  // 4 slots in use
  FLASHKV_ASSERT_OK(h.Free("b"));
  h.Advance(absl::Minutes(5));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 1));
  EXPECT_EQ(h.Expire(absl::Minutes(1)), std::vector<std::string>{"a"});
  EXPECT_EQ(h.cache().GetStats().swap_slots_used, 0);
}

}  // namespace
}  // namespace flashkv::kvcache

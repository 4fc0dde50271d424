// BlockAllocator: O(1) ids with ref counts, the null block, and the exact order in which cached
// blocks are reclaimed (least recently released first). Consistency is checked after every step.

#include "flashkv/kvcache/block_allocator.h"

#include <vector>

#include "gtest/gtest.h"

namespace flashkv::kvcache {
namespace {

class BlockAllocatorTest : public ::testing::Test {
 protected:
  void Check() {
    const absl::Status s = alloc_.CheckConsistency();
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(alloc_.num_free() + alloc_.num_cached() + alloc_.num_used(), alloc_.num_usable());
  }
  int32_t Allocate(bool expect_evicted = false) {
    bool evicted = true;
    const int32_t b = alloc_.Allocate(&evicted);
    EXPECT_EQ(evicted, expect_evicted) << "block " << b;
    Check();
    return b;
  }
  void Release(int32_t b) {
    alloc_.Release(b);
    Check();
  }

  BlockAllocator alloc_{6};  // ids 1..5
};

TEST_F(BlockAllocatorTest, HandsOutEveryUsableIdOnceAndNeverTheNullBlock) {
  std::vector<int32_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(Allocate());
  EXPECT_EQ(got, (std::vector<int32_t>{1, 2, 3, 4, 5}));
  bool evicted = true;
  EXPECT_EQ(alloc_.Allocate(&evicted), kNullBlock);
  EXPECT_FALSE(evicted);
  EXPECT_EQ(alloc_.num_used(), 5);
  for (int32_t b : got) Release(b);
  EXPECT_EQ(alloc_.num_free(), 5);
}

TEST_F(BlockAllocatorTest, RefCountsKeepABlockUntilTheLastRelease) {
  const int32_t b = Allocate();
  alloc_.Ref(b);
  alloc_.Ref(b);
  Check();
  EXPECT_EQ(alloc_.ref_count(b), 3);
  Release(b);
  Release(b);
  EXPECT_EQ(alloc_.num_used(), 1);
  Release(b);
  EXPECT_TRUE(alloc_.is_free(b));
  EXPECT_EQ(alloc_.ref_count(b), 0);
}

TEST_F(BlockAllocatorTest, FreeBlocksGoBeforeCachedOnesAndCachedOnesLeastRecentlyReleasedFirst) {
  std::vector<int32_t> b;
  for (int i = 0; i < 5; ++i) b.push_back(Allocate());
  // Cache 1, 3, 4 and release in the order 4, 1, 3; release 2 and 5 uncached.
  for (int32_t id : {b[0], b[2], b[3]}) alloc_.SetCached(id, true);
  Check();
  Release(b[3]);
  Release(b[0]);
  Release(b[2]);
  Release(b[1]);
  Release(b[4]);
  EXPECT_EQ(alloc_.CachedFreeInLruOrder(), (std::vector<int32_t>{4, 1, 3}));
  EXPECT_EQ(alloc_.num_cached(), 3);
  EXPECT_EQ(alloc_.num_free(), 2);
  // Uncached free blocks first (most recently freed first), then cached ones, oldest first.
  EXPECT_EQ(Allocate(), 5);
  EXPECT_EQ(Allocate(), 2);
  EXPECT_EQ(Allocate(/*expect_evicted=*/true), 4);
  EXPECT_FALSE(alloc_.is_cached(4));
  // Reviving a cached block takes it out of the reclaim order; releasing it puts it at the end.
  alloc_.Ref(1);
  Check();
  EXPECT_EQ(alloc_.CachedFreeInLruOrder(), (std::vector<int32_t>{3}));
  Release(1);
  EXPECT_EQ(alloc_.CachedFreeInLruOrder(), (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(Allocate(/*expect_evicted=*/true), 3);
  EXPECT_EQ(Allocate(/*expect_evicted=*/true), 1);
  EXPECT_EQ(alloc_.num_used(), 5);
  for (int32_t id : {1, 2, 3, 4, 5}) Release(id);
}

TEST(BlockAllocatorDeathTest, ReleasingAFreeBlockIsAProgrammingError) {
  BlockAllocator alloc(3);
  bool evicted = false;
  const int32_t b = alloc.Allocate(&evicted);
  alloc.Release(b);
  EXPECT_DEATH(alloc.Release(b), "invariant failed");
  EXPECT_DEATH(alloc.Ref(b), "invariant failed");  // a free block holds nothing to share
  EXPECT_DEATH(alloc.Release(kNullBlock), "invariant failed");
}

}  // namespace
}  // namespace flashkv::kvcache

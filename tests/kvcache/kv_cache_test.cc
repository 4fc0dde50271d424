// KvCache sequence operations: creation and ids, config checks, prefix caching (hits, when blocks
// are published, tenants, collisions, LRU reclaim), fork with copy-on-write, freeing while a
// batch is in flight, expiry. Every operation goes through the Harness, which checks the
// invariants after it; contents are compared with the model bit for bit.

#include <atomic>

#include "absl/strings/match.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

TEST(KvCacheConfigTest, RejectsEachBadFieldByName) {
  struct Case {
    const char* field;
    void (*mutate)(CacheConfig&);
  };
  const Case cases[] = {
      {"num_layers", [](CacheConfig& c) { c.num_layers = 0; }},
      {"num_kv_heads", [](CacheConfig& c) { c.num_kv_heads = 0; }},
      {"head_dim", [](CacheConfig& c) { c.head_dim = 48; }},
      {"page_size", [](CacheConfig& c) { c.page_size = 0; }},
      {"max_context", [](CacheConfig& c) { c.max_context = -1; }},
      {"swap_budget_bytes", [](CacheConfig& c) { c.swap_budget_bytes = -1; }},
      {"budget.bytes", [](CacheConfig& c) { c.budget = PoolBudget::Bytes(0); }},
      {"budget.fraction", [](CacheConfig& c) { c.budget = PoolBudget::FractionOfHostMemory(1.5, 1 << 20); }},
      {"budget.host_memory_bytes", [](CacheConfig& c) { c.budget = PoolBudget::FractionOfFreeDeviceMemory(0.5); }},
      {"budget.blocks", [](CacheConfig& c) { c.budget = PoolBudget::Blocks(0); }},
  };
  for (const Case& c : cases) {
    CacheConfig config = TestConfig(2, 4, 8);
    c.mutate(config);
    absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(config);
    ASSERT_FALSE(cache.ok()) << c.field;
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument) << cache.status();
    EXPECT_TRUE(absl::StrContains(cache.status().message(), c.field)) << cache.status();
  }
}

TEST(KvCacheConfigTest, SizesThePoolFromTheBudget) {
  CacheConfig config = TestConfig(3, 7, 1);  // any page size >= 1
  const int64_t block = BlockBytes(config);
  EXPECT_EQ(block, 2 * 3 * 7 * 32 * 4);
  config.budget = PoolBudget::Bytes(10 * block + block / 2);
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(config);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ((*cache)->num_blocks(), 10);
  EXPECT_EQ((*cache)->GetStats().blocks_total, 9);
  EXPECT_EQ((*cache)->max_context(), 9 * 7);

  config.budget = PoolBudget::FractionOfHostMemory(0.5, 20 * block);
  cache = KvCache::Create(config);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ((*cache)->num_blocks(), 10);

  config.budget = PoolBudget::Bytes(block + 1);  // room for the null block only
  cache = KvCache::Create(config);
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted) << cache.status();
}

// Counts allocations: pools and swap space come once at Create; staging buffers only while they
// grow to their working size.
class CountingAllocator final : public MemoryAllocator {
 public:
  MemoryKind kind() const override { return MemoryKind::kHost; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    ++count;
    return inner_->Allocate(bytes);
  }
  void Deallocate(void* ptr, size_t bytes) override { inner_->Deallocate(ptr, bytes); }
  std::atomic<int> count{0};

 private:
  std::shared_ptr<MemoryAllocator> inner_ = NewHostAllocator();
};

TEST(KvCacheConfigTest, AllocatesPoolsOnceAndNothingPerStep) {
  auto pools = std::make_shared<CountingAllocator>();
  auto staging = std::make_shared<CountingAllocator>();
  CacheConfig config = TestConfig(2, 4, 64, /*swap_blocks=*/8);
  config.pool_allocator = pools;
  config.staging_allocator = staging;
  Harness h(config);
  EXPECT_EQ(pools->count, 1);
  EXPECT_EQ(staging->count, 1);  // the swap space
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 5));
  const int after_first = staging->count;
  for (int i = 0; i < 50; ++i) FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 1));
  EXPECT_EQ(pools->count, 1);
  EXPECT_EQ(staging->count, after_first);
}

TEST(KvCacheTest, IdsAreUniqueAndUnknownIdsAreNotFound) {
  Harness h(TestConfig(2, 4, 16));
  ASSERT_TRUE(h.Create("a").ok());
  EXPECT_EQ(h.Create("a").status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(h.Create("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.Free("zz").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.Fork("zz", "b").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.Fork("a", "a").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(h.Fork("a", "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.SwapOut("zz").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(h.cache().GetSequence("zz").status().code(), absl::StatusCode::kNotFound);
  FLASHKV_EXPECT_OK(h.Free("a"));
  EXPECT_EQ(h.Free("a").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(h.Create("a").ok());  // a freed id is free for reuse
}

TEST(KvCacheTest, LengthsPastMaxContextAreRefused) {
  CacheConfig config = TestConfig(2, 4, 16);
  config.max_context = 10;
  Harness h(config);
  absl::StatusOr<int> created = h.Create("p", Harness::Prompt(1, 11));
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(created.status().message(), "max_context (10)"));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 8));
  const absl::Status s = h.Append(0, {Step{"a", 3}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "would reach 11 tokens")) << s;
  FLASHKV_EXPECT_OK(h.Append(0, {Step{"a", 2}}));
}

TEST(KvCachePrefixTest, HitsAreBlockAlignedLeaveOneTokenAndHoldThePromptsRows) {
  Harness h(TestConfig(2, 4, 32));
  const std::vector<int64_t> prompt = Harness::Prompt(7, 10);
  ASSERT_EQ(*h.Create("a", prompt), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 10));
  // Blocks 0 and 1 are full on both layers with known ids: published.
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 2);
  EXPECT_EQ(*h.Create("b", prompt), 8);
  const std::vector<int32_t> a_blocks = h.cache().GetSequence("a")->blocks;
  EXPECT_EQ(h.cache().GetSequence("b")->blocks,
            std::vector<int32_t>(a_blocks.begin(), a_blocks.begin() + 2));
  // An 8-token prompt may only hit one block: the runner must compute its last token.
  EXPECT_EQ(*h.Create("c", std::vector<int64_t>(prompt.begin(), prompt.begin() + 8)), 4);
  EXPECT_EQ(*h.Create("d", std::vector<int64_t>(prompt.begin(), prompt.begin() + 9)), 8);
  // A different second block: only the first matches.
  std::vector<int64_t> other = prompt;
  other[5] += 1;
  EXPECT_EQ(*h.Create("e", other), 4);
  // The rest of each prompt is appended on top of the cached prefix.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 2));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("e", 6));
  h.VerifyAll();
  const CacheStats s = h.cache().GetStats();
  EXPECT_EQ(s.prefix_lookup_tokens, 10 + 10 + 8 + 9 + 10);
  EXPECT_EQ(s.prefix_hit_tokens, 8 + 4 + 8 + 4);
  EXPECT_DOUBLE_EQ(s.prefix_hit_rate, 24.0 / 47.0);
}

TEST(KvCachePrefixTest, ABlockIsPublishedOnlyOnceFullOnEveryLayerWithKnownIds) {
  Harness h(TestConfig(3, 4, 32));
  const std::vector<int64_t> tokens = Harness::Prompt(3, 9);
  ASSERT_TRUE(h.Create("a").ok());  // no prompt: ids arrive with the appends
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 4, /*with_ids=*/false}}));
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"a", 4}}));
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"a", 4}}));
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 0);  // ids never given

  ASSERT_TRUE(h.Create("b").ok());
  h.model["b"].fixed = tokens;
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 9, /*with_ids=*/true}}));
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"b", 9}}));
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 0);  // layer 2 is still empty
  EXPECT_EQ(*h.Create("probe1", tokens), 0);
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"b", 5}}));  // block 0 full everywhere, block 1 not
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 1);
  EXPECT_EQ(*h.Create("probe2", tokens), 4);
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"b", 4}}));
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 2);
  EXPECT_EQ(*h.Create("probe3", tokens), 8);
  h.VerifyAll();
}

TEST(KvCachePrefixTest, TenantsNeverShareBlocks) {
  Harness h(TestConfig(2, 4, 32));
  const std::vector<int64_t> prompt = Harness::Prompt(11, 9);
  ASSERT_EQ(*h.Create("x1", prompt, "tenant-x"), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("x1", 9));
  EXPECT_EQ(*h.Create("y1", prompt, "tenant-y"), 0);
  EXPECT_EQ(*h.Create("n1", prompt), 0);  // the default tenant is a tenant too
  EXPECT_EQ(*h.Create("x2", prompt, "tenant-x"), 8);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("y1", 9));
  EXPECT_EQ(*h.Create("y2", prompt, "tenant-y"), 8);
  EXPECT_NE(h.cache().GetSequence("y2")->blocks, h.cache().GetSequence("x2")->blocks);
  h.VerifyAll();
}

uint64_t ConstantHash(uint64_t, absl::Span<const int64_t>, uint64_t) { return 42; }

TEST(KvCachePrefixTest, HashCollisionsNeverReturnAnotherPromptsRows) {
  CacheConfig config = TestConfig(2, 4, 32);
  config.prefix_hash = &ConstantHash;  // every block key collides
  Harness h(config);
  const std::vector<int64_t> p1 = Harness::Prompt(1, 13);
  const std::vector<int64_t> p2 = Harness::Prompt(2, 13);
  ASSERT_EQ(*h.Create("a", p1), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 13));
  // Block 0 took the key; block 1 collides with it and stays private, which ends a's chain.
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_published, 1);
  EXPECT_EQ(*h.Create("b", p2), 0);  // same key, other tokens: no hit
  EXPECT_EQ(*h.Create("c", p1), 4);
  std::vector<int64_t> p3 = p1;
  p3[4] = p3[4] + 1;  // same first block, other second block
  EXPECT_EQ(*h.Create("d", p3), 4);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 13));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 9));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("d", 9));
  h.VerifyAll();
}

TEST(KvCachePrefixTest, FreedBlocksStayFindableUntilReusedLeastRecentlyReleasedFirst) {
  // 8 usable blocks of 4 tokens. a and b publish two blocks each, then are freed: a first.
  Harness h(TestConfig(1, 4, 8));
  const std::vector<int64_t> pa = Harness::Prompt(100, 9), pb = Harness::Prompt(200, 9);
  ASSERT_EQ(*h.Create("a", pa), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 8));
  ASSERT_EQ(*h.Create("b", pb), 0);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 8));
  const std::vector<int32_t> a_blocks = h.cache().GetSequence("a")->blocks;
  const std::vector<int32_t> b_blocks = h.cache().GetSequence("b")->blocks;
  FLASHKV_ASSERT_OK(h.Free("a"));
  FLASHKV_ASSERT_OK(h.Free("b"));
  CacheStats s = h.cache().GetStats();
  EXPECT_EQ(s.blocks_cached, 4);
  EXPECT_EQ(s.blocks_free, 4);
  // A 4-block sequence takes the 4 free blocks; one more block reclaims the least recently
  // released cached block: a's tail (a sequence's blocks are released tail first).
  ASSERT_TRUE(h.Create("c").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 16));
  EXPECT_EQ(h.cache().GetStats().blocks_cached, 4);
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 1));
  EXPECT_EQ(h.cache().GetSequence("c")->blocks.back(), a_blocks[1]);
  EXPECT_EQ(h.cache().GetStats().prefix_blocks_evicted, 1);
  EXPECT_EQ(*h.Create("a2", pa), 4);  // a's head is still there
  EXPECT_EQ(*h.Create("b2", pb), 8);  // b is whole
  EXPECT_EQ(h.cache().GetSequence("a2")->blocks[0], a_blocks[0]);
  EXPECT_EQ(h.cache().GetSequence("b2")->blocks, b_blocks);
  h.VerifyAll();
}

TEST(KvCacheForkTest, TheChildSharesEveryBlockAndTheLastIsCopiedOnFirstWrite) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 6));  // one full block, one with 2 of 4 rows
  FLASHKV_ASSERT_OK(h.Fork("a", "b"));
  const std::vector<int32_t> shared = h.cache().GetSequence("a")->blocks;
  EXPECT_EQ(h.cache().GetSequence("b")->blocks, shared);
  EXPECT_EQ(h.cache().GetStats().blocks_used, 2);
  h.Verify("b");
  // The child writes first: it gets a copy of the partial block; the full block stays shared.
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 1}}));
  std::vector<int32_t> b_blocks = h.cache().GetSequence("b")->blocks;
  EXPECT_EQ(b_blocks[0], shared[0]);
  EXPECT_NE(b_blocks[1], shared[1]);
  EXPECT_EQ(h.cache().GetStats().cow_copies, 1);
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"b", 1}}));
  EXPECT_EQ(h.cache().GetStats().cow_copies, 1);  // the copy is b's own now
  // The parent's partial block is its own again: no copy.
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 3));
  EXPECT_EQ(h.cache().GetStats().cow_copies, 1);
  EXPECT_EQ(h.cache().GetSequence("a")->blocks[1], shared[1]);
  h.VerifyAll();
  // Both grow apart; fork again from the child, and from a fork a layer behind the other.
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 5}}));
  FLASHKV_ASSERT_OK(h.Fork("b", "c"));  // b: layer 0 at 12, layer 1 at 7
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"c", 5}}));  // writes into shared blocks 1 and 2
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"b", 5}}));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 2));
  h.VerifyAll();
}

TEST(KvCacheForkTest, ParentAndChildInOneBatchEachGetTheirOwnCopy) {
  Harness h(TestConfig(1, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 2));
  FLASHKV_ASSERT_OK(h.Fork("a", "b"));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 3}, Step{"b", 1}}));
  EXPECT_NE(h.cache().GetSequence("a")->blocks[0], h.cache().GetSequence("b")->blocks[0]);
  h.VerifyAll();
}

TEST(KvCacheTest, FreeingASequenceInAPendingBatchTakesEffectWhenTheBatchEnds) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  ASSERT_TRUE(h.Create("b").ok());
  const std::vector<Step> steps = {Step{"a", 5}, Step{"b", 3}};
  absl::StatusOr<LayerBatch> batch = h.Prepare(0, steps);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(h.Fork("a", "c").code(), absl::StatusCode::kAborted);
  EXPECT_EQ(h.SwapOut("a").code(), absl::StatusCode::kAborted);
  FLASHKV_ASSERT_OK(h.Write(*batch, 0, steps));
  FLASHKV_ASSERT_OK(h.Free("a"));
  EXPECT_EQ(h.cache().GetStats().blocks_used, 3);  // a's 2 blocks wait for the batch
  ASSERT_TRUE(h.Create("a").ok());                 // the id is free at once
  h.Commit(*std::move(batch), 0, steps);
  EXPECT_EQ(h.cache().GetStats().blocks_used, 1);
  EXPECT_EQ(h.model["b"].len[0], 3);
  EXPECT_EQ(h.model["a"].len[0], 0);
  h.VerifyAll();
}

TEST(KvCacheTest, ExpireIdleFreesSequencesLastUsedBeforeTheCutoffOldestFirst) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  h.Advance(absl::Seconds(10));
  ASSERT_TRUE(h.Create("b").ok());
  h.Advance(absl::Seconds(10));
  ASSERT_TRUE(h.Create("c").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("c", 3));
  h.Advance(absl::Seconds(10));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 1}}));  // a is used again at t = 30
  h.Advance(absl::Seconds(5));                       // t = 35
  EXPECT_EQ(h.Expire(absl::Seconds(20)), std::vector<std::string>{"b"});
  EXPECT_EQ(h.cache().GetSequence("a")->last_used, h.now() - absl::Seconds(5));
  // A sequence in a pending batch is in use, however old.
  absl::StatusOr<LayerBatch> batch = h.Prepare(0, {Step{"c", 1}});
  ASSERT_TRUE(batch.ok());
  h.Advance(absl::Seconds(100));
  EXPECT_EQ(h.Expire(absl::Seconds(20)), std::vector<std::string>{"a"});
  h.Abort(*std::move(batch));
  EXPECT_EQ(h.Expire(absl::Seconds(20)), std::vector<std::string>{"c"});
  EXPECT_EQ(h.cache().GetStats().blocks_used, 0);
}

}  // namespace
}  // namespace flashkv::kvcache

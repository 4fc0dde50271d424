// The scheduler-facing contract: what PrepareLayerBatch writes (slot mapping, cu_seqlens, block
// table, layout, kernel arguments), how it refuses bad entries (naming the entry), and that Abort
// — explicit or by dropping the batch — leaves every sequence and the pool exactly as before.

#include <cstdint>

#include "absl/strings/match.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

// Everything observable about the cache, for before/after comparisons.
struct Snapshot {
  std::map<std::string, SequenceInfo> sequences;
  CacheStats stats;
};

Snapshot Take(Harness& h) {
  Snapshot s;
  for (const auto& [id, seq] : h.model) s.sequences[id] = *h.cache().GetSequence(id);
  s.stats = h.cache().GetStats();
  return s;
}

void ExpectSame(const Snapshot& a, const Snapshot& b) {
  ASSERT_EQ(a.sequences.size(), b.sequences.size());
  for (const auto& [id, info] : a.sequences) {
    const SequenceInfo& other = b.sequences.at(id);
    EXPECT_EQ(info.layer_lengths, other.layer_lengths) << id;
    EXPECT_EQ(info.blocks, other.blocks) << id;
    EXPECT_EQ(info.known_token_ids, other.known_token_ids) << id;
    EXPECT_EQ(info.swapped, other.swapped) << id;
  }
  EXPECT_EQ(a.stats.blocks_free, b.stats.blocks_free);
  EXPECT_EQ(a.stats.blocks_cached, b.stats.blocks_cached);
  EXPECT_EQ(a.stats.blocks_used, b.stats.blocks_used);
  EXPECT_EQ(a.stats.swap_slots_used, b.stats.swap_slots_used);
}

TEST(LayerBatchTest, MetadataOfAMixedPrefillAndDecodeBatch) {
  Harness h(TestConfig(2, 4, 32));
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(h.Create(id).ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 5));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 8));
  const std::vector<Step> steps = {Step{"a", 1}, Step{"b", 6}, Step{"c", 3}};
  absl::StatusOr<LayerBatch> batch = h.Prepare(0, steps);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const std::vector<int32_t> a = h.cache().GetSequence("a")->blocks;
  const std::vector<int32_t> b = h.cache().GetSequence("b")->blocks;
  const std::vector<int32_t> c = h.cache().GetSequence("c")->blocks;
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 4u);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(batch->layer(), 0);
  EXPECT_EQ(batch->num_seqs(), 3);
  EXPECT_EQ(batch->total_q(), 10);
  EXPECT_EQ(batch->total_kv(), 6 + 14 + 3);
  EXPECT_EQ(batch->max_seqlen_q(), 6);
  EXPECT_EQ(batch->max_seqlen_kv(), 14);
  EXPECT_EQ(batch->block_table_stride(), 4);
  const std::vector<int64_t> slots(batch->slot_mapping().begin(), batch->slot_mapping().end());
  const std::vector<int64_t> expected_slots = {
      a[1] * 4 + 1,                                                      // a: position 5
      b[2] * 4 + 0, b[2] * 4 + 1, b[2] * 4 + 2, b[2] * 4 + 3,            // b: 8..11
      b[3] * 4 + 0, b[3] * 4 + 1,                                        // b: 12, 13
      c[0] * 4 + 0, c[0] * 4 + 1, c[0] * 4 + 2};                         // c: 0..2
  EXPECT_EQ(slots, expected_slots);
  EXPECT_EQ(std::vector<int32_t>(batch->cu_seqlens_q().begin(), batch->cu_seqlens_q().end()),
            (std::vector<int32_t>{0, 1, 7, 10}));
  EXPECT_EQ(std::vector<int32_t>(batch->cu_seqlens_kv().begin(), batch->cu_seqlens_kv().end()),
            (std::vector<int32_t>{0, 6, 20, 23}));
  EXPECT_EQ(std::vector<int32_t>(batch->block_table().begin(), batch->block_table().end()),
            (std::vector<int32_t>{a[0], a[1], 0, 0, b[0], b[1], b[2], b[3], c[0], 0, 0, 0}));
  // One contiguous buffer with 64-byte aligned arrays.
  const BatchLayout& layout = batch->layout();
  EXPECT_EQ(layout.slot_mapping, 0u);
  for (size_t offset : {layout.cu_seqlens_q, layout.cu_seqlens_kv, layout.block_table}) {
    EXPECT_EQ(offset % 64, 0u);
  }
  EXPECT_EQ(layout.size_bytes, layout.block_table + 12 * sizeof(int32_t));
  EXPECT_EQ(batch->size_bytes(), layout.size_bytes);
  const char* base = static_cast<const char*>(batch->data());
  EXPECT_EQ(static_cast<const void*>(batch->slot_mapping().data()), base + layout.slot_mapping);
  EXPECT_EQ(static_cast<const void*>(batch->block_table().data()), base + layout.block_table);
  // Kernel arguments read the metadata from where the caller copied it, host copies from data().
  alignas(64) static char device_copy[4096];
  const int32_t dummy = 0;
  const PagedAttentionArgs attn =
      batch->MakeAttentionArgs(device_copy, 4, &dummy, device_copy, nullptr, AttentionOptions{true, {}});
  EXPECT_EQ(static_cast<const void*>(attn.block_table), device_copy + layout.block_table);
  EXPECT_EQ(static_cast<const void*>(attn.cu_seqlens_kv), device_copy + layout.cu_seqlens_kv);
  EXPECT_EQ(static_cast<const void*>(attn.host_block_table), base + layout.block_table);
  EXPECT_EQ(attn.num_seqs, 3);
  EXPECT_EQ(attn.total_q, 10);
  EXPECT_EQ(attn.block_table_stride, 4);
  EXPECT_EQ(attn.num_blocks, h.cache().num_blocks());
  EXPECT_EQ(attn.page_size, 4);
  EXPECT_EQ(attn.k_cache, h.cache().layer_pools(0).k);
  EXPECT_EQ(attn.cache_strides.batch, 4 * 32);
  const KvAppendArgs append = batch->MakeAppendArgs(device_copy, &dummy, &dummy);
  EXPECT_EQ(static_cast<const void*>(append.slot_mapping), device_copy + layout.slot_mapping);
  EXPECT_EQ(append.host_slot_mapping, batch->slot_mapping().data());
  EXPECT_EQ(append.num_tokens, 10);
  EXPECT_EQ(append.v_cache, h.cache().layer_pools(0).v);
  FLASHKV_ASSERT_OK(h.Write(*batch, 0, steps));
  h.Commit(*std::move(batch), 0, steps);
  h.VerifyAll();
}

TEST(LayerBatchTest, BadEntriesAreRefusedNamingTheEntryAndChangeNothing) {
  Harness h(TestConfig(3, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  ASSERT_TRUE(h.Create("b").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 6));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 2}}));  // a: 8, 6, 6 tokens
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 4}}));  // b: 4, 0, 0
  const Snapshot before = Take(h);
  struct Case {
    int layer;
    std::vector<Step> steps;
    absl::StatusCode code;
    const char* text;
    int entry;  // -1: not about one entry
  };
  const Case cases[] = {
      {3, {Step{"a", 1}}, absl::StatusCode::kInvalidArgument, "layer (3) must be in [0, 3)", -1},
      {-1, {Step{"a", 1}}, absl::StatusCode::kInvalidArgument, "layer (-1)", -1},
      {0, {}, absl::StatusCode::kInvalidArgument, "entries is empty", -1},
      {0, {Step{"a", 1}, Step{"zz", 1}}, absl::StatusCode::kNotFound, "'zz' not found", 1},
      {0, {Step{"b", 1}, Step{"a", 1}, Step{"b", 2}}, absl::StatusCode::kInvalidArgument,
       "more than once", 2},
      {0, {Step{"a", 0}}, absl::StatusCode::kInvalidArgument, "num_tokens (0) must be >= 1", 0},
      // Layer 1 of b would reach 5 tokens, but layer 0 has 4.
      {1, {Step{"a", 1}, Step{"b", 5}}, absl::StatusCode::kFailedPrecondition,
       "layer 1 would reach 5 tokens but layer 0 has 4", 1},
      {2, {Step{"b", 1}}, absl::StatusCode::kFailedPrecondition,
       "layer 2 would reach 1 tokens but layer 1 has 0", 0},
  };
  for (const Case& c : cases) {
    absl::StatusOr<LayerBatch> batch = h.Prepare(c.layer, c.steps);
    ASSERT_FALSE(batch.ok());
    EXPECT_EQ(batch.status().code(), c.code) << batch.status();
    EXPECT_TRUE(absl::StrContains(batch.status().message(), c.text)) << batch.status();
    if (c.entry >= 0) {
      EXPECT_EQ(FailedEntryIndex(batch.status()), c.entry) << batch.status();
    } else {
      EXPECT_FALSE(FailedEntryIndex(batch.status()).has_value());
    }
    ExpectSame(before, Take(h));
  }
  // Token ids: of the wrong count, or disagreeing with ids the cache already has.
  std::vector<int64_t> ids = {1, 2};
  BatchEntry entry{"a", 1, ids};
  absl::StatusOr<LayerBatch> batch = h.cache().PrepareLayerBatch(0, {&entry, 1});
  EXPECT_EQ(batch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(batch.status().message(), "entries[0].token_ids has 2 ids"));
  ASSERT_TRUE(h.Create("p", {5, 6, 7, 8, 9}).ok());
  ids = {5, 6, 70};
  entry = BatchEntry{"p", 3, ids};
  batch = h.cache().PrepareLayerBatch(0, {&entry, 1});
  EXPECT_EQ(batch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(batch.status().message(),
                                "token_ids[2] (70) differs from the id already known for position 2 (7)"))
      << batch.status();
  h.Check();
}

TEST(LayerBatchTest, ASequenceMayBeInOnlyOnePendingBatch) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  ASSERT_TRUE(h.Create("b").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 4));
  absl::StatusOr<LayerBatch> first = h.Prepare(0, {Step{"a", 2}});
  ASSERT_TRUE(first.ok());
  absl::StatusOr<LayerBatch> second = h.Prepare(1, {Step{"b", 0 + 1}, Step{"a", 1}});
  // b is refused first: layer 1 may not run ahead of its empty layer 0.
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  second = h.Prepare(1, {Step{"a", 1}});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAborted) << second.status();
  EXPECT_EQ(FailedEntryIndex(second.status()), 0);
  // Other sequences go ahead meanwhile.
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 3}}));
  EXPECT_EQ(h.cache().GetStats().batches_in_flight, 1);
  h.Abort(*std::move(first));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 1}}));
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"a", 1}}));
}

TEST(LayerBatchTest, AbortRestoresTablesCopiesAndNewBlocksExactly) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 6));
  FLASHKV_ASSERT_OK(h.Fork("a", "b"));
  ASSERT_TRUE(h.Create("c").ok());
  const Snapshot before = Take(h);
  // b writes into the shared partial block (copy) and past it (new blocks); c gets new blocks.
  const std::vector<Step> steps = {Step{"b", 7}, Step{"c", 5}};
  {
    absl::StatusOr<LayerBatch> batch = h.Prepare(0, steps);
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_EQ(h.cache().GetStats().cow_copies, 1);
    EXPECT_EQ(h.cache().GetStats().blocks_used, 2 + 1 + 2 + 2);
    FLASHKV_ASSERT_OK(h.Write(*batch, 0, steps));
    h.Abort(*std::move(batch));
  }
  ExpectSame(before, Take(h));
  h.VerifyAll();
  {
    // Dropping a pending batch aborts it too.
    absl::StatusOr<LayerBatch> batch = h.Prepare(0, steps);
    ASSERT_TRUE(batch.ok());
  }
  ExpectSame(before, Take(h));
  EXPECT_EQ(h.cache().GetStats().batches_aborted, 2);
  FLASHKV_ASSERT_OK(h.Append(0, steps));
  FLASHKV_ASSERT_OK(h.Append(1, steps));
  h.VerifyAll();
}

TEST(LayerBatchTest, LayersFollowLayerZeroAtTheirOwnPace) {
  Harness h(TestConfig(4, 3, 64));
  ASSERT_TRUE(h.Create("a").ok());
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 10}}));
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"a", 4}}));
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"a", 6}}));
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"a", 1}}));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"a", 2}}));
  FLASHKV_ASSERT_OK(h.Append(3, {Step{"a", 1}}));
  EXPECT_EQ(h.Append(3, {Step{"a", 1}}).code(), absl::StatusCode::kFailedPrecondition);
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"a", 9}}));
  EXPECT_EQ(h.Append(2, {Step{"a", 1}}).code(), absl::StatusCode::kFailedPrecondition);
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"a", 2}}));
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"a", 2}}));
  FLASHKV_ASSERT_OK(h.Append(3, {Step{"a", 11}}));
  EXPECT_EQ(h.model["a"].len, (std::vector<int>{12, 12, 12, 12}));
  h.VerifyAll();
}

}  // namespace
}  // namespace flashkv::kvcache

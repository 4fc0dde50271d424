// KvCache::PreparePass: one batch over every layer of a decode pass. Its metadata is what a layer
// batch of the same entries would hold; Commit advances every layer, Abort (after any number of
// layers were written) leaves every sequence and the pool as before; copy-on-write, prefix
// publishing and holding the sequences work as for a layer batch. The harness checks the
// invariants after every operation and reads every row back from the pools (Verify).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

std::vector<int> Lengths(Harness& h, const std::string& id) {
  return h.cache().GetSequence(id)->layer_lengths;
}

// Writes every layer of the pass, in order.
absl::Status WriteLayers(Harness& h, const LayerBatch& pass, const std::vector<Step>& steps,
                         int layers) {
  for (int layer = 0; layer < layers; ++layer) {
    if (absl::Status s = h.Write(pass, layer, steps); !s.ok()) return s;
  }
  return absl::OkStatus();
}

TEST(PassTest, MetadataIsTheLayerBatchsAndCommitAdvancesEveryLayer) {
  Harness h(TestConfig(3, 4, 64));
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(h.Create(id).ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 5));
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 8));
  const std::vector<Step> steps = {Step{"a", 1}, Step{"b", 1}, Step{"c", 3}};
  // The layer-0 batch of the same entries, for its metadata, then given back.
  std::vector<int64_t> slots;
  std::vector<int32_t> cu_q, cu_kv, table;
  {
    absl::StatusOr<LayerBatch> layer0 = h.Prepare(0, steps);
    ASSERT_TRUE(layer0.ok()) << layer0.status();
    slots.assign(layer0->slot_mapping().begin(), layer0->slot_mapping().end());
    cu_q.assign(layer0->cu_seqlens_q().begin(), layer0->cu_seqlens_q().end());
    cu_kv.assign(layer0->cu_seqlens_kv().begin(), layer0->cu_seqlens_kv().end());
    table.assign(layer0->block_table().begin(), layer0->block_table().end());
    h.Abort(*std::move(layer0));
  }
  absl::StatusOr<LayerBatch> pass = h.PreparePass(steps);
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_EQ(pass->layer(), 0);
  EXPECT_EQ(pass->num_layers(), 3);
  EXPECT_EQ(std::vector<int64_t>(pass->slot_mapping().begin(), pass->slot_mapping().end()),
            slots);
  EXPECT_EQ(std::vector<int32_t>(pass->cu_seqlens_q().begin(), pass->cu_seqlens_q().end()), cu_q);
  EXPECT_EQ(std::vector<int32_t>(pass->cu_seqlens_kv().begin(), pass->cu_seqlens_kv().end()),
            cu_kv);
  EXPECT_EQ(std::vector<int32_t>(pass->block_table().begin(), pass->block_table().end()), table);
  // Each layer's kernel arguments: the same metadata, that layer's pools.
  alignas(64) static char metadata[4096];
  const int32_t dummy = 0;
  for (int layer = 0; layer < 3; ++layer) {
    const KvAppendArgs append = pass->MakeAppendArgs(layer, metadata, &dummy, &dummy);
    EXPECT_EQ(append.k_cache, h.cache().layer_pools(layer).k);
    EXPECT_EQ(append.v_cache, h.cache().layer_pools(layer).v);
    EXPECT_EQ(append.num_tokens, 5);
    const PagedAttentionArgs attention = pass->MakeAttentionArgs(
        layer, metadata, 2, &dummy, metadata, nullptr, AttentionOptions{true, {}});
    EXPECT_EQ(attention.v_cache, h.cache().layer_pools(layer).v);
    EXPECT_EQ(static_cast<const void*>(attention.block_table),
              metadata + pass->layout().block_table);
    EXPECT_EQ(pass->pools(layer).k, h.cache().layer_pools(layer).k);
  }
  // Nothing advances before Commit.
  FLASHKV_ASSERT_OK(WriteLayers(h, *pass, steps, 3));
  EXPECT_EQ(Lengths(h, "a"), (std::vector<int>{5, 5, 5}));
  EXPECT_TRUE(h.cache().GetSequence("c")->in_flight);
  h.Commit(*std::move(pass), 0, steps);
  EXPECT_EQ(Lengths(h, "a"), (std::vector<int>{6, 6, 6}));
  EXPECT_EQ(Lengths(h, "b"), (std::vector<int>{9, 9, 9}));
  EXPECT_EQ(Lengths(h, "c"), (std::vector<int>{3, 3, 3}));
  EXPECT_FALSE(h.cache().GetSequence("c")->in_flight);
  h.VerifyAll();
  // The next pass continues where this one ended.
  absl::StatusOr<LayerBatch> next = h.PreparePass({Step{"a", 1}, Step{"c", 1}});
  ASSERT_TRUE(next.ok()) << next.status();
  FLASHKV_ASSERT_OK(WriteLayers(h, *next, {Step{"a", 1}, Step{"c", 1}}, 3));
  h.Commit(*std::move(next), 0, {Step{"a", 1}, Step{"c", 1}});
  h.VerifyAll();
  EXPECT_EQ(h.cache().GetStats().batches_committed, 2 * 3 + 1 + 1);
}

TEST(PassTest, ASequenceThatIsNotLevelIsRefusedNamingItAndItsLengths) {
  Harness h(TestConfig(3, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  ASSERT_TRUE(h.Create("b").ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 3));
  FLASHKV_ASSERT_OK(h.Append(0, {Step{"b", 2}}));  // b: 2, 0, 0
  const CacheStats before = h.cache().GetStats();
  absl::StatusOr<LayerBatch> pass = h.PreparePass({Step{"a", 1}, Step{"b", 1}});
  ASSERT_EQ(pass.status().code(), absl::StatusCode::kFailedPrecondition) << pass.status();
  EXPECT_TRUE(absl::StrContains(pass.status().message(),
                                "entries[1]: sequence 'b' has 2 tokens at layer 0 but 0 at layer 2"))
      << pass.status();
  EXPECT_EQ(FailedEntryIndex(pass.status()), 1);
  EXPECT_EQ(h.cache().GetStats().blocks_used, before.blocks_used);
  EXPECT_FALSE(h.cache().GetSequence("a")->in_flight);
  // Layer batches bring b level again; then it may join a pass.
  FLASHKV_ASSERT_OK(h.Append(1, {Step{"b", 2}}));
  FLASHKV_ASSERT_OK(h.Append(2, {Step{"b", 2}}));
  pass = h.PreparePass({Step{"a", 1}, Step{"b", 1}});
  ASSERT_TRUE(pass.ok()) << pass.status();
  FLASHKV_ASSERT_OK(WriteLayers(h, *pass, {Step{"a", 1}, Step{"b", 1}}, 3));
  h.Commit(*std::move(pass), 0, {Step{"a", 1}, Step{"b", 1}});
  h.VerifyAll();
}

TEST(PassTest, AbortAfterSomeLayersRestoresEveryLayerAndThePool) {
  Harness h(TestConfig(4, 4, 64));
  for (const char* id : {"a", "b"}) ASSERT_TRUE(h.Create(id).ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 4));  // a full block: the pass starts a new one
  FLASHKV_ASSERT_OK(h.AppendAllLayers("b", 6));
  FLASHKV_ASSERT_OK(h.Fork("b", "c"));  // b's partial tail block is shared: copy-on-write
  const std::vector<Step> steps = {Step{"a", 1}, Step{"b", 1}, Step{"c", 2}};
  const std::map<std::string, SequenceInfo> before = {{"a", *h.cache().GetSequence("a")},
                                                      {"b", *h.cache().GetSequence("b")},
                                                      {"c", *h.cache().GetSequence("c")}};
  const CacheStats stats = h.cache().GetStats();
  for (int written : {0, 2, 4}) {
    absl::StatusOr<LayerBatch> pass = h.PreparePass(steps);
    ASSERT_TRUE(pass.ok()) << pass.status();
    FLASHKV_ASSERT_OK(WriteLayers(h, *pass, steps, written));
    if (written == 2) {
      { LayerBatch dropped(*std::move(pass)); }  // dropping a pending pass aborts it too
      h.Check();
    } else {
      h.Abort(*std::move(pass));
    }
    for (const auto& [id, info] : before) {
      const SequenceInfo now = *h.cache().GetSequence(id);
      EXPECT_EQ(now.layer_lengths, info.layer_lengths) << id << " after " << written;
      EXPECT_EQ(now.blocks, info.blocks) << id << " after " << written;
      EXPECT_FALSE(now.in_flight);
    }
    const CacheStats after = h.cache().GetStats();
    EXPECT_EQ(after.blocks_used, stats.blocks_used);
    EXPECT_EQ(after.blocks_free, stats.blocks_free);
    h.VerifyAll();  // b's shared block kept its rows
  }
  // Rows the aborted passes wrote past the lengths are overwritten by the next pass.
  absl::StatusOr<LayerBatch> pass = h.PreparePass(steps);
  ASSERT_TRUE(pass.ok()) << pass.status();
  EXPECT_GE(h.cache().GetStats().cow_copies, 1);
  FLASHKV_ASSERT_OK(WriteLayers(h, *pass, steps, 4));
  h.Commit(*std::move(pass), 0, steps);
  EXPECT_NE(h.cache().GetSequence("b")->blocks, h.cache().GetSequence("c")->blocks);
  h.VerifyAll();
}

TEST(PassTest, CommittedFullBlocksArePublishedForThePrefixCache) {
  Harness h(TestConfig(2, 4, 64));
  const std::vector<int64_t> prompt = Harness::Prompt(7, 3);
  ASSERT_TRUE(h.Create("a", prompt).ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 3, /*with_ids=*/true));
  absl::StatusOr<LayerBatch> pass = h.PreparePass({Step{"a", 1, /*with_ids=*/true}});
  ASSERT_TRUE(pass.ok()) << pass.status();
  FLASHKV_ASSERT_OK(WriteLayers(h, *pass, {Step{"a", 1, true}}, 2));
  h.Commit(*std::move(pass), 0, {Step{"a", 1, true}});
  // A prompt that starts with a's four tokens finds the block a's pass filled.
  std::vector<int64_t> longer = h.Tokens("a", 0, 4);
  longer.push_back(99);
  absl::StatusOr<int> cached = h.Create("b", longer);
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(*cached, 4);
  h.VerifyAll();
}

TEST(PassTest, APendingPassHoldsItsSequences) {
  Harness h(TestConfig(2, 4, 64));
  for (const char* id : {"a", "b"}) ASSERT_TRUE(h.Create(id).ok());
  FLASHKV_ASSERT_OK(h.AppendAllLayers("a", 2));
  absl::StatusOr<LayerBatch> pass = h.PreparePass({Step{"a", 1}});
  ASSERT_TRUE(pass.ok()) << pass.status();
  absl::StatusOr<LayerBatch> other = h.Prepare(0, {Step{"b", 1}, Step{"a", 1}});
  ASSERT_EQ(other.status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(absl::StrContains(other.status().message(), "'a' is in a decode pass still in flight"))
      << other.status();
  EXPECT_EQ(h.PreparePass({Step{"a", 1}}).status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(h.cache().ForkSequence("a", "fork").code(), absl::StatusCode::kAborted);
  EXPECT_EQ(h.cache().SwapOut("a").code(), absl::StatusCode::kAborted);
  // Freeing waits for the pass: the sequence goes at Commit, its blocks with it.
  FLASHKV_ASSERT_OK(WriteLayers(h, *pass, {Step{"a", 1}}, 2));
  FLASHKV_ASSERT_OK(h.cache().FreeSequence("a"));
  h.model.erase("a");
  EXPECT_EQ(h.cache().GetStats().sequences, 1);
  h.cache().Commit(*std::move(pass));
  h.Check();
  EXPECT_EQ(h.cache().GetStats().blocks_used, 0);
}

TEST(PassTest, WritingALayerOutsideThePassIsRefused) {
  Harness h(TestConfig(2, 4, 32));
  ASSERT_TRUE(h.Create("a").ok());
  absl::StatusOr<LayerBatch> pass = h.PreparePass({Step{"a", 1}});
  ASSERT_TRUE(pass.ok()) << pass.status();
  std::vector<float> rows(32, 1.0f);
  StepTensors t;
  t.k = TensorRef{DType::kFloat32, 1, 1, 32, rows.data()};
  t.v = t.k;
  t.layer = 2;
  const absl::Status s = RunLayerStep(h.cache(), *pass, t, h.workspace());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "layer (2) must be in [0, 2)")) << s;
  h.Abort(*std::move(pass));
}

}  // namespace
}  // namespace flashkv::kvcache

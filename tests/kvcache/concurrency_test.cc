// Several threads share one cache, as the server's callers do: each drives its own sequences
// through create / prepare + append + commit or abort / fork / swap-out / free while the pool is
// small enough that they swap each other out. A checker thread runs CheckConsistency throughout.
// Afterwards every surviving sequence's rows are compared with what its thread wrote. Meant to
// run under TSan too (the tsan preset).

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::KvValue;
using kvtest::TestConfig;

constexpr int kLayers = 2;
constexpr int kPage = 4;

struct Owned {
  uint64_t uid = 0;
  std::vector<int> len;
};

uint64_t RowHash(uint64_t uid, int pos) { return uid * 0x9e3779b97f4a7c15ull + pos * 7919 + 1; }

std::vector<float> Rows(const CacheConfig& c, uint64_t uid, int layer, int kv, int begin, int n) {
  std::vector<float> out;
  for (int p = begin; p < begin + n; ++p) {
    for (int h = 0; h < c.num_kv_heads; ++h) {
      for (int d = 0; d < c.head_dim; ++d) out.push_back(KvValue(RowHash(uid, p), layer, kv, h, d));
    }
  }
  return out;
}

void Worker(KvCache* cache, int thread, std::map<std::string, Owned>* mine,
            std::atomic<int>* failures) {
  const CacheConfig& c = cache->config();
  std::mt19937 rng(thread + 1);
  auto rand = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
  uint64_t next = 0;
  auto fail = [&](const absl::Status& s) {
    ADD_FAILURE() << "thread " << thread << ": " << s;
    ++*failures;
  };
  for (int op = 0; op < 2000 && failures->load() == 0; ++op) {
    const int r = rand(100);
    if (mine->empty() || r < 10) {
      const std::string id = "t" + std::to_string(thread) + "-" + std::to_string(next);
      if (absl::Status s = cache->CreateSequence(id).status(); !s.ok()) return fail(s);
      (*mine)[id] = Owned{(static_cast<uint64_t>(thread) << 32) | next++,
                          std::vector<int>(kLayers, 0)};
      continue;
    }
    auto it = mine->begin();
    std::advance(it, rand(static_cast<int>(mine->size())));
    const std::string id = it->first;
    Owned& seq = it->second;
    if (r < 75) {
      const int layer = rand(kLayers);
      const int room = layer == 0 ? 40 - seq.len[0] : seq.len[layer - 1] - seq.len[layer];
      if (room <= 0) continue;
      const int n = 1 + rand(std::min(room, 6));
      const BatchEntry entry{id, n, {}};
      absl::StatusOr<LayerBatch> batch = cache->PrepareLayerBatch(layer, {&entry, 1});
      if (!batch.ok()) {
        if (batch.status().code() != absl::StatusCode::kResourceExhausted) return fail(batch.status());
        continue;
      }
      const std::vector<float> k = Rows(c, seq.uid, layer, 0, seq.len[layer], n);
      const std::vector<float> v = Rows(c, seq.uid, layer, 1, seq.len[layer], n);
      StepTensors t;
      t.k = TensorRef{DType::kFloat32, n, c.num_kv_heads, c.head_dim, k.data()};
      t.v = TensorRef{DType::kFloat32, n, c.num_kv_heads, c.head_dim, v.data()};
      if (absl::Status s = RunLayerStep(*cache, *batch, t, nullptr); !s.ok()) return fail(s);
      if (rand(10) == 0) {
        cache->Abort(*std::move(batch));
      } else {
        cache->Commit(*std::move(batch));
        seq.len[layer] += n;
      }
    } else if (r < 83) {
      const std::string child = "t" + std::to_string(thread) + "-" + std::to_string(next);
      const absl::Status s = cache->ForkSequence(id, child);
      if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) return fail(s);
      if (s.ok()) {
        // Rows are a function of (uid, position): the child shares its parent's uid, so both
        // write the same rows from here on, each into its own copy of a shared block.
        (*mine)[child] = Owned{seq.uid, seq.len};
        ++next;
      }
    } else if (r < 90) {
      const absl::Status s = cache->SwapOut(id);
      if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted &&
          s.code() != absl::StatusCode::kFailedPrecondition) {
        return fail(s);
      }
    } else {
      if (absl::Status s = cache->FreeSequence(id); !s.ok()) return fail(s);
      mine->erase(id);
    }
  }
}

TEST(ConcurrencyTest, ThreadsDrivingTheirOwnSequencesShareOneCache) {
  CacheConfig config = TestConfig(kLayers, kPage, 48, /*swap_blocks=*/96);
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(config);
  ASSERT_TRUE(created.ok()) << created.status();
  KvCache& cache = **created;
  constexpr int kThreads = 4;
  std::vector<std::map<std::string, Owned>> owned(kThreads);
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  std::thread checker([&] {
    while (!done.load()) {
      const absl::Status s = cache.CheckConsistency();
      if (!s.ok()) {
        ADD_FAILURE() << s;
        ++failures;
        return;
      }
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) workers.emplace_back(Worker, &cache, t, &owned[t], &failures);
  for (std::thread& w : workers) w.join();
  done = true;
  checker.join();
  ASSERT_EQ(failures.load(), 0);
  FLASHKV_ASSERT_OK(cache.CheckConsistency());
  EXPECT_GT(cache.GetStats().swap_outs, 0);
  EXPECT_GT(cache.GetStats().swap_ins, 0);
  EXPECT_GT(cache.GetStats().cow_copies, 0);

  // Every surviving sequence holds exactly what its thread wrote (swapped ones come back first).
  for (auto& mine : owned) {
    for (const auto& [id, seq] : mine) {
      const BatchEntry touch{id, 1, {}};
      if (seq.len[0] < 40) {
        absl::StatusOr<LayerBatch> batch = cache.PrepareLayerBatch(0, {&touch, 1});
        if (batch.ok()) cache.Abort(*std::move(batch));  // brings it back in when it fits
      }
      absl::StatusOr<SequenceInfo> info = cache.GetSequence(id);
      ASSERT_TRUE(info.ok());
      ASSERT_EQ(info->layer_lengths, seq.len) << id;
      if (info->swapped) continue;
      for (int layer = 0; layer < kLayers; ++layer) {
        const LayerPools pools = cache.layer_pools(layer);
        for (int kv = 0; kv < 2; ++kv) {
          const std::vector<float> want = Rows(config, seq.uid, layer, kv, 0, seq.len[layer]);
          const float* pool = static_cast<const float*>(kv == 0 ? pools.k : pools.v);
          for (int p = 0; p < seq.len[layer]; ++p) {
            const float* row = pool + info->blocks[p / kPage] * pools.strides.batch +
                               (p % kPage) * pools.strides.row;
            ASSERT_EQ(std::memcmp(row, &want[p * config.head_dim], config.head_dim * 4), 0)
                << id << " layer " << layer << " position " << p;
          }
        }
      }
    }
  }
  for (auto& mine : owned) {
    for (const auto& [id, seq] : mine) FLASHKV_EXPECT_OK(cache.FreeSequence(id));
  }
  const CacheStats s = cache.GetStats();
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.swap_slots_used, 0);
  FLASHKV_EXPECT_OK(cache.CheckConsistency());
}

}  // namespace
}  // namespace flashkv::kvcache

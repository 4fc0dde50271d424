// flashkv_kvcache_bench: what the KV cache's bookkeeping costs on this machine.
//
//   flashkv_kvcache_bench [--iterations N]
//
// Prints one table: block allocate / free rates, append (prepare + commit of one decode), fork
// and free of a long sequence, and the time to prepare + commit a layer batch of 256 decodes over
// 4k-token contexts (target < 50 us) and of a mixed prefill + decode batch. Each batch time is
// shown beside a memcpy of the same number of metadata bytes measured in the same run: the floor
// for writing that buffer at all. No kernels run; the pools hold a one-layer, one-head model so
// that the bookkeeping of a large context fits in little memory.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "flashkv/kvcache/block_allocator.h"
#include "flashkv/kvcache/kv_cache.h"

namespace flashkv::kvcache {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Row {
  std::string what;
  double per_op_us;
  double ops_per_s;
  std::string peer;  // a same-run baseline, when there is one
};

void Print(const std::vector<Row>& rows) {
  std::printf("%-58s %12s %14s  %s\n", "operation", "us/op", "ops/s", "peer (same run)");
  for (const Row& r : rows) {
    std::printf("%-58s %12.3f %14.0f  %s\n", r.what.c_str(), r.per_op_us, r.ops_per_s,
                r.peer.c_str());
  }
}

Row Rate(const std::string& what, int64_t ops, double seconds, std::string peer = "") {
  return Row{what, seconds / ops * 1e6, ops / seconds, std::move(peer)};
}

CacheConfig BenchConfig(int64_t blocks) {
  CacheConfig c;
  c.num_layers = 1;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.dtype = DType::kFloat16;
  c.page_size = 16;
  c.budget = PoolBudget::Blocks(blocks);
  return c;
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

std::vector<Row> AllocatorRows(int iterations) {
  constexpr int32_t kBlocks = 1 << 16;
  BlockAllocator alloc(kBlocks + 1);
  std::vector<int32_t> ids(kBlocks);
  double alloc_s = 0, free_s = 0;
  for (int it = 0; it < iterations / 100 + 1; ++it) {
    bool evicted = false;
    const auto t0 = Clock::now();
    for (int32_t i = 0; i < kBlocks; ++i) ids[i] = alloc.Allocate(&evicted);
    const auto t1 = Clock::now();
    for (int32_t i = kBlocks - 1; i >= 0; --i) alloc.Release(ids[i]);
    const auto t2 = Clock::now();
    alloc_s += Seconds(t0, t1);
    free_s += Seconds(t1, t2);
  }
  const int64_t ops = static_cast<int64_t>(kBlocks) * (iterations / 100 + 1);
  return {Rate("block allocate (BlockAllocator::Allocate)", ops, alloc_s),
          Rate("block free (BlockAllocator::Release)", ops, free_s)};
}

// Sequences of `context` tokens, built by prefilling in one batch each.
void Fill(KvCache& cache, const std::vector<std::string>& ids, int context) {
  for (const std::string& id : ids) {
    Check(cache.CreateSequence(id).status(), "create");
    const BatchEntry entry{id, context, {}};
    absl::StatusOr<LayerBatch> batch = cache.PrepareLayerBatch(0, {&entry, 1});
    Check(batch.status(), "prefill");
    cache.Commit(*std::move(batch));
  }
}

std::vector<Row> SequenceRows(int iterations) {
  std::vector<Row> rows;
  auto cache = *KvCache::Create(BenchConfig(8192));
  Fill(*cache, {"long"}, 4096);
  // Append: one decode token per batch (prepare + commit).
  Check(cache->CreateSequence("d").status(), "create");
  const BatchEntry decode{"d", 1, {}};
  auto t0 = Clock::now();
  for (int i = 0; i < iterations * 10; ++i) {
    absl::StatusOr<LayerBatch> batch = cache->PrepareLayerBatch(0, {&decode, 1});
    Check(batch.status(), "append");
    cache->Commit(*std::move(batch));
  }
  rows.push_back(Rate("append 1 token (prepare + commit, 1 entry)", iterations * 10,
                      Seconds(t0, Clock::now())));
  // Fork and free of a 4k-token sequence (256 shared blocks).
  t0 = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    Check(cache->ForkSequence("long", "child"), "fork");
    Check(cache->FreeSequence("child"), "free");
  }
  rows.push_back(Rate("fork + free of a 4096-token sequence", iterations, Seconds(t0, Clock::now())));
  t0 = Clock::now();
  for (int i = 0; i < iterations; ++i) {
    Check(cache->CreateSequence("tmp").status(), "create");
    Check(cache->FreeSequence("tmp"), "free");
  }
  rows.push_back(Rate("create + free of an empty sequence", iterations, Seconds(t0, Clock::now())));
  return rows;
}

// The fastest of a few timed rounds, after a warm-up copy (first touches fault pages in).
double MemcpySeconds(size_t bytes, int repeats) {
  std::vector<char> src(bytes, 1), dst(bytes);
  std::memcpy(dst.data(), src.data(), bytes);
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const auto t0 = Clock::now();
    for (int i = 0; i < repeats; ++i) {
      std::memcpy(dst.data(), src.data(), bytes);
      asm volatile("" : : "r"(dst.data()) : "memory");
    }
    best = std::min(best, Seconds(t0, Clock::now()) / repeats);
  }
  return best;
}

// Prepare + commit of a layer-0 batch, repeatedly; reports the median. `before` and `after` run
// untimed around each iteration (fresh prefill sequences come and go there).
Row BatchRow(KvCache& cache, const std::string& what, const std::vector<BatchEntry>& entries,
             int iterations, const std::function<void()>& before = {},
             const std::function<void()>& after = {}) {
  std::vector<double> prepare_us, total_us;
  size_t bytes = 0;
  for (int i = 0; i < iterations; ++i) {
    if (before) before();
    const auto t0 = Clock::now();
    absl::StatusOr<LayerBatch> batch = cache.PrepareLayerBatch(0, entries);
    const auto t1 = Clock::now();
    Check(batch.status(), what.c_str());
    bytes = batch->size_bytes();
    cache.Commit(*std::move(batch));
    const auto t2 = Clock::now();
    if (after) after();
    prepare_us.push_back(Seconds(t0, t1) * 1e6);
    total_us.push_back(Seconds(t0, t2) * 1e6);
  }
  std::sort(prepare_us.begin(), prepare_us.end());
  std::sort(total_us.begin(), total_us.end());
  const double median = total_us[total_us.size() / 2];
  const double memcpy_us = MemcpySeconds(bytes, 200) * 1e6;
  char peer[160];
  std::snprintf(peer, sizeof peer,
                "prepare %.1f us, p99 %.1f us; memcpy of its %zu metadata bytes %.1f us (x%.1f)",
                prepare_us[prepare_us.size() / 2], total_us[total_us.size() * 99 / 100], bytes,
                memcpy_us, median / memcpy_us);
  return Row{what, median, 1e6 / median, peer};
}

std::vector<Row> BatchRows(int iterations) {
  constexpr int kSeqs = 256, kContext = 4096;
  const int steps = std::min(iterations, 1000);
  // Room for every context plus the tokens the iterations add, and the mixed batch's prefills.
  const int64_t blocks = kSeqs * ((kContext + 2 * steps) / 16 + 2) + 4 * (512 / 16 + 1);
  auto cache = *KvCache::Create(BenchConfig(blocks));
  std::vector<std::string> ids;
  for (int i = 0; i < kSeqs; ++i) ids.push_back("seq-" + std::to_string(i));
  Fill(*cache, ids, kContext);
  std::vector<BatchEntry> decode;
  for (const std::string& id : ids) decode.push_back(BatchEntry{id, 1, {}});
  std::vector<Row> rows;
  rows.push_back(BatchRow(*cache, "decode batch: 256 seqs x 1 token, 4k contexts", decode, steps));
  // Mixed: 4 fresh sequences prefill 512 tokens each beside 64 of the decodes; the prefill
  // sequences are created before and freed after each iteration, untimed.
  const std::vector<std::string> prefill_ids = {"p0", "p1", "p2", "p3"};
  std::vector<BatchEntry> mixed;
  for (const std::string& id : prefill_ids) mixed.push_back(BatchEntry{id, 512, {}});
  for (int i = 0; i < 64; ++i) mixed.push_back(decode[i]);
  rows.push_back(BatchRow(
      *cache, "mixed batch: 4 x 512-token prefill + 64 decodes", mixed, steps,
      [&] {
        for (const std::string& id : prefill_ids) Check(cache->CreateSequence(id).status(), "create");
      },
      [&] {
        for (const std::string& id : prefill_ids) Check(cache->FreeSequence(id), "free");
      }));
  return rows;
}

}  // namespace
}  // namespace flashkv::kvcache

int main(int argc, char** argv) {
  int iterations = 2000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--iterations N]\n", argv[0]);
      return 2;
    }
  }
  using namespace flashkv::kvcache;
  std::vector<Row> rows = AllocatorRows(iterations);
  for (Row& r : SequenceRows(iterations)) rows.push_back(std::move(r));
  for (Row& r : BatchRows(iterations)) rows.push_back(std::move(r));
  std::printf("flashkv kvcache bookkeeping (page 16, no kernels), %d iterations\n", iterations);
  Print(rows);
  return 0;
}

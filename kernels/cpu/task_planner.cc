#include "cpu/task_planner.h"

#include <algorithm>
#include <numeric>

namespace flashkv::cpu {
namespace {

// Keys at the end of a task's range that its last query still sees.
int64_t KeyRangeEnd(const AttentionProblem& p, const SequenceView& seq, int q_end) {
  if (!p.causal) return seq.kv_len;
  return std::clamp<int64_t>(int64_t{q_end} - 1 + seq.kv_len - seq.q_len + 1, 0, seq.kv_len);
}

// Keys the queries [q_begin, q_end) of `seq` see in total within keys [kv_begin, kv_end).
int64_t VisibleKeys(const AttentionProblem& p, const SequenceView& seq, int q_begin, int q_end,
                    int64_t kv_begin, int64_t kv_end) {
  const int64_t diagonal = int64_t{seq.kv_len} - seq.q_len;
  int64_t total = 0;
  for (int i = q_begin; i < q_end; ++i) {
    const int64_t last = p.causal ? std::min<int64_t>(kv_end, i + diagonal + 1) : kv_end;
    total += std::max<int64_t>(0, last - kv_begin);
  }
  return total;
}

// Splitting a key range costs a partial write and a merge per row; chunks of at least this many
// key tiles keep that under a few percent.
constexpr int kMinSplitTiles = 4;

}  // namespace

TaskPlan PlanTileTasks(const AttentionProblem& p, const TileShape& shape, int num_threads) {
  const int group = p.num_heads_q / p.num_heads_kv;
  const int heads_per_task = std::min(group, shape.max_rows);
  const int positions_per_task = std::max(1, shape.max_rows / heads_per_task);

  std::vector<TileTask> whole;
  for (int b = 0; b < p.num_seqs; ++b) {
    const SequenceView& seq = p.seqs[b];
    for (int q0 = 0; q0 < seq.q_len; q0 += positions_per_task) {
      const int q1 = std::min(seq.q_len, q0 + positions_per_task);
      for (int kv_head = 0; kv_head < p.num_heads_kv; ++kv_head) {
        for (int g0 = 0; g0 < group; g0 += heads_per_task) {
          TileTask task;
          task.seq = b;
          task.kv_head = kv_head;
          task.head_begin = kv_head * group + g0;
          task.num_heads = std::min(heads_per_task, group - g0);
          task.q_begin = q0;
          task.q_end = q1;
          task.kv_begin = 0;
          task.kv_end = seq.kv_len;
          whole.push_back(task);
        }
      }
    }
  }

  // Two tasks per thread at least, so that no thread idles while another runs the last one.
  const int64_t num_whole = static_cast<int64_t>(whole.size());
  const int64_t wanted = 2 * int64_t{num_threads};
  const int64_t split_ways =
      num_threads > 1 && num_whole > 0 && num_whole < wanted ? (wanted + num_whole - 1) / num_whole
                                                             : 1;
  const int64_t min_chunk = int64_t{kMinSplitTiles} * shape.block_n;

  TaskPlan plan;
  for (const TileTask& task : whole) {
    const SequenceView& seq = p.seqs[task.seq];
    const int64_t kv_end = KeyRangeEnd(p, seq, task.q_end);
    const int64_t ways = std::min<int64_t>(split_ways, kv_end / min_chunk);
    if (ways < 2) {
      plan.tasks.push_back(task);
      continue;
    }
    // Chunks of whole key tiles, the last one shorter.
    const int64_t tiles = (kv_end + shape.block_n - 1) / shape.block_n;
    const int64_t chunk = (tiles + ways - 1) / ways * shape.block_n;
    SplitMerge merge;
    merge.task = task;
    merge.first_partial = plan.num_partials;
    for (int64_t k0 = 0; k0 < kv_end; k0 += chunk) {
      TileTask part = task;
      part.kv_begin = static_cast<int32_t>(k0);
      part.kv_end = static_cast<int32_t>(std::min(kv_end, k0 + chunk));
      part.partial = plan.num_partials++;
      plan.tasks.push_back(part);
      ++merge.num_partials;
    }
    plan.merges.push_back(merge);
  }

  // Cost: visible keys per row, plus about one key's worth per row for loading the queries and
  // storing the outputs.
  const size_t num_tasks = plan.tasks.size();
  std::vector<int64_t> costs(num_tasks);
  for (size_t i = 0; i < num_tasks; ++i) {
    const TileTask& t = plan.tasks[i];
    const int64_t keys =
        VisibleKeys(p, p.seqs[t.seq], t.q_begin, t.q_end, t.kv_begin, t.kv_end) +
        (t.q_end - t.q_begin);
    costs[i] = keys * t.num_heads;
  }
  // Order: tasks of one (sequence, KV head) together, most expensive first, and those groups by
  // their most expensive task. The last tasks handed out are still small ones (longest first
  // within the group that runs last), while consecutive tasks reread the same K/V, which then
  // stays in L2 instead of cycling every head's K/V through L3.
  auto group_of = [&](size_t i) {
    return int64_t{plan.tasks[i].seq} * p.num_heads_kv + plan.tasks[i].kv_head;
  };
  std::vector<int64_t> group_cost(static_cast<size_t>(int64_t{p.num_seqs} * p.num_heads_kv), 0);
  for (size_t i = 0; i < num_tasks; ++i) {
    int64_t& g = group_cost[static_cast<size_t>(group_of(i))];
    g = std::max(g, costs[i]);
  }
  std::vector<size_t> order(num_tasks);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int64_t ga = group_of(a);
    const int64_t gb = group_of(b);
    const int64_t ca = group_cost[static_cast<size_t>(ga)];
    const int64_t cb = group_cost[static_cast<size_t>(gb)];
    if (ca != cb) return ca > cb;
    if (ga != gb) return ga < gb;
    return costs[a] > costs[b];
  });
  std::vector<TileTask> sorted;
  sorted.reserve(num_tasks);
  for (size_t i : order) sorted.push_back(plan.tasks[i]);
  plan.tasks = std::move(sorted);
  return plan;
}

}  // namespace flashkv::cpu

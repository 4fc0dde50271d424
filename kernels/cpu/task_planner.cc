#include "cpu/task_planner.h"

#include <algorithm>
#include <cstdint>
#include <numeric>

namespace flashkv::cpu {
namespace {

// Keys the queries [q_begin, q_end) of `seq` see in total.
int64_t VisibleKeys(const AttentionProblem& p, const SequenceView& seq, int q_begin, int q_end) {
  if (!p.causal) return int64_t{q_end - q_begin} * seq.kv_len;
  const int64_t diagonal = int64_t{seq.kv_len} - seq.q_len;
  int64_t total = 0;
  for (int i = q_begin; i < q_end; ++i) {
    total += std::clamp<int64_t>(i + diagonal + 1, 0, seq.kv_len);
  }
  return total;
}

}  // namespace

std::vector<TileTask> PlanTileTasks(const AttentionProblem& p, int max_rows) {
  const int group = p.num_heads_q / p.num_heads_kv;
  const int heads_per_task = std::min(group, max_rows);
  const int positions_per_task = std::max(1, max_rows / heads_per_task);

  std::vector<TileTask> tasks;
  std::vector<int64_t> costs;
  for (int b = 0; b < p.num_seqs; ++b) {
    const SequenceView& seq = p.seqs[b];
    for (int q0 = 0; q0 < seq.q_len; q0 += positions_per_task) {
      const int q1 = std::min(seq.q_len, q0 + positions_per_task);
      // Loading queries and storing outputs costs about as much as one key per row.
      const int64_t keys = VisibleKeys(p, seq, q0, q1) + (q1 - q0);
      for (int kv_head = 0; kv_head < p.num_heads_kv; ++kv_head) {
        for (int g0 = 0; g0 < group; g0 += heads_per_task) {
          TileTask task;
          task.seq = b;
          task.kv_head = kv_head;
          task.head_begin = kv_head * group + g0;
          task.num_heads = std::min(heads_per_task, group - g0);
          task.q_begin = q0;
          task.q_end = q1;
          tasks.push_back(task);
          costs.push_back(keys * task.num_heads);
        }
      }
    }
  }
  std::vector<size_t> order(tasks.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&costs](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<TileTask> sorted;
  sorted.reserve(tasks.size());
  for (size_t i : order) sorted.push_back(tasks[i]);
  return sorted;
}

}  // namespace flashkv::cpu

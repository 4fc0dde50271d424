#pragma once

// Splits an attention problem into tile tasks for the worker pool, longest first.

#include <cstdint>
#include <vector>

#include "cpu/attention_problem.h"
#include "cpu/tile_config.h"

namespace flashkv::cpu {

struct TaskPlan {
  std::vector<TileTask> tasks;     // most expensive first
  std::vector<SplitMerge> merges;  // to run after all tasks, one per split task
  int32_t num_partials = 0;        // partial slots the split tasks write
};

// Every query row of every sequence belongs to exactly one task (or, split, to several tasks over
// disjoint key ranges and one merge); a task has at most shape.max_rows rows, all of one KV head
// (GQA heads of a group share each K/V tile). Tasks come sorted by estimated cost, most expensive
// first, so that the pool's in-order hand-out balances causal work (whose cost grows with the
// query position) like longest-processing-time-first scheduling. When there are too few tasks to
// keep `num_threads` threads busy (decode of a few long sequences), long key ranges are split.
TaskPlan PlanTileTasks(const AttentionProblem& problem, const TileShape& shape, int num_threads);

}  // namespace flashkv::cpu

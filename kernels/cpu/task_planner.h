#pragma once

// Splits an attention problem into tile tasks for the worker pool, longest first.

#include <vector>

#include "cpu/attention_problem.h"

namespace flashkv::cpu {

// Every query row of every sequence belongs to exactly one task; a task has at most `max_rows`
// rows, all of one KV head (GQA heads of a group share each K/V tile). Tasks come sorted by
// estimated cost, most expensive first, so that the pool's in-order hand-out balances causal work
// (whose cost grows with the query position) like longest-processing-time-first scheduling.
std::vector<TileTask> PlanTileTasks(const AttentionProblem& problem, int max_rows);

}  // namespace flashkv::cpu

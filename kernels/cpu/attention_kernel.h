#pragma once

// The blocked online-softmax attention kernel, declared for the dispatcher. Its definition
// (attention_kernel_impl.h) is compiled only in the generated per-instantiation translation units
// (one per instruction set × dtype × head dim, kernels/cpu/CMakeLists.txt), each with its own
// instruction-set flags.

#include "cpu/attention_problem.h"

namespace flashkv::cpu {

template <class IsaTag, class T, int kHeadDim>
struct AttentionKernel {
  // Computes the output rows (and LSE) of one task, or its partial state; see TileTaskFn.
  static void RunTask(const AttentionProblem& problem, const TileTask& task, float* workspace);
  // Combines the partial states of a split task into its output rows (and LSE).
  static void MergeSplits(const AttentionProblem& problem, const SplitMerge& merge,
                          float* workspace);
};

}  // namespace flashkv::cpu

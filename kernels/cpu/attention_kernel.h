#pragma once

// The blocked online-softmax attention kernel, declared for the dispatcher. Its definition
// (attention_kernel_impl.h) is compiled only in the generated per-instantiation translation units
// (one per instruction set × dtype × head dim, kernels/cpu/CMakeLists.txt), each with its own
// instruction-set flags.

#include "cpu/attention_problem.h"

namespace flashkv::cpu {

template <class IsaTag, class T, int kHeadDim>
struct AttentionKernel {
  // Computes the output rows (and LSE) of one task; see TileTaskFn.
  static void RunTask(const AttentionProblem& problem, const TileTask& task, float* workspace);
};

}  // namespace flashkv::cpu

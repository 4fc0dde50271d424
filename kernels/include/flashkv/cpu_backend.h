#pragma once

// The CPU implementation of the attention API (flashkv/attention.h): blocked online-softmax
// attention with float32 accumulation, multi-threaded. All pointers are host memory.
//
// Thread-safety: every function may be called concurrently from any number of threads; the work
// of concurrent calls shares one process-wide worker pool.

#include "flashkv/attention.h"

namespace flashkv::cpu {

KernelStatus Attention(const FixedAttentionArgs& args);
KernelStatus AttentionVarlen(const VarlenAttentionArgs& args);
KernelStatus AttentionPaged(const PagedAttentionArgs& args);
KernelStatus AppendKv(const KvAppendArgs& args);

// Whether (dtype, head_dim) was compiled in (FLASHKV_DTYPES / FLASHKV_HEAD_DIMS).
bool IsCompiled(DType dtype, int head_dim);

// Worker threads of the shared pool (default: the hardware concurrency). Takes effect for calls
// that start after it returns.
void SetNumThreads(int num_threads);
int NumThreads();

}  // namespace flashkv::cpu

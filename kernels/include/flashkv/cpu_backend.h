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
// AttentionPaged in two halves (flashkv/attention.h, PagedAttentionPlan): the checks, once, and
// runs for layers that differ only in their tensors. AttentionPaged is the two in a row.
KernelStatus PlanAttentionPaged(const PagedAttentionArgs& args, PagedAttentionPlan* plan);
KernelStatus RunAttentionPaged(const PagedAttentionPlan& plan, const PagedLayerTensors& tensors);
KernelStatus AppendKv(const KvAppendArgs& args);

// Whether (dtype, head_dim) was compiled in (FLASHKV_DTYPES / FLASHKV_HEAD_DIMS).
bool IsCompiled(DType dtype, int head_dim);

// Worker threads of the shared pool (< 1, and the default: one per CPU the calling thread may run
// on). Takes effect for calls that start after it returns.
void SetNumThreads(int num_threads);
int NumThreads();

// Instruction sets the kernels are compiled for. x86-64 builds carry all three (where the compiler
// supports them) and use the best one the running CPU has; other architectures have kGeneric only.
enum class Isa : int {
  kGeneric = 0,  // the build's baseline target (SSE2 on x86-64, NEON on aarch64)
  kAvx2 = 1,     // AVX2 + FMA + F16C
  kAvx512 = 2,   // AVX-512 F/BW/DQ/VL
};
const char* IsaName(Isa isa);  // "generic", "avx2", "avx512"
// Whether this build has kernels for `isa` and the running CPU can execute them.
bool IsaAvailable(Isa isa);
// The instruction set later calls use: the best available one unless SetIsa chose another.
Isa ActiveIsa();
// Makes later calls use `isa` (tests cover every code path on one machine; benchmarks compare
// them). kFailedPrecondition, changing nothing, when !IsaAvailable(isa).
KernelStatus SetIsa(Isa isa);

}  // namespace flashkv::cpu

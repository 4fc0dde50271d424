// The public CPU attention entry points (flashkv/cpu_backend.h): validate, describe the call as an
// AttentionProblem, pick the kernel, and run its tile tasks on the shared worker pool.

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "cpu/attention_problem.h"
#include "cpu/kernel_registry.h"
#include "cpu/task_planner.h"
#include "cpu/thread_pool.h"
#include "flashkv/cpu_backend.h"

namespace flashkv::cpu {
namespace {

struct AlignedFloatsDeleter {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t{64}); }
};

// The calling thread's kernel workspace, grown to at least `floats` floats, 64-byte aligned. Kept
// for the thread's lifetime: server and pool threads reuse it across calls.
float* ThreadWorkspace(int64_t floats) {
  thread_local std::unique_ptr<float[], AlignedFloatsDeleter> buffer;
  thread_local int64_t capacity = 0;
  if (capacity < floats) {
    buffer.reset(static_cast<float*>(
        ::operator new[](static_cast<size_t>(floats) * sizeof(float), std::align_val_t{64})));
    capacity = floats;
  }
  return buffer.get();
}

const int32_t* HostArray(const int32_t* primary, const int32_t* host) {
  return host != nullptr ? host : primary;
}

KernelStatus NotCompiled(DType dtype, int head_dim) {
  return Unimplemented(
      std::string("cpu attention for dtype ") + DTypeName(dtype) + " with head_dim " +
      std::to_string(head_dim) + " is not compiled in this build: add " + DTypeName(dtype) +
      " to FLASHKV_DTYPES and " + std::to_string(head_dim) + " to FLASHKV_HEAD_DIMS");
}

KernelStatus Run(DType dtype, int head_dim, AttentionProblem problem) {
  const AttentionKernelEntry kernel = FindAttentionKernel(ActiveIsa(), dtype, head_dim);
  if (kernel.run == nullptr) return NotCompiled(dtype, head_dim);
  ThreadPool& pool = ThreadPool::Global();
  const TaskPlan plan = PlanTileTasks(problem, kernel.shape, pool.NumThreads());
  std::vector<float> partials(static_cast<size_t>(plan.num_partials * kernel.partial_slot_floats));
  problem.partials = partials.data();
  problem.partial_stride = kernel.partial_slot_floats;
  pool.ParallelFor(static_cast<int64_t>(plan.tasks.size()), [&](int64_t i) {
    kernel.run(problem, plan.tasks[static_cast<size_t>(i)],
               ThreadWorkspace(kernel.workspace_floats));
  });
  pool.ParallelFor(static_cast<int64_t>(plan.merges.size()), [&](int64_t i) {
    kernel.merge(problem, plan.merges[static_cast<size_t>(i)],
                 ThreadWorkspace(kernel.workspace_floats));
  });
  return KernelStatus::Ok();
}

// Fields shared by the three call kinds.
template <class Args>
AttentionProblem CommonProblem(const Args& a) {
  AttentionProblem p;
  p.q = a.q;
  p.q_row_stride = a.q_strides.row;
  p.q_head_stride = a.q_strides.head;
  p.out = a.out;
  p.out_row_stride = a.out_strides.row;
  p.out_head_stride = a.out_strides.head;
  p.lse = a.lse;
  p.num_heads_q = a.num_heads_q;
  p.num_heads_kv = a.num_heads_kv;
  constexpr float kLog2e = 1.44269504088896340736f;
  p.scale_log2 = ResolveSoftmaxScale(a.options, a.head_dim) * kLog2e;
  p.causal = a.options.causal;
  return p;
}

}  // namespace

KernelStatus Attention(const FixedAttentionArgs& a) {
  FLASHKV_RETURN_IF_ERROR(ValidateFixed(a));
  if (a.batch == 0 || a.seqlen_q == 0) return KernelStatus::Ok();
  AttentionProblem p = CommonProblem(a);
  p.k = a.k;
  p.k_row_stride = a.k_strides.row;
  p.k_head_stride = a.k_strides.head;
  p.v = a.v;
  p.v_row_stride = a.v_strides.row;
  p.v_head_stride = a.v_strides.head;
  p.lse_head_stride = a.seqlen_q;
  std::vector<SequenceView> seqs(static_cast<size_t>(a.batch));
  for (int b = 0; b < a.batch; ++b) {
    SequenceView& s = seqs[static_cast<size_t>(b)];
    s.q_offset = b * a.q_strides.batch;
    s.out_offset = b * a.out_strides.batch;
    s.k_offset = b * a.k_strides.batch;
    s.v_offset = b * a.v_strides.batch;
    s.lse_offset = int64_t{b} * a.num_heads_q * a.seqlen_q;
    s.q_len = a.seqlen_q;
    s.kv_len = a.seqlen_kv;
  }
  p.seqs = seqs.data();
  p.num_seqs = a.batch;
  return Run(a.dtype, a.head_dim, p);
}

KernelStatus AttentionVarlen(const VarlenAttentionArgs& a) {
  FLASHKV_RETURN_IF_ERROR(ValidateVarlen(a, /*primary_is_host=*/true));
  const int32_t* cu_q = HostArray(a.cu_seqlens_q, a.host_cu_seqlens_q);
  const int32_t* cu_kv = HostArray(a.cu_seqlens_kv, a.host_cu_seqlens_kv);
  AttentionProblem p = CommonProblem(a);
  p.k = a.k;
  p.k_row_stride = a.k_strides.row;
  p.k_head_stride = a.k_strides.head;
  p.v = a.v;
  p.v_row_stride = a.v_strides.row;
  p.v_head_stride = a.v_strides.head;
  p.lse_head_stride = a.total_q;
  std::vector<SequenceView> seqs(static_cast<size_t>(a.num_seqs));
  for (int b = 0; b < a.num_seqs; ++b) {
    SequenceView& s = seqs[static_cast<size_t>(b)];
    s.q_offset = cu_q[b] * a.q_strides.row;
    s.out_offset = cu_q[b] * a.out_strides.row;
    s.k_offset = cu_kv[b] * a.k_strides.row;
    s.v_offset = cu_kv[b] * a.v_strides.row;
    s.lse_offset = cu_q[b];
    s.q_len = cu_q[b + 1] - cu_q[b];
    s.kv_len = cu_kv[b + 1] - cu_kv[b];
  }
  p.seqs = seqs.data();
  p.num_seqs = a.num_seqs;
  return Run(a.dtype, a.head_dim, p);
}

KernelStatus PlanAttentionPaged(const PagedAttentionArgs& args, PagedAttentionPlan* plan) {
  return PagedAttentionPlan::Make(args, PagedAttentionPlan::Backend::kCpu, plan);
}

KernelStatus AttentionPaged(const PagedAttentionArgs& args) {
  PagedAttentionPlan plan;
  FLASHKV_RETURN_IF_ERROR(PlanAttentionPaged(args, &plan));
  return RunAttentionPaged(plan, LayerTensorsOf(args));
}

KernelStatus RunAttentionPaged(const PagedAttentionPlan& plan, const PagedLayerTensors& tensors) {
  PagedAttentionArgs a;
  FLASHKV_RETURN_IF_ERROR(plan.ForLayer(tensors, PagedAttentionPlan::Backend::kCpu, &a));
  const int32_t* cu_q = HostArray(a.cu_seqlens_q, a.host_cu_seqlens_q);
  const int32_t* cu_kv = HostArray(a.cu_seqlens_kv, a.host_cu_seqlens_kv);
  const int32_t* table = HostArray(a.block_table, a.host_block_table);
  AttentionProblem p = CommonProblem(a);
  p.paged = true;
  p.k = a.k_cache;
  p.v = a.v_cache;
  p.k_row_stride = p.v_row_stride = a.cache_strides.row;
  p.k_head_stride = p.v_head_stride = a.cache_strides.head;
  p.kv_block_stride = a.cache_strides.batch;
  p.page_size = a.page_size;
  p.lse_head_stride = a.total_q;
  std::vector<SequenceView> seqs(static_cast<size_t>(a.num_seqs));
  for (int b = 0; b < a.num_seqs; ++b) {
    SequenceView& s = seqs[static_cast<size_t>(b)];
    s.q_offset = cu_q[b] * a.q_strides.row;
    s.out_offset = cu_q[b] * a.out_strides.row;
    s.lse_offset = cu_q[b];
    s.q_len = cu_q[b + 1] - cu_q[b];
    s.kv_len = cu_kv[b + 1] - cu_kv[b];
    // Validation only reads the table when some sequence has context; otherwise it may be null.
    if (table != nullptr) s.block_table = table + int64_t{b} * a.block_table_stride;
  }
  p.seqs = seqs.data();
  p.num_seqs = a.num_seqs;
  return Run(a.dtype, a.head_dim, p);
}

bool IsCompiled(DType dtype, int head_dim) {
  return FindAttentionKernel(Isa::kGeneric, dtype, head_dim).run != nullptr;
}

void SetNumThreads(int num_threads) { ThreadPool::Global().SetNumThreads(num_threads); }

int NumThreads() { return ThreadPool::Global().NumThreads(); }

}  // namespace flashkv::cpu

#pragma once

// The plain parameter structs the CPU attention kernels see. The public entry points
// (attention_cpu.cc) turn fixed-length, varlen and paged calls into one AttentionProblem: a list
// of sequences, each with element offsets into the tensors, so one kernel serves all three.

#include <cstdint>

namespace flashkv::cpu {

// One sequence of a call. Offsets are in elements from the tensor base pointers; with a paged
// cache, k_offset and v_offset are 0 and block_table addresses the pools.
struct SequenceView {
  int64_t q_offset = 0;    // row 0 of the sequence in q
  int64_t out_offset = 0;  // row 0 in out
  int64_t k_offset = 0;    // key 0 in k (contiguous K/V only)
  int64_t v_offset = 0;    // value 0 in v (contiguous K/V only)
  int64_t lse_offset = 0;  // query 0 of head 0 in lse
  int32_t q_len = 0;
  int32_t kv_len = 0;
  const int32_t* block_table = nullptr;  // paged only: blocks of this sequence, in token order
};

struct AttentionProblem {
  const void* q = nullptr;
  int64_t q_row_stride = 0;
  int64_t q_head_stride = 0;
  // Contiguous K/V: [rows, heads, D] per sequence. Paged: pools [blocks, heads, page_size, D] where
  // the row stride is the stride between slots of one page.
  const void* k = nullptr;
  int64_t k_row_stride = 0;
  int64_t k_head_stride = 0;
  const void* v = nullptr;
  int64_t v_row_stride = 0;
  int64_t v_head_stride = 0;
  bool paged = false;
  int64_t kv_block_stride = 0;  // paged only, shared by both pools
  int32_t page_size = 0;        // paged only
  void* out = nullptr;
  int64_t out_row_stride = 0;
  int64_t out_head_stride = 0;
  float* lse = nullptr;  // optional: lse[seq.lse_offset + head * lse_head_stride + query]
  int64_t lse_head_stride = 0;

  int32_t num_heads_q = 0;
  int32_t num_heads_kv = 0;
  float scale_log2 = 0;  // softmax scale × log2(e): scores live in the log2 domain
  bool causal = false;   // bottom-right aligned: query i sees keys j <= i + kv_len - q_len

  const SequenceView* seqs = nullptr;
  int32_t num_seqs = 0;

  // Split-KV partial results: slot i is partials + i * partial_stride floats, holding a task's
  // unnormalised output (max_rows, D), then its running max (max_rows, log2 domain) and running
  // sum (max_rows). See TileTask::partial.
  float* partials = nullptr;
  int64_t partial_stride = 0;
};

// One unit of parallel work: query heads [head_begin, head_begin + num_heads), all of one KV head,
// at query positions [q_begin, q_end) of one sequence, against keys [kv_begin, kv_end) (further
// limited by the causal mask). Its rows are (position, head) pairs, position-major, at most
// TileShape::max_rows of them, so one K/V tile load serves them all.
struct TileTask {
  int32_t seq = 0;
  int32_t kv_head = 0;
  int32_t head_begin = 0;
  int32_t num_heads = 0;
  int32_t q_begin = 0;
  int32_t q_end = 0;
  int32_t kv_begin = 0;
  int32_t kv_end = 0;
  // -1: write the final output (and LSE). Otherwise the task covers one chunk of a split key range
  // and leaves its unnormalised state in partial slot `partial` for a SplitMerge.
  int32_t partial = -1;
};

// Combines the partial states of one split task: slots [first_partial, first_partial +
// num_partials) all belong to `task`'s rows (task.partial and the key range are ignored).
struct SplitMerge {
  TileTask task;
  int32_t first_partial = 0;
  int32_t num_partials = 0;
};

// Run one task or merge; `workspace` is 64-byte aligned, MakeWorkspaceLayout(...).total floats,
// private to the calling thread.
using TileTaskFn = void (*)(const AttentionProblem& problem, const TileTask& task,
                            float* workspace);
using SplitMergeFn = void (*)(const AttentionProblem& problem, const SplitMerge& merge,
                              float* workspace);

}  // namespace flashkv::cpu

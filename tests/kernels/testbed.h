#pragma once

// The shared testbed of the kernels tests (and of the kvcache/server tests that check attention
// results): random attention problems in the three API shapes, builders for cu_seqlens and paged
// caches behind shuffled block tables, runs on either backend with poisoned outputs, and checks
// against the float64 reference.
//
// Typical use:
//   SeededRng seeded;
//   VarlenProblem p = VarlenProblem::Random(config, {17, 0, 65}, {63, 5, 65}, seeded.rng());
//   FLASHKV_ASSERT_OK(RunProblem(backend, &p));
//   EXPECT_TRUE(CheckAgainstReference(p));

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "flashkv/attention.h"
#include "kernels/backend.h"
#include "kernels/compare.h"
#include "kernels/host_tensor.h"
#include "kernels/reference_attention.h"

namespace flashkv::testbed {

struct AttentionConfig {
  DType dtype = DType::kFloat16;
  int head_dim = 64;
  int num_heads_q = 4;
  int num_heads_kv = 4;
  bool causal = false;
  std::optional<float> softmax_scale;  // default 1/sqrt(head_dim)
  Layout q_layout = Layout::kRowMajor;
  Layout kv_layout = Layout::kRowMajor;  // K (and V unless v_layout is set), or both cache pools
  // V of fixed-length and varlen calls, when it differs from K (the API gives V its own strides; a
  // kernel reading V through K's strides passes every test where they agree). Paged pools share
  // one set of strides.
  std::optional<Layout> v_layout;
  Layout out_layout = Layout::kRowMajor;
  bool with_lse = true;

  AttentionOptions Options() const { return AttentionOptions{causal, softmax_scale}; }
  Layout VLayout() const { return v_layout.value_or(kv_layout); }
  // "fp16 d64 causal Hq8/Hkv2 scale=0.3 q=padded kv=headmajor out=rowmajor lse"
  std::string ToString() const;
};

// DefaultTolerance / CrossBackendTolerance for a problem's dtype, scale and head dim.
Tolerance ToleranceFor(const AttentionConfig& config);
Tolerance CrossBackendToleranceFor(const AttentionConfig& config);

// --- Builders -----------------------------------------------------------------------------------

// Copies `rows` rows (every head and dim, bit for bit) from src[src_outer, src_row...] to
// dst[dst_outer, dst_row...]; the tensors may have different layouts.
void CopyRows(const HostTensor& src, int64_t src_outer, int64_t src_row, HostTensor* dst,
              int64_t dst_outer, int64_t dst_row, int64_t rows);

// Offsets [0, l0, l0+l1, ...] of sequences with the given lengths.
std::vector<int32_t> CuSeqlens(const std::vector<int>& lengths);
int MaxLength(const std::vector<int>& lengths);
// `count` lengths drawn uniformly from [min_len, max_len]; each is 0 with probability `p_zero`.
std::vector<int> RandomLengths(Rng& rng, int count, int min_len, int max_len, double p_zero = 0);

inline int BlocksNeeded(int64_t tokens, int page_size) {
  return static_cast<int>((tokens + page_size - 1) / page_size);
}

// The id unused block-table entries hold (past a sequence's last page). Never a valid block, so
// a kernel that follows one reads outside the pool (ASan, compute-sanitizer) instead of data.
inline constexpr int32_t kUnusedBlockId = -1;

// A block table [num_seqs, stride] that gives every needed page its own block, drawn at random
// (shuffled, non-contiguous) from [0, num_blocks). The first `shared_prefix_pages` pages of every
// sequence long enough to have them map to sequence 0's blocks (prefix sharing). Entries past a
// sequence's last page are kUnusedBlockId. Needs num_blocks >= the distinct pages needed.
std::vector<int32_t> ShuffledBlockTable(Rng& rng, const std::vector<int>& kv_lengths, int page_size,
                                        int stride, int num_blocks, int shared_prefix_pages = 0);

// Writes the logical rows of `logical` ([1, Tkv, Hkv, D], sequence b owning rows
// [cu_kv[b], cu_kv[b+1])) into `pool` ([num_blocks, page_size, Hkv, D]) through the block table.
void ScatterToPool(const HostTensor& logical, const std::vector<int32_t>& cu_kv,
                   const std::vector<int32_t>& block_table, int stride, HostTensor* pool);

// --- Problems -----------------------------------------------------------------------------------
// Each holds random inputs and an output that a Run fills (poisoned before each run). HostArgs()
// describes the inputs in host memory, for the references; its out and lse are null.

struct FixedProblem {
  AttentionConfig config;
  int batch = 0;
  int seqlen_q = 0;
  int seqlen_kv = 0;
  HostTensor q, k, v;      // [B, S, H, D]
  HostTensor out;          // [B, Sq, Hq, D]
  std::vector<float> lse;  // [B, Hq, Sq] when config.with_lse

  static FixedProblem Random(const AttentionConfig& config, int batch, int seqlen_q, int seqlen_kv,
                             Rng& rng);
  FixedAttentionArgs HostArgs() const;
};

struct VarlenProblem {
  AttentionConfig config;
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_kv;
  int max_seqlen_q = 0;
  int max_seqlen_kv = 0;
  HostTensor q, k, v;      // [1, T, H, D]
  HostTensor out;          // [1, Tq, Hq, D]
  std::vector<float> lse;  // [Hq, Tq]

  static VarlenProblem Random(const AttentionConfig& config, const std::vector<int>& q_lengths,
                              const std::vector<int>& kv_lengths, Rng& rng);
  // The same inputs as a varlen problem over equal-length sequences.
  static VarlenProblem FromFixed(const FixedProblem& fixed);
  int num_seqs() const { return static_cast<int>(cu_seqlens_q.size()) - 1; }
  VarlenAttentionArgs HostArgs() const;
};

struct PagedCacheOptions {
  int page_size = 16;
  int spare_blocks = 3;         // blocks in the pool no sequence uses (poison)
  int spare_table_columns = 1;  // block_table_stride beyond the longest sequence's need
  int shared_prefix_pages = 0;  // see ShuffledBlockTable
};

struct PagedProblem {
  AttentionConfig config;
  std::vector<int32_t> cu_seqlens_q;
  std::vector<int32_t> cu_seqlens_kv;  // context lengths, new tokens included
  int max_seqlen_q = 0;
  int max_seqlen_kv = 0;
  int page_size = 0;
  int num_blocks = 0;
  int block_table_stride = 0;
  std::vector<int32_t> block_table;
  HostTensor q;                 // [1, Tq, Hq, D]
  HostTensor k, v;              // the logical context [1, Tkv, Hkv, D], as scattered
  HostTensor k_cache, v_cache;  // [num_blocks, page_size, Hkv, D]; unused slots are poison
  HostTensor out;
  std::vector<float> lse;

  static PagedProblem Random(const AttentionConfig& config, const std::vector<int>& q_lengths,
                             const std::vector<int>& kv_lengths, const PagedCacheOptions& cache,
                             Rng& rng);
  // The same queries and logical K/V as a varlen problem.
  VarlenProblem AsVarlen() const;
  int num_seqs() const { return static_cast<int>(cu_seqlens_q.size()) - 1; }
  PagedAttentionArgs HostArgs() const;
};

// --- Runs and checks ----------------------------------------------------------------------------

// Whether varlen/paged calls get host copies of their index arrays. The CUDA backend needs them;
// the CPU backend reads the primary pointers when they are null.
enum class HostCopies { kWhenNeeded, kAlways };

// Poisons the output (and LSE), copies everything to the backend, runs, and copies the output
// back into the problem. Returns the backend's status (or a memory error).
KernelStatus RunProblem(Backend backend, FixedProblem* problem);
KernelStatus RunProblem(Backend backend, VarlenProblem* problem,
                        HostCopies host_copies = HostCopies::kWhenNeeded);
KernelStatus RunProblem(Backend backend, PagedProblem* problem,
                        HostCopies host_copies = HostCopies::kWhenNeeded);

// One PagedAttentionPlan run for several layers, as a decode pass runs it: the metadata (block
// table, cu_seqlens) of layers[0] uploaded once and planned once, then each layer's own q, pools
// and poisoned output, the layers in reverse order. The layers must share everything but q, the
// pools' contents and the outputs.
KernelStatus RunPlannedLayers(Backend backend, std::vector<PagedProblem>* layers);

// AppendKv on `backend`: writes rows of k and v ([1, T, Hkv, D]) into the pools ([num_blocks,
// page_size, Hkv, D]) at `slot_mapping` (negative = skip), and copies the pools back.
KernelStatus RunAppendKvProblem(Backend backend, const HostTensor& k, const HostTensor& v,
                                const std::vector<int64_t>& slot_mapping, HostTensor* k_cache,
                                HostTensor* v_cache,
                                HostCopies host_copies = HostCopies::kWhenNeeded);
// The slot of every logical token of `problem` (block * page_size + offset), as the KV cache hands
// them to AppendKv.
std::vector<int64_t> SlotMapping(const PagedProblem& problem);

ReferenceOutput Reference(const FixedProblem& problem, Precision precision = Precision::kFloat64);
ReferenceOutput Reference(const VarlenProblem& problem, Precision precision = Precision::kFloat64);
ReferenceOutput Reference(const PagedProblem& problem, Precision precision = Precision::kFloat64);

// Checks the last Run's output against the float64 reference (plus the naive same-dtype bound for
// fp16/bf16) with ToleranceFor(config).
::testing::AssertionResult CheckAgainstReference(const FixedProblem& problem);
::testing::AssertionResult CheckAgainstReference(const VarlenProblem& problem);
::testing::AssertionResult CheckAgainstReference(const PagedProblem& problem);

// Runs on `backend` and checks against the reference; on CUDA, when the CPU backend can run the
// problem too, also checks CUDA against CPU (the second oracle).
template <typename Problem>
::testing::AssertionResult RunAndCheck(Backend backend, Problem* problem) {
  if (KernelStatus status = RunProblem(backend, problem); !status.ok()) {
    return ::testing::AssertionFailure() << BackendName(backend) << ": " << status.ToString();
  }
  ::testing::AssertionResult result = CheckAgainstReference(*problem);
  if (!result || backend != Backend::kCuda ||
      !UnavailableReason(Backend::kCpu, problem->config.dtype, problem->config.head_dim).empty()) {
    return result;
  }
  Problem on_cpu = *problem;
  // The oracle always computes LSE: it marks the rows that see no key. Give it a buffer even when
  // the run under test asked for none (one float per query row and head).
  on_cpu.config.with_lse = true;
  const Shape4& out_shape = problem->out.shape();
  on_cpu.lse.resize(static_cast<size_t>(out_shape.outer * out_shape.rows * out_shape.heads));
  if (KernelStatus status = RunProblem(Backend::kCpu, &on_cpu); !status.ok()) {
    return ::testing::AssertionFailure() << "Cpu (second oracle): " << status.ToString();
  }
  const std::vector<int32_t>* cu = nullptr;
  if constexpr (!std::is_same_v<Problem, FixedProblem>) cu = &problem->cu_seqlens_q;
  const ReferenceOutput cpu_output = AsReference(on_cpu.out, on_cpu.lse);
  ::testing::AssertionResult vs_cpu = CheckAttentionOutput(
      problem->out, problem->config.with_lse ? &problem->lse : nullptr, cpu_output, nullptr,
      CrossBackendToleranceFor(problem->config), RowLabels{cu});
  if (!vs_cpu) return ::testing::AssertionFailure() << "Cuda vs Cpu: " << vs_cpu.message();
  return vs_cpu;
}

}  // namespace flashkv::testbed

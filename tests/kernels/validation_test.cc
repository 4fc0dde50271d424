// Every argument check of kernels/common/validate.cc, through every door: the Validate* functions
// themselves (primary index arrays in host memory, and in device memory with host copies), the CPU
// backend's entry points and, with a CUDA build and device, the CUDA backend's. Each case starts
// from valid arguments over real buffers, breaks exactly one thing, and requires the right code
// and a message that names the argument (and, where there is one, the limit).

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "flashkv/cpu_backend.h"
#include "flashkv/cuda_backend.h"
#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

// Where a case is sent.
enum class Target {
  kValidateHost,    // Validate*(args, primary_is_host = true)
  kValidateDevice,  // Validate*(args, primary_is_host = false): host copies required
  kCpu,             // flashkv::cpu entry point
  kCuda,            // flashkv::cuda entry point (needs a CUDA build and device)
};

const char* TargetName(Target t) {
  switch (t) {
    case Target::kValidateHost:
      return "ValidateHost";
    case Target::kValidateDevice:
      return "ValidateDevice";
    case Target::kCpu:
      return "Cpu";
    case Target::kCuda:
      return "Cuda";
  }
  return "?";
}

void PrintTo(Target t, std::ostream* os) { *os << TargetName(t); }

// A broken argument set: how to break the valid one, and what the error must say.
template <typename Setup>
struct BadCase {
  const char* name;
  std::function<void(Setup&)> mutate;
  const char* message;  // a substring of the error message
  // The missing-host-copy cases: only an error where primary index arrays are device memory
  // (kValidateDevice, kCuda); elsewhere the primary arrays serve and the call succeeds.
  bool only_device = false;
};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// --- Fixed-length -------------------------------------------------------------------------------

struct FixedSetup {
  FixedProblem problem;
  FixedAttentionArgs args;

  FixedSetup() {
    SeededRng seeded;
    AttentionConfig c;
    c.head_dim = 64;
    c.num_heads_q = 4;
    c.num_heads_kv = 2;
    problem = FixedProblem::Random(c, 2, 5, 7, seeded.rng());
    args = problem.HostArgs();
    args.out = problem.out.data();
    args.lse = problem.lse.data();
  }
  KernelStatus Call(Target t) const {
    switch (t) {
      case Target::kValidateHost:
      case Target::kValidateDevice:
        return ValidateFixed(args);
      case Target::kCpu:
        return cpu::Attention(args);
      case Target::kCuda:
        return cuda::Attention(args, nullptr);
    }
    return Internal("unreachable");
  }
};

const std::vector<BadCase<FixedSetup>>& FixedCases() {
  using S = FixedSetup;
  static const std::vector<BadCase<S>> cases = {
      {"dtype_unknown", [](S& s) { s.args.dtype = static_cast<DType>(7); }, "dtype (7)"},
      {"head_dim_80", [](S& s) { s.args.head_dim = 80; }, "head_dim (80) must be one of"},
      {"head_dim_0", [](S& s) { s.args.head_dim = 0; }, "head_dim (0)"},
      {"num_heads_q_0", [](S& s) { s.args.num_heads_q = 0; }, "num_heads_q (0) must be >= 1"},
      {"num_heads_kv_0", [](S& s) { s.args.num_heads_kv = 0; }, "num_heads_kv (0) must be >= 1"},
      {"num_heads_kv_negative", [](S& s) { s.args.num_heads_kv = -2; }, "num_heads_kv (-2)"},
      {"gqa_not_a_multiple", [](S& s) { s.args.num_heads_kv = 3; },
       "num_heads_q (4) must be a multiple of num_heads_kv (3)"},
      {"batch_negative", [](S& s) { s.args.batch = -1; }, "batch (-1) must be >= 0"},
      {"seqlen_q_negative", [](S& s) { s.args.seqlen_q = -2; }, "seqlen_q (-2) must be >= 0"},
      {"seqlen_kv_negative", [](S& s) { s.args.seqlen_kv = -3; }, "seqlen_kv (-3) must be >= 0"},
      {"softmax_scale_nan", [](S& s) { s.args.options.softmax_scale = kNaN; }, "softmax_scale"},
      {"softmax_scale_inf", [](S& s) { s.args.options.softmax_scale = -kInf; }, "softmax_scale"},
      {"q_null", [](S& s) { s.args.q = nullptr; }, "q is null"},
      {"k_null", [](S& s) { s.args.k = nullptr; }, "k is null"},
      {"v_null", [](S& s) { s.args.v = nullptr; }, "v is null"},
      {"out_null", [](S& s) { s.args.out = nullptr; }, "out is null"},
      {"q_negative_row_stride", [](S& s) { s.args.q_strides.row = -256; }, "q strides"},
      {"k_negative_head_stride", [](S& s) { s.args.k_strides.head = -64; }, "k strides"},
      {"v_negative_batch_stride", [](S& s) { s.args.v_strides.batch = -1; }, "v strides"},
      {"out_zero_head_stride", [](S& s) { s.args.out_strides.head = 0; }, "out strides"},
      {"out_zero_row_stride", [](S& s) { s.args.out_strides.row = 0; }, "out strides"},
      {"out_zero_batch_stride", [](S& s) { s.args.out_strides.batch = 0; }, "out strides"},
  };
  return cases;
}

// --- Varlen -------------------------------------------------------------------------------------

struct VarlenSetup {
  VarlenProblem problem;
  std::vector<int32_t> cu_q;  // what args point at, primary and host copy alike
  std::vector<int32_t> cu_kv;
  VarlenAttentionArgs args;

  VarlenSetup() {
    SeededRng seeded;
    AttentionConfig c;
    c.dtype = DType::kBFloat16;
    c.head_dim = 128;
    c.num_heads_q = 6;
    c.num_heads_kv = 2;
    // cu_q {0, 3, 3, 8}, cu_kv {0, 4, 6, 12}; max 5 and 6.
    problem = VarlenProblem::Random(c, {3, 0, 5}, {4, 2, 6}, seeded.rng());
    cu_q = problem.cu_seqlens_q;
    cu_kv = problem.cu_seqlens_kv;
    args = problem.HostArgs();
    args.out = problem.out.data();
    args.lse = problem.lse.data();
    args.cu_seqlens_q = args.host_cu_seqlens_q = cu_q.data();
    args.cu_seqlens_kv = args.host_cu_seqlens_kv = cu_kv.data();
  }
  KernelStatus Call(Target t) const {
    switch (t) {
      case Target::kValidateHost:
        return ValidateVarlen(args, true);
      case Target::kValidateDevice:
        return ValidateVarlen(args, false);
      case Target::kCpu:
        return cpu::AttentionVarlen(args);
      case Target::kCuda:
        return cuda::AttentionVarlen(args, nullptr);
    }
    return Internal("unreachable");
  }
};

const std::vector<BadCase<VarlenSetup>>& VarlenCases() {
  using S = VarlenSetup;
  static const std::vector<BadCase<S>> cases = {
      {"dtype_unknown", [](S& s) { s.args.dtype = static_cast<DType>(0); }, "dtype (0)"},
      {"head_dim_48", [](S& s) { s.args.head_dim = 48; }, "head_dim (48)"},
      {"gqa_not_a_multiple", [](S& s) { s.args.num_heads_kv = 4; },
       "num_heads_q (6) must be a multiple of num_heads_kv (4)"},
      {"num_seqs_negative", [](S& s) { s.args.num_seqs = -1; }, "num_seqs (-1) must be >= 0"},
      {"total_q_negative", [](S& s) { s.args.total_q = -8; }, "total_q (-8) must be >= 0"},
      {"total_kv_negative", [](S& s) { s.args.total_kv = -1; }, "total_kv (-1) must be >= 0"},
      {"max_seqlen_q_negative", [](S& s) { s.args.max_seqlen_q = -5; }, "max_seqlen_q (-5)"},
      {"max_seqlen_kv_negative", [](S& s) { s.args.max_seqlen_kv = -6; }, "max_seqlen_kv (-6)"},
      {"softmax_scale_inf", [](S& s) { s.args.options.softmax_scale = kInf; }, "softmax_scale"},
      {"cu_seqlens_q_null", [](S& s) { s.args.cu_seqlens_q = nullptr; }, "cu_seqlens_q is null"},
      {"cu_seqlens_kv_null", [](S& s) { s.args.cu_seqlens_kv = nullptr; }, "cu_seqlens_kv is null"},
      {"host_cu_seqlens_q_missing", [](S& s) { s.args.host_cu_seqlens_q = nullptr; },
       "host_cu_seqlens_q is null", true},
      {"host_cu_seqlens_kv_missing", [](S& s) { s.args.host_cu_seqlens_kv = nullptr; },
       "host_cu_seqlens_kv is null", true},
      {"cu_seqlens_q_not_starting_at_0", [](S& s) { s.cu_q[0] = 1; },
       "cu_seqlens_q[0] (1) must be 0"},
      {"cu_seqlens_kv_not_starting_at_0", [](S& s) { s.cu_kv[0] = -2; },
       "cu_seqlens_kv[0] (-2) must be 0"},
      {"cu_seqlens_q_decreasing", [](S& s) { s.cu_q[2] = 2; },
       "cu_seqlens_q[2] (2) is less than cu_seqlens_q[1] (3)"},
      {"cu_seqlens_kv_decreasing", [](S& s) { s.cu_kv[3] = 5; },
       "cu_seqlens_kv[3] (5) is less than cu_seqlens_kv[2] (6)"},
      {"cu_seqlens_q_past_the_tensor", [](S& s) { s.args.total_q = 7; },
       "cu_seqlens_q[3] (8) is past the end of the tensor (7 rows)"},
      {"cu_seqlens_kv_past_the_tensor", [](S& s) { s.args.total_kv = 11; },
       "cu_seqlens_kv[3] (12) is past the end of the tensor (11 rows)"},
      {"sequence_longer_than_max_seqlen_q", [](S& s) { s.args.max_seqlen_q = 4; },
       "sequence 2 has 5 rows in cu_seqlens_q, more than max_seqlen_q (4)"},
      {"sequence_longer_than_max_seqlen_kv", [](S& s) { s.args.max_seqlen_kv = 3; },
       "sequence 0 has 4 rows in cu_seqlens_kv, more than max_seqlen_kv (3)"},
      {"q_null", [](S& s) { s.args.q = nullptr; }, "q is null"},
      {"k_null", [](S& s) { s.args.k = nullptr; }, "k is null"},
      {"v_null", [](S& s) { s.args.v = nullptr; }, "v is null"},
      {"out_null", [](S& s) { s.args.out = nullptr; }, "out is null"},
      {"q_negative_head_stride", [](S& s) { s.args.q_strides.head = -1; }, "q strides"},
      {"k_negative_row_stride", [](S& s) { s.args.k_strides.row = -256; }, "k strides"},
      {"v_negative_head_stride", [](S& s) { s.args.v_strides.head = -128; }, "v strides"},
      {"out_zero_row_stride", [](S& s) { s.args.out_strides.row = 0; }, "out strides"},
  };
  return cases;
}

// --- Paged --------------------------------------------------------------------------------------

struct PagedSetup {
  PagedProblem problem;
  std::vector<int32_t> cu_q;
  std::vector<int32_t> cu_kv;
  std::vector<int32_t> table;
  PagedAttentionArgs args;

  PagedSetup() {
    SeededRng seeded;
    AttentionConfig c;
    c.dtype = DType::kFloat32;
    c.head_dim = 32;
    c.num_heads_q = 4;
    c.num_heads_kv = 4;
    c.causal = true;
    PagedCacheOptions cache;
    cache.page_size = 16;
    // Contexts 20, 5, 33: 2, 1 and 3 pages; block_table_stride 4; 6 + 3 spare = 9 blocks.
    problem = PagedProblem::Random(c, {4, 1, 33}, {20, 5, 33}, cache, seeded.rng());
    cu_q = problem.cu_seqlens_q;
    cu_kv = problem.cu_seqlens_kv;
    table = problem.block_table;
    args = problem.HostArgs();
    args.out = problem.out.data();
    args.lse = problem.lse.data();
    args.cu_seqlens_q = args.host_cu_seqlens_q = cu_q.data();
    args.cu_seqlens_kv = args.host_cu_seqlens_kv = cu_kv.data();
    args.block_table = args.host_block_table = table.data();
  }
  KernelStatus Call(Target t) const {
    switch (t) {
      case Target::kValidateHost:
        return ValidatePaged(args, true);
      case Target::kValidateDevice:
        return ValidatePaged(args, false);
      case Target::kCpu:
        return cpu::AttentionPaged(args);
      case Target::kCuda:
        return cuda::AttentionPaged(args, nullptr);
    }
    return Internal("unreachable");
  }
};

const std::vector<BadCase<PagedSetup>>& PagedCases() {
  using S = PagedSetup;
  static const std::vector<BadCase<S>> cases = {
      {"dtype_unknown", [](S& s) { s.args.dtype = static_cast<DType>(4); }, "dtype (4)"},
      {"head_dim_512", [](S& s) { s.args.head_dim = 512; }, "head_dim (512)"},
      {"gqa_not_a_multiple", [](S& s) { s.args.num_heads_q = 6; },
       "num_heads_q (6) must be a multiple of num_heads_kv (4)"},
      {"num_heads_q_negative", [](S& s) { s.args.num_heads_q = -4; }, "num_heads_q (-4)"},
      {"num_seqs_negative", [](S& s) { s.args.num_seqs = -3; }, "num_seqs (-3) must be >= 0"},
      {"total_q_negative", [](S& s) { s.args.total_q = -1; }, "total_q (-1) must be >= 0"},
      {"max_seqlen_q_negative", [](S& s) { s.args.max_seqlen_q = -1; }, "max_seqlen_q (-1)"},
      {"max_seqlen_kv_negative", [](S& s) { s.args.max_seqlen_kv = -1; }, "max_seqlen_kv (-1)"},
      {"softmax_scale_nan", [](S& s) { s.args.options.softmax_scale = kNaN; }, "softmax_scale"},
      {"page_size_0", [](S& s) { s.args.page_size = 0; }, "page_size (0) must be >= 1"},
      {"page_size_negative", [](S& s) { s.args.page_size = -16; }, "page_size (-16) must be >= 1"},
      {"num_blocks_negative", [](S& s) { s.args.num_blocks = -1; }, "num_blocks (-1) must be >= 0"},
      {"block_table_stride_negative", [](S& s) { s.args.block_table_stride = -4; },
       "block_table_stride (-4) must be >= 0"},
      {"cu_seqlens_q_null", [](S& s) { s.args.cu_seqlens_q = nullptr; }, "cu_seqlens_q is null"},
      {"cu_seqlens_kv_null", [](S& s) { s.args.cu_seqlens_kv = nullptr; }, "cu_seqlens_kv is null"},
      {"host_cu_seqlens_q_missing", [](S& s) { s.args.host_cu_seqlens_q = nullptr; },
       "host_cu_seqlens_q is null", true},
      {"host_cu_seqlens_kv_missing", [](S& s) { s.args.host_cu_seqlens_kv = nullptr; },
       "host_cu_seqlens_kv is null", true},
      {"host_block_table_missing", [](S& s) { s.args.host_block_table = nullptr; },
       "host_block_table is null", true},
      {"cu_seqlens_q_not_starting_at_0", [](S& s) { s.cu_q[0] = 2; },
       "cu_seqlens_q[0] (2) must be 0"},
      {"cu_seqlens_kv_not_starting_at_0", [](S& s) { s.cu_kv[0] = 1; },
       "cu_seqlens_kv[0] (1) must be 0"},
      {"cu_seqlens_q_decreasing", [](S& s) { s.cu_q[2] = 3; },
       "cu_seqlens_q[2] (3) is less than cu_seqlens_q[1] (4)"},
      {"cu_seqlens_kv_decreasing", [](S& s) { s.cu_kv[2] = 19; },
       "cu_seqlens_kv[2] (19) is less than cu_seqlens_kv[1] (20)"},
      {"cu_seqlens_q_past_the_tensor", [](S& s) { s.args.total_q = 37; },
       "cu_seqlens_q[3] (38) is past the end of the tensor (37 rows)"},
      {"sequence_longer_than_max_seqlen_q", [](S& s) { s.args.max_seqlen_q = 32; },
       "sequence 2 has 33 rows in cu_seqlens_q, more than max_seqlen_q (32)"},
      {"context_longer_than_max_seqlen_kv", [](S& s) { s.args.max_seqlen_kv = 20; },
       "sequence 2 has 33 rows in cu_seqlens_kv, more than max_seqlen_kv (20)"},
      {"q_null", [](S& s) { s.args.q = nullptr; }, "q is null"},
      {"out_null", [](S& s) { s.args.out = nullptr; }, "out is null"},
      {"k_cache_null", [](S& s) { s.args.k_cache = nullptr; }, "k_cache is null"},
      {"v_cache_null", [](S& s) { s.args.v_cache = nullptr; }, "v_cache is null"},
      {"cache_negative_slot_stride", [](S& s) { s.args.cache_strides.row = -32; },
       "k_cache strides"},
      {"cache_negative_block_stride", [](S& s) { s.args.cache_strides.batch = -1; },
       "k_cache strides"},
      {"q_negative_row_stride", [](S& s) { s.args.q_strides.row = -128; }, "q strides"},
      {"out_zero_head_stride", [](S& s) { s.args.out_strides.head = 0; }, "out strides"},
      {"block_table_null", [](S& s) { s.args.block_table = nullptr; }, "block_table is null"},
      // Sequence 2's context grows to 65 tokens: 5 pages, one more than the table's 4 columns.
      {"block_table_too_short",
       [](S& s) {
         s.cu_kv[3] = s.cu_kv[2] + 65;
         s.args.max_seqlen_kv = 65;
       },
       "sequence 2 has 65 context tokens, 5 blocks of 16, but block_table_stride is 4"},
      {"block_id_past_the_pool", [](S& s) { s.table[1 * 4 + 0] = 9; },
       "block_table[1][0] (9) is out of range [0, 9)"},
      {"block_id_negative", [](S& s) { s.table[2 * 4 + 2] = -1; },
       "block_table[2][2] (-1) is out of range [0, 9)"},
      {"pool_smaller_than_the_table", [](S& s) { s.args.num_blocks = 0; },
       "is out of range [0, 0)"},
  };
  return cases;
}

// --- AppendKv -----------------------------------------------------------------------------------

struct AppendSetup {
  HostTensor k, v, k_cache, v_cache;
  std::vector<int64_t> slots = {3, -1, 17, 40};
  KvAppendArgs args;

  AppendSetup() {
    SeededRng seeded;
    k = HostTensor(DType::kFloat16, {1, 4, 2, 64}, Layout::kRowMajor);
    v = HostTensor(DType::kFloat16, {1, 4, 2, 64}, Layout::kRowMajor);
    k.FillNormal(seeded.rng());
    v.FillNormal(seeded.rng());
    k_cache = HostTensor(DType::kFloat16, {5, 16, 2, 64}, Layout::kHeadMajor);
    v_cache = HostTensor(DType::kFloat16, {5, 16, 2, 64}, Layout::kHeadMajor);
    args.dtype = DType::kFloat16;
    args.num_tokens = 4;
    args.num_heads_kv = 2;
    args.head_dim = 64;
    args.k = k.data();
    args.k_strides = k.strides();
    args.v = v.data();
    args.v_strides = v.strides();
    args.k_cache = k_cache.data();
    args.v_cache = v_cache.data();
    args.cache_strides = k_cache.strides();
    args.num_blocks = 5;
    args.page_size = 16;
    args.slot_mapping = args.host_slot_mapping = slots.data();
  }
  KernelStatus Call(Target t) const {
    switch (t) {
      case Target::kValidateHost:
        return ValidateKvAppend(args, true);
      case Target::kValidateDevice:
        return ValidateKvAppend(args, false);
      case Target::kCpu:
        return cpu::AppendKv(args);
      case Target::kCuda:
        return cuda::AppendKv(args, nullptr);
    }
    return Internal("unreachable");
  }
};

const std::vector<BadCase<AppendSetup>>& AppendCases() {
  using S = AppendSetup;
  static const std::vector<BadCase<S>> cases = {
      {"dtype_unknown", [](S& s) { s.args.dtype = static_cast<DType>(9); }, "dtype (9)"},
      {"head_dim_100", [](S& s) { s.args.head_dim = 100; }, "head_dim (100)"},
      // KvAppendArgs has no num_heads_q: the message must name the field the caller set.
      {"num_heads_kv_0", [](S& s) { s.args.num_heads_kv = 0; }, "num_heads_kv (0) must be >= 1"},
      {"num_tokens_negative", [](S& s) { s.args.num_tokens = -1; }, "num_tokens (-1) must be >= 0"},
      {"page_size_0", [](S& s) { s.args.page_size = 0; }, "page_size (0) must be >= 1"},
      {"num_blocks_negative", [](S& s) { s.args.num_blocks = -2; }, "num_blocks (-2) must be >= 0"},
      {"k_null", [](S& s) { s.args.k = nullptr; }, "k is null"},
      {"v_null", [](S& s) { s.args.v = nullptr; }, "v is null"},
      {"k_cache_null", [](S& s) { s.args.k_cache = nullptr; }, "k_cache is null"},
      {"v_cache_null", [](S& s) { s.args.v_cache = nullptr; }, "v_cache is null"},
      {"k_negative_row_stride", [](S& s) { s.args.k_strides.row = -128; }, "k strides"},
      {"v_negative_head_stride", [](S& s) { s.args.v_strides.head = -64; }, "v strides"},
      {"cache_zero_slot_stride", [](S& s) { s.args.cache_strides.row = 0; }, "k_cache strides"},
      {"cache_zero_block_stride", [](S& s) { s.args.cache_strides.batch = 0; }, "k_cache strides"},
      {"slot_mapping_null", [](S& s) { s.args.slot_mapping = nullptr; }, "slot_mapping is null"},
      {"host_slot_mapping_missing", [](S& s) { s.args.host_slot_mapping = nullptr; },
       "host_slot_mapping is null", true},
      {"slot_past_the_pool", [](S& s) { s.slots[3] = 80; },
       "slot_mapping[3] (80) is out of range [0, 80)"},
      {"slot_far_past_the_pool", [](S& s) { s.slots[0] = int64_t{1} << 40; },
       "slot_mapping[0] (1099511627776) is out of range [0, 80)"},
  };
  return cases;
}

// --- The parameterised driver -------------------------------------------------------------------

bool TargetAvailable(Target t) {
  return t != Target::kCuda || BackendUnavailableReason(Backend::kCuda).empty();
}

template <typename Setup>
void ExpectRejected(Target target, const BadCase<Setup>& c) {
  if (!TargetAvailable(target)) GTEST_SKIP() << BackendUnavailableReason(Backend::kCuda);
  Setup setup;
  ASSERT_TRUE(setup.Call(Target::kValidateDevice).ok()) << "the base arguments must be valid";
  c.mutate(setup);
  const KernelStatus status = setup.Call(target);
  const bool primary_is_host = target == Target::kValidateHost || target == Target::kCpu;
  if (c.only_device && primary_is_host) {
    // The primary arrays are host memory here, so the missing copy is no error (and the CPU
    // backend runs the call, when this build compiled it).
    if (target == Target::kCpu) {
      FLASHKV_SKIP_UNLESS_RUNNABLE(Backend::kCpu, setup.args.dtype, setup.args.head_dim);
    }
    EXPECT_TRUE(status.ok()) << status.ToString();
    return;
  }
  EXPECT_EQ(status.code(), KernelStatusCode::kInvalidArgument) << status.ToString();
  EXPECT_TRUE(HasSubstring(status.message(), c.message));
}

template <typename Setup>
std::string CaseName(Target target, const std::vector<BadCase<Setup>>& cases, int index) {
  return std::string(TargetName(target)) + "_" + cases[static_cast<size_t>(index)].name;
}

// Names start with the target so that ctest labels the Cuda ones `gpu`.
using CaseParam = std::tuple<Target, int>;

class FixedValidation : public ::testing::TestWithParam<CaseParam> {};
TEST_P(FixedValidation, Rejects) {
  ExpectRejected(std::get<0>(GetParam()),
                 FixedCases()[static_cast<size_t>(std::get<1>(GetParam()))]);
}
class VarlenValidation : public ::testing::TestWithParam<CaseParam> {};
TEST_P(VarlenValidation, Rejects) {
  ExpectRejected(std::get<0>(GetParam()),
                 VarlenCases()[static_cast<size_t>(std::get<1>(GetParam()))]);
}
class PagedValidation : public ::testing::TestWithParam<CaseParam> {};
TEST_P(PagedValidation, Rejects) {
  ExpectRejected(std::get<0>(GetParam()),
                 PagedCases()[static_cast<size_t>(std::get<1>(GetParam()))]);
}
class AppendValidation : public ::testing::TestWithParam<CaseParam> {};
TEST_P(AppendValidation, Rejects) {
  ExpectRejected(std::get<0>(GetParam()),
                 AppendCases()[static_cast<size_t>(std::get<1>(GetParam()))]);
}

#define FLASHKV_VALIDATION_SUITE(Prefix, Suite, Cases, ...)                         \
  INSTANTIATE_TEST_SUITE_P(                                                         \
      Prefix, Suite,                                                                \
      ::testing::Combine(::testing::Values(__VA_ARGS__),                            \
                         ::testing::Range(0, static_cast<int>(Cases().size()))),    \
      [](const ::testing::TestParamInfo<CaseParam>& info) {                         \
        return CaseName(std::get<0>(info.param), Cases(), std::get<1>(info.param)); \
      })

FLASHKV_VALIDATION_SUITE(Host, FixedValidation, FixedCases, Target::kValidateHost, Target::kCpu);
FLASHKV_VALIDATION_SUITE(Cuda, FixedValidation, FixedCases, Target::kCuda);
FLASHKV_VALIDATION_SUITE(Host, VarlenValidation, VarlenCases, Target::kValidateHost,
                         Target::kValidateDevice, Target::kCpu);
FLASHKV_VALIDATION_SUITE(Cuda, VarlenValidation, VarlenCases, Target::kCuda);
FLASHKV_VALIDATION_SUITE(Host, PagedValidation, PagedCases, Target::kValidateHost,
                         Target::kValidateDevice, Target::kCpu);
FLASHKV_VALIDATION_SUITE(Cuda, PagedValidation, PagedCases, Target::kCuda);
FLASHKV_VALIDATION_SUITE(Host, AppendValidation, AppendCases, Target::kValidateHost,
                         Target::kValidateDevice, Target::kCpu);
FLASHKV_VALIDATION_SUITE(Cuda, AppendValidation, AppendCases, Target::kCuda);

// --- What is valid ------------------------------------------------------------------------------

// Host targets only: these arguments point at host memory, and the CPU entry points run them.
class ValidArguments : public ::testing::TestWithParam<Target> {};

// Varlen and paged tensors have no batch axis: a garbage batch stride must not matter.
// The CPU target runs the calls: their (dtype, head dim) must be compiled.
void SkipUnlessCpuRuns(Target target, DType dtype, int head_dim) {
  if (target == Target::kCpu) FLASHKV_SKIP_UNLESS_RUNNABLE(Backend::kCpu, dtype, head_dim);
}

TEST_P(ValidArguments, PackedTensorsIgnoreTheBatchStride) {
  VarlenSetup varlen;
  PagedSetup paged;
  SkipUnlessCpuRuns(GetParam(), varlen.args.dtype, varlen.args.head_dim);
  SkipUnlessCpuRuns(GetParam(), paged.args.dtype, paged.args.head_dim);
  if (IsSkipped()) return;
  varlen.args.q_strides.batch = varlen.args.out_strides.batch = -5;
  FLASHKV_EXPECT_OK(varlen.Call(GetParam()));
  paged.args.q_strides.batch = paged.args.out_strides.batch = -5;
  FLASHKV_EXPECT_OK(paged.Call(GetParam()));
}

TEST_P(ValidArguments, NegativeSlotsAndUnusedTableEntriesAreNotChecked) {
  AppendSetup append;
  append.slots = {-1, -1000, 5, -3};
  append.args.slot_mapping = append.args.host_slot_mapping = append.slots.data();
  FLASHKV_EXPECT_OK(append.Call(GetParam()));
  PagedSetup paged;  // entries past each sequence's last page hold -1 (kUnusedBlockId)
  SkipUnlessCpuRuns(GetParam(), paged.args.dtype, paged.args.head_dim);
  if (IsSkipped()) return;
  ASSERT_EQ(paged.table[1 * 4 + 1], kUnusedBlockId);
  FLASHKV_EXPECT_OK(paged.Call(GetParam()));
}

TEST_P(ValidArguments, EmptyCallsNeedNoPointers) {
  const std::vector<int32_t> zeros = {0, 0, 0};
  VarlenAttentionArgs v;
  v.dtype = DType::kFloat16;
  v.num_seqs = 2;
  v.num_heads_q = v.num_heads_kv = 2;
  v.head_dim = 64;
  v.cu_seqlens_q = v.cu_seqlens_kv = v.host_cu_seqlens_q = v.host_cu_seqlens_kv = zeros.data();
  PagedAttentionArgs p;
  p.dtype = DType::kFloat16;
  p.num_seqs = 2;
  p.num_heads_q = p.num_heads_kv = 2;
  p.head_dim = 64;
  p.page_size = 16;
  p.cu_seqlens_q = p.cu_seqlens_kv = p.host_cu_seqlens_q = p.host_cu_seqlens_kv = zeros.data();
  if (GetParam() == Target::kCpu) {
    FLASHKV_SKIP_UNLESS_RUNNABLE(Backend::kCpu, DType::kFloat16, 64);
    FLASHKV_EXPECT_OK(cpu::AttentionVarlen(v));
    FLASHKV_EXPECT_OK(cpu::AttentionPaged(p));
    return;
  }
  const bool host = GetParam() == Target::kValidateHost;
  FLASHKV_EXPECT_OK(ValidateVarlen(v, host));
  FLASHKV_EXPECT_OK(ValidatePaged(p, host));
}

INSTANTIATE_TEST_SUITE_P(Host, ValidArguments,
                         ::testing::Values(Target::kValidateHost, Target::kValidateDevice,
                                           Target::kCpu),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return std::string(TargetName(info.param));
                         });

// --- Paged plans (a decode pass's launch, checked once) ------------------------------------------

void ExpectInvalid(const KernelStatus& status, const char* message) {
  EXPECT_EQ(status.code(), KernelStatusCode::kInvalidArgument) << status.ToString();
  EXPECT_NE(status.message().find(message), std::string::npos) << status.ToString();
}

TEST(PagedPlan, MakeChecksWhatValidatePagedChecks) {
  PagedSetup setup;
  setup.table[1] = 9;  // num_blocks is 9
  PagedAttentionPlan plan;
  ExpectInvalid(PagedAttentionPlan::Make(setup.args, PagedAttentionPlan::Backend::kCpu, &plan),
                "block_table[0][1] (9) is out of range [0, 9)");
  EXPECT_EQ(plan.backend(), PagedAttentionPlan::Backend::kNone);
}

TEST(PagedPlan, ALayerNeedsItsTensorsAndThePlansBackend) {
  PagedSetup setup;
  PagedAttentionPlan plan;
  PagedAttentionArgs args;
  const PagedLayerTensors tensors = LayerTensorsOf(setup.args);
  ExpectInvalid(plan.ForLayer(tensors, PagedAttentionPlan::Backend::kCpu, &args), "was not made");
  FLASHKV_EXPECT_OK(PagedAttentionPlan::Make(setup.args, PagedAttentionPlan::Backend::kCpu, &plan));
  ExpectInvalid(plan.ForLayer(tensors, PagedAttentionPlan::Backend::kCuda, &args), "other backend");
  using T = PagedLayerTensors;
  std::vector<std::pair<void (*)(T&), const char*>> missing = {
      {[](T& t) { t.q = nullptr; }, "q is null"},
      {[](T& t) { t.out = nullptr; }, "out is null"},
      {[](T& t) { t.k_cache = nullptr; }, "k_cache is null"},
      {[](T& t) { t.v_cache = nullptr; }, "v_cache is null"},
  };
  missing.push_back({[](T& t) { t.cache_strides.row += 1; }, "differ from the planned"});
  missing.push_back({[](T& t) { t.num_blocks -= 1; }, "is less than the planned 9"});
  for (const auto& [edit, message] : missing) {
    T layer = tensors;
    edit(layer);
    ExpectInvalid(plan.ForLayer(layer, PagedAttentionPlan::Backend::kCpu, &args), message);
  }
  // A layer's own tensors replace the planned ones; everything else is the plan's.
  T other = tensors;
  float q_elsewhere = 0;
  other.q = &q_elsewhere;
  other.lse = nullptr;
  FLASHKV_EXPECT_OK(plan.ForLayer(other, PagedAttentionPlan::Backend::kCpu, &args));
  EXPECT_EQ(args.q, &q_elsewhere);
  EXPECT_EQ(args.lse, nullptr);
  EXPECT_EQ(args.block_table, setup.args.block_table);
  EXPECT_EQ(args.total_q, setup.args.total_q);
}

// --- Instantiations that are not compiled -------------------------------------------------------

class UncompiledInstantiations : public ::testing::TestWithParam<Backend> {};

// Valid arguments for a (dtype, head_dim) the build left out: kUnimplemented naming both.
TEST_P(UncompiledInstantiations, AreUnimplemented) {
  FLASHKV_SKIP_UNLESS_AVAILABLE(GetParam());
  int uncompiled = 0;
  for (DType dtype : kAllDTypes) {
    for (int head_dim : kSupportedHeadDims) {
      if (UnavailableReason(GetParam(), dtype, head_dim).empty()) continue;
      ++uncompiled;
      SCOPED_TRACE(std::string(DTypeName(dtype)) + " d" + std::to_string(head_dim));
      SeededRng seeded;
      AttentionConfig config;
      config.dtype = dtype;
      config.head_dim = head_dim;
      FixedProblem fixed = FixedProblem::Random(config, 1, 3, 5, seeded.rng());
      VarlenProblem varlen = VarlenProblem::Random(config, {3, 1}, {5, 2}, seeded.rng());
      PagedProblem paged = PagedProblem::Random(config, {3, 1}, {5, 2}, {}, seeded.rng());
      for (const KernelStatus& status :
           {RunProblem(GetParam(), &fixed), RunProblem(GetParam(), &varlen),
            RunProblem(GetParam(), &paged)}) {
        EXPECT_EQ(status.code(), KernelStatusCode::kUnimplemented) << status.ToString();
        EXPECT_TRUE(HasSubstring(status.message(), DTypeName(dtype)));
        EXPECT_TRUE(HasSubstring(status.message(), std::to_string(head_dim)));
      }
    }
  }
  if (uncompiled == 0) GTEST_SKIP() << "every (dtype, head_dim) is compiled in this build";
}

INSTANTIATE_TEST_SUITE_P(Cpu, UncompiledInstantiations, ::testing::Values(Backend::kCpu));
INSTANTIATE_TEST_SUITE_P(Cuda, UncompiledInstantiations, ::testing::Values(Backend::kCuda));

}  // namespace
}  // namespace flashkv::testbed

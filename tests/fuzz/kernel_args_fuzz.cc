// Fuzz target: the kernels' argument validation (kernels/common/validate.cc) and what it lets
// through. Each input describes one CPU kernel call — fixed-length, varlen or paged attention, or
// AppendKv — with small shapes, tensor layouts (padded, head-major, odd gaps), occasionally bad
// scalars and strides, and index arrays (cu_seqlens, block tables, slot mappings) that are valid,
// nearly valid or arbitrary. Tensors are allocated exactly as their declared sizes and layouts
// need, so:
// - validation must never crash or overflow (UBSan), whatever the arguments;
// - a call it accepts must stay inside those allocations (ASan), and compute the right answer:
//   attention is checked against the float64 reference with the attention tests' tolerances
//   (and every output element outside the logical tensor must still be poison), AppendKv against
//   a plain model of the slots it writes;
// - a call it refuses gets INVALID_ARGUMENT (or UNIMPLEMENTED for an instantiation this build
//   leaves out), never another code.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "byte_reader.h"
#include "flashkv/cpu_backend.h"
#include "fuzz_check.h"
#include "kernels/compare.h"
#include "kernels/host_tensor.h"
#include "kernels/reference_attention.h"

namespace flashkv::fuzz {
namespace {

using testbed::HostTensor;
using testbed::Layout;
using testbed::Shape4;

enum class Op { kFixed, kVarlen, kPaged, kAppend };

struct Common {
  DType dtype = DType::kFloat32;
  int head_dim = 32;
  int heads_q = 1;
  int heads_kv = 1;
  AttentionOptions options;
  bool with_lse = false;
  Layout q_layout = Layout::kRowMajor;
  Layout kv_layout = Layout::kRowMajor;
  Layout out_layout = Layout::kRowMajor;
};

Layout AnyLayout(ByteReader& in) {
  static constexpr Layout kLayouts[] = {Layout::kRowMajor, Layout::kHeadMajor, Layout::kPadded,
                                        Layout::kOddPadded};
  return kLayouts[in.Below(4)];
}

// Mostly sane, sometimes not: head counts of 0 or that do not divide, unsupported head dims,
// non-finite or negative scales.
Common ReadCommon(ByteReader& in) {
  static constexpr DType kDTypes[] = {DType::kFloat16, DType::kBFloat16, DType::kFloat32};
  static constexpr int kHeadDims[] = {32, 64, 128, 96, 48, 0};
  Common c;
  c.dtype = kDTypes[in.Below(3)];
  c.head_dim = kHeadDims[in.Chance(0.9) ? in.Below(3) : in.Below(6)];
  c.heads_kv = in.Chance(0.95) ? in.Between(1, 3) : 0;
  c.heads_q = in.Chance(0.9) ? std::max(1, c.heads_kv) * in.Between(1, 3) : in.Below(5);
  c.options.causal = in.Chance(0.5);
  if (in.Chance(0.2)) {
    static constexpr float kScales[] = {0.05f, 1.0f, -0.5f, 0.0f,
                                        std::numeric_limits<float>::infinity(),
                                        std::numeric_limits<float>::quiet_NaN()};
    c.options.softmax_scale = kScales[in.Below(6)];
  }
  c.with_lse = in.Chance(0.5);
  c.q_layout = AnyLayout(in);
  c.kv_layout = AnyLayout(in);
  c.out_layout = AnyLayout(in);
  return c;
}

// A tensor of the declared shape in its layout, filled with deterministic non-zero values.
HostTensor Input(const Common& c, const Shape4& shape, Layout layout, testbed::Rng& rng) {
  HostTensor t(c.dtype, shape, layout);
  t.FillNormal(rng);
  return t;
}

// Now and then a bad stride: negative, or zero (allowed for inputs, an error for outputs).
// Never a larger one: the API has no sizes to check strides against.
void MaybeBreakStrides(ByteReader& in, Strides* s) {
  if (!in.Chance(0.05)) return;
  int64_t* field = in.Below(3) == 0 ? &s->batch : in.Below(2) == 0 ? &s->row : &s->head;
  *field = in.Chance(0.5) ? 0 : -1 - in.Below(4);
}

// Offsets for `num_seqs` sequences: prefix sums of small lengths, then perhaps one entry bent
// out of shape, or (rarely) arbitrary small values.
std::vector<int32_t> ReadCuSeqlens(ByteReader& in, int num_seqs, int max_len) {
  std::vector<int32_t> cu(num_seqs + 1, 0);
  if (in.Chance(0.05)) {
    for (int32_t& v : cu) v = static_cast<int8_t>(in.Byte());
    return cu;
  }
  for (int b = 0; b < num_seqs; ++b) cu[b + 1] = cu[b] + in.Below(max_len + 1);
  if (in.Chance(0.1)) cu[in.Below(num_seqs + 1)] += in.Between(-3, 3);
  return cu;
}

int MaxLen(const std::vector<int32_t>& cu) {
  int m = 0;
  for (size_t i = 1; i < cu.size(); ++i) m = std::max(m, cu[i] - cu[i - 1]);
  return m;
}

// The declared bound: usually the true maximum, sometimes more, now and then less (an error).
int ReadMaxSeqlen(ByteReader& in, const std::vector<int32_t>& cu) {
  const int m = MaxLen(cu);
  if (in.Chance(0.85)) return m;
  return std::max(-1, m + in.Between(-2, 3));
}

int64_t TotalFrom(ByteReader& in, const std::vector<int32_t>& cu) {
  const int64_t end = std::max<int32_t>(0, cu.back());
  return in.Chance(0.85) ? end : std::max<int64_t>(0, end + in.Between(-2, 3));
}

void ExpectRefusal(const KernelStatus& s) {
  FUZZ_CHECK(s.code() == KernelStatusCode::kInvalidArgument ||
             s.code() == KernelStatusCode::kUnimplemented)
      << s.ToString();
}

float ScaleOf(const Common& c) {
  return ResolveSoftmaxScale(c.options, c.head_dim);
}

// The output against the float64 reference; rows that see no key must be 0 with LSE -inf.
void CheckOutput(const Common& c, const HostTensor& out, const std::vector<float>& lse,
                 const testbed::ReferenceOutput& want, const testbed::ReferenceOutput& naive,
                 const std::vector<int32_t>* cu_q) {
  const testbed::Tolerance tolerance = testbed::DefaultTolerance(c.dtype, ScaleOf(c), c.head_dim);
  const ::testing::AssertionResult result = testbed::CheckAttentionOutput(
      out, c.with_lse ? &lse : nullptr, want, &naive, tolerance, testbed::RowLabels{cu_q});
  FUZZ_CHECK(result) << result.message();
}

// Rows of a packed output past the last sequence (total_q > cu_seqlens_q[num_seqs]) belong to no
// sequence: the kernel must leave them alone (still poison), and the comparison then treats them
// as rows that see no key (0, LSE -inf) in both the output and the references.
void SettleUncoveredRows(const Common& c, const std::vector<int32_t>& cu_q, HostTensor* out,
                         std::vector<float>* lse, testbed::ReferenceOutput* want,
                         testbed::ReferenceOutput* naive) {
  const int64_t rows = out->shape().rows;
  for (int64_t r = std::max<int64_t>(0, cu_q.back()); r < rows; ++r) {
    for (int h = 0; h < c.heads_q; ++h) {
      for (int d = 0; d < c.head_dim; ++d) {
        FUZZ_CHECK(out->IsPoisonAt(out->Offset(0, r, h, d)))
            << "row " << r << " belongs to no sequence but was written";
        out->Set(0, r, h, d, 0.0f);
        want->out[want->OutIndex(0, r, h, d)] = naive->out[naive->OutIndex(0, r, h, d)] = 0.0;
      }
      const double none = -std::numeric_limits<double>::infinity();
      want->lse[want->LseIndex(0, r, h)] = naive->lse[naive->LseIndex(0, r, h)] = none;
      if (!c.with_lse) continue;
      float& value = (*lse)[static_cast<size_t>(h) * rows + r];
      FUZZ_CHECK(testbed::IsPoison(value)) << "LSE of row " << r << " was written";
      value = -std::numeric_limits<float>::infinity();
    }
  }
}

// The query side of a packed (varlen or paged) call: q, out and LSE of `total_q` rows, in the
// input's layouts, pointed to by the args.
struct Packed {
  HostTensor q;
  HostTensor out;
  std::vector<float> lse;
};

template <typename Args>
Packed SetPacked(const Common& c, testbed::Rng& rng, Args* a) {
  const int64_t d = c.head_dim;
  Packed p{Input(c, {1, a->total_q, c.heads_q, d}, c.q_layout, rng),
           HostTensor(c.dtype, {1, a->total_q, c.heads_q, d}, c.out_layout),
           testbed::PoisonedFloats(static_cast<size_t>(c.heads_q * a->total_q))};
  a->q = p.q.data();
  a->q_strides = p.q.strides();
  a->out = p.out.data();
  a->out_strides = p.out.strides();
  a->lse = c.with_lse ? p.lse.data() : nullptr;
  return p;
}

// Runs a packed call; a refusal must be a client error, an accepted call's output must match the
// references (rows past the last sequence untouched).
template <typename Args>
void RunPacked(const Common& c, const Args& a, KernelStatus (*run)(const Args&),
               testbed::ReferenceOutput (*reference)(const Args&, testbed::Precision),
               const std::vector<int32_t>& cu_q, Packed* p) {
  const KernelStatus s = run(a);
  if (!s.ok()) return ExpectRefusal(s);
  testbed::ReferenceOutput want = reference(a, testbed::Precision::kFloat64);
  testbed::ReferenceOutput naive = reference(a, testbed::Precision::kNaiveStorage);
  SettleUncoveredRows(c, cu_q, &p->out, &p->lse, &want, &naive);
  CheckOutput(c, p->out, p->lse, want, naive, &cu_q);
}

void FuzzFixed(ByteReader& in, const Common& c, testbed::Rng& rng) {
  FixedAttentionArgs a;
  a.dtype = c.dtype;
  a.batch = in.Chance(0.97) ? in.Below(4) : -1;
  a.seqlen_q = in.Chance(0.97) ? in.Below(9) : -1;
  a.seqlen_kv = in.Chance(0.97) ? in.Below(12) : -1;
  a.num_heads_q = c.heads_q;
  a.num_heads_kv = c.heads_kv;
  a.head_dim = c.head_dim;
  a.options = c.options;
  const int64_t b = std::max(0, a.batch), sq = std::max(0, a.seqlen_q);
  const int64_t skv = std::max(0, a.seqlen_kv), d = c.head_dim;
  const HostTensor q = Input(c, {b, sq, c.heads_q, d}, c.q_layout, rng);
  const HostTensor k = Input(c, {b, skv, c.heads_kv, d}, c.kv_layout, rng);
  const HostTensor v = Input(c, {b, skv, c.heads_kv, d}, c.kv_layout, rng);
  HostTensor out(c.dtype, {b, sq, c.heads_q, d}, c.out_layout);
  std::vector<float> lse = testbed::PoisonedFloats(static_cast<size_t>(b * c.heads_q * sq));
  a.q = q.data();
  a.k = k.data();
  a.v = v.data();
  a.out = out.data();
  a.lse = c.with_lse ? lse.data() : nullptr;
  a.q_strides = q.strides();
  a.k_strides = k.strides();
  a.v_strides = v.strides();
  a.out_strides = out.strides();
  MaybeBreakStrides(in, &a.k_strides);
  MaybeBreakStrides(in, &a.out_strides);
  const KernelStatus s = cpu::Attention(a);
  if (!s.ok()) return ExpectRefusal(s);
  CheckOutput(c, out, lse, testbed::ReferenceFixed(a, testbed::Precision::kFloat64),
              testbed::ReferenceFixed(a, testbed::Precision::kNaiveStorage), nullptr);
}

void FuzzVarlen(ByteReader& in, const Common& c, testbed::Rng& rng) {
  const int num_seqs = in.Below(5);
  std::vector<int32_t> cu_q = ReadCuSeqlens(in, num_seqs, 6);
  std::vector<int32_t> cu_kv = ReadCuSeqlens(in, num_seqs, 9);
  VarlenAttentionArgs a;
  a.dtype = c.dtype;
  a.num_seqs = in.Chance(0.97) ? num_seqs : -1;
  a.num_heads_q = c.heads_q;
  a.num_heads_kv = c.heads_kv;
  a.head_dim = c.head_dim;
  a.total_q = TotalFrom(in, cu_q);
  a.total_kv = TotalFrom(in, cu_kv);
  a.max_seqlen_q = ReadMaxSeqlen(in, cu_q);
  a.max_seqlen_kv = ReadMaxSeqlen(in, cu_kv);
  a.options = c.options;
  const int64_t d = c.head_dim;
  Packed p = SetPacked(c, rng, &a);
  const HostTensor k = Input(c, {1, a.total_kv, c.heads_kv, d}, c.kv_layout, rng);
  const HostTensor v = Input(c, {1, a.total_kv, c.heads_kv, d}, c.kv_layout, rng);
  a.k = k.data();
  a.v = v.data();
  a.k_strides = k.strides();
  a.v_strides = v.strides();
  MaybeBreakStrides(in, &a.q_strides);
  a.cu_seqlens_q = cu_q.data();
  a.cu_seqlens_kv = cu_kv.data();
  if (in.Chance(0.5)) {
    a.host_cu_seqlens_q = cu_q.data();
    a.host_cu_seqlens_kv = cu_kv.data();
  }
  RunPacked(c, a, &cpu::AttentionVarlen, &testbed::ReferenceVarlen, cu_q, &p);
}

void FuzzPaged(ByteReader& in, const Common& c, testbed::Rng& rng) {
  static constexpr int kPageSizes[] = {1, 2, 3, 4, 16, 0};
  const int page = kPageSizes[in.Chance(0.98) ? in.Below(5) : 5];
  const int num_seqs = in.Below(4);
  std::vector<int32_t> cu_q = ReadCuSeqlens(in, num_seqs, 5);
  std::vector<int32_t> cu_kv = ReadCuSeqlens(in, num_seqs, 3 * std::max(page, 1) + 1);
  PagedAttentionArgs a;
  a.dtype = c.dtype;
  a.num_seqs = num_seqs;
  a.num_heads_q = c.heads_q;
  a.num_heads_kv = c.heads_kv;
  a.head_dim = c.head_dim;
  a.total_q = TotalFrom(in, cu_q);
  a.max_seqlen_q = ReadMaxSeqlen(in, cu_q);
  a.max_seqlen_kv = ReadMaxSeqlen(in, cu_kv);
  a.options = c.options;
  a.page_size = page;
  a.num_blocks = in.Below(10);
  a.block_table_stride = in.Below(6);
  // Block ids in [-1, num_blocks + 1]: valid, and just outside at both ends.
  std::vector<int32_t> table(static_cast<size_t>(num_seqs) * a.block_table_stride + 1);
  for (int32_t& id : table) id = in.Below(a.num_blocks + 3) - 1;
  const int64_t d = c.head_dim;
  Packed p = SetPacked(c, rng, &a);
  // Pools [num_blocks, Hkv, page, D] in the API's dense layout (rows = slots of a page).
  const Shape4 pool_shape{a.num_blocks, std::max(page, 0), c.heads_kv, d};
  const HostTensor k_pool = Input(c, pool_shape, Layout::kHeadMajor, rng);
  const HostTensor v_pool = Input(c, pool_shape, Layout::kHeadMajor, rng);
  a.k_cache = k_pool.data();
  a.v_cache = v_pool.data();
  a.cache_strides = k_pool.strides();
  MaybeBreakStrides(in, &a.cache_strides);
  a.block_table = table.data();
  a.cu_seqlens_q = cu_q.data();
  a.cu_seqlens_kv = cu_kv.data();
  if (in.Chance(0.5)) {
    a.host_block_table = table.data();
    a.host_cu_seqlens_q = cu_q.data();
    a.host_cu_seqlens_kv = cu_kv.data();
  }
  RunPacked(c, a, &cpu::AttentionPaged, &testbed::ReferencePaged, cu_q, &p);
}

void FuzzAppend(ByteReader& in, const Common& c, testbed::Rng& rng) {
  static constexpr int kPageSizes[] = {1, 2, 3, 16, 0};
  KvAppendArgs a;
  a.dtype = c.dtype;
  a.num_tokens = in.Chance(0.98) ? in.Below(10) : -1;
  a.num_heads_kv = c.heads_kv;
  a.head_dim = c.head_dim;
  a.page_size = kPageSizes[in.Chance(0.98) ? in.Below(4) : 4];
  a.num_blocks = in.Below(6);
  const int64_t slots = int64_t{a.num_blocks} * std::max(a.page_size, 0);
  std::vector<int64_t> mapping(std::max<int64_t>(a.num_tokens, 0));
  // Slots in [-2, slots + 1]: padding, valid, and just past the pool.
  for (int64_t& slot : mapping) slot = in.Below(static_cast<int>(slots) + 4) - 2;
  const int64_t t = static_cast<int64_t>(mapping.size()), d = c.head_dim;
  const HostTensor k = Input(c, {1, t, c.heads_kv, d}, c.kv_layout, rng);
  const HostTensor v = Input(c, {1, t, c.heads_kv, d}, c.kv_layout, rng);
  const Shape4 pool_shape{a.num_blocks, std::max(a.page_size, 0), c.heads_kv, d};
  HostTensor k_pool(c.dtype, pool_shape, Layout::kHeadMajor);
  HostTensor v_pool(c.dtype, pool_shape, Layout::kHeadMajor);
  a.k = k.data();
  a.k_strides = k.strides();
  a.v = v.data();
  a.v_strides = v.strides();
  a.k_cache = k_pool.data();
  a.v_cache = v_pool.data();
  a.cache_strides = k_pool.strides();
  a.slot_mapping = mapping.data();
  if (in.Chance(0.5)) a.host_slot_mapping = mapping.data();
  const KernelStatus s = cpu::AppendKv(a);
  if (!s.ok()) return ExpectRefusal(s);
  // The model: each slot holds the last token that named it; every other element is poison.
  const HostTensor empty(c.dtype, pool_shape, Layout::kHeadMajor);
  for (const auto& [pool, src] : {std::pair{&k_pool, &k}, std::pair{&v_pool, &v}}) {
    HostTensor want = empty;
    for (int64_t i = 0; i < t; ++i) {
      if (mapping[i] < 0) continue;
      for (int h = 0; h < c.heads_kv; ++h) {
        for (int64_t e = 0; e < d; ++e) {
          want.SetBitsAt(want.Offset(mapping[i] / a.page_size, mapping[i] % a.page_size, h, e),
                         src->BitsAt(src->Offset(0, i, h, e)));
        }
      }
    }
    for (int64_t e = 0; e < want.capacity(); ++e) {
      FUZZ_CHECK(pool->BitsAt(e) == want.BitsAt(e)) << "AppendKv pool element " << e;
    }
  }
}

}  // namespace
}  // namespace flashkv::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  flashkv::cpu::SetNumThreads(1);  // the shapes are tiny; one thread keeps runs deterministic
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flashkv::fuzz;
  ByteReader in(data, size);
  const Op op = static_cast<Op>(in.Below(4));
  const Common common = ReadCommon(in);
  // Input values depend on the input bytes only, so a crash reproduces from the saved input.
  uint64_t seed = 1469598103934665603ull;
  for (size_t i = 0; i < size; ++i) seed = (seed ^ data[i]) * 1099511628211ull;
  flashkv::testbed::Rng rng(seed);
  switch (op) {
    case Op::kFixed:
      FuzzFixed(in, common, rng);
      break;
    case Op::kVarlen:
      FuzzVarlen(in, common, rng);
      break;
    case Op::kPaged:
      FuzzPaged(in, common, rng);
      break;
    case Op::kAppend:
      FuzzAppend(in, common, rng);
      break;
  }
  return 0;
}

// CUDA-only tests of the attention kernels: each layout (fixed, varlen, paged) against a float64
// reference on fresh random inputs with poisoned outputs, plus the cases that exercise the CUDA
// policies specifically (GQA packing and the narrow decode path, split-KV, page size 1 and odd,
// unaligned tensors taking the SIMT kernel, negative and zero softmax scales). Long-context and
// batch-256 decode compare the tensor-core path against the SIMT kernel (a float64 CPU reference
// would take minutes there). Label `gpu`: every test skips without a CUDA device.

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_runs.h"
#include "cuda_test_util.h"
#include "flashkv/attention.h"
#include "flashkv/cuda_backend.h"
#include "gtest/gtest.h"
#include "reference.h"

namespace flashkv::cuda::test {
namespace {

// Paged: K/V scattered over a pool of shuffled blocks [blocks, Hkv, page, D], written through
// AppendKv (so the append kernel is exercised too, with padding slots of -1 mixed in).
Result RunPaged(const Problem& p, int page_size, bool simt_reference = false) {
  const int es = DTypeSize(p.dtype);
  const int num_seqs = static_cast<int>(p.q_lens.size());
  int max_blocks = 1;
  int total_blocks = 0;
  for (int len : p.kv_lens) {
    const int blocks = (len + page_size - 1) / page_size;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
  }
  const int pool_blocks = total_blocks + 3;  // spare blocks stay poisoned
  std::vector<int32_t> ids(pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  std::vector<int32_t> table(static_cast<size_t>(num_seqs) * max_blocks, -1);
  std::vector<int64_t> slots;  // per K/V row of the packed input, plus a padding row per seq
  std::vector<float> k_rows, v_rows;
  const int row = p.heads_kv * p.head_dim;
  int next = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const int blocks = (p.kv_lens[b] + page_size - 1) / page_size;
    for (int i = 0; i < blocks; ++i) table[static_cast<size_t>(b) * max_blocks + i] = ids[next++];
    for (int t = 0; t < p.kv_lens[b]; ++t) {
      const int64_t block = table[static_cast<size_t>(b) * max_blocks + t / page_size];
      slots.push_back(block * page_size + t % page_size);
      const int64_t src = static_cast<int64_t>(p.cu_kv[b] + t) * row;
      k_rows.insert(k_rows.end(), p.k.begin() + src, p.k.begin() + src + row);
      v_rows.insert(v_rows.end(), p.v.begin() + src, p.v.begin() + src + row);
    }
    slots.push_back(-1);  // padding: skipped
    k_rows.insert(k_rows.end(), row, 1e4f);
    v_rows.insert(v_rows.end(), row, 1e4f);
  }
  const Strides pool_strides = DensePoolStrides(p.heads_kv, page_size, p.head_dim);
  const size_t pool_bytes = static_cast<size_t>(pool_blocks) * page_size * row * es;
  DeviceBuffer dkc(pool_bytes), dvc(pool_bytes), dk(k_rows.size() * es), dv(v_rows.size() * es),
      dslots(slots.size() * 8);
  dkc.Poison();
  dvc.Poison();
  dk.Upload(Encode(p.dtype, k_rows));
  dv.Upload(Encode(p.dtype, v_rows));
  dslots.Upload(slots);
  KvAppendArgs ap;
  ap.dtype = p.dtype;
  ap.num_tokens = static_cast<int64_t>(slots.size());
  ap.num_heads_kv = p.heads_kv;
  ap.head_dim = p.head_dim;
  ap.k = dk.get(), ap.k_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  ap.v = dv.get(), ap.v_strides = DenseStrides(0, p.heads_kv, p.head_dim);
  ap.k_cache = dkc.get(), ap.v_cache = dvc.get();
  ap.cache_strides = pool_strides;
  ap.num_blocks = pool_blocks;
  ap.page_size = page_size;
  ap.slot_mapping = static_cast<const int64_t*>(dslots.get());
  ap.host_slot_mapping = slots.data();
  const KernelStatus appended = AppendKv(ap, nullptr);
  EXPECT_TRUE(appended.ok()) << appended.ToString();

  std::vector<float> q = p.q;
  DeviceBuffer dq(q.size() * es), dout(q.size() * es), dlse(p.total_q() * p.heads_q * 4),
      dtable(table.size() * 4), dcq(p.cu_q.size() * 4), dckv(p.cu_kv.size() * 4);
  dq.Upload(Encode(p.dtype, q));
  dtable.Upload(table);
  dcq.Upload(p.cu_q);
  dckv.Upload(p.cu_kv);
  dout.Poison();
  dlse.Poison();
  PagedAttentionArgs a;
  a.dtype = p.dtype;
  a.num_seqs = num_seqs;
  a.num_heads_q = p.heads_q;
  a.num_heads_kv = p.heads_kv;
  a.head_dim = p.head_dim;
  a.total_q = p.total_q();
  a.max_seqlen_q = *std::max_element(p.q_lens.begin(), p.q_lens.end());
  a.max_seqlen_kv = *std::max_element(p.kv_lens.begin(), p.kv_lens.end());
  a.q = dq.get(), a.q_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.out = dout.get(), a.out_strides = DenseStrides(0, p.heads_q, p.head_dim);
  a.lse = static_cast<float*>(dlse.get());
  a.k_cache = dkc.get(), a.v_cache = dvc.get();
  a.cache_strides = pool_strides;
  a.num_blocks = pool_blocks;
  a.page_size = page_size;
  a.block_table = static_cast<const int32_t*>(dtable.get());
  a.block_table_stride = max_blocks;
  a.cu_seqlens_q = static_cast<const int32_t*>(dcq.get());
  a.cu_seqlens_kv = static_cast<const int32_t*>(dckv.get());
  a.host_block_table = table.data();
  a.host_cu_seqlens_q = p.cu_q.data();
  a.host_cu_seqlens_kv = p.cu_kv.data();
  a.options = p.options();
  const KernelStatus status = simt_reference ? testing::AttentionPagedSimtReference(a, nullptr)
                                             : AttentionPaged(a, nullptr);
  EXPECT_TRUE(status.ok()) << status.ToString();
  EXPECT_TRUE(StreamSynchronize(nullptr).ok());
  return Result{Decode(p.dtype, dout.Download<uint8_t>(dout.bytes())),
                dlse.Download<float>(p.total_q() * p.heads_q)};
}

using Case = std::tuple<DType, int>;  // dtype, head dim

class CudaAttentionTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device (sm_80+)";
    dtype_ = std::get<0>(GetParam());
    head_dim_ = std::get<1>(GetParam());
    if (!IsCompiled(dtype_, head_dim_)) GTEST_SKIP() << "instantiation not compiled";
  }
  DType dtype_ = DType::kFloat16;
  int head_dim_ = 128;
};

TEST_P(CudaAttentionTest, FixedMatchesReference) {
  for (bool causal : {false, true}) {
    // Sq != Skv, a partial last M tile and key tile, GQA group 2.
    Problem p = MakeProblem(dtype_, 4, 2, head_dim_, {77, 77}, {200, 200}, causal, 1);
    CheckAgainstReference(p, RunFixed(p), causal ? "causal" : "full");
    // Sq > Skv under causal: the first rows see no key (O = 0, LSE = -inf).
    Problem q = MakeProblem(dtype_, 2, 1, head_dim_, {150}, {40}, causal, 2);
    CheckAgainstReference(q, RunFixed(q), "sq>skv");
  }
}

TEST_P(CudaAttentionTest, VarlenWithEmptySequences) {
  for (bool causal : {false, true}) {
    Problem p = MakeProblem(dtype_, 8, 2, head_dim_, {1, 0, 130, 17, 5}, {64, 9, 300, 0, 5},
                            causal, 3);
    CheckAgainstReference(p, RunVarlen(p), "varlen");
  }
}

TEST_P(CudaAttentionTest, PagedMixedPrefillAndDecode) {
  for (int page_size : {1, 7, 16, 64}) {
    // Decodes (q_len 1, the narrow path with the group packed in M), a short chunk, a prefill.
    Problem p = MakeProblem(dtype_, 8, 2, head_dim_, {1, 1, 3, 96, 1}, {1, 250, 70, 200, 33},
                            /*causal=*/true, 10 + page_size);
    CheckAgainstReference(p, RunPaged(p, page_size), "paged ps=" + std::to_string(page_size));
  }
}

TEST_P(CudaAttentionTest, SplitKvDecodeGroup16) {
  // One long sequence, few CTAs: the heuristic splits the keys; GQA group 16 fills the 16 rows.
  Problem p = MakeProblem(dtype_, 16, 1, head_dim_, {1}, {3000}, false, 4);
  CheckAgainstReference(p, RunPaged(p, 16), "split decode");
  Problem f = MakeProblem(dtype_, 4, 4, head_dim_, {3}, {2500}, true, 5);
  CheckAgainstReference(f, RunFixed(f), "split fixed");
}

TEST_P(CudaAttentionTest, NegativeAndZeroScale) {
  for (float scale : {-0.3f, 0.f}) {
    Problem p = MakeProblem(dtype_, 2, 2, head_dim_, {40}, {90}, true, 6);
    p.default_scale = false;
    p.scale = scale;
    CheckAgainstReference(p, RunFixed(p), "scale " + std::to_string(scale));
  }
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return std::string(DTypeName(std::get<0>(info.param))) + "_d" +
         std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(AllInstantiations, CudaAttentionTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16,
                                                              DType::kFloat32),
                                            ::testing::ValuesIn(kSupportedHeadDims)),
                         CaseName);

// Long contexts and big decode batches: the tensor-core kernel against the SIMT kernel.
class CudaLargeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device (sm_80+)";
  }
};

void ExpectSameAsSimt(const Problem& p, const Result& fast, const Result& simt) {
  std::vector<double> out(simt.out.begin(), simt.out.end()), lse(simt.lse.begin(), simt.lse.end());
  ExpectClose(p.dtype, fast.out, out, "vs simt out");
  ExpectLseClose(p.dtype, fast.lse, lse, "vs simt lse");
}

TEST_F(CudaLargeTest, Context32kPagedDecodeAndChunk) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    if (!IsCompiled(dtype, 128)) continue;
    Problem p = MakeProblem(dtype, 32, 8, 128, {1, 1, 64}, {32768, 20000, 32768}, true, 8);
    ExpectSameAsSimt(p, RunPaged(p, 16), RunPaged(p, 16, /*simt_reference=*/true));
  }
}

TEST_F(CudaLargeTest, Batch256Decode) {
  if (!IsCompiled(DType::kFloat16, 128)) GTEST_SKIP();
  std::vector<int> q(256, 1), kv(256);
  std::mt19937 rng(9);
  for (int& len : kv) len = 1 + static_cast<int>(rng() % 600);
  Problem p = MakeProblem(DType::kFloat16, 32, 8, 128, q, kv, true, 9);
  ExpectSameAsSimt(p, RunPaged(p, 16), RunPaged(p, 16, /*simt_reference=*/true));
}

TEST_F(CudaLargeTest, UnalignedTensorsTakeTheSimtPath) {
  if (!IsCompiled(DType::kFloat16, 64)) GTEST_SKIP();
  // Row stride 64 + 4 elements (8 bytes: not a multiple of 16) through the public call.
  Problem p = MakeProblem(DType::kFloat16, 1, 1, 64, {33}, {45}, false, 11);
  const int ld = 68;
  std::vector<float> q(33 * ld, 0.5f), k(45 * ld, 0.5f), v(45 * ld, 0.5f);
  for (int i = 0; i < 33; ++i) std::copy_n(&p.q[i * 64], 64, &q[i * ld]);
  for (int i = 0; i < 45; ++i) std::copy_n(&p.k[i * 64], 64, &k[i * ld]);
  for (int i = 0; i < 45; ++i) std::copy_n(&p.v[i * 64], 64, &v[i * ld]);
  DeviceBuffer dq(q.size() * 2), dk(k.size() * 2), dv(v.size() * 2), dout(33 * 64 * 2);
  dq.Upload(Encode(DType::kFloat16, q));
  dk.Upload(Encode(DType::kFloat16, k));
  dv.Upload(Encode(DType::kFloat16, v));
  dout.Poison();
  FixedAttentionArgs a = MakeDenseFixedArgs(DType::kFloat16, 1, 33, 45, 1, 1, 64, dq.get(),
                                            dk.get(), dv.get(), dout.get(), nullptr, {});
  a.q_strides = {33 * ld, ld, ld};
  a.k_strides = a.v_strides = {45 * ld, ld, ld};
  ASSERT_TRUE(Attention(a, nullptr).ok());
  std::vector<double> out, lse;
  Reference(p, &out, &lse);
  ExpectClose(DType::kFloat16, Decode(DType::kFloat16, dout.Download<uint8_t>(dout.bytes())), out,
              "unaligned");
}

TEST_F(CudaLargeTest, ErrorsAreValues) {
  FixedAttentionArgs a;
  a.head_dim = 100;
  const KernelStatus status = Attention(a, nullptr);
  EXPECT_EQ(status.code(), KernelStatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("head_dim"), std::string::npos);
}

}  // namespace
}  // namespace flashkv::cuda::test

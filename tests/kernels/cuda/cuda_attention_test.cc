// CUDA-only tests of the attention kernels: each layout (fixed, varlen, paged) against a float64
// reference on fresh random inputs with poisoned outputs, plus the cases that exercise the CUDA
// policies specifically (GQA packing and the narrow decode path, split-KV, page size 1 and odd,
// unaligned tensors taking the SIMT kernel, negative and zero softmax scales). Long-context and
// batch-256 decode compare the tensor-core path against the SIMT kernel (a float64 CPU reference
// would take minutes there). Label `gpu`: every test skips without a CUDA device.

#include <algorithm>
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

class CudaAttentionTest : public ::testing::TestWithParam<DTypeHeadDim> {
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

INSTANTIATE_TEST_SUITE_P(AllInstantiations, CudaAttentionTest,
                         ::testing::Combine(::testing::Values(DType::kFloat16, DType::kBFloat16,
                                                              DType::kFloat32),
                                            ::testing::ValuesIn(kSupportedHeadDims)),
                         DTypeHeadDimName);

// Long contexts and big decode batches: the tensor-core kernel against the SIMT kernel.
class CudaLargeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device (sm_80+)";
  }
};

TEST_F(CudaLargeTest, Context32kPagedDecodeAndChunk) {
  for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
    if (!IsCompiled(dtype, 128)) continue;
    Problem p = MakeProblem(dtype, 32, 8, 128, {1, 1, 64}, {32768, 20000, 32768}, true, 8);
    ExpectSameAsSimt(p, RunPaged(p, 16), RunPaged(p, 16, SimtReference()));
  }
}

TEST_F(CudaLargeTest, Batch256Decode) {
  if (!IsCompiled(DType::kFloat16, 128)) GTEST_SKIP();
  std::vector<int> q(256, 1), kv(256);
  std::mt19937 rng(9);
  for (int& len : kv) len = 1 + static_cast<int>(rng() % 600);
  Problem p = MakeProblem(DType::kFloat16, 32, 8, 128, q, kv, true, 9);
  ExpectSameAsSimt(p, RunPaged(p, 16), RunPaged(p, 16, SimtReference()));
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

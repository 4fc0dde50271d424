// The three call shapes must agree on the same logical data: paged == varlen on the K/V the pool
// holds, varlen == fixed-length on equal lengths. On the CPU backend the agreement is bit for bit:
// it splits keys into tiles of a fixed size independent of the page size and of the call shape,
// and computes every (sequence, KV head, query block) task start to finish on one thread, so the
// three shapes perform the same float operations in the same order (and the thread count does not
// matter either). A CUDA backend may pick a different split (split-KV, tile shape) per call shape,
// so there the results agree within the cross-backend tolerance, and each is checked against the
// float64 reference as well.

#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "flashkv/cpu_backend.h"
#include "kernels/sweep.h"
#include "kernels/testbed.h"

namespace flashkv::testbed {
namespace {

// Whether two outputs of `backend` on the same logical problem agree as that backend promises.
::testing::AssertionResult Agree(Backend backend, const HostTensor& a_out,
                                 const std::vector<float>& a_lse, const HostTensor& b_out,
                                 const std::vector<float>& b_lse, const AttentionConfig& config,
                                 const RowLabels& labels) {
  if (backend == Backend::kCpu) {
    ::testing::AssertionResult out = BitwiseEqual(a_out, b_out, labels);
    if (!out) return out;
    return BitwiseEqual(a_lse, b_lse);
  }
  return CheckAttentionOutput(a_out, &a_lse, AsReference(b_out, b_lse), nullptr,
                              CrossBackendToleranceFor(config), labels);
}

using EquivalenceParam = std::tuple<Backend, DType, bool /*causal*/, int /*page size*/>;

std::string EquivalenceName(const ::testing::TestParamInfo<EquivalenceParam>& info) {
  const auto& [backend, dtype, causal, page] = info.param;
  (void)backend;
  return std::string(DTypeName(dtype)) + (causal ? "_causal" : "_full") + "_page" +
         std::to_string(page);
}

class PagedEqualsVarlen : public ::testing::TestWithParam<EquivalenceParam> {};

TEST_P(PagedEqualsVarlen, OnTheSameLogicalKv) {
  const auto& [backend, dtype, causal, page] = GetParam();
  // Rotate the head dim with the page size so every head dim meets paging.
  const int head_dim = kSupportedHeadDims[(page + (causal ? 1 : 0) + static_cast<int>(dtype)) % 6];
  FLASHKV_SKIP_UNLESS_RUNNABLE(backend, dtype, head_dim);
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = dtype;
  config.head_dim = head_dim;
  config.causal = causal;
  config.num_heads_q = 8;
  config.num_heads_kv = 2;
  // Random uneven batches: contexts 0..150 (a fifth of them empty), each with 0..40 new queries
  // and a decode now and then.
  std::vector<int> kv = RandomLengths(seeded.rng(), 6, 1, 150, 0.2);
  std::vector<int> q = RandomLengths(seeded.rng(), 6, 0, 40);
  for (size_t i = 0; i < q.size(); ++i)
    q[i] = i % 3 == 0 ? std::min(kv[i], 1) : std::min(q[i], kv[i]);
  PagedCacheOptions cache;
  cache.page_size = page;
  PagedProblem paged = PagedProblem::Random(config, q, kv, cache, seeded.rng());
  VarlenProblem varlen = paged.AsVarlen();
  ASSERT_TRUE(RunAndCheck(backend, &paged));
  ASSERT_TRUE(RunAndCheck(backend, &varlen));
  EXPECT_TRUE(Agree(backend, paged.out, paged.lse, varlen.out, varlen.lse, config,
                    RowLabels{&paged.cu_seqlens_q}));
}

INSTANTIATE_TEST_SUITE_P(Cpu, PagedEqualsVarlen,
                         ::testing::Combine(::testing::Values(Backend::kCpu),
                                            ::testing::ValuesIn(kAllDTypes), ::testing::Bool(),
                                            ::testing::Values(1, 16, 19, 256)),
                         EquivalenceName);
INSTANTIATE_TEST_SUITE_P(Cuda, PagedEqualsVarlen,
                         ::testing::Combine(::testing::Values(Backend::kCuda),
                                            ::testing::ValuesIn(kAllDTypes), ::testing::Bool(),
                                            ::testing::Values(1, 16, 19, 256)),
                         EquivalenceName);

// [B, Sq, H, D] -> [1, B * Sq, H, D] and LSE [B, H, Sq] -> [H, B * Sq]: the fixed-length output as
// the varlen call lays it out.
HostTensor PackBatch(const HostTensor& fixed) {
  const Shape4& s = fixed.shape();
  HostTensor packed(fixed.dtype(), {1, s.outer * s.rows, s.heads, s.dim}, Layout::kRowMajor);
  for (int64_t b = 0; b < s.outer; ++b) CopyRows(fixed, b, 0, &packed, 0, b * s.rows, s.rows);
  return packed;
}

std::vector<float> PackLse(const std::vector<float>& lse, int batch, int heads, int rows) {
  std::vector<float> packed(lse.size());
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < rows; ++i) {
        packed[(static_cast<size_t>(h) * batch + b) * rows + i] =
            lse[(static_cast<size_t>(b) * heads + h) * rows + i];
      }
    }
  }
  return packed;
}

struct FixedShape {
  int batch, seqlen_q, seqlen_kv;
};

using FixedEquivalenceParam = std::tuple<Backend, DType, bool /*causal*/, int /*shape index*/>;

const std::vector<FixedShape> kFixedShapes = {{3, 37, 70}, {4, 1, 129}, {2, 65, 17}};

class VarlenEqualsFixed : public ::testing::TestWithParam<FixedEquivalenceParam> {};

TEST_P(VarlenEqualsFixed, OnEqualLengths) {
  const auto& [backend, dtype, causal, shape_index] = GetParam();
  const FixedShape shape = kFixedShapes[shape_index];
  const int head_dim = kSupportedHeadDims[(shape_index * 2 + (causal ? 1 : 0)) % 6];
  FLASHKV_SKIP_UNLESS_RUNNABLE(backend, dtype, head_dim);
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = dtype;
  config.head_dim = head_dim;
  config.causal = causal;
  config.num_heads_q = 4;
  config.num_heads_kv = 1;
  FixedProblem fixed =
      FixedProblem::Random(config, shape.batch, shape.seqlen_q, shape.seqlen_kv, seeded.rng());
  VarlenProblem varlen = VarlenProblem::FromFixed(fixed);
  ASSERT_TRUE(RunAndCheck(backend, &fixed));
  ASSERT_TRUE(RunAndCheck(backend, &varlen));
  EXPECT_TRUE(Agree(backend, PackBatch(fixed.out),
                    PackLse(fixed.lse, shape.batch, config.num_heads_q, shape.seqlen_q), varlen.out,
                    varlen.lse, config, RowLabels{&varlen.cu_seqlens_q}));
}

std::string FixedEquivalenceName(const ::testing::TestParamInfo<FixedEquivalenceParam>& info) {
  const auto& [backend, dtype, causal, shape_index] = info.param;
  (void)backend;
  const FixedShape s = kFixedShapes[shape_index];
  return std::string(DTypeName(dtype)) + (causal ? "_causal" : "_full") + "_B" +
         std::to_string(s.batch) + "_Sq" + std::to_string(s.seqlen_q) + "_Skv" +
         std::to_string(s.seqlen_kv);
}

INSTANTIATE_TEST_SUITE_P(Cpu, VarlenEqualsFixed,
                         ::testing::Combine(::testing::Values(Backend::kCpu),
                                            ::testing::ValuesIn(kAllDTypes), ::testing::Bool(),
                                            ::testing::Values(0, 1, 2)),
                         FixedEquivalenceName);
INSTANTIATE_TEST_SUITE_P(Cuda, VarlenEqualsFixed,
                         ::testing::Combine(::testing::Values(Backend::kCuda),
                                            ::testing::ValuesIn(kAllDTypes), ::testing::Bool(),
                                            ::testing::Values(0, 1, 2)),
                         FixedEquivalenceName);

// Restores the CPU pool's thread count when a test ends.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(cpu::NumThreads()) {}
  ~ThreadCountGuard() { cpu::SetNumThreads(saved_); }

 private:
  int saved_;
};

// The CPU result does not depend on how many threads share the work, nor on the run.
TEST(CpuDeterminism, SameBitsForAnyThreadCountAndEveryRun) {
  ThreadCountGuard guard;
  SeededRng seeded;
  AttentionConfig config;
  config.dtype = DType::kBFloat16;
  config.head_dim = 128;
  config.causal = true;
  config.num_heads_q = 16;
  config.num_heads_kv = 2;
  FLASHKV_SKIP_UNLESS_RUNNABLE(Backend::kCpu, config.dtype, config.head_dim);
  PagedCacheOptions cache;
  cache.page_size = 16;
  PagedProblem p = PagedProblem::Random(config, {70, 1, 1, 33, 0, 130}, {200, 90, 1, 33, 8, 130},
                                        cache, seeded.rng());
  cpu::SetNumThreads(1);
  ASSERT_TRUE(RunAndCheck(Backend::kCpu, &p));
  const HostTensor first_out = p.out;
  const std::vector<float> first_lse = p.lse;
  for (int threads : {2, 3, 8, 1}) {
    cpu::SetNumThreads(threads);
    FLASHKV_ASSERT_OK(RunProblem(Backend::kCpu, &p));
    EXPECT_TRUE(BitwiseEqual(first_out, p.out)) << threads << " threads";
    EXPECT_TRUE(BitwiseEqual(first_lse, p.lse)) << threads << " threads";
  }
}

}  // namespace
}  // namespace flashkv::testbed
